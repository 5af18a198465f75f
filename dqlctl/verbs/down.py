"""``dqlctl down RUN``: stop a run and release its machine now (``--orphans``: remove what this
registry created that no live run owns, as ``dqlctl gc``). ``--json``: the final run row as
``show --json`` prints it, or the list of removed resources."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dqlctl.errors import UsageError
from dqlctl.verbs import print_json, resolve_run


def register(sub: Any) -> None:
    p = sub.add_parser("down", help="stop a run and release its machine")
    p.add_argument("run", metavar="RUN", nargs="?")
    p.add_argument("--orphans", action="store_true",
                   help="remove every resource this registry created that no live run owns "
                   "(as `dqlctl gc`)")
    p.add_argument("--provider", action="append", help="with --orphans: only these providers")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")
    p.add_argument("--json", action="store_true",
                   help="print the final run (or the removed resources) as JSON")
    from dqlctl.verbs.gc import add_orphan_flags  # a verb module: standard library only

    add_orphan_flags(p)
    p.set_defaults(func=cmd_down)


def cmd_down(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    if args.orphans:
        return _down_orphans(ctx, args)
    if args.all_owners:
        raise UsageError("--all-owners goes with --orphans")
    if not args.run:
        raise UsageError("name a RUN to stop (or --orphans)")
    run = runs.reconcile(ctx, resolve_run(ctx, args.run))
    if not run.terminal and not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"run {run.id} is {run.state}: add --yes to stop it "
                             "(no terminal to ask on)")
        answer = input(f"stop run {run.id} ({run.name}, {run.state}) and release its machine? "
                       "[y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("left running", file=ctx.stdout)
            return 0
    run = runs.down(ctx, run)
    if args.json:
        print_json(ctx, runs.run_detail(ctx, run))
    else:
        print(f"run {run.id} {run.state}; instance released", file=ctx.stdout)
    return 0


def _down_orphans(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl.verbs.gc import remove_orphans

    return remove_orphans(ctx, args)
