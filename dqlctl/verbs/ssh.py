"""``dqlctl ssh RUN [-- CMD]``: a shell (or CMD) on the run's machine, its host key pinned."""

from __future__ import annotations

import argparse
import subprocess
from typing import Any

from dqlctl.errors import UsageError
from dqlctl.verbs import resolve_run


def register(sub: Any) -> None:
    p = sub.add_parser("ssh", help="a shell on a run's machine (host key pinned)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="run this instead of a shell")
    p.set_defaults(func=cmd_ssh)


def cmd_ssh(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    shell = runs.shell_command(ctx, runs.reconcile(ctx, resolve_run(ctx, args.run)), args.command)
    try:
        return subprocess.call(shell.argv, cwd=shell.cwd)  # noqa: S603
    except FileNotFoundError:
        raise UsageError(f"{shell.argv[0]} is not installed (the OpenSSH client: "
                         "apt install openssh-client)") from None
