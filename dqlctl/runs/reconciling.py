"""Bringing a run's row up to date with what its engine wrote and what its provider reports:
``reconcile`` (one run), ``reconcile_all``, ``finish_if_ended`` (record how a job ended), and
``EXITS``: for every non-terminal state, what reconcile checks there and its deadline, so that
no run stays non-terminal while nobody works on it.

Once a run is RUNNING it belongs to its instance, not to the dqlctl process that started it; any
later look (``ps``, ``show``, ``logs``, the TUI) reconciles it, and the first process to see that
it ended records it. In the other states one process works on the run under its controller
lease (``dqlctl.registry``); a look that finds the lease dead adopts the run (``Registry.acquire``:
one process wins) and takes it on to a terminal state or back to RUNNING.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.registry import Run
from dqlctl.runs.costs import enforce_budget
from dqlctl.runs.jobs import (
    apply_engine_events,
    instance_of,
    job_handle,
    last_log_line,
    parse_events,
    read_all_lines,
)
from dqlctl.runs.leases import hold
from dqlctl.runs.lifecycle import bring_up, finish_bring_up, one_line, release_machine
from dqlctl.runs.orphaned import release_run
from dqlctl.runs.recovery import machine_lost, preempted_by_notice, recover, recoverable
from dqlctl.runs.request import spec_of
from providers.base import Capability, Instance, JobHandle, ProviderError

#: an adopted run's machine that is not ready and running its engine this long after the run
#: entered BOOTSTRAPPING is given up (a cloud's own ready timeout is 10 minutes)
BOOTSTRAP_DEADLINE_S = 20 * 60
#: results not collected this long after COLLECTING began: the run fails, its machine released
COLLECT_DEADLINE_S = 30 * 60
#: a relaunch not RUNNING this long after RECOVERING began fails, its machines released
RECOVER_DEADLINE_S = 30 * 60


def finish_if_ended(ctx: Context, run: Run, handle: JobHandle | None = None) -> Run:
    """If the run's job has ended, record how (COLLECTING -> SUCCEEDED, or FAILED)."""
    if run.terminal or run.state not in (reg.RUNNING, reg.COLLECTING):
        return run
    inst = instance_of(run)
    if inst is None:
        return run
    provider = ctx.provider(run.provider)
    own = handle is None
    handle = handle or provider.job(inst, run.spec)
    try:
        try:
            status = handle.status()
        except ProviderError as exc:  # the VM does not answer: is it still there?
            return machine_lost(ctx, run, inst, exc)
        if status.running:
            return run
        # the last events may have landed after the last poll
        apply_engine_events(ctx, run, parse_events(read_all_lines(handle, "events"))[-50:])
        registry = ctx.registry
        reason = run.progress.get("engine_reason") or status.reason
        code = status.exit_code
        if code != 0 and run.spec.get("stop_requested"):
            return _finish_stopped(ctx, run, inst, provider)
        if code != 0 and status.notice and run.spot:
            return preempted_by_notice(ctx, run, inst, status.notice)
        if code == 0:
            with hold(ctx, run.id):  # the COLLECTING move takes the lease: this process collects
                if registry.transition(run.id, reg.COLLECTING, expect={reg.RUNNING},
                                       exit_code=0):
                    collect_and_finish(ctx, registry.get(run.id), inst, provider)
        else:
            if not reason:
                reason = (f"engine exited with code {code}" if code is not None
                          else "engine ended")
                last = last_log_line(handle)
                if last:
                    reason += f": {last}"
            release_machine(ctx, run.id, inst, provider, reusable=True)  # a pool's: the next
            registry.transition(run.id, reg.FAILED, expect={reg.RUNNING, reg.COLLECTING},
                                reason=reason, exit_code=code)
        return registry.get(run.id)
    finally:
        if own:
            handle.close()


def _finish_stopped(ctx: Context, run: Run, inst: Instance, provider: Any) -> Run:
    """A job that ended because ``stop`` asked it to: collect what it wrote (its checkpoint
    included), release the machine, CANCELLED with where the checkpoint is."""
    registry = ctx.registry
    with hold(ctx, run.id):
        if not registry.transition(run.id, reg.COLLECTING, expect={reg.RUNNING}):
            return registry.get(run.id)  # another dqlctl process is finishing it
        return collect_and_finish(ctx, registry.get(run.id), inst, provider)


