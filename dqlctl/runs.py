"""Run orchestration, provider-agnostic: launch, follow, reconcile, stop.

Core functions return data (``Run`` rows, event dicts); the CLI and the TUI only render them.

The lifecycle is DESIGN.md's. Each step is committed to the registry *before* it is acted on, and
teardown runs on every exit path of ``launch`` (an exception, a failed bootstrap, Ctrl+C). Once a
run is RUNNING it belongs to its instance, not to the dqlctl process that started it: ``follow``
can be interrupted (or dqlctl killed) and the run goes on; any later ``ps``/``show``/``logs``
reconciles it with what the provider reports (SkyPilot's ``sky launch`` behaves the same way).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.errors import DqlctlError, ProviderFailure, UsageError
from dqlctl.registry import Run
from engine.events import TERMINAL_EVENTS, parse_event_line
from providers import AUTO, DEFAULT_PROVIDER
from providers import provider_names as all_providers
from providers.base import (
    RUN_TAG,
    Capability,
    Instance,
    JobHandle,
    JobSpec,
    LaunchSpec,
    ProviderError,
)

AGENT_TYPES = ("dql", "custom", "memory")
ENGINE_COMMANDS = ("full-workflow", "train")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
POLL_S = 0.2


@dataclass
class LaunchRequest:
    provider: str = DEFAULT_PROVIDER
    data: str = "STOCKS_GOOGL.csv"
    agent_type: str = "custom"
    episodes: int = 20
    name: str | None = None
    command: str = "full-workflow"
    tune: bool = False
    runtime: str = "auto"
    region: str | None = None
    instance_type: str | None = None
    gpu: str | None = None
    spot: bool = True
    seed: int | None = None
    results_dir: str | None = None
    image: str | None = None          # engine container image (--runtime docker)
    image_id: str | None = None       # the VM image (AMI / GCE image / Azure image)
    ssh_cidr: str | None = None       # who may reach port 22 (default: this machine's address)
    max_price: float | None = None
    keep: bool = False                # leave the VM up after the run (for debugging)
    max_cost: float | None = None     # stop the run (checkpoint first) before it costs more
    max_recoveries: int = 3           # relaunches after a spot preemption (see ``recover``)
    engine_args: list[str] = field(default_factory=list)


def resolve_auto(ctx: Context, req: LaunchRequest) -> None:
    """``--provider auto``: the cheapest priced offer that fits the request picks the cloud,
    region and instance type (the same catalog and estimate as ``dqlctl cost``)."""
    if req.provider != AUTO:
        return
    from providers.prices.estimate import PriceError, PriceRequest, cheapest_offer

    try:
        offer = cheapest_offer(PriceRequest(gpu=req.gpu or "T4", instance_type=req.instance_type,
                                            provider=AUTO, region=req.region, spot=req.spot),
                               home=ctx.home)
    except PriceError as exc:
        raise UsageError(f"--provider auto: {exc}") from None
    req.provider, req.region, req.instance_type = offer.provider, offer.region, offer.instance_type


def validate_request(ctx: Context, req: LaunchRequest) -> str:
    """Check everything that can be checked before anything is created; the resolved data path."""
    from providers import COMPUTE_PROVIDERS, PLANNED_PROVIDERS

    resolve_auto(ctx, req)
    if req.max_recoveries < 0:
        raise UsageError(f"--max-recoveries must be 0 or more, got {req.max_recoveries}")
    if req.max_cost is not None and req.max_cost <= 0:
        raise UsageError(f"--max-cost must be a positive amount of USD, got {req.max_cost}")

    if req.provider not in COMPUTE_PROVIDERS:
        known = ", ".join(sorted(COMPUTE_PROVIDERS))
        if req.provider in PLANNED_PROVIDERS:
            raise UsageError(f"provider {req.provider!r} is not available in this build yet "
                             f"(available: {known})")
        raise UsageError(f"unknown provider {req.provider!r} (choose from: {known}, or auto)")
    if req.agent_type not in AGENT_TYPES:
        raise UsageError(f"unknown agent type {req.agent_type!r} (choose from: "
                         f"{', '.join(AGENT_TYPES)})")
    if req.command not in ENGINE_COMMANDS:
        raise UsageError(f"unknown engine command {req.command!r} (choose from: "
                         f"{', '.join(ENGINE_COMMANDS)})")
    if req.episodes <= 0:
        raise UsageError(f"--episodes must be a positive number of episodes, got {req.episodes}")
    if req.name is not None and not _NAME_RE.match(req.name):
        raise UsageError(f"run name {req.name!r} is not valid: use letters, digits, '.', '_' "
                         "and '-' (at most 63 characters)")
    from providers.layout import DataFileNotFound, resolve_data_path

    try:
        return resolve_data_path(req.data)
    except DataFileNotFound as exc:
        raise UsageError(str(exc)) from None


def _engine_args(req: LaunchRequest, experiment: str) -> list[str]:
    args = [req.command, "--agent_type", req.agent_type, "--episodes", str(req.episodes),
            "--experiment_name", experiment]
    if req.command == "full-workflow" and not req.tune:
        args.append("--skip_tuning")
    if req.seed is not None:
        args += ["--seed", str(req.seed)]
    return args + list(req.engine_args)


def build_spec(ctx: Context, req: LaunchRequest, run_id: str) -> LaunchSpec:
    """The provider's launch spec for a validated request."""
    data_path = validate_request(ctx, req)
    name = req.name or f"{Path(data_path).stem.lower().replace('_', '-')}-{req.agent_type}"
    workdir = ctx.run_dir(run_id)
    results_dir = req.results_dir or str(workdir / "results")
    job = JobSpec(engine_args=_engine_args(req, name), data_file=data_path,
                  results_dir=results_dir, experiment=name)
    extra: dict[str, Any] = {"keep": req.keep, "max_recoveries": req.max_recoveries}
    if req.max_cost is not None:
        extra["max_cost"] = req.max_cost
    if req.ssh_cidr:
        extra["ssh_cidr"] = req.ssh_cidr
    if req.image_id:
        extra["image_id"] = req.image_id
    return LaunchSpec(run_id=run_id, name=name, job=job, region=req.region,
                      instance_type=req.instance_type, gpu=req.gpu, spot=req.spot,
                      max_price=req.max_price, image=req.image,
                      runtime=req.runtime, tags={RUN_TAG: run_id}, workdir=str(workdir),
                      extra=extra)


