"""GCP prices from the Cloud Billing Catalog API (Compute Engine SKUs), through urllib.

GCP prices a GPU VM by its parts: ``vCPUs x core $/h + memory GiB x RAM $/GiB-h + GPUs x GPU
$/h``, each a SKU per region (``serviceRegions``) and usage type (``OnDemand``, or
``Preemptible`` for Spot VMs). A SKU's price is ``units + nanos / 1e9`` USD per usage unit
(``h`` or ``GiBy.h``) of its newest ``pricingInfo``, last tier. Which SKUs make up a machine is
matched on the SKU description with the spot wording taken out, e.g. "Nvidia Tesla A100 GPU
running in Americas", "A2 Instance Core running in Americas", "A2 Instance Ram running in
Americas". A row is priced only when every one of its parts is in the answer.

``DQLCTL_GCP_BILLING_URL`` replaces the endpoint; ``DQLCTL_GCP_API_KEY`` is sent as ``key``.
Without a key, against Google's endpoint, Application Default Credentials are used when
google-auth is installed.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

from providers.prices.catalog import LivePrice, PriceRow
from providers.prices.refresh import MAX_PAGES, RefreshError, get_json, to_live

DEFAULT_URL = "https://cloudbilling.googleapis.com"
ENV_URL = "DQLCTL_GCP_BILLING_URL"
ENV_KEY = "DQLCTL_GCP_API_KEY"
COMPUTE_SERVICE = "6F81-5844-456A"      # Compute Engine
PAGE_SIZE = 5000
USAGE_TYPES = {"OnDemand": "on_demand", "Preemptible": "spot"}

# GPU model (catalog name) -> SKU description of its per-GPU price.
GPU_SKUS = {
    "T4": "Nvidia Tesla T4 GPU", "P4": "Nvidia Tesla P4 GPU", "P100": "Nvidia Tesla P100 GPU",
    "V100": "Nvidia Tesla V100 GPU", "A100": "Nvidia Tesla A100 GPU",
    "A100-80GB": "Nvidia Tesla A100 80GB GPU", "L4": "Nvidia L4 GPU",
    "H100": "Nvidia H100 80GB GPU", "H100-MEGA": "Nvidia H100 80GB Mega GPU",
    "H200": "Nvidia H200 141GB GPU", "B200": "Nvidia B200 180GB GPU",
}
# Machine family (the machine type's prefix) -> the family word in its core/RAM SKUs.
FAMILIES = {"a2-": "A2", "g2-": "G2", "a3-highgpu-": "A3", "a3-edgegpu-": "A3",
            "a3-megagpu-": "A3 Mega", "a3-ultragpu-": "A3 Ultra", "a4-": "A4"}

_SPOT_WORDS = re.compile(r"^(Spot Preemptible |Preemptible )|"
                         r" attached to (Spot )?Preemptible VMs| \(Spot\)")
# "<part> running in <place>"; a place in parentheses marks a variant (e.g. a DWS price): skipped
_DESC = re.compile(r"^(?P<what>.+?) running in (?P<where>[^()]+)$")


def endpoint() -> str:
    return (os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")


def _auth(base: str) -> tuple[dict[str, str], dict[str, str]]:
    """(query params, headers) that authenticate us to the Cloud Billing API."""
    key = os.environ.get(ENV_KEY)
    if key:
        return {"key": key}, {}
    if base != DEFAULT_URL:
        return {}, {}
    try:
        import google.auth
        import google.auth.transport.requests
    except ImportError:
        raise RefreshError(f"the Cloud Billing API needs an API key ({ENV_KEY}) or "
                           "google-auth with Application Default Credentials") from None
    try:
        creds, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-billing.readonly"])
        creds.refresh(google.auth.transport.requests.Request())
    except Exception as exc:  # google.auth raises several unrelated types
        raise RefreshError(f"no Google credentials ({type(exc).__name__}: {exc}); set "
                           f"{ENV_KEY} or run `gcloud auth application-default login`") from None
    return {}, {"Authorization": f"Bearer {creds.token}"}


def sku_price(sku: dict[str, Any]) -> tuple[float, str]:
    """(USD per usage unit, usage unit) of a SKU; RefreshError when it has no readable price."""
    try:
        info = sku["pricingInfo"][-1]
        expr = info["pricingExpression"]
        tier = expr["tieredRates"][-1]["unitPrice"]
        if tier.get("currencyCode", "USD") != "USD":
            raise ValueError(f"currency {tier.get('currencyCode')}")
        price = int(tier.get("units") or 0) + int(tier.get("nanos") or 0) / 1e9
        return price, str(expr["usageUnit"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise RefreshError(f"malformed SKU {sku.get('skuId', '?')} "
                           f"({type(exc).__name__}: {exc})") from None


def parts(row: PriceRow) -> list[tuple[str, float, str]]:
    """(SKU description without region, quantity, usage unit) making up a row's price; [] when
    the machine family is not known."""
    gpu_desc = GPU_SKUS.get(row.gpu)
    if gpu_desc is None:
        return []
    out = [(gpu_desc, float(row.gpu_count), "h")]
    if row.price_basis == "gpu_only":
        return out
    family = next((f for p, f in FAMILIES.items() if row.instance_type.startswith(p)), None)
    if family is None:
        return []
    return out + [(f"{family} Instance Core", float(row.vcpus), "h"),
                  (f"{family} Instance Ram", row.memory_gib, "GiBy.h")]


def iter_skus(base: str) -> Iterable[dict[str, Any]]:
    params, headers = _auth(base)
    token = ""
    page = 0
    while True:
        page += 1
        if page > MAX_PAGES:
            raise RefreshError(f"paging did not end after {MAX_PAGES} pages")
        query = {"currencyCode": "USD", "pageSize": str(PAGE_SIZE), **params}
        if token:
            query["pageToken"] = token
        url = (f"{base}/v1/services/{COMPUTE_SERVICE}/skus?"
               f"{urllib.parse.urlencode(query)}")
        data = get_json(url, headers)
        if not isinstance(data, dict) or not isinstance(data.get("skus"), list):
            raise RefreshError(f"malformed answer on page {page}: no skus list")
        for sku in data["skus"]:
            if not isinstance(sku, dict):
                raise RefreshError(f"malformed answer on page {page}: a SKU is not an object")
            yield sku
        token = data.get("nextPageToken") or ""
        if not isinstance(token, str):
            raise RefreshError(f"malformed answer on page {page}: nextPageToken not a string")
        if not token:
            return


def fetch(rows: Iterable[PriceRow], *, base: str | None = None
          ) -> tuple[dict[str, LivePrice], str]:
    """``{instance_type@region: LivePrice}`` for the rows, and the endpoint asked."""
    rows = list(rows)
    base = (base or endpoint()).rstrip("/")
    needed = {desc for r in rows for desc, _, _ in parts(r)}
    regions = {r.region for r in rows}
    table: dict[tuple[str, str, str], tuple[float, str]] = {}  # (desc, region, kind) -> price
    for sku in iter_skus(base):
        category = sku.get("category")
        if not isinstance(category, dict):
            continue
        kind = USAGE_TYPES.get(str(category.get("usageType")))
        match = _DESC.match(_SPOT_WORDS.sub("", str(sku.get("description", ""))))
        if kind is None or match is None or match["what"] not in needed:
            continue
        price, unit = sku_price(sku)
        for region in sku.get("serviceRegions") or []:
            if region in regions:
                table[(match["what"], region, kind)] = (price, unit)
    on_demand: dict[str, float] = {}
    spot: dict[str, tuple[float, str]] = {}
    for row in rows:
        for kind in ("on_demand", "spot"):
            total = _row_price(row, kind, table)
            if total is None:
                continue
            if kind == "on_demand":
                on_demand[row.key] = total
            else:
                spot[row.key] = (total, "")
    return to_live(on_demand, spot), base


def _row_price(row: PriceRow, kind: str,
               table: dict[tuple[str, str, str], tuple[float, str]]) -> float | None:
    pieces = parts(row)
    if not pieces:
        return None
    total = 0.0
    for desc, qty, unit in pieces:
        got = table.get((desc, row.region, kind))
        if got is None:
            return None
        price, got_unit = got
        if got_unit != unit:
            raise RefreshError(f"SKU {desc!r} in {row.region} priced per {got_unit!r}, "
                               f"expected {unit!r}")
        total += qty * price
    return round(total, 6)
