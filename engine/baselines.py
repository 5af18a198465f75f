"""Baseline strategies a trader would try first, judged by the same cost model as the agent.

Every baseline turns closes into positions in {-1, 0, 1} (short, flat, long; shorts become flat
when ``long_only``), strictly causally: the position at bar ``t`` uses closes ``0..t`` only (a
test changes every later price and checks that it does not move). Net returns come from
:func:`engine.portfolio.position_returns`, the one cost model, so a baseline and the agent pay
the same costs for the same trades.

Strategies (``BASELINES``):

- ``buy_and_hold``: long from the first bar.
- ``sell_and_hold``: short from the first bar (flat when ``long_only``).
- ``ma_crossover`` (trend following): long while the 10-bar simple moving average of closes is
  above the 50-bar one, short while it is below (the predecessor's 10/50 windows); flat until the
  slow average exists.
- ``rsi`` (mean reversion): Wilder's RSI(14); enter long below 30, short above 70; leave a long
  once RSI is back at 50 or above, a short at 50 or below.
- ``bollinger`` (mean reversion): 20-bar mean +- 2 standard deviations; enter long below the
  lower band, short above the upper band; leave when the close crosses back over the mean.
- ``random``: a uniformly random position every bar; the mean over ``n_random`` seeds. Its
  series (for plots) is the bar-by-bar mean of the seeds' net log returns and positions; its
  metrics (:func:`evaluate_strategies`) are the mean of each seed's metrics.

Evaluating a split with its history as context: pass closes that end at the split's end and
``start`` = the split's first bar. Indicators then see the bars before the split (no look-ahead:
those are in the past), each strategy starts the split flat (it pays its entry cost at
``start``, as the agent does in :func:`engine.env.evaluate_policy`), and the arrays returned
cover the split only: ``len(close) - start - 1`` bars.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from engine.metrics import compute_metrics, mean_metrics
from engine.portfolio import position_returns

BASELINES: tuple[str, ...] = (
    "buy_and_hold", "sell_and_hold", "ma_crossover", "rsi", "bollinger", "random",
)
LABELS: dict[str, str] = {
    "agent": "DQL agent", "buy_and_hold": "Buy & hold", "sell_and_hold": "Sell & hold",
    "ma_crossover": "MA crossover 10/50", "rsi": "RSI(14) 30/70", "bollinger": "Bollinger 20/2",
    "random": "Random (mean of seeds)",
}

Series = tuple[np.ndarray, np.ndarray]  # (positions, net log returns) over the evaluated bars


def _close_of(data: Any) -> np.ndarray:
    close = getattr(data, "close", data)
    arr = np.asarray(close, dtype=np.float64).ravel()
    if len(arr) and (not np.all(np.isfinite(arr)) or arr.min() <= 0):
        raise ValueError("closes must be finite and positive")
    return arr


def _sma(x: np.ndarray, window: int) -> np.ndarray:
    """Simple moving average ending at each bar; NaN for the first ``window - 1`` bars."""
    out = np.full(len(x), np.nan)
    if len(x) >= window:
        c = np.cumsum(np.concatenate(([0.0], x)))
        out[window - 1:] = (c[window:] - c[:-window]) / window
    return out


def _rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    if len(x) >= window:
        view = np.lib.stride_tricks.sliding_window_view(x, window)
        out[window - 1:] = view.std(axis=1)
    return out


def rsi(close: np.ndarray, period: int = 14) -> np.ndarray:
    """Wilder's RSI in [0, 100] at each bar (NaN for the first ``period`` bars); 50 when flat."""
    close = np.asarray(close, dtype=np.float64)
    out = np.full(len(close), np.nan)
    if len(close) <= period:
        return out
    delta = np.diff(close)
    gain, loss = np.maximum(delta, 0.0), np.maximum(-delta, 0.0)
    avg_g, avg_l = gain[:period].mean(), loss[:period].mean()
    values = np.empty(len(delta) - period + 1)
    values[0] = _rsi_value(avg_g, avg_l)
    a = 1.0 / period
    for k, (g, lo) in enumerate(zip(gain[period:].tolist(), loss[period:].tolist(),
                                    strict=True), start=1):
        avg_g += a * (g - avg_g)
        avg_l += a * (lo - avg_l)
        values[k] = _rsi_value(avg_g, avg_l)
    out[period:] = values
    return out