# Secrets the engine may need, taken from the operator's environment. They go to the machine as
# a 0600 file (or the process environment locally), never into a command line, log or registry.
SECRET_ENV = ("TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID")


def _secrets() -> dict[str, str]:
    return {k: os.environ[k] for k in SECRET_ENV if os.environ.get(k)}


def plan(ctx: Context, req: LaunchRequest) -> dict[str, Any]:
    """What ``launch`` would do (``--dry-run``); creates nothing, not even a registry row."""
    spec = build_spec(ctx, req, "dry-run")
    provider = ctx.provider(req.provider)
    out: dict[str, Any] = {"name": spec.name, "data": spec.job.data_file,
                           "engine": " ".join(spec.job.engine_args)}
    try:
        out.update(provider.plan(spec))
    except ProviderError as exc:
        raise ProviderFailure(str(exc)) from None
    itype, region = out.get("instance_type"), out.get("region")
    if Capability.PRICES in provider.capabilities and itype and region:
        from providers.prices.estimate import lookup

        offer = lookup(req.provider, itype, region, spot=req.spot, home=ctx.home)
        out["price"] = (f"${offer.price_per_hour:.4f}/h ({'spot' if req.spot else 'on-demand'}"
                        ", catalog)" if offer and offer.price_per_hour is not None
                        else "unknown (not in the price catalog)")
    if req.max_cost is not None:
        out["budget"] = f"stop at ${req.max_cost:.2f} (the engine checkpoints first)"
    return out


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
    _bring_up(ctx, run_id, provider, spec, on_state)
    return registry.get(run_id)


