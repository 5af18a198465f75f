"""Live price refresh for the three clouds, all or nothing per cloud.

``refresh(home, rows)`` asks each cloud's price API for the rows' prices (the ``fetch`` of
``providers.<cloud>.prices``, named in ``MODULES``) and merges them into that cloud's cache under
``<home>/prices/``. A cloud whose answer is malformed, partial (a page missing or broken) or
refused leaves its previous cache exactly as it was, and its result says so and from when the
kept prices are. Rows the answer does not mention keep their earlier price (cached or bundled)
and are counted in the result.

Endpoints (production defaults in brackets; tests point them at a local server):

- AWS: boto3's own ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_PRICING`` /
  ``AWS_ENDPOINT_URL_EC2``), or ``endpoint_url=`` [the regional AWS endpoints].
- Azure: ``DQLCTL_AZURE_PRICES_URL`` [https://prices.azure.com/api/retail/prices] (no auth).
- GCP: ``DQLCTL_GCP_BILLING_URL`` [https://cloudbilling.googleapis.com]; the API wants an API
  key (``DQLCTL_GCP_API_KEY``) or, without one, Application Default Credentials (google-auth).
"""

from __future__ import annotations

import importlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from providers.prices.catalog import (
    PROVIDERS,
    CacheError,
    LivePrice,
    PriceRow,
    _iso,
    read_cache,
    write_cache,
)

HTTP_TIMEOUT_S = 30.0
MAX_PAGES = 500

# cloud -> the module holding its ``fetch``; imported when that cloud is refreshed.
MODULES = {"aws": "providers.aws.prices", "azure": "providers.azure.prices",
           "gcp": "providers.gcp.prices"}


class RefreshError(Exception):
    """A cloud's price API could not be read whole: nothing of its answer is used."""

    exit_code = 3


@dataclass
class RefreshResult:
    provider: str
    ok: bool
    message: str
    requested: int = 0                  # rows asked for
    priced: int = 0                     # rows with at least one price in the answer
    fetched_at: float | None = None
    kept_from: str | None = None        # on failure: when the kept cache was written
    endpoint: str = ""
    missing: list[str] = field(default_factory=list)   # rows the answer did not price

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def get_json(url: str, headers: dict[str, str] | None = None,
             timeout: float = HTTP_TIMEOUT_S) -> Any:
    """GET ``url`` and decode its JSON body; RefreshError on any HTTP or decoding failure."""
    req = urllib.request.Request(url, headers={"Accept": "application/json",
                                               "User-Agent": "dqlctl-prices",
                                               **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode("utf-8", "replace").strip()
        raise RefreshError(f"HTTP {exc.code} from {_short(url)}"
                           + (f": {detail}" if detail else "")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RefreshError(f"cannot reach {_short(url)} ({reason})") from None
    try:
        return json.loads(body)
    except ValueError as exc:
        raise RefreshError(f"malformed answer from {_short(url)}: not JSON ({exc})") from None


def _short(url: str) -> str:
    return url.split("?", 1)[0]


def refresh(home: str | os.PathLike[str], rows: Iterable[PriceRow],
            providers: Iterable[str] | None = None, *, now: float | None = None,
            fetchers: dict[str, Any] | None = None) -> list[RefreshResult]:
    """Refresh the prices of ``rows`` (grouped by cloud) into the cache under ``home``.

    ``fetchers`` maps a cloud to a ``fetch(rows) -> (prices, endpoint)`` callable (default: the
    ``fetch`` of each cloud's prices module, imported when used).
    """
    rows = list(rows)
    wanted = list(providers) if providers is not None else list(PROVIDERS)
    results = []
    for provider in wanted:
        own = [r for r in rows if r.provider == provider and r.complete
               and r.status == "available"]
        if not own:
            continue
        results.append(_refresh_one(home, provider, own, now, (fetchers or {}).get(provider)))
    return results


def _refresh_one(home: str | os.PathLike[str], provider: str, rows: list[PriceRow],
                 now: float | None, fetch: Any) -> RefreshResult:
    try:
        previous = read_cache(home, provider)
    except CacheError:
        previous = None                  # unreadable: replaced by a good answer, if one comes
    fetched_at = time.time() if now is None else now
    try:
        if fetch is None:
            fetch = importlib.import_module(MODULES[provider]).fetch
        prices, endpoint = fetch(rows)
    except RefreshError as exc:
        kept = (f"kept the cache of {_iso(float(previous.get('updated_at', 0)))}"
                if previous else "kept the bundled catalog")
        return RefreshResult(provider, False, f"{provider}: refresh failed: {exc}; {kept}",
                             requested=len(rows),
                             kept_from=_iso(float(previous["updated_at"])) if previous else None)
    wanted = {r.key for r in rows}
    prices = {k: v for k, v in prices.items() if k in wanted
              and (v.on_demand is not None or v.spot is not None)}
    write_cache(home, provider, prices, fetched_at, endpoint, previous)
    missing = sorted(wanted - set(prices))
    msg = f"{provider}: {len(prices)} of {len(rows)} prices refreshed from {endpoint}"
    if missing:
        msg += f"; {len(missing)} not in the answer kept their earlier price"
    return RefreshResult(provider, True, msg, requested=len(rows), priced=len(prices),
                         fetched_at=fetched_at, endpoint=endpoint, missing=missing)


def to_live(on_demand: dict[str, float], spot: dict[str, tuple[float, str]]) -> dict[str, LivePrice]:
    """Merge per-key on-demand and (spot, zone) maps into LivePrice records."""
    out: dict[str, LivePrice] = {}
    for key in set(on_demand) | set(spot):
        sp = spot.get(key)
        out[key] = LivePrice(on_demand=on_demand.get(key), spot=sp[0] if sp else None,
                             spot_zone=sp[1] if sp else "")
    return out
