"""AWS prices through boto3: the Price List API for on-demand, spot price history for spot.

- On-demand: ``pricing.get_products`` (the Price List API answers from us-east-1) for each
  instance type, Linux, shared tenancy, no pre-installed software, capacity status "Used"
  (one product per type and region); the OnDemand term's hourly USD price. Capacity-block and
  dedicated products are skipped.
- Spot: ``ec2.describe_spot_price_history`` per region for the types, Linux/UNIX, from now: the
  newest price per zone, then the cheapest zone.

Endpoints are boto3's own (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_PRICING``,
``AWS_ENDPOINT_URL_EC2``) or ``endpoint_url``. boto3 is imported when a function runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from providers.base import install_hint
from providers.prices.catalog import LivePrice, PriceRow, price_key
from providers.prices.refresh import RefreshError, to_live

PRICING_REGION = "us-east-1"
PRODUCT_DESCRIPTION = "Linux/UNIX"


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise RefreshError(f"AWS prices need boto3: {install_hint('aws')}") from None
    return boto3


def _client(service: str, region: str, endpoint_url: str | None) -> Any:
    boto3 = _boto3()
    from botocore.config import Config

    cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10,
                 read_timeout=30)
    return boto3.session.Session().client(service, region_name=region, endpoint_url=endpoint_url,
                                          config=cfg)


def _aws_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _explain(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "NoCredentialsError":
        return "no AWS credentials (run `aws configure` or set AWS_PROFILE)"
    text = str(exc).strip().splitlines()
    return f"{name}: {text[0] if text else ''}"


def fetch(rows: Iterable[PriceRow], *, endpoint_url: str | None = None,
          now: float | None = None) -> tuple[dict[str, LivePrice], str]:
    """``{instance_type@region: LivePrice}`` for the rows, and the endpoint asked."""
    rows = list(rows)
    regions = sorted({r.region for r in rows})
    types = sorted({r.instance_type for r in rows})
    try:
        on_demand = on_demand_prices(types, regions, endpoint_url=endpoint_url)
        spot: dict[str, tuple[float, str]] = {}
        for region in regions:
            region_types = sorted({r.instance_type for r in rows if r.region == region})
            for itype, (price, zone) in spot_prices(region, region_types,
                                                    endpoint_url=endpoint_url, now=now).items():
                spot[price_key(itype, region)] = (price, zone)
    except RefreshError:
        raise
    except _aws_errors() as exc:
        raise RefreshError(_explain(exc)) from None
    client = _client("pricing", PRICING_REGION, endpoint_url)
    return to_live(on_demand, spot), client.meta.endpoint_url


# -- on-demand: the Price List API ----------------------------------------------------------------


def on_demand_prices(instance_types: Iterable[str], regions: Iterable[str], *,
                     endpoint_url: str | None = None) -> dict[str, float]:
    """``{instance_type@region: $/h}`` from ``pricing.get_products``, paged."""
    wanted_regions = set(regions)
    client = _client("pricing", PRICING_REGION, endpoint_url)
    paginator = client.get_paginator("get_products")
    out: dict[str, float] = {}
    for itype in instance_types:
        filters = [{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in (
            ("instanceType", itype), ("operatingSystem", "Linux"), ("tenancy", "Shared"),
            ("preInstalledSw", "NA"), ("capacitystatus", "Used"))]
        for page in paginator.paginate(ServiceCode="AmazonEC2", FormatVersion="aws_v1",
                                       Filters=filters, PaginationConfig={"PageSize": 100}):
            items = page.get("PriceList")
            if not isinstance(items, list):
                raise RefreshError("malformed Price List answer: no PriceList")
            for item in items:
                parsed = parse_product(item)
                if parsed is None:
                    continue
                region, ptype, price = parsed
                if ptype == itype and region in wanted_regions:
                    key = price_key(itype, region)
                    out[key] = min(price, out.get(key, price))
    return out


def parse_product(item: Any) -> tuple[str, str, float] | None:
    """(region, instance type, $/h) of one Price List item; None for a product to skip.

    RefreshError when the item is not a Price List product at all.
    """
    try:
        data = json.loads(item) if isinstance(item, str | bytes) else item
        attrs = data["product"]["attributes"]
        terms = data["terms"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RefreshError(f"malformed Price List item ({type(exc).__name__}: {exc})") from None
    if not isinstance(attrs, dict) or not isinstance(terms, dict):
        raise RefreshError("malformed Price List item (attributes/terms not objects)")
    usage = str(attrs.get("usagetype", ""))
    if "BoxUsage" not in usage or usage.startswith(("Dedicated", "Host")):
        return None
    if attrs.get("marketoption", "OnDemand") != "OnDemand":
        return None
    if attrs.get("operatingSystem", "Linux") != "Linux" or \
            attrs.get("licenseModel", "No License required") != "No License required":
        return None
    region = attrs.get("regionCode")
    itype = attrs.get("instanceType")
    if not region or not itype:
        raise RefreshError("malformed Price List item (no regionCode/instanceType)")
    prices = []
    for term in (terms.get("OnDemand") or {}).values():
        for dim in (term.get("priceDimensions") or {}).values():
            if dim.get("unit") != "Hrs":
                continue
            try:
                usd = float(dim["pricePerUnit"]["USD"])
            except (KeyError, TypeError, ValueError) as exc:
                raise RefreshError(f"malformed Price List price for {itype} in {region} "
                                   f"({type(exc).__name__}: {exc})") from None
            if usd > 0:
                prices.append(usd)
    if not prices:
        return None
    return region, itype, min(prices)


# -- spot: the spot price history -----------------------------------------------------------------


def spot_prices(region: str, instance_types: Iterable[str], *, endpoint_url: str | None = None,
                now: float | None = None) -> dict[str, tuple[float, str]]:
    """``{instance_type: ($/h, zone)}``: the newest price per zone, then the cheapest zone."""
    types = sorted(set(instance_types))
    if not types:
        return {}
    start = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    newest: dict[tuple[str, str], tuple[datetime, float]] = {}
    for item in _history(region, types, start, None, None, endpoint_url):
        itype, zone, ts, price = item
        key = (itype, zone)
        if key not in newest or ts > newest[key][0]:
            newest[key] = (ts, price)
    best: dict[str, tuple[float, str]] = {}
    for (itype, zone), (_, price) in sorted(newest.items()):
        if itype not in best or price < best[itype][0]:
            best[itype] = (price, zone)
    return best


def _history(region: str, types: list[str], start: datetime, end: datetime | None,
             zone: str | None, endpoint_url: str | None
             ) -> Iterable[tuple[str, str, datetime, float]]:
    client = _client("ec2", region, endpoint_url)
    kwargs: dict[str, Any] = {"InstanceTypes": types, "ProductDescriptions": [PRODUCT_DESCRIPTION],
                              "StartTime": start}
    if end is not None:
        kwargs["EndTime"] = end
    if zone:
        kwargs["AvailabilityZone"] = zone
    paginator = client.get_paginator("describe_spot_price_history")
    for page in paginator.paginate(**kwargs, PaginationConfig={"PageSize": 1000}):
        items = page.get("SpotPriceHistory")
        if not isinstance(items, list):
            raise RefreshError(f"malformed spot price history for {region}: no SpotPriceHistory")
        for item in items:
            try:
                ts = item["Timestamp"]
                if not isinstance(ts, datetime):
                    raise TypeError("Timestamp is not a time")
                yield (item["InstanceType"], item["AvailabilityZone"], ts,
                       float(item["SpotPrice"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise RefreshError(f"malformed spot price history item in {region} "
                                   f"({type(exc).__name__}: {exc})") from None


def spot_price_history(region: str, instance_type: str, zone: str, start: float,
                       end: float, *, endpoint_url: str | None = None
                       ) -> list[tuple[float, float]]:
    """(epoch, $/h) points of one type's spot price in one zone over [start, end], for
    ``estimate.accrued_cost``; includes the price in force at ``start``. RefreshError on failure.
    """
    points: dict[float, float] = {}
    try:
        for _, item_zone, ts, price in _history(
                region, [instance_type], datetime.fromtimestamp(start, UTC),
                datetime.fromtimestamp(end, UTC), zone, endpoint_url):
            if item_zone == zone:
                points[ts.timestamp()] = price
    except RefreshError:
        raise
    except _aws_errors() as exc:
        raise RefreshError(_explain(exc)) from None
    return sorted(points.items())
