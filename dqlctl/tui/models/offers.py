"""The launch form's catalog figures: the Region and Instance type choices (priced from the
catalog), an instance type the catalog does not know, and the plan's cost lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqlctl import runs
from dqlctl.tui.models.common import usd
from providers import AUTO
from providers.prices.estimate import gpu_label


@dataclass(frozen=True)
class InstanceOption:
    """One instance type as the form offers it: its GPU and both prices from the catalog (the
    lowest over ``regions`` when the form is not filtered to one region)."""

    provider: str
    instance_type: str
    gpu: str
    gpu_count: int
    on_demand: float | None
    spot: float | None
    regions: tuple[str, ...]

    def price(self, spot: bool) -> float | None:
        return self.spot if spot else self.on_demand


@dataclass(frozen=True)
class FormOptions:
    """The Region and Instance type choices for one provider (and region, and market)."""

    provider: str
    region: str                         # the region the types are priced in; "" = all
    spot: bool
    regions: tuple[tuple[str, str], ...]            # (label, value), blank not included
    instances: tuple[InstanceOption, ...]           # cheapest first (for the market asked)

    def labels(self, width: int | None = None) -> list[tuple[str, str]]:
        """(label, instance type): the type, its GPU and count, its on-demand then its spot
        $/h, in aligned columns (``g4dn.xlarge  T4 x1  $0.526/h · spot $0.200/h``).

        Within ``width`` (the select's): narrower, "from" (the lowest over the regions) becomes
        "≥", then Azure's "Standard_" prefix goes, then the columns close up and "/h" goes; what
        still does not fit is cut with "…"."""
        if not self.instances:
            return []
        for level in range(4):
            lines = self._lines(level)
            if width is None or max(len(text) for text, _ in lines) <= width:
                return lines
        assert width is not None
        return [(text if len(text) <= width else text[:max(1, width - 1)] + "…", value)
                for text, value in lines]

    def _lines(self, level: int) -> list[tuple[str, str]]:
        def name(o: InstanceOption) -> str:
            itype = o.instance_type.removeprefix("Standard_") if level >= 2 else o.instance_type
            return f"{o.provider} {itype}" if self.provider == AUTO else itype

        names = [name(o) for o in self.instances]
        gpus = [gpu_label(o.gpu, o.gpu_count) for o in self.instances]
        lead = "" if self.region else ("from " if level == 0 else "≥")
        unit = "/h" if level < 3 else ""
        prices = [(f"{lead}{usd(o.on_demand, unit)}", usd(o.spot, unit))
                  for o in self.instances]
        w_name, w_gpu = max(map(len, names)), max(map(len, gpus))
        w_od, w_sp = (max(len(p[i]) for p in prices) for i in (0, 1))
        gap = " " if level >= 3 else "  "
        return [(f"{n:<{w_name}}{gap}{g:<{w_gpu}}{gap}{od:>{w_od}} · spot {sp:>{w_sp}}",
                 o.instance_type)
                for o, n, g, (od, sp) in zip(self.instances, names, gpus, prices, strict=True)]


def form_options(provider: str, region: str, spot: bool,
                 home: str | Path | None = None) -> FormOptions:
    """The catalog's regions and instance types for ``provider`` (``auto``: every cloud), the
    types filtered to ``region`` when the catalog prices that region, cheapest first for the
    market (spot or on-demand); GPU-only and retired rows left out, as ``dqlctl cost`` does."""
    from providers.prices.catalog import PROVIDERS, load_prices
    from providers.prices.estimate import PriceRequest, quote

    if provider not in (*PROVIDERS, AUTO):
        return FormOptions(provider, "", spot, (), ())
    prices = load_prices(home)
    clouds = PROVIDERS if provider == AUTO else (provider,)
    pairs = sorted({(r.provider, r.region) for r in prices.rows if r.provider in clouds})
    regions = tuple((f"{name}  ({cloud})" if provider == AUTO else name, name)
                    for cloud, name in pairs)
    if region not in {name for _, name in pairs}:
        region = ""  # not in the catalog: show what it has everywhere
    offers = quote(PriceRequest(provider=None if provider == AUTO else provider,
                                region=region or None, spot=spot), prices=prices).offers
    grouped: dict[tuple[str, str], list[Any]] = {}
    for offer in offers:
        grouped.setdefault((offer.provider, offer.instance_type), []).append(offer)

    def lowest(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return min(known) if known else None

    options = [InstanceOption(
        provider=cloud, instance_type=itype, gpu=group[0].gpu,
        gpu_count=group[0].gpu_count, on_demand=lowest([o.extra["on_demand"] for o in group]),
        spot=lowest([o.extra["spot_price"] for o in group]),
        regions=tuple(sorted({o.region for o in group})))
        for (cloud, itype), group in grouped.items()]
    options.sort(key=lambda o: (o.price(spot) is None, o.price(spot) or 0.0, o.instance_type))
    return FormOptions(provider, region, spot, regions, tuple(options))


def instance_error(provider: str, instance_type: str, region: str | None,
                   rows: list[Any]) -> str | None:
    """An instance type the price catalog does not know for the provider, or not in the region
    (only where the catalog prices that region: elsewhere it cannot say)."""
    itype = instance_type.strip()
    if not itype:
        return None
    mine = [r for r in rows if r.provider == provider]
    have = [r for r in mine if r.instance_type.casefold() == itype.casefold()]
    if not have:
        return (f"unknown instance type {itype!r} for {provider}: not in the price catalog "
                f"(`dqlctl cost --provider {provider}` lists them; `dqlctl launch "
                "--instance-type` takes any type)")
    if region and any(r.region == region for r in mine) \
            and not any(r.region == region for r in have):
        where = ", ".join(sorted({r.region for r in have}))
        return f"{itype} is not offered in {provider} {region} (the catalog has it in {where})"
    return None


def cost_lines(req: runs.LaunchRequest, plan: dict[str, Any], hours: float | None,
               prices: Any) -> list[tuple[str, str]]:
    """The plan's cost estimate: both prices, ``estimate(offer, hours)`` (spot interruptions
    included where the catalog knows their rate) and what a ``--max-cost`` budget buys."""
    from providers.prices.catalog import CATALOG_AS_OF
    from providers.prices.estimate import PriceRequest, estimate, quote

    itype, region = plan.get("instance_type"), plan.get("region")
    if not itype or not region:
        return [("estimate", "unknown: no instance type or region to price")]
    found = quote(PriceRequest(provider=req.provider, instance_type=str(itype),
                               region=str(region), spot=req.spot), prices=prices).offers
    if not found or found[0].price_per_hour is None:
        what = "spot" if req.spot else "on-demand"
        return [("estimate", f"unknown: no {what} price for {itype} in {region} in the price "
                             "catalog")]
    offer = found[0]
    extra = offer.extra
    saving = f" (spot saves {extra['saving_pct']:.0f}%)" if extra.get("saving_pct") else ""
    source = (f"catalog {CATALOG_AS_OF}" if extra.get("price_source") == "catalog"
              else f"live {extra.get('price_as_of')}")
    lines = [("gpu", f"{gpu_label(offer.gpu, offer.gpu_count)}, {offer.vcpus} vCPU, "
                     f"{offer.memory_gib:g} GiB"),
             ("$/h", f"on-demand {usd(extra.get('on_demand'))} · spot "
                     f"{usd(extra.get('spot_price'))}{saving}; {source}"
                     f"{', stale' if extra.get('stale') else ''}")]
    price = offer.price_per_hour
    market = "spot" if req.spot else "on-demand"
    if hours is not None:
        est = estimate(offer, hours)
        if req.spot and est.overhead_frac is None:
            extra_text = " (interruptions: rate unknown, not included)"
        elif req.spot and est.overhead_frac:
            share = f"~{est.overhead_frac:.1%}" if est.overhead_frac >= 0.001 else "<0.1%"
            extra_text = f" (incl. {share} redone after interruptions)"
        else:
            extra_text = ""
        lines.append(("estimate", f"~${est.total_usd:,.2f} for {hours:g} h {market} at "
                                  f"{usd(price)}/h{extra_text}"))
    if req.max_cost is not None and price:
        lines.append(("budget buys", f"about {req.max_cost / price:,.1f} h at {usd(price)}/h, "
                                     "then the run stops"))
    if extra.get("notes"):
        lines.append(("note", str(extra["notes"])))
    return lines
