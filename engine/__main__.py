"""``python -m engine``: the engine's CLI (see :mod:`engine.cli`)."""

import signal
import sys

if hasattr(signal, "SIGUSR1"):  # "checkpoint now" (training's handler): ignored until then
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)

from engine.cli import main  # noqa: E402 - after the signal: importing takes a while

if __name__ == "__main__":
    sys.exit(main())
