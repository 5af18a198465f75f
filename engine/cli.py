"""``dql-trading`` (also ``python -m engine`` and ``python dql_trading.py``): the engine's CLI.

The predecessor's commands and flags, plus this engine's (``--seed``, ``--device``,
``--results_dir``, ``--resume``, ``--checkpoint_every``, ``--config`` ...). Every flag is a field of
:class:`engine.config.Config`; its help is that field's docstring. Precedence: flags given on
the command line > ``--config FILE`` (TOML or YAML) > defaults.

Bad input is one line on stderr, ``dql-trading: error: ...``, and exit status 2 (no traceback
unless ``--debug``); other exit statuses in :mod:`engine.workflow`. This module imports only the
standard library; torch, numpy and pandas load inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from engine.config import (
    AGENT_TYPES,
    DEVICES,
    EPS_SCHEDULES,
    REWARD_GOALS,
    SEARCH_METHODS,
    SWITCHES,
    BadInput,
    Config,
    ConfigError,
    apply_overrides,
    coerce,
    field_docs,
    field_kind,
    field_names,
    load_config_file,
)

PROG = "dql-trading"
COMMANDS: dict[str, str] = {
    "train": "train an agent on the training split (validation each episode; --test: then test)",
    "evaluate": "evaluate a trained model (<results_dir>/<experiment>/model.pth) on the test split",
    "full-workflow": "tune -> train -> evaluate -> report (--skip_tuning reuses saved parameters)",
    "tune": "search hyperparameters (random or grid) on the validation split",
    "report": "(re)build the report of an evaluated experiment",
    "compare": "compare evaluated experiments side by side",
    "check-dependencies": "show which packages, device and threads the engine would use",
    "profile": "measure env steps/s and gradient updates/s of this configuration on this machine "
               "for --seconds (a short training run, nothing written); the record as JSON; "
               "--fill: the (n_envs, batch) pair that is fastest here",
    "benchmark": "train and test on every market of --data_dir with --seeds seeds, in parallel; "
                 "one comparison report (seed spread, bootstrap CI against buy-and-hold)",
}
CHOICES: dict[str, tuple[str, ...]] = {
    "agent_type": AGENT_TYPES, "reward_goal": REWARD_GOALS, "device": DEVICES,
    "step_on_device": SWITCHES, "compile": SWITCHES,
    "eps_schedule": EPS_SCHEDULES, "search_method": SEARCH_METHODS,
}
EXAMPLES = """examples:
  dql-trading full-workflow --agent_type custom --data_file test_small.csv \\
      --experiment_name local_test --episodes 100
  dql-trading train --data_file STOCKS_GOOGL.csv --agent_type dql --episodes 50 --test
  dql-trading train --config run.toml --resume      # continue from the newest checkpoint
  dql-trading train --data_file 'markets/*.csv' --agent_type custom --test   # one agent, many
  dql-trading benchmark --data_dir markets/ --seeds 3 --agent_type custom --episodes 40
  dql-trading profile --agent_type dql --batch_size 1024 --n_envs 256 --seconds 5
  dql-trading profile --fill --device cuda --seconds 5   # the n_envs and batch fastest here