def _rsi_value(avg_gain: float, avg_loss: float) -> float:
    if avg_gain + avg_loss <= 0.0:
        return 50.0
    return 100.0 * avg_gain / (avg_gain + avg_loss)


def _hysteresis(enter_long: np.ndarray, exit_long: np.ndarray, enter_short: np.ndarray,
                exit_short: np.ndarray) -> np.ndarray:
    """Positions from entry/exit signals: hold a position until its exit signal."""
    pos = np.zeros(len(enter_long))
    cur = 0.0
    for t, (el, xl, es, xs) in enumerate(zip(enter_long.tolist(), exit_long.tolist(),
                                             enter_short.tolist(), exit_short.tolist(),
                                             strict=True)):
        if cur > 0 and xl:
            cur = 0.0
        elif cur < 0 and xs:
            cur = 0.0
        if el:
            cur = 1.0
        elif es:
            cur = -1.0
        pos[t] = cur
    return pos


def buy_and_hold_positions(close: np.ndarray) -> np.ndarray:
    return np.ones(len(close))


def sell_and_hold_positions(close: np.ndarray) -> np.ndarray:
    return -np.ones(len(close))


def ma_crossover_positions(close: np.ndarray, fast: int = 10, slow: int = 50) -> np.ndarray:
    """+1 while SMA(fast) > SMA(slow), -1 while below, 0 before SMA(slow) exists or when equal."""
    if not 1 <= fast < slow:
        raise ValueError(f"need 1 <= fast < slow, got {fast}, {slow}")
    f, s = _sma(close, fast), _sma(close, slow)
    diff = np.nan_to_num(f - s, nan=0.0)
    return np.sign(diff)


def rsi_positions(close: np.ndarray, period: int = 14, oversold: float = 30.0,
                  overbought: float = 70.0) -> np.ndarray:
    """Long below ``oversold`` until RSI >= 50; short above ``overbought`` until RSI <= 50."""
    value = rsi(close, period)
    ok = ~np.isnan(value)
    v = np.where(ok, value, 50.0)
    return _hysteresis(ok & (v < oversold), v >= 50.0, ok & (v > overbought), v <= 50.0)


def bollinger_positions(close: np.ndarray, window: int = 20, k: float = 2.0) -> np.ndarray:
    """Long below mean - k*std until close >= mean; short above mean + k*std until <= mean."""
    mid, sd = _sma(close, window), _rolling_std(close, window)
    ok = ~np.isnan(mid)
    mid0, sd0 = np.where(ok, mid, close), np.where(ok, sd, 0.0)
    return _hysteresis(ok & (close < mid0 - k * sd0), close >= mid0,
                       ok & (close > mid0 + k * sd0), close <= mid0)


def random_positions(n: int, seed: int, long_only: bool = False) -> np.ndarray:
    """A uniformly random position for each of ``n`` bars."""
    choices = np.array([0.0, 1.0] if long_only else [-1.0, 0.0, 1.0])
    return choices[np.random.default_rng(seed).integers(0, len(choices), size=n)]


RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "buy_and_hold": buy_and_hold_positions,
    "sell_and_hold": sell_and_hold_positions,
    "ma_crossover": ma_crossover_positions,
    "rsi": rsi_positions,
    "bollinger": bollinger_positions,
}


def _evaluate(close: np.ndarray, positions: np.ndarray, start: int, transaction_cost: float,
              slippage: float, long_only: bool) -> Series:
    """Positions over the evaluated bars ``start..T-2`` and their net returns, from flat."""
    pos = np.asarray(positions, dtype=np.float64)[start:len(close) - 1]
    if long_only:
        pos = np.maximum(pos, 0.0)
    return pos, position_returns(close[start:], pos, transaction_cost, slippage)


