"""Processes on this machine, as the kernel knows them (standard library only): whether a pid
exists, and when it started, so that a recycled pid is never taken for the process it was.
Used by the local provider (its runs' supervisors), the file store (temp files of killed writers)
and dqlctl's controller leases."""

from __future__ import annotations

import os


def pid_exists(pid: int) -> bool:
    """A process ``pid`` exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot, from /proc/PID/stat); None
    when it is gone or a zombie (it has exited), or there is no /proc to read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()    # the name may hold ')' and spaces
    if fields[0] in ("Z", "X"):                      # zombie or dead: it has exited
        return None
    return int(fields[19])
