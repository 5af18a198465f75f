"""What a run will cost, and what it did cost: the one estimate the CLI, launch and the TUI use.

Before a run::

    estimate = hours x price x (1 + interruption overhead) + egress

- ``price`` is the spot or on-demand $/h of the offer (bundled catalog, or the live cache).
- The interruption overhead (spot only) is the work lost to interruptions: each one loses, on
  average, half a checkpoint interval plus the time to get a new machine going (provision,
  bootstrap, reload the checkpoint: ``RESTART_OVERHEAD_H``). The interruption rate comes from
  the interruption band where one is known (AWS Spot Instance Advisor, Azure spot eviction
  rates): the band is read as the share of instances interrupted in a month, at the band's upper
  bound (">20%" as 30%), so rate/h = -ln(1 - share) / 730. Where no band is known the overhead is
  unknown: shown as such, never guessed.
- ``hours`` is what the operator says, or, when the request knows the run (``PriceRequest.run``:
  data, episodes, agent, batch, n_envs), the run's duration on that offer from the nearest
  throughput profile (``providers.prices.profiles.run_duration``, bring-up included): the
  estimate is then the cost of the run, and offers rank by it.
- ``PriceRequest.phase`` (train | tune | all) picks which part of a run that tunes first is
  priced (``profiles.phase_duration``): the training alone (the default), the tuning trials
  alone (spread over the offer's vCPUs), or both on one machine. ``PhasePlan`` holds the
  cheapest machine for the whole run and for each phase, and what a split costs (each phase on
  its own cheapest machine: two bring-ups) against the one machine.
- CPU rows whose spot price is not known are priced at on-demand (an upper bound), and say so.
- Egress is charged when the data lives in another cloud than the offer's (``--data-from``), at
  that cloud's internet egress $/GB (``EGRESS``; sources and date in data/SOURCES.md).

After a run: ``billable_intervals`` reads the instance-hours from a run's state events, and
``accrued_cost`` / ``cost_by_month`` price them at the price in force (a spot price history when
there is one, else the run's $/h).

Standard library only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from providers.base import Offer
from providers.prices import profiles as profiles_mod
from providers.prices.catalog import (
    CATALOG_AS_OF,
    PROVIDERS,
    PriceRow,
    PriceSet,
    age_s,
    gpu_unusable,
    host_unusable,
    is_stale,
    load_prices,
)

HOURS_PER_MONTH = 730.0
DEFAULT_CHECKPOINT_H = 0.25          # the engine checkpoints every few episodes; 15 min default
RESTART_OVERHEAD_H = 0.1             # new machine + bootstrap + reload after an interruption

# Interruption bands (canonical label -> share of instances interrupted in a month, upper bound).
INTERRUPTION_BANDS: dict[str, float] = {"0-5%": 0.05, "5-10%": 0.10, "10-15%": 0.15,
                                        "15-20%": 0.20, ">20%": 0.30}
_BAND_ALIASES = {"<5%": "0-5%", "0-5": "0-5%", "5-10": "5-10%", "10-15": "10-15%",
                 "15-20": "15-20%", "20+": ">20%", ">20": ">20%"}


@dataclass(frozen=True)
class EgressRate:
    usd_per_gb: float
    what: str
    source: str
    as_of: str


# Internet egress out of each cloud, first paid tier, North America (see data/SOURCES.md).
EGRESS: dict[str, EgressRate] = {
    "aws": EgressRate(0.09, "S3/EC2 data transfer out to the internet, US regions, first 10 TB "
                      "per month", "https://aws.amazon.com/s3/pricing/", "2025-11"),
    "gcp": EgressRate(0.1118, "Premium Tier internet egress from North America, 1-1024 GiB "
                      "($0.12 per GiB)", "https://cloud.google.com/vpc/network-pricing",
                      "2026-09-20"),
    "azure": EgressRate(0.087, "internet egress from North America, Microsoft network routing, "
                        "100 GB-10 TB per month",
                        "https://azure.microsoft.com/pricing/details/bandwidth/", "2025-11"),
}
DATA_LOCATIONS = {"s3": "aws", "gs": "gcp", "gcs": "gcp", "az": "azure", "aws": "aws",
                  "gcp": "gcp", "azure": "azure"}
GPU_ALIASES = {"A100-40GB": "A100", "V100-16GB": "V100", "H100-80GB": "H100"}
CPU_ONLY = ("none", "cpu")          # --gpu none: the machines without a GPU


def gpu_label(gpu: str, count: int) -> str:
    """``T4 x1``; ``none`` for a machine without a GPU (a CPU instance type)."""
    return f"{gpu} x{count}" if count else "none"


class PriceError(Exception):
    exit_code = 2


class NoOffer(PriceError):
    """Nothing in the catalog satisfies the request."""


def canonical_band(label: str | None) -> str:
    """The canonical interruption band for a label in any of the sources' spellings; ''."""
    text = (label or "").strip().replace(" ", "")
    if not text:
        return ""
    text = _BAND_ALIASES.get(text, text)
    if text not in INTERRUPTION_BANDS:
        raise ValueError(f"unknown interruption band {label!r}")
    return text


