"""A sweep's comparison: its finished members judged together, by ``engine.aggregate`` (the one
place that logic lives, shared with ``dql-trading benchmark``).

Members are grouped into *arms*: the same agent type and grid settings, differing only in market
and seed. Each arm is one ``aggregate`` (per market the seed mean and spread of test Sharpe against
buy-and-hold, markets beating it, the bootstrap interval of the mean difference, the verdict) and
one report written by ``write_summary`` (``benchmark.html/.json/.csv``): in the sweep's folder for
a sweep of one arm, in ``<sweep folder>/<arm>/`` for each arm otherwise. Each market row also gets
the seed mean of the members' test return (``test_metrics.json``'s ``total_return``).

Only SUCCEEDED members whose results are on this machine are compared; the others are listed
with why. The heavy imports (numpy, via the engine) happen only here, when a sweep is shown.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dqlctl.context import Context
from dqlctl.registry_sweeps import Sweep
from dqlctl.states import SUCCEEDED, Run


def _arm_label(agent_type: str, settings: dict[str, Any]) -> str:
    parts = [agent_type, *(f"{k}={v}" for k, v in sorted(settings.items()))]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "-".join(parts))


def _total_return(results: Path) -> float | None:
    try:
        value = json.loads((results / "test_metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    got = value.get("total_return") if isinstance(value, dict) else None
    return float(got) if isinstance(got, int | float) else None


def compare(ctx: Context, sweep: Sweep, runs: list[Run], folder: Path) -> dict[str, Any]:
    """See the module docstring (``folder``: the sweep's): ``{"arms": [...], "compared": n,
    "not_compared": [...]}``."""
    from engine.aggregate import aggregate, records_from_run, write_summary

    info = sweep.spec.get("members", [])
    idx = {m.run_id: m.idx for m in ctx.registry.members(sweep.id)}
    arms: dict[str, dict[str, Any]] = {}
    not_compared: list[dict[str, str]] = []
    for run in runs:
        meta = info[idx[run.id]] if idx.get(run.id, len(info)) < len(info) else {}
        results = Path(run.results_uri or "")
        if run.state != SUCCEEDED:
            not_compared.append({"name": run.name, "why": f"{run.state}"})
            continue
        records = records_from_run(results) if results.is_dir() else []
        if not records:
            not_compared.append({"name": run.name, "why": f"no test results in {results}"})
            continue
        label = _arm_label(meta.get("agent_type") or "agent", meta.get("settings") or {})
        arm = arms.setdefault(label, {"label": label, "agent_type": meta.get("agent_type"),
                                      "settings": meta.get("settings") or {}, "records": [],
                                      "returns": {}})
        arm["records"] += records
        for rec in records:
            arm["returns"].setdefault(rec.market, []).append(_total_return(results))
    out: list[dict[str, Any]] = []
    for label, arm in sorted(arms.items()):
        try:
            summary = aggregate(arm["records"], seed=0)
        except ValueError as exc:
            out.append({"label": label, "error": str(exc)})
            continue
        for row in summary["markets"]:
            got = [x for x in arm["returns"].get(row["market"], []) if x is not None]
            row["agent_return_mean"] = sum(got) / len(got) if got else None
        where = folder / label if len(arms) > 1 else folder
        settings = {"sweep": f"{sweep.name} ({sweep.id})", "agent_type": arm["agent_type"],
                    **arm["settings"], "members compared": len(arm["records"])}
        paths = write_summary(summary, where, title=f"Sweep {sweep.name}: {label}",
                              settings=settings)
        out.append({"label": label, "agent_type": arm["agent_type"],
                    "settings": arm["settings"], "summary": summary,
                    "report": str(paths["html"])})
    return {"arms": out, "compared": sum(len(a["records"]) for a in arms.values()),
            "not_compared": not_compared}
