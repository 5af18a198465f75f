"""``dqlctl logs RUN [-f] [-n N]``: print a run's engine log, or follow it to the run's end.

The lines are printed without the terminal escape sequences and control characters a VM or an
engine may have written (``render.safe_text``), to a terminal and into a pipe alike."""

from __future__ import annotations

import argparse
from typing import Any

from dqlctl.errors import UsageError
from dqlctl.render import safe_text
from dqlctl.verbs import resolve_run


def register(sub: Any) -> None:
    p = sub.add_parser("logs", help="print or follow a run's log")
    p.add_argument("run", metavar="RUN")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    p.add_argument("-n", "--tail", type=int, help="only the last N lines")
    p.set_defaults(func=cmd_logs)


def cmd_logs(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    if args.tail is not None and args.tail < 0:
        raise UsageError(f"--tail must be 0 or more, got {args.tail}")
    run = runs.reconcile(ctx, resolve_run(ctx, args.run))
    try:
        for line in runs.iter_log(ctx, run, args.follow, args.tail):
            print(safe_text(line), file=ctx.stdout, flush=args.follow)
    except KeyboardInterrupt:
        return 130
    return 0
