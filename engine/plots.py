"""The report's figures, drawn headless (matplotlib's Agg canvas, no pyplot, no display).

Each function takes plain arrays, writes one PNG and returns its path. Strategy series come as
``{name: net log returns}`` over the same bars; the agent is drawn boldest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.baselines import label
from engine.metrics import drawdown

AGENT_COLOR = "#1d4ed8"
COLORS: dict[str, str] = {
    "agent": AGENT_COLOR, "buy_and_hold": "#111827", "sell_and_hold": "#9ca3af",
    "ma_crossover": "#d97706", "rsi": "#059669", "bollinger": "#db2777", "random": "#7c3aed",
}
LONG_COLOR, SHORT_COLOR = "#16a34a", "#dc2626"
DPI = 110


def _figure(width: float, height: float, rows: int = 1, cols: int = 1,
            **kw: Any) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def _style(ax: Any, title: str | None = None) -> None:
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9ca3af")
    ax.tick_params(colors="#374151", labelsize=9)
    if title:
        ax.set_title(title, loc="left", fontsize=11, fontweight="bold", color="#111827")


def _time_axis(ax: Any, times: np.ndarray | None) -> None:
    if times is not None:
        import matplotlib.dates as mdates

        locator = mdates.AutoDateLocator(maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    else:
        ax.set_xlabel("bar", fontsize=9, color="#374151")


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor="white")
    return out


def _x(times: np.ndarray | None, n: int) -> np.ndarray:
    if times is not None and len(times) == n:
        return np.asarray(times, dtype="datetime64[ns]").astype("datetime64[ms]").astype(object)
    return np.arange(n)


def _order(names: Sequence[str]) -> list[str]:
    """Draw order: baselines first, agent last (on top)."""
    return [n for n in names if n != "agent"] + [n for n in names if n == "agent"]


def equity_plot(returns: Mapping[str, np.ndarray], path: str | os.PathLike[str], *,
                times: np.ndarray | None = None, title: str = "Equity on the test split") -> Path:
    """Growth of 1 unit for each strategy (``times``: the n + 1 close times of the period)."""
    fig, axes = _figure(10.5, 4.6)
    ax = axes[0, 0]
    for name in _order(list(returns)):
        r = np.asarray(returns[name], dtype=np.float64)
        eq = np.exp(np.concatenate(([0.0], np.cumsum(r))))
        x = _x(times, len(eq))
        is_agent = name == "agent"
        ax.plot(x, eq, label=label(name), color=COLORS.get(name),
                linewidth=2.4 if is_agent else 1.2, alpha=1.0 if is_agent else 0.85,
                linestyle="-" if name in ("agent", "buy_and_hold") else "--",
                zorder=3 if is_agent else 2)
    ax.axhline(1.0, color="#6b7280", linewidth=0.8, linestyle=":")
    ax.set_ylabel("value of 1 invested", fontsize=9, color="#374151")
    _style(ax, title)
    _time_axis(ax, times)
    ax.legend(loc="best", fontsize=8.5, frameon=True, framealpha=0.85, edgecolor="none", ncol=2)
    return _save(fig, path)


def drawdown_plot(returns: Mapping[str, np.ndarray], path: str | os.PathLike[str], *,
                  times: np.ndarray | None = None,
                  names: Sequence[str] = ("agent", "buy_and_hold"),
                  title: str = "Drawdown from the running peak") -> Path:
    fig, axes = _figure(10.5, 3.2)
    ax = axes[0, 0]
    for name in _order([n for n in names if n in returns]):
        dd = -100.0 * drawdown(returns[name])
        x = _x(times, len(dd))
        color = COLORS.get(name, "#6b7280")
        if name == "agent":
            ax.fill_between(x, dd, 0.0, color=color, alpha=0.25, linewidth=0)
            ax.plot(x, dd, color=color, linewidth=1.6, label=label(name))
        else:
            ax.plot(x, dd, color=color, linewidth=1.1, linestyle="--", label=label(name))
    ax.set_ylabel("drawdown (%)", fontsize=9, color="#374151")
    _style(ax, title)
    _time_axis(ax, times)
    ax.legend(loc="lower left", fontsize=8.5, frameon=True, framealpha=0.85, edgecolor="none")
    return _save(fig, path)


def positions_plot(close: np.ndarray, positions: np.ndarray, path: str | os.PathLike[str], *,
                   times: np.ndarray | None = None,
                   title: str = "Agent positions over the price") -> Path:
    """Closes (n + 1) with the bars held long / short shaded, and the position underneath."""
    close = np.asarray(close, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64)[: len(close) - 1]
    x = _x(times, len(close))
    fig, axes = _figure(10.5, 4.6, 2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax, axp = axes[0, 0], axes[1, 0]
    held = np.append(pos, pos[-1] if len(pos) else 0.0)  # bar t's position spans t -> t+1
    lo, hi = float(close.min()), float(close.max())
    pad = 0.04 * (hi - lo or hi or 1.0)
    kw: dict[str, Any] = {"step": "post", "linewidth": 0, "alpha": 0.16}
    for mask, color, name in ((held > 0, LONG_COLOR, "long"), (held < 0, SHORT_COLOR, "short")):
        # A position held from bar t covers t -> t+1: extend each run by its closing point.
        span = mask | np.concatenate(([False], mask[:-1]))
        ax.fill_between(x, lo - pad, hi + pad, where=span, color=color, label=name, **kw)
    ax.plot(x, close, color="#111827", linewidth=1.1, label="close")
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel("close", fontsize=9, color="#374151")
    _style(ax, title)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8.5, frameon=False,
              ncol=3)
    axp.step(x, held, where="post", color=AGENT_COLOR, linewidth=1.0)
    axp.set_ylim(-1.25, 1.25)
    axp.set_yticks([-1, 0, 1], labels=["short", "flat", "long"])
    axp.set_ylabel("position", fontsize=9, color="#374151")
    _style(axp)
    _time_axis(axp, times if times is not None and len(times) == len(close) else None)
    return _save(fig, path)


def training_plot(episodes: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                  title: str = "Training curves") -> Path | None:
    """Reward, loss, epsilon and validation Sharpe per episode (``episode`` events)."""
    rows = [e for e in episodes if isinstance(e.get("episode"), int | float)]
    if not rows:
        return None
    ep = np.array([float(e["episode"]) for e in rows])
    panels = [("reward", "episode reward"), ("loss", "loss"), ("epsilon", "epsilon"),
              ("val_sharpe", "validation Sharpe")]
    fig, axes = _figure(10.5, 5.4, 2, 2, sharex=True)
    for ax, (key, name) in zip(axes.ravel(), panels, strict=True):
        y = np.array([_num(e.get(key)) for e in rows])
        ok = np.isfinite(y)
        if ok.any():
            noisy = ok.sum() > 20 and key in ("reward", "val_sharpe")
            ax.plot(ep[ok], y[ok], color=AGENT_COLOR, linewidth=1.0 if noisy else 1.6,
                    alpha=0.45 if noisy else 1.0, marker="o" if ok.sum() <= 20 else None,
                    markersize=3)
            if ok.sum() > 20 and key in ("reward", "val_sharpe"):
                k = max(3, int(ok.sum()) // 15)
                smooth = np.convolve(y[ok], np.ones(k) / k, mode="valid")
                ax.plot(ep[ok][k - 1:], smooth, color=AGENT_COLOR, linewidth=2.0)
            if key == "loss" and np.nanmin(y[ok]) > 0 and np.nanmax(y[ok]) / np.nanmin(y[ok]) > 50:
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center",
                    va="center", color="#9ca3af")
        _style(ax, name)
    for ax in axes[1]:
        ax.set_xlabel("episode", fontsize=9, color="#374151")
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize=11, fontweight="bold", color="#111827")
    return _save(fig, path)


def tuning_plot(trials: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                metric: str = "score") -> Path | None:
    """Score of each tuning trial in the order they finished, best so far as a line."""
    scores = np.array([_num(t.get("score")) for t in trials])
    if not len(scores) or not np.isfinite(scores).any():
        return None
    fig, axes = _figure(10.5, 3.0)
    ax = axes[0, 0]
    x = np.arange(1, len(scores) + 1)
    ok = np.isfinite(scores)
    ax.scatter(x[ok], scores[ok], color=AGENT_COLOR, s=22, zorder=3, label="trial")
    best = np.maximum.accumulate(np.where(ok, scores, -np.inf))
    ax.step(x[np.isfinite(best)], best[np.isfinite(best)], where="post", color="#111827",
            linewidth=1.2, label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (in order finished)", fontsize=9, color="#374151")
    ax.set_ylabel(metric, fontsize=9, color="#374151")
    _style(ax, "Hyperparameter search")
    ax.legend(loc="best", fontsize=8.5, frameon=True, framealpha=0.85, edgecolor="none")
    return _save(fig, path)


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")
