"""engine.features: causal features (no look-ahead, also through the env) and the normaliser."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.data import MarketData, load_market_data
from engine.env import VecTradingEnv
from engine.features import (
    FEATURE_NAMES,
    TREND_NAMES,
    Normalizer,
    compute_features,
    feature_names,
    feature_warmup,
)

torch.set_num_threads(1)

T = 160


def synthetic(seed: int = 0, n: int = T) -> MarketData:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.003, n))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    ts = np.datetime64("2021-01-01", "ns") + np.arange(n) * np.timedelta64(1, "h")
    return MarketData(timestamps=ts, open=open_, high=high, low=low, close=close,
                      volume=rng.uniform(100, 1000, n), tic="SYN", source="synthetic")


def perturb_after(md: MarketData, t: int, rng: np.random.Generator) -> MarketData:
    """A copy of ``md`` whose bars after ``t`` are replaced by a different random path."""
    n = md.n - t - 1
    scale = np.exp(rng.normal(0, 0.05, n))
    out = MarketData(timestamps=md.timestamps.copy(), open=md.open.copy(), high=md.high.copy(),
                     low=md.low.copy(), close=md.close.copy(), volume=md.volume.copy())
    out.close[t + 1:] *= scale
    out.open[t + 1:] *= np.exp(rng.normal(0, 0.05, n))
    out.high[t + 1:] = np.maximum(out.open[t + 1:], out.close[t + 1:]) * 1.02
    out.low[t + 1:] = np.minimum(out.open[t + 1:], out.close[t + 1:]) * 0.97
    out.volume[t + 1:] = rng.uniform(1, 1e6, n)
    return out


def test_shape_dtype_and_warmup() -> None:
    md = synthetic()
    feats = compute_features(md, window=20)
    warm = feature_warmup(20)
    assert feats.shape == (T, len(FEATURE_NAMES)) and feats.dtype == np.float32
    assert np.all(feats[:warm] == 0)
    assert np.all(np.isfinite(feats)) and np.all(np.any(feats[warm:] != 0, axis=0))
    assert feature_warmup(50) == 50
    with pytest.raises(ValueError):
        feature_warmup(1)
    rsi = feats[warm:, FEATURE_NAMES.index("rsi")]
    pos = feats[warm:, FEATURE_NAMES.index("close_position")]
    assert rsi.min() >= -1 and rsi.max() <= 1 and pos.min() >= -1 and pos.max() <= 1


def test_short_series_is_all_warmup() -> None:
    assert np.all(compute_features(synthetic(n=10)) == 0)


def test_real_files_features_finite() -> None:
    for name in ("test_small.csv", "STOCKS_GOOGL.csv"):
        feats = compute_features(load_market_data(name))
        assert np.all(np.isfinite(feats))


@pytest.mark.parametrize("t", [feature_warmup(20), 57, 100, T - 2])
def test_no_look_ahead_in_features_or_env_observations(t: int) -> None:
    """Changing any bar after t changes no feature row and no env observation at or before t."""
    md = synthetic(seed=t)
    window = 8
    feats = compute_features(md, window=20)
    start = feature_warmup(20)
    actions = np.random.default_rng(t).integers(0, 3, T)

    def observations(features: np.ndarray, close: np.ndarray) -> list[torch.Tensor]:
        env = VecTradingEnv(features, close, window=window, start=start)
        seen = [env.reset()]
        for bar in range(start, t):
            obs, _, _, _ = env.step(torch.tensor([actions[bar]]))
            seen.append(obs)
        return seen  # observations at bars start..t

    base_obs = observations(feats, md.close)
    for k in range(4):
        other = perturb_after(md, t, np.random.default_rng(1000 * t + k))
        other_feats = compute_features(other, window=20)
        assert not np.array_equal(other_feats[t + 1:], feats[t + 1:]) or t == T - 1
        assert np.array_equal(other_feats[: t + 1], feats[: t + 1])
        for a, b in zip(base_obs, observations(other_feats, other.close), strict=True):
            assert torch.equal(a, b)


def test_trend_columns_follow_the_fast_ones_and_say_what_they_mean() -> None:
    """--trend_window N appends trend, trend_momentum and vol_regime; the fast columns are the
    same with or without them; the warm-up grows to N."""
    md = synthetic(n=400)
    fast = compute_features(md, window=20)
    both = compute_features(md, window=20, trend_window=100)
    names = feature_names(100)
    assert names == FEATURE_NAMES + TREND_NAMES and feature_names(0) == FEATURE_NAMES
    assert both.shape == (400, len(names)) and feature_warmup(20, 100) == 100
    assert np.array_equal(both[100:, :len(FEATURE_NAMES)], fast[100:])
    assert np.all(both[:100] == 0) and np.all(np.isfinite(both))
    t, close = 250, md.close
    trend = both[t, names.index("trend")]
    assert trend == pytest.approx(np.log(close[t] / close[t - 99:t + 1].mean()), rel=1e-5)
    momentum = both[t, names.index("trend_momentum")]
    assert momentum == pytest.approx(np.log(close[t] / close[t - 100]), rel=1e-5)
    lr = np.diff(np.log(close))
    regime = both[t, names.index("vol_regime")]
    expected = np.log(lr[t - 20:t].std() / lr[t - 100:t].std())
    assert regime == pytest.approx(expected, rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError):
        feature_warmup(20, 1)


@pytest.mark.parametrize("t", [100, 180, 398])
def test_no_look_ahead_in_trend_columns(t: int) -> None:
    md = synthetic(seed=t, n=400)
    feats = compute_features(md, window=20, trend_window=100)
    for k in range(3):
        other = compute_features(perturb_after(md, t, np.random.default_rng(7 * t + k)),
                                 window=20, trend_window=100)
        assert np.array_equal(other[: t + 1], feats[: t + 1])
        assert not np.array_equal(other[t + 1:], feats[t + 1:])


def test_normalizer_fit_transform_and_state_dict() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal([1.0, -2.0, 5.0], [0.5, 3.0, 1.0], size=(500, 3))
    x[:, 2] = 5.0  # constant: centred, not scaled
    norm = Normalizer().fit(x[:300])
    z = norm.transform(x[:300])
    assert z.dtype == np.float32
    assert np.allclose(z[:, :2].mean(0), 0, atol=1e-5) and np.allclose(z[:, :2].std(0), 1,
                                                                           atol=1e-4)
    assert np.all(z[:, 2] == 0)
    assert np.abs(norm.transform(x * 1e6)).max() <= norm.clip
    state = json.loads(json.dumps(norm.state_dict()))
    again = Normalizer.from_state_dict(state)
    assert np.array_equal(again.transform(x), norm.transform(x))
    with pytest.raises(RuntimeError):
        Normalizer().transform(x)
    with pytest.raises(ValueError):
        norm.transform(x[:, :2])
