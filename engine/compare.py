"""Compare experiments side by side from their ``test_metrics.json`` (``dql-trading compare``).

:func:`compare_experiments` returns the table as rows (plain dicts, one per experiment, in the
order asked) and optionally writes it as CSV; :func:`format_table` renders it as text for a
terminal. Light: the standard library and numpy (through engine.metrics).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.metrics import METRIC_KEYS

PathLike = str | os.PathLike[str]

META_KEYS = ("data_file", "start", "end", "transaction_cost", "slippage")
SHOWN = (("total_return", "Return", "pct"), ("annual_return", "Annual", "pct"),
         ("sharpe_ratio", "Sharpe", "num"), ("sortino_ratio", "Sortino", "num"),
         ("max_drawdown", "MaxDD", "pct"), ("win_rate", "Win", "pct"),
         ("n_trades", "Trades", "int"), ("buy_and_hold_total_return", "B&H", "pct"),
         ("excess_vs_buy_and_hold_pp", "vs B&H pp", "num"))


def _bh_total_return(path: Path) -> float | None:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("strategy") == "buy_and_hold" and row.get("total_return"):
                    return float(row["total_return"])
    except (FileNotFoundError, ValueError):
        return None
    return None


def compare_experiments(results_root: PathLike, names: Sequence[str], *,
                        out_csv: PathLike | None = None) -> list[dict[str, Any]]:
    """One row per experiment ``results_root/<name>``: its test metrics (every key of
    :data:`engine.metrics.METRIC_KEYS`), its period and costs, buy-and-hold's total return on
    the same split and the agent's excess over it in percentage points.

    Raises FileNotFoundError naming every experiment without ``test_metrics.json``.
    """
    root = Path(results_root)
    missing = [n for n in names if not (root / n / "test_metrics.json").is_file()]
    if missing:
        raise FileNotFoundError(f"no test_metrics.json for {', '.join(missing)} under {root} "
                                "(run full-workflow or train --test first)")
    rows: list[dict[str, Any]] = []
    for name in names:
        metrics = json.loads((root / name / "test_metrics.json").read_text(encoding="utf-8"))
        row: dict[str, Any] = {"experiment": name}
        row.update({k: metrics.get(k) for k in META_KEYS})
        row.update({k: metrics.get(k) for k in METRIC_KEYS})
        bh = _bh_total_return(root / name / "strategy_comparison.csv")
        row["buy_and_hold_total_return"] = bh
        tr = metrics.get("total_return")
        row["excess_vs_buy_and_hold_pp"] = (100.0 * (tr - bh) if isinstance(tr, int | float)
                                            and bh is not None else None)
        rows.append(row)
    if out_csv is not None:
        cols = list(rows[0]) if rows else ["experiment"]
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        with open(out_csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for row in rows:
                w.writerow(["" if row.get(c) is None else row.get(c) for c in cols])
    return rows


def _cell(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if kind == "pct":
        return f"{100 * float(value):.2f}%"
    if kind == "int":
        return f"{int(value):,}"
    return f"{float(value):.2f}"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison as an aligned text table (experiment, then the headline metrics)."""
    header = ["Experiment", *(title for _, title, _ in SHOWN)]
    body = [[str(r.get("experiment", "")), *(_cell(r.get(k), kind) for k, _, kind in SHOWN)]
            for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for line in [header, *body]:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:],
                                                                          strict=True)]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
