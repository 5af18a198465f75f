"""``python -m providers.sync_cli`` whose big files never finish: ``python -m tests.stalled_sync
SRC DST [...]`` streams every file as usual, except that a copy stalls once it has read
``STALL_AT`` bytes of its source, until the sync is cancelled (Ctrl+C) or the process killed.

A test that kills a sync "while its big file is on the way" then waits for that state (an
upload begun, blocks staged, a temp file) instead of racing a transfer that a fast machine may
finish between two looks. ``STALL_AT`` (20 MiB) is past the first part/block of every store
(16 MiB) and short of the tests' 24 MiB files; smaller files pass untouched.
"""

from __future__ import annotations

import sys
from typing import Any

from providers.storage import Cancelled
from providers.storage.base import MIB
from providers.sync import transfer
from providers.sync_cli import main

STALL_AT = 20 * MIB

_read = transfer._ProgressReader.read


def _stalling_read(self: Any, n: int = -1) -> bytes:
    if self.pos >= STALL_AT:
        self._cancel.wait()
        raise Cancelled("sync cancelled")
    return _read(self, n)


transfer._ProgressReader.read = _stalling_read  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
