"""Who a controller is: a dqlctl process named ``host:pid:start-time`` (a recycled pid is
another), and whether such a process is gone. The registry's controller leases use it."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _proc_start_ticks(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def process_owner() -> str:
    """This process as a lease owner: ``host:pid:start-time`` (a recycled pid is another)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_proc_start_ticks(pid) or '-'}"


def owner_gone(owner: str) -> bool:
    """True when ``owner`` was a process on this host that is no longer running. An owner on
    another host is never known to be gone: its lease has to expire."""
    try:
        host, pid_text, ticks = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    if not Path("/proc").is_dir():  # pragma: no cover - elsewhere only a vanished pid is known
        return not _signalable(pid)
    now = _proc_start_ticks(pid)
    return now is None or (ticks != "-" and now != ticks)


def _signalable(pid: int) -> bool:  # pragma: no cover - non-Linux
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    return True
