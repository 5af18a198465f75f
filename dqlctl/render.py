"""Rendering runs and events as text, for the CLI verbs and the TUI: tables, engine events as one
line, a run's result, durations and progress. Data in, strings out; nothing here reads the
registry or a provider.

Standard library only: ``dqlctl --help`` and the headless verbs import this.
"""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path
from typing import Any, TextIO

# The few figures a summary shows (`dqlctl show RUN --json` and test_metrics.json have them all).
SUMMARY_METRICS = ("total_return", "annual_return", "annual_volatility", "sharpe_ratio",
                   "sortino_ratio", "max_drawdown", "win_rate", "n_trades", "exposure")

PS_COLUMNS = ("ID", "NAME", "PROVIDER", "STATE", "PROGRESS", "AGE", "COST", "RESULT")
ORPHAN_COLUMNS = ("PROVIDER", "KIND", "ID", "RUN", "OWNER", "REGION")
SWEEP_MEMBER_COLUMNS = ("RUN", "NAME", "MARKET", "AGENT", "SEED", "STATE", "RESULT")
SWEEP_MARKET_COLUMNS = ("MARKET", "SEEDS", "SHARPE MEAN", "SPREAD (SD)", "B&H SHARPE", "VS B&H",
                        "95% CI", "BEATS B&H", "BEST OTHER BASELINE", "BEATS ALL",
                        "RETURN MEAN")


# What a VM or an engine writes must not drive the operator's terminal: escape sequences (CSI,
# OSC such as a window title or a hyperlink, DCS/APC/PM/SOS strings, two-character ESC codes,
# their 8-bit C1 forms) and every other control character but newline and tab are removed.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"                  # CSI ... final byte
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)"  # OSC/DCS/... ST
    r"|\x1b[ -/]*[0-~]?",                                 # other ESC sequences (or a lone ESC)
    re.DOTALL)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe_text(text: str) -> str:
    """``text`` with terminal escape sequences and control characters removed (newline and tab
    kept): what a run's log or reason may be printed as, on a terminal or into a pipe."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def fmt(value: Any, spec: str = ".4g") -> str:
    """A figure: floats to ``spec``, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def fmt_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``, ``1d04h``."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"


def fmt_hours(hours: float | None) -> str:
    """An estimated duration given in hours, as ``fmt_duration`` writes it; ``n/a`` unknown."""
    return "n/a" if hours is None else fmt_duration(hours * 3600)


def fmt_money(value: float | None) -> str:
    """``$12.34``; under a dollar to the cent's hundredth (``$0.0123``): runs are cheap."""
    if value is None:
        return "-"
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


def _machine(offer: Any) -> str:
    return f"{offer.provider} {offer.region} {offer.instance_type}"


def split_text(plan: Any, here: bool = False) -> str:
    """A split of a run that tunes first (``providers.prices.estimate.PhasePlan``): "tune on X
    ($a, h1), train on Y ($b, h2): $a+b vs $c on one machine", and whether it is cheaper; when
    it is, the two launches that run it (``launch --command tune`` on X, then ``launch
    --command train --params-from`` that run on Y), on lines of their own, or after "; " with
    ``here``: the training machine is the one machine (a launch plan's row): "train here"."""
    def part(offer: Any) -> str:
        return (f"{fmt_money(offer.extra['estimate']['total_usd'])}, "
                f"{fmt_hours(offer.extra['duration']['hours'])}")

    def on(offer: Any) -> str:
        return (f"--provider {offer.provider} --region {offer.region} --instance-type "
                f"{offer.instance_type}")

    one = plan.single.extra["estimate"]["total_usd"]
    text = (f"tune on {_machine(plan.tune)} ({part(plan.tune)}), "
            f"{'train here' if here else 'train on ' + _machine(plan.train)} "
            f"({part(plan.train)})")
    where = "all here" if here else "on one machine"
    if plan.cheaper:
        tune = f"dqlctl launch --command tune {on(plan.tune)} ..."
        train = f"dqlctl launch --command train --params-from <that run> {on(plan.train)} ..."
        run = (f"; run it: `{tune}`, then `{train}`" if here
               else f"\n  run it: {tune}\n  then:   {train}")
        return (f"{text}: {fmt_money(plan.split_usd)} vs {fmt_money(one)} {where}, "
                f"{fmt_money(one - plan.split_usd)} less (two bring-ups counted){run}")
    return f"{text} would cost {fmt_money(plan.split_usd)} vs {fmt_money(one)} {where} " \
           "(two bring-ups)"


