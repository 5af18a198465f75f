import sys

from dqlctl.cli import entry

sys.exit(entry())
