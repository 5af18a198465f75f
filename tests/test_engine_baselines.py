"""Baselines: causal, judged by the one cost model, and doing what their names say."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine import baselines as bl
from engine.portfolio import position_returns

COST, SLIP = 1e-4, 2e-4


def _walk(n: int = 400, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))


@pytest.mark.parametrize("name", list(bl.RULES))
def test_rules_are_causal(name: str) -> None:
    close = _walk()
    base = bl.RULES[name](close)
    rng = np.random.default_rng(7)
    for t in (0, 30, 60, 120, 250, 398):
        future = close.copy()
        future[t + 1:] *= np.exp(rng.normal(0, 0.05, len(close) - t - 1))
        assert np.array_equal(bl.RULES[name](future)[: t + 1], base[: t + 1]), (name, t)


def test_run_baselines_uses_the_cost_model_and_covers_the_split() -> None:
    close = _walk()
    out = bl.run_baselines(close, COST, SLIP, start=300)
    assert set(out) == set(bl.BASELINES)
    for name, (pos, net) in out.items():
        assert len(pos) == len(net) == 99, name
        if name != "random":
            assert np.allclose(net, position_returns(close[300:], pos, COST, SLIP)), name
            assert set(np.unique(pos)) <= {-1.0, 0.0, 1.0}


def test_buy_and_sell_and_hold_by_hand() -> None:
    close = np.array([100.0, 110.0, 99.0, 121.0])
    out = bl.run_baselines(close, COST, SLIP, names=("buy_and_hold", "sell_and_hold"))
    lr = math.log(121 / 100)
    assert out["buy_and_hold"][1].sum() == pytest.approx(lr - 3e-4)
    assert out["sell_and_hold"][1].sum() == pytest.approx(-lr - 3e-4)
    # starting at bar 1: one entry cost there, returns from 110 on
    out = bl.run_baselines(close, COST, SLIP, start=1, names=("buy_and_hold",))
    assert out["buy_and_hold"][1] == pytest.approx([math.log(99 / 110) - 3e-4, math.log(121 / 99)])


def test_ma_crossover_follows_the_trend() -> None:
    close = np.concatenate((np.linspace(100, 200, 80), np.linspace(200, 100, 80)))
    pos = bl.ma_crossover_positions(close, 10, 50)
    assert np.all(pos[:49] == 0)
    assert np.all(pos[49:80] == 1)
    assert pos[-1] == -1  # fast average below slow once the fall is under way


def test_rsi_values_and_mean_reversion() -> None:
    assert np.all(bl.rsi(np.linspace(1, 2, 30))[14:] == 100.0)
    assert np.all(bl.rsi(np.full(30, 5.0))[14:] == 50.0)
    # gains 1,0,... alternating: avg gain 0.5, avg loss 0.5 -> 50
    saw = np.array([10.0, 11.0] * 10)
    assert bl.rsi(saw)[14] == pytest.approx(50.0)
    fall_then_rise = np.concatenate((np.linspace(100, 80, 30), np.linspace(80, 100, 30)))
    pos = bl.rsi_positions(fall_then_rise)
    assert np.all(pos[:14] == 0)
    assert pos[25] == 1  # oversold during the fall: long
    assert pos[-1] == -1  # overbought at the end of the rise: short


def test_bollinger_enters_on_band_and_leaves_at_mean() -> None:
    close = np.full(40, 100.0) + np.tile([0.5, -0.5], 20)
    close[25] = 90.0  # far below the lower band
    pos = bl.bollinger_positions(close)
    assert np.all(pos[:25] == 0)
    assert pos[25] == 1
    assert close[26] >= np.mean(close[7:27]) and pos[26] == 0  # back over the mean: out


def test_long_only_never_shorts() -> None:
    out = bl.run_baselines(_walk(), COST, SLIP, start=100, long_only=True)
    for name, (pos, _) in out.items():
        assert pos.min() >= 0.0, name


def test_random_is_mean_of_seeds() -> None:
    close = _walk(200)
    runs = bl.random_runs(close, COST, SLIP, start=50, n_random=3, seed=4)
    assert len(runs) == 3
    pos, net = bl.run_baselines(close, COST, SLIP, start=50, n_random=3, seed=4,
                                names=("random",))["random"]
    assert np.allclose(net, np.mean([r for _, r in runs], axis=0))
    assert np.allclose(pos, np.mean([p for p, _ in runs], axis=0))
    for p, r in runs:
        assert np.allclose(r, position_returns(close[50:], p, COST, SLIP))
    again = bl.random_runs(close, COST, SLIP, start=50, n_random=3, seed=4)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(runs, again, strict=True))


def test_evaluate_strategies_includes_agent_first() -> None:
    close = _walk(120)
    ts = np.arange(120).astype("datetime64[D]").astype("datetime64[ns]")
    n = 120 - 1 - 60
    agent = (np.ones(n), position_returns(close[60:], np.ones(n), COST, SLIP))
    series, metrics = bl.evaluate_strategies(close, COST, SLIP, 252.0, start=60, timestamps=ts,
                                             agent=agent, n_random=2)
    assert list(series)[0] == "agent" and list(metrics)[0] == "agent"
    assert metrics["agent"]["total_return"] == pytest.approx(
        metrics["buy_and_hold"]["total_return"])
    assert metrics["agent"]["period_days"] == pytest.approx(59.0)
    with pytest.raises(ValueError):
        bl.evaluate_strategies(close, COST, SLIP, 252.0, start=60, agent=(np.ones(3), np.ones(3)))
