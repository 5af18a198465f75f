"""A run's results on disk and the self-contained HTML report built from them.

:func:`write_outputs` evaluates the agent and the baselines on the test split and writes, in
``results/<experiment>/`` (the predecessor's names where it had them):

- ``test_metrics.json`` / ``test_metrics.csv``: the agent's test metrics (one flat object / one
  row) plus the period (``split``, ``start``, ``end``) and the costs it was judged with;
- ``val_metrics.json``: the agent's validation metrics, when a validation pass is given;
- ``strategy_comparison.csv``: one row per strategy, the agent first, then every baseline;
- ``test_series.csv``: per bar of the test split, its time and close and each strategy's position
  and net log return (what the report's plots are drawn from);
- ``plots/*.png`` and ``report.html`` (by :func:`build_report`).

:func:`build_report` regenerates ``plots/`` and ``report.html`` from the files of a results
folder alone (``dql-trading report --experiment X``): the files above, plus ``train_metrics.json``
(the trainer's), ``config.json``, ``best_params.json`` and the ``episode`` / ``trial`` events of
``events.jsonl`` when present. Plots are embedded as base64, so the report is one file that opens
anywhere.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.baselines import LABELS, evaluate_strategies, label
from engine.events import read_events
from engine.metrics import METRIC_KEYS, compute_metrics, score

SERIES_FILE = "test_series.csv"
TEST_METRICS_JSON = "test_metrics.json"
TEST_METRICS_CSV = "test_metrics.csv"
VAL_METRICS_JSON = "val_metrics.json"
COMPARISON_CSV = "strategy_comparison.csv"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"

PathLike = str | os.PathLike[str]


# -- writing -------------------------------------------------------------------------------------
def write_test_metrics(out_dir: PathLike, test: Mapping[str, Any]) -> None:
    """``test_metrics.json`` (everything) and ``test_metrics.csv`` (one row of the scalar
    values; tables such as the per-market rows stay in the JSON)."""
    out = Path(out_dir)
    _json_dump(out / TEST_METRICS_JSON, dict(test))
    flat = [k for k, v in test.items() if not isinstance(v, list | dict)]
    _write_rows(out / TEST_METRICS_CSV, [test], flat)


def write_comparison(out_dir: PathLike, metrics: Mapping[str, Mapping[str, Any]]) -> None:
    """``strategy_comparison.csv``: one row per strategy (name -> its metrics), in order."""
    rows = [{"strategy": name, "label": label(name), **m} for name, m in metrics.items()]
    _write_rows(Path(out_dir) / COMPARISON_CSV, rows, ["strategy", "label", *METRIC_KEYS])


def write_table(path: PathLike, rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> None:
    """A CSV of ``rows`` with columns ``cols`` (missing values empty)."""
    _write_rows(Path(path), rows, cols)


def _period(arr: Any, split: slice, what: str) -> np.ndarray:
    """An agent array for the split's evaluated bars, from either the split alone
    (``stop - start - 1``) or :func:`engine.env.evaluate_policy`'s ``stop - 1`` prefix arrays."""
    a = np.asarray(arr, dtype=np.float64).ravel()
    start, stop = int(split.start or 0), int(split.stop)
    n = stop - start - 1
    if len(a) == n:
        return a
    if len(a) in (stop - 1, stop):
        return a[start:start + n]
    if len(a) == n + 1:
        return a[:n]
    raise ValueError(f"{what} has {len(a)} values; the split {start}:{stop} has {n} bars to "
                     f"evaluate (or pass evaluate_policy's {stop - 1} values)")


def _ts_text(t: Any) -> str:
    text = str(np.datetime_as_string(np.datetime64(t, "s"), unit="s")).replace("T", " ")
    return text[:-9] if text.endswith(" 00:00:00") else text


def _json_dump(path: Path, obj: Any) -> None:
    from engine.events import _clean  # JSON-safe: NaN/inf -> None, numpy -> Python

    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return v


