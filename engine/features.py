"""Features of each bar, computed strictly causally, and their normaliser.

``compute_features(md, window)`` returns a ``(T, F)`` float32 array whose row ``t`` uses only bars
``0..t`` (the look-ahead test changes every bar after ``t`` and checks that rows ``<= t`` do not
move). The first ``feature_warmup(window)`` rows lack history: they are exactly 0 and an episode or
an evaluation should start at or after that bar::

    feats = compute_features(md, window=20)
    first = feature_warmup(20)            # rows [0, first) are warm-up zeros
    train, val, test = split_indices(md.n, 0.65, 0.20)
    norm = Normalizer().fit(feats[first:train.stop])   # fit on the training split only
    x = norm.transform(feats)             # same statistics for every split

Columns (``FEATURE_NAMES``):

- ``log_return``: ``log(close[t] / close[t-1])``.
- ``volatility``: standard deviation of the last ``window`` log returns.
- ``momentum``: ``log(close[t] / close[t-window])``.
- ``rsi``: Wilder's RSI(14) of closes, rescaled from [0, 100] to [-1, 1].
- ``macd``, ``macd_signal``, ``macd_hist``: MACD(12, 26, 9) of closes, divided by the close so
  that it is scale-free.
- ``range``: ``(high - low) / close`` of the bar.
- ``close_position``: where the close sits within [lowest low, highest high] of the last
  ``window`` bars, from -1 (at the low) to 1 (at the high); 0 when that range is empty.
- ``volume_z``: z-score of ``log(1 + volume)`` against the last ``window`` bars; 0 when the
  volume is constant (or absent).

With ``trend_window`` N > 0 (``--trend_window``), three slow columns follow (``TREND_NAMES``), the
regime a trend-following rule reads and the fast columns above cannot see:

- ``trend``: ``log(close[t] / mean(close[t-N+1..t]))``, the close against its N-bar average.
- ``trend_momentum``: ``log(close[t] / close[t-N])``.
- ``vol_regime``: ``log(volatility / std of the last N log returns)``: is the market calmer or
  wilder than usual.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from engine.data import MarketData

FEATURE_NAMES: tuple[str, ...] = (
    "log_return", "volatility", "momentum", "rsi", "macd", "macd_signal", "macd_hist", "range",
    "close_position", "volume_z",
)
TREND_NAMES: tuple[str, ...] = ("trend", "trend_momentum", "vol_regime")
RSI_PERIOD = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9


def feature_names(trend_window: int = 0) -> tuple[str, ...]:
    """The columns of ``compute_features(md, window, trend_window)``, in order."""
    return FEATURE_NAMES + (TREND_NAMES if trend_window else ())


def feature_warmup(window: int = 20, trend_window: int = 0) -> int:
    """Number of leading rows of ``compute_features(md, window, trend_window)`` that are warm-up
    zeros.

    The longest look-back: ``window`` bars for the rolling features, the MACD signal line's
    26 + 9 - 1 = 34 bars for its exponential averages to settle, ``trend_window`` bars for the
    slow columns.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if trend_window and trend_window < 2:
        raise ValueError(f"trend_window must be 0 or >= 2, got {trend_window}")
    return max(window, RSI_PERIOD, MACD_SLOW + MACD_SIGNAL - 1, trend_window)


def first_decision_bar(cfg: Any) -> int:
    """The first bar a run of config ``cfg`` can decide on: after the features' warm-up
    (``feature_window``, ``trend_window``) and with a full observation ``window`` behind it."""
    return max(feature_warmup(cfg.feature_window, int(cfg.trend_window or 0)), cfg.window - 1)


def _ema(x: np.ndarray, alpha: float) -> np.ndarray:
    """Recursive exponential average ``y[t] = (1 - alpha) y[t-1] + alpha x[t]``, ``y[0] = x[0]``."""
    import pandas as pd

    return pd.Series(x).ewm(alpha=alpha, adjust=False).mean().to_numpy(dtype=np.float64)


def _rolling(x: np.ndarray, window: int, fn: str) -> np.ndarray:
    """Trailing rolling ``fn`` (std, min, max, mean) over ``window`` values ending at each row;
    rows without a full window are NaN."""
    out = np.full(len(x), np.nan)
    if len(x) >= window:
        view = sliding_window_view(x, window)
        out[window - 1:] = getattr(view, fn)(axis=-1)
    return out


