"""The offers ``dqlctl cost`` and ``launch --provider auto`` rank (providers/prices/estimate.py):
each offer's prices with where they came from and how old they are, cheapest estimate first,
what is hidden and why, how fresh each cloud's prices are, and the arithmetic to the cent.
Price rows are made here (no catalog file, no price server): ``make mutation`` runs these once
per mutant."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from providers.base import Offer
from providers.prices import estimate as est
from providers.prices.catalog import CATALOG_AS_OF, STALE_AFTER_S, PriceRow, PriceSet
from providers.prices.estimate import PriceRequest, freshness, offer_for, quote

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
DAY = 86400.0


def row(provider: str = "aws", itype: str = "p4", region: str = "us-east-1", *,
        on_demand: float | None = 3.0, spot: float | None = 1.0, gpu: str = "A100",
        **kw: Any) -> PriceRow:
    return PriceRow(provider=provider, region=region, instance_type=itype, gpu=gpu,
                    gpu_count=kw.pop("gpu_count", 8), vcpus=kw.pop("vcpus", 96),
                    memory_gib=kw.pop("memory_gib", 1152.0), on_demand=on_demand, spot=spot,
                    **kw)


def prices(*rows: PriceRow, **kw: Any) -> PriceSet:
    return PriceSet(rows=list(rows), **kw)


@pytest.fixture()
def new_york() -> Iterator[None]:
    """The machine's local time far from UTC: months and times must still be UTC's."""
    import os

    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


# -- one offer ----------------------------------------------------------------------------------

def test_a_spot_offer_carries_its_prices_their_source_and_age() -> None:
    r = row(spot_zone="us-east-1b", interruption_band="5-10%", notes="n", spot_source="live",
            spot_at=NOW - 2 * DAY, on_demand_at=NOW - 9 * DAY, price_basis="host_vm+gpu")
    offer = offer_for(r, PriceRequest(hours=2, data_gb=10, data_from="gs",
                                      checkpoint_interval_h=0.5), NOW)
    assert (offer.provider, offer.region, offer.instance_type, offer.gpu, offer.gpu_count,
            offer.vcpus, offer.memory_gib, offer.spot, offer.price_per_hour) == (
        "aws", "us-east-1", "p4", "A100", 8, 96, 1152.0, True, 1.0)
    extra = dict(offer.extra)
    estimate = extra.pop("estimate")
    assert extra == {"on_demand": 3.0, "spot_price": 1.0, "saving_pct": 66.7,
                     "spot_zone": "us-east-1b", "interruption_band": "5-10%",
                     "price_basis": "host_vm+gpu", "price_source": "live",
                     "price_as_of": "2026-11-28T12:00:00Z", "price_age_s": 172800,
                     "stale": False, "status": "available", "notes": "n",
                     "priced_at": "spot"}
    assert estimate == est.estimate(offer, 2, checkpoint_interval_h=0.5, data_gb=10,
                                    data_from="gs").to_dict()
    assert estimate["egress_usd"] == pytest.approx(1.118)


def test_an_on_demand_offer_uses_the_on_demand_price_source_and_age() -> None:
    r = row(spot_source="live", spot_at=NOW, on_demand_at=NOW - 4 * DAY)
    offer = offer_for(r, PriceRequest(spot=False), NOW)
    assert offer.price_per_hour == 3.0 and offer.spot is False
    assert offer.extra["price_source"] == "catalog"
    assert offer.extra["price_as_of"] == "2026-11-26T12:00:00Z"
    assert offer.extra["price_age_s"] == 4 * DAY and offer.extra["stale"] is True
    assert (offer.extra["spot_zone"], offer.extra["interruption_band"],
            offer.extra["notes"]) == (None, None, None)


@pytest.mark.parametrize(("on_demand", "spot", "saving"), [
    (3.0, 1.0, 66.7), (2.0, 1.98, 1.0), (2.0, 0.0, 100.0), (None, 1.0, None),
    (0.0, 1.0, None), (3.0, None, None)])
def test_the_spot_saving_is_a_percentage_of_on_demand(on_demand: float | None,
                                                      spot: float | None,
                                                      saving: float | None) -> None:
    offer = offer_for(row(on_demand=on_demand, spot=spot), PriceRequest(), NOW)
    assert offer.extra["saving_pct"] == saving


def test_prices_are_stamped_in_utc_whatever_the_local_zone(new_york: None) -> None:
    offer = offer_for(row(spot_at=NOW), PriceRequest(), NOW)
    assert offer.extra["price_as_of"] == "2026-11-30T12:00:00Z"
    assert est.cost_by_month([(datetime(2026, 11, 30, 23, tzinfo=UTC).timestamp(),
                               datetime(2026, 12, 1, 1, tzinfo=UTC).timestamp())], 1.0) == {
        "2026-11": (1.0, 1.0), "2026-12": (1.0, 1.0)}


# -- the quote -----------------------------------------------------------------------------------

def test_offers_are_ranked_by_estimate_not_by_price() -> None:
    rows = [row("aws", "a", on_demand=1.0), row("gcp", "g", on_demand=1.05)]
    # the data is in GCS: the AWS machine pays egress for 10 GB and ends up dearer
    q = quote(PriceRequest(spot=False, data_gb=10, data_from="gs"), now=NOW,
              prices=prices(*rows))
    assert [o.instance_type for o in q.offers] == ["g", "a"]


def test_equal_estimates_go_by_price_then_provider_region_and_type() -> None:
    rows = [row("aws", "a", on_demand=1.0), row("gcp", "g", on_demand=0.5),
            row("azure", "z2", "westus", on_demand=2.0), row("azure", "z1", "westus",
                                                               on_demand=2.0),
            row("azure", "z3", "eastus", on_demand=2.0)]
    # 50/9 GB from S3 at $0.09: the GCP machine's total is $1.00 too
    q = quote(PriceRequest(spot=False, data_gb=50 / 9, data_from="s3"), now=NOW,
              prices=prices(*rows[:2]))
    assert [o.extra["estimate"]["total_usd"] for o in q.offers] == [1.0, 1.0]
    assert [o.instance_type for o in q.offers] == ["g", "a"]
    q = quote(PriceRequest(spot=False), now=NOW, prices=prices(*rows[2:]))
    assert [(o.region, o.instance_type) for o in q.offers] == [
        ("eastus", "z3"), ("westus", "z1"), ("westus", "z2")]


def test_a_free_offer_ranks_before_a_cheap_one_and_unpriced_ones_go_last() -> None:
    rows = [row("aws", "none", on_demand=None), row("aws", "cheap", on_demand=0.5),
            row("aws", "free", on_demand=0.0), row("aws", "none2", on_demand=None)]
    q = quote(PriceRequest(spot=False), now=NOW, prices=prices(*rows))
    assert [o.instance_type for o in q.offers] == ["free", "cheap", "none", "none2"]


def test_hidden_rows_are_listed_with_why() -> None:
    gpu_only = row("gcp", "nvidia-a100", price_basis="gpu_only")
    retired = row("aws", "p3", status="retired")
    q = quote(PriceRequest(), now=NOW, prices=prices(gpu_only, retired, row("aws", "p4")))
    assert [o.instance_type for o in q.offers] == ["p4"]
    assert q.hidden == [(gpu_only, "GPU-only price (the n1 host VM is not in the price)"),
                        (retired, "retired")]
    asked = quote(PriceRequest(instance_type="P3"), now=NOW, prices=prices(retired))
    assert [o.instance_type for o in asked.offers] == ["p3"] and asked.hidden == []


def test_the_quote_keeps_the_requests_warnings_and_each_clouds_freshness() -> None:
    rows = [row("aws", "a"), row("gcp", "g", spot_source="live", on_demand_source="live")]
    request = PriceRequest(provider="all")
    q = quote(request, now=NOW, prices=prices(*rows, warnings=["azure: cache unreadable"]))
    assert q.request is request
    assert q.warnings == ["azure: cache unreadable"]
    assert sorted(q.freshness) == ["aws", "gcp"]                # no azure row matched
    assert q.freshness["aws"]["source"] == "catalog"
    assert q.freshness["gcp"]["source"] == "live"
    assert q.to_dict()["request"]["provider"] == "all"


def test_a_bad_data_location_is_refused_even_when_nothing_matches() -> None:
    with pytest.raises(est.PriceError, match="--data-from"):
        quote(PriceRequest(data_from="ftp"), now=NOW, prices=prices())


def test_the_quote_uses_the_clock_when_not_told_the_time() -> None:
    q = quote(PriceRequest(), prices=prices(row(spot_at=time.time() - 100)))
    assert 100 <= q.offers[0].extra["price_age_s"] <= 160


def test_without_prices_given_the_catalog_under_home_is_read(tmp_path: Any) -> None:
    q = quote(PriceRequest(gpu="A100", provider="aws"), home=tmp_path, now=NOW)
    assert q.offers and {o.provider for o in q.offers} == {"aws"}
    assert q.freshness["aws"]["catalog_as_of"] == CATALOG_AS_OF


# -- freshness ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sources", "expected"), [
    ([("catalog", "catalog")], "catalog"), ([("live", "catalog")], "live+catalog"),
    ([("catalog", "live")], "live+catalog"), ([("live", "live")], "live"),
    ([("live", "live"), ("catalog", "catalog")], "live+catalog"),
    ([("live", "live"), ("live", "live")], "live")])
def test_a_clouds_prices_are_live_catalog_or_both(sources: list[tuple[str, str]],
                                                  expected: str) -> None:
    rows = [row(on_demand_source=a, spot_source=b) for a, b in sources]
    assert freshness(rows, prices(*rows), "aws", NOW)["source"] == expected


def test_freshness_is_that_of_the_oldest_price() -> None:
    rows = [row(on_demand_at=NOW - DAY, spot_at=NOW - 5 * DAY),
            row(on_demand_at=NOW - 2 * DAY, spot_at=NOW - DAY)]
    f = freshness(rows, prices(*rows, cache_updated={"aws": NOW - 3600}), "aws", NOW)
    assert f == {"source": "catalog", "catalog_as_of": CATALOG_AS_OF,
                 "oldest_price_as_of": "2026-11-25T12:00:00Z", "oldest_age_s": 5 * DAY,
                 "stale": True, "cache_updated": "2026-11-30T11:00:00Z"}
    fresh = [row(on_demand_at=NOW - STALE_AFTER_S, spot_at=NOW)]
    f = freshness(fresh, prices(*fresh, cache_updated={"gcp": NOW}), "aws", NOW)
    assert f["stale"] is False and "cache_updated" not in f


def test_no_rows_have_no_age() -> None:
    assert freshness([], prices(), "aws", NOW) == {
        "source": "catalog", "catalog_as_of": CATALOG_AS_OF, "oldest_price_as_of": None,
        "oldest_age_s": None, "stale": False}


# -- the cheapest offer, one offer --------------------------------------------------------------

@pytest.fixture()
def catalog(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The price set every quote reads (``load_prices``), and the homes it was read from."""
    homes: list[Any] = []
    rows = [row("aws", "p4", on_demand=None, spot=None), row("aws", "p5", spot=2.0),
            row("aws", "p5", "eu-west-1", spot=1.5), row("gcp", "p5", spot=1.0)]

    def load(home: Any = None) -> PriceSet:
        homes.append(home)
        return prices(*rows)

    monkeypatch.setattr(est, "load_prices", load)
    return homes


