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


@pytest.fixture(scope="module")
def m() -> dict:
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
