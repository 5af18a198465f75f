"""Performance metrics of a strategy over one split, from its net log returns and positions.

Inputs follow :mod:`engine.portfolio`: ``r[t]`` is the net log return (costs included) of holding
``p[t]`` over bar ``t -> t+1``; a period of ``n`` returns has ``n + 1`` closes and an equity curve
``E[0] = 1, E[k] = exp(r[0] + ... + r[k-1])``. Annualisation uses ``bars_per_year`` inferred from
the data (:func:`engine.data.bars_per_year`), never a fixed 252.

Definitions (``n`` bars, ``m = mean(r)``, ``s = std(r, ddof=1)``, ``B = bars_per_year``):

- ``total_return`` = ``E[n] - 1`` (a fraction; ``total_return_pct`` is the same in percent).
- ``annual_return`` = ``exp(m * B) - 1``, the compound annual growth rate.
- ``annual_volatility`` = ``s * sqrt(B)`` (0 for fewer than two bars).
- ``sharpe_ratio`` = ``m / s * sqrt(B)`` (risk-free rate 0).
- ``sortino_ratio`` = ``m / DD * sqrt(B)`` with downside deviation ``DD = sqrt(mean(min(r, 0)^2))``
  over all bars (target 0).
- ``max_drawdown`` = ``max_k (1 - E[k] / max_{j<=k} E[j])``, a positive fraction.
- ``max_drawdown_duration_bars``: bars from the peak before the deepest trough to the first bar
  that regains that peak, or to the end of the period when it is never regained
  (``max_drawdown_recovered`` says which); ``max_drawdown_duration_days`` is the same span in
  calendar days when timestamps (the ``n + 1`` closes of the period) are given, else None.
- ``calmar_ratio`` = ``annual_return / max_drawdown``.
- Trades. A trade is a maximal run of bars holding the same non-zero position (a flip from long
  to short closes one trade and opens another). Its return is ``exp(L) - 1`` where ``L`` is the
  sum of its bars' log returns minus its entry cost and, if it is closed inside the period, its
  exit cost; a trade still open at the end is marked to market. Costs are split exactly when
  ``cost`` (transaction cost + slippage per unit of position) is given; without it the entry
  bar's whole cost and, for an exit to flat, the flat bar's cost are charged to the trade (a flip
  then charges both legs to the new trade).
- ``n_trades``: number of trades (entries). ``win_rate``: fraction of trades with a positive
  return (per trade, as the predecessor). ``bar_win_rate``: fraction of in-market bars whose net
  return is positive. ``profit_factor``: sum of winning trade returns / |sum of losing trade
  returns|. ``avg_trade_return``: mean trade return.
- ``exposure``: fraction of bars with a non-zero position.
- ``turnover``: ``sum |p[t] - p[t-1]|`` over the period (units of capital traded, from the
  position held before it, flat by default); ``annual_turnover`` = ``turnover / n * B``.

Undefined values (the JSON rule). No value is ever NaN or infinite:

- a ratio whose denominator is zero is ``0.0`` when its numerator is zero as well (a flat
  strategy: Sharpe 0, Calmar 0, win rate of no trades 0, profit factor of no trades 0), and
  ``None`` (JSON null, shown as "n/a") when the numerator is not zero (e.g. the profit factor of
  a strategy that never lost, the Sharpe ratio of a constant non-zero return);
- a value that overflows (``annual_return`` of a tiny sample of very short bars) is ``None``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_ZERO = 1e-12  # |value| at or below this counts as zero in a ratio's denominator / numerator
_DAY = np.timedelta64(86_400_000_000_000, "ns")

METRIC_KEYS: tuple[str, ...] = (
    "total_return", "total_return_pct", "annual_return", "annual_volatility", "sharpe_ratio",
    "sortino_ratio", "calmar_ratio", "max_drawdown", "max_drawdown_duration_bars",
    "max_drawdown_duration_days", "max_drawdown_recovered", "win_rate", "bar_win_rate",
    "profit_factor", "avg_trade_return", "n_trades", "exposure", "turnover", "annual_turnover",
    "n_bars", "bars_per_year", "period_days",
)
"""Every key :func:`compute_metrics` returns, in display order."""

# Metrics where smaller is better; every other metric ranks larger-is-better.
LOWER_IS_BETTER = frozenset({
    "max_drawdown", "annual_volatility", "max_drawdown_duration_bars", "max_drawdown_duration_days",
})


def _ratio(num: float, den: float) -> float | None:
    """``num / den`` under the module's rule: 0/0 -> 0.0, x/0 -> None."""
    if abs(den) <= _ZERO:
        return 0.0 if abs(num) <= _ZERO else None
    return _finite(num / den)


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _exp_minus_one(log_value: float) -> float | None:
    if log_value > 700.0:
        return None
    return float(math.expm1(log_value))


