"""Prices: the bundled catalog, the estimate, run cost, and live refresh for all three clouds.

Refresh tests run the real clients (boto3's pricing and ec2 clients, urllib for the Azure Retail
Prices API and the GCP Cloud Billing Catalog) against ``PriceAPI``, a local HTTP server on
127.0.0.1 that answers in the shapes of the real APIs (api_examples/ in the pricing reference):
JSON 1.1 for the Price List API, EC2 query XML for the spot price history, Azure's
``Items``/``NextPageLink`` pages and GCP's ``skus``/``nextPageToken`` pages. Each test says what
the server answers, including broken pages.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest

from providers.base import Offer
from providers.prices import build_catalog, catalog, estimate, refresh
from providers.prices.catalog import LivePrice, PriceRow, load_catalog, load_prices
from providers.prices.estimate import (
    NoOffer,
    PriceError,
    PriceRequest,
    accrued_cost,
    billable_intervals,
    cheapest_offer,
    cost_by_month,
    quote,
)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "pricing"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()

# -- the response shapes (from api_examples/, one item each) --------------------------------------

AWS_PRODUCT = {
    "product": {"productFamily": "Compute Instance", "sku": "ABCDEFGHIJKLMNOP", "attributes": {
        "instanceType": "p3.2xlarge", "vcpu": "8", "memory": "61 GiB", "gpu": "1",
        "regionCode": "us-east-1", "location": "US East (N. Virginia)",
        "operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA",
        "capacitystatus": "Used", "servicecode": "AmazonEC2",
        "usagetype": "BoxUsage:p3.2xlarge"}},
    "serviceCode": "AmazonEC2",
    "terms": {"OnDemand": {"ABCDEFGHIJKLMNOP.JRTCKXETXF": {
        "offerTermCode": "JRTCKXETXF", "sku": "ABCDEFGHIJKLMNOP",
        "effectiveDate": "2025-11-01T00:00:00Z", "termAttributes": {},
        "priceDimensions": {"ABCDEFGHIJKLMNOP.JRTCKXETXF.6YS6EN2CT7": {
            "rateCode": "ABCDEFGHIJKLMNOP.JRTCKXETXF.6YS6EN2CT7", "unit": "Hrs",
            "beginRange": "0", "endRange": "Inf", "appliesTo": [],
            "description": "$3.06 per On Demand Linux p3.2xlarge Instance Hour",
            "pricePerUnit": {"USD": "3.0600000000"}}}}}},
    "version": "20251101000000", "publicationDate": "2025-11-01T00:00:00Z"}

AZURE_ITEM = {
    "currencyCode": "USD", "tierMinimumUnits": 0.0, "retailPrice": 0.062699,
    "unitPrice": 0.062699, "armRegionName": "eastus", "location": "US East",
    "effectiveStartDate": "2025-11-01T00:00:00Z",
    "meterId": "00000000-0000-0000-0000-000000000000", "meterName": "NC4as T4 v3 Spot",
    "productId": "DZH318Z0BQPS", "skuId": "DZH318Z0BQPS/00XX",
    "productName": "Virtual Machines NCasT4_v3 Series", "skuName": "NC4as T4 v3 Spot",
    "serviceName": "Virtual Machines", "serviceId": "DZH313Z7MMC8", "serviceFamily": "Compute",
    "unitOfMeasure": "1 Hour", "type": "Consumption", "isPrimaryMeterRegion": True,
    "armSkuName": "Standard_NC4as_T4_v3"}

GCP_SKU = {
    "name": "services/6F81-5844-456A/skus/AAAA-BBBB-CCCC", "skuId": "AAAA-BBBB-CCCC",
    "description": "Nvidia Tesla T4 GPU running in Americas",
    "category": {"serviceDisplayName": "Compute Engine", "resourceFamily": "Compute",
                 "resourceGroup": "GPU", "usageType": "OnDemand"},
    "serviceRegions": ["us-central1"],
    "pricingInfo": [{"summary": "", "currencyConversionRate": 1,
                     "effectiveTime": "2025-11-01T00:00:00Z",
                     "pricingExpression": {
                         "usageUnit": "h", "usageUnitDescription": "hour", "baseUnit": "s",
                         "baseUnitDescription": "second", "baseUnitConversionFactor": 3600,
                         "displayQuantity": 1,
                         "tieredRates": [{"startUsageAmount": 0, "unitPrice": {
                             "currencyCode": "USD", "units": "0", "nanos": 350000000}}]},
                     "aggregationInfo": {"aggregationLevel": "ACCOUNT",
                                         "aggregationInterval": "DAILY",
                                         "aggregationCount": 0}}],
    "serviceProviderName": "Google",
    "geoTaxonomy": {"type": "REGIONAL", "regions": ["us-central1"]}}


def aws_product(itype: str, region: str, usd: str, **attrs: str) -> str:
    item = copy.deepcopy(AWS_PRODUCT)
    item["product"]["attributes"].update({"instanceType": itype, "regionCode": region,
                                          "usagetype": f"BoxUsage:{itype}", **attrs})
    term = next(iter(item["terms"]["OnDemand"].values()))
    next(iter(term["priceDimensions"].values()))["pricePerUnit"]["USD"] = usd
    return json.dumps(item)


def azure_item(sku: str, region: str, price: float, spot: bool = False, **extra: Any
               ) -> dict[str, Any]:
    item = dict(AZURE_ITEM, armSkuName=sku, armRegionName=region, retailPrice=price,
                unitPrice=price)
    name = sku.removeprefix("Standard_").replace("_", " ")
    item["meterName"] = item["skuName"] = name + (" Spot" if spot else "")
    item.update(extra)
    return item


def gcp_sku(description: str, region: str, usd: float, usage: str = "OnDemand",
            unit: str = "h") -> dict[str, Any]:
    sku = copy.deepcopy(GCP_SKU)
    sku["description"] = description
    sku["category"]["usageType"] = usage
    sku["serviceRegions"] = [region]
    expr = sku["pricingInfo"][0]["pricingExpression"]
    expr["usageUnit"] = unit
    units = int(usd)
    expr["tieredRates"][0]["unitPrice"].update(units=str(units),
                                               nanos=round((usd - units) * 1e9))
    return sku


# -- the local price API server --------------------------------------------------------------------


class PriceAPI:
    """What the server answers. Tests fill these; ``requests`` records what was asked."""

    def __init__(self) -> None:
        self.aws_products: dict[str, list[str]] = {}          # instanceType -> PriceList items
        self.aws_spot: dict[str, list[dict[str, str]]] = {}   # region -> history items
        self.aws_page_size = 1
        self.azure_pages: list[Any] = []                       # bodies (dict, or raw bytes)
        self.gcp_pages: list[Any] = []
        self.requests: list[str] = []
        self.url = ""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self, data: Any) -> bytes:
        return data if isinstance(data, bytes) else json.dumps(data).encode()

    def do_POST(self) -> None:
        api = self.server.api
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target", "")
        if target == "AWSPriceListService.GetProducts":
            req = json.loads(raw)
            api.requests.append(f"pricing:{json.dumps(req['Filters'])}")
            itype = next(f["Value"] for f in req["Filters"] if f["Field"] == "instanceType")
            items = api.aws_products.get(itype, [])
            start = int(req.get("NextToken") or 0)
            page = items[start:start + api.aws_page_size]
            nxt = start + api.aws_page_size
            body = {"FormatVersion": "aws_v1", "PriceList": page,
                    "NextToken": str(nxt) if nxt < len(items) else None}
            self._send(200, json.dumps(body).encode(), "application/x-amz-json-1.1")
            return
        form = urllib.parse.parse_qs(raw.decode())
        if form.get("Action") == ["DescribeSpotPriceHistory"]:
            region = self.headers["Authorization"].split("Credential=")[1].split("/")[2]
            api.requests.append(f"spot:{region}:{form.get('NextToken', [''])[0]}")
            types = {v[0] for k, v in form.items() if k.startswith("InstanceType.")}
            items = [i for i in api.aws_spot.get(region, []) if i["instanceType"] in types]
            start = int(form.get("NextToken", ["0"])[0])
            page = items[start:start + 2]
            nxt = str(start + 2) if start + 2 < len(items) else ""
            xml = "".join("<item>" + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in i.items())
                          + "</item>" for i in page)
            body = ('<?xml version="1.0" encoding="UTF-8"?>\n<DescribeSpotPriceHistoryResponse '
                    'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>59dbff89-35bd'
                    f'</requestId><spotPriceHistorySet>{xml}</spotPriceHistorySet>'
                    f'<nextToken>{nxt}</nextToken></DescribeSpotPriceHistoryResponse>')
            self._send(200, body.encode(), "text/xml")
            return
        self._send(400, b"unknown request", "text/plain")

    def do_GET(self) -> None:
        api = self.server.api
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        api.requests.append(f"GET {self.path}")
        if url.path == "/api/retail/prices":
            skip = int(query.get("$skip", ["0"])[0])
            page = api.azure_pages[skip]
            if isinstance(page, dict) and skip + 1 < len(api.azure_pages):
                page = dict(page)
                # The real API's link names its public host: the client must stay on ours.
                rest = urllib.parse.urlencode({"$filter": query["$filter"][0],
                                               "$skip": skip + 1})
                page["NextPageLink"] = f"https://prices.azure.com:443/api/retail/prices?{rest}"
            self._send(200, self._body(page), "application/json")
            return
        if url.path.startswith("/v1/services/6F81-5844-456A/skus"):
            token = query.get("pageToken", ["0"])[0]
            index = int(token)
            page = api.gcp_pages[index]
            if isinstance(page, dict):
                page = dict(page, nextPageToken=str(index + 1)
                            if index + 1 < len(api.gcp_pages) else "")
            self._send(200, self._body(page), "application/json")
            return
        self._send(404, b"{}", "application/json")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: PriceAPI


@contextlib.contextmanager
def serve_prices() -> Iterator[_Server]:
    """The price API server on 127.0.0.1 (a free port), for the length of the block."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.api = PriceAPI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def point_clients_at(server: _Server, monkeypatch: pytest.MonkeyPatch) -> PriceAPI:
    """A fresh ``PriceAPI`` on ``server``; every price client's endpoint points at it."""
    api = PriceAPI()
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.api = api
    for var, value in {"AWS_ENDPOINT_URL": api.url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "DQLCTL_AZURE_PRICES_URL": f"{api.url}/api/retail/prices",
                       "DQLCTL_GCP_BILLING_URL": api.url}.items():
        monkeypatch.setenv(var, value)
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_PRICING",
                "DQLCTL_GCP_API_KEY", "AWS_CONFIG_FILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return api


