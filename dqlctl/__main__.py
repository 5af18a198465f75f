import sys

from dqlctl.cli import main

sys.exit(main())
