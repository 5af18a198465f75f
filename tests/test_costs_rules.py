"""What runs cost (dqlctl/runs/costs.py) and the estimate arithmetic behind it
(providers/prices/estimate.py): a run's cost now, the ``--max-cost`` budget, the spend per
provider and month, and the before-the-run estimate. Runs are put in a registry on a clock in
a temporary folder; no cloud: ``make mutation`` runs these once per mutant."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.runs import costs
from dqlctl.runs.leases import hold
from providers.base import Offer
from providers.prices import estimate as est
from tests.test_estimate_rules import new_york  # noqa: F401 - a fixture: the local time zone
from tests.test_lifecycle import DEAD, ELSEWHERE, Clock, FakeCloud, context, live, put_in

OCT = datetime(2026, 10, 10, tzinfo=UTC).timestamp()
NOV = datetime(2026, 11, 2, tzinfo=UTC).timestamp()
DEC31 = datetime(2026, 12, 31, 23, 0, tzinfo=UTC).timestamp()


def ctx_at(tmp_path: Path, t: float) -> tuple[Context, FakeCloud, Clock]:
    cloud, clock = FakeCloud(), Clock(t)
    return context(tmp_path, cloud, clock), cloud, clock


def billed_run(ctx: Context, clock: Clock, provider: str, start: float, hours: float,
               price: float | None, *, end: bool = True) -> str:
    """A run that held a machine ``hours`` from ``start`` at ``price`` $/h (ended unless not)."""
    registry = ctx.registry
    clock.t = start
    run = registry.create(name="n", provider=provider, spec={})
    registry.transition(run.id, reg.PROVISIONING)
    registry.transition(run.id, reg.BOOTSTRAPPING, price_per_hour=price)
    registry.transition(run.id, reg.RUNNING)
    if end:
        clock.t = start + hours * 3600
        registry.transition(run.id, reg.COLLECTING)
        registry.transition(run.id, reg.SUCCEEDED)
    return run.id


# -- one run now, and its budget --------------------------------------------------------------------

def test_a_runs_cost_is_its_billed_hours_at_its_price(tmp_path: Path) -> None:
    ctx, _, clock = ctx_at(tmp_path, NOV)
    rid = billed_run(ctx, clock, "fake", NOV, 0, 3.6, end=False)
    run = ctx.registry.get(rid)
    clock.t = NOV + 1800
    assert costs.run_cost(ctx, run) == pytest.approx(1.8)            # now: the context's clock
    assert costs.run_cost(ctx, run, now=NOV + 3600) == pytest.approx(3.6)


def test_the_budget_left_is_spent_and_budget_in_billed_states_only(tmp_path: Path) -> None:
    ctx, cloud, clock = ctx_at(tmp_path, 1_000_000.0)
    run = put_in(ctx, cloud, reg.RUNNING, max_cost=2.5)
    assert costs.budget_left(run, clock.t + 1000) == (pytest.approx(1.0), 2.5)
    spent, budget = costs.budget_left(run, clock.t + 1000) or (0, 0)
    assert isinstance(budget, float)
    assert costs.budget_left(put_in(ctx, cloud, reg.RUNNING), clock.t + 1000) is None
    assert costs.budget_left(put_in(ctx, cloud, reg.PROVISIONING, max_cost=2.5),
                             clock.t + 1000) is None
    assert costs.budget_left(put_in(ctx, cloud, reg.RUNNING, max_cost=0), clock.t) is None


def test_a_run_under_its_budget_is_left_as_it_is(tmp_path: Path) -> None:
    ctx, cloud, clock = ctx_at(tmp_path, 1_000_000.0)
    run = put_in(ctx, cloud, reg.RUNNING, max_cost=1.0)
    clock.t += 999                                      # $0.999 of $1
    assert costs.enforce_budget(ctx, run) is run
    assert live(cloud) == run.instance_ids


def test_a_running_run_past_its_budget_is_taken_down_with_why(tmp_path: Path) -> None:
    ctx, cloud, clock = ctx_at(tmp_path, 1_000_000.0)
    run = put_in(ctx, cloud, reg.RUNNING, max_cost=1.0)
    clock.t += 1000                                     # exactly $1: the budget is reached
    row = costs.enforce_budget(ctx, run)
    assert row.state == reg.CANCELLED
    assert row.reason == "budget reached: $1.00 of --max-cost $1.00"
    assert live(cloud) == []


def test_a_run_another_process_is_working_on_is_left_to_it(tmp_path: Path) -> None:
    ctx, cloud, clock = ctx_at(tmp_path, 1_000_000.0)
    run = put_in(ctx, cloud, reg.COLLECTING, owner=ELSEWHERE, max_cost=1.0)
    clock.t += 1001
    ctx.registry.update(run.id, lease_expires=clock.t + 30)
    assert costs.enforce_budget(ctx, ctx.registry.get(run.id)).state == reg.COLLECTING
    assert live(cloud) == run.instance_ids


def test_a_run_this_process_holds_is_left_to_its_holder(tmp_path: Path) -> None:
    ctx, cloud, clock = ctx_at(tmp_path, 1_000_000.0)
    run = put_in(ctx, cloud, reg.COLLECTING, owner=DEAD, max_cost=1.0)
    clock.t += 1001
    with hold(ctx, run.id, adopt={reg.COLLECTING}):
        row = costs.enforce_budget(ctx, ctx.registry.get(run.id))
        assert row.state == reg.COLLECTING and live(cloud) == run.instance_ids
    row = costs.enforce_budget(ctx, ctx.registry.get(run.id))   # nobody holds it now
    assert row.state == reg.CANCELLED and live(cloud) == []


# -- the spend per provider and month -----------------------------------------------------------

def test_runs_costs_split_at_month_ends_at_each_runs_price(tmp_path: Path) -> None:
    ctx, _, clock = ctx_at(tmp_path, OCT)
    a = billed_run(ctx, clock, "aws", OCT, 2.0, 1.5)
    b = billed_run(ctx, clock, "gcp", DEC31, 2.0, 1.0)            # one hour in each year
    by_run = {rc["run"]: rc for rc in costs.run_costs(ctx, DEC31 + 86400)}
    assert by_run[a] == {"run": a, "provider": "aws", "months": {"2026-10": (2.0, 3.0)}}
    assert by_run[b]["months"] == {"2026-12": (1.0, 1.0), "2027-01": (1.0, 1.0)}


def test_only_the_hours_holding_a_machine_are_charged_not_the_gap(tmp_path: Path) -> None:
    ctx, _, clock = ctx_at(tmp_path, NOV)
    registry = ctx.registry
    rid = billed_run(ctx, clock, "aws", NOV, 0, 1.0, end=False)
    clock.t = NOV + 3600
    registry.transition(rid, reg.PREEMPTED)                 # an hour, then taken back
    clock.t = NOV + 5 * 3600
    registry.transition(rid, reg.RECOVERING)
    registry.transition(rid, reg.BOOTSTRAPPING)             # four hours later, a new machine
    clock.t = NOV + 6 * 3600
    registry.transition(rid, reg.RUNNING)
    registry.transition(rid, reg.COLLECTING)
    registry.transition(rid, reg.SUCCEEDED)
    assert costs.run_costs(ctx, NOV + 86400)[0]["months"] == {"2026-11": (2.0, 2.0)}


@pytest.mark.usefixtures("new_york")
def test_months_are_utc_months_whatever_the_local_zone(tmp_path: Path) -> None:
    ctx, _, clock = ctx_at(tmp_path, datetime(2026, 11, 1, 2, tzinfo=UTC).timestamp())
    recorded = ctx.registry.create(name="n", provider="local", spec={})
    ctx.registry.update(recorded.id, cost_usd=1.0)
    idle = ctx.registry.create(name="n", provider="gcp", spec={})
    # 1 Nov 02:00 UTC is 31 Oct in New York
    by_run = {rc["run"]: rc["months"] for rc in costs.run_costs(ctx, clock.t + 60)}
    assert list(by_run[recorded.id]) == list(by_run[idle.id]) == ["2026-11"]


def test_a_run_still_going_is_billed_up_to_now(tmp_path: Path) -> None:
    ctx, _, clock = ctx_at(tmp_path, NOV)
    rid = billed_run(ctx, clock, "aws", NOV, 0, 2.0, end=False)
    (rc,) = costs.run_costs(ctx, NOV + 5400)
    assert rc["run"] == rid and rc["months"] == {"2026-11": (1.5, 3.0)}


def test_a_run_with_a_recorded_cost_and_no_price_is_charged_that_cost(tmp_path: Path) -> None:
    ctx, _, clock = ctx_at(tmp_path, OCT)
    rid = billed_run(ctx, clock, "local", NOV, 3.0, None)
    ctx.registry.update(rid, cost_usd=4.25)
    (rc,) = costs.run_costs(ctx, NOV + 86400)
    assert rc["months"] == {"2026-11": (3.0, 4.25)}


def test_a_recorded_cost_goes_to_the_month_it_started_or_was_created(tmp_path: Path) -> None:
    ctx, _, clock = ctx_at(tmp_path, OCT)
    run = ctx.registry.create(name="n", provider="local", spec={})
    ctx.registry.update(run.id, cost_usd=2.0)                       # never started
    started = ctx.registry.create(name="n", provider="local", spec={})
    ctx.registry.update(started.id, cost_usd=1.0, started_at=NOV)
    by_run = {rc["run"]: rc["months"] for rc in costs.run_costs(ctx, NOV + 60)}
    assert by_run[run.id] == {"2026-10": (0.0, 2.0)}
    assert by_run[started.id] == {"2026-11": (0.016667, 1.0)}


def test_a_run_without_state_events_counts_from_its_start_to_its_end(tmp_path: Path) -> None:
    ctx, _, clock = ctx_at(tmp_path, OCT)
    ended = ctx.registry.create(name="n", provider="aws", spec={})
    ctx.registry.update(ended.id, started_at=NOV, ended_at=NOV + 7200, price_per_hour=1.0)
    going = ctx.registry.create(name="n", provider="aws", spec={})
    ctx.registry.update(going.id, started_at=NOV, price_per_hour=1.0)
    odd = ctx.registry.create(name="n", provider="aws", spec={})
    ctx.registry.update(odd.id, started_at=NOV, ended_at=NOV - 60, price_per_hour=1.0)
    # the runs' own PENDING events are not billed: drop them to leave only the row's times
    ctx.registry._conn.execute("DELETE FROM events")
    by_run = {rc["run"]: rc["months"] for rc in costs.run_costs(ctx, NOV + 3600)}
    assert by_run[ended.id] == {"2026-11": (2.0, 2.0)}
    assert by_run[going.id] == {"2026-11": (1.0, 1.0)}
    assert by_run[odd.id] == {"2026-10": (0.0, 0.0)}   # an empty interval: created in October


def test_a_run_that_never_held_a_machine_shows_zero_in_its_month(tmp_path: Path) -> None:
    ctx, _, _ = ctx_at(tmp_path, OCT)
    run = ctx.registry.create(name="n", provider="gcp", spec={})
    assert costs.run_costs(ctx, NOV) == [
        {"run": run.id, "provider": "gcp", "months": {"2026-10": (0.0, 0.0)}}]


def test_spend_by_month_sums_per_month_and_provider_newest_first(tmp_path: Path) -> None:
    ctx, _, clock = ctx_at(tmp_path, OCT)
    a = billed_run(ctx, clock, "aws", OCT, 2.0, 1.5)
    b = billed_run(ctx, clock, "aws", NOV, 1.0, 2.46554321)
    c = billed_run(ctx, clock, "local", NOV, 3.0, None)
    d = billed_run(ctx, clock, "aws", NOV + 7200, 1 / 3, 1.0)
    e = billed_run(ctx, clock, "gcp", NOV, 1.0, 1.0)
    f = billed_run(ctx, clock, "gcp", NOV + 86400 - 1800, 0, 2.0, end=False)   # still going
    rows = costs.spend_by_month(ctx, NOV + 86400)
    assert [(r["month"], r["provider"]) for r in rows] == [
        ("2026-11", "aws"), ("2026-11", "gcp"), ("2026-11", "local"), ("2026-10", "aws")]
    assert sorted(rows[0].pop("run_ids")) == sorted([b, d])     # in the registry's order
    assert rows[0] == {"month": "2026-11", "provider": "aws", "runs": 2,
                       "instance_hours": 1.3333, "cost_usd": 2.7989}
    assert sorted(rows[1].pop("run_ids")) == sorted([e, f])
    assert rows[1] == {"month": "2026-11", "provider": "gcp", "runs": 2,
                       "instance_hours": 1.5, "cost_usd": 2.0}
    assert rows[2] == {"month": "2026-11", "provider": "local", "runs": 1,
                       "instance_hours": 3.0, "cost_usd": 0.0, "run_ids": [c]}
    assert rows[3] == {"month": "2026-10", "provider": "aws", "runs": 1,
                       "instance_hours": 2.0, "cost_usd": 3.0, "run_ids": [a]}


def test_a_run_across_a_month_end_counts_in_both_months(tmp_path: Path) -> None:
    ctx, _, clock = ctx_at(tmp_path, OCT)
    rid = billed_run(ctx, clock, "aws", DEC31, 2.0, 1.0)
    rows = costs.spend_by_month(ctx, DEC31 + 86400)
    assert [(r["month"], r["runs"], r["run_ids"], r["cost_usd"]) for r in rows] == [
        ("2027-01", 1, [rid], 1.0), ("2026-12", 1, [rid], 1.0)]


def test_nothing_recorded_spends_nothing(tmp_path: Path) -> None:
    ctx, _, _ = ctx_at(tmp_path, OCT)
    assert costs.spend_by_month(ctx, NOV) == []


# -- the estimate before a run ---------------------------------------------------------------------

def offer(provider: str = "aws", price: float | None = 2.0, spot: bool = True,
          band: str | None = "5-10%") -> Offer:
    return Offer(provider=provider, region="r", instance_type="t", gpu="A100", gpu_count=1,
                 vcpus=8, memory_gib=64.0, spot=spot, price_per_hour=price,
                 extra={"interruption_band": band})


def test_an_on_demand_estimate_is_hours_times_price() -> None:
    e = est.estimate(offer(spot=False), 10)
    assert (e.compute_usd, e.overhead_frac, e.interruption_usd, e.total_usd) == (20.0, 0.0,
                                                                                0.0, 20.0)


def test_a_spot_estimate_adds_the_work_lost_to_interruptions() -> None:
    e = est.estimate(offer(band="5-10%"), 10, checkpoint_interval_h=0.5, restart_overhead_h=0.2)
    rate = -math.log(1 - 0.10) / 730
    assert e.overhead_frac == pytest.approx(rate * (0.25 + 0.2))
    assert e.interruption_usd == pytest.approx(20.0 * rate * 0.45, abs=1e-6)
    assert e.total_usd == pytest.approx(20.0 * (1 + rate * 0.45), abs=1e-6)


def test_a_spot_offer_without_a_band_has_an_unknown_overhead_never_a_guess() -> None:
    e = est.estimate(offer(band=None), 10)
    assert e.overhead_frac is None
    assert e.interruption_usd == 0.0 and e.total_usd == 20.0


def test_an_unknown_price_gives_an_unknown_total_but_the_egress() -> None:
    e = est.estimate(offer(price=None), 10, data_gb=100, data_from="gs")
    assert e.to_dict() == {"hours": 10, "price_per_hour": None, "compute_usd": None,
                           "overhead_frac": pytest.approx(e.overhead_frac),
                           "interruption_usd": None, "egress_gb": 100,
                           "egress_usd": pytest.approx(11.18), "egress_usd_per_gb": 0.1118,
                           "total_usd": None}


@pytest.mark.parametrize(("data_from", "rate"), [("s3", 0.0), ("s3://b/k", 0.0),
                                                 ("gs", 0.1118), ("GCS", 0.1118),
                                                 ("az://c/x", 0.087), ("azure", 0.087),
                                                 (None, 0.0)])
def test_egress_is_charged_only_from_another_cloud(data_from: str | None, rate: float) -> None:
    e = est.estimate(offer(provider="aws", spot=False), 1, data_gb=10, data_from=data_from)
    assert e.egress_usd_per_gb == rate
    assert e.egress_usd == pytest.approx(10 * rate)
    assert e.total_usd == pytest.approx(2.0 + 10 * rate)


def test_no_data_means_no_egress_rate() -> None:
    assert est.estimate(offer(spot=False), 1, data_gb=0, data_from="gs").egress_usd_per_gb == 0


@pytest.mark.parametrize("kwargs", [{"hours": -1}, {"hours": 1, "data_gb": -1},
                                    {"hours": 1, "checkpoint_interval_h": -0.1}])
def test_negative_inputs_are_refused(kwargs: dict[str, float]) -> None:
    rest = {k: v for k, v in kwargs.items() if k != "hours"}
    with pytest.raises(est.PriceError, match="must not be negative"):
        est.estimate(offer(), kwargs["hours"], **rest)


def test_zero_is_a_valid_amount_of_everything() -> None:
    e = est.estimate(offer(spot=False), 0, data_gb=0, checkpoint_interval_h=0)
    assert e.total_usd == 0.0


def test_an_unknown_data_location_is_refused_naming_the_choices() -> None:
    with pytest.raises(est.PriceError, match=r"--data-from 'ftp://x': use s3, gs or az"):
        est.data_cloud("ftp://x")
    assert est.PriceError.exit_code == 2 and issubclass(est.NoOffer, est.PriceError)


@pytest.mark.parametrize(("label", "band"), [("<5%", "0-5%"), ("0-5", "0-5%"), ("5-10", "5-10%"),
                                             ("10-15", "10-15%"), ("15-20", "15-20%"),
                                             ("20+", ">20%"), (">20", ">20%"),
                                             (" 5 - 10% ", "5-10%"), ("", ""), (None, "")])
def test_interruption_bands_in_any_spelling(label: str | None, band: str) -> None:
    assert est.canonical_band(label) == band


def test_an_unknown_band_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown interruption band '50%'"):
        est.canonical_band("50%")


@pytest.mark.parametrize(("band", "share"), [("0-5%", 0.05), ("5-10%", 0.10), ("10-15%", 0.15),
                                             ("15-20%", 0.20), (">20%", 0.30), ("20+", 0.30)])
def test_a_band_is_read_at_its_upper_bound_per_month(band: str, share: float) -> None:
    assert est.interruptions_per_hour(band) == pytest.approx(-math.log(1 - share) / 730)