def interruptions_per_hour(band: str) -> float:
    share = INTERRUPTION_BANDS[canonical_band(band)]
    return -math.log(1.0 - share) / HOURS_PER_MONTH


def data_cloud(data_from: str | None) -> str | None:
    """``s3``/``gs``/``az`` (or a URI with that scheme, or a cloud name) -> the cloud."""
    if not data_from:
        return None
    scheme = data_from.split("://", 1)[0].lower()
    if scheme not in DATA_LOCATIONS:
        raise PriceError(f"--data-from {data_from!r}: use s3, gs or az")
    return DATA_LOCATIONS[scheme]


@dataclass(frozen=True)
class Estimate:
    hours: float
    price_per_hour: float | None
    compute_usd: float | None           # hours x price
    overhead_frac: float | None          # expected interruption overhead; None when unknown
    interruption_usd: float | None
    egress_gb: float
    egress_usd: float
    egress_usd_per_gb: float
    total_usd: float | None              # None when the price is unknown

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(offer: Offer, hours: float, *, checkpoint_interval_h: float = DEFAULT_CHECKPOINT_H,
             data_gb: float = 0.0, data_from: str | None = None,
             restart_overhead_h: float = RESTART_OVERHEAD_H) -> Estimate:
    """The expected cost of running ``offer`` for ``hours`` of useful work.

    ``offer.extra["interruption_band"]`` (spot offers) gives the interruption rate when known.
    """
    if hours < 0 or data_gb < 0 or checkpoint_interval_h < 0:
        raise PriceError("hours, data size and checkpoint interval must not be negative")
    src = data_cloud(data_from)
    rate = EGRESS[src].usd_per_gb if src and data_gb and src != offer.provider else 0.0
    egress = round(data_gb * rate, 6)
    price = offer.price_per_hour
    overhead: float | None = 0.0
    if offer.spot:
        band = canonical_band(offer.extra.get("interruption_band"))
        overhead = (interruptions_per_hour(band) * (checkpoint_interval_h / 2 + restart_overhead_h)
                    if band else None)
    if price is None:
        return Estimate(hours, None, None, overhead, None, data_gb, egress, rate, None)
    compute = hours * price
    lost = compute * (overhead or 0.0)
    return Estimate(hours, price, round(compute, 6), overhead, round(lost, 6), data_gb, egress,
                    rate, round(compute + lost + egress, 6))


