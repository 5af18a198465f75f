"""``python dql_trading.py <command> ...``: the predecessor's entry point, kept for its users.

A thin shim over :func:`engine.cli.main` (the same CLI as ``dql-trading`` and ``python -m engine``).
"""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