def test_the_cheapest_priced_offer_is_chosen(catalog: list[Any]) -> None:
    offer = est.cheapest_offer(PriceRequest(gpu="A100", provider="aws"), home="H", now=NOW)
    assert (offer.instance_type, offer.region) == ("p5", "eu-west-1")
    assert catalog == ["H"] and offer.extra["price_age_s"] == round(NOW - row().spot_at)


@pytest.mark.parametrize(("request_", "message"), [
    (PriceRequest(instance_type="p4", provider="aws"),
     "no spot offer with a known price for instance type=p4, provider=aws"),
    (PriceRequest(instance_type="p4", spot=False, region="us-east-1", gpu="A100"),
     "no on-demand offer with a known price for gpu=A100, instance type=p4, region=us-east-1"),
    (PriceRequest(gpu="Z80"), "no spot offer with a known price for gpu=Z80"),
])
def test_no_priced_offer_says_what_was_asked(catalog: list[Any], request_: PriceRequest,
                                             message: str) -> None:
    with pytest.raises(est.NoOffer) as info:
        est.cheapest_offer(request_, now=NOW)
    assert str(info.value) == message


def test_nothing_asked_and_nothing_priced_says_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(est, "load_prices", lambda home=None: prices(row(spot=None)))
    with pytest.raises(est.NoOffer, match="^no spot offer with a known price for anything$"):
        est.cheapest_offer(PriceRequest(), now=NOW)


