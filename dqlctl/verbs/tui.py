"""``dqlctl tui [RUN]``: open the control center (Textual), on RUN's view when one is given.
``dqlctl`` with no verb opens it too."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("tui", help="open the control center (the default with no verb)",
                       description="Open the control center; with RUN, on that run's view.")
    p.add_argument("run", metavar="RUN", nargs="?",
                   help="a run id, id prefix or name to open on")
    p.set_defaults(func=cmd_tui)


def cmd_tui(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl.tui import run_tui

    _ = ctx.registry  # a registry this dqlctl cannot read is one line before the app starts
    if args.run is None:
        return run_tui(ctx)
    return run_tui(ctx, run=args.run)
