"""A run's machine coming and going: ``launch`` (a new run), ``bring_up`` (a machine with its
engine started, also used by recovery; or on a sweep pool's VM handed over to it),
``finish_bring_up`` (the same from BOOTSTRAPPING, for a run adopted from a controller that died)
with teardown on every failure, ``release_machine`` (a run done with its machine: terminated, or a
pool VM back to its pool), and ``down``.

Each step is committed to the registry *before* it is acted on, and teardown runs on every exit
path of ``bring_up`` (an exception, a failed bootstrap, Ctrl+C, the budget spent). The process
bringing a run up holds its controller lease (``leases.hold``). Nothing is recorded before the
provider's credentials are known to work (``preflight``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.errors import EXIT_RUN_FAILED, DqlctlError, ProviderFailure
from dqlctl.registry import Run
from dqlctl.registry_sweeps import VM_BUSY
from dqlctl.runs.failover import Placement, launch_somewhere, usable_clouds
from dqlctl.runs.jobs import instance_of
from dqlctl.runs.leases import hold
from dqlctl.runs.request import LaunchRequest, build_spec, preflight, spec_of
from providers.base import Instance, LaunchSpec, ProviderError

# Secrets the engine may need, taken from the operator's environment. They go to the machine as
# a 0600 file (or the process environment locally), never into a command line, log or registry.
SECRET_ENV = ("TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID")


def _secrets() -> dict[str, str]:
    return {k: os.environ[k] for k in SECRET_ENV if os.environ.get(k)}


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for a run's ``reason``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class BudgetReached(DqlctlError):
    """``--max-cost`` was reached before the run got going: it is CANCELLED, exit 1."""

    exit_code = EXIT_RUN_FAILED


def over_budget(run: Run, now: float) -> str | None:
    """Why the run must stop for its ``--max-cost`` (it is in a billed state and has spent its
    budget), else None."""
    budget = (run.spec.get("extra") or {}).get("max_cost")
    if not budget or run.state not in reg.BILLED:
        return None
    spent = run.cost_at(now)
    if spent < float(budget):
        return None
    return f"budget reached: ${spent:.2f} of --max-cost ${float(budget):.2f}"


def launch(ctx: Context, req: LaunchRequest,
           on_state: Callable[[Run], None] | None = None) -> Run:
    """Create the run, start it on its provider; the run is RUNNING when this returns.

    A provider without working credentials is refused first, with nothing recorded. Any
    failure (or Ctrl+C) after the run is created tears down what was started and records why.
    """
    run_id = reg.new_run_id()
    spec = build_spec(ctx, req, run_id)
    passed: list[tuple[str, str]] = []
    provider, spec = _usable(ctx, req, spec, passed)
    with hold(ctx, run_id):  # from its first row on, this process is the run's controller
        ctx.registry.create(run_id=run_id, **row_fields(req, spec))
        for cloud, why in passed:       # --provider auto: the cheaper clouds it could not use
            ctx.registry.add_event(run_id, "failover_skipped", {"cloud": cloud, "reason": why})
        start(ctx, run_id, provider, spec, on_state)
    return ctx.registry.get(run_id)


def _usable(ctx: Context, req: LaunchRequest, spec: LaunchSpec,
            passed: list[tuple[str, str]]) -> tuple[Any, LaunchSpec]:
    """The provider the request names, its credentials checked (``preflight``). With
    ``--provider auto`` a cloud whose credentials do not work gives way to the next cheapest
    that does (``failover.usable_clouds``); ``req`` then names it, and ``passed`` gets (cloud,
    why) for each one passed over. Nothing is recorded yet."""
    provider = ctx.provider(req.provider)
    try:
        preflight(provider)
        return provider, spec
    except ProviderFailure as exc:
        if not (spec.extra or {}).get("auto"):
            raise
        passed.append((req.provider, str(exc)))
    for other, moved in usable_clouds(ctx, spec, [req.provider], True,
                                      lambda cloud, why: passed.append((cloud, why))):
        req.provider, req.region, req.instance_type = other.name, moved.region, None
        return other, moved
    raise ProviderFailure(f"--provider auto: no cloud with working credentials offers "
                          f"{spec.gpu or 'T4'} ({'; '.join(why for _, why in passed)})",
                          field="provider")


def row_fields(req: LaunchRequest, spec: LaunchSpec) -> dict[str, Any]:
    """The registry row's fields of a new run (``Registry.create``, ``Registry.claim``)."""
    return {"name": spec.name, "provider": req.provider, "spec": asdict(spec),
            "region": req.region, "instance_type": req.instance_type, "spot": req.spot,
            "results_uri": f"{spec.job.results_dir.rstrip('/')}/{spec.name}"}


