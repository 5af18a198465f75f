"""A run whose machine stopped answering: ``machine_lost`` finds out whether it is gone (PREEMPTED
or FAILED, with why); ``preempted_by_notice``: a job that stopped on its cloud's preemption
notice is PREEMPTED at once; and ``recover`` relaunches a preempted spot run from its last
checkpoint when ``recoverable`` says it can be.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from typing import Any

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.errors import DqlctlError
from dqlctl.registry import Run
from dqlctl.runs.leases import hold
from dqlctl.runs.lifecycle import bring_up, release_machine
from dqlctl.runs.request import spec_of
from providers.base import Capability, Instance, ProviderError


def machine_lost(ctx: Context, run: Run, inst: Instance, exc: Exception) -> Run:
    """The job's machine stopped answering. Gone: PREEMPTED (spot) or FAILED, recorded with why.
    Still there: a network hiccup; the run stays as it is and a later look tries again."""
    provider = ctx.provider(run.provider)
    try:
        inst = provider.describe(inst)
    except ProviderError:
        return run  # the cloud does not answer either: nothing is known, nothing is changed
    if inst.state in ("pending", "running"):
        return run
    if run.spot:
        why_not = recoverable(ctx, run)
        ctx.registry.transition(
            run.id, reg.PREEMPTED, expect={reg.RUNNING, reg.COLLECTING},
            reason=f"spot instance {inst.instance_id} was taken back ({inst.state}); " + (
                "relaunching it from its last checkpoint" if why_not is None else
                f"not relaunched: {why_not}; relaunch with -- --resume"))
    else:
        ctx.registry.transition(
            run.id, reg.FAILED, expect={reg.RUNNING, reg.COLLECTING},
            reason=f"instance {inst.instance_id} is {inst.state}: {exc}")
    release_machine(ctx, run.id, inst, provider)  # and whatever the run created around it
    return recover(ctx, ctx.registry.get(run.id))


def preempted_by_notice(ctx: Context, run: Run, inst: Instance,
                        notice: dict[str, Any]) -> Run:
    """The job stopped on its cloud's preemption notice (the VM's supervisor told the engine,
    which checkpointed and ended): PREEMPTED now, without waiting for the cloud to take the
    machine, which is released; relaunched from that checkpoint when it can be."""
    why_not = recoverable(ctx, run)
    when = notice.get("deadline")
    by = (f" (due {time.strftime('%H:%M:%S', time.localtime(float(when)))})"
          if isinstance(when, int | float) else "")
    ctx.registry.transition(
        run.id, reg.PREEMPTED, expect={reg.RUNNING, reg.COLLECTING},
        reason=f"{notice.get('cloud', 'the cloud')} preemption notice "
               f"({notice.get('action', 'preempt')}){by}: checkpointed and stopped; " + (
                   "relaunching it from that checkpoint" if why_not is None else
                   f"not relaunched: {why_not}; relaunch with -- --resume"))
    release_machine(ctx, run.id, inst, ctx.provider(run.provider))
    return recover(ctx, ctx.registry.get(run.id))


def recoverable(ctx: Context, run: Run) -> str | None:
    """Why a PREEMPTED run cannot be relaunched on its own, or None when it can: a spot run whose
    checkpoints survive the machine (its engine writes them to the bucket itself: a provider
    with ``DIRECT_RESULTS``, and the job says it did) and that has recoveries left
    (``--max-recoveries``, 3 by default)."""
    extra = run.spec.get("extra") or {}
    limit = int(extra.get("max_recoveries", 0))
    done = int(extra.get("recoveries", 0))
    results = str((run.spec.get("job") or {}).get("results_dir", ""))
    if done >= limit:
        return f"{done} of --max-recoveries {limit} used"
    wrote_direct = ((run.instance or {}).get("extra") or {}).get("direct")
    if "://" not in results or results.startswith("file://") or wrote_direct is False or \
            Capability.DIRECT_RESULTS not in ctx.provider(run.provider).capabilities:
        return ("its checkpoints were on the machine's disk (give --results-dir a bucket of "
                "the run's cloud to have it relaunched from them)")
    return None


def recover(ctx: Context, run: Run) -> Run:
    """A spot run whose machine was taken back: a new machine, the engine started again with
    ``--resume`` from the last checkpoint in the run's bucket (SkyPilot's managed-job recovery).
    PREEMPTED -> RECOVERING -> BOOTSTRAPPING -> RUNNING, or FAILED with why. One process wins
    the RECOVERING transition; the others see the run it brings up."""
    registry = ctx.registry
    if run.state != reg.PREEMPTED or recoverable(ctx, run) is not None:
        return run
    spec = spec_of(run)
    n = int(spec.extra.get("recoveries", 0)) + 1
    spec.extra["recoveries"] = n
    if "--resume" not in spec.job.engine_args:
        spec = dataclasses.replace(spec, job=dataclasses.replace(
            spec.job, engine_args=[*spec.job.engine_args, "--resume"]))
    with hold(ctx, run.id):  # the RECOVERING move takes the lease: this process relaunches
        if not registry.transition(run.id, reg.RECOVERING, expect={reg.PREEMPTED},
                                   spec={**run.spec, **asdict(spec)}):
            return registry.get(run.id)
        registry.add_event(run.id, "recovering", {
            "recovery": n, "old_instance": (run.instance_ids or [None])[0]})
        try:
            bring_up(ctx, run.id, ctx.provider(run.provider), spec,
                     reason=f"recovered from a spot preemption ({n} of at most "
                            f"{spec.extra.get('max_recoveries')}); resumed from its last "
                            "checkpoint")
        except DqlctlError:
            pass  # recorded: FAILED with why (the caller sees the row)
    return registry.get(run.id)