def collect_and_finish(ctx: Context, run: Run, inst: Instance, provider: Any) -> Run:
    """A COLLECTING run this process controls: collect its results (again, for an adopted run:
    collecting is idempotent), release its machine, SUCCEEDED, or CANCELLED with where the
    checkpoint is for a run ``stop`` ended. Results that cannot be collected: the run stays
    COLLECTING for the next look to try again, until ``COLLECT_DEADLINE_S`` (then FAILED)."""
    registry = ctx.registry
    stopped = bool(run.spec.get("stop_requested"))
    keep = bool((run.spec.get("extra") or {}).get("keep"))
    with hold(ctx, run.id):
        try:
            provider.collect(inst, run.spec)
            failed = None
        except Exception as exc:  # noqa: BLE001 - said in the reason or the event
            failed = one_line(exc)
        if stopped:
            reason = f"stopped at episode {run.progress.get('episode', 0)}; " + (
                f"checkpoint and results in {run.results_uri}" if failed is None
                else f"results not collected: {failed}")
            end, fields = reg.CANCELLED, {"reason": reason}
        elif failed is None:
            end, fields = reg.SUCCEEDED, {}
        elif ctx.clock() - entered_at(ctx, run) < COLLECT_DEADLINE_S:
            registry.add_event(run.id, "collect_failed", {"reason": failed})
            return registry.get(run.id)  # the lease goes: the next look tries again
        else:
            end, fields = reg.FAILED, {"reason": f"results not collected within "
                                                 f"{COLLECT_DEADLINE_S // 60} min: {failed}"}
        if not keep or end == reg.FAILED:
            release_machine(ctx, run.id, inst, provider, reusable=end != reg.FAILED)
        registry.transition(run.id, end, expect={reg.COLLECTING}, **fields)
    return registry.get(run.id)


def entered_at(ctx: Context, run: Run) -> float:
    """When the run entered its current state (its last state event)."""
    for ev in reversed(ctx.registry.events(run.id)):
        if ev["to_state"] == run.state:
            return float(ev["ts"])
    return run.updated_at


def reconcile(ctx: Context, run: Run) -> Run:
    """Bring one run's row up to date with its engine events and its provider; a run nobody
    works on is taken on by its state's exit (``EXITS``)."""
    run = enforce_budget(ctx, run)
    if run.terminal:
        return run
    if run.state == reg.RUNNING:
        return _reconcile_running(ctx, run)
    exit_ = EXITS[run.state]
    if run.state not in reg.LEASED:
        return exit_.act(ctx, run)
    with hold(ctx, run.id, adopt={run.state}) as adopted:
        if not adopted:
            return ctx.registry.get(run.id)  # its controller is alive: it is at work
        return exit_.act(ctx, ctx.registry.get(run.id))


def _reconcile_running(ctx: Context, run: Run) -> Run:
    inst = instance_of(run)
    provider = ctx.provider(run.provider) if inst is not None else None
    if inst is not None and provider is not None and Capability.SSH in provider.capabilities:
        # ask the cloud first (one call): a machine taken back is not worth SSH retries (a job
        # not reached over SSH, a local one or a Batch job, says itself how it ended)
        try:
            described = provider.describe(Instance.from_dict(run.instance or {}))
        except ProviderError:
            described = None
        if described is not None and described.state not in ("pending", "running"):
            return machine_lost(ctx, run, inst, ProviderError("no answer"))
    handle = job_handle(ctx, run)
    if handle is None:
        return run
    try:
        try:
            apply_engine_events(ctx, run, parse_events(read_all_lines(handle, "events")))
        except ProviderError as exc:
            inst = instance_of(run)
            assert inst is not None
            return machine_lost(ctx, run, inst, exc)
        return finish_if_ended(ctx, run, handle)
    finally:
        handle.close()


def _fail(ctx: Context, run: Run, reason: str) -> Run:
    """Release what the run holds, then FAILED with ``reason``; unchanged (for the next look)
    when its provider cannot be asked: a run is never ended with its machine unaccounted."""
    try:
        release_run(ctx, run)
    except ProviderError as exc:
        ctx.registry.add_event(run.id, "cleanup_failed", {"reason": one_line(exc)})
        return ctx.registry.get(run.id)
    ctx.registry.transition(run.id, reg.FAILED, expect={run.state}, reason=reason)
    return ctx.registry.get(run.id)


def _adopt_launch(ctx: Context, run: Run) -> Run:
    """PENDING / PROVISIONING without a controller: nothing is known to be running for it."""
    return _fail(ctx, run, f"launch interrupted in {run.state} (its dqlctl process ended); "
                           "cleaned up")