def start(ctx: Context, run_id: str, provider: Any, spec: LaunchSpec,
          on_state: Callable[[Run], None] | None = None) -> None:
    """A PENDING run this process created (and holds): PROVISIONING, then ``bring_up``."""
    _step(ctx, run_id, reg.PROVISIONING, on_state)
    bring_up(ctx, run_id, provider, spec, on_state)


def bring_up(ctx: Context, run_id: str, provider: Any, spec: LaunchSpec,
             on_state: Callable[[Run], None] | None = None, *, vm: Instance | None = None,
             **running: Any) -> None:
    """A machine for the run, ready, with its engine started: BOOTSTRAPPING, then RUNNING (with
    ``running`` fields). ``vm``: a machine that is there already (a sweep pool's, handed over to
    this run) instead of a new one. Any failure (or Ctrl+C) tears down what was started and
    records why."""
    registry = ctx.registry

    def machine() -> Placement:
        # no capacity: the next zone, region or (failover_clouds) cloud
        placed = Placement(provider, spec, vm) if vm is not None else \
            launch_somewhere(ctx, run_id, provider, spec)
        instance = placed.instance
        registry.update(run_id, instance=instance.to_dict(), instance_ids=[instance.instance_id],
                        region=instance.region, instance_type=instance.instance_type,
                        spot=instance.spot)
        # a relaunch may cost another $/h: what was billed so far keeps its own price
        registry.reprice(run_id, placed.provider.price_per_hour(instance))
        _step(ctx, run_id, reg.BOOTSTRAPPING, on_state)
        return placed

    _bring_up(ctx, run_id, machine, on_state, running)


def finish_bring_up(ctx: Context, run: Run, on_state: Callable[[Run], None] | None = None) -> Run:
    """Adopt a BOOTSTRAPPING run whose controller died: wait for its machine, start its engine
    unless it already runs, RUNNING; any failure tears it down (FAILED with why)."""
    inst = instance_of(run)
    assert inst is not None, "a BOOTSTRAPPING run has a machine"
    try:
        placed = Placement(ctx.provider(run.provider), spec_of(run), inst)
        _bring_up(ctx, run.id, lambda: placed, on_state, {}, adopted=True)
    except DqlctlError:
        pass  # recorded: FAILED with why (the caller sees the row)
    return ctx.registry.get(run.id)


def _step(ctx: Context, run_id: str, state: str, on_state: Callable[[Run], None] | None,
          **fields: Any) -> None:
    ctx.registry.transition(run_id, state, **fields)
    if on_state is not None:
        on_state(ctx.registry.get(run_id))