@pytest.fixture(scope="module")
def _price_server() -> Iterator[_Server]:
    with serve_prices() as server:
        yield server


@pytest.fixture
def price_api(_price_server: _Server, monkeypatch: pytest.MonkeyPatch) -> PriceAPI:
    return point_clients_at(_price_server, monkeypatch)


def rows_for(provider: str, *keys: tuple[str, str]) -> list[PriceRow]:
    by_key = {(r.instance_type, r.region): r for r in load_catalog() if r.provider == provider}
    return [by_key[k] for k in keys]


def spot_item(itype: str, zone: str, price: str, ts: str) -> dict[str, str]:
    return {"instanceType": itype, "productDescription": "Linux/UNIX", "spotPrice": price,
            "timestamp": ts, "availabilityZone": zone}


# -- the bundled catalog ---------------------------------------------------------------------------


@pytest.mark.skipif(not (REFERENCE / "gpu_prices.csv").exists(), reason="no pricing reference")
def test_catalog_is_the_reference_normalised() -> None:
    text = (REFERENCE / "gpu_prices.csv").read_text(encoding="utf-8")
    assert build_catalog.render(build_catalog.normalise(text)) == \
        catalog.CATALOG_PATH.read_text(encoding="utf-8")
    assert len(load_catalog()) == len(text.strip().splitlines()) - 1


