"""``dqlctl ps``: runs that are not finished (``--all``: every run), each reconciled first, then
active sweeps' queued members started into free slots; ``--orphans``: resources tagged by dqlctl
that no live run owns (instances, and what a failed launch left: security groups, key pairs,
roles, firewalls...), this registry's and others'."""

from __future__ import annotations

import argparse
from typing import Any

from dqlctl.render import PS_COLUMNS, orphan_table, ps_row, render_table
from dqlctl.verbs import print_json


def register(sub: Any) -> None:
    p = sub.add_parser("ps", help="list runs")
    p.add_argument("-a", "--all", action="store_true", help="include finished runs")
    p.add_argument("--orphans", action="store_true",
                   help="resources tagged by dqlctl that no live run owns (OWNER: this "
                   "registry, or another's)")
    p.add_argument("--provider", action="append", help="with --orphans: only these providers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ps)


def cmd_ps(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    if args.orphans:
        found = runs.orphans(ctx, args.provider, warn=lambda m: print(f"warning: {m}",
                                                                      file=ctx.stderr))
        if args.json:
            print_json(ctx, [{**r.to_dict(), "owned": runs.owned(ctx, r)} for r in found])
        else:
            print(orphan_table(found, ctx.registry_id) if found else "no orphaned resources",
                  file=ctx.stdout)
        return 0
    runs.reconcile_all(ctx)
    from dqlctl.sweeps import look_all

    for problem in look_all(ctx, reconcile=False):  # queued sweep members into free slots
        print(f"warning: {problem}", file=ctx.stderr)
    rows = ctx.registry.list(include_terminal=args.all)
    now = ctx.clock()
    if args.json:
        print_json(ctx, [runs.run_summary(ctx, r, now) for r in rows])
        return 0
    if not rows:
        hint = "" if args.all else " (`dqlctl ps --all` shows finished ones)"
        print(f"no runs{hint}", file=ctx.stdout)
        return 0
    table = [ps_row(r, runs.run_cost(ctx, r, now), now) for r in rows]
    print(render_table(table, PS_COLUMNS), file=ctx.stdout)
    return 0