def _bring_up(ctx: Context, run_id: str, provider: Any, spec: LaunchSpec,
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
        registry.update(run_id, instance=instance.to_dict())
        instance = provider.start_job(instance, spec, secrets=_secrets())
        registry.update(run_id, instance=instance.to_dict())
        step(reg.RUNNING, **running)
    except BaseException as exc:
        reason = _one_line(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        if instance is not None:
            try:
                provider.terminate(instance)
            except Exception as term_exc:  # keep the original error; say teardown failed
                reason += f"; teardown failed: {_one_line(term_exc)}"
        state = reg.CANCELLED if isinstance(exc, KeyboardInterrupt) else reg.FAILED
        registry.transition(run_id, state, reason=reason)
        if isinstance(exc, ProviderError):
            raise ProviderFailure(f"launch failed: {reason}") from None
        raise


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# -- following and reconciling ----------------------------------------------------------------------


def _instance(run: Run) -> Instance | None:
    return Instance.from_dict(run.instance) if run.instance else None


def job_handle(ctx: Context, run: Run) -> JobHandle | None:
    """The provider's view of the run's job (log, events, exit), or None before it has one."""
    inst = _instance(run)
    if inst is None:
        return None
    return ctx.provider(run.provider).job(inst, run.spec)


class Follower:
    """Whole lines appended to one of a job's files since the last call; keeps the byte offset.

    A half-written last line waits for its newline, so nothing is printed twice or cut.
    """

    def __init__(self, handle: JobHandle | None, name: str, offset: int = 0) -> None:
        self.handle = handle
        self.name = name
        self.offset = offset
        self._partial = b""

    def read_lines(self) -> list[str]:
        if self.handle is None:
            return []
        chunk = self.handle.read(self.name, self.offset)
        if not chunk:
            return []
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        return [line.decode("utf-8", errors="replace") for line in lines]

    def rest(self) -> list[str]:
        """Everything left, the unterminated last line included (the job has ended)."""
        lines = self.read_lines()
        if self._partial:
            lines.append(self._partial.decode("utf-8", errors="replace"))
            self._partial = b""
        return lines


def read_all_lines(handle: JobHandle, name: str) -> list[str]:
    """Every line of one of a job's files as it is now."""
    follower = Follower(handle, name)
    lines: list[str] = []
    while True:
        before = follower.offset
        lines.extend(follower.read_lines())
        if follower.offset == before:
            return lines + follower.rest()


def apply_engine_events(ctx: Context, run: Run, events: list[dict[str, Any]]) -> None:
    """Fold engine events into the registry row: progress and metrics."""
    progress = dict(run.progress)
    metrics = dict(run.metrics)
    changed = False
    for ev in events:
        kind = ev.get("event")
        if kind == "episode":
            progress.update({k: ev.get(k) for k in ("episode", "episodes", "reward", "loss",
                                                     "epsilon", "val_sharpe", "steps_per_s",
                                                     "env_steps")})
            changed = True
        elif kind == "stage":
            progress["stage"] = ev.get("name")
            changed = True
        elif kind == "trial":
            progress.update({"trial": ev.get("trial"), "trials": ev.get("trials")})
            changed = True
        elif kind == "evaluation" and isinstance(ev.get("metrics"), dict):
            metrics[ev.get("split") or "test"] = ev["metrics"]
            changed = True
        elif kind in TERMINAL_EVENTS:
            progress["engine_status"] = kind
            if kind == "failed":
                progress["engine_reason"] = ev.get("reason")
            if isinstance(ev.get("metrics"), dict) and ev["metrics"]:
                metrics["test"] = ev["metrics"]
            changed = True
    if changed:
        ctx.registry.update(run.id, progress=progress, metrics=metrics)
        run.progress, run.metrics = progress, metrics


def _events(lines: list[str]) -> list[dict[str, Any]]:
    return [e for e in (parse_event_line(x) for x in lines) if e]


def run_cost(ctx: Context, run: Run, now: float | None = None) -> float:
    """What the run has cost: the hours it held a machine (from its state events) at its $/h."""
    if not run.price_per_hour:
        return run.cost_usd
    from providers.prices.estimate import accrued_cost, billable_intervals

    now = ctx.clock() if now is None else now
    intervals = billable_intervals(ctx.registry.events(run.id), now)
    return round(accrued_cost(intervals, run.price_per_hour), 4)


def _last_log_line(handle: JobHandle) -> str | None:
    lines = [x.strip() for x in read_all_lines(handle, "log")[-5:] if x.strip()]
    return lines[-1][:300] if lines else None


def log_tail(ctx: Context, run: Run, n: int) -> list[str]:
    handle = job_handle(ctx, run)
    if handle is None or n <= 0:
        return []
    try:
        return read_all_lines(handle, "log")[-n:]
    finally:
        handle.close()


def finish_if_ended(ctx: Context, run: Run, handle: JobHandle | None = None) -> Run:
    """If the run's job has ended, record how (COLLECTING -> SUCCEEDED, or FAILED)."""
    if run.terminal or run.state not in (reg.RUNNING, reg.COLLECTING):
        return run
    inst = _instance(run)
    if inst is None:
        return run
    provider = ctx.provider(run.provider)
    own = handle is None
    handle = handle or provider.job(inst, run.spec)
    try:
        try:
            status = handle.status()
        except ProviderError as exc:  # the VM does not answer: is it still there?
            return _machine_lost(ctx, run, inst, exc)
        if status.running:
            return run
        # the last events may have landed after the last poll
        apply_engine_events(ctx, run, _events(read_all_lines(handle, "events"))[-50:])
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
                registry.transition(run.id, reg.SUCCEEDED, expect={reg.COLLECTING},
                                    cost_usd=run_cost(ctx, registry.get(run.id)))
        else:
            if not reason:
                reason = (f"engine exited with code {code}" if code is not None
                          else "engine ended")
                last = _last_log_line(handle)
                if last:
                    reason += f": {last}"
            provider.terminate(inst)
            registry.transition(run.id, reg.FAILED, expect={reg.RUNNING, reg.COLLECTING},
                                reason=reason, exit_code=code, cost_usd=run_cost(ctx, registry.get(run.id)))
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
        reason += f"; results not collected: {_one_line(exc)}"
    if not run.spec.get("extra", {}).get("keep"):
        provider.terminate(inst)
    registry.transition(run.id, reg.CANCELLED, expect={reg.COLLECTING}, reason=reason,
                        cost_usd=run_cost(ctx, registry.get(run.id)))
    return registry.get(run.id)


def stop(ctx: Context, run: Run, wait_s: float = 120.0) -> Run:
    """Stop a RUNNING run gracefully: the engine gets SIGTERM and writes a checkpoint, its
    results (checkpoint included) are collected, then the machine is released (CANCELLED).

    ``down`` releases the machine at once; this keeps the work. A job that has not ended after
    ``wait_s`` seconds is taken down. A run that has already ended is returned as it is.
    """
    registry = ctx.registry
    run = reconcile(ctx, run)
    if run.terminal:
        return run
    if run.state != reg.RUNNING:
        raise UsageError(f"run {run.id} is {run.state}: only a RUNNING run can be stopped "
                         "(`dqlctl down` releases it)")
    inst = _instance(run)
    handle = job_handle(ctx, run)
    if inst is None or handle is None:
        return down(ctx, run, reason="stopped (no job to ask): machine released")
    registry.update(run.id, spec={**run.spec, "stop_requested": ctx.clock()})
    registry.add_event(run.id, "stop", {"wait_s": wait_s})
    try:
        handle.stop()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not handle.status().running:
                break
            time.sleep(POLL_S)
        else:
            return down(ctx, registry.get(run.id),
                        reason=f"did not stop within {wait_s:.0f} s: machine released")
        return finish_if_ended(ctx, registry.get(run.id), handle)
    finally:
        handle.close()


@dataclass(frozen=True)
class ShellCommand:
    """How to open a shell on a run's machine: ``argv`` run in ``cwd``."""

    argv: list[str]
    cwd: str | None = None


def shell_command(ctx: Context, run: Run, command: list[str] | None = None) -> ShellCommand:
    """``ssh`` to the run's VM with its key and its pinned host key only (a changed host key is
    refused, never learned), in the run's folder; for a local run, a shell in its folder.

    ``command`` runs instead of an interactive shell. The pinned key is written to
    ``<home>/ssh/<run>.known_hosts``; the private key stays where the provider keeps it.
    """
    import shlex

    inst = _instance(run)
    if run.terminal or inst is None:
        raise UsageError(f"run {run.id} is {run.state}: it has no machine to open a shell on")
    workdir = inst.extra.get("workdir")
    provider = ctx.provider(run.provider)
    if Capability.LOCAL_JOB in provider.capabilities:
        shell = os.environ.get("SHELL") or "/bin/sh"
        return ShellCommand(command or [shell], cwd=workdir)
    try:
        target = provider.ssh_target(inst)
    except ProviderError as exc:
        raise ProviderFailure(f"cannot reach run {run.id}: {exc}") from None
    if not target.host_key:
        raise ProviderFailure(f"run {run.id} has no pinned host key yet (it is {run.state}): "
                              "wait until it is RUNNING")
    folder = ctx.home / "ssh"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    known = folder / f"{run.id}.known_hosts"
    host = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    known.write_text(f"{host} {target.host_key}\n")
    argv = ["ssh", "-i", target.key_path, "-p", str(target.port),
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "GlobalKnownHostsFile=/dev/null",
            f"{target.username}@{target.host}"]
    if command:
        argv.append(f"cd {shlex.quote(workdir)} && {shlex.join(command)}" if workdir
                    else shlex.join(command))
    else:
        argv.insert(1, "-t")
        if workdir:
            argv.append(f"cd {shlex.quote(workdir)} && exec \"${{SHELL:-/bin/sh}}\" -l")
    return ShellCommand(argv)


def enforce_budget(ctx: Context, run: Run) -> Run:
    """``--max-cost``: a running run that has spent its budget is stopped (the engine gets
    SIGTERM and checkpoints first). Enforced whenever a dqlctl process looks at the run (a
    following ``launch``, ``logs -f``, ``ps``, the TUI), so keep one watching long cloud runs."""
    budget = (run.spec.get("extra") or {}).get("max_cost")
    if not budget or run.state != reg.RUNNING:
        return run
    spent = run_cost(ctx, run)
    if spent < budget:
        return run
    return down(ctx, run, reason=f"budget reached: ${spent:.2f} of --max-cost ${budget:.2f}")


def _machine_lost(ctx: Context, run: Run, inst: Instance, exc: Exception) -> Run:
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
                f"not relaunched: {why_not}; relaunch with -- --resume"),
            cost_usd=run_cost(ctx, ctx.registry.get(run.id)))
    else:
        ctx.registry.transition(
            run.id, reg.FAILED, expect={reg.RUNNING, reg.COLLECTING},
            reason=f"instance {inst.instance_id} is {inst.state}: {exc}",
            cost_usd=run_cost(ctx, ctx.registry.get(run.id)))
    provider.terminate(inst)  # release whatever the run created around it
    return recover(ctx, ctx.registry.get(run.id))