# -- offers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceRequest:
    """What the operator asks for; every filter is optional."""

    gpu: str | None = None               # "A100" (any count) or "A100:8"
    instance_type: str | None = None
    provider: str | None = None          # aws | gcp | azure; None, "auto" or "all": every cloud
    region: str | None = None
    hours: float = 1.0
    spot: bool = True
    data_gb: float = 0.0
    data_from: str | None = None         # s3 | gs | az
    checkpoint_interval_h: float = DEFAULT_CHECKPOINT_H
    run: profiles_mod.RunShape | None = None   # the run: hours become its duration per offer
    phase: str = "train"                 # with run: train | tune | all (profiles.PHASES)

    def gpu_filter(self) -> tuple[str | None, int | None]:
        """(GPU model, count); ``("", 0)`` for ``none``/``cpu`` (machines without a GPU)."""
        if not self.gpu:
            return None, None
        if self.gpu.strip().casefold() in CPU_ONLY:
            return "", 0
        name, _, count = self.gpu.partition(":")
        name = name.strip().upper()
        name = GPU_ALIASES.get(name, name)
        if count:
            try:
                n = int(count)
            except ValueError:
                raise PriceError(f"--gpu {self.gpu!r}: the count after ':' must be a whole "
                                 "number, e.g. A100:8") from None
            if n <= 0:
                raise PriceError(f"--gpu {self.gpu!r}: the count must be at least 1")
            return name, n
        return name, None

    def check_phase(self) -> None:
        """PriceError when ``phase`` is not one, or names a tuning phase the run has not."""
        if self.phase not in profiles_mod.PHASES:
            raise PriceError(f"phase must be one of {', '.join(profiles_mod.PHASES)}, "
                             f"got {self.phase!r}")
        if self.phase == "tune" and (self.run is None or self.run.trials <= 0):
            raise PriceError("phase tune: the run has no tuning trials")

    def providers(self) -> tuple[str, ...]:
        if self.provider in (None, "", "auto", "all"):
            return PROVIDERS
        if self.provider not in PROVIDERS:
            raise PriceError(f"no prices for provider {self.provider!r} (choose from: "
                             f"{', '.join(PROVIDERS)})")
        return (self.provider,)


@dataclass
class Quote:
    """Offers cheapest first, the rows left out and why, and how fresh each cloud's prices are."""

    request: PriceRequest
    offers: list[Offer]
    hidden: list[tuple[PriceRow, str]] = field(default_factory=list)
    freshness: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"request": asdict(self.request), "prices": self.freshness,
                "offers": [asdict(o) for o in self.offers],
                "hidden": [{"provider": r.provider, "region": r.region,
                            "instance_type": r.instance_type, "reason": why}
                           for r, why in self.hidden],
                "warnings": self.warnings}


def matching_rows(request: PriceRequest, rows: Iterable[PriceRow]) -> list[PriceRow]:
    """The rows the request's filters select (retired and GPU-only rows included)."""
    gpu, count = request.gpu_filter()
    providers = request.providers()
    itype = (request.instance_type or "").casefold()
    out = []
    for row in rows:
        if row.provider not in providers:
            continue
        if request.region and row.region != request.region:
            continue
        if itype and row.instance_type.casefold() != itype:
            continue
        if gpu is not None and row.gpu.upper() != gpu:
            continue
        if count is not None and row.gpu_count != count:
            continue
        out.append(row)
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def offer_for(row: PriceRow, request: PriceRequest, now: float,
              profiles: list[profiles_mod.Profile] | None = None) -> Offer:
    """The row as an ``Offer`` for the request's capacity, its estimate in ``extra`` (for the
    run's duration on it when the request knows the run: ``extra["duration"]``)."""
    spot_price = request.spot
    if request.spot and row.spot is None and row.gpu_count == 0 and row.on_demand is not None:
        spot_price = False      # a CPU row without a known spot price: on-demand, an upper bound
    price = row.spot if spot_price else row.on_demand
    as_of = row.spot_at if spot_price else row.on_demand_at
    source = row.spot_source if spot_price else row.on_demand_source
    saving = (round(100.0 * (1 - row.spot / row.on_demand), 1)
              if row.spot is not None and row.on_demand else None)
    extra: dict[str, Any] = {
        "on_demand": row.on_demand, "spot_price": row.spot, "saving_pct": saving,
        "spot_zone": row.spot_zone or None, "interruption_band": row.interruption_band or None,
        "price_basis": row.price_basis, "price_source": source, "price_as_of": _iso(as_of),
        "price_age_s": round(age_s(as_of, now)), "stale": is_stale(as_of, now),
        "status": row.status, "notes": row.notes or None,
        "priced_at": ("on-demand (spot price unknown)" if spot_price != request.spot else
                      "spot" if request.spot else "on-demand")}
    offer = Offer(provider=row.provider, region=row.region, instance_type=row.instance_type,
                  gpu=row.gpu, gpu_count=row.gpu_count, vcpus=row.vcpus,
                  memory_gib=row.memory_gib, spot=request.spot, price_per_hour=price,
                  extra=extra)
    hours = request.hours
    if request.run is not None:
        # a GPU the engine cannot use leaves it the machine's CPU
        usable = 0 if gpu_unusable(row.gpu) else row.gpu_count
        duration = profiles_mod.phase_duration(request.run, request.phase, row.gpu, usable,
                                               row.vcpus, profiles or [],
                                               bring_up_h=RESTART_OVERHEAD_H, now=now)
        if usable != row.gpu_count:
            duration = replace(duration, provenance=f"{gpu_unusable(row.gpu)}, on its CPU: "
                                                    f"{duration.provenance}")
        extra["duration"] = duration.to_dict()
        hours = duration.hours if duration.hours is not None else request.hours
    est = estimate(offer, hours, checkpoint_interval_h=request.checkpoint_interval_h,
                   data_gb=request.data_gb, data_from=request.data_from)
    extra["estimate"] = est.to_dict()
    return offer


