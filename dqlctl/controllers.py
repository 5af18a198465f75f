"""Who a controller is: a dqlctl process named ``host:pid:start-time`` (a recycled pid is
another), and whether such a process is gone. The registry's controller leases use it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from providers.procs import pid_exists, start_ticks


def _proc_start_ticks(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None when it is gone."""
    ticks = start_ticks(pid)
    return None if ticks is None else str(ticks)


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
        return not pid_exists(pid)
    now = _proc_start_ticks(pid)
    return now is None or (ticks != "-" and now != ticks)