def test_catalog_quirks_are_normalised() -> None:
    rows = {(r.provider, r.instance_type, r.region): r for r in load_catalog()}
    nd = rows[("azure", "Standard_ND96isr_H100_v5", "eastus")]
    assert nd.gpu_count == 8 and nd.spot is None and "fill-in" in nd.notes
    assert rows[("azure", "Standard_NC40ads_H100_v5", "eastus")].spot is None
    assert rows[("aws", "p5e.48xlarge", "us-west-2")].on_demand is None
    assert rows[("aws", "p5.4xlarge", "us-east-1")].spot is None
    t4 = rows[("gcp", "n1+nvidia-tesla-t4x2", "us-central1")]
    assert t4.price_basis == "gpu_only" and not t4.complete and t4.gpu_count == 2
    assert rows[("azure", "Standard_NC6", "westus2")].status == "retired"
    assert rows[("aws", "p3.2xlarge", "us-east-1")].interruption_band == ">20%"
    assert all(isinstance(r.vcpus, int) for r in rows.values())
    keys = [(r.provider, r.key) for r in load_catalog()]
    assert len(keys) == len(set(keys)), "each instance type and region once per cloud"
    for row in rows.values():  # every band is one the estimate knows
        estimate.canonical_band(row.interruption_band)


# -- the estimate ----------------------------------------------------------------------------------