def _spec_of(run: Run) -> LaunchSpec:
    """The run's launch spec, as stored in the registry."""
    names = {f.name for f in fields(LaunchSpec)}
    data = {k: v for k, v in run.spec.items() if k in names}
    return LaunchSpec(**{**data, "job": JobSpec(**data["job"])})


def recoverable(ctx: Context, run: Run) -> str | None:
    """Why a PREEMPTED run cannot be relaunched on its own, or None when it can: a spot run whose
    checkpoints survive the machine (its engine writes them to the bucket itself) and that has
    recoveries left (``--max-recoveries``, 3 by default)."""
    extra = run.spec.get("extra") or {}
    limit = int(extra.get("max_recoveries", 0))
    done = int(extra.get("recoveries", 0))
    results = str((run.spec.get("job") or {}).get("results_dir", ""))
    if done >= limit:
        return f"{done} of --max-recoveries {limit} used"
    if "://" not in results or results.startswith("file://") or \
            Capability.DIRECT_RESULTS not in ctx.provider(run.provider).capabilities:
        return ("its checkpoints were on the machine's disk (give --results-dir a bucket to "
                "have it relaunched from them)")
    return None


def recover(ctx: Context, run: Run) -> Run:
    """A spot run whose machine was taken back: a new machine, the engine started again with
    ``--resume`` from the last checkpoint in the run's bucket (SkyPilot's managed-job recovery).
    PREEMPTED -> RECOVERING -> BOOTSTRAPPING -> RUNNING, or FAILED with why. One process wins
    the RECOVERING transition; the others see the run it brings up."""
    registry = ctx.registry
    if run.state != reg.PREEMPTED or recoverable(ctx, run) is not None:
        return run
    spec = _spec_of(run)
    n = int(spec.extra.get("recoveries", 0)) + 1
    spec.extra["recoveries"] = n
    if "--resume" not in spec.job.engine_args:
        spec = dataclasses.replace(spec, job=dataclasses.replace(
            spec.job, engine_args=[*spec.job.engine_args, "--resume"]))
    if not registry.transition(run.id, reg.RECOVERING, expect={reg.PREEMPTED},
                               spec={**run.spec, **asdict(spec)}):
        return registry.get(run.id)
    registry.add_event(run.id, "recovering", {"recovery": n,
                                              "old_instance": (run.instance_ids or [None])[0]})
    try:
        _bring_up(ctx, run.id, ctx.provider(run.provider), spec,
                  reason=f"recovered from a spot preemption ({n} of at most "
                         f"{spec.extra.get('max_recoveries')}); resumed from its last checkpoint")
    except DqlctlError:
        pass  # recorded: FAILED with why (the caller sees the row)
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
    inst = _instance(run)
    provider = ctx.provider(run.provider) if inst is not None else None
    if inst is not None and provider is not None and run.state == reg.RUNNING and \
            Capability.LOCAL_JOB not in provider.capabilities:
        # ask the cloud first (one call): a machine taken back is not worth SSH retries
        try:
            described = provider.describe(Instance.from_dict(run.instance or {}))
        except ProviderError:
            described = None
        if described is not None and described.state not in ("pending", "running"):
            return _machine_lost(ctx, run, inst, ProviderError("no answer"))
    handle = job_handle(ctx, run)
    if handle is None:
        return run
    try:
        if run.state == reg.RUNNING:
            try:
                apply_engine_events(ctx, run, _events(read_all_lines(handle, "events")))
            except ProviderError as exc:
                inst = _instance(run)
                assert inst is not None
                return _machine_lost(ctx, run, inst, exc)
        return finish_if_ended(ctx, run, handle)
    finally:
        handle.close()


