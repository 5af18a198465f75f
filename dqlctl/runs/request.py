"""What a launch asks for: ``LaunchRequest``, its validation, the provider's ``LaunchSpec`` built
from it, and ``plan`` (what ``launch --dry-run`` shows).

Every ``UsageError`` raised here names the ``LaunchRequest`` field it is about (``field=``), so a
form can show it on that row; a ``ProviderError`` from ``provider.plan`` keeps its field too.

Tune on one machine, train on another (``dqlctl cost --phase all`` says when that is cheaper):
``command="tune"`` runs the engine's ``tune`` alone (its trials are ``--n_iter`` and
``--tuning_episodes`` among ``engine_args``; ``episodes`` is not passed: tune trains no final
model); ``params_from`` (a run id or name, a path, a URI) names the ``best_params.json`` a
``train`` or ``full-workflow`` run trains with (``--params_file``; tuning skipped). It is read
and checked here (the engine's own reader, ``engine.tune.read_best_params``), and ``build_spec``
of a real run copies it into the new run's results folder (``PARAMS_COPY``): the engine finds it
there on any machine that can write its results, a cloud VM's role being allowed only its runs
bucket. A cloud run whose results stay on the VM's disk (no bucket ``--results-dir``) cannot
be given parameters that way and is refused.
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
ENGINE_COMMANDS = ("full-workflow", "train", "tune")
#: the copy of ``--params-from`` in the new run's experiment folder (the engine's --params_file)
PARAMS_COPY = "params_from.json"
DRY_RUN_ID = "dry-run"
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
    params_from: str | None = None    # tuned parameters: a run id/name, a path or a URI


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
    return _validated(ctx, req)[0]


def _validated(ctx: Context, req: LaunchRequest) -> tuple[str, TunedParams | None]:
    """``validate_request``: the resolved data path, and the ``--params-from`` parameters."""
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
    if req.seed is not None:
        from engine.config import seed_problem  # the engine's own rule (stdlib only)

        if problem := seed_problem(req.seed):
            raise UsageError(f"--seed must be {problem}, got {req.seed}", field="seed")
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
    if req.episodes <= 0 and req.command != "tune":
        raise UsageError(f"--episodes must be a positive number of episodes, got {req.episodes}",
                         field="episodes")
    if req.name is not None and not _NAME_RE.match(req.name):
        raise UsageError(f"run name {req.name!r} is not valid: use letters, digits, '.', '_' "
                         "and '-' (at most 63 characters)", field="name")
    from providers.layout import DataFileNotFound, resolve_data_path

    try:
        data_path = resolve_data_path(req.data)
    except DataFileNotFound as exc:
        raise UsageError(str(exc), field="data") from None
    return data_path, tuned_params(ctx, req)


@dataclass(frozen=True)
class TunedParams:
    """The ``best_params.json`` that ``--params-from`` names, read and checked."""

    source: str         # where it was read (a path or URI)
    run_id: str | None  # the run it came from, when named by run
    doc: dict[str, Any]  # the whole document (its ``params``, metric, score, ...)


def tuned_params(ctx: Context, req: LaunchRequest) -> TunedParams | None:
    """The parameters ``req.params_from`` names, read and checked like the engine does
    (``engine.tune``): None without ``--params-from``; a UsageError (field ``params_from``) when
    the request cannot use them or they are not there: one line."""
    ref = req.params_from
    if not ref:
        return None

    def bad(message: str) -> UsageError:
        return UsageError(f"--params-from {ref}: {message}", field="params_from")

    if req.command not in ("train", "full-workflow"):
        raise bad(f"the engine's {req.command} takes no tuned parameters (train or "
                  "full-workflow do)")
    if req.tune:
        raise bad("the run trains with these parameters instead of tuning; drop --tune")
    from providers import capabilities_of
    from providers.layout import is_uri

    results = req.results_dir or ""
    if Capability.LOCAL_JOB not in capabilities_of(req.provider) and not is_uri(results):
        raise bad(f"on {req.provider} the VM reads the parameters from the run's bucket (its "
                  "role may read nothing else): give --results-dir on a bucket (s3://, gs://, "
                  "az://); they are copied there")
    run = None
    where = ref
    if not is_uri(ref) and not Path(ref).expanduser().exists():
        from dqlctl.registry import RegistryError

        try:
            run = ctx.registry.resolve(ref)
        except RegistryError:
            raise bad("no such run, file or URI (give a run id or name, a best_params.json "
                      "path, or its s3://, gs:// or az:// URI)") from None
        where = f"{run.results_uri.rstrip('/')}/best_params.json"
    from engine.config import Config, ConfigError
    from engine.tune import ParamsNotFound, apply_best_params, read_best_params

    try:
        found = read_best_params(where, strict=True)
        assert found is not None
        apply_best_params(Config(), found)[0].resolved()   # every name a setting, values fit
    except ParamsNotFound as exc:
        if run is None:
            raise bad(str(exc)) from None
        raise bad(f"run {run.id} ({run.name}, {run.state}) has not finished tuning: no "
                  f"best_params.json in {run.results_uri}") from None
    except ConfigError as exc:
        raise bad(str(exc)) from None
    return TunedParams(source=found.source, run_id=run.id if run else None, doc=found.doc)


def params_copy(results_dir: str, experiment: str) -> str:
    """Where a run's ``--params-from`` copy goes: its experiment folder (a path or a URI)."""
    from providers.layout import experiment_uri

    return f"{experiment_uri(results_dir, experiment)}/{PARAMS_COPY}"


