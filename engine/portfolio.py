"""The one cost model: how positions turn into per-bar returns.

Shared by the trading environment (rewards), the evaluation of the agent and every baseline, so
that all strategies are judged by exactly the same rules.

A position ``p[t]`` in {-1, 0, 1} (short, flat, long) is chosen at the close of bar ``t`` and held
until the close of bar ``t+1``. Changing position costs ``(transaction_cost + slippage)`` per unit of
position changed, as a fraction of value. The net log return earned over bar ``t -> t+1`` is::

    r[t] = p[t] * log(close[t+1] / close[t]) - (transaction_cost + slippage) * |p[t] - p[t-1]|

with ``p[-1]`` the position held before the first decision (flat by default).
"""

from __future__ import annotations

import numpy as np


def log_returns(close: np.ndarray) -> np.ndarray:
    """``log(close[t+1] / close[t])`` for t = 0..T-2 (length T-1)."""
    close = np.asarray(close, dtype=np.float64)
    return np.diff(np.log(close))


def position_returns(close: np.ndarray, positions: np.ndarray, transaction_cost: float,
                     slippage: float, initial_position: float = 0.0) -> np.ndarray:
    """Net log return of holding ``positions[t]`` over bar t -> t+1, costs included.

    ``positions`` has length ``len(close) - 1`` (no decision at the last bar has an outcome) or
    ``len(close)`` (the last one is ignored).
    """
    lr = log_returns(close)
    pos = np.asarray(positions, dtype=np.float64)[: len(lr)]
    if len(pos) != len(lr):
        raise ValueError(f"need {len(lr)} positions for {len(close)} prices, got {len(pos)}")
    prev = np.concatenate(([initial_position], pos[:-1]))
    cost = (transaction_cost + slippage) * np.abs(pos - prev)
    return pos * lr - cost


def equity_curve(net_log_returns: np.ndarray, initial_value: float = 1.0) -> np.ndarray:
    """Portfolio value at each bar, starting at ``initial_value`` (length len(returns) + 1)."""
    r = np.asarray(net_log_returns, dtype=np.float64)
    return initial_value * np.exp(np.concatenate(([0.0], np.cumsum(r))))
