"""A run as data for the verbs: its JSON shape (``ps --json``, ``show --json``, ``stop --json``)
and the exit code ``launch --follow`` returns for it."""

from __future__ import annotations

from typing import Any

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.registry import Run
from dqlctl.runs.costs import run_cost


def run_exit_code(run: Run) -> int:
    """What `launch --follow` returns: 0 succeeded, 2 the engine refused its input, else 1."""
    if run.state == reg.SUCCEEDED:
        return 0
    if run.exit_code == 2:
        return 2
    return 1


def run_summary(ctx: Context, run: Run, now: float | None = None) -> dict[str, Any]:
    """The JSON shape of a run for `ps --json` and `show --json`."""
    now = now if now is not None else ctx.clock()
    data = run.to_dict()
    data["cost_usd"] = run_cost(ctx, run, now)
    data["age_s"] = round(now - run.created_at, 1)
    return data


def run_detail(ctx: Context, run: Run, now: float | None = None) -> dict[str, Any]:
    """``run_summary`` with the run's history (``events``): what `show --json` prints, and
    `stop --json` / `down --json` for the final row."""
    data = run_summary(ctx, run, now)
    data["events"] = ctx.registry.events(run.id)
    return data