def _reconcile_stuck_launch(ctx: Context, run: Run) -> Run:
    """A launch whose controller died before RUNNING: is anything alive? Else mark it failed."""
    owner_alive = False
    inst = _instance(run)
    provider = ctx.provider(run.provider)
    if inst is not None:
        inst = provider.describe(inst)
        owner_alive = inst.state in ("pending", "running")
    # A launch in progress in another process is at most a few minutes old; leave it alone.
    if not owner_alive and ctx.clock() - run.updated_at > 600:
        if inst is not None:
            provider.terminate(inst)
        ctx.registry.transition(run.id, reg.FAILED, expect={run.state},
                                reason=f"launch interrupted in {run.state}; cleaned up")
        return ctx.registry.get(run.id)
    return run


def reconcile_all(ctx: Context) -> list[Run]:
    return [reconcile(ctx, run) for run in ctx.registry.list(include_terminal=False)]


def follow(ctx: Context, run: Run, on_event: Callable[[dict[str, Any]], None] | None = None,
           on_log: Callable[[str], None] | None = None, poll_s: float = POLL_S) -> Run:
    """Stream a run's engine events (and log lines) until it ends; the final row."""
    handle = job_handle(ctx, run)
    if handle is None:
        return run
    events = Follower(handle, "events")
    logs = Follower(handle if on_log is not None else None, "log")

    def pump(final: bool = False) -> None:
        new = _events(events.rest() if final else events.read_lines())
        if new:
            apply_engine_events(ctx, run, new)
            if on_event is not None:
                for ev in new:
                    on_event(ev)
        if on_log is not None:
            for line in (logs.rest() if final else logs.read_lines()):
                on_log(line)

    try:
        while True:
            try:
                pump()
            except ProviderError as exc:
                inst = _instance(run)
                assert inst is not None
                lost = _machine_lost(ctx, ctx.registry.get(run.id), inst, exc)
                if lost.state == reg.RUNNING and lost.instance_ids != run.instance_ids:
                    return follow(ctx, lost, on_event, on_log, poll_s)  # recovered: go on there
                if lost.state not in (reg.RUNNING, reg.COLLECTING):
                    return lost
                raise
            current = enforce_budget(ctx, ctx.registry.get(run.id))
            if current.instance_ids != run.instance_ids and not current.terminal:
                # another dqlctl process recovered it on a new machine: follow it there
                return follow(ctx, reconcile(ctx, current), on_event, on_log, poll_s)
            if current.terminal:
                pump(final=True)
                return current
            checked = finish_if_ended(ctx, current, handle)
            if checked.terminal:
                pump(final=True)
                return checked
            time.sleep(poll_s)
    finally:
        handle.close()


