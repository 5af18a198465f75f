"""The sweep view's figures: a sweep's facts, its members and the comparison of those finished,
as the tables show them (Textual-free; the cells are ``dqlctl.render``'s, the same as
``dqlctl sweep show``).

The comparison (``dqlctl.sweeps.compare``: numpy, a bootstrap, the report written to the sweep's
folder) is redone only when the set of SUCCEEDED members changes, not on every refresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dqlctl.context import Context
from dqlctl.render import (
    fmt_duration,
    safe_text,
    sweep_arm_lines,
    sweep_market_cells,
    sweep_member_cells,
    sweep_vms_text,
)
from dqlctl.states import SUCCEEDED


@dataclass(frozen=True)
class ArmView:
    """One arm of the comparison (members that differ only in market and seed)."""

    label: str
    rows: list[list[str]]            # SWEEP_MARKET_COLUMNS cells, a market each
    lines: list[str]                 # what it concludes (sweep_arm_lines), or why it cannot
    report: str | None = None


@dataclass(frozen=True)
class SweepView:
    id: str
    name: str
    state: str
    facts: list[tuple[str, str]]     # (label, value) lines of the header
    members: list[list[str]]         # SWEEP_MEMBER_COLUMNS cells; the run id first
    arms: list[ArmView]
    not_compared: list[str]          # "name (why)" of finished members left out
    problems: list[str] = field(default_factory=list)


def _facts(data: dict[str, Any]) -> list[tuple[str, str]]:
    counts = " ".join(f"{k} {v}" for k, v in sorted(data["counts"].items()))
    cost = f"${data['cost_usd']:.4f}" + (f" of max ${data['max_cost']:.2f}"
                                         if data.get("max_cost") else "")
    out = [("state", data["state"]), ("provider", data["provider"]),
           ("concurrency", str(data["concurrency"])), ("members", counts), ("cost", cost)]
    wall, summed = data.get("wall_s"), data.get("members_s")
    if wall is not None and summed is not None:
        out.append(("time", f"{fmt_duration(wall)} wall, {fmt_duration(summed)} summed over "
                            "members"))
    if data.get("reason"):
        out.append(("reason", safe_text(data["reason"])))
    vms = sweep_vms_text(data.get("vms") or [])
    if vms:
        out.append(("vms", vms))
    out.append(("folder", data["folder"]))
    return out


def _arms(comparison: dict[str, Any]) -> tuple[list[ArmView], list[str]]:
    arms = []
    for arm in comparison.get("arms", []):
        if "error" in arm:
            arms.append(ArmView(arm["label"], [], [f"cannot compare: {arm['error']}"]))
            continue
        summary = arm["summary"]
        arms.append(ArmView(arm["label"], [sweep_market_cells(r) for r in summary["markets"]],
                            sweep_arm_lines(summary), arm.get("report")))
    missing = [f"{m['name']} ({m['why']})" for m in comparison.get("not_compared") or []]
    return arms, missing


class SweepModel:
    """What the sweep screen's worker asks for each refresh: ``view(ctx)``."""

    def __init__(self, sweep_id: str) -> None:
        self.sweep_id = sweep_id
        self._compared: frozenset[str] | None = None
        self._comparison: dict[str, Any] = {}

    def view(self, ctx: Context) -> SweepView:
        """Look at the sweep (its live members reconciled, queued ones started into free slots,
        as every look does) and return it; the comparison is redone when a member succeeded."""
        from dqlctl.sweeps import look, summary, sweep_dir
        from dqlctl.sweeps.compare import compare

        sweep, problems = look(ctx, ctx.registry.get_sweep(self.sweep_id))
        data = summary(ctx, sweep, ctx.clock(), compare=False)
        runs = ctx.registry.sweep_runs(sweep.id)
        done = frozenset(r.id for r in runs if r.state == SUCCEEDED)
        if done != self._compared:
            self._comparison = compare(ctx, sweep, runs, sweep_dir(ctx, sweep.id)) if done \
                else {}
            self._compared = done
        arms, missing = _arms(self._comparison)
        return SweepView(id=sweep.id, name=sweep.name, state=sweep.state, facts=_facts(data),
                         members=[sweep_member_cells(m) for m in data["members"]], arms=arms,
                         not_compared=missing, problems=problems)