EQUITY_POINTS = 200  # points of an equity curve sent in an ``equity`` event


def equity_points(net_log_returns: np.ndarray, n: int = EQUITY_POINTS) -> list[float]:
    """The equity curve ``E[0] = 1 .. E[len]`` thinned to at most ``n`` evenly spaced points
    (first and last kept), rounded to 6 significant digits: small enough for an event line."""
    r = np.asarray(net_log_returns, dtype=np.float64)
    eq = np.exp(np.concatenate(([0.0], np.cumsum(r))))
    if len(eq) > n >= 2:
        eq = eq[np.round(np.linspace(0, len(eq) - 1, n)).astype(np.int64)]
    return [float(f"{x:.6g}") for x in eq]


def drawdown(net_log_returns: np.ndarray) -> np.ndarray:
    """Drawdown of the equity curve at each of its ``n + 1`` points, as positive fractions."""
    r = np.asarray(net_log_returns, dtype=np.float64)
    log_eq = np.concatenate(([0.0], np.cumsum(r)))
    return -np.expm1(log_eq - np.maximum.accumulate(log_eq))


def _max_drawdown(log_eq: np.ndarray) -> tuple[float, int, int, bool]:
    """(max drawdown, peak index, end index, recovered) of a log-equity curve."""
    peak_log = np.maximum.accumulate(log_eq)
    dd = -np.expm1(log_eq - peak_log)
    trough = int(np.argmax(dd))
    mdd = float(dd[trough])
    if mdd <= 0.0:
        return 0.0, 0, 0, True
    level = peak_log[trough]
    peak = int(np.flatnonzero(log_eq[: trough + 1] >= level)[-1])
    after = np.flatnonzero(log_eq[trough + 1:] >= level)
    if len(after):
        return mdd, peak, trough + 1 + int(after[0]), True
    return mdd, peak, len(log_eq) - 1, False


def trade_returns(net_log_returns: np.ndarray, positions: np.ndarray, *,
                  cost: float | None = None, initial_position: float = 0.0) -> np.ndarray:
    """Simple return of each trade in the period (see the module docstring), in entry order."""
    r = np.asarray(net_log_returns, dtype=np.float64)
    p = np.asarray(positions, dtype=np.float64)
    n = len(r)
    if n == 0:
        return np.zeros(0)
    prev = np.concatenate(([float(initial_position)], p[:-1]))
    # Runs of constant position: a new run starts where the position changes.
    starts = np.flatnonzero(np.concatenate(([True], p[1:] != p[:-1])))
    ends = np.concatenate((starts[1:], [n]))
    out: list[float] = []
    for i, j in zip(starts.tolist(), ends.tolist(), strict=True):
        pos = p[i]
        if pos == 0.0:
            continue
        total = float(r[i:j].sum())
        entered = pos != prev[i]
        if cost is not None:
            # Gross return of the entry bar, then this trade's own share of the costs.
            total += cost * abs(pos - prev[i])
            total -= cost * abs(pos) * (1.0 if entered else 0.0)
            if j < n:
                total -= cost * abs(pos)
        elif j < n and p[j] == 0.0:
            total += float(r[j])  # the flat bar after the exit holds only the exit cost
        gain = _exp_minus_one(total)
        out.append(math.inf if gain is None else gain)  # overflow: inf here, None in the metrics
    return np.asarray(out, dtype=np.float64)


