"""The dashboard's rows: every run, newest first, as the table shows them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from dqlctl import runs
from dqlctl.context import Context
from dqlctl.registry import Run
from dqlctl.render import fmt_duration, progress_text
from dqlctl.tui.models.common import num, one_line

# Most telling first: at 80 columns the table scrolls sideways for where the run is. The Sharpe
# column is the kept model's (the best validation Sharpe so far), not the last episode's.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "NAME"), ("state", "STATE"), ("episode", "EPISODE"), ("sharpe", "BEST VAL SHARPE"),
    ("elapsed", "ELAPSED"), ("cost", "COST"), ("where", "PROVIDER/REGION"),
    ("instance", "INSTANCE"), ("spot", "SPOT"),
)


@dataclass(frozen=True)
class RunRow:
    """One dashboard row: the run's fields as the table shows them."""

    id: str
    name: str
    where: str
    instance: str
    spot: str
    state: str
    episode: str
    sharpe: str
    elapsed: str
    cost: str
    terminal: bool
    reason: str | None = None
    sweep: str = ""          # the name of the sweep the run is a member of
    sweep_id: str | None = None


    def cells(self) -> tuple[str, ...]:
        return tuple(getattr(self, key) for key, _ in COLUMNS)

    def matches(self, needle: str) -> bool:
        """The ``/`` filter: a case-insensitive substring of the id or any shown field."""
        if not needle:
            return True
        hay = " ".join((self.id, self.sweep, *self.cells())).lower()
        return all(part in hay for part in needle.lower().split())


def elapsed_s(run: Run, now: float) -> float:
    start = run.started_at or run.created_at
    end = run.ended_at if run.ended_at is not None else now
    return max(0.0, end - start)


def best_sharpe(run: Run) -> Any:
    """The validation Sharpe of the model the run keeps (``best_val_sharpe``, folded from the
    ``episode`` events marked best); a run recorded before that was folded shows its last
    episode's ``val_sharpe``."""
    progress = run.progress or {}
    best = progress.get("best_val_sharpe")
    return best if best is not None else progress.get("val_sharpe")


def run_row(ctx: Context, run: Run, now: float) -> RunRow:
    try:
        cost = runs.run_cost(ctx, run, now)
    except Exception:  # a price lookup that fails must not hide the run
        cost = run.cost_usd
    return RunRow(
        id=run.id, name=run.name,
        where=(f"{run.provider}/{run.region}" if run.region and run.region != run.provider
               else run.provider),
        instance=run.instance_type or (run.instance_ids[0] if run.instance_ids else "-"),
        spot="spot" if run.spot else "-", state=run.state, episode=progress_text(run),
        sharpe=num(best_sharpe(run), ".3f"), elapsed=fmt_duration(elapsed_s(run, now)),
        cost=f"${cost:.2f}", terminal=run.terminal, reason=run.reason)


def dashboard_rows(ctx: Context, reconcile: bool = True) -> tuple[list[RunRow], list[str]]:
    """Every run, newest first, after bringing the live ones up to date; and what went wrong.

    Each live run is reconciled on its own (``runs.reconcile``, what ``dqlctl ps`` does through
    ``reconcile_all``) so that one provider that cannot be reached does not hide the others.
    """
    problems: list[str] = []
    if reconcile:
        for run in ctx.registry.list(include_terminal=False):
            try:
                runs.reconcile(ctx, run)
            except Exception as exc:
                problems.append(f"{run.name} ({run.id}): {one_line(exc)}")
        from dqlctl.sweeps import look_all

        problems += look_all(ctx, reconcile=False)  # queued sweep members into free slots
    now = ctx.clock()
    return grouped_rows(ctx, ctx.registry.list(), now), problems


#: the NAME cell of a sweep member starts with this, under its sweep's other members
MEMBER_MARK = "\u21b3 "


def grouped_rows(ctx: Context, listed: list[Run], now: float) -> list[RunRow]:
    """The rows, newest first, a sweep's members together (in member order) where its newest
    member would be, each named with ``MEMBER_MARK`` and filterable by the sweep's name."""
    rows: list[RunRow] = []
    shown: set[str] = set()
    for run in listed:
        if run.sweep_id is None:
            rows.append(run_row(ctx, run, now))
            continue
        if run.sweep_id in shown:
            continue
        shown.add(run.sweep_id)
        sweep = ctx.registry.get_sweep(run.sweep_id)
        for member in ctx.registry.sweep_runs(run.sweep_id):
            row = run_row(ctx, member, now)
            rows.append(replace(row, name=MEMBER_MARK + row.name,
                                sweep=f"{sweep.name} {sweep.id}", sweep_id=sweep.id))
    return rows
