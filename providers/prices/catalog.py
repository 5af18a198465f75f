"""The bundled price catalog, and the live-price cache laid over it.

``data/catalog.csv`` is built from the reference ``gpu_prices.csv`` by ``build_catalog.py`` (its
quirks and sources are in ``data/SOURCES.md``); ``data/cpu_catalog.csv`` adds CPU instance types
(entered by hand, same columns, ``gpu`` empty and ``gpu_count`` 0). ``load_catalog()`` reads
the GPU catalog; ``all_rows()`` and ``load_prices`` both. A live refresh (``dqlctl cost --refresh``)
writes one JSON file per provider under ``<dqlctl home>/prices/``; ``load_prices(home)`` returns
the catalog rows with the cached prices in their place, each price stamped with where it came
from and when, so that a stale figure is shown as stale and never passes for a fresh one.

Standard library only.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
CATALOG_PATH = DATA_DIR / "catalog.csv"
# CPU instance types (no GPU), entered by hand (data/SOURCES.md): not built from the reference.
CPU_CATALOG_PATH = DATA_DIR / "cpu_catalog.csv"

# The reference file does not record when its prices were read; the API examples that come with
# it are dated 2025-11 (spot history 2025-11-27). The catalog is dated by the newest of them, so
# its age is never understated.
CATALOG_AS_OF = "2025-11-28"
CATALOG_AS_OF_TS = datetime(2025, 11, 28, tzinfo=UTC).timestamp()

# A price older than this is shown as stale (spot prices move within days).
STALE_AFTER_S = 3 * 24 * 3600

PROVIDERS = ("aws", "azure", "gcp")
CACHE_SCHEMA = 1


def gpu_unusable(gpu: str) -> str:
    """Why the engine cannot train on this GPU model ('' when it can): its image is built on
    CUDA for amd64 hosts. (The catalog builder writes the same reasons into the rows' notes.)"""
    if gpu.startswith("Radeon"):
        return "AMD GPU: the CUDA engine image does not use it"
    return ""


def host_unusable(gpu: str) -> str:
    """Why the engine's image cannot run on this machine at all ('' when it can)."""
    if gpu == "T4g":
        return "arm64 host (Graviton): needs an arm64 engine image"
    return ""


@dataclass(frozen=True)
class PriceRow:
    """One instance type in one region, with its prices and where they came from."""

    provider: str
    region: str
    instance_type: str
    gpu: str
    gpu_count: int
    vcpus: int
    memory_gib: float
    on_demand: float | None
    spot: float | None
    spot_zone: str = ""
    price_basis: str = "instance"       # instance | host_vm+gpu | gpu_only
    interruption_band: str = ""         # "0-5%" ... ">20%", "" when not known
    status: str = "available"           # available | retired
    notes: str = ""
    source: str = ""
    # provenance of each price: "catalog" or "live"; and the time it was read (epoch seconds)
    on_demand_source: str = "catalog"
    spot_source: str = "catalog"
    on_demand_at: float = CATALOG_AS_OF_TS
    spot_at: float = CATALOG_AS_OF_TS
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        return price_key(self.instance_type, self.region)

    @property
    def complete(self) -> bool:
        """False for GPU-only prices (the host VM is not in the price)."""
        return self.price_basis != "gpu_only"


def price_key(instance_type: str, region: str) -> str:
    return f"{instance_type}@{region}"


def _float(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


def load_catalog(path: str | os.PathLike[str] | None = None) -> list[PriceRow]:
    """The bundled catalog's rows (or those of ``path``), in file order."""
    rows = []
    with open(path or CATALOG_PATH, newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            rows.append(PriceRow(
                provider=rec["provider"], region=rec["region"],
                instance_type=rec["instance_type"], gpu=rec["gpu"],
                gpu_count=int(rec["gpu_count"]), vcpus=int(rec["vcpus"]),
                memory_gib=float(rec["memory_gib"] or 0), on_demand=_float(rec["on_demand"]),
                spot=_float(rec["spot"]), spot_zone=rec["spot_zone"],
                price_basis=rec["price_basis"], interruption_band=rec["interruption_band"],
                status=rec["status"], notes=rec["notes"], source=rec["source"]))
    return rows


def all_rows() -> list[PriceRow]:
    """The GPU catalog's rows, then the CPU instance types'."""
    return load_catalog() + load_catalog(CPU_CATALOG_PATH)


# -- the live-price cache -------------------------------------------------------------------------


@dataclass(frozen=True)
class LivePrice:
    """A price read from a provider's API. ``None`` where that price was not in the answer."""

    on_demand: float | None = None
    spot: float | None = None
    spot_zone: str = ""


def cache_dir(home: str | os.PathLike[str]) -> Path:
    """Where live prices are cached for dqlctl's ``home``: ``$XDG_CACHE_HOME/dqlctl/prices``
    (``~/.cache/dqlctl/prices``) for the default home (``$XDG_DATA_HOME/dqlctl``); inside an
    explicit home (``$DQLCTL_HOME``, tests) ``<home>/prices``, so it holds all its files."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    if Path(home) != Path(data) / "dqlctl":
        return Path(home) / "prices"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "dqlctl" / "prices"


def cache_path(home: str | os.PathLike[str], provider: str) -> Path:
    """The provider's cache file; one at the old place (``<home>/prices``) is still read while
    the new one does not exist."""
    path = cache_dir(home) / f"{provider}.json"
    old = Path(home) / "prices" / f"{provider}.json"
    return path if path.exists() or not old.exists() else old


class CacheError(Exception):
    """The cache file is unreadable: it is ignored (and said so), never half-used."""


def read_cache(home: str | os.PathLike[str], provider: str) -> dict[str, Any] | None:
    """The provider's cache, or None when there is none. CacheError when it is unreadable."""
    path = cache_path(home, provider)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != CACHE_SCHEMA \
            or not isinstance(data.get("prices"), dict):
        raise CacheError(f"{path}: not a dqlctl price cache (schema {CACHE_SCHEMA})")
    return data


def write_cache(home: str | os.PathLike[str], provider: str, prices: dict[str, LivePrice],
                fetched_at: float, endpoint: str, previous: dict[str, Any] | None) -> Path:
    """Merge ``prices`` into the provider's cache; atomic (a reader sees old or new, whole)."""
    merged: dict[str, Any] = dict((previous or {}).get("prices", {}))
    for key, live in prices.items():
        entry = dict(merged.get(key, {}))
        if live.on_demand is not None:
            entry["on_demand"] = live.on_demand
            entry["on_demand_at"] = fetched_at
        if live.spot is not None:
            entry["spot"] = live.spot
            entry["spot_at"] = fetched_at
            entry["spot_zone"] = live.spot_zone
        if entry:
            merged[key] = entry
    data = {"schema": CACHE_SCHEMA, "provider": provider, "updated_at": fetched_at,
            "updated": _iso(fetched_at), "endpoint": endpoint, "prices": merged}
    path = cache_dir(home) / f"{provider}.json"  # always the new place (the old is only read)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def overlay(rows: Iterable[PriceRow], cache: dict[str, Any] | None) -> list[PriceRow]:
    """The rows with the cache's prices in place of the catalog's, where the cache has them."""
    prices = (cache or {}).get("prices", {})
    out = []
    for row in rows:
        entry = prices.get(row.key)
        if not isinstance(entry, dict):
            out.append(row)
            continue
        changes: dict[str, Any] = {}
        if isinstance(entry.get("on_demand"), int | float):
            changes.update(on_demand=float(entry["on_demand"]), on_demand_source="live",
                           on_demand_at=float(entry.get("on_demand_at", 0)))
        if isinstance(entry.get("spot"), int | float):
            changes.update(spot=float(entry["spot"]), spot_source="live",
                           spot_at=float(entry.get("spot_at", 0)),
                           spot_zone=str(entry.get("spot_zone") or row.spot_zone))
        out.append(replace(row, **changes) if changes else row)
    return out


@dataclass
class PriceSet:
    """Catalog rows with cached live prices laid over them, and what was said about the cache."""

    rows: list[PriceRow]
    warnings: list[str] = field(default_factory=list)
    cache_updated: dict[str, float] = field(default_factory=dict)   # provider -> epoch s


def load_prices(home: str | os.PathLike[str] | None = None,
                catalog: list[PriceRow] | None = None) -> PriceSet:
    """The catalog (GPU and CPU rows) with each provider's live cache (under ``home``) laid
    over it."""
    rows = list(catalog if catalog is not None else all_rows())
    result = PriceSet(rows=rows)
    if home is None:
        return result
    caches: dict[str, dict[str, Any]] = {}
    for provider in PROVIDERS:
        try:
            cache = read_cache(home, provider)
        except CacheError as exc:
            result.warnings.append(f"{provider}: {exc}; using the bundled catalog")
            continue
        if cache is not None:
            caches[provider] = cache
            result.cache_updated[provider] = float(cache.get("updated_at", 0))
    result.rows = [overlay([r], caches.get(r.provider))[0] for r in rows]
    return result


def age_s(ts: float, now: float | None = None) -> float:
    return max(0.0, (time.time() if now is None else now) - ts)


def is_stale(ts: float, now: float | None = None) -> bool:
    return age_s(ts, now) > STALE_AFTER_S


def fmt_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