def _sort_key(offer: Offer) -> tuple[Any, ...]:
    total = offer.extra["estimate"]["total_usd"]
    return (total is None, total or 0.0, offer.price_per_hour or 0.0, offer.provider,
            offer.region, offer.instance_type)


def quote(request: PriceRequest, *, home: str | os.PathLike[str] | None = None,
          now: float | None = None, prices: PriceSet | None = None,
          profiles: list[profiles_mod.Profile] | None = None) -> Quote:
    """Offers for ``request`` cheapest first (by estimate); those with no price last.

    ``home`` is dqlctl's data dir (for the live-price cache); without it, the bundled catalog.
    Retired types are left out unless asked for by ``instance_type``; GPU-only prices (GCP
    accelerators for N1, host VM not included) are always left out of the ranking: both are
    listed in ``hidden`` with the reason. With ``request.run`` each offer is priced for the
    run's duration on it (``profiles``: the throughput profiles, else the shipped ones and the
    home's).
    """
    now = time.time() if now is None else now
    if request.run is not None and profiles is None:
        profiles = profiles_mod.load_profiles(home)
    request.gpu_filter()
    request.check_phase()
    data_cloud(request.data_from)
    prices = prices if prices is not None else load_prices(home)
    result = Quote(request=request, offers=[], warnings=list(prices.warnings))
    matched = matching_rows(request, prices.rows)
    for row in matched:
        if not row.complete:
            result.hidden.append((row, "GPU-only price (the n1 host VM is not in the price)"))
        elif row.status != "available" and not request.instance_type:
            result.hidden.append((row, row.status))
        elif request.run is not None and host_unusable(row.gpu):
            result.hidden.append((row, host_unusable(row.gpu)))    # the run cannot start there
        else:
            result.offers.append(offer_for(row, request, now, profiles))
    result.offers.sort(key=_sort_key)
    for provider in request.providers():
        rows = [r for r in matched if r.provider == provider]
        if rows:
            result.freshness[provider] = freshness(rows, prices, provider, now)
    return result


def _total(offer: Offer | None) -> float | None:
    return None if offer is None else offer.extra["estimate"]["total_usd"]


def _hours(offer: Offer | None) -> float | None:
    return None if offer is None else (offer.extra.get("duration") or {}).get("hours")


