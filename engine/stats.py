"""Honest statistics of a result: is the agent's edge over buy-and-hold more than luck?

Numpy and the standard library only. What this module owns:

- :func:`stationary_bootstrap_indices`: the stationary bootstrap of Politis & Romano (1994):
  blocks of geometric length (mean ``block``) starting at uniform positions, wrapping around, so
  that resampled series keep the serial dependence of daily returns (volatility clusters).
- :func:`sharpe_diff_ci`: the Sharpe ratio difference agent - benchmark over the same bars and
  its bootstrap confidence interval (the same resampled bars for both series, so their
  correlation is kept). Several markets: the mean difference over markets; each replicate draws
  its indices from the same seed in every market, so markets of equal length (the same calendar)
  are resampled jointly and their cross-correlation is kept too.
- :func:`probabilistic_sharpe` and :func:`deflated_sharpe`: Bailey & Lopez de Prado (2012,
  2014). PSR = P(true Sharpe > benchmark Sharpe) given the estimate's length, skewness and
  kurtosis; the deflated Sharpe ratio (DSR) is the PSR against the Sharpe ratio the best of
  ``n_trials`` independent tries would reach by luck alone::

      SR0 = sqrt(V) * ((1 - g) * Z^-1(1 - 1/N) + g * Z^-1(1 - 1/(N e)))     (g = Euler's 0.5772)
      DSR = Z((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurt - 1) / 4 * SR^2))

  with per-bar (not annualised) Sharpe ratios, ``V`` the variance of the trials' Sharpe
  estimates (default: ``1 / (T - 1)``, an estimate's sampling variance when the true Sharpe is
  0), ``T`` bars, kurtosis not in excess.
- :func:`seed_summary`: mean, spread and range over seeds.
- :func:`verdict_text`: the sentence a report and a notification use; "not distinguishable from
  buy-and-hold" whenever the interval contains 0, and "a single seed" when there is one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

EULER_GAMMA = 0.5772156649015329
NOT_DISTINGUISHABLE = "not distinguishable from buy-and-hold"
_N = NormalDist()


def default_block(n: int) -> float:
    """Mean block length for ``n`` bars: ``n ** (1/3)``, at least 1 (a common rule of thumb for
    the stationary bootstrap of a mean)."""
    return max(1.0, float(n) ** (1.0 / 3.0))


def stationary_bootstrap_indices(n: int, n_boot: int, block: float,
                                 rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n)`` resampled bar indices of the stationary bootstrap (see the module
    docstring): each position starts a new block with probability ``1 / block``."""
    if n < 1:
        raise ValueError("need at least one bar")
    p = 1.0 / max(1.0, float(block))
    starts = rng.integers(0, n, size=(n_boot, n))
    new_block = rng.random((n_boot, n)) < p
    new_block[:, 0] = True
    # Index of the most recent block start at or before each position, then offset from it.
    pos = np.arange(n)
    last = np.where(new_block, pos[None, :], 0)
    last = np.maximum.accumulate(last, axis=1)
    return (np.take_along_axis(starts, last, axis=1) + (pos[None, :] - last)) % n


def sharpe(returns: np.ndarray, bars_per_year: float = 1.0) -> float:
    """Annualised Sharpe ratio ``mean / std(ddof=1) * sqrt(bars_per_year)``; 0 without
    variation."""
    r = np.asarray(returns, dtype=np.float64)
    if len(r) < 2:
        return 0.0
    sd = float(r.std(ddof=1))
    return float(r.mean()) / sd * math.sqrt(bars_per_year) if sd > 1e-12 else 0.0


def sharpe_rows(x: np.ndarray, bars_per_year: float) -> np.ndarray:
    """:func:`sharpe` of each row of a 2-D array (bootstrap replicates)."""
    sd = x.std(axis=1, ddof=1)
    safe = np.where(sd > 1e-12, sd, 1.0)
    return np.where(sd > 1e-12, x.mean(axis=1) / safe, 0.0) * math.sqrt(bars_per_year)


def sharpe_diff_ci(agent: Sequence[np.ndarray] | np.ndarray,
                   benchmark: Sequence[np.ndarray] | np.ndarray,
                   bars_per_year: Sequence[float] | float, *, n_boot: int = 2000,
                   alpha: float = 0.05, block: float | None = None, seed: int = 0
                   ) -> dict[str, Any]:
    """The (mean over markets of the) annualised Sharpe difference agent - benchmark and its
    ``1 - alpha`` stationary-bootstrap percentile interval.

    ``agent`` / ``benchmark``: one array of per-bar net returns, or one per market (the two
    arrays of a market cover the same bars). Returns ``{"diff", "low", "high", "p_le_0",
    "n_boot", "block"}``; ``p_le_0`` is the share of replicates with a difference <= 0.
    """
    agents = [np.asarray(agent, dtype=np.float64)] if isinstance(agent, np.ndarray) else [
        np.asarray(a, dtype=np.float64) for a in agent]
    benches = [np.asarray(benchmark, dtype=np.float64)] if isinstance(
        benchmark, np.ndarray) else [np.asarray(b, dtype=np.float64) for b in benchmark]
    bpys = [float(bars_per_year)] * len(agents) if isinstance(bars_per_year, int | float) \
        else [float(b) for b in bars_per_year]
    if not (len(agents) == len(benches) == len(bpys)) or not agents:
        raise ValueError("need the same number (>= 1) of agent and benchmark series")
    point = []
    reps = np.zeros(n_boot)
    blocks = []
    for a, b, bpy in zip(agents, benches, bpys, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"agent and benchmark cover different bars: {a.shape} vs {b.shape}")
        point.append(sharpe(a, bpy) - sharpe(b, bpy))
        bl = block or default_block(len(a))
        blocks.append(bl)
        if len(a) < 2:
            continue
        idx = stationary_bootstrap_indices(len(a), n_boot, bl, np.random.default_rng(seed))
        reps += sharpe_rows(a[idx], bpy) - sharpe_rows(b[idx], bpy)
    reps /= len(agents)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(np.mean(point)), "low": float(lo), "high": float(hi),
            "p_le_0": float(np.mean(reps <= 0.0)), "n_boot": int(n_boot),
            "block": float(np.mean(blocks)), "alpha": float(alpha)}


