"""The queue backend (``local``): every member an ordinary run, at most ``concurrency`` of them
unfinished at once, the rest queued in the registry (``sweep_members``) until a slot frees.

Who starts the next member: whoever looks at the sweep. There is no daemon: ``pump`` runs in
``sweep launch`` (the first ``concurrency`` members), in its ``--follow`` loop, and in every later
``dqlctl sweep ps`` / ``sweep show`` / ``dqlctl ps`` / TUI refresh, after the sweep's live runs are
reconciled (a run that ended frees its slot). An operator who closes the laptop finds, on the next
look, the members that were running recorded as they ended and the next ones started; a sweep
nobody looks at waits (members never start behind the operator's back, which also keeps its cost
where they can see it). ``Registry.claim`` makes the start atomic, so two dqlctl processes
pumping the same sweep never start a member twice nor exceed the concurrency.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dqlctl.context import Context
from dqlctl.errors import DqlctlError
from dqlctl.registry_sweeps import QUEUED, SWEEP_ACTIVE, SWEEP_DONE, Member, Sweep
from dqlctl.sweeps.spec import MemberPlan, SweepSpec

if TYPE_CHECKING:
    from providers.base import LaunchSpec


class QueueBackend:
    """Members run as local runs (one torch thread each), queued beyond the concurrency."""

    name = "local"
    #: engine flags every member gets unless the spec sets them: one torch thread per run, so
    #: ``concurrency`` runs share the cores instead of fighting over them
    member_engine_args: tuple[str, ...] = ("--torch_threads", "1")

    def default_concurrency(self, ctx: Context) -> int:
        return os.cpu_count() or 1

    def plan(self, ctx: Context, spec: SweepSpec, members: list[MemberPlan]) -> dict[str, Any]:
        return {"where": "this machine: each member a detached local run, one torch thread",
                "cost": "$0.00 (this machine: no price)"}

    def pump(self, ctx: Context, sweep: Sweep) -> list[str]:
        return pump(ctx, sweep)


def pump(ctx: Context, sweep: Sweep) -> list[str]:
    """Start queued members while the sweep has free slots; the sweep DONE once no member is
    queued or unfinished. The run ids started."""
    registry = ctx.registry
    started: list[str] = []
    if sweep.state != SWEEP_ACTIVE:
        return started
    for member in registry.members(sweep.id):
        if member.state != QUEUED:
            continue
        if registry.live_count(sweep.id) >= sweep.concurrency:
            break
        if start_member(ctx, sweep, member):
            started.append(member.run_id)
        elif registry.get_sweep(sweep.id).state != SWEEP_ACTIVE:
            break  # ended meanwhile (``sweep down`` in another process)
    if not any(m.state == QUEUED for m in registry.members(sweep.id)) \
            and registry.live_count(sweep.id) == 0:
        registry.end_sweep(sweep.id, SWEEP_DONE)
    return started


def start_member(ctx: Context, sweep: Sweep, member: Member, *,
                 extra: dict[str, Any] | None = None, vm: str | None = None,
                 run: Callable[[Context, str, Any, LaunchSpec], None] | None = None) -> bool:
    """Claim a slot for ``member`` and launch it as an ordinary run; False when there was no
    slot (or another process started it). A member whose request is refused is CANCELLED with
    why; one whose launch fails is its run's FAILED with why: neither stops the sweep.

    For other backends: ``extra`` goes into the run's ``spec.extra``; ``vm``: the slot comes
    with that pool VM (``Registry.claim``); ``run(ctx, run_id, provider, spec)`` starts the
    claimed (PENDING) run instead of ``lifecycle.start``."""
    from dqlctl.runs.leases import hold
    from dqlctl.runs.lifecycle import row_fields, start
    from dqlctl.runs.request import LaunchRequest, build_spec

    registry = ctx.registry
    req = LaunchRequest(**member.request)
    try:
        spec = build_spec(ctx, req, member.run_id)
    except DqlctlError as exc:
        registry.skip_member(sweep.id, member.idx, str(exc))
        return False
    spec.extra.update(extra or {})
    provider = ctx.provider(req.provider)
    with hold(ctx, member.run_id):
        if not registry.claim(sweep.id, member.idx, vm=vm, **row_fields(req, spec)):
            return False
        try:
            (run or start)(ctx, member.run_id, provider, spec)
        except Exception:  # noqa: BLE001 - recorded on the run: FAILED with why
            pass
    return True