@dataclass
class PhasePlan:
    """A run that tunes first: the cheapest machine for all of it (``single``), the cheapest
    for each phase (``tune``, ``train``), and the split: each phase on its machine, each paying
    its own bring-up, against the one machine."""

    single: Offer | None
    tune: Offer | None
    train: Offer | None

    @property
    def split_usd(self) -> float | None:
        a, b = _total(self.tune), _total(self.train)
        return None if a is None or b is None else round(a + b, 6)

    @property
    def split_hours(self) -> float | None:
        a, b = _hours(self.tune), _hours(self.train)
        return None if a is None or b is None else a + b

    @property
    def cheaper(self) -> bool:
        """The split costs less than the one machine (never when both phases pick the same
        type, or a figure is unknown)."""
        split, one = self.split_usd, _total(self.single)
        if split is None or one is None or self.tune is None or self.train is None:
            return False
        same = (self.tune.provider, self.tune.region, self.tune.instance_type) == (
            self.train.provider, self.train.region, self.train.instance_type)
        return not same and split < one

    def to_dict(self) -> dict[str, Any]:
        one = _total(self.single)
        split = self.split_usd
        return {"single": None if self.single is None else asdict(self.single),
                "tune": None if self.tune is None else asdict(self.tune),
                "train": None if self.train is None else asdict(self.train),
                "split": {"usd": split, "hours": self.split_hours, "cheaper": self.cheaper,
                          "saving_usd": (round(one - split, 6) if one is not None
                                         and split is not None else None)}}


def cheapest(requests: Iterable[PriceRequest], phase: str, *,
             home: str | os.PathLike[str] | None = None, now: float | None = None,
             prices: PriceSet | None = None,
             profiles: list[profiles_mod.Profile] | None = None) -> Offer | None:
    """The offer with the lowest known estimate for ``phase`` among every request's offers
    (e.g. the operator's filters and the same without a GPU); None when none is priced."""
    best: Offer | None = None
    for req in requests:
        q = quote(replace(req, phase=phase), home=home, now=now, prices=prices,
                  profiles=profiles)
        found = next((o for o in q.offers if _total(o) is not None), None)
        if found is not None and (best is None or _sort_key(found) < _sort_key(best)):
            best = found
    return best


def phase_plan(requests: Sequence[PriceRequest], *, home: str | os.PathLike[str] | None = None,
               now: float | None = None, prices: PriceSet | None = None,
               profiles: list[profiles_mod.Profile] | None = None) -> PhasePlan:
    """The cheapest machine for the whole run and for each phase among ``requests``' offers
    (their ``run`` tunes first)."""
    now = time.time() if now is None else now
    if profiles is None:
        profiles = profiles_mod.load_profiles(home)
    prices = prices if prices is not None else load_prices(home)
    kw: dict[str, Any] = {"home": home, "now": now, "prices": prices, "profiles": profiles}
    return PhasePlan(single=cheapest(requests, "all", **kw),
                     tune=cheapest(requests, "tune", **kw),
                     train=cheapest(requests, "train", **kw))


def freshness(rows: list[PriceRow], prices: PriceSet, provider: str, now: float
              ) -> dict[str, Any]:
    """Where the prices of ``rows`` (one cloud's) come from and how old the oldest one is."""
    stamps = [t for r in rows for t in (r.on_demand_at, r.spot_at)]
    oldest = min(stamps) if stamps else 0.0
    live = any(r.on_demand_source == "live" or r.spot_source == "live" for r in rows)
    all_live = bool(rows) and all(r.on_demand_source == "live" and r.spot_source == "live"
                                  for r in rows)
    source = "live" if all_live else ("live+catalog" if live else "catalog")
    out: dict[str, Any] = {"source": source, "catalog_as_of": CATALOG_AS_OF,
                           "oldest_price_as_of": _iso(oldest) if stamps else None,
                           "oldest_age_s": round(age_s(oldest, now)) if stamps else None,
                           "stale": bool(stamps) and is_stale(oldest, now)}
    if provider in prices.cache_updated:
        out["cache_updated"] = _iso(prices.cache_updated[provider])
    return out


def offers(request: PriceRequest, *, home: str | os.PathLike[str] | None = None,
           now: float | None = None) -> list[Offer]:
    """Offers for ``request``, cheapest estimate first (see ``quote``)."""
    return quote(request, home=home, now=now).offers


def cheapest_offer(request: PriceRequest, *, home: str | os.PathLike[str] | None = None,
                   now: float | None = None) -> Offer:
    """The cheapest priced offer that satisfies ``request`` (``--provider auto``); NoOffer."""
    q = quote(request, home=home, now=now)
    for offer in q.offers:
        if offer.price_per_hour is not None:
            return offer
    kind = "spot" if request.spot else "on-demand"
    what = ", ".join(f"{k}={v}" for k, v in (("gpu", request.gpu),
                                             ("instance type", request.instance_type),
                                             ("provider", request.provider),
                                             ("region", request.region)) if v) or "anything"
    raise NoOffer(f"no {kind} offer with a known price for {what}")