def compute_features(md: MarketData, window: int = 20, trend_window: int = 0) -> np.ndarray:
    """The ``(T, len(feature_names(trend_window)))`` float32 feature matrix of ``md`` (see the
    module docstring).

    Row ``t`` depends on bars ``0..t`` only; rows ``< feature_warmup(window, trend_window)`` are 0.
    """
    warm = feature_warmup(window, trend_window)
    close = np.asarray(md.close, dtype=np.float64)
    high = np.asarray(md.high, dtype=np.float64)
    low = np.asarray(md.low, dtype=np.float64)
    volume = np.asarray(md.volume, dtype=np.float64)
    n = len(close)
    out = np.zeros((n, len(feature_names(trend_window))), dtype=np.float32)
    if n <= warm:
        return out
    log_c = np.log(close)
    lr = np.concatenate(([0.0], np.diff(log_c)))

    vol = _rolling(lr, window, "std")
    mom = np.full(n, np.nan)
    mom[window:] = log_c[window:] - log_c[:-window]

    diff = np.concatenate(([0.0], np.diff(close)))
    gain = _ema(np.maximum(diff, 0.0), 1.0 / RSI_PERIOD)
    loss = _ema(np.maximum(-diff, 0.0), 1.0 / RSI_PERIOD)
    total = gain + loss
    with np.errstate(invalid="ignore", divide="ignore"):
        # RSI = 100 - 100 / (1 + gain/loss) = 100 * gain / (gain + loss); rescaled to [-1, 1].
        rsi = np.where(total > 0, 2.0 * gain / np.where(total > 0, total, 1.0) - 1.0, 0.0)

    macd_line = (_ema(close, 2.0 / (MACD_FAST + 1)) - _ema(close, 2.0 / (MACD_SLOW + 1))) / close
    signal = _ema(macd_line, 2.0 / (MACD_SIGNAL + 1))

    bar_range = np.abs(high - low) / close
    lowest = _rolling(np.minimum(low, high), window, "min")
    highest = _rolling(np.maximum(low, high), window, "max")
    span = highest - lowest
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.where(span > 0, 2.0 * (close - lowest) / np.where(span > 0, span, 1.0) - 1.0, 0.0)
    pos = np.clip(pos, -1.0, 1.0)  # an adjusted close may sit outside [low, high]

    log_v = np.log1p(np.maximum(volume, 0.0))
    v_mean = _rolling(log_v, window, "mean")
    v_std = _rolling(log_v, window, "std")
    with np.errstate(invalid="ignore", divide="ignore"):
        v_z = np.where(v_std > 1e-12, (log_v - v_mean) / np.where(v_std > 1e-12, v_std, 1.0), 0.0)

    columns: tuple[np.ndarray, ...] = (lr, vol, mom, rsi, macd_line, signal, macd_line - signal,
                                       bar_range, pos, v_z)
    if trend_window:
        columns += _trend_columns(log_c, lr, vol, trend_window)
    for j, col in enumerate(columns):
        out[warm:, j] = col[warm:]
    out[~np.isfinite(out)] = 0.0
    return out


def _trend_columns(log_c: np.ndarray, lr: np.ndarray, vol: np.ndarray, n: int
                   ) -> tuple[np.ndarray, ...]:
    """``trend``, ``trend_momentum`` and ``vol_regime`` over ``n`` bars (NaN without history)."""
    close = np.exp(log_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        trend = log_c - np.log(_rolling(close, n, "mean"))
        momentum = np.full(len(log_c), np.nan)
        momentum[n:] = log_c[n:] - log_c[:-n]
        slow = _rolling(lr, n, "std")
        regime = np.where((slow > 1e-12) & (vol > 1e-12),
                          np.log(np.where(vol > 1e-12, vol, 1.0) / np.where(slow > 1e-12, slow,
                                                                             1.0)), 0.0)
    return trend, momentum, regime


class Normalizer:
    """Per-feature standardisation ``clip((x - mean) / std, -clip, clip)``.

    Fit it on the training split only (after the warm-up rows), then transform every split with
    the same statistics; that is the caller's job. A feature whose training std is below
    ``min_std`` (constant, e.g. an absent volume) is only centred, not scaled. ``state_dict()`` is
    plain lists and floats (JSON-able) so the statistics are saved with the model.
    """

    def __init__(self, clip: float = 10.0, min_std: float = 1e-8) -> None:
        self.clip = float(clip)
        self.min_std = float(min_std)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, x_train: np.ndarray) -> Normalizer:
        x = np.asarray(x_train, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"fit needs a non-empty (rows, features) array, got shape {x.shape}")
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std < self.min_std, 1.0, std)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.mean is None or self.std is None:
            raise RuntimeError("Normalizer.transform called before fit")
        arr = np.asarray(x, dtype=np.float64)
        if arr.shape[-1] != len(self.mean):
            raise ValueError(f"expected {len(self.mean)} features, got {arr.shape[-1]}")
        z = np.clip((arr - self.mean) / self.std, -self.clip, self.clip)
        return z.astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        if self.mean is None or self.std is None:
            raise RuntimeError("Normalizer.state_dict called before fit")
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "clip": self.clip, "min_std": self.min_std}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Normalizer:
        norm = cls(clip=float(state.get("clip", 10.0)), min_std=float(state.get("min_std", 1e-8)))
        norm.mean = np.asarray(state["mean"], dtype=np.float64)
        norm.std = np.asarray(state["std"], dtype=np.float64)
        if norm.mean.shape != norm.std.shape:
            raise ValueError("Normalizer state: mean and std differ in length")
        return norm
