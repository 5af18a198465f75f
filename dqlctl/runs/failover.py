"""Capacity failover: a launch (or a spot recovery's relaunch) that finds no capacity walks on.

A provider tries the zones of one region itself; when every zone refuses for capacity or quota
it raises ``NoCapacity`` with each refusal. ``launch_somewhere`` then takes the next region
offering the same instance type on the same cloud, cheapest first by the price catalog (the
ranking ``dqlctl cost`` shows, spot or on-demand as the run asks), until one has room or none is
left. Every refusal is in the run's history (``capacity`` events: cloud, region, zone, instance
type, code), and so is each move (``failover`` events), so ``dqlctl show`` tells where the run
landed and why there.

What stops the walk at once: any other error (bad credentials, a bad image: no other region fixes
those), and a region pinned with ``--region`` (then only its zones are tried: the operator chose
it). Clouds are not crossed: a run's results and checkpoints live in its cloud's bucket (a
cross-cloud move needs them copied first; see the README's spot section).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dqlctl.context import Context
from providers.base import Capability, Instance, LaunchSpec, NoCapacity, ProviderError, refusals


def next_regions(ctx: Context, provider: Any, spec: LaunchSpec, instance_type: str,
                 tried: set[str]) -> list[str]:
    """Regions of ``provider`` that offer ``instance_type`` and were not tried, cheapest first
    (priced offers first); none for a pinned region or a cloud without prices. Where the
    catalog prices only the GPU of a machine (GCE's N1 + accelerator), the regions offering
    that GPU, ranked by its price."""
    if (spec.extra or {}).get("region_pinned") or \
            Capability.PRICES not in provider.capabilities:
        return []
    from providers.prices.estimate import PriceError, PriceRequest, quote

    try:
        q = quote(PriceRequest(provider=provider.name, instance_type=instance_type,
                               spot=spec.spot), home=ctx.home)
        ranked = [o.region for o in q.offers if o.instance_type == instance_type]
        if not ranked and spec.gpu:
            name, _, count = spec.gpu.partition(":")
            q = quote(PriceRequest(provider=provider.name, gpu=name, spot=spec.spot),
                      home=ctx.home)
            ranked = [region for _, region in _gpu_only(q, spec, int(count or 1))]
    except (PriceError, ValueError):
        return []
    return list(dict.fromkeys(r for r in ranked if r not in tried))


@dataclass
class Placement:
    """Where a run's machine came up: its provider (another cloud after a cross-cloud move),
    the spec it was launched with, and the instance."""

    provider: Any
    spec: LaunchSpec
    instance: Instance


def launch_somewhere(ctx: Context, run_id: str, provider: Any, spec: LaunchSpec) -> Placement:
    """``provider.launch(spec)``, moving on to the next region, then (``failover_clouds``) the
    next cloud, on ``NoCapacity`` (see the module docstring); where the machine came up, or
    ``NoCapacity`` naming every refusal."""
    registry = ctx.registry
    attempts: list[dict[str, Any]] = []
    clouds = [provider.name]
    base = current = spec
    while True:
        try:
            instance = provider.launch(current)
        except NoCapacity as exc:
            _record(registry, run_id, exc.attempts)
            attempts += exc.attempts
            tried = {str(a.get("region")) for a in attempts if a.get("provider") == provider.name}
            itype = str(exc.attempts[-1].get("instance_type") or base.instance_type or "")
            ahead = next_regions(ctx, provider, base, itype, tried)
            if ahead:
                registry.add_event(run_id, "failover", {
                    "from": sorted(tried), "to": ahead[0], "instance_type": itype,
                    "reason": f"no capacity in {', '.join(sorted(tried))}: trying {ahead[0]}"})
                current = dataclasses.replace(base, region=ahead[0], instance_type=itype)
                continue
            moved = next_cloud(ctx, run_id, base, clouds)
            if moved is None:
                raise NoCapacity(_nowhere(itype, attempts, base), attempts) from None
            provider, base = moved
            clouds.append(provider.name)
            current = base
            continue
        _record(registry, run_id, instance.extra.pop("attempts", None) or [])
        return Placement(provider, current, instance)


def cloud_offers(ctx: Context, spec: LaunchSpec) -> list[tuple[str, str]]:
    """(cloud, region) for the run's GPU on every cloud, cheapest first: priced offers, then
    those whose catalog prices only the GPU (GCE's N1 + accelerator)."""
    from providers import AUTO
    from providers.prices.estimate import PriceError, PriceRequest, quote

    name, _, count = (spec.gpu or "T4:1").partition(":")
    try:
        q = quote(PriceRequest(gpu=name, provider=AUTO, spot=spec.spot), home=ctx.home)
    except (PriceError, ValueError):
        return []
    want = int(count or 1)
    ranked = [(o.provider, o.region) for o in q.offers
              if o.price_per_hour is not None and o.gpu_count == want]
    return ranked + _gpu_only(q, spec, want)


def _gpu_only(q: Any, spec: LaunchSpec, count: int) -> list[tuple[str, str]]:
    """(cloud, region) of the rows the quote left out because the catalog prices only their
    GPU (GCE's N1 + accelerator), ranked by that GPU's price."""
    rows = [r for r, _ in q.hidden if r.price_basis == "gpu_only" and r.gpu_count == count]
    rows.sort(key=lambda r: (r.spot if spec.spot else r.on_demand) or float("inf"))
    return [(r.provider, r.region) for r in rows]


def usable_clouds(ctx: Context, spec: LaunchSpec, tried: list[str], fresh: bool,
                  skipped: Callable[[str, str], None]) -> Iterator[tuple[Any, LaunchSpec]]:
    """Other clouds for ``spec``, cheapest first by its GPU (``cloud_offers``): each cloud's
    provider and the spec moved there (its cheapest region, the instance type left to the
    provider, a VM image dropped: images are per cloud), when its credentials work and the
    results have a place there; ``skipped(cloud, why)`` for each one passed over. A fresh run
    keeps its results folder (collected home over SSH from anywhere) unless
    ``--failover-results`` names one on that cloud; a run that resumes needs a bucket on that
    cloud (``--failover-results``, or its own results bucket when it is there)."""
    from dqlctl.errors import DqlctlError
    from dqlctl.runs.request import preflight
    from providers.prices.estimate import DATA_LOCATIONS

    extra = spec.extra or {}
    results = spec.job.results_dir
    scheme = results.partition("://")[0] if "://" in results else "file"
    seen = set(tried)
    for cloud, region in cloud_offers(ctx, spec):
        if cloud in seen:
            continue
        seen.add(cloud)
        target = (extra.get("failover_results") or {}).get(cloud)
        if target is None and (fresh or DATA_LOCATIONS.get(scheme) == cloud):
            target = results
        if target is None:
            skipped(cloud, f"{cloud}: no place for the run's checkpoints there (give "
                           f"--failover-results with a bucket on {cloud})")
            continue
        try:
            provider = ctx.provider(cloud)
            preflight(provider)
        except (DqlctlError, ProviderError) as exc:
            skipped(cloud, str(exc))
            continue
        job = dataclasses.replace(spec.job, results_dir=target)
        moved_extra = {k: v for k, v in extra.items() if k != "image_id"}
        left = DATA_LOCATIONS.get(scheme)
        if left and tried and left == tried[-1]:   # a move back later finds the bucket it left
            moved_extra["failover_results"] = {left: results,
                                               **(extra.get("failover_results") or {})}
        yield provider, dataclasses.replace(spec, region=region, instance_type=None, job=job,
                                            extra=moved_extra)


def next_cloud(ctx: Context, run_id: str, spec: LaunchSpec,
               tried: list[str]) -> tuple[Any, LaunchSpec] | None:
    """The next cloud for a run with ``failover_clouds`` that no region of ``tried`` could
    take (``usable_clouds``). A run resuming from a checkpoint has the run's folder copied to
    the new place first (the sync core), so the engine resumes from it. The registry row moves
    to the new cloud before anything is created there; each cloud passed over is said why."""
    if not (spec.extra or {}).get("failover_clouds"):
        return None
    registry = ctx.registry
    resuming = "--resume" in spec.job.engine_args

    def skipped(cloud: str, why: str) -> None:
        registry.add_event(run_id, "failover_skipped", {"cloud": cloud, "reason": why})

    for provider, moved in usable_clouds(ctx, spec, tried, not resuming, skipped):
        target = moved.job.results_dir
        copied = _carry_results(spec, moved) if resuming and \
            target != spec.job.results_dir else 0
        registry.update(run_id, provider=provider.name,
                        results_uri=f"{target.rstrip('/')}/{spec.name}")
        registry.merge(run_id, spec={"job": dataclasses.asdict(moved.job),
                                     "region": moved.region, "instance_type": None,
                                     "extra": moved.extra})
        registry.add_event(run_id, "failover", {
            "from_cloud": tried[-1], "to_cloud": provider.name, "to": moved.region,
            "copied": copied,
            "reason": f"no capacity on {', '.join(tried)}: moving to {provider.name} "
                      f"{moved.region}"
                      + (f" ({copied} files of the run copied to {target})" if copied else "")})
        return provider, moved
    return None


def _carry_results(old: LaunchSpec, new: LaunchSpec) -> int:
    """Copy the run's results folder (checkpoints, events) from its old bucket to the new
    one, so a resumed engine finds them; the number of files copied."""
    from providers.storage import StorageError
    from providers.sync import sync

    src = f"{old.job.results_dir.rstrip('/')}/{old.job.experiment}"
    dst = f"{new.job.results_dir.rstrip('/')}/{old.job.experiment}"
    try:
        result = sync(src, dst, allow_empty_source=True)
    except StorageError as exc:
        raise ProviderError(f"could not copy the run's checkpoint from {src} to {dst}: "
                            f"{exc}") from None
    if not result.ok:
        raise ProviderError(f"could not copy the run's checkpoint from {src} to {dst}: "
                            f"{'; '.join(result.errors[:3])}")
    return int(result.copied)


def _nowhere(itype: str, attempts: list[dict[str, Any]], spec: LaunchSpec) -> str:
    """``no capacity for T in R1 (zone: code; ...), R2 (...); try ...``"""
    regions = list(dict.fromkeys(str(a.get("region")) for a in attempts))
    where = ", ".join(f"{r} ({refusals([a for a in attempts if str(a.get('region')) == r])})"
                      for r in regions)
    hint = "--on-demand, or another --region or --gpu" if (spec.extra or {}).get(
        "region_pinned") else "--on-demand or another --gpu"
    return f"no capacity for {itype} in {where}; try {hint}"


def _record(registry: Any, run_id: str, attempts: list[dict[str, Any]]) -> None:
    for a in attempts:
        where = "/".join(str(x) for x in (a.get("region"), a.get("zone")) if x)
        registry.add_event(run_id, "capacity", {
            **a, "reason": f"{a.get('provider')} {where} {a.get('instance_type')}: "
                           f"{a.get('code')}"})