def lookup(provider: str, instance_type: str, region: str, *, spot: bool = True,
           home: str | os.PathLike[str] | None = None, now: float | None = None
           ) -> Offer | None:
    """The offer for one instance type in one region (e.g. to record a run's $/h at launch);
    None when the catalog does not have it. ``price_per_hour`` is None when that capacity's
    price is unknown."""
    req = PriceRequest(provider=provider, instance_type=instance_type, region=region, spot=spot)
    found = quote(req, home=home, now=now).offers
    return found[0] if found else None


# -- what a run did cost ---------------------------------------------------------------------------

# Run states in which the run holds a machine (billed): the instance exists from BOOTSTRAPPING
# until the run ends or is preempted; RECOVERING waits for a new one.
BILLED_STATES = frozenset({"BOOTSTRAPPING", "RUNNING", "COLLECTING"})


def billable_intervals(events: Iterable[Mapping[str, Any]], now: float,
                       ) -> list[tuple[float, float]]:
    """The (start, end) epoch intervals in which a run held a machine, from its state events.

    ``events`` are the registry's event dicts (``ts``, ``to_state``), oldest first; an interval
    still open ends at ``now``.
    """
    intervals: list[tuple[float, float]] = []
    start: float | None = None
    for ev in events:
        state = ev.get("to_state")
        if not state:
            continue
        ts = float(ev["ts"])
        if state in BILLED_STATES:
            if start is None:
                start = ts
        elif start is not None:
            intervals.append((start, ts))
            start = None
    if start is not None:
        intervals.append((start, max(start, now)))
    return intervals


def _price_segments(start: float, end: float, price_per_hour: float | None,
                    history: Sequence[tuple[float, float]]) -> list[tuple[float, float, float]]:
    """(start, end, $/h) pieces of [start, end) at the price in force (history: (ts, $/h))."""
    points = sorted(history)
    pieces: list[tuple[float, float, float]] = []
    current = price_per_hour
    for ts, price in points:
        if ts <= start:
            current = price
    t = start
    for ts, price in points:
        if ts <= start:
            continue
        if ts >= end:
            break
        if current is not None:
            pieces.append((t, ts, current))
        t, current = ts, price
    if current is not None and t < end:
        pieces.append((t, end, current))
    return pieces


def accrued_cost(intervals: Iterable[tuple[float, float]], price_per_hour: float | None,
                 history: Sequence[tuple[float, float]] = ()) -> float:
    """USD for the intervals at the price in force: ``history`` ((epoch, $/h) points, e.g. the
    AWS spot price history of the instance's zone) where it covers, else ``price_per_hour``."""
    total = 0.0
    for start, end in intervals:
        for a, b, price in _price_segments(start, end, price_per_hour, history):
            total += price * (b - a) / 3600.0
    return round(total, 6)


def _month_edges(start: float, end: float) -> list[tuple[str, float, float]]:
    out = []
    t = start
    while t < end:
        d = datetime.fromtimestamp(t, UTC)
        nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC).timestamp()
        out.append((f"{d.year:04d}-{d.month:02d}", t, min(end, nxt)))
        t = nxt
    return out


def cost_by_month(intervals: Iterable[tuple[float, float]], price_per_hour: float | None,
                  history: Sequence[tuple[float, float]] = ()) -> dict[str, tuple[float, float]]:
    """``{"YYYY-MM": (instance_hours, usd)}`` (UTC months), intervals split at month ends."""
    out: dict[str, tuple[float, float]] = {}
    for start, end in intervals:
        for month, a, b in _month_edges(start, end):
            hours, usd = out.get(month, (0.0, 0.0))
            out[month] = (hours + (b - a) / 3600.0,
                          usd + accrued_cost([(a, b)], price_per_hour, history))
    return {m: (round(h, 6), round(u, 6)) for m, (h, u) in sorted(out.items())}
