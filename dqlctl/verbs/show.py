"""``dqlctl show RUN``: one run in detail, its history included (``--json``: the run's row, its
cost now and its events)."""

from __future__ import annotations

import argparse
from typing import Any

from dqlctl.render import fmt_duration, history_lines, metric_lines, progress_text, safe_text
from dqlctl.verbs import print_json, resolve_run


def register(sub: Any) -> None:
    p = sub.add_parser("show", help="one run in detail")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)


def cmd_show(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    run = runs.reconcile(ctx, resolve_run(ctx, args.run))
    now = ctx.clock()
    if args.json:
        print_json(ctx, runs.run_detail(ctx, run, now))
        return 0
    out = ctx.stdout
    print(f"run {run.id}  {run.name}", file=out)
    fields = [("state", run.state), ("provider", run.provider), ("region", run.region),
              ("instance", ", ".join(run.instance_ids) or "-"),
              ("instance type", run.instance_type), ("spot", "yes" if run.spot else "no"),
              ("age", fmt_duration(now - run.created_at)),
              ("progress", progress_text(run, episode_prefix="ep ")),
              ("cost", f"${runs.run_cost(ctx, run, now):.4f}"), ("results", run.results_uri),
              ("image", safe_text(run.spec.get("image") or "")),
              ("reason", safe_text(run.reason or ""))]
    for key, value in fields:
        if value not in (None, ""):
            print(f"  {key:<14} {value}", file=out)
    for line in metric_lines(run):
        print(line, file=out)
    print("  history:", file=out)
    for line in history_lines(ctx.registry.events(run.id)):
        print(line, file=out)
    return 0
