"""What runs cost: one run now (arithmetic on its registry row), the ``--max-cost`` budget, and
the spend per provider and month that ``dqlctl cost --runs`` and the TUI's cost screen show.

The registry keeps a run's billed time on its row, updated by the transitions that start or end
a billed interval (``registry.BILLED``), so ``run_cost`` reads no events and the budget check is
a comparison. The month report still reads the state events: it splits intervals at month ends.
"""

from __future__ import annotations

from typing import Any

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.registry import Run
from dqlctl.runs.leases import held_here
from dqlctl.runs.lifecycle import down, over_budget


def run_cost(ctx: Context, run: Run, now: float | None = None) -> float:
    """What the run has cost: the hours it held a machine at its $/h (or its recorded cost)."""
    return run.cost_at(ctx.clock() if now is None else now)


def budget_left(run: Run, now: float) -> tuple[float, float] | None:
    """``(spent, budget)`` of a run in a billed state (``registry.BILLED``) with
    ``--max-cost``, else None."""
    budget = (run.spec.get("extra") or {}).get("max_cost")
    if not budget or run.state not in reg.BILLED:
        return None
    return run.cost_at(now), float(budget)


def enforce_budget(ctx: Context, run: Run) -> Run:
    """``--max-cost`` in every billed state: a run that has spent its budget is taken down
    (CANCELLED with why; the engine gets SIGTERM and checkpoints first). Enforced whenever a
    dqlctl process looks at the run (a following ``launch``, ``logs -f``, ``ps``, the TUI), so
    keep one watching long cloud runs. A run another live process is bringing up or collecting
    is left to it (it checks the budget itself)."""
    why = over_budget(run, ctx.clock())
    if why is None:
        return run
    if run.state != reg.RUNNING and (not ctx.registry.lease_free(run) or held_here(run.id)):
        return run
    return down(ctx, run, reason=why)


def run_costs(ctx: Context, now: float) -> list[dict[str, Any]]:
    """Per run: provider, ``{month: (instance hours, usd)}``; from its billed state intervals at
    its $/h (or its recorded cost where it has no $/h)."""
    from datetime import UTC, datetime

    from providers.prices.estimate import billable_intervals, cost_by_month

    def month_of(ts: float) -> str:
        d = datetime.fromtimestamp(ts, UTC)
        return f"{d.year:04d}-{d.month:02d}"

    out = []
    for run in ctx.registry.list(include_terminal=True):
        intervals = billable_intervals(ctx.registry.events(run.id), now)
        if not intervals and run.started_at:
            intervals = [(run.started_at, max(run.started_at, run.ended_at or now))]
        months = cost_by_month(intervals, run.price_per_hour)
        if not run.price_per_hour and run.cost_usd:
            hours = sum(h for h, _ in months.values())
            months = {month_of(run.started_at or run.created_at): (hours, float(run.cost_usd))}
        if not months:
            months = {month_of(run.created_at): (0.0, 0.0)}
        out.append({"run": run.id, "provider": run.provider, "months": months})
    return out


def spend_by_month(ctx: Context, now: float) -> list[dict[str, Any]]:
    """``[{month, provider, runs, instance_hours, cost_usd, run_ids}]``, newest month first; a
    run that spans a month's end counts in both months."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for rc in run_costs(ctx, now):
        for month, (hours, usd) in rc["months"].items():
            cell = table.setdefault((month, rc["provider"]), {
                "month": month, "provider": rc["provider"], "runs": 0, "instance_hours": 0.0,
                "cost_usd": 0.0, "run_ids": []})
            cell["runs"] += 1
            cell["run_ids"].append(rc["run"])
            cell["instance_hours"] += hours
            cell["cost_usd"] += usd
    rows = sorted(table.values(), key=lambda c: (c["month"], c["provider"]))
    rows.sort(key=lambda c: c["month"], reverse=True)
    for c in rows:
        c["instance_hours"] = round(c["instance_hours"], 4)
        c["cost_usd"] = round(c["cost_usd"], 4)
    return rows
