"""``dqlctl``: parsing, dispatch to the verb modules (``dqlctl.verbs``), errors as exit codes.
The TUI opens when no verb is given. Only the entry point imports this module.

Standard library only at import time: ``dqlctl --help`` and ``dqlctl ps`` must not load textual,
torch, pandas, numpy or a cloud SDK (a test checks ``sys.modules``). Each verb imports what it
needs when it runs.

Exit codes: 0 success, 1 the run failed, 2 bad usage or input, 3 provider or credential error.
Errors are one line on stderr (``dqlctl: error: ...``); ``--debug`` shows the traceback and
turns on DEBUG logging of the cloud SDKs and paramiko (their loggers redact credentials).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from dqlctl import __version__
from dqlctl.errors import EXIT_PROVIDER, EXIT_USAGE, DqlctlError

EPILOG = """\
examples:
  dqlctl launch --data STOCKS_GOOGL.csv --agent-type custom --episodes 20 --follow
  dqlctl ps                      runs that are not finished (--all for every run)
  dqlctl logs RUN -f             follow a run's log to its end
  dqlctl stop RUN                checkpoint, collect the results, release the machine
  dqlctl down RUN                release the machine now
  dqlctl ssh RUN [-- CMD]        a shell (or CMD) on the run's machine
  dqlctl tui [RUN]               the control center (also: dqlctl with no verb)

RUN is a run id, a unique prefix of one, or a run name (the newest of that name).
Runs are kept in $DQLCTL_HOME (default ~/.local/share/dqlctl).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(EXIT_USAGE, f"dqlctl: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``dqlctl`` parser: global flags, then one sub-parser per module in ``VERB_MODULES``."""
    import importlib

    from dqlctl.verbs import VERB_MODULES

    parser = _Parser(prog="dqlctl", description="Train and watch deep-Q-learning trading runs "
                     "on any cloud, or none.", epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dqlctl {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks on errors; log the cloud SDKs at DEBUG on stderr")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for module in VERB_MODULES:
        importlib.import_module(module).register(sub)
    return parser


# Loggers ``--debug`` turns to DEBUG: the cloud SDKs, their HTTP client, and paramiko (SSH).
DEBUG_LOGGERS = ("boto3", "botocore", "google", "azure", "paramiko", "urllib3")


def enable_debug_logging(stream: TextIO) -> None:
    """DEBUG records of ``DEBUG_LOGGERS`` on ``stream``. The SDKs redact auth headers and keys
    in what they log; dqlctl adds no logging of credentials."""
    import logging

    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.set_name("dqlctl-debug")
    for name in DEBUG_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        for old in [h for h in logger.handlers if h.get_name() == "dqlctl-debug"]:
            logger.removeHandler(old)
        logger.addHandler(handler)


def _split_engine_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: list[str] | None = None, ctx: Any = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, engine_args = _split_engine_args(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "engine_args", None) is not None:
        args.engine_args = list(args.engine_args) + engine_args
    elif args.verb == "ssh":
        args.command = [*args.command, *engine_args]
    elif engine_args:
        parser.error("engine arguments after -- only go with `launch`")
    if args.verb is None:
        return _open_tui(parser)
    from dqlctl.context import Context

    ctx = ctx or Context(debug=args.debug)
    if args.debug:
        enable_debug_logging(ctx.stderr)
    try:
        return args.func(ctx, args)
    except DqlctlError as exc:
        if args.debug:
            raise
        print(f"dqlctl: error: {exc}", file=ctx.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dqlctl: interrupted", file=ctx.stderr)
        return 130
    except Exception as exc:  # one line for the operator; --debug for the traceback
        if args.debug:
            raise
        from providers.base import ProviderError

        if isinstance(exc, ProviderError):
            print(f"dqlctl: error: {exc}", file=ctx.stderr)
            return EXIT_PROVIDER
        print(f"dqlctl: error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
              file=ctx.stderr)
        return 1
    finally:
        ctx.close()


def entry() -> int:
    """The ``dqlctl`` command: ``main`` under a one-command process's garbage-collector policy
    (``providers.oneshot``: fewer collections while SDKs load, none of what is alive at exit)."""
    from providers.oneshot import run_once

    return run_once(main)


def _open_tui(parser: argparse.ArgumentParser) -> int:
    try:
        from dqlctl.tui import run_tui  # type: ignore[import-not-found]
    except ImportError:
        parser.print_help()
        return 0
    from dqlctl.context import Context

    ctx = Context()
    try:
        _ = ctx.registry  # a registry this dqlctl cannot read: one line, not a broken app
    except DqlctlError as exc:
        print(f"dqlctl: error: {exc}", file=ctx.stderr)
        return exc.exit_code
    return run_tui(ctx)


if __name__ == "__main__":
    sys.exit(main())