def test_lookup_finds_one_type_in_one_region_of_one_cloud(catalog: list[Any]) -> None:
    offer = est.lookup("aws", "p5", "us-east-1", home="H", now=NOW)
    assert offer is not None and catalog == ["H"]
    assert (offer.provider, offer.instance_type, offer.region, offer.price_per_hour) == (
        "aws", "p5", "us-east-1", 2.0)
    assert offer.extra["price_age_s"] == round(NOW - row().spot_at)
    on_demand = est.lookup("aws", "p5", "us-east-1", spot=False, now=NOW)
    assert on_demand is not None and on_demand.price_per_hour == 3.0
    assert est.lookup("aws", "p9", "us-east-1", now=NOW) is None


# -- the request ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("gpu", "expected"), [
    (None, (None, None)), ("", (None, None)), ("a100", ("A100", None)),
    ("A100:1", ("A100", 1)), (" h100-80gb :8", ("H100", 8)), ("a100-40gb", ("A100", None)),
    ("V100-16GB:4", ("V100", 4))])
def test_a_gpu_filter_is_a_name_and_maybe_a_count(gpu: str | None,
                                                 expected: tuple[str | None, int | None]) -> None:
    assert PriceRequest(gpu=gpu).gpu_filter() == expected


@pytest.mark.parametrize(("gpu", "message"), [
    ("A100:x", "--gpu 'A100:x': the count after ':' must be a whole number, e.g. A100:8"),
    ("A100:0", "--gpu 'A100:0': the count must be at least 1"),
    ("A100:-2", "--gpu 'A100:-2': the count must be at least 1")])