def _offer(provider: str = "aws", price: float | None = 2.0, spot: bool = True,
           band: str | None = None) -> Offer:
    return Offer(provider, "us-east-1", "x", "T4", 1, 4, 16.0, spot, price,
                 {"interruption_band": band})


def test_estimate_is_hours_times_price_plus_overhead_and_egress() -> None:
    est = estimate.estimate(_offer(spot=False), 10)
    assert est.total_usd == 20.0 and est.overhead_frac == 0.0 and est.egress_usd == 0
    est = estimate.estimate(_offer(band=">20%"), 10, checkpoint_interval_h=1.0)
    rate = -math.log(1 - 0.30) / 730
    assert est.overhead_frac == pytest.approx(rate * (0.5 + estimate.RESTART_OVERHEAD_H))
    assert est.total_usd == pytest.approx(20 * (1 + est.overhead_frac))
    # a longer checkpoint interval loses more work per interruption
    assert estimate.estimate(_offer(band=">20%"), 10, checkpoint_interval_h=2).total_usd > \
        est.total_usd
    unknown = estimate.estimate(_offer(band=None), 10)
    assert unknown.overhead_frac is None and unknown.total_usd == 20.0
    # egress only when the data lives in another cloud
    assert estimate.estimate(_offer(), 1, data_gb=100, data_from="s3").egress_usd == 0
    est = estimate.estimate(_offer("gcp"), 1, data_gb=100, data_from="s3")
    assert est.egress_usd == pytest.approx(9.0) and est.total_usd == pytest.approx(11.0)
    assert estimate.estimate(_offer("aws"), 1, data_gb=10, data_from="az").egress_usd == \
        pytest.approx(0.87)
    assert estimate.estimate(_offer(price=None), 5).total_usd is None
    with pytest.raises(PriceError):
        estimate.estimate(_offer(), 1, data_gb=1, data_from="ftp")


def test_quote_is_cheapest_first_and_hides_partial_prices() -> None:
    q = quote(PriceRequest(gpu="T4", hours=2), now=NOW)
    totals = [o.extra["estimate"]["total_usd"] for o in q.offers]
    assert totals == sorted(totals) and {o.provider for o in q.offers} == {"aws", "azure"}
    assert all(o.gpu == "T4" and o.spot for o in q.offers)
    assert {r.provider for r, _ in q.hidden} == {"gcp"}     # GPU-only rows, not comparable
    assert all(o.extra["stale"] for o in q.offers)           # the bundled catalog is old
    od = quote(PriceRequest(gpu="t4:4", spot=False, provider="azure"), now=NOW)
    assert [o.instance_type for o in od.offers] == ["Standard_NC64as_T4_v3"] * 2
    assert all(o.price_per_hour == o.extra["on_demand"] == 4.352 for o in od.offers)
    k80 = quote(PriceRequest(gpu="K80"), now=NOW)
    assert not k80.offers and {why for _, why in k80.hidden} == {"retired"}
    assert quote(PriceRequest(instance_type="standard_nc6"), now=NOW).offers  # asked by name
    with pytest.raises(PriceError):
        quote(PriceRequest(gpu="A100:x"))
    with pytest.raises(PriceError):
        quote(PriceRequest(provider="oracle"))


def test_cheapest_offer_for_auto_provider() -> None:
    best = cheapest_offer(PriceRequest(gpu="A100:8", hours=10), now=NOW)
    assert (best.provider, best.instance_type, best.region) == ("aws", "p4d.24xlarge",
                                                                "us-east-1")
    assert best.price_per_hour == 2.4655 and best.extra["estimate"]["total_usd"] == 24.655
    assert cheapest_offer(PriceRequest(gpu="H100:8", provider="azure", spot=False),
                          now=NOW).price_per_hour == 98.32
    with pytest.raises(NoOffer):   # Azure H100 spot prices are unknown
        cheapest_offer(PriceRequest(gpu="H100", provider="azure"), now=NOW)
    with pytest.raises(NoOffer):
        cheapest_offer(PriceRequest(gpu="A100:3"), now=NOW)


# -- what a run cost ----------------------------------------------------------------------------


def _ev(ts: float, state: str) -> dict[str, Any]:
    return {"ts": ts, "kind": "state", "to_state": state}


