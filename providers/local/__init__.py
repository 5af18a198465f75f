"""This machine as a provider.

- ``compute``: the engine as a detached local process (``LocalProvider``).
- ``supervisor``: the process that runs the engine and records how it ended
  (``python -m providers.local.supervisor``). VMs run it too: ``providers.remote_job`` ships the
  code and starts it there, so a remote job ends and is read exactly like a local one.

The ``file://`` store is not here but in the storage leaf (``providers.storage.local``): it is
the engine's default store and the one every other backend is tested against, so it belongs to
the storage layer every side may import rather than to the local *compute* provider.

Imports nothing (the supervisor must start with the standard library alone).
"""