def _check_start(close: np.ndarray, start: int) -> int:
    start = int(start)
    if not 0 <= start <= len(close) - 2:
        raise ValueError(f"start must be in 0..{len(close) - 2} for {len(close)} closes, "
                         f"got {start}")
    return start


def random_runs(data: Any, transaction_cost: float, slippage: float, *, start: int = 0,
                long_only: bool = False, n_random: int = 5, seed: int = 0) -> list[Series]:
    """The random policy's ``(positions, net_returns)`` for seeds ``seed .. seed + n_random - 1``."""
    close = _close_of(data)
    start = _check_start(close, start)
    n = len(close) - 1 - start
    return [_evaluate(close, np.concatenate((np.zeros(start),
                                             random_positions(n, seed + k, long_only))),
                      start, transaction_cost, slippage, long_only)
            for k in range(max(1, int(n_random)))]


def run_baselines(data: Any, transaction_cost: float, slippage: float, *, start: int = 0,
                  long_only: bool = False, n_random: int = 5, seed: int = 0,
                  names: tuple[str, ...] = BASELINES) -> dict[str, Series]:
    """``{name: (positions, net_returns)}`` over bars ``start..len(close)-2`` for each baseline.

    ``data`` is a :class:`engine.data.MarketData` or an array of closes, ending at the end of the
    period evaluated; bars before ``start`` are context for the indicators only.
    """
    close = _close_of(data)
    start = _check_start(close, start)
    out: dict[str, Series] = {}
    for name in names:
        if name == "random":
            runs = random_runs(close, transaction_cost, slippage, start=start,
                               long_only=long_only, n_random=n_random, seed=seed)
            out[name] = (np.mean([p for p, _ in runs], axis=0),
                         np.mean([r for _, r in runs], axis=0))
        elif name in RULES:
            out[name] = _evaluate(close, RULES[name](close), start, transaction_cost, slippage,
                                  long_only)
        else:
            raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    return out


def evaluate_strategies(data: Any, transaction_cost: float, slippage: float,
                        bars_per_year: float, *, start: int = 0,
                        timestamps: np.ndarray | None = None,
                        agent: Series | None = None, long_only: bool = False,
                        n_random: int = 5, seed: int = 0,
                        names: tuple[str, ...] = BASELINES,
                        ) -> tuple[dict[str, Series], dict[str, dict[str, Any]]]:
    """Series and metrics of the agent (if given, first) and every baseline over one period.

    ``timestamps`` are those of ``data``'s closes (the whole array; sliced here). The random
    policy's metrics are the mean of its seeds' metrics. Returns ``(series, metrics)``, both
    keyed by strategy name (``"agent"`` for the agent).
    """
    close = _close_of(data)
    start = _check_start(close, start)
    ts = None if timestamps is None else np.asarray(timestamps)[start:len(close)]
    cost = float(transaction_cost) + float(slippage)
    series: dict[str, Series] = {}
    if agent is not None:
        pos, net = (np.asarray(a, dtype=np.float64) for a in agent)
        n = len(close) - 1 - start
        if len(net) != n:
            raise ValueError(f"agent returns cover {len(net)} bars, the period has {n}")
        series["agent"] = (pos[:n], net)
    series.update(run_baselines(close, transaction_cost, slippage, start=start,
                                long_only=long_only, n_random=n_random, seed=seed, names=names))
    metrics: dict[str, dict[str, Any]] = {}
    for name, (pos, net) in series.items():
        if name == "random":
            runs = random_runs(close, transaction_cost, slippage, start=start,
                               long_only=long_only, n_random=n_random, seed=seed)
            metrics[name] = mean_metrics([compute_metrics(r, p, bars_per_year, timestamps=ts,
                                                          cost=cost) for p, r in runs])
        else:
            metrics[name] = compute_metrics(net, pos, bars_per_year, timestamps=ts, cost=cost)
    return series, metrics


def label(name: str, labels: Mapping[str, str] = LABELS) -> str:
    """Display name of a strategy."""
    return labels.get(name, name.replace("_", " "))