def progress_text(run: Any, episode_prefix: str = "") -> str:
    """Where a run is: ``3/20`` episodes, ``trial 4/20`` while tuning, else its stage."""
    p = run.progress or {}
    if p.get("episode"):
        return f"{episode_prefix}{p['episode']}/{p.get('episodes') or '?'}"
    if p.get("trial"):
        return f"trial {p['trial']}/{p.get('trials') or '?'}"
    return str(p.get("stage") or "-")


def result_text(run: Any) -> str:
    """The RESULT column: the test Sharpe ratio, or why the run failed."""
    test = (run.metrics or {}).get("test") or {}
    if "sharpe_ratio" in test and test["sharpe_ratio"] is not None:
        return f"sharpe {test['sharpe_ratio']:.2f}"
    if run.reason and run.state == "FAILED":
        return safe_text(run.reason)[:40]
    return "-"


def render_table(rows: list[list[str]], headers: tuple[str, ...]) -> str:
    """Left-aligned columns, two spaces apart, a header line first."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def sweep_member_cells(member: dict[str, Any]) -> list[str]:
    """One member of ``sweeps.summary`` as cells (``SWEEP_MEMBER_COLUMNS``): its result is the
    test Sharpe, or for a member that ended badly its exit code and why."""
    if member.get("test_sharpe") is not None:
        result = f"sharpe {member['test_sharpe']:.2f}"
    elif member["state"] in ("FAILED", "CANCELLED") and member.get("reason"):
        code = member.get("exit_code")
        result = (f"exit {code}: " if code not in (None, 0) else "") + \
            safe_text(member["reason"])[:50]
    else:
        result = "-"
    return [member["run_id"], safe_text(member["name"]), safe_text(member["market"] or "-"),
            member["agent_type"] or "-", str(member["seed"]), member["state"], result]


def sweep_market_cells(row: dict[str, Any]) -> list[str]:
    """One market of a sweep comparison (``engine.aggregate``) as cells
    (``SWEEP_MARKET_COLUMNS``)."""
    best = "-"
    if row.get("best_baseline"):
        best = f"{safe_text(str(row['best_baseline']))} {fmt(row.get('best_baseline_sharpe'), '.3f')}"
    return [safe_text(row["market"]), str(row["n_seeds"]), fmt(row["agent_sharpe_mean"], ".3f"),
            fmt(row["agent_sharpe_std"], ".3f"), fmt(row["bh_sharpe"], ".3f"),
            fmt(row["sharpe_vs_bh"], "+.3f"),
            f"[{fmt(row['ci_low'], '+.3f')}, {fmt(row['ci_high'], '+.3f')}]",
            "yes" if row["beats_bh"] else "no", best, "yes" if row.get("beats_all") else "no",
            fmt(row.get("agent_return_mean"), "+.4f")]


def sweep_vms_text(vms: list[dict[str, Any]]) -> str | None:
    """A sweep pool's VMs in one line ("2 VMs: i-1 BUSY (3 members), i-2 GONE"); None for a
    sweep without a pool."""
    if not vms:
        return None
    return f"{len(vms)} VM(s): " + ", ".join(
        f"{safe_text(v['instance_id'])} {v['state']} ({v['members']} member"
        f"{'s' if v['members'] != 1 else ''})" for v in vms)


def sweep_arm_lines(summary: dict[str, Any]) -> list[str]:
    """What a sweep comparison concludes over its markets, a line each."""
    s = summary
    return [f"markets beating buy-and-hold: {s['markets_beaten']} of {s['n_markets']}; "
            f"mean Sharpe difference {s['sharpe_vs_bh']:+.3f}, 95% CI "
            f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]",
            f"markets beating every baseline: {s.get('markets_beating_all', 0)} of "
            f"{s['n_markets']}",
            f"verdict: {s['verdict']}"]


def ps_row(run: Any, cost_usd: float, now: float) -> list[str]:
    """One run as a ``dqlctl ps`` row (``PS_COLUMNS``)."""
    return [run.id, run.name, run.provider, run.state, progress_text(run, episode_prefix="ep "),
            fmt_duration(now - run.created_at), f"${cost_usd:.2f}", result_text(run)]


def orphan_table(resources: list[Any], registry_id: str) -> str:
    """Resources no live run owns, as a table (``ps --orphans``, ``gc``): OWNER is ``this``
    (this registry made it), another registry's id, or ``?`` (no owner tag)."""
    def owner(r: Any) -> str:
        return "this" if r.owner == registry_id else (r.owner or "?")

    rows = [[r.provider, r.kind, r.resource_id, r.run_id or "-", owner(r), r.region or "-"]
            for r in resources]
    return render_table(rows, ORPHAN_COLUMNS)


