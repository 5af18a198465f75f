"""Many runs into one comparison: per market and over markets, seed mean and spread, the Sharpe
difference against buy-and-hold with a bootstrap interval, and an honest verdict.

What this module owns (callers: ``dql-trading benchmark``; a future sweep):

- :func:`records_from_run`: the test results of one evaluated run folder, one :class:`Record`
  per market (a single-market run, or each market of a multi-market run), read from the files
  :mod:`engine.report` writes (``test_series.csv``, ``test_metrics.json``, ``config.json``).
- :func:`aggregate`: records (markets x seeds, any mix) into a summary dict: per market the
  seed-mean test Sharpe, its spread, buy-and-hold's, their difference and its interval; over
  markets the mean, the number of markets where the seed mean beats buy-and-hold, the interval
  of the mean difference (stationary bootstrap of the bars, the same resampled bars for every
  seed of a market and for every market of the same length), and the verdict of
  :func:`engine.stats.verdict_text`.
- :func:`write_summary`: ``benchmark.json``, ``benchmark.csv`` (one row per market) and
  ``benchmark.html``.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import stats

SUMMARY_JSON, SUMMARY_CSV, SUMMARY_HTML = "benchmark.json", "benchmark.csv", "benchmark.html"
MARKET_COLUMNS = ("market", "n_seeds", "agent_sharpe_mean", "agent_sharpe_std",
                  "agent_sharpe_min", "agent_sharpe_max", "bh_sharpe", "sharpe_vs_bh",
                  "ci_low", "ci_high", "beats_bh", "best_baseline", "best_baseline_sharpe",
                  "beats_all", "val_sharpe_mean", "val_test_gap")
#: strategies of ``strategy_comparison.csv`` that are not baselines of their own here
NOT_BASELINES = ("agent", "buy_and_hold")


@dataclass
class Record:
    """One seed's test result on one market."""

    market: str
    seed: int
    agent: np.ndarray  # net log returns per test bar
    bench: np.ndarray  # buy-and-hold's over the same bars
    bars_per_year: float
    val_sharpe: float | None = None
    run_dir: str = ""
    #: the other baselines' test Sharpe on this market (label -> Sharpe)
    baselines: dict[str, float] = field(default_factory=dict)