def compute_metrics(net_log_returns: np.ndarray, positions: np.ndarray, bars_per_year: float, *,
                    timestamps: np.ndarray | None = None, cost: float | None = None,
                    initial_position: float = 0.0) -> dict[str, Any]:
    """Every metric of the module docstring for one period, JSON-safe (no NaN or inf).

    ``positions`` has the length of ``net_log_returns`` (or one more; the last is then ignored,
    as in :func:`engine.portfolio.position_returns`). ``timestamps``, when given, are the
    ``n + 1`` bar times of the period's closes (also accepted: ``n`` times, the decision bars,
    when the period's last close time is not at hand: durations then end one bar early).
    ``cost`` = transaction cost + slippage, for exact per-trade cost attribution.
    """
    r = np.asarray(net_log_returns, dtype=np.float64).ravel()
    p = np.asarray(positions, dtype=np.float64).ravel()
    n = len(r)
    if len(p) == n + 1:
        p = p[:n]
    if len(p) != n:
        raise ValueError(f"need {n} positions for {n} returns, got {len(p)}")
    if not np.all(np.isfinite(r)):
        raise ValueError("net returns must be finite")
    bpy = float(bars_per_year)
    if not (bpy > 0 and math.isfinite(bpy)):
        raise ValueError(f"bars_per_year must be positive, got {bars_per_year}")
    ts: np.ndarray | None = None
    if timestamps is not None:
        ts = np.asarray(timestamps, dtype="datetime64[ns]")
        if len(ts) not in (n, n + 1):
            raise ValueError(f"need {n + 1} timestamps for {n} returns, got {len(ts)}")

    out: dict[str, Any] = {k: 0.0 for k in METRIC_KEYS}
    out.update(n_bars=n, bars_per_year=bpy, n_trades=0, max_drawdown_duration_bars=0,
               max_drawdown_recovered=True, max_drawdown_duration_days=None, period_days=None)
    if ts is not None and len(ts) >= 2:
        out["period_days"] = float((ts[-1] - ts[0]) / _DAY)
    if n == 0:
        return out

    log_total = float(r.sum())
    mean = float(r.mean())
    total = _exp_minus_one(log_total)
    out["total_return"] = total
    out["total_return_pct"] = None if total is None else 100.0 * total
    out["annual_return"] = _exp_minus_one(mean * bpy)

    std = float(r.std(ddof=1)) if n >= 2 else 0.0
    out["annual_volatility"] = std * math.sqrt(bpy)
    sharpe = _ratio(mean, std)
    out["sharpe_ratio"] = None if sharpe is None else sharpe * math.sqrt(bpy)
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    sortino = _ratio(mean, downside)
    out["sortino_ratio"] = None if sortino is None else sortino * math.sqrt(bpy)

    log_eq = np.concatenate(([0.0], np.cumsum(r)))
    mdd, peak, end, recovered = _max_drawdown(log_eq)
    out["max_drawdown"] = mdd
    out["max_drawdown_duration_bars"] = int(end - peak)
    out["max_drawdown_recovered"] = bool(recovered)
    if ts is not None:
        last = len(ts) - 1
        out["max_drawdown_duration_days"] = float((ts[min(end, last)] - ts[min(peak, last)]) / _DAY)
    ann = out["annual_return"]
    out["calmar_ratio"] = None if ann is None else _ratio(ann, mdd)

    trades = trade_returns(r, p, cost=cost, initial_position=initial_position)
    out["n_trades"] = int(len(trades))
    wins = trades[trades > 0.0]
    losses = trades[trades < 0.0]
    out["win_rate"] = _ratio(float(len(wins)), float(len(trades)))
    out["profit_factor"] = _ratio(float(wins.sum()), float(-losses.sum()))
    out["avg_trade_return"] = float(trades.mean()) if len(trades) else 0.0
    in_market = p != 0.0
    out["bar_win_rate"] = _ratio(float(np.sum(r[in_market] > 0.0)), float(in_market.sum()))
    out["exposure"] = float(in_market.mean())
    prev = np.concatenate(([float(initial_position)], p[:-1]))
    turnover = float(np.abs(p - prev).sum())
    out["turnover"] = turnover
    out["annual_turnover"] = turnover / n * bpy
    return {k: _clean(v) for k, v in out.items()}


def _clean(v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, int | str):
        return v
    if isinstance(v, np.integer):
        return int(v)
    return _finite(float(v))


def mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Average of several runs' metrics (the random policy over seeds), key by key.

    Numbers are averaged over the runs where they are defined (None where none is);
    ``max_drawdown_recovered`` becomes the fraction of runs that recovered; integers stay floats.
    """
    if not runs:
        raise ValueError("no runs to average")
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [run.get(key) for run in runs]
        nums = [float(v) for v in values if isinstance(v, int | float) and v is not None]
        if key in ("n_bars", "bars_per_year", "period_days"):
            out[key] = values[0]
        elif not nums:
            out[key] = None
        else:
            out[key] = _finite(sum(nums) / len(nums))
    return out


def score(metrics: dict[str, Any], key: str) -> float:
    """A metric as a number to maximise (tuning, ranking); never NaN.

    Drawdown and volatility are negated. A missing key ranks lowest. A None value (undefined:
    zero denominator, or overflow) ranks by the sign of the period's result: +inf when the
    strategy made money (a profit factor with no losing trade, an annual return too large to
    represent), -inf otherwise.
    """
    if key not in metrics:
        return -math.inf
    value = metrics[key]
    if value is None:
        total = metrics.get("total_return")
        return math.inf if total is None or float(total) > 0.0 else -math.inf
    value = float(value)
    if not math.isfinite(value):
        return -math.inf
    return -value if key in LOWER_IS_BETTER else value