def _adopt_bootstrapping(ctx: Context, run: Run) -> Run:
    """BOOTSTRAPPING without a controller: its machine still there -> finish bringing it up;
    gone, or past the deadline -> FAILED, released."""
    inst = instance_of(run)
    if inst is None:
        return _adopt_launch(ctx, run)
    try:
        state = ctx.provider(run.provider).describe(inst).state
    except ProviderError:
        return run  # the cloud does not answer: a later look tries again
    if state not in ("pending", "running"):
        return _fail(ctx, run, f"machine {inst.instance_id} is {state}: bring-up interrupted "
                               "(its dqlctl process ended)")
    if ctx.clock() - entered_at(ctx, run) > BOOTSTRAP_DEADLINE_S:
        return _fail(ctx, run, f"not running within {BOOTSTRAP_DEADLINE_S // 60} min of "
                               "BOOTSTRAPPING (its dqlctl process ended); released")
    ctx.registry.add_event(run.id, "adopted_bring_up", {"instance": inst.instance_id})
    return finish_bring_up(ctx, run)


def _adopt_collecting(ctx: Context, run: Run) -> Run:
    """COLLECTING without a controller: collect again (idempotent) and finish."""
    inst = instance_of(run)
    if inst is None:
        return _fail(ctx, run, "COLLECTING without a machine")
    return collect_and_finish(ctx, run, inst, ctx.provider(run.provider))


def _preempted(ctx: Context, run: Run) -> Run:
    """PREEMPTED: relaunched from its last checkpoint when it can be, else FAILED with why."""
    if recoverable(ctx, run) is None:
        return recover(ctx, run)
    return _fail(ctx, run, run.reason or "spot instance taken back; not relaunched")


def _adopt_recovering(ctx: Context, run: Run) -> Run:
    """RECOVERING without a controller: release any machine the relaunch had started, then
    relaunch again; past the deadline, FAILED."""
    try:
        release_run(ctx, run)
    except ProviderError:
        return run
    if ctx.clock() - entered_at(ctx, run) > RECOVER_DEADLINE_S:
        return _fail(ctx, run, f"not relaunched within {RECOVER_DEADLINE_S // 60} min "
                               "(its dqlctl process ended)")
    ctx.registry.add_event(run.id, "adopted_recovery", {})
    try:
        bring_up(ctx, run.id, ctx.provider(run.provider), spec_of(run),
                 reason="recovered from a spot preemption; resumed from its last checkpoint")
    except Exception:  # noqa: BLE001 - recorded: FAILED with why (the caller sees the row)
        pass
    return ctx.registry.get(run.id)


@dataclass(frozen=True)
class Exit:
    """How a run leaves a non-terminal state when nobody works on it."""

    checks: str                            # what reconcile looks at
    deadline: str                          # how long it waits, and what then
    act: Callable[[Context, Run], Run]


_NO_CONTROLLER = (f"its controller lease has expired ({reg.LEASE_S:.0f} s unrenewed; at once "
                  "when its process is gone from this host)")

#: Every non-terminal state: what ``reconcile`` checks there and its deadline (the README's
#: table is made from this). Budget (``--max-cost``) is checked first in every billed state.
EXITS: dict[str, Exit] = {
    reg.PENDING: Exit(
        "no live controller: nothing was created yet", _NO_CONTROLLER + "; then FAILED",
        _adopt_launch),
    reg.PROVISIONING: Exit(
        "no live controller: instances tagged with the run", _NO_CONTROLLER +
        "; then every tagged instance terminated, FAILED", _adopt_launch),
    reg.BOOTSTRAPPING: Exit(
        "no live controller: is its machine alive?", _NO_CONTROLLER + "; alive: adopted, "
        f"bring-up finished (RUNNING) within {BOOTSTRAP_DEADLINE_S // 60} min of entering the "
        "state, else terminated + FAILED; gone: FAILED", _adopt_bootstrapping),
    reg.RUNNING: Exit(
        "the cloud's view of the machine, the job's events and exit status",
        "none (the job's own length; --max-cost): ended -> COLLECTING or FAILED (PREEMPTED when "
        "it stopped on the cloud's preemption notice); machine gone -> PREEMPTED (spot) or "
        "FAILED", _reconcile_running),
    reg.COLLECTING: Exit(
        "no live controller", _NO_CONTROLLER + "; then collected again (idempotent), "
        "released, SUCCEEDED (CANCELLED when stopped); collect failing for "
        f"{COLLECT_DEADLINE_S // 60} min -> FAILED, released", _adopt_collecting),
    reg.PREEMPTED: Exit(
        "recoverable? (spot, checkpoints in a bucket, --max-recoveries left)",
        "at once: RECOVERING, else FAILED with why", _preempted),
    reg.RECOVERING: Exit(
        "no live controller: instances tagged with the run", _NO_CONTROLLER + "; then tagged "
        "instances terminated and relaunched, RUNNING within "
        f"{RECOVER_DEADLINE_S // 60} min of entering the state, else FAILED", _adopt_recovering),
}


def reconcile_all(ctx: Context) -> list[Run]:
    """Every live run reconciled (what ``ps`` does first)."""
    return [reconcile(ctx, run) for run in ctx.registry.list(include_terminal=False)]
