"""``dqlctl stop RUN``: stop a run gracefully (checkpoint, collect the results, release the
machine). ``--json``: the final run row as ``show --json`` prints it."""

from __future__ import annotations

import argparse
from typing import Any

from dqlctl.errors import UsageError
from dqlctl.render import safe_text
from dqlctl.verbs import print_json, resolve_run


def register(sub: Any) -> None:
    p = sub.add_parser("stop", help="stop a run gracefully: checkpoint, collect, release")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--wait", type=float, default=120.0, metavar="S",
                   help="seconds to wait for the checkpoint before releasing anyway (120)")
    p.add_argument("--json", action="store_true", help="print the final run as JSON")
    p.set_defaults(func=cmd_stop)


def cmd_stop(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    if args.wait <= 0:
        raise UsageError(f"--wait must be a positive number of seconds, got {args.wait}")
    run = runs.stop(ctx, resolve_run(ctx, args.run), wait_s=args.wait)
    if args.json:
        print_json(ctx, runs.run_detail(ctx, run))
    else:
        print(f"run {run.id} {run.state}" + (f": {safe_text(run.reason)}" if run.reason else ""),
              file=ctx.stdout)
    return 0
