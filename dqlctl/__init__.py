"""dqlctl: the control center for deep-Q-learning trading runs.

Imports nothing heavy: ``dqlctl --help`` and the headless verbs must start fast.
"""

__version__ = "0.1.0"
