"""Augmented copies of a market to train on (``--augment_filter``, ``--augment_stretch``).

The TDQN paper (Théate & Ernst 2021) trains its agent on transformed copies of the training
prices, so that it learns from more than the one path history took. Two of its transformations
are here; the third, feature noise, is ``--obs_noise`` (engine/env.py):

- **Low-pass filter** (``augment_filter`` K >= 2): open, high, low and close replaced by their
  K-bar trailing means (the first K - 1 bars by the mean of the bars so far). Trends persist
  longer and the day-to-day noise is gone; the paper's default is K = 5.
- **Stretch** (``augment_stretch`` S in (0, 1)): two copies whose log prices are scaled about the
  first close by 1 - S and 1 + S, so every move (and every bar's range) is smaller or larger by
  that factor while costs stay what they are: calmer and wilder versions of the same history.

How a copy is used (``engine.train.Trainer``): it is featurised and normalised on its own
training split, like any market of a multi-market run, and it only ever feeds the training
environments. Validation, selection, the test and every report see the real market alone. The
copies share the real market's step budget: an episode steps the same number of bars as without
augmentation, spread over the real market and its copies, so the setting costs no training time.

A copy is a pure function of the market and the settings (no random draw), so a resumed run
rebuilds the same copies and continues bit-exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from engine.data import MarketData

if TYPE_CHECKING:
    from engine.config import Config


def trailing_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``x[max(0, t-k+1)..t]`` for each ``t`` (causal; the first bars average fewer)."""
    c = np.cumsum(np.concatenate(([0.0], np.asarray(x, dtype=np.float64))))
    t = np.arange(1, len(x) + 1)
    lo = np.maximum(t - k, 0)
    return (c[t] - c[lo]) / (t - lo)


def low_pass(md: MarketData, k: int) -> MarketData:
    """``md`` with open, high, low and close replaced by their ``k``-bar trailing means."""
    return dataclasses.replace(
        md, open=trailing_mean(md.open, k), high=trailing_mean(md.high, k),
        low=trailing_mean(md.low, k), close=trailing_mean(md.close, k),
        source=f"{md.source}#filter{k}", warnings=[])


def stretch(md: MarketData, factor: float) -> MarketData:
    """``md`` with every log price scaled about the first close by ``factor`` (> 0): moves and
    ranges ``factor`` times as large, the order of open, high, low and close kept."""
    base = float(md.close[0])

    def scale(x: np.ndarray) -> np.ndarray:
        return base * np.exp(factor * np.log(np.asarray(x, dtype=np.float64) / base))

    return dataclasses.replace(
        md, open=scale(md.open), high=scale(md.high), low=scale(md.low), close=scale(md.close),
        source=f"{md.source}#stretch{factor:g}", warnings=[])


def _transforms(cfg: Config) -> list[tuple[str, Callable[[MarketData], MarketData]]]:
    """The copies ``cfg`` (resolved) asks for, in a fixed order: (label, transformation)."""
    out: list[tuple[str, Callable[[MarketData], MarketData]]] = []
    k = int(cfg.augment_filter or 0)
    if k >= 2:
        out.append((f"{k}-bar low-pass", functools.partial(low_pass, k=k)))
    s = float(cfg.augment_stretch or 0.0)
    if s > 0:
        out += [(f"stretched x{f:g}", functools.partial(stretch, factor=f))
                for f in (1.0 - s, 1.0 + s)]
    return out


def copies(md: MarketData, cfg: Config) -> list[MarketData]:
    """The augmented copies of ``md`` that ``cfg`` (resolved) asks for."""
    return [transform(md) for _, transform in _transforms(cfg)]


def describe(cfg: Config) -> str:
    """The copies ``cfg`` (resolved) asks for, for the log: ``""`` when none."""
    labels = [label for label, _ in _transforms(cfg)]
    return ", also on copies: " + ", ".join(labels) if labels else ""