def test_billable_intervals_skip_preempted_gaps() -> None:
    events = [_ev(0, "PENDING"), _ev(10, "PROVISIONING"), _ev(100, "BOOTSTRAPPING"),
              _ev(200, "RUNNING"), {"ts": 300, "kind": "note", "to_state": None},
              _ev(3700, "PREEMPTED"), _ev(3800, "RECOVERING"), _ev(4000, "BOOTSTRAPPING"),
              _ev(4100, "RUNNING"), _ev(7600, "COLLECTING"), _ev(7700, "SUCCEEDED")]
    assert billable_intervals(events, now=9999) == [(100, 3700), (4000, 7700)]
    assert billable_intervals(events[:4], now=1000) == [(100, 1000)]   # still running
    assert accrued_cost([(0, 3600), (7200, 9000)], 2.0) == 3.0


def test_accrued_cost_follows_the_price_history_and_splits_months() -> None:
    # 1 h at $1 (the run's price until the first point), then 1 h at $3, then 1 h at $2
    history = [(3600.0, 3.0), (7200.0, 2.0), (99999.0, 50.0)]
    assert accrued_cost([(0, 10800)], 1.0, history) == pytest.approx(6.0)
    assert accrued_cost([(4000, 4000 + 1800)], None, history) == pytest.approx(1.5)
    start = datetime(2026, 10, 31, 23, 0, tzinfo=UTC).timestamp()
    months = cost_by_month([(start, start + 3 * 3600)], 2.0)
    assert months == {"2026-10": (1.0, 2.0), "2026-11": (2.0, 4.0)}


# -- the cache -------------------------------------------------------------------------------------


def test_cache_overlays_the_catalog_and_ages(tmp_path: Path) -> None:
    key = catalog.price_key("g4dn.xlarge", "us-east-1")
    catalog.write_cache(tmp_path, "aws", {key: LivePrice(0.5, 0.21, "us-east-1b")}, NOW,
                        "test", None)
    rows = {r.key: r for r in load_prices(tmp_path).rows if r.provider == "aws"}
    assert (rows[key].on_demand, rows[key].spot, rows[key].spot_source) == (0.5, 0.21, "live")
    assert rows[catalog.price_key("g4dn.xlarge", "us-west-2")].spot_source == "catalog"
    fresh = quote(PriceRequest(instance_type="g4dn.xlarge", region="us-east-1"),
                  home=tmp_path, now=NOW + 3600).offers[0]
    assert fresh.price_per_hour == 0.21 and not fresh.extra["stale"]
    old = quote(PriceRequest(instance_type="g4dn.xlarge", region="us-east-1"), home=tmp_path,
                now=NOW + catalog.STALE_AFTER_S + 1).offers[0]
    assert old.extra["stale"] and old.extra["price_source"] == "live"
    catalog.cache_path(tmp_path, "gcp").write_text("{not json")
    prices = load_prices(tmp_path)
    assert any("gcp" in w and "unreadable" in w for w in prices.warnings)


# -- live refresh: AWS ------------------------------------------------------------------------------


def test_aws_refresh_pages_and_picks_newest_per_zone_then_cheapest(
        price_api: PriceAPI, tmp_path: Path) -> None:
    rows = rows_for("aws", ("p3.2xlarge", "us-east-1"), ("p3.2xlarge", "us-west-2"),
                    ("g4dn.xlarge", "us-east-1"))
    price_api.aws_products = {
        "p3.2xlarge": [aws_product("p3.2xlarge", "us-east-1", "3.0600000000"),
                       aws_product("p3.2xlarge", "us-east-1", "3.5", usagetype="USE1-Dedicated"
                               "Usage:p3.2xlarge"),
                       aws_product("p3.2xlarge", "eu-west-1", "3.3050000000"),
                       aws_product("p3.2xlarge", "us-west-2", "3.1000000000")],
        "g4dn.xlarge": [aws_product("g4dn.xlarge", "us-east-1", "0.5260000000"),
                        aws_product("g4dn.xlarge", "us-east-1", "0.1", marketoption="CapacityBlock")]}
    price_api.aws_spot = {
        "us-east-1": [spot_item("p3.2xlarge", "us-east-1a", "0.370700", "2026-11-29T10:14:05.000Z"),
                      spot_item("p3.2xlarge", "us-east-1a", "0.300000", "2026-11-28T10:00:00.000Z"),
                      spot_item("p3.2xlarge", "us-east-1b", "0.410000", "2026-11-29T09:00:00.000Z"),
                      spot_item("g4dn.xlarge", "us-east-1c", "0.190000", "2026-11-29T08:00:00.000Z"),
                      spot_item("g4dn.xlarge", "us-east-1d", "0.210000", "2026-11-29T08:00:00.000Z")],
        "us-west-2": [spot_item("p3.2xlarge", "us-west-2b", "0.5349", "2026-11-29T07:00:00.000Z")]}
    [res] = refresh.refresh(tmp_path, rows, now=NOW)
    assert res.ok and res.priced == 3, res.message
    assert sum(r.startswith("pricing:") for r in price_api.requests) >= 4      # paged
    assert "spot:us-east-1:2" in price_api.requests                            # paged
    prices = {r.key: r for r in load_prices(tmp_path).rows if r.provider == "aws"}
    p3 = prices["p3.2xlarge@us-east-1"]
    # newest per zone: 1a is 0.3707 (not the older 0.30), 1b 0.41 -> cheapest zone 1a
    assert (p3.on_demand, p3.spot, p3.spot_zone) == (3.06, 0.3707, "us-east-1a")
    assert p3.on_demand_at == NOW and p3.spot_source == "live"
    assert prices["p3.2xlarge@us-west-2"].on_demand == 3.1
    g4 = prices["g4dn.xlarge@us-east-1"]
    assert (g4.on_demand, g4.spot, g4.spot_zone) == (0.526, 0.19, "us-east-1c")