def test_a_bad_gpu_count_is_refused_in_one_line(gpu: str, message: str) -> None:
    with pytest.raises(est.PriceError) as info:
        PriceRequest(gpu=gpu).gpu_filter()
    assert str(info.value) == message


@pytest.mark.parametrize("provider", [None, "", "auto", "all"])
def test_no_provider_or_auto_or_all_means_every_cloud(provider: str | None) -> None:
    assert PriceRequest(provider=provider).providers() == ("aws", "azure", "gcp")


def test_an_unknown_provider_is_refused_naming_the_choices() -> None:
    assert PriceRequest(provider="gcp").providers() == ("gcp",)
    with pytest.raises(est.PriceError) as info:
        PriceRequest(provider="oracle").providers()
    assert str(info.value) == "no prices for provider 'oracle' (choose from: aws, azure, gcp)"


# -- the arithmetic to the cent -----------------------------------------------------------------

def offer(price: float | None, spot: bool = False, band: str | None = None) -> Offer:
    return Offer(provider="aws", region="r", instance_type="t", gpu="A100", gpu_count=1,
                 vcpus=8, memory_gib=64.0, spot=spot, price_per_hour=price,
                 extra={"interruption_band": band})


def test_amounts_are_rounded_to_six_decimals() -> None:
    e = est.estimate(offer(0.12345678, spot=True, band="0-5%"), 1, data_gb=1.23456789,
                     data_from="gs")
    assert e.hours == 1 and e.price_per_hour == 0.12345678 and e.egress_gb == 1.23456789
    assert e.compute_usd == 0.123457
    assert e.egress_usd == round(1.23456789 * 0.1118, 6) == 0.138025
    assert e.interruption_usd == round(0.12345678 * e.overhead_frac, 6)  # type: ignore[operator]
    assert e.total_usd == round(0.12345678 * (1 + e.overhead_frac) + 0.138025, 6)
    assert len(repr(e.total_usd).split(".")[1]) <= 6


def test_an_unpriced_spot_offer_still_shows_its_overhead() -> None:
    e = est.estimate(offer(None, spot=True, band=">20%"), 1)
    assert e.overhead_frac == pytest.approx(est.interruptions_per_hour(">20%") * 0.225)
    assert e.hours == 1 and e.total_usd is None


def test_no_data_size_given_means_no_egress() -> None:
    e = est.estimate(offer(1.0), 1, data_from="gs")
    assert e.egress_gb == 0.0 and e.egress_usd == 0.0 and e.total_usd == 1.0


def test_a_negative_amount_is_refused_in_one_line() -> None:
    with pytest.raises(est.PriceError) as info:
        est.estimate(offer(1.0), -1)
    assert str(info.value) == "hours, data size and checkpoint interval must not be negative"


def test_the_data_location_is_read_from_the_scheme_only() -> None:
    assert est.data_cloud("gs://bucket/odd://name") == "gcp"
    assert est.data_cloud("AZ://c") == "azure"
    assert est.data_cloud("") is None


def test_accrued_and_monthly_costs_follow_the_price_history_to_six_decimals() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    history = [(start + 1800, 2.0)]
    intervals = [(start, start + 3600), (start + 7200, start + 7200 + 1234)]
    # 0.5 h at $1, 0.5 h at $2, then 1234 s at $2
    usd = round(0.5 + 1.0 + 2.0 * 1234 / 3600, 6)
    assert est.accrued_cost(intervals, 1.0, history) == usd == 2.185556
    assert est.cost_by_month(intervals, 1.0, history) == {
        "2026-11": (round((3600 + 1234) / 3600, 6), usd)}
    assert est.accrued_cost([(start, start + 1)], 0.1234567) == round(0.1234567 / 3600, 6)
    assert est.cost_by_month([(start, start + 1)], 0.1234567) == {
        "2026-11": (round(1 / 3600, 6), round(0.1234567 / 3600, 6))}


def test_a_price_change_at_an_intervals_edge_applies_from_that_edge() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    assert est.accrued_cost([(start, start + 3600)], 1.0, [(start, 3.0)]) == 3.0
    assert est.accrued_cost([(start, start + 3600)], 1.0, [(start + 3600, 3.0)]) == 1.0
    assert est.accrued_cost([(start, start + 3600)], None, [(start + 1800, 2.0)]) == 1.0
