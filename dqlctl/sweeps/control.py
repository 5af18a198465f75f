"""A sweep's life: ``prepare`` (spec -> members, validated), ``plan`` (``--dry-run``),
``launch`` (rows first, then the first members started), ``look`` (reconcile its live runs, start
queued members), ``follow``, ``down``, and ``summary`` (the data ``sweep ps``/``show`` render).

Core returns data; ``dqlctl.verbs.sweep`` and the TUI render it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dqlctl.context import Context
from dqlctl.errors import UsageError
from dqlctl.registry_sweeps import QUEUED, SWEEP_ACTIVE, SWEEP_CANCELLED, Sweep
from dqlctl.states import TERMINAL, Run
from dqlctl.sweeps.backends import SweepBackend, backend
from dqlctl.sweeps.spec import MemberPlan, SweepSpec, default_name, expand

#: seconds between looks while following a sweep
POLL_S = 1.0


@dataclass
class Prepared:
    """A validated sweep, not yet recorded."""

    name: str
    spec: SweepSpec
    backend: SweepBackend
    concurrency: int
    members: list[MemberPlan]


def sweep_dir(ctx: Context, sweep_id: str) -> Path:
    """The sweep's folder: its spec as launched and its comparison report."""
    return ctx.home / "sweeps" / sweep_id


def prepare(ctx: Context, spec: SweepSpec) -> Prepared:
    """Expand and check the spec: every member's request is validated as a launch's is
    (``dqlctl.runs.validate_request``) before anything is recorded."""
    from dqlctl.runs.request import LaunchRequest, validate_request

    chosen = backend(spec.provider)
    given = set(spec.engine_args)
    extra = list(getattr(chosen, "member_engine_args", ()))
    if extra and extra[0] not in given:
        spec = replace(spec, engine_args=[*spec.engine_args, *extra])
    name = spec.name or default_name(spec)
    members = expand(spec, name)
    for member in members:
        try:
            validate_request(ctx, LaunchRequest(**member.request))
        except UsageError as exc:  # the request's field is the spec's key of the same name
            raise UsageError(f"{spec.source}: {exc.field or member.name}: {exc}",
                             field=exc.field) from None
    concurrency = spec.concurrency or chosen.default_concurrency(ctx)
    return Prepared(name=name, spec=spec, backend=chosen, concurrency=concurrency,
                    members=members)


def plan(ctx: Context, prepared: Prepared) -> dict[str, Any]:
    """What ``sweep launch`` would do (``--dry-run``): nothing is recorded or started."""
    out = {"name": prepared.name, "provider": prepared.spec.provider,
           "members": len(prepared.members), "concurrency": prepared.concurrency,
           "max_cost": prepared.spec.max_cost,
           **prepared.backend.plan(ctx, prepared.spec, prepared.members),
           "runs": [{"name": m.name, "market": m.market, "agent_type": m.agent_type,
                     "seed": m.seed, "settings": m.settings,
                     "engine_args": m.request["engine_args"]} for m in prepared.members]}
    return out


