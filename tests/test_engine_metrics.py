"""Each metric of engine.metrics against values computed by hand on tiny series."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine.metrics import (
    METRIC_KEYS,
    compute_metrics,
    drawdown,
    mean_metrics,
    score,
    trade_returns,
)

# r: +0.1 long, -0.2 long, +0.05 short, 0 flat; 4 bars, 4 bars a year (so annual == total).
R = np.array([0.1, -0.2, 0.05, 0.0])
P = np.array([1.0, 1.0, -1.0, 0.0])
TS = np.arange("2020-01-01", "2020-01-06", dtype="datetime64[D]").astype("datetime64[ns]")
STD = math.sqrt((0.1125**2 + 0.1875**2 + 0.0625**2 + 0.0125**2) / 3)  # ddof=1, mean -0.0125


@pytest.fixture()
def m() -> dict:  # per test (cheap): each test's own call, so a mutation test run attributes it
    return compute_metrics(R, P, 4.0, timestamps=TS)


def test_returns(m: dict) -> None:
    assert m["total_return"] == pytest.approx(math.exp(-0.05) - 1)
    assert m["total_return_pct"] == pytest.approx(100 * (math.exp(-0.05) - 1))
    assert m["annual_return"] == pytest.approx(math.exp(-0.0125 * 4) - 1)
    assert m["n_bars"] == 4 and m["bars_per_year"] == 4.0


def test_annual_return_uses_bars_per_year() -> None:
    r = np.full(10, 0.001)
    got = compute_metrics(r, np.ones(10), 252.0)["annual_return"]
    assert got == pytest.approx(math.exp(0.001 * 252) - 1)
    assert compute_metrics(r, np.ones(10), 6000.0)["annual_return"] == pytest.approx(
        math.exp(6.0) - 1)


def test_volatility_sharpe_sortino(m: dict) -> None:
    assert m["annual_volatility"] == pytest.approx(STD * 2)
    assert m["sharpe_ratio"] == pytest.approx(-0.0125 / STD * 2)
    # downside deviation sqrt(mean([0, .04, 0, 0])) = 0.1
    assert m["sortino_ratio"] == pytest.approx(-0.0125 / 0.1 * 2)


@pytest.mark.parametrize("bpy", [252.0, 8760.0, 1.0])
def test_ratios_are_annualised_by_bars_per_year_not_by_the_bar_count(bpy: float) -> None:
    """The same four bars read as daily, hourly or yearly bars: Sharpe, Sortino, volatility
    and turnover scale with sqrt(bars_per_year) / bars_per_year; the bar count (4) never
    enters (sqrt(n) would give the same figure for every bpy)."""
    got = compute_metrics(R, P, bpy)
    assert got["sharpe_ratio"] == pytest.approx(-0.0125 / STD * math.sqrt(bpy))
    assert got["sortino_ratio"] == pytest.approx(-0.0125 / 0.1 * math.sqrt(bpy))
    assert got["annual_volatility"] == pytest.approx(STD * math.sqrt(bpy))
    assert got["annual_turnover"] == pytest.approx(4.0 / 4 * bpy)
    assert got["annual_return"] == pytest.approx(math.expm1(-0.0125 * bpy))
    assert got["bars_per_year"] == bpy and got["n_bars"] == 4


def test_drawdown_and_duration(m: dict) -> None:
    # log equity 0, .1, -.1, -.05, -.05: peak at point 1, trough at 2, never recovered.
    assert m["max_drawdown"] == pytest.approx(1 - math.exp(-0.2))
    assert m["max_drawdown_duration_bars"] == 3
    assert m["max_drawdown_recovered"] is False
    assert m["max_drawdown_duration_days"] == pytest.approx(3.0)
    assert m["period_days"] == pytest.approx(4.0)
    dd = drawdown(R)
    assert dd == pytest.approx([0, 0, 1 - math.exp(-0.2), 1 - math.exp(-0.15), 1 - math.exp(-0.15)])


def test_drawdown_recovered() -> None:
    got = compute_metrics(np.array([0.1, -0.1, 0.2]), np.ones(3), 1.0)
    assert got["max_drawdown"] == pytest.approx(1 - math.exp(-0.1))
    assert got["max_drawdown_duration_bars"] == 2
    assert got["max_drawdown_recovered"] is True
    assert got["max_drawdown_duration_days"] is None


def test_calmar(m: dict) -> None:
    assert m["calmar_ratio"] == pytest.approx((math.exp(-0.05) - 1) / (1 - math.exp(-0.2)))


def test_trades_without_cost(m: dict) -> None:
    # long run (-0.1), then short run (+0.05) exiting to a flat bar of return 0.
    assert trade_returns(R, P) == pytest.approx([math.exp(-0.1) - 1, math.exp(0.05) - 1])
    assert m["n_trades"] == 2
    assert m["win_rate"] == pytest.approx(0.5)
    assert m["profit_factor"] == pytest.approx((math.exp(0.05) - 1) / (1 - math.exp(-0.1)))
    assert m["avg_trade_return"] == pytest.approx((math.exp(0.05) + math.exp(-0.1) - 2) / 2)
    assert m["bar_win_rate"] == pytest.approx(2 / 3)


def test_trades_with_exact_cost() -> None:
    # the flip bar's cost 2c is split: c closes the long, c opens the short.
    got = trade_returns(R, P, cost=0.01)
    assert got == pytest.approx([math.exp(-0.1 - 0.01) - 1, math.exp(0.05) - 1])


def test_trades_exit_to_flat_charges_flat_bar() -> None:
    r = np.array([-0.001, 0.02, -0.001, 0.0])
    p = np.array([1.0, 1.0, 0.0, 0.0])
    assert trade_returns(r, p) == pytest.approx([math.exp(0.018) - 1])


def test_exposure_turnover(m: dict) -> None:
    assert m["exposure"] == pytest.approx(0.75)
    assert m["turnover"] == pytest.approx(4.0)  # 1 + 0 + 2 + 1
    assert m["annual_turnover"] == pytest.approx(4.0)


def test_all_flat_is_zero_not_nan() -> None:
    got = compute_metrics(np.zeros(5), np.zeros(5), 252.0)
    for key in ("total_return", "annual_return", "annual_volatility", "sharpe_ratio",
                "sortino_ratio", "calmar_ratio", "max_drawdown", "win_rate", "profit_factor",
                "exposure", "turnover", "bar_win_rate"):
        assert got[key] == 0.0, key
    assert got["n_trades"] == 0
    json.dumps(got, allow_nan=False)
    assert list(got) == list(METRIC_KEYS)


def test_zero_volatility_nonzero_mean_is_none() -> None:
    got = compute_metrics(np.full(4, 0.01), np.ones(4), 252.0)
    assert got["annual_volatility"] == pytest.approx(0.0, abs=1e-12)
    assert got["sharpe_ratio"] is None  # m / 0 with m != 0
    assert got["sortino_ratio"] is None  # no downside
    assert got["calmar_ratio"] is None  # no drawdown
    assert got["profit_factor"] is None  # never lost
    assert got["win_rate"] == 1.0
    json.dumps(got, allow_nan=False)
    assert score(got, "sharpe_ratio") == math.inf
    assert score(compute_metrics(np.full(4, -0.01), np.ones(4), 252.0), "sharpe_ratio") == -math.inf


def test_overflow_is_none() -> None:
    got = compute_metrics(np.full(3, 0.01), np.ones(3), 1e6)
    assert got["annual_return"] is None and got["calmar_ratio"] is None
    json.dumps(got, allow_nan=False)


def test_empty_and_bad_inputs() -> None:
    got = compute_metrics(np.zeros(0), np.zeros(0), 252.0)
    assert got["n_bars"] == 0 and got["sharpe_ratio"] == 0.0
    with pytest.raises(ValueError):
        compute_metrics(np.zeros(3), np.zeros(2), 252.0)
    with pytest.raises(ValueError):
        compute_metrics(np.zeros(3), np.zeros(3), 0.0)
    # positions may carry one extra (final, outcome-less) decision
    assert compute_metrics(R, np.append(P, 1.0), 4.0)["turnover"] == pytest.approx(4.0)


def test_mean_metrics_and_score() -> None:
    a = compute_metrics(np.array([0.01, -0.02]), np.array([1.0, 1.0]), 2.0)
    b = compute_metrics(np.array([0.03, 0.0]), np.array([1.0, 0.0]), 2.0)
    avg = mean_metrics([a, b])
    assert avg["total_return"] == pytest.approx((a["total_return"] + b["total_return"]) / 2)
    assert avg["n_bars"] == 2
    assert score(a, "max_drawdown") == -a["max_drawdown"]
    assert score(a, "missing") == -math.inf


# -- edges, one behaviour each (make mutation found these unchecked) ------------------------------

def test_an_empty_period_has_every_key_with_its_neutral_value() -> None:
    got = compute_metrics(np.zeros(0), np.zeros(0), 252.0)
    assert got == {**{k: 0.0 for k in METRIC_KEYS}, "n_bars": 0, "bars_per_year": 252.0,
                   "n_trades": 0, "max_drawdown_duration_bars": 0,
                   "max_drawdown_recovered": True, "max_drawdown_duration_days": None,
                   "period_days": None}


def test_inputs_are_checked_with_a_message_naming_the_problem() -> None:
    with pytest.raises(ValueError, match=r"^need 3 positions for 3 returns, got 2$"):
        compute_metrics(np.zeros(3), np.zeros(2), 252.0)
    with pytest.raises(ValueError, match=r"^net returns must be finite$"):
        compute_metrics(np.array([0.1, np.nan]), np.zeros(2), 252.0)
    with pytest.raises(ValueError, match=r"^bars_per_year must be positive, got -1.0$"):
        compute_metrics(np.zeros(2), np.zeros(2), -1.0)
    with pytest.raises(ValueError, match=r"^need 3 timestamps for 2 returns, got 1$"):
        compute_metrics(np.zeros(2), np.zeros(2), 252.0, timestamps=TS[:1])
    with pytest.raises(ValueError, match=r"^no runs to average$"):
        mean_metrics([])


def test_one_bar_and_two_bars() -> None:
    one = compute_metrics(np.array([0.01]), np.ones(1), 252.0,
                          timestamps=["2020-01-01", "2020-01-03"])   # strings are parsed
    assert one["annual_volatility"] == 0.0 and one["sharpe_ratio"] is None
    assert one["period_days"] == 2.0 and one["n_trades"] == 1
    assert trade_returns(np.array([0.01]), np.ones(1)) == pytest.approx([math.exp(0.01) - 1])
    two = compute_metrics(np.array([0.01, 0.03]), np.ones(2), 4.0)
    std = math.sqrt(2 * 0.01**2)                                        # ddof=1 of (.01, .03)
    assert two["annual_volatility"] == pytest.approx(std * 2)
    assert two["sharpe_ratio"] == pytest.approx(0.02 / std * 2)
    assert len(trade_returns(np.zeros(0), np.zeros(0))) == 0


def test_drawdown_regained_exactly_and_later() -> None:
    # log equity 0, .1, 0, .1: back to the peak exactly at point 3 counts as recovered
    got = compute_metrics(np.array([0.1, -0.1, 0.1]), np.ones(3), 1.0)
    assert got["max_drawdown_recovered"] is True and got["max_drawdown_duration_bars"] == 2
    # log equity 0, .1, 0, .05, .15: the trough at 2, regained at 4
    got = compute_metrics(np.array([0.1, -0.1, 0.05, 0.1]), np.ones(4), 1.0,
                          timestamps=TS)
    assert (got["max_drawdown_duration_bars"], got["max_drawdown_recovered"]) == (3, True)
    assert got["max_drawdown_duration_days"] == pytest.approx(3.0)
    # never below the start: no drawdown, no duration
    up = compute_metrics(np.array([0.1, 0.2]), np.ones(2), 1.0)
    assert (up["max_drawdown"], up["max_drawdown_duration_bars"],
            up["max_drawdown_recovered"]) == (0.0, 0, True)


def test_durations_with_the_decision_bars_only() -> None:
    """n timestamps (no closing time of the last bar): the span ends one bar early."""
    got = compute_metrics(R, P, 4.0, timestamps=TS[:4])
    assert got["max_drawdown_duration_bars"] == 3
    assert got["max_drawdown_duration_days"] == pytest.approx(2.0)
    assert got["period_days"] == pytest.approx(3.0)


def test_overflow_edges_are_none_not_inf() -> None:
    from engine import metrics

    got = compute_metrics(np.array([700.0]), np.ones(1), 1.0)
    assert got["annual_return"] == pytest.approx(math.expm1(700.0))    # still finite
    assert compute_metrics(np.array([700.5]), np.ones(1), 1.0)["annual_return"] is None
    # a trade whose return overflows (it raised OverflowError before): None, like the rest
    big = compute_metrics(np.full(2, 400.0), np.ones(2), 1.0)
    assert big["total_return"] is None and big["total_return_pct"] is None
    assert (big["n_trades"], big["avg_trade_return"], big["profit_factor"]) == (1, None, None)
    json.dumps(big, allow_nan=False)
    assert metrics._ratio(1e300, 1e-10) is None                          # overflows to inf
    assert metrics._ratio(1.0, 1e-12) is None and metrics._ratio(1e-12, 1e-12) == 0.0
    assert metrics._ratio(1.0, 2e-12) == pytest.approx(5e11)
    assert metrics._clean(np.int64(3)) == 3 and type(metrics._clean(np.int64(3))) is int
    assert metrics._clean(np.float64("inf")) is None


def test_trade_costs_for_any_size_of_position() -> None:
    c = 0.01
    # half a unit long, then flat: entry and exit cost c * 0.5 each, the bars' return kept
    r = np.array([0.1, 0.2, 0.0])
    assert trade_returns(r, np.array([0.5, 0.5, 0.0]), cost=c) == pytest.approx(
        [math.expm1(0.3 + 0.005 - 0.005 - 0.005)])
    # an open trade at the end pays no exit cost
    assert trade_returns(np.array([0.1]), np.array([1.0]), cost=c) == pytest.approx(
        [math.expm1(0.1)])
    # a position carried in from before the period: no entry cost charged to it
    assert trade_returns(np.array([0.1, 0.0]), np.array([2.0, 0.0]), cost=c,
                         initial_position=2.0) == pytest.approx([math.expm1(0.1 - 0.02)])
    # a short entered from flat (the default before the period): its own entry cost only
    assert trade_returns(np.array([0.1]), np.array([-1.0]), cost=c) == pytest.approx(
        [math.expm1(0.1)])
    # a trade entered on the last bar
    assert trade_returns(np.array([0.0, 0.1]), np.array([0.0, 1.0]), cost=c) == pytest.approx(
        [math.expm1(0.1)])


def test_trades_split_where_the_position_changes() -> None:
    r = np.array([0.1, 0.2, 0.3, 0.0])
    assert trade_returns(r, np.array([1.0, -1.0, -1.0, 0.0])) == pytest.approx(
        [math.expm1(0.1), math.expm1(0.5)])
    assert trade_returns(r, np.array([0.0, 1.0, 1.0, 0.0])) == pytest.approx(
        [math.expm1(0.5)])                                  # flat first: the trade is kept


def test_zero_return_trades_and_bars_are_neither_wins_nor_losses() -> None:
    r = np.array([0.0, 0.0, 0.02, 0.0, -0.01, 0.0])
    p = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    got = compute_metrics(r, p, 6.0, cost=0.0)
    assert got["n_trades"] == 3
    assert got["win_rate"] == pytest.approx(1 / 3)
    assert got["profit_factor"] == pytest.approx(math.expm1(0.02) / -math.expm1(-0.01))
    assert got["bar_win_rate"] == pytest.approx(1 / 3)
    assert got["avg_trade_return"] == pytest.approx((math.expm1(0.02) + math.expm1(-0.01)) / 3)
    assert compute_metrics(np.zeros(3), np.zeros(3), 1.0)["avg_trade_return"] == 0.0


def test_compute_metrics_passes_cost_and_the_position_held_before() -> None:
    r = np.array([0.1, 0.0])
    p = np.array([1.0, 0.0])
    held = compute_metrics(r, p, 2.0, cost=0.01, initial_position=1.0)
    assert held["avg_trade_return"] == pytest.approx(math.expm1(0.1 - 0.01))
    assert held["turnover"] == pytest.approx(1.0)        # only the exit
    fresh = compute_metrics(r, p, 2.0, cost=0.01)
    assert fresh["turnover"] == pytest.approx(2.0)
    # without cost the flat bar after the exit (its cost) is charged to the trade
    assert compute_metrics(np.array([0.1, -0.01]), p, 2.0)["avg_trade_return"] == \
        pytest.approx(math.expm1(0.09))


def test_mean_metrics_keeps_the_first_runs_sizes_and_none_where_all_are_none() -> None:
    a = compute_metrics(np.array([0.01, -0.02]), np.ones(2), 2.0)
    b = compute_metrics(np.array([0.03, 0.0, 0.01, 0.02]), np.ones(4), 4.0)
    avg = mean_metrics([a, b])
    assert (avg["n_bars"], avg["bars_per_year"], avg["period_days"]) == (2, 2.0, None)
    assert avg["max_drawdown_duration_days"] is None
    assert avg["max_drawdown_recovered"] == 0.5                        # one of two recovered
    assert mean_metrics([a]) == {k: (float(v) if isinstance(v, int | float) and
                                     k not in ("n_bars", "bars_per_year") and v is not None
                                     else v) for k, v in a.items()}


def test_score_edges() -> None:
    assert score({"total_return": 0.0, "profit_factor": None}, "profit_factor") == -math.inf
    assert score({"total_return": 0.1, "profit_factor": None}, "profit_factor") == math.inf
    assert score({"total_return": None, "x": None}, "x") == math.inf   # overflowed: made money
    assert score({"x": float("inf")}, "x") == -math.inf
    assert score({"sharpe_ratio": 1.5}, "sharpe_ratio") == 1.5         # not negated
    assert score({"annual_volatility": 0.2}, "annual_volatility") == -0.2


def test_equity_points_thin_a_long_curve_keeping_both_ends() -> None:
    from engine.metrics import EQUITY_POINTS, equity_points

    assert equity_points(np.array([0.1, -0.2])) == [1.0, float(f"{math.exp(0.1):.6g}"),
                                                    float(f"{math.exp(-0.1):.6g}")]
    r = np.full(999, 0.001)
    pts = equity_points(r)
    assert len(pts) == EQUITY_POINTS == 200
    assert pts[0] == 1.0 and pts[-1] == float(f"{math.exp(0.999):.6g}")
    assert pts == sorted(pts)
    assert equity_points(r, n=3) == [1.0, float(f"{math.exp(0.5):.6g}"),
                                     float(f"{math.exp(0.999):.6g}")]
    assert equity_points(r, n=2) == [1.0, float(f"{math.exp(0.999):.6g}")]
    assert equity_points(np.full(4, 0.0), n=5) == [1.0] * 5      # short: every point
    assert len(equity_points(r, n=1)) == 1000                   # n < 2: not thinned


def test_types_and_what_the_average_keeps() -> None:
    empty = compute_metrics(np.zeros(0), np.zeros(0), 252.0)
    assert type(empty["n_trades"]) is int and type(empty["max_drawdown_duration_bars"]) is int
    assert json.dumps(empty["n_trades"]) == "0"
    a = compute_metrics(R, P, 4.0, timestamps=TS)                        # 4 days
    b = compute_metrics(R[:2], P[:2], 4.0, timestamps=TS[:3])            # 2 days
    assert mean_metrics([a, b])["period_days"] == a["period_days"] == 4.0


def test_the_position_held_before_the_period_enters_the_first_trade() -> None:
    """Short before the period, long in it: the flip's second leg is this trade's cost."""
    r = np.array([0.1, 0.0])
    got = compute_metrics(r, np.array([1.0, 0.0]), 2.0, cost=0.01, initial_position=-1.0)
    assert got["avg_trade_return"] == pytest.approx(math.expm1(0.1 + 0.02 - 0.01 - 0.01))
