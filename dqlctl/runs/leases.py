"""The controller lease kept alive while this process works on a run (bring-up, collecting,
recovering): ``hold`` renews it from a heartbeat thread, with its own registry connection, every
``LEASE_S / 4`` seconds, and gives it up at the end.

The lease itself lives on the registry row (``dqlctl.registry``): a transition into a ``LEASED``
state takes it, ``Registry.acquire`` takes over one whose owner is gone. A process killed while
holding one stops renewing it; the next look (``ps``, ``logs``, the TUI) adopts the run once the
lease has expired, at once when the owner was a process on this host that no longer runs.

The owner is a process (``host:pid:start-time``); inside one process (the TUI's workers are
threads) ``hold`` also keeps the runs held here, so that two threads never both act on a run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from dqlctl import registry as reg
from dqlctl.context import Context

_lock = threading.Lock()
_held: dict[str, int] = {}  # run id -> how many holds of it are open in this process


def held_here(run_id: str) -> bool:
    """Whether a thread of this process works on the run now."""
    with _lock:
        return run_id in _held


@contextmanager
def hold(ctx: Context, run_id: str, adopt: Iterable[str] | None = None) -> Iterator[bool]:
    """Work on the run under its lease: renewed while the block runs, released after (unless a
    transition made in the block cleared it already). Re-entrant.

    With ``adopt`` (states), the lease is taken over first, if the run is in one of them and
    no other process or thread holds it live; the block gets False (and must leave the run
    alone) when it is not."""
    with _lock:
        taken = adopt is None or (run_id not in _held
                                  and ctx.registry.acquire(run_id, adopt))
        if taken:
            _held[run_id] = _held.get(run_id, 0) + 1
            first = _held[run_id] == 1
    if not taken:
        yield False
        return
    stop = threading.Event()
    thread = None
    if first:
        path, clock = ctx.registry.path, ctx.registry.clock

        def beat() -> None:
            own = reg.Registry(path, clock=clock)
            try:
                while not stop.wait(reg.LEASE_S / 4):
                    own.renew(run_id)  # a no-op once the run has left its leased state
            finally:
                own.close()

        thread = threading.Thread(target=beat, name=f"lease-{run_id}", daemon=True)
        thread.start()
    try:
        yield True
    finally:
        with _lock:
            _held[run_id] -= 1
            last = _held[run_id] == 0
            if last:
                del _held[run_id]
        if thread is not None:
            stop.set()
            thread.join(timeout=5)
        if last:
            ctx.registry.release(run_id)
