"""Azure prices from the Azure Retail Prices API (public, no credentials), through urllib.

One query per region: ``serviceName eq 'Virtual Machines' and priceType eq 'Consumption'``, that
region, and the rows' ARM SKU names; pages followed through ``NextPageLink``. Of the items,
Linux hourly meters only (Windows products, Low Priority meters and DevTest prices skipped);
a meter whose name ends in " Spot" is the spot price, the plain one the on-demand price. When
one SKU has several items of a kind, the newest ``effectiveStartDate`` wins.

``DQLCTL_AZURE_PRICES_URL`` replaces the endpoint. A ``NextPageLink`` is followed on the
configured endpoint (its scheme and host are replaced by ours), never to another host.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable
from typing import Any

from providers.prices.catalog import LivePrice, PriceRow, price_key
from providers.prices.refresh import MAX_PAGES, RefreshError, get_json, to_live

DEFAULT_URL = "https://prices.azure.com/api/retail/prices"
ENV_URL = "DQLCTL_AZURE_PRICES_URL"
API_VERSION = "2023-01-01-preview"


def endpoint() -> str:
    return os.environ.get(ENV_URL) or DEFAULT_URL


def query_url(base: str, region: str, skus: Iterable[str]) -> str:
    sku_clause = " or ".join(f"armSkuName eq '{s}'" for s in sorted(set(skus)))
    flt = (f"serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and "
           f"armRegionName eq '{region}' and ({sku_clause})")
    query = urllib.parse.urlencode({"api-version": API_VERSION, "currencyCode": "USD",
                                    "$filter": flt}, quote_via=urllib.parse.quote)
    return f"{base}?{query}"


def rebase(link: str, base: str) -> str:
    """``link`` on ``base``'s scheme and host (the API's own links name its public host)."""
    ours = urllib.parse.urlsplit(base)
    theirs = urllib.parse.urlsplit(link)
    if theirs.path.rstrip("/") != ours.path.rstrip("/"):
        raise RefreshError(f"malformed answer: NextPageLink {link!r} is not a prices query")
    return urllib.parse.urlunsplit((ours.scheme, ours.netloc, theirs.path, theirs.query, ""))


def iter_items(url: str, base: str) -> Iterable[dict[str, Any]]:
    """Every item of a query, page after page; RefreshError if any page is malformed."""
    seen: set[str] = set()
    page = 0
    while url:
        page += 1
        if page > MAX_PAGES or url in seen:
            raise RefreshError(f"paging did not end after {page - 1} pages")
        seen.add(url)
        data = get_json(url)
        if not isinstance(data, dict) or not isinstance(data.get("Items"), list):
            raise RefreshError(f"malformed answer on page {page}: no Items list")
        for item in data["Items"]:
            if not isinstance(item, dict):
                raise RefreshError(f"malformed answer on page {page}: an item is not an object")
            yield item
        nxt = data.get("NextPageLink")
        if nxt is not None and not isinstance(nxt, str):
            raise RefreshError(f"malformed answer on page {page}: NextPageLink not a string")
        url = rebase(nxt, base) if nxt else ""


def classify(item: dict[str, Any]) -> tuple[str, str, str, float, str] | None:
    """(sku, region, "spot"|"on_demand", $/h, effective date) of a Linux VM item, or None."""
    try:
        sku = item["armSkuName"]
        region = item["armRegionName"]
        meter = str(item.get("meterName") or item.get("skuName") or "")
        price = float(item["retailPrice"])
        unit = item["unitOfMeasure"]
        kind = item["type"]
    except (KeyError, TypeError, ValueError) as exc:
        raise RefreshError(f"malformed item ({type(exc).__name__}: {exc})") from None
    if kind != "Consumption" or unit != "1 Hour" or item.get("currencyCode", "USD") != "USD":
        return None
    if "windows" in str(item.get("productName", "")).lower() or meter.endswith("Low Priority"):
        return None
    which = "spot" if meter.endswith(" Spot") else "on_demand"
    return sku, region, which, price, str(item.get("effectiveStartDate", ""))


def fetch(rows: Iterable[PriceRow], *, base: str | None = None
          ) -> tuple[dict[str, LivePrice], str]:
    """``{instance_type@region: LivePrice}`` for the rows, and the endpoint asked."""
    base = base or endpoint()
    by_region: dict[str, set[str]] = {}
    for row in rows:
        by_region.setdefault(row.region, set()).add(row.instance_type)
    found: dict[tuple[str, str], tuple[str, float]] = {}    # (key, kind) -> (date, price)
    for region, skus in sorted(by_region.items()):
        wanted = {s.lower(): s for s in skus}
        for item in iter_items(query_url(base, region, skus), base):
            got = classify(item)
            if got is None:
                continue
            sku, item_region, which, price, date = got
            if item_region != region or sku.lower() not in wanted:
                continue
            slot = (price_key(wanted[sku.lower()], region), which)
            if slot not in found or date > found[slot][0]:
                found[slot] = (date, price)
    on_demand = {k: p for (k, which), (_, p) in found.items() if which == "on_demand"}
    spot = {k: (p, "") for (k, which), (_, p) in found.items() if which == "spot"}
    return to_live(on_demand, spot), base
