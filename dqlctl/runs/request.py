"""What a launch asks for: ``LaunchRequest``, its validation, the provider's ``LaunchSpec`` built
from it, and ``plan`` (what ``launch --dry-run`` shows).

Every ``UsageError`` raised here names the ``LaunchRequest`` field it is about (``field=``), so a
form can show it on that row; a ``ProviderError`` from ``provider.plan`` keeps its field too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dqlctl.context import Context
from dqlctl.errors import ProviderFailure, UsageError
from dqlctl.owner import owner_tags
from dqlctl.registry import Run
from providers import AUTO, DEFAULT_PROVIDER
from providers.base import Capability, JobSpec, LaunchSpec, ProviderError

AGENT_TYPES = ("dql", "custom", "memory")
ENGINE_COMMANDS = ("full-workflow", "train")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


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
    wide_ssh_ok: bool = False         # ssh_cidr may be wider than a /24 (``launch --yes``)
    max_price: float | None = None
    keep: bool = False                # leave the VM up after the run (for debugging)
    idle_minutes: float | None = None  # the VM shuts itself down this long after its run ended
    collect_grace_minutes: float | None = None  # ... or, results on its disk, uncollected
    max_cost: float | None = None     # stop the run (checkpoint first) before it costs more
    max_recoveries: int = 3           # relaunches after a spot preemption (see ``recover``)
    engine_args: list[str] = field(default_factory=list)
    failover_clouds: bool = False     # no capacity anywhere on this cloud: the next cloud
    failover_results: list[str] = field(default_factory=list)  # results URIs on other clouds


def preflight(provider: Any) -> None:
    """A cloud whose credentials (or SDK) do not work is refused before anything is recorded:
    what its ``check()`` finds wrong (a provider that runs jobs here needs no credentials)."""
    if Capability.LOCAL_JOB in provider.capabilities:
        return
    for item in provider.check().items:
        if not item.ok:
            fix = f" (fix: {item.fix})" if item.fix else ""
            raise ProviderFailure(f"{provider.name}: {item.name}: {item.detail}{fix}",
                                  field="provider")


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
        # nothing priced fits what was asked for: the machine asked for is the field
        raise UsageError(f"--provider auto: {exc}",
                         field="instance_type" if req.instance_type else "gpu") from None
    req.provider, req.region, req.instance_type = offer.provider, offer.region, offer.instance_type


def validate_request(ctx: Context, req: LaunchRequest) -> str:
    """Check everything that can be checked before anything is created; the resolved data path."""
    from providers import COMPUTE_PROVIDERS, PLANNED_PROVIDERS

    resolve_auto(ctx, req)
    if req.max_recoveries < 0:
        raise UsageError(f"--max-recoveries must be 0 or more, got {req.max_recoveries}",
                         field="max_recoveries")
    for name, flag in (("idle_minutes", "--idle-minutes"),
                       ("collect_grace_minutes", "--collect-grace")):
        value = getattr(req, name)
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be a positive number of minutes, got {value}",
                             field=name)
    if req.max_cost is not None and req.max_cost <= 0:
        raise UsageError(f"--max-cost must be a positive amount of USD, got {req.max_cost}",
                         field="max_cost")

    if req.ssh_cidr is not None:
        req.ssh_cidr = checked_ssh_cidr(req.ssh_cidr, req.wide_ssh_ok)
    if req.provider not in COMPUTE_PROVIDERS:
        known = ", ".join(sorted(COMPUTE_PROVIDERS))
        if req.provider in PLANNED_PROVIDERS:
            raise UsageError(f"provider {req.provider!r} is not available in this build yet "
                             f"(available: {known})", field="provider")
        raise UsageError(f"unknown provider {req.provider!r} (choose from: {known}, or auto)",
                         field="provider")
    if req.runtime == "docker" and not req.image:
        from dqlctl.pushed_images import last_pushed
        from providers import capabilities_of

        if Capability.LOCAL_JOB not in capabilities_of(req.provider):
            req.image = last_pushed(ctx.home, req.provider)
            if req.image is None:
                raise UsageError(f"--runtime docker on {req.provider}: no engine image; push one "
                                 f"with `dqlctl image push --provider {req.provider}` or give "
                                 "--image", field="image")
    if req.agent_type not in AGENT_TYPES:
        raise UsageError(f"unknown agent type {req.agent_type!r} (choose from: "
                         f"{', '.join(AGENT_TYPES)})", field="agent_type")
    if req.command not in ENGINE_COMMANDS:
        raise UsageError(f"unknown engine command {req.command!r} (choose from: "
                         f"{', '.join(ENGINE_COMMANDS)})", field="command")
    if req.episodes <= 0:
        raise UsageError(f"--episodes must be a positive number of episodes, got {req.episodes}",
                         field="episodes")
    if req.name is not None and not _NAME_RE.match(req.name):
        raise UsageError(f"run name {req.name!r} is not valid: use letters, digits, '.', '_' "
                         "and '-' (at most 63 characters)", field="name")
    from providers.layout import DataFileNotFound, resolve_data_path

    try:
        return resolve_data_path(req.data)
    except DataFileNotFound as exc:
        raise UsageError(str(exc), field="data") from None


def failover_results(uris: list[str]) -> dict[str, str]:
    """``--failover-results`` as {cloud: URI}: one bucket URI per cloud (s3://, gs://, az://)."""
    from providers.prices.estimate import DATA_LOCATIONS

    out: dict[str, str] = {}
    for uri in uris:
        scheme, sep, rest = uri.partition("://")
        cloud = DATA_LOCATIONS.get(scheme) if sep and rest.strip("/") else None
        if cloud is None:
            raise UsageError(f"--failover-results {uri!r}: give a bucket URI (s3://, gs:// or "
                             "az://BUCKET/PREFIX)", field="failover_results")
        if cloud in out:
            raise UsageError(f"--failover-results: two places on {cloud} ({out[cloud]!r}, "
                             f"{uri!r}); give one per cloud", field="failover_results")
        out[cloud] = uri.rstrip("/")
    return out


#: the most addresses ``--ssh-cidr`` may open port 22 to without ``--yes`` (a /24)
SSH_CIDR_MAX_ADDRESSES = 256


def checked_ssh_cidr(cidr: str, wide_ok: bool = False) -> str:
    """``--ssh-cidr`` as a network (a bare address is its /32); UsageError when it is not one,
    or when it spans more than a /24 and ``wide_ok`` is not set (``0.0.0.0/0`` is everyone)."""
    import ipaddress

    try:
        net = ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError:
        raise UsageError(f"--ssh-cidr {cidr!r} is not an address or CIDR block "
                         "(e.g. 203.0.113.7/32)", field="ssh_cidr") from None
    if net.num_addresses > SSH_CIDR_MAX_ADDRESSES and not wide_ok:
        raise UsageError(f"--ssh-cidr {net} lets {net.num_addresses:,} addresses try SSH on the "
                         "VM (wider than a /24); add --yes if you mean it", field="ssh_cidr")
    return str(net)


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
    pinned = req.region is not None and req.provider != AUTO   # before auto picks one
    auto = req.provider == AUTO
    clouds = req.failover_clouds or auto
    data_path = validate_request(ctx, req)
    name = req.name or f"{Path(data_path).stem.lower().replace('_', '-')}-{req.agent_type}"
    workdir = ctx.run_dir(run_id)
    results_dir = req.results_dir or str(workdir / "results")
    job = JobSpec(engine_args=_engine_args(req, name), data_file=data_path,
                  results_dir=results_dir, experiment=name)
    extra: dict[str, Any] = {"keep": req.keep, "max_recoveries": req.max_recoveries}
    if pinned:
        extra["region_pinned"] = True   # capacity failover stays in this region's zones
    if clouds:
        extra["failover_clouds"] = True
    if auto:
        extra["auto"] = True        # the cloud was picked by price: another may stand in
    if req.failover_results:
        extra["failover_results"] = failover_results(req.failover_results)
    if req.max_cost is not None:
        extra["max_cost"] = req.max_cost
    for key in ("idle_minutes", "collect_grace_minutes"):  # the VM's self-care
        if getattr(req, key) is not None:
            extra[key] = getattr(req, key)
    if req.ssh_cidr:
        extra["ssh_cidr"] = req.ssh_cidr
    if req.image_id:
        extra["image_id"] = req.image_id
    return LaunchSpec(run_id=run_id, name=name, job=job, region=req.region,
                      instance_type=req.instance_type, gpu=req.gpu, spot=req.spot,
                      max_price=req.max_price, image=req.image,
                      runtime=req.runtime, tags=owner_tags(ctx.home, run_id),
                      workdir=str(workdir),
                      extra=extra)


def spec_of(run: Run) -> LaunchSpec:
    """The run's launch spec, as stored in the registry."""
    names = {f.name for f in fields(LaunchSpec)}
    data = {k: v for k, v in run.spec.items() if k in names}
    return LaunchSpec(**{**data, "job": JobSpec(**data["job"])})


def plan(ctx: Context, req: LaunchRequest) -> dict[str, Any]:
    """What ``launch`` would do (``--dry-run``); creates nothing, not even a registry row."""
    spec = build_spec(ctx, req, "dry-run")
    provider = ctx.provider(req.provider)
    out: dict[str, Any] = {"name": spec.name, "data": spec.job.data_file,
                           "engine": " ".join(spec.job.engine_args),
                           "results": req.results_dir or "the run's folder here "
                           "(runs/<run id>/results under dqlctl's home)"}
    if req.image:
        out["image"] = req.image
    try:
        out.update(provider.plan(spec))
    except ProviderError as exc:
        raise ProviderFailure(str(exc), field=exc.field) from None
    if Capability.LOCAL_JOB not in provider.capabilities:
        out["capacity"] = (f"only {out.get('region') or req.region}'s zones (--region pins it)"
                           if spec.extra.get("region_pinned") else
                           "the next zone, then the next region offering it, cheapest first")
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
