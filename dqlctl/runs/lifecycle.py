"""A run's machine coming and going: ``launch`` (a new run), ``bring_up`` (a machine with its
engine started, also used by recovery) with teardown on every failure, and ``down``.

Each step is committed to the registry *before* it is acted on, and teardown runs on every exit
path of ``bring_up`` (an exception, a failed bootstrap, Ctrl+C).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.errors import ProviderFailure
from dqlctl.registry import Run
from dqlctl.runs.jobs import instance_of
from dqlctl.runs.request import LaunchRequest, build_spec
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


def launch(ctx: Context, req: LaunchRequest,
           on_state: Callable[[Run], None] | None = None) -> Run:
    """Create the run, start it on its provider; the run is RUNNING when this returns.

    Any failure (or Ctrl+C) before that point tears down what was started and records why.
    """
    run_id = reg.new_run_id()
    spec = build_spec(ctx, req, run_id)
    provider = ctx.provider(req.provider)
    name, job = spec.name, spec.job
    registry = ctx.registry
    registry.create(name=name, provider=req.provider, spec=asdict(spec), region=req.region,
                    instance_type=req.instance_type, spot=req.spot,
                    results_uri=f"{job.results_dir.rstrip('/')}/{name}", run_id=run_id)
    registry.transition(run_id, reg.PROVISIONING)
    if on_state is not None:
        on_state(registry.get(run_id))
    bring_up(ctx, run_id, provider, spec, on_state)
    return registry.get(run_id)


def bring_up(ctx: Context, run_id: str, provider: Any, spec: LaunchSpec,
             on_state: Callable[[Run], None] | None = None, **running: Any) -> None:
    """A machine for the run, ready, with its engine started: BOOTSTRAPPING, then RUNNING (with
    ``running`` fields). Any failure (or Ctrl+C) tears down what was started and records why."""
    registry = ctx.registry
    instance: Instance | None = None

    def step(state: str, **fields: Any) -> None:
        registry.transition(run_id, state, **fields)
        if on_state is not None:
            on_state(registry.get(run_id))

    try:
        instance = provider.launch(spec)
        registry.update(run_id, instance=instance.to_dict(), instance_ids=[instance.instance_id],
                        region=instance.region, instance_type=instance.instance_type,
                        spot=instance.spot, price_per_hour=provider.price_per_hour(instance))
        step(reg.BOOTSTRAPPING)
        instance = provider.wait_ready(instance)
        for warning in instance.extra.pop("warnings", []):  # e.g. a host key taken unverified
            registry.add_event(run_id, "warning", {"message": warning})
        registry.update(run_id, instance=instance.to_dict())
        instance = provider.start_job(instance, spec, secrets=_secrets())
        registry.update(run_id, instance=instance.to_dict())
        step(reg.RUNNING, **running)
    except BaseException as exc:
        reason = one_line(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        if instance is not None:
            try:
                provider.terminate(instance)
            except Exception as term_exc:  # keep the original error; say teardown failed
                reason += f"; teardown failed: {one_line(term_exc)}"
        state = reg.CANCELLED if isinstance(exc, KeyboardInterrupt) else reg.FAILED
        registry.transition(run_id, state, reason=reason)
        if isinstance(exc, ProviderError):
            raise ProviderFailure(f"launch failed: {reason}", field=exc.field) from None
        raise


def down(ctx: Context, run: Run, reason: str = "stopped by `dqlctl down`") -> Run:
    """Stop a run and release its instance; idempotent. (The registry prices the run as it
    leaves its billed state.)"""
    registry = ctx.registry
    inst = instance_of(run)
    provider = ctx.provider(run.provider)
    if not run.terminal:
        # record the intent first: a crash mid-teardown leaves CANCELLED + a live instance that
        # `ps --orphans` still shows (tagged), never a RUNNING row with nothing behind it.
        registry.transition(run.id, reg.CANCELLED, reason=reason)
    if inst is not None:
        try:
            provider.terminate(inst)
        except ProviderError as exc:
            raise ProviderFailure(f"could not terminate {inst.instance_id}: {exc}") from None
    registry.add_event(run.id, "down", {"instance": inst.instance_id if inst else None})
    return registry.get(run.id)
