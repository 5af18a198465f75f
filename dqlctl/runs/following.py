"""Watching a run as it goes: ``follow`` (engine events and log lines until it ends, following it
onto a new machine when it is recovered) and ``iter_log`` (``dqlctl logs [-f]``).

Following is only watching: interrupt it (or kill dqlctl) and the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.errors import DqlctlError
from dqlctl.registry import Run
from dqlctl.runs.costs import enforce_budget
from dqlctl.runs.jobs import Follower, apply_engine_events, instance_of, job_handle, parse_events
from dqlctl.runs.reconciling import finish_if_ended, reconcile
from dqlctl.runs.recovery import machine_lost
from providers.base import ProviderError

POLL_S = 0.2


def follow(ctx: Context, run: Run, on_event: Callable[[dict[str, Any]], None] | None = None,
           on_log: Callable[[str], None] | None = None, poll_s: float = POLL_S) -> Run:
    """Stream a run's engine events (and log lines) until it ends; the final row."""
    handle = job_handle(ctx, run)
    if handle is None:
        return run
    events = Follower(handle, "events")
    logs = Follower(handle if on_log is not None else None, "log")

    def pump(final: bool = False) -> None:
        new = parse_events(events.rest() if final else events.read_lines())
        if new:
            apply_engine_events(ctx, run, new)
            if on_event is not None:
                for ev in new:
                    on_event(ev)
        if on_log is not None:
            for line in (logs.rest() if final else logs.read_lines()):
                on_log(line)

    try:
        while True:
            try:
                pump()
            except ProviderError as exc:
                inst = instance_of(run)
                assert inst is not None
                lost = machine_lost(ctx, ctx.registry.get(run.id), inst, exc)
                if lost.state == reg.RUNNING and lost.instance_ids != run.instance_ids:
                    return follow(ctx, lost, on_event, on_log, poll_s)  # recovered: go on there
                if lost.state not in (reg.RUNNING, reg.COLLECTING):
                    return lost
                raise
            current = enforce_budget(ctx, ctx.registry.get(run.id))
            if current.instance_ids != run.instance_ids and not current.terminal:
                # another dqlctl process recovered it on a new machine: follow it there
                return follow(ctx, reconcile(ctx, current), on_event, on_log, poll_s)
            if current.terminal:
                pump(final=True)
                return current
            checked = finish_if_ended(ctx, current, handle)
            if checked.terminal:
                pump(final=True)
                return checked
            time.sleep(poll_s)
    finally:
        handle.close()


def iter_log(ctx: Context, run: Run, follow_: bool, tail: int | None,
             poll_s: float = POLL_S) -> Iterator[str]:
    """Lines of a run's log: the last ``tail`` (or all), then new ones while it runs."""
    handle = job_handle(ctx, run)
    if handle is None:
        raise DqlctlError(f"run {run.id} has no log yet (state {run.state})")
    try:
        follower = Follower(handle, "log")
        lines = follower.read_lines()
        yield from (lines[-tail:] if tail else [] if tail == 0 else lines)
        if not follow_:
            yield from follower.rest()
            return
        while True:
            yield from follower.read_lines()
            run = ctx.registry.get(run.id)
            if not run.terminal:
                run = finish_if_ended(ctx, run, handle)
            if run.terminal:
                yield from follower.rest()
                return
            time.sleep(poll_s)
    finally:
        handle.close()