def test_aws_malformed_answer_keeps_the_previous_cache(price_api: PriceAPI,
                                                        tmp_path: Path) -> None:
    rows = rows_for("aws", ("p3.2xlarge", "us-east-1"))
    key = "p3.2xlarge@us-east-1"
    catalog.write_cache(tmp_path, "aws", {key: LivePrice(3.0, 0.35, "us-east-1f")}, NOW - 60,
                        "earlier", None)
    before = catalog.cache_path(tmp_path, "aws").read_bytes()
    price_api.aws_products = {"p3.2xlarge": [aws_product("p3.2xlarge", "us-east-1", "3.06"),
                                             '{"product": {"attributes": ']}  # cut short
    [res] = refresh.refresh(tmp_path, rows, now=NOW)
    assert not res.ok and "kept the cache of" in res.message and "malformed" in res.message
    assert catalog.cache_path(tmp_path, "aws").read_bytes() == before
    # a spot history item without a price: the same
    price_api.aws_products = {"p3.2xlarge": [aws_product("p3.2xlarge", "us-east-1", "3.06")]}
    bad = spot_item("p3.2xlarge", "us-east-1a", "0.37", "2026-11-29T10:00:00.000Z")
    del bad["spotPrice"]
    price_api.aws_spot = {"us-east-1": [bad]}
    [res] = refresh.refresh(tmp_path, rows, now=NOW)
    assert not res.ok and "spot price history" in res.message
    assert catalog.cache_path(tmp_path, "aws").read_bytes() == before


def test_aws_spot_price_history_for_accrued_cost(price_api: PriceAPI) -> None:
    from providers.aws.prices import spot_price_history

    price_api.aws_spot = {"us-east-1": [
        spot_item("p3.2xlarge", "us-east-1a", "0.40", "2026-11-29T10:00:00.000Z"),
        spot_item("p3.2xlarge", "us-east-1a", "0.30", "2026-11-29T11:00:00.000Z"),
        spot_item("p3.2xlarge", "us-east-1b", "9.99", "2026-11-29T11:00:00.000Z")]}
    start = datetime(2026, 11, 29, 10, 30, tzinfo=UTC).timestamp()
    history = spot_price_history("us-east-1", "p3.2xlarge", "us-east-1a", start, start + 5400)
    assert [p for _, p in history] == [0.40, 0.30]
    # 30 min at 0.40 then 60 min at 0.30
    assert accrued_cost([(start, start + 5400)], None, history) == pytest.approx(0.5)


# -- live refresh: Azure ---------------------------------------------------------------------------