def write_params_copy(dest: str, tuned: TunedParams) -> None:
    """Copy the parameters to ``dest`` (a path, or a URI written with this machine's
    credentials), saying where they came from (``copied_from``, ``copied_from_run``)."""
    import json

    doc = {**tuned.doc, "copied_from": tuned.source}
    if tuned.run_id:
        doc["copied_from_run"] = tuned.run_id
    data = (json.dumps(doc, indent=2) + "\n").encode()
    from providers.layout import is_uri

    if not is_uri(dest):
        path = Path(dest.removeprefix("file://")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    from providers.storage import StorageError, open_store

    try:
        store, key = open_store(dest)
        store.put_bytes(key, data)
    except StorageError as exc:
        raise ProviderFailure(f"--params-from: cannot copy the parameters to {dest}: {exc}",
                              field="params_from") from None


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


def _engine_args(req: LaunchRequest, experiment: str, params_file: str | None) -> list[str]:
    """The engine's command line (``tune`` trains no final model: no ``--episodes``)."""
    args = [req.command, "--agent_type", req.agent_type]
    if req.command != "tune":
        args += ["--episodes", str(req.episodes)]
    args += ["--experiment_name", experiment]
    if req.command == "full-workflow" and not req.tune:
        args.append("--skip_tuning")
    if params_file:
        args += ["--params_file", params_file]
    if req.seed is not None:
        args += ["--seed", str(req.seed)]
    return args + list(req.engine_args)


def build_spec(ctx: Context, req: LaunchRequest, run_id: str) -> LaunchSpec:
    """The provider's launch spec for a validated request. For a real run (not
    ``DRY_RUN_ID``) with ``params_from`` it writes one thing: the parameters' copy in the run's
    results folder, which its ``--params_file`` names."""
    pinned = req.region is not None and req.provider != AUTO   # before auto picks one
    auto = req.provider == AUTO
    clouds = req.failover_clouds or auto
    data_path, tuned = _validated(ctx, req)
    name = req.name or f"{Path(data_path).stem.lower().replace('_', '-')}-{req.agent_type}"
    workdir = ctx.run_dir(run_id)
    results_dir = req.results_dir or str(workdir / "results")
    params_file = params_copy(results_dir, name) if tuned is not None else None
    if tuned is not None and params_file and run_id != DRY_RUN_ID:
        write_params_copy(params_file, tuned)
    job = JobSpec(engine_args=_engine_args(req, name, params_file), data_file=data_path,
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
    spec = build_spec(ctx, req, DRY_RUN_ID)
    provider = ctx.provider(req.provider)
    out: dict[str, Any] = {"name": spec.name, "data": spec.job.data_file,
                           "engine": " ".join(spec.job.engine_args),
                           "results": req.results_dir or "the run's folder here "
                           "(runs/<run id>/results under dqlctl's home)"}
    tuned = tuned_params(ctx, req)
    if tuned is not None:
        out["params"] = (f"{tuned.source}, copied to the run's results folder ({PARAMS_COPY})"
                         + ("; tuning skipped" if req.command == "full-workflow" else ""))
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