def launch(ctx: Context, prepared: Prepared) -> Sweep:
    """Record the sweep and its queued members (one transaction), write its spec to its
    folder, then start the first ``concurrency`` members."""
    from dqlctl.registry import new_run_id
    from dqlctl.runs.lifecycle import preflight

    preflight(ctx.provider(prepared.spec.provider))
    sweep_id = secrets.token_hex(3)
    members = [{"run_id": new_run_id(), "name": m.name, "request": m.request}
               for m in prepared.members]
    doc = {**prepared.spec.to_dict(), "name": prepared.name,
           "members": [{"market": m.market, "agent_type": m.agent_type, "seed": m.seed,
                        "settings": m.settings} for m in prepared.members]}
    folder = sweep_dir(ctx, sweep_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    sweep = ctx.registry.create_sweep(
        sweep_id=sweep_id, name=prepared.name, provider=prepared.spec.provider,
        concurrency=prepared.concurrency, members=members, max_cost=prepared.spec.max_cost,
        spec=doc)
    prepared.backend.pump(ctx, sweep)
    return ctx.registry.get_sweep(sweep_id)


def sweep_cost(ctx: Context, runs_: list[Run], now: float) -> float:
    from dqlctl.runs.costs import run_cost

    return round(sum(run_cost(ctx, r, now) for r in runs_), 4)


def look(ctx: Context, sweep: Sweep, reconcile: bool = True) -> tuple[Sweep, list[str]]:
    """Bring the sweep up to date: its live runs reconciled (each on its own: one that fails
    hides no other; ``reconcile=False`` when the caller just did), its budget checked, its queued
    members started into free slots. The sweep after, and what went wrong."""
    from dqlctl.runs.lifecycle import one_line
    from dqlctl.runs.reconciling import reconcile as reconcile_run

    registry = ctx.registry
    problems: list[str] = []
    for run in registry.sweep_runs(sweep.id) if reconcile else []:
        if not run.terminal:
            try:
                reconcile_run(ctx, run)
            except Exception as exc:  # noqa: BLE001 - said, the others still looked at
                problems.append(f"{run.name} ({run.id}): {one_line(exc)}")
    sweep = registry.get_sweep(sweep.id)
    if sweep.state == SWEEP_ACTIVE and sweep.max_cost is not None:
        spent = sweep_cost(ctx, registry.sweep_runs(sweep.id), ctx.clock())
        if spent >= sweep.max_cost:
            return down(ctx, sweep, f"budget reached: ${spent:.2f} of max_cost "
                                    f"${sweep.max_cost:.2f}"), problems
    if sweep.state == SWEEP_ACTIVE:
        backend(sweep.provider).pump(ctx, sweep)
    return registry.get_sweep(sweep.id), problems


def look_all(ctx: Context, reconcile: bool = True) -> list[str]:
    """Every active sweep looked at (``dqlctl ps``, the TUI: after reconciling every live run,
    so ``reconcile=False``); what went wrong."""
    problems: list[str] = []
    for sweep in ctx.registry.list_sweeps(include_ended=False):
        try:
            problems += look(ctx, sweep, reconcile)[1]
        except Exception as exc:  # noqa: BLE001 - one sweep must not hide the others
            problems.append(f"sweep {sweep.name} ({sweep.id}): {type(exc).__name__}: {exc}")
    return problems


def down(ctx: Context, sweep: Sweep, reason: str = "stopped by `dqlctl sweep down`") -> Sweep:
    """End the sweep first (its queued members CANCELLED: nobody starts another), then bring
    every unfinished member run down. Idempotent."""
    from dqlctl.runs.lifecycle import down as down_run

    registry = ctx.registry
    registry.end_sweep(sweep.id, SWEEP_CANCELLED, reason)
    for run in registry.sweep_runs(sweep.id):
        if not run.terminal:
            down_run(ctx, run, reason=reason)
    release = getattr(backend(sweep.provider), "release", None)
    if release is not None:  # what the backend holds besides runs (a pool's idle VMs)
        release(ctx, registry.get_sweep(sweep.id))
    return registry.get_sweep(sweep.id)


def finished(ctx: Context, sweep: Sweep) -> bool:
    """The sweep has ended and none of its runs is unfinished."""
    return sweep.state != SWEEP_ACTIVE and ctx.registry.live_count(sweep.id) == 0


def follow(ctx: Context, sweep: Sweep, on_change: Callable[[dict[str, Any]], None],
           poll_s: float = POLL_S) -> Sweep:
    """Drive the sweep to its end (``sweep launch --follow``): look at it every ``poll_s``;
    ``on_change(member)`` for each member whose state changed."""
    seen: dict[str, str] = {}
    while True:
        sweep, _ = look(ctx, sweep)
        for member in summary(ctx, sweep, ctx.clock(), compare=False)["members"]:
            if seen.get(member["run_id"]) != member["state"]:
                seen[member["run_id"]] = member["state"]
                on_change(member)
        if finished(ctx, sweep):
            return sweep
        time.sleep(poll_s)


def summary(ctx: Context, sweep: Sweep, now: float, *, compare: bool = True) -> dict[str, Any]:
    """The sweep as data: counts, cost, wall time against its members' summed time, every
    member (its run's state once started), and with ``compare`` the comparison of its finished
    members (``dqlctl.sweeps.compare``), its report written to the sweep's folder."""
    registry = ctx.registry
    runs_ = {r.id: r for r in registry.sweep_runs(sweep.id)}
    info = sweep.spec.get("members", [])
    members = []
    for m in registry.members(sweep.id):
        run = runs_.get(m.run_id)
        meta = info[m.idx] if m.idx < len(info) else {}
        members.append({
            "idx": m.idx, "name": m.name, "run_id": m.run_id,
            "state": run.state if run else m.state, "market": meta.get("market"),
            "agent_type": meta.get("agent_type"), "seed": meta.get("seed"),
            "settings": meta.get("settings", {}),
            "exit_code": run.exit_code if run else None,
            "test_sharpe": ((run.metrics or {}).get("test") or {}).get("sharpe_ratio")
            if run else None,
            "reason": run.reason if run else m.reason,
            "started_at": run.started_at if run else None,
            "ended_at": run.ended_at if run else None})
    counts: dict[str, int] = {}
    for m in members:
        counts[m["state"]] = counts.get(m["state"], 0) + 1
    spans = [(r.started_at or r.created_at, r.ended_at) for r in runs_.values()]
    closed = [(a, b) for a, b in spans if b is not None]
    out: dict[str, Any] = {
        **sweep.to_dict(), "folder": str(sweep_dir(ctx, sweep.id)),
        "counts": counts, "queued": counts.get(QUEUED, 0),
        "running": sum(1 for r in runs_.values() if r.state not in TERMINAL),
        "cost_usd": sweep_cost(ctx, list(runs_.values()), now),
        "wall_s": (max(b for _, b in closed) - min(a for a, _ in spans)) if closed else None,
        "members_s": round(sum(b - a for a, b in closed), 1) if closed else None,
        "members": members,
        "vms": [{"instance_id": vm.instance_id, "state": vm.state, "run_id": vm.run_id,
                 "members": vm.members, "reason": vm.reason}
                for vm in registry.pool_vms(sweep.id)]}
    out.pop("spec", None)
    if compare:
        from dqlctl.sweeps.compare import compare as compare_members

        out["comparison"] = compare_members(ctx, sweep, list(runs_.values()),
                                            sweep_dir(ctx, sweep.id))
    return out