def test_azure_refresh_follows_next_page_link_on_our_endpoint(price_api: PriceAPI,
                                                               tmp_path: Path) -> None:
    rows = rows_for("azure", ("Standard_NC4as_T4_v3", "eastus"),
                    ("Standard_NC8as_T4_v3", "eastus"), ("Standard_NC6s_v3", "westus2"))
    page = {"BillingCurrency": "USD", "CustomerEntityId": "Default",
            "CustomerEntityType": "Retail", "Count": 2}
    price_api.azure_pages = [
        dict(page, Items=[azure_item("Standard_NC4as_T4_v3", "eastus", 0.062699, spot=True),
                          azure_item("Standard_NC4as_T4_v3", "eastus", 0.526)]),
        dict(page, Items=[azure_item("Standard_NC4as_T4_v3", "eastus", 0.9,
                                     productName="Virtual Machines NCasT4_v3 Series Windows"),
                          azure_item("Standard_NC4as_T4_v3", "eastus", 0.01,
                                     meterName="NC4as T4 v3 Low Priority"),
                          azure_item("Standard_NC4as_T4_v3", "eastus", 0.06, spot=True,
                                     effectiveStartDate="2025-12-01T00:00:00Z"),
                          azure_item("Standard_NC8as_T4_v3", "eastus", 0.752)]),
        dict(page, Items=[azure_item("Standard_NC6s_v3", "westus2", 3.06),
                          azure_item("Standard_NC6s_v3", "westus2", 0.35, spot=True)]),
    ]
    [res] = refresh.refresh(tmp_path, rows, now=NOW)
    assert res.ok and res.priced == 3, res.message
    gets = [r for r in price_api.requests if r.startswith("GET /api/retail/prices")]
    assert len(gets) == 6                        # 3 pages for each of the 2 regions
    assert "armRegionName" in urllib.parse.unquote(gets[0])
    prices = {r.key: r for r in load_prices(tmp_path).rows if r.provider == "azure"}
    t4 = prices["Standard_NC4as_T4_v3@eastus"]
    assert (t4.on_demand, t4.spot) == (0.526, 0.06)     # newest spot meter wins
    nc8 = prices["Standard_NC8as_T4_v3@eastus"]
    assert nc8.on_demand == 0.752 and nc8.spot_source == "catalog"   # no spot meter: kept
    assert prices["Standard_NC6s_v3@westus2"].spot == 0.35


def test_azure_malformed_page_keeps_the_previous_cache(price_api: PriceAPI,
                                                       tmp_path: Path) -> None:
    rows = rows_for("azure", ("Standard_NC4as_T4_v3", "eastus"))
    price_api.azure_pages = [{"Items": [azure_item("Standard_NC4as_T4_v3", "eastus", 0.5)]},
                             {"Items": [azure_item("Standard_NC4as_T4_v3", "eastus", 0.05,
                                                   spot=True)]}]
    [res] = refresh.refresh(tmp_path, rows, now=NOW - 100)
    assert res.ok
    before = catalog.cache_path(tmp_path, "azure").read_bytes()
    for broken in ({"Items": "nope"}, b'{"Items": [', {"NextPageLink": None}):
        price_api.azure_pages = [{"Items": [azure_item("Standard_NC4as_T4_v3", "eastus", 9.9)]},
                                 broken]
        [res] = refresh.refresh(tmp_path, rows, now=NOW)
        assert not res.ok, res.message
        assert "page 2" in res.message or "not JSON" in res.message, res.message
        assert "kept the cache of" in res.message
        assert catalog.cache_path(tmp_path, "azure").read_bytes() == before
    row = next(r for r in load_prices(tmp_path).rows if r.key == "Standard_NC4as_T4_v3@eastus")
    assert (row.on_demand, row.spot) == (0.5, 0.05)


# -- live refresh: GCP -----------------------------------------------------------------------------


def _gcp_a2_pages() -> list[dict[str, Any]]:
    region = "us-central1"
    return [
        {"skus": [gcp_sku("A2 Instance Core running in Americas", region, 0.031611),
                  gcp_sku("A2 Instance Ram running in Americas", region, 0.004237,
                          unit="GiBy.h"),
                  gcp_sku("Commitment v1: A2 Cpu in Americas for 1 Year", region, 0.02,
                          usage="Commit1Yr")]},
        {"skus": [gcp_sku("Nvidia Tesla A100 GPU running in Americas", region, 2.933908),
                  gcp_sku("Nvidia Tesla A100 GPU running in Americas (DWS)", region, 1.0),
                  gcp_sku("Nvidia Tesla A100 GPU attached to Spot Preemptible VMs running in "
                          "Americas", region, 1.5, usage="Preemptible"),
                  gcp_sku("Spot Preemptible A2 Instance Core running in Americas", region,
                          0.01, usage="Preemptible")]},
        {"skus": [gcp_sku("Spot Preemptible A2 Instance Ram running in Americas", region,
                          0.001, usage="Preemptible", unit="GiBy.h"),
                  gcp_sku("Nvidia Tesla T4 GPU running in Americas", region, 0.35),
                  gcp_sku("Nvidia Tesla T4 GPU attached to Spot Preemptible VMs running in "
                          "Americas", region, 0.175, usage="Preemptible")]},
    ]