"""


class UsageError(Exception):
    """A command line that cannot be parsed."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (raised, printed by main)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _flag_type(name: str) -> Any:
    def parse(text: str) -> Any:
        try:
            return coerce(name, text, source=f"--{name}")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    parse.__name__ = field_kind(name)
    return parse


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    docs = field_docs()
    defaults = Config()
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="TOML or YAML file of settings (flags given here override it)")
    for name in field_names():
        kind = field_kind(name)
        default = getattr(defaults, name)
        shown = "agent default" if default is None else (
            ",".join(map(str, default)) if isinstance(default, tuple) else default)
        help_text = f"{docs.get(name, '')} (default: {shown})".replace("%", "%%")
        if kind == "bool":
            p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
        else:
            p.add_argument(f"--{name}", type=_flag_type(name), default=argparse.SUPPRESS,
                           choices=CHOICES.get(name), metavar=name.upper() if name not in
                           CHOICES else None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Deep-Q-learning trading engine: train, evaluate, "
                     "tune and report (the predecessor's commands and flags).",
                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, text in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if name == "check-dependencies":
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="show tracebacks on errors")
            continue
        if name == "compare":
            p.add_argument("--experiments", nargs="+", metavar="NAME", default=[],
                           help="experiments under --results_dir (default: every evaluated one)")
        if name == "profile":
            p.add_argument("--seconds", type=float, default=5.0, metavar="S",
                           help="loop time to measure, after learning has started (default: 5; "
                                "with --fill: per pair)")
            p.add_argument("--fill", action="store_true",
                           help="measure several (n_envs, batch) pairs at this replay ratio "
                                "(this configuration's own, and larger ones for the device) "
                                "and name the fastest; the records as JSON, fastest first")
            p.add_argument("--pairs", type=_pairs, default=None, metavar="N:B,...",
                           help="with --fill: the n_envs:batch pairs to try, e.g. "
                                "64:256,256:1024 (default: by the device)")
        if name == "benchmark":
            p.add_argument("--data_dir", required=True, metavar="DIR",
                           help="folder of market files (*.csv, *.parquet)")
            p.add_argument("--seeds", type=int, default=3, metavar="N",
                           help="seeds per market: seed .. seed+N-1 (default: 3)")
            p.add_argument("--workers", type=int, default=0, metavar="N",
                           help="worker processes, one torch thread each (default: the cores)")
            p.add_argument("--pooled", action="store_true",
                           help="one multi-market agent per seed for each bar interval (daily, "
                                "hourly, ...) instead of one per market")
        _add_config_flags(p)
    return parser


def config_from_args(ns: argparse.Namespace) -> tuple[Config, frozenset[str]]:
    """The Config of a parsed command line (defaults < --config file < flags) and the names
    of the settings given as flags."""
    given = {k: v for k, v in vars(ns).items() if k in set(field_names())}
    cfg = Config()
    path = getattr(ns, "config", None)
    if path:
        cfg = apply_overrides(cfg, load_config_file(path), source=path)
    cfg = apply_overrides(cfg, given, source="command line")
    cfg.validate()
    return cfg, frozenset(given)


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


def _pairs(text: str) -> tuple[tuple[int, int], ...]:
    """``--pairs 64:256,256:1024``: (n_envs, batch) pairs (engine.profile.parse_pairs)."""
    from engine.profile import parse_pairs

    try:
        return parse_pairs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _profile(cfg: Config, ns: argparse.Namespace) -> int:
    """``profile``: one line on stderr, the record (engine.profile) as JSON on stdout; with
    ``--fill``: a line per pair and the recommendation on stderr, the records as JSON."""
    import json

    from engine.profile import describe, fill, fill_lines, measure

    seconds = ns.seconds
    if not seconds > 0:
        raise BadInput(f"--seconds must be more than 0, got {seconds:g}")
    if ns.pairs and not ns.fill:
        raise BadInput("--pairs goes with --fill")
    from engine.data import DataError

    try:
        if ns.fill:
            records = fill(cfg, seconds, pairs=ns.pairs,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
        else:
            record = measure(cfg, seconds)
    except DataError as exc:
        raise BadInput(str(exc)) from None
    if ns.fill:
        print("\n".join(fill_lines(records)), file=sys.stderr, flush=True)
        print(json.dumps(records), flush=True)
        return 0
    print(describe(record), file=sys.stderr, flush=True)
    print(json.dumps(record), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except UsageError as exc:
        return _error(str(exc))
    if not ns.command:
        parser.print_help(sys.stderr)
        return 2
    try:
        if ns.command == "check-dependencies":
            cfg, given = Config(), frozenset()
        else:
            cfg, given = config_from_args(ns)
        debug = debug or cfg.debug
        if ns.command == "benchmark":
            from engine.benchmark import run_benchmark

            return run_benchmark(cfg, ns.data_dir, ns.seeds, workers=ns.workers,
                                 pooled=ns.pooled)
        if ns.command == "profile":
            return _profile(cfg, ns)
        from engine.workflow import run_command

        return run_command(ns.command, cfg, given=given,
                           experiments=list(getattr(ns, "experiments", []) or []))
    except BadInput as exc:
        if debug:
            raise
        return _error(str(exc).strip().splitlines()[0] if str(exc).strip() else "bad input")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line unless --debug
        if debug:
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"{PROG}: error: {type(exc).__name__}: {text} (run with --debug for the "
              "traceback)", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