def _read_series(path: Path) -> tuple[np.ndarray, np.ndarray]:
    agent, bench = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            a, b = row.get("agent_return", ""), row.get("buy_and_hold_return", "")
            if a != "" and b != "":
                agent.append(float(a))
                bench.append(float(b))
    return np.asarray(agent), np.asarray(bench)


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _baselines(path: Path) -> dict[str, float]:
    """Label -> test Sharpe of every strategy of ``strategy_comparison.csv`` but the agent and
    buy-and-hold (none when the file is missing)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return {}
    out: dict[str, float] = {}
    for row in rows:
        try:
            value = float(row.get("sharpe_ratio") or "nan")
        except ValueError:
            continue
        if row.get("strategy") not in NOT_BASELINES and math.isfinite(value):
            out[row.get("label") or str(row.get("strategy"))] = value
    return out


def records_from_run(run_dir: str | Path) -> list[Record]:
    """The per-market test results of one evaluated run folder (empty if it has none)."""
    from engine.data import market_name

    run = Path(run_dir)
    config = _json(run / "config.json")
    seed = int(config.get("seed", 0) or 0)
    val = _json(run / "test_metrics.json").get("val_sharpe")
    if (run / "markets").is_dir():
        folders = sorted(p for p in (run / "markets").iterdir() if (p / "test_series.csv").exists())
        names = [p.name for p in folders]
    elif (run / "test_series.csv").exists():
        folders = [run]
        names = [market_name(str(config.get("data_file") or run.name))]
    else:
        return []
    out = []
    for folder, name in zip(folders, names, strict=True):
        agent, bench = _read_series(folder / "test_series.csv")
        bpy = float(_json(folder / "test_metrics.json").get("bars_per_year") or 252.0)
        out.append(Record(market=name, seed=seed, agent=agent, bench=bench, bars_per_year=bpy,
                          val_sharpe=val if isinstance(val, int | float) else None,
                          run_dir=str(run),
                          baselines=_baselines(folder / "strategy_comparison.csv")))
    return out


def aggregate(records: list[Record], *, n_boot: int = 2000, alpha: float = 0.05,
              seed: int = 0) -> dict[str, Any]:
    """See the module docstring; ``records`` must not be empty."""
    if not records:
        raise ValueError("no results to aggregate")
    by: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by[r.market].append(r)
    rows: list[dict[str, Any]] = []
    reps_all = np.zeros(n_boot)
    for market in sorted(by):
        recs = sorted(by[market], key=lambda r: r.seed)
        bench, bpy, n = recs[0].bench, recs[0].bars_per_year, len(recs[0].bench)
        if any(len(r.agent) != n for r in recs):
            raise ValueError(f"{market}: the seeds' test periods differ in length")
        seeds = [stats.sharpe(r.agent, bpy) for r in recs]
        s = stats.seed_summary(seeds)
        bh = stats.sharpe(bench, bpy)
        idx = stats.stationary_bootstrap_indices(max(n, 1), n_boot, stats.default_block(n),
                                                 np.random.default_rng(seed))
        reps = np.mean([stats.sharpe_rows(r.agent[idx], bpy) for r in recs], axis=0) \
            - stats.sharpe_rows(bench[idx], bpy)
        reps_all += reps
        lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
        vals = [r.val_sharpe for r in recs if r.val_sharpe is not None]
        val_mean = float(np.mean(vals)) if vals else None
        # the baselines are the same for every seed (the random one: a mean over its seeds)
        others = recs[0].baselines
        best = max(others, key=lambda k: others[k]) if others else None
        rows.append({"market": market, "n_seeds": s["n"], "agent_sharpe_mean": s["mean"],
                     "agent_sharpe_std": s["std"], "agent_sharpe_min": s["min"],
                     "agent_sharpe_max": s["max"], "bh_sharpe": bh,
                     "sharpe_vs_bh": float(s["mean"] - bh), "ci_low": float(lo),
                     "ci_high": float(hi), "beats_bh": bool(s["mean"] > bh),
                     "baselines": dict(others), "best_baseline": best,
                     "best_baseline_sharpe": others[best] if best else None,
                     "beats_all": bool(s["mean"] > max([bh, *others.values()])),
                     "val_sharpe_mean": val_mean,
                     "val_test_gap": None if val_mean is None else val_mean - s["mean"]})
    reps_all /= len(rows)
    lo, hi = np.quantile(reps_all, [alpha / 2, 1 - alpha / 2])
    ci = {"diff": float(np.mean([r["sharpe_vs_bh"] for r in rows])), "low": float(lo),
          "high": float(hi), "alpha": alpha, "p_le_0": float(np.mean(reps_all <= 0))}
    n_seeds = min(r["n_seeds"] for r in rows)
    gaps = [r["val_test_gap"] for r in rows if r["val_test_gap"] is not None]
    return {
        "n_markets": len(rows), "n_seeds": n_seeds, "n_runs": len(records),
        "agent_sharpe_mean": float(np.mean([r["agent_sharpe_mean"] for r in rows])),
        "bh_sharpe_mean": float(np.mean([r["bh_sharpe"] for r in rows])),
        "sharpe_vs_bh": ci["diff"], "ci_low": ci["low"], "ci_high": ci["high"],
        "p_le_0": ci["p_le_0"], "markets_beaten": int(sum(r["beats_bh"] for r in rows)),
        "markets_beating_all": int(sum(r["beats_all"] for r in rows)),
        "val_test_gap_mean": float(np.mean(gaps)) if gaps else None,
        "verdict": stats.verdict_text(ci, n_seeds=n_seeds, n_markets=len(rows)) +
        f" The seed mean beat buy-and-hold's Sharpe on {sum(r['beats_bh'] for r in rows)} of "
        f"{len(rows)} markets, and every baseline's on {sum(r['beats_all'] for r in rows)}.",
        "markets": rows,
    }


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:+.3f}" if math.isfinite(v) else "n/a"
    return "n/a" if v is None else html.escape(str(v))


def write_summary(summary: dict[str, Any], out_dir: str | Path, *, title: str = "Benchmark",
                  settings: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the summary as JSON, CSV (one row per market) and a self-contained HTML page."""
    from engine.report import CSS, write_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {**summary, "settings": settings or {}}
    (out / SUMMARY_JSON).write_text(json.dumps(doc, indent=2, default=str) + "\n",
                                    encoding="utf-8")
    write_table(out / SUMMARY_CSV, summary["markets"], list(MARKET_COLUMNS))
    head = "".join(f"<th>{c}</th>" for c in MARKET_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in MARKET_COLUMNS)
                   + "</tr>" for r in summary["markets"])
    lo, hi = summary["ci_low"], summary["ci_high"]
    cls = "good" if lo > 0 else "bad" if hi < 0 else "neutral"
    keys = ("n_markets", "n_seeds", "agent_sharpe_mean", "bh_sharpe_mean", "sharpe_vs_bh",
            "ci_low", "ci_high", "p_le_0", "markets_beaten", "markets_beating_all",
            "val_test_gap_mean")
    kv = "".join(f"<div><span>{k}</span><span>{_cell(summary.get(k))}</span></div>" for k in keys)
    sett = "".join(f"<div><span>{html.escape(str(k))}</span><span>{html.escape(str(v))}</span>"
                   "</div>" for k, v in (settings or {}).items())
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>
<header><h1>{html.escape(title)}</h1><div class="sub">test split of every market, every seed
</div></header>
<div class="verdict {cls}">{html.escape(summary['verdict'])}</div>
<section><h2>Over markets</h2><div class="kv">{kv}</div></section>
<section><h2>Per market</h2><div class="scroll"><table><thead><tr>{head}</tr></thead>
<tbody>{body}</tbody></table></div><p class="note">Sharpe ratios annualised; agent: mean over
seeds; CI: 95% stationary-bootstrap interval of the seed-mean Sharpe difference against
buy-and-hold; best baseline: the best of the other strategies (sell and hold, MA crossover, RSI,
Bollinger, random); beats all: the seed mean beats buy-and-hold and every one of them.</p>
</section>
<section><h2>Settings</h2><div class="kv">{sett}</div></section>
</main></body></html>
"""
    (out / SUMMARY_HTML).write_text(page, encoding="utf-8")
    return {"json": out / SUMMARY_JSON, "csv": out / SUMMARY_CSV, "html": out / SUMMARY_HTML}