def iter_log(ctx: Context, run: Run, follow_: bool, tail: int | None,
             poll_s: float = POLL_S) -> Iterator[str]:
    """Lines of a run's log: the last ``tail`` (or all), then new ones while it runs."""
    handle = job_handle(ctx, run)
    if handle is None:
        raise DqlctlError(f"run {run.id} has no log yet (state {run.state})")
    try:
        follower = Follower(handle, "log")
        lines = follower.read_lines()
        yield from (lines[-tail:] if tail else [] if tail == 0 else lines)
        if not follow_:
            yield from follower.rest()
            return
        while True:
            yield from follower.read_lines()
            run = ctx.registry.get(run.id)
            if not run.terminal:
                run = finish_if_ended(ctx, run, handle)
            if run.terminal:
                yield from follower.rest()
                return
            time.sleep(poll_s)
    finally:
        handle.close()


def down(ctx: Context, run: Run, reason: str = "stopped by `dqlctl down`") -> Run:
    """Stop a run and release its instance; idempotent."""
    registry = ctx.registry
    inst = _instance(run)
    provider = ctx.provider(run.provider)
    if not run.terminal:
        # record the intent first: a crash mid-teardown leaves CANCELLED + a live instance that
        # `ps --orphans` still shows (tagged), never a RUNNING row with nothing behind it.
        registry.transition(run.id, reg.CANCELLED, reason=reason,
                            cost_usd=run_cost(ctx, registry.get(run.id)))
    if inst is not None:
        try:
            provider.terminate(inst)
        except ProviderError as exc:
            raise ProviderFailure(f"could not terminate {inst.instance_id}: {exc}") from None
    registry.add_event(run.id, "down", {"instance": inst.instance_id if inst else None})
    return registry.get(run.id)