def format_event(ev: dict[str, Any]) -> str | None:
    """An engine event as one line for a terminal (``safe_text``), or None for events not
    shown."""
    line = _format_event(ev)
    return safe_text(line) if line is not None else None


def _format_event(ev: dict[str, Any]) -> str | None:
    kind = ev.get("event")
    if kind == "run_started":
        return (f"engine started: {ev.get('command', '')} agent={ev.get('agent_type')} "
                f"episodes={ev.get('episodes')} device={ev.get('device')}")
    if kind == "stage":
        return f"== {ev.get('name')} =="
    if kind == "episode":
        sps = ev.get("steps_per_s")
        return (f"episode {ev.get('episode')}/{ev.get('episodes')}  "
                f"reward {fmt(ev.get('reward'))}  loss {fmt(ev.get('loss'))}  "
                f"eps {fmt(ev.get('epsilon'), '.3f')}  val_sharpe {fmt(ev.get('val_sharpe'), '.3f')}"
                + (f"  {sps:,.0f} steps/s" if isinstance(sps, int | float) else ""))
    if kind == "trial":
        return f"trial {ev.get('trial')}/{ev.get('trials')}  score {fmt(ev.get('score'))}"
    if kind == "checkpoint":
        return f"checkpoint at episode {ev.get('episode')}"
    if kind == "warning":
        return f"warning: {ev.get('message')}"
    if kind == "evaluation":
        m = ev.get("metrics") or {}
        keys = [k for k in ("total_return", "sharpe_ratio", "max_drawdown") if k in m]
        body = "  ".join(f"{k} {fmt(m[k])}" for k in keys)
        return f"evaluation ({ev.get('split', 'test')}): {body}"
    if kind == "failed":
        return f"engine failed: {ev.get('reason')}"
    if kind == "finished":
        return "engine finished"
    return None


def history_lines(events: list[dict[str, Any]]) -> list[str]:
    """A run's registry events as its history, oldest first (``dqlctl show``). Events that
    happened on the run's machine (a preemption notice, the checkpoint after it) carry the
    machine's time and are read later, so the order is the time's, then the record's."""
    lines = []
    for ev in sorted(events, key=lambda e: (e["ts"], e["id"])):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev["ts"]))
        what = ev["to_state"] or ev["kind"]
        why = safe_text(_history_detail(ev))
        lines.append(f"    {stamp}  {what}" + (f"  ({why})" if why else ""))
    return lines


def _history_detail(ev: dict[str, Any]) -> str:
    data = ev.get("data") or {}
    if ev.get("to_state") is None and ev.get("kind") == "notice":
        due = data.get("deadline")
        at = (f", due {time.strftime('%H:%M:%S', time.localtime(due))}"
              if isinstance(due, int | float) else "")
        return f"{data.get('cloud', '?')} {data.get('notice', 'preempt')}: " \
               f"{data.get('action', '?')}{at}"
    if ev.get("to_state") is None and ev.get("kind") == "checkpoint":
        after = data.get("after_notice_s")
        return (f"episode {data.get('episode')}, uploaded"
                + (f" {after:.1f} s after the notice" if isinstance(after, int | float) else "")
                + (f": {data['path']}" if data.get("path") else ""))
    return str(data.get("reason") or "")


def metric_lines(run: Any) -> list[str]:
    """``  test metrics:`` and one line per summary metric the run has (none: no lines)."""
    test = (run.metrics or {}).get("test") or {}
    shown = [k for k in SUMMARY_METRICS if k in test]
    if not shown:
        return []
    lines = ["  test metrics:", *(f"    {key:<20} {fmt(test[key])}" for key in shown)]
    if test.get("bh_sharpe_ratio") is not None:
        lines.append(f"    {'buy & hold sharpe':<20} {fmt(test['bh_sharpe_ratio'])}")
    if test.get("verdict"):     # the engine's honest sentence: CI, seeds, deflated Sharpe
        lines += ["  verdict:", *("    " + line for line in textwrap.wrap(
            safe_text(str(test["verdict"])), 92))]
    return lines


def print_run_result(run: Any, out: TextIO) -> None:
    """How a run ended: state, reason, test metrics, where its results and report are."""
    print(f"run {run.id} ({run.name}) {run.state}", file=out)
    if run.reason:
        print(f"  reason: {safe_text(run.reason)}", file=out)
    for line in metric_lines(run):
        print(line, file=out)
    if run.results_uri:
        print(f"  results: {run.results_uri}", file=out)
        report = Path(run.results_uri) / "report.html"
        if "://" not in run.results_uri and report.exists():
            print(f"  report:  {report}", file=out)