def write_outputs(results_dir: PathLike, md: Any, split: slice, agent_positions: Any,
                  agent_returns: Any, *, transaction_cost: float, slippage: float,
                  long_only: bool = False, config: Mapping[str, Any] | None = None,
                  validation: tuple[slice, Any, Any] | None = None, n_random: int = 5,
                  seed: int = 0, bars_per_year: float | None = None,
                  build: bool = True) -> dict[str, Any]:
    """Evaluate the agent and every baseline on ``split`` of ``md`` and write the outputs.

    ``md`` is the whole :class:`engine.data.MarketData`; ``split`` the test slice of
    :func:`engine.data.split_indices`. The agent's positions and net returns cover the split's
    ``stop - start - 1`` evaluated bars, or are the ``stop - 1`` arrays of
    :func:`engine.env.evaluate_policy` run on bars ``:stop`` with ``start = split.start``.
    ``validation`` = ``(val_slice, positions, returns)`` in the same forms. Bars per year are
    inferred from the whole file's timestamps unless given. ``config`` (the run's settings) is
    written to ``config.json`` unless that file exists. Returns ``{"test_metrics",
    "strategies" (name -> metrics), "bars_per_year", "report" (Path or None)}``.
    """
    from engine.data import bars_per_year as infer_bars_per_year

    out_dir = Path(results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpy = float(bars_per_year) if bars_per_year else infer_bars_per_year(md.timestamps)
    start, stop = int(split.start or 0), int(split.stop)
    pos = _period(agent_positions, split, "agent_positions")
    net = _period(agent_returns, split, "agent_returns")
    series, metrics = evaluate_strategies(
        md.close[:stop], transaction_cost, slippage, bpy, start=start,
        timestamps=md.timestamps[:stop], agent=(pos, net), long_only=long_only,
        n_random=n_random, seed=seed)
    meta = {"split": "test", "start": _ts_text(md.timestamps[start]),
            "end": _ts_text(md.timestamps[stop - 1]), "transaction_cost": float(transaction_cost),
            "slippage": float(slippage), "long_only": bool(long_only),
            "data_file": Path(str(getattr(md, "source", "") or "")).name}
    test = {**metrics["agent"], **meta}
    write_test_metrics(out_dir, test)
    write_comparison(out_dir, metrics)

    times = md.timestamps[start:stop]
    table: dict[str, list[Any]] = {"time": [_ts_text(t) for t in times],
                                   "close": md.close[start:stop].tolist()}
    for name, (p, r) in series.items():
        table[f"{name}_position"] = [*p.tolist(), None]
        table[f"{name}_return"] = [*r.tolist(), None]
    _write_columns(out_dir / SERIES_FILE, table)

    if validation is not None:
        vslice, vpos, vret = validation
        v0, v1 = int(vslice.start or 0), int(vslice.stop)
        vp, vr = _period(vpos, vslice, "validation positions"), _period(vret, vslice,
                                                                        "validation returns")
        vm = compute_metrics(vr, vp, bpy, timestamps=md.timestamps[v0:v1],
                             cost=transaction_cost + slippage)
        _json_dump(out_dir / VAL_METRICS_JSON, {
            **vm, **meta, "split": "validation", "start": _ts_text(md.timestamps[v0]),
            "end": _ts_text(md.timestamps[v1 - 1])})
    if config is not None and not (out_dir / "config.json").exists():
        _json_dump(out_dir / "config.json", dict(config))
    report = build_report(out_dir) if build else None
    return {"test_metrics": test, "strategies": metrics, "bars_per_year": bpy, "report": report}


def _write_rows(path: Path, rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for row in rows:
            w.writerow([_csv_value(row.get(c)) for c in cols])
    os.replace(tmp, path)


def _write_columns(path: Path, table: Mapping[str, Sequence[Any]]) -> None:
    cols = list(table)
    n = len(next(iter(table.values())))
    _write_rows(path, [{c: table[c][i] for c in cols} for i in range(n)], cols)


# -- reading -------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _num(text: str) -> Any:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return {"True": True, "False": False}.get(text, text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def read_comparison(path: PathLike) -> list[dict[str, Any]]:
    """Rows of a ``strategy_comparison.csv`` with numbers parsed (empty cells -> None)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (v if k in ("strategy", "label") else _num(v)) for k, v in row.items()}
                for row in csv.DictReader(fh)]


def read_series(path: PathLike) -> dict[str, np.ndarray]:
    """``test_series.csv`` as columns: ``time`` datetime64, the others float (NaN when empty)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        col = [r[j] for r in body]
        if name == "time":
            out[name] = np.array(col, dtype="datetime64[ns]")
        else:
            out[name] = np.array([float(v) if v != "" else np.nan for v in col])
    return out


# -- formatting ----------------------------------------------------------------------------------
_PCT = {"total_return", "annual_return", "annual_volatility", "max_drawdown", "win_rate",
        "bar_win_rate", "exposure", "avg_trade_return"}
_NAMES = {
    "total_return": "Total return", "total_return_pct": "Total return (%)",
    "annual_return": "Annual return", "annual_volatility": "Annual volatility",
    "sharpe_ratio": "Sharpe", "sortino_ratio": "Sortino", "calmar_ratio": "Calmar",
    "max_drawdown": "Max drawdown", "max_drawdown_duration_bars": "Max DD duration (bars)",
    "max_drawdown_duration_days": "Max DD duration (days)",
    "max_drawdown_recovered": "Max DD recovered", "win_rate": "Win rate",
    "bar_win_rate": "Win rate (bars)", "profit_factor": "Profit factor",
    "avg_trade_return": "Avg trade", "n_trades": "Trades", "exposure": "Exposure",
    "turnover": "Turnover", "annual_turnover": "Annual turnover", "n_bars": "Bars",
    "bars_per_year": "Bars per year", "period_days": "Period (days)",
}
KEY_SETTINGS = ("command", "agent_type", "data_file", "episodes", "reward_goal", "seed",
                "transaction_cost", "slippage", "lr", "gamma", "batch_size", "buffer_size",
                "n_envs", "eps_fraction", "long_only", "device")
TABLE_COLS = ("total_return", "annual_return", "annual_volatility", "sharpe_ratio",
              "sortino_ratio", "calmar_ratio", "max_drawdown", "win_rate", "profit_factor",
              "n_trades", "exposure")


def fmt(key: str, value: Any, row: Mapping[str, Any] | None = None) -> str:
    """A metric for display: percentages, 2-decimal ratios, n/a for undefined."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        if key == "profit_factor" and row is not None and (row.get("n_trades") or 0) > 0:
            return "&infin;"
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return html.escape(value)
    v = float(value)
    if key in _PCT:
        return f"{100 * v:.2f}%"
    if key in ("n_trades", "n_bars", "max_drawdown_duration_bars") or (
            isinstance(value, int) and key not in ("bars_per_year",)):
        return f"{int(round(v)):,}"
    if key in ("period_days", "max_drawdown_duration_days"):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
    if key in ("bars_per_year", "annual_turnover", "turnover"):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.1f}"
    if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3):
        return f"{v:.3g}"
    return f"{v:,.2f}"


def verdict(rows: Sequence[Mapping[str, Any]], metric: str = "sharpe_ratio",
            test: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """``(sentence, css class)``: how the agent did against buy-and-hold.

    With the statistics of :mod:`engine.evaluation` in ``test`` (its ``verdict``): that
    sentence (a bootstrap interval, seeds, the deflated Sharpe ratio), never a rank claim.
    Older results without them: the return difference and the rank on this one test split,
    said to be one run without a confidence interval.
    """
    by = {r["strategy"]: r for r in rows}
    agent, bh = by.get("agent"), by.get("buy_and_hold")
    if agent is None:
        return "No agent results in this folder.", "neutral"
    if test and test.get("verdict"):
        lo, hi = test.get("sharpe_vs_bh_ci_low"), test.get("sharpe_vs_bh_ci_high")
        cls = "neutral"
        if isinstance(lo, int | float) and lo > 0:
            cls = "good"
        elif isinstance(hi, int | float) and hi < 0:
            cls = "bad"
        text = html.escape(str(test["verdict"]))
        n_m = test.get("n_markets")
        if isinstance(n_m, int) and n_m > 1:
            text += (f" Test Sharpe above buy-and-hold's on {test.get('markets_beaten')} of "
                     f"{n_m} markets.")
        return text, cls
    parts: list[str] = []
    cls = "neutral"
    a_tr, b_tr = agent.get("total_return"), (bh or {}).get("total_return")
    if isinstance(a_tr, int | float) and isinstance(b_tr, int | float):
        diff = 100.0 * (a_tr - b_tr)
        word = "beat" if diff > 0 else "trailed" if diff < 0 else "matched"
        cls = "good" if diff > 0 else "bad" if diff < 0 else "neutral"
        parts.append(f"The agent {word} buy-and-hold by {abs(diff):.2f} pp on the test split "
                     f"(total return {100 * a_tr:+.2f}% vs {100 * b_tr:+.2f}%; Sharpe "
                     f"{fmt('sharpe_ratio', agent.get('sharpe_ratio'))} vs "
                     f"{fmt('sharpe_ratio', bh.get('sharpe_ratio') if bh else None)}).")
    if agent.get("n_trades") == 0:
        parts.append("The agent made no trades: it stayed flat for the whole split.")
        cls = "neutral"
    ranked = sorted(rows, key=lambda r: score(r, metric), reverse=True)
    rank = next(i for i, r in enumerate(ranked, 1) if r["strategy"] == "agent")
    best = ranked[0]
    name = _NAMES.get(metric, metric)
    if best["strategy"] == "agent":
        parts.append(f"Best of {len(rows)} strategies by {name} on this test split (one run, "
                     "no confidence interval: it may be luck).")
    else:
        parts.append(f"Rank {rank} of {len(rows)} by {name}; best: "
                     f"{html.escape(str(best.get('label') or best['strategy']))} "
                     f"({fmt(metric, best.get(metric), best)}).")
    return " ".join(parts), cls


# -- the report ----------------------------------------------------------------------------------
CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:#111827;font:15px/1.5 -apple-system,BlinkMacSystemFont,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:28px 24px 48px}
header h1{margin:0;font-size:26px;letter-spacing:-.01em}
header .sub{color:#4b5563;margin-top:4px;font-size:14px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:18px 20px;
margin-top:18px}
h2{font-size:17px;margin:0 0 12px}
.verdict{margin-top:18px;padding:14px 18px;border-radius:10px;font-size:16px;font-weight:600;
border-left:6px solid}
.verdict.good{background:#ecfdf5;border-color:#16a34a;color:#14532d}
.verdict.bad{background:#fef2f2;border-color:#dc2626;color:#7f1d1d}
.verdict.neutral{background:#f9fafb;border-color:#6b7280;color:#1f2937}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;
margin-top:18px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:12px 14px}
.card .k{font-size:12px;color:#6b7280;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:700;margin-top:2px}
.card .c{font-size:12px;color:#6b7280}
.pos{color:#15803d}.neg{color:#b91c1c}
table{border-collapse:collapse;width:100%;font-size:13.5px}
th,td{padding:7px 8px;text-align:right;border-bottom:1px solid #eef0f3;white-space:nowrap}
th{background:#f9fafb;color:#374151;font-weight:600;border-bottom:1px solid #d1d5db;
white-space:normal;vertical-align:bottom;font-size:12.5px}
table.metrics{max-width:720px}table.metrics td:first-child{color:#4b5563}
th:first-child,td:first-child{text-align:left}
tr.agent td{background:#eff6ff;font-weight:600}
td.best{color:#15803d;font-weight:700}
.scroll{overflow-x:auto}
.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:0 28px}
.kv div{display:flex;justify-content:space-between;border-bottom:1px solid #f1f2f4;
padding:5px 0;font-size:13.5px}
.kv span:first-child{color:#4b5563}.kv span:last-child{font-weight:600;text-align:right;
overflow-wrap:anywhere;margin-left:12px}
img{width:100%;height:auto;display:block;margin-top:6px}
.note{color:#6b7280;font-size:12.5px;margin-top:10px}
details{margin-top:12px}summary{cursor:pointer;color:#1d4ed8;font-size:13.5px;
margin-bottom:8px}
footer{color:#9ca3af;font-size:12px;margin-top:22px;text-align:center}
"""


def _img(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _kv(items: Mapping[str, Any]) -> str:
    cells = []
    for k, v in items.items():
        shown = fmt(k, v) if k in _NAMES else html.escape(_plain(v))
        cells.append(f"<div><span>{html.escape(_NAMES.get(k, k))}</span><span>{shown}</span>"
                     "</div>")
    return f'<div class="kv">{"".join(cells)}</div>'


def _plain(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list) and all(isinstance(x, str | int | float) for x in v):
        return "; ".join(str(x) for x in v) if v else "none"
    if isinstance(v, dict | list):
        return json.dumps(v)
    return "n/a" if v is None else str(v)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, list) and len(v) > 8:
            continue  # per-episode histories: drawn, not tabulated
        else:
            out[f"{prefix}{k}"] = v
    return out


def _comparison_table(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    ranked = sorted(rows, key=lambda r: score(r, metric), reverse=True)
    best: dict[str, float] = {}
    for c in TABLE_COLS:
        if c in ("n_trades", "exposure"):
            continue
        vals = [score(r, c) for r in rows]
        finite = [v for v in vals if not math.isnan(v)]
        if finite:
            best[c] = max(finite)
    head = "".join(f"<th>{_NAMES[c]}</th>" for c in TABLE_COLS)
    body = []
    for r in ranked:
        cls = ' class="agent"' if r["strategy"] == "agent" else ""
        name = html.escape(str(r.get("label") or label(str(r["strategy"]))))
        tds = []
        for c in TABLE_COLS:
            is_best = c in best and score(r, c) == best[c] and len(rows) > 1
            tds.append(f'<td{" class=best" if is_best else ""}>{fmt(c, r.get(c), r)}</td>')
        body.append(f"<tr{cls}><td>{name}</td>{''.join(tds)}</tr>")
    return (f'<div class="scroll"><table><thead><tr><th>Strategy</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _metrics_table(columns: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    head = "".join(f"<th>{name}</th>" for name, _ in columns)
    body = []
    for key in METRIC_KEYS:
        if key == "total_return_pct" or not any(key in m for _, m in columns):
            continue
        cells = "".join(f"<td>{fmt(key, m.get(key), m)}</td>" for _, m in columns)
        body.append(f"<tr><td>{_NAMES.get(key, key)}</td>{cells}</tr>")
    return (f'<div class="scroll"><table class="metrics"><thead><tr><th>Metric</th>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


HONEST_KEYS = ("n_markets", "markets_beaten", "bh_sharpe_ratio", "sharpe_vs_bh",
               "sharpe_vs_bh_ci_low", "sharpe_vs_bh_ci_high", "sharpe_vs_bh_p_le_0", "n_seeds",
               "seed_sharpe_mean", "seed_sharpe_std", "seed_sharpe_min", "seed_sharpe_max",
               "val_sharpe", "val_test_gap", "deflated_sharpe", "n_trials", "test_psr")


def _plain_table(path: Path) -> str:
    """A CSV file as an HTML table (numbers to 3 decimals)."""
    with open(path, newline="", encoding="utf-8") as fh:
        data = list(csv.reader(fh))
    if not data:
        return ""

    def cell(v: str) -> str:
        try:
            return f"{float(v):.3f}"
        except ValueError:
            return html.escape(v)

    head = "".join(f"<th>{html.escape(c)}</th>" for c in data[0])
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in data[1:])
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}'
            "</tbody></table></div>")


def _card(title: str, value: str, comment: str = "", sign: float | None = None) -> str:
    cls = "" if sign is None or sign == 0 else (" pos" if sign > 0 else " neg")
    return (f'<div class="card"><div class="k">{title}</div><div class="v{cls}">{value}</div>'
            f'<div class="c">{comment}</div></div>')


def build_report(results_dir: PathLike, *, metric: str = "sharpe_ratio",
                 title: str | None = None) -> Path:
    """(Re)draw ``plots/`` and write ``report.html`` from the files in ``results_dir``.

    Needs ``strategy_comparison.csv`` (from :func:`write_outputs`); everything else is optional
    and shown when present. Returns the report's path.
    """
    from engine import plots

    out_dir = Path(results_dir)
    comp_path = out_dir / COMPARISON_CSV
    if not comp_path.exists():
        raise FileNotFoundError(f"{comp_path} not found: evaluate the experiment first "
                                "(full-workflow, or train --test)")
    rows = read_comparison(comp_path)
    test = _read_json(out_dir / TEST_METRICS_JSON) or next(
        (r for r in rows if r["strategy"] == "agent"), {})
    val = _read_json(out_dir / VAL_METRICS_JSON)
    train = _read_json(out_dir / "train_metrics.json")
    config = _read_json(out_dir / "config.json")
    best_params = _read_json(out_dir / "best_params.json")
    events = list(read_events(out_dir / "events.jsonl"))
    started = next((e for e in reversed(events) if e.get("event") == "run_started"), {})
    episodes = [e for e in events if e.get("event") == "episode"]
    if isinstance(train, Mapping):
        if not episodes and isinstance(train.get("history"), list):
            episodes = [h for h in train["history"] if isinstance(h, Mapping)]
        if not val and isinstance(train.get("val_metrics"), Mapping):
            val = dict(train["val_metrics"])
    trials = [e for e in events if e.get("event") == "trial"]
    experiment = title or str(started.get("experiment") or out_dir.name)

    # Plots.
    plot_dir = out_dir / PLOTS_DIR
    figures: list[tuple[str, Path | None]] = []
    series_path = out_dir / SERIES_FILE
    if series_path.exists():
        s = read_series(series_path)
        times = s["time"]
        names = [r["strategy"] for r in rows if f"{r['strategy']}_return" in s]
        returns = {n: s[f"{n}_return"][:-1] for n in names}
        figures.append(("Equity: agent vs baselines",
                        plots.equity_plot(returns, plot_dir / "equity_curve.png", times=times)))
        figures.append(("Drawdown", plots.drawdown_plot(returns, plot_dir / "drawdown.png",
                                                        times=times)))
        if "agent_position" in s:
            figures.append(("Positions", plots.positions_plot(
                s["close"], s["agent_position"][:-1], plot_dir / "positions.png", times=times)))
    if episodes:
        figures.append(("Training", plots.training_plot(episodes,
                                                        plot_dir / "training_curves.png")))
    if trials:
        tmetric = str((best_params or {}).get("metric") or "score")
        figures.append(("Tuning", plots.tuning_plot(trials, plot_dir / "tuning.png",
                                                    metric=tmetric)))

    # Text.
    sentence, cls = verdict(rows, metric, test)
    by = {r["strategy"]: r for r in rows}
    agent = by.get("agent", {})
    bh = by.get("buy_and_hold", {})
    period = ""
    if test.get("start"):
        period = (f"Test split {html.escape(str(test['start']))} &rarr; "
                  f"{html.escape(str(test.get('end', '')))}, {fmt('n_bars', test.get('n_bars'))}"
                  f" bars")
    info = [x for x in (
        f"agent <b>{html.escape(str(started.get('agent_type') or (config or {}).get('agent_type') or 'n/a'))}</b>",
        f"data <b>{html.escape(str(test.get('data_file') or started.get('data_file') or 'n/a'))}</b>",
        period) if x]

    def tr_card(key: str, title_: str) -> str:
        v = agent.get(key)
        comment = f"buy &amp; hold {fmt(key, bh.get(key), bh)}" if bh else ""
        sign = float(v) if isinstance(v, int | float) and key != "max_drawdown" else None
        return _card(title_, fmt(key, v, agent), comment, sign)

    cards = "".join([
        tr_card("total_return", "Total return"), tr_card("annual_return", "Annual return"),
        tr_card("sharpe_ratio", "Sharpe"), tr_card("max_drawdown", "Max drawdown"),
        _card("Trades", fmt("n_trades", agent.get("n_trades")),
              f"win rate {fmt('win_rate', agent.get('win_rate'))}"),
        _card("Exposure", fmt("exposure", agent.get("exposure")),
              f"turnover {fmt('turnover', agent.get('turnover'))}"),
    ])
    costs = ""
    if "transaction_cost" in test:
        costs = (f"Costs: transaction {test['transaction_cost']:g} + slippage "
                 f"{test.get('slippage', 0):g} per unit of position changed, the same for every "
                 "strategy. ")
    short = ""
    days = test.get("period_days")
    if isinstance(days, int | float) and days < 30:
        span = f"{days * 24 * 60:.0f} minutes" if days < 1 else f"{days:.1f} days"
        short = (f"<b>The test split covers only {span}: annualised figures (annual return, "
                 "volatility, Sharpe, Sortino, Calmar) extrapolate it to a year and mean "
                 "little.</b> ")
    note = (f'<p class="note">{short}{costs}Annualised with {fmt("bars_per_year", test.get("bars_per_year"))} '
            "bars per year, inferred from the data's timestamps. Win rate counts trades (a trade "
            "is a run of bars holding the same non-zero position). n/a: undefined (zero "
            "denominator); &infin;: no losing trade. The random policy is the mean of several "
            "seeds. Sorted by Sharpe.</p>")

    sections = [
        f'<section><h2>Strategies on the test split</h2>{_comparison_table(rows, metric)}{note}'
        "</section>"]
    for _, path in figures:
        if path is not None:
            sections.append(f"<section>{_img(path)}</section>")
    honest = {k: test[k] for k in HONEST_KEYS if k in test}
    if honest:
        sections.append(
            "<section><h2>Skill or luck</h2>"
            f"{_kv(honest)}<p class=\"note\">Sharpe difference against buy-and-hold with a 95% "
            "stationary-bootstrap interval (blocks of bars resampled, agent and buy-and-hold on "
            "the same bars); seeds: test Sharpe of each seed of the ensemble; deflated Sharpe "
            "ratio (Bailey &amp; Lopez de Prado 2014): the probability that the selected "
            "model's validation Sharpe is more than the best of n_trials lucky tries; "
            "validation-test gap: how much the selection flattered the model.</p></section>")
    markets_csv = out_dir / "markets.csv"
    if markets_csv.exists():
        sections.append(f"<section><h2>Per market (test split)</h2>{_plain_table(markets_csv)}"
                        "</section>")
    columns = [("Agent, test", test)]
    if isinstance(val, Mapping) and val:
        columns.append(("Agent, validation", val))
    if bh:
        columns.append(("Buy &amp; hold, test", bh))
    sections.append(f"<section><h2>Metrics</h2>{_metrics_table(columns)}</section>")
    if isinstance(train, Mapping) and train:
        shown = {k: v for k, v in train.items() if k not in ("history", "val_metrics")}
        sections.append(f"<section><h2>Training</h2>{_kv(_flat(shown))}</section>")
    if isinstance(best_params, Mapping) and best_params:
        params = dict(best_params.get("params") or {})
        rest = {k: v for k, v in best_params.items() if k != "params"}
        sections.append("<section><h2>Tuned parameters</h2>"
                        f"{_kv({**params, **_flat(rest)})}</section>")
    if isinstance(config, Mapping) and config:
        key = {k: config[k] for k in KEY_SETTINGS if k in config}
        flat = _flat(config)
        sections.append(
            f"<section><h2>Run settings</h2>{_kv(key)}<details><summary>Full configuration "
            f"({len(flat)} entries)</summary>{_kv(flat)}</details></section>")

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(experiment)} &middot; DQL trading report</title>
<style>{CSS}</style></head>
<body><main>
<header><h1>{html.escape(experiment)}</h1>
<div class="sub">DQL trading report &middot; {' &middot; '.join(info)}</div></header>
<div class="verdict {cls}">{sentence}</div>
<div class="cards">{cards}</div>
{''.join(sections)}
<footer>Generated {now} by dql-trading &middot; results/{html.escape(out_dir.name)}</footer>
</main></body></html>
"""
    path = out_dir / REPORT_HTML
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(doc, encoding="utf-8")
    os.replace(tmp, path)
    return path


__all__ = ["LABELS", "build_report", "fmt", "read_comparison", "read_series", "verdict",
           "write_comparison", "write_outputs", "write_table", "write_test_metrics"]
