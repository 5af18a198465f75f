"""Bringing a run's row up to date with what its engine wrote and what its provider reports:
``reconcile`` (one run), ``reconcile_all``, ``finish_if_ended`` (record how a job ended), and the
clean-up of a launch whose controller died before RUNNING.

Once a run is RUNNING it belongs to its instance, not to the dqlctl process that started it; any
later look (``ps``, ``show``, ``logs``, the TUI) reconciles it, and the first process to see that
it ended records it.
"""

from __future__ import annotations

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
from dqlctl.runs.lifecycle import one_line
from dqlctl.runs.recovery import machine_lost, recover
from providers.base import Capability, Instance, JobHandle, ProviderError

# A launch in progress in another process is at most a few minutes old; older is abandoned.
STUCK_LAUNCH_S = 600


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
        if code == 0:
            if registry.transition(run.id, reg.COLLECTING, expect={reg.RUNNING}, exit_code=0):
                provider.collect(inst, run.spec)
                if not run.spec.get("extra", {}).get("keep"):
                    provider.terminate(inst)
                registry.transition(run.id, reg.SUCCEEDED, expect={reg.COLLECTING})
        else:
            if not reason:
                reason = (f"engine exited with code {code}" if code is not None
                          else "engine ended")
                last = last_log_line(handle)
                if last:
                    reason += f": {last}"
            provider.terminate(inst)
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
    if not registry.transition(run.id, reg.COLLECTING, expect={reg.RUNNING}):
        return registry.get(run.id)  # another dqlctl process is finishing it
    reason = f"stopped at episode {run.progress.get('episode', 0)}"
    try:
        provider.collect(inst, run.spec)
        reason += f"; checkpoint and results in {run.results_uri}"
    except Exception as exc:  # the machine is released anyway: say what was not collected
        reason += f"; results not collected: {one_line(exc)}"
    if not run.spec.get("extra", {}).get("keep"):
        provider.terminate(inst)
    registry.transition(run.id, reg.CANCELLED, expect={reg.COLLECTING}, reason=reason)
    return registry.get(run.id)


def reconcile(ctx: Context, run: Run) -> Run:
    """Bring one run's row up to date with its engine events and its provider."""
    run = enforce_budget(ctx, run)
    if run.terminal:
        return run
    if run.state == reg.PREEMPTED:
        return recover(ctx, run)
    if run.state in (reg.PENDING, reg.PROVISIONING, reg.BOOTSTRAPPING):
        return _reconcile_stuck_launch(ctx, run)
    inst = instance_of(run)
    provider = ctx.provider(run.provider) if inst is not None else None
    if inst is not None and provider is not None and run.state == reg.RUNNING and \
            Capability.LOCAL_JOB not in provider.capabilities:
        # ask the cloud first (one call): a machine taken back is not worth SSH retries
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
        if run.state == reg.RUNNING:
            try:
                apply_engine_events(ctx, run, parse_events(read_all_lines(handle, "events")))
            except ProviderError as exc:
                inst = instance_of(run)
                assert inst is not None
                return machine_lost(ctx, run, inst, exc)
        return finish_if_ended(ctx, run, handle)
    finally:
        handle.close()


def _reconcile_stuck_launch(ctx: Context, run: Run) -> Run:
    """A launch whose controller died before RUNNING: is anything alive? Else mark it failed."""
    owner_alive = False
    inst = instance_of(run)
    provider = ctx.provider(run.provider)
    if inst is not None:
        inst = provider.describe(inst)
        owner_alive = inst.state in ("pending", "running")
    if not owner_alive and ctx.clock() - run.updated_at > STUCK_LAUNCH_S:
        if inst is not None:
            provider.terminate(inst)
        ctx.registry.transition(run.id, reg.FAILED, expect={run.state},
                                reason=f"launch interrupted in {run.state}; cleaned up")
        return ctx.registry.get(run.id)
    return run


def reconcile_all(ctx: Context) -> list[Run]:
    """Every live run reconciled (what ``ps`` does first)."""
    return [reconcile(ctx, run) for run in ctx.registry.list(include_terminal=False)]