def _bring_up(ctx: Context, run_id: str, machine: Callable[[], Placement],
              on_state: Callable[[Run], None] | None, running: dict[str, Any],
              adopted: bool = False) -> None:
    """``machine()`` (a new one, BOOTSTRAPPING, on the provider it says), then ready, the
    engine started (unless its job is running already: ``adopted``), RUNNING; under the run's
    lease, torn down on every failure."""
    registry = ctx.registry
    instance: Instance | None = None
    provider: Any = None
    try:
        with hold(ctx, run_id):
            placed = machine()
            provider, spec, instance = placed.provider, placed.spec, placed.instance
            instance = provider.wait_ready(instance)
            for warning in instance.extra.pop("warnings", []):  # e.g. a host key taken unverified
                registry.add_event(run_id, "warning", {"message": warning})
            registry.update(run_id, instance=instance.to_dict())
            why = over_budget(registry.get(run_id), ctx.clock())
            if why:
                raise BudgetReached(why)
            if not (adopted and _job_started(provider, instance, spec)):
                instance = provider.start_job(instance, spec, secrets=_secrets())
                registry.update(run_id, instance=instance.to_dict())
                pulled = instance.extra.get("engine_image")
                if pulled and pulled != spec.image:
                    # the digest the VM pulled: a relaunch runs that, wherever the tag moved
                    registry.merge(run_id, spec={"image": pulled})
            _step(ctx, run_id, reg.RUNNING, on_state, **running)
    except BaseException as exc:
        reason = one_line(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        if isinstance(exc, BudgetReached):
            reason = str(exc)
        if instance is not None and provider is not None:
            try:
                release_machine(ctx, run_id, instance, provider)
            except Exception as term_exc:  # keep the original error; say teardown failed
                reason += f"; teardown failed: {one_line(term_exc)}"
        state = reg.CANCELLED if isinstance(exc, KeyboardInterrupt | BudgetReached) \
            else reg.FAILED
        registry.transition(run_id, state, reason=reason)
        if isinstance(exc, ProviderError):
            raise ProviderFailure(f"launch failed: {reason}", field=exc.field) from None
        raise


def _job_started(provider: Any, instance: Instance, spec: LaunchSpec) -> bool:
    """Whether the run's engine was started on ``instance`` already (a controller that died
    after starting it): its job runs or has ended. A fresh machine has no job yet."""
    try:
        handle = provider.job(instance, asdict(spec))
    except Exception:  # noqa: BLE001 - no job recorded on the instance yet (e.g. no workdir)
        return False
    try:
        status = handle.status()
    except ProviderError:
        return False
    finally:
        handle.close()
    return status.running or status.exit_code is not None


def release_machine(ctx: Context, run_id: str, inst: Instance, provider: Any, *,
                    reusable: bool = False, reason: str | None = None) -> None:
    """The run is done with its machine: terminated, unless it is a sweep pool's VM
    (``dqlctl.sweeps.pool``). A pool VM this run holds (BUSY with it) goes back to its pool when
    ``reusable`` (the run's engine ended and the machine is sound: the next look hands it the
    next member, or terminates it), else is terminated and marked GONE; a pool VM the run no
    longer holds (another member's now, idle, or being terminated) is left alone."""
    registry = ctx.registry
    vm = registry.pool_vm(inst.instance_id)
    if vm is not None and (vm.run_id != run_id or vm.state != VM_BUSY):
        return
    if vm is not None and reusable and registry.pool_vm_idle(inst.instance_id, run_id,
                                                             inst.to_dict()):
        registry.add_event(run_id, "pool_vm_released", {"instance": inst.instance_id})
        return
    provider.terminate(inst)
    if vm is not None:
        registry.pool_vm_gone(inst.instance_id, reason or f"terminated with run {run_id}")


def down(ctx: Context, run: Run, reason: str = "stopped by `dqlctl down`") -> Run:
    """Stop a run and release its instance (``release_machine``: a sweep pool's VM that another
    member runs on now is left alone); idempotent. (The registry prices the run as it leaves its
    billed state.)"""
    registry = ctx.registry
    inst = instance_of(run)
    provider = ctx.provider(run.provider)
    if not run.terminal:
        # record the intent first: a crash mid-teardown leaves CANCELLED + a live instance that
        # `ps --orphans` still shows (tagged), never a RUNNING row with nothing behind it.
        registry.transition(run.id, reg.CANCELLED, reason=reason)
    if inst is not None:
        try:
            release_machine(ctx, run.id, inst, provider, reason=reason)
        except ProviderError as exc:
            raise ProviderFailure(f"could not terminate {inst.instance_id}: {exc}") from None
    registry.add_event(run.id, "down", {"instance": inst.instance_id if inst else None})
    return registry.get(run.id)