def orphans(ctx: Context, provider_names: list[str] | None = None,
            warn: Callable[[str], None] | None = None) -> list[Instance]:
    """Instances tagged by dqlctl that no live run owns (they cost money).

    A provider that cannot be asked (no credentials, say) is reported through ``warn``.
    """
    names = provider_names or sorted(set(all_providers()) & (
        {r.provider for r in ctx.registry.list()} | {DEFAULT_PROVIDER}))
    found: list[Instance] = []
    for name in names:
        try:
            instances = ctx.provider(name).list_instances({RUN_TAG: None})
        except ProviderError as exc:
            if warn is None:
                raise
            warn(f"{name}: not checked ({exc})")
            continue
        for inst in instances:
            run_id = inst.tags.get(RUN_TAG)
            try:
                run = ctx.registry.get(run_id) if run_id else None
            except reg.RegistryError:
                run = None
            if run is None or run.terminal:
                found.append(inst)
    return found


def down_orphans(ctx: Context, instances: list[Instance]) -> list[str]:
    done = []
    for inst in instances:
        ctx.provider(inst.provider).terminate(inst)
        done.append(inst.instance_id)
    return done


def run_exit_code(run: Run) -> int:
    """What `launch --follow` returns: 0 succeeded, 2 the engine refused its input, else 1."""
    if run.state == reg.SUCCEEDED:
        return 0
    if run.exit_code == 2:
        return 2
    return 1


def run_summary(ctx: Context, run: Run, now: float | None = None) -> dict[str, Any]:
    """The JSON shape of a run for `ps --json` and `show --json`."""
    now = now if now is not None else ctx.clock()
    data = run.to_dict()
    data["cost_usd"] = run_cost(ctx, run, now)
    data["age_s"] = round(now - run.created_at, 1)
    return data


def progress_text(run: Run, episode_prefix: str = "") -> str:
    """Where a run is: ``3/20`` episodes, ``trial 4/20`` while tuning, else its stage."""
    p = run.progress or {}
    if p.get("episode"):
        return f"{episode_prefix}{p['episode']}/{p.get('episodes') or '?'}"
    if p.get("trial"):
        return f"trial {p['trial']}/{p.get('trials') or '?'}"
    return str(p.get("stage") or "-")


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"
