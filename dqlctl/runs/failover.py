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
from typing import Any

from dqlctl.context import Context
from providers.base import Capability, Instance, LaunchSpec, NoCapacity, refusals


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
            rows = [r for r, _ in q.hidden if r.price_basis == "gpu_only"
                    and r.gpu_count == int(count or 1)]
            rows.sort(key=lambda r: (r.spot if spec.spot else r.on_demand) or float("inf"))
            ranked = [r.region for r in rows]
    except (PriceError, ValueError):
        return []
    return list(dict.fromkeys(r for r in ranked if r not in tried))


def launch_somewhere(ctx: Context, run_id: str, provider: Any, spec: LaunchSpec) -> Instance:
    """``provider.launch(spec)``, moving on to the next region on ``NoCapacity`` (see the
    module docstring); the instance, or ``NoCapacity`` naming every refusal."""
    registry = ctx.registry
    attempts: list[dict[str, Any]] = []
    current = spec
    while True:
        try:
            instance = provider.launch(current)
        except NoCapacity as exc:
            _record(registry, run_id, exc.attempts)
            attempts += exc.attempts
            tried = {str(a.get("region")) for a in attempts}
            itype = str(exc.attempts[-1].get("instance_type") or spec.instance_type or "")
            ahead = next_regions(ctx, provider, spec, itype, tried)
            if not ahead:
                raise NoCapacity(_nowhere(itype, attempts, spec), attempts) from None
            registry.add_event(run_id, "failover", {
                "from": sorted(tried), "to": ahead[0], "instance_type": itype,
                "reason": f"no capacity in {', '.join(sorted(tried))}: trying {ahead[0]}"})
            current = dataclasses.replace(spec, region=ahead[0], instance_type=itype)
            continue
        _record(registry, run_id, instance.extra.pop("attempts", None) or [])
        return instance


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