def _moments(returns: np.ndarray) -> tuple[float, float, float, int]:
    """(per-bar Sharpe, skewness, kurtosis (not excess), bars)."""
    r = np.asarray(returns, dtype=np.float64)
    n = len(r)
    sd = float(r.std(ddof=1)) if n >= 2 else 0.0
    if sd <= 1e-12:
        return 0.0, 0.0, 3.0, n
    z = (r - r.mean()) / r.std()
    return float(r.mean()) / sd, float(np.mean(z ** 3)), float(np.mean(z ** 4)), n


def probabilistic_sharpe(returns: np.ndarray, benchmark_sharpe: float = 0.0) -> float | None:
    """P(true per-bar Sharpe > ``benchmark_sharpe``) (Bailey & Lopez de Prado 2012); None for
    fewer than 3 bars."""
    sr, skew, kurt, n = _moments(returns)
    if n < 3:
        return None
    den = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr * sr
    if den <= 0:
        return None
    return float(_N.cdf((sr - benchmark_sharpe) * math.sqrt(n - 1) / math.sqrt(den)))


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """The per-bar Sharpe ratio the best of ``n_trials`` independent zero-skill trials reaches
    in expectation (``SR0`` of the module docstring)."""
    n = max(1, int(n_trials))
    if n == 1:
        return 0.0
    g = EULER_GAMMA
    return math.sqrt(max(variance, 0.0)) * ((1 - g) * _N.inv_cdf(1 - 1 / n)
                                            + g * _N.inv_cdf(1 - 1 / (n * math.e)))


def deflated_sharpe(returns: np.ndarray, n_trials: int,
                    trial_sharpes: Sequence[float] | None = None) -> dict[str, Any]:
    """The deflated Sharpe ratio of the selected strategy's ``returns`` after ``n_trials``
    tries. ``trial_sharpes`` (per bar) estimate the variance ``V`` across trials (when at least
    two are given; else ``1 / (T - 1)``). Returns ``{"dsr", "sr0", "sharpe", "n_trials"}``
    (per-bar Sharpe ratios; ``dsr`` None for fewer than 3 bars)."""
    r = np.asarray(returns, dtype=np.float64)
    n = len(r)
    sharpes = [float(x) for x in (trial_sharpes or []) if x is not None and math.isfinite(x)]
    var = float(np.var(sharpes, ddof=1)) if len(sharpes) >= 2 else 1.0 / max(1, n - 1)
    sr0 = expected_max_sharpe(n_trials, var)
    return {"dsr": probabilistic_sharpe(r, sr0), "sr0": sr0, "sharpe": _moments(r)[0],
            "n_trials": int(max(1, n_trials))}


def seed_summary(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, standard deviation (ddof 1; 0 for one seed), min and max over seeds."""
    v = np.array([float(x) for x in values if x is not None and math.isfinite(float(x))])
    if len(v) == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": int(len(v)), "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def verdict_text(ci: dict[str, Any], *, n_seeds: int, n_markets: int = 1,
                 dsr: float | None = None, val_test_gap: float | None = None) -> str:
    """One honest sentence on the Sharpe difference against buy-and-hold (see the module
    docstring); never a claim of skill when the interval contains 0."""
    level = f"{100 * (1 - float(ci.get('alpha', 0.05))):.0f}%"
    lo, hi, d = float(ci["low"]), float(ci["high"]), float(ci["diff"])
    span = f"Sharpe difference {d:+.2f}, {level} CI [{lo:+.2f}, {hi:+.2f}]"
    where = f" averaged over {n_markets} markets" if n_markets > 1 else ""
    if lo <= 0.0 <= hi:
        text = f"The agent is {NOT_DISTINGUISHABLE}{where} ({span})."
    elif lo > 0:
        text = f"The agent beat buy-and-hold{where} beyond the bootstrap noise ({span})."
    else:
        text = f"The agent trailed buy-and-hold{where} beyond the bootstrap noise ({span})."
    if n_seeds <= 1:
        text += " This is a single seed: the spread over seeds is unknown."
    else:
        text += f" Over {n_seeds} seeds."
    if dsr is not None:
        text += (f" Deflated Sharpe ratio of the selected model on validation {dsr:.2f} (the "
                 "probability its validation Sharpe is not the luck of the trials).")
    if val_test_gap is not None:
        how = "exceeded" if val_test_gap >= 0 else "fell short of"
        text += f" Validation Sharpe {how} test Sharpe by {abs(val_test_gap):.2f}."
    return text
