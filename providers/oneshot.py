"""The garbage collector of a process that runs one command and exits: ``dqlctl``'s verbs and
``python -m providers.sync_cli`` (the TUI too, which ``dqlctl`` opens: it freezes its own start
and collects rarely, no harm in a long session). Standard library only (it runs before
anything is imported).

Two costs of CPython's defaults that such a process pays for nothing, measured on a no-op
``sync`` of 500 files to Azurite and moto (``bench/sync_vs_rclone.py``, this machine):

- **Collections while importing.** A young collection runs every 700 new container objects
  and a full one every 100 young ones; importing a cloud SDK and building its client makes
  hundreds of thousands of objects, nearly all of them kept to the end, so the collections
  walk them again and again and free nothing. 20,000 / 20 / 100 makes them rare: 20-30 ms
  less a no-op sync. Garbage in cycles still goes, only later.
- **Collections at exit.** The interpreter's final collections walk every object still alive
  (the SDKs' modules and service models): 30-70 ms of a command that took 0.3 s.
  ``gc.freeze()`` before returning takes them out of the collector's view, as the TUI does
  after start. The price: objects in reference cycles alive at that moment are never
  finalized. Ours hold no unflushed data by then (files are closed by ``with``; stdout and
  stderr are flushed here first), so nothing is lost.

Only for a process's entry point: called in-process (the tests call ``main`` directly) it
would leave the caller's objects frozen.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

#: young collections every 20,000 new objects (CPython: 700), older ones after 20 and 100 of
#: the generation below (10 and 10)
THRESHOLD = (20_000, 20, 100)


def run_once(main: Callable[[], int]) -> int:
    """Run a process's one command under that policy; returns its exit code."""
    gc.set_threshold(*THRESHOLD)
    try:
        return main()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):      # closed, or a broken pipe: nothing to keep
                pass
        gc.freeze()