def test_gcp_refresh_sums_the_parts_across_pages(price_api: PriceAPI, tmp_path: Path) -> None:
    rows = rows_for("gcp", ("a2-highgpu-1g", "us-central1"), ("a2-highgpu-2g", "us-central1"),
                    ("g2-standard-4", "us-central1"))
    price_api.gcp_pages = _gcp_a2_pages()
    [res] = refresh.refresh(tmp_path, rows, now=NOW)
    assert res.ok and res.priced == 2, res.message
    assert res.missing == ["g2-standard-4@us-central1"]       # no G2/L4 SKUs in the answer
    tokens = [urllib.parse.parse_qs(urllib.parse.urlsplit(r[4:]).query).get("pageToken")
              for r in price_api.requests]
    assert tokens == [None, ["1"], ["2"]]
    prices = {r.key: r for r in load_prices(tmp_path).rows if r.provider == "gcp"}
    one = prices["a2-highgpu-1g@us-central1"]
    # 12 x 0.031611 + 85 x 0.004237 + 2.933908: the catalog's own figure
    assert one.on_demand == pytest.approx(3.67339, abs=1e-5)
    assert one.spot == pytest.approx(12 * 0.01 + 85 * 0.001 + 1.5)
    assert prices["a2-highgpu-2g@us-central1"].on_demand == pytest.approx(7.34677, abs=1e-5)
    assert prices["g2-standard-4@us-central1"].on_demand_source == "catalog"


def test_gcp_units_and_nanos() -> None:
    from providers.gcp.prices import sku_price

    sku = gcp_sku("x running in Americas", "us-central1", 0)
    sku["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"].update(
        units="2", nanos=933908000)
    assert sku_price(sku) == (pytest.approx(2.933908), "h")


def test_gcp_malformed_answer_keeps_the_previous_cache(price_api: PriceAPI,
                                                       tmp_path: Path) -> None:
    rows = rows_for("gcp", ("a2-highgpu-1g", "us-central1"))
    price_api.gcp_pages = _gcp_a2_pages()
    assert refresh.refresh(tmp_path, rows, now=NOW - 100)[0].ok
    before = catalog.cache_path(tmp_path, "gcp").read_bytes()
    broken_sku = gcp_sku("Nvidia Tesla A100 GPU running in Americas", "us-central1", 1.0)
    broken_sku["pricingInfo"] = []
    for broken in ({"error": {"code": 429}}, b"<html>", {"skus": [broken_sku]}):
        price_api.gcp_pages = [_gcp_a2_pages()[0], broken]
        [res] = refresh.refresh(tmp_path, rows, now=NOW)
        assert not res.ok and "kept the cache of" in res.message, res.message
        assert catalog.cache_path(tmp_path, "gcp").read_bytes() == before


def test_refresh_without_a_cache_says_it_keeps_the_catalog(price_api: PriceAPI,
                                                          tmp_path: Path) -> None:
    price_api.gcp_pages = [b"not json"]
    [res] = refresh.refresh(tmp_path, rows_for("gcp", ("a2-highgpu-1g", "us-central1")))
    assert not res.ok and res.message.endswith("kept the bundled catalog")
    assert not catalog.cache_path(tmp_path, "gcp").exists()


def test_catalog_csv_numbers_survive_loading() -> None:
    with open(catalog.CATALOG_PATH, newline="", encoding="utf-8") as fh:
        raw = list(csv.DictReader(fh))
    for rec, row in zip(raw, load_catalog(), strict=True):
        assert (float(rec["on_demand"]) if rec["on_demand"] else None) == row.on_demand
        assert (float(rec["spot"]) if rec["spot"] else None) == row.spot



def test_lookup_one_type_for_the_launch_flow(tmp_path: Path) -> None:
    from providers.prices.estimate import lookup

    offer = lookup("aws", "p3.2xlarge", "us-east-1", spot=True, home=tmp_path, now=NOW)
    assert offer is not None and offer.price_per_hour == 0.3707 and offer.spot
    assert lookup("aws", "p3.2xlarge", "us-east-1", spot=False, now=NOW).price_per_hour == 3.06
    assert lookup("aws", "p5.4xlarge", "us-east-1", now=NOW).price_per_hour is None  # no spot
    assert lookup("aws", "nope.large", "us-east-1", now=NOW) is None
