"""``dqlctl``: the headless verbs (the TUI opens when no verb is given).

Standard library only at import time: ``dqlctl --help`` and ``dqlctl ps`` must not load textual,
torch, pandas, numpy or a cloud SDK (a test checks ``sys.modules``). Each verb imports what it
needs when it runs.

Exit codes: 0 success, 1 the run failed, 2 bad usage or input, 3 provider or credential error.
Errors are one line on stderr (``dqlctl: error: ...``); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

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

RUN is a run id, a unique prefix of one, or a run name (the newest of that name).
Runs are kept in $DQLCTL_HOME (default ~/.local/share/dqlctl).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(EXIT_USAGE, f"dqlctl: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dqlctl", description="Train and watch deep-Q-learning trading runs "
                     "on any cloud, or none.", epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dqlctl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    p = sub.add_parser("launch", help="start a training run",
                       description="Start a training run on a provider (default: this machine).")
    p.add_argument("--provider", default="local", help="local (default), aws, gcp, azure, or "
                   "auto: the cheapest priced offer for --gpu across the clouds")
    p.add_argument("--data", default="STOCKS_GOOGL.csv",
                   help="market data: a path, a bare name under data/ or $DQL_DATA_DIR, or a URI")
    p.add_argument("--agent-type", default="custom", help="dql, custom (default) or memory")
    p.add_argument("--episodes", type=int, default=20, help="training episodes (default 20)")
    p.add_argument("--name", help="a name for the run (default: from the data and agent)")
    p.add_argument("--command", default="full-workflow", help="engine command: full-workflow "
                   "(default: train, evaluate, report) or train")
    p.add_argument("--tune", action="store_true", help="run the tuning stage first")
    p.add_argument("--seed", type=int, help="random seed for the engine")
    p.add_argument("--runtime", default="auto",
                   help="auto (container if the engine image is present, else native), "
                        "native, docker or podman")
    p.add_argument("--region")
    p.add_argument("--instance-type")
    p.add_argument("--gpu", help="GPU type and count, e.g. T4:1")
    p.add_argument("--on-demand", dest="spot", action="store_false",
                   help="use on-demand capacity (spot is the default where there is one)")
    p.add_argument("--max-price", type=float, help="spot: the most to pay per hour (USD)")
    p.add_argument("--max-cost", type=float, help="stop the run (it checkpoints first) before "
                   "it has cost more than this many USD")
    p.add_argument("--max-recoveries", type=int, default=3, metavar="N",
                   help="relaunch a spot run taken back from its last checkpoint up to N times "
                   "(needs --results-dir on a bucket; 0: never; default 3)")
    p.add_argument("--image-id", help="VM image: an AMI id on AWS, an image or family URL on "
                   "GCP, a publisher:offer:sku:version URN on Azure (default: a GPU image)")
    p.add_argument("--image", help="engine container image for --runtime docker")
    p.add_argument("--ssh-cidr", help="who may reach the VM's port 22 (default: this "
                   "machine's public address/32)")
    p.add_argument("--keep", action="store_true", help="leave the VM up when the run ends")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be created, create nothing")
    p.add_argument("--results-dir", help="where results go (default: the run's folder)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="stream progress until the run ends; exit with its status")
    p.add_argument("--json", action="store_true", help="print the run as JSON")
    p.add_argument("engine_args", nargs="*", metavar="-- ENGINE ARGS",
                   help="extra engine flags after --, e.g. -- --n_envs 32")

    p = sub.add_parser("ps", help="list runs")
    p.add_argument("-a", "--all", action="store_true", help="include finished runs")
    p.add_argument("--orphans", action="store_true",
                   help="instances tagged by dqlctl that no live run owns")
    p.add_argument("--provider", action="append", help="with --orphans: only these providers")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("show", help="one run in detail")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("logs", help="print or follow a run's log")
    p.add_argument("run", metavar="RUN")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    p.add_argument("-n", "--tail", type=int, help="only the last N lines")

    p = sub.add_parser("down", help="stop a run and release its machine")
    p.add_argument("run", metavar="RUN", nargs="?")
    p.add_argument("--orphans", action="store_true",
                   help="terminate every instance tagged by dqlctl that no live run owns")
    p.add_argument("--provider", action="append", help="with --orphans: only these providers")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")

    p = sub.add_parser("stop", help="stop a run gracefully: checkpoint, collect, release")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--wait", type=float, default=120.0, metavar="S",
                   help="seconds to wait for the checkpoint before releasing anyway (120)")

    p = sub.add_parser("ssh", help="a shell on a run's machine (host key pinned)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="run this instead of a shell")

    p = sub.add_parser("check", help="what each provider needs and whether it is there")
    p.add_argument("providers", nargs="*", metavar="PROVIDER")
    p.add_argument("--json", action="store_true")

    # Verbs that live in their own modules. Each module imports only the standard library at
    # its top and defines `register(subparsers)`, which adds its parser and sets `func`.
    import importlib

    for module in VERB_MODULES:
        importlib.import_module(module).register(sub)
    return parser


# Modules that add verbs (see build_parser); each sets `func=cmd(ctx, args) -> int` as default.
VERB_MODULES: tuple[str, ...] = ("dqlctl.image_cmd", "dqlctl.cost_cmd", "dqlctl.sync_cmd")


# -- rendering -----------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def format_event(ev: dict[str, Any]) -> str | None:
    kind = ev.get("event")
    if kind == "run_started":
        return (f"engine started: {ev.get('command', '')} agent={ev.get('agent_type')} "
                f"episodes={ev.get('episodes')} device={ev.get('device')}")
    if kind == "stage":
        return f"== {ev.get('name')} =="
    if kind == "episode":
        sps = ev.get("steps_per_s")
        return (f"episode {ev.get('episode')}/{ev.get('episodes')}  "
                f"reward {_fmt(ev.get('reward'))}  loss {_fmt(ev.get('loss'))}  "
                f"eps {_fmt(ev.get('epsilon'), '.3f')}  val_sharpe {_fmt(ev.get('val_sharpe'), '.3f')}"
                + (f"  {sps:,.0f} steps/s" if isinstance(sps, int | float) else ""))
    if kind == "trial":
        return f"trial {ev.get('trial')}/{ev.get('trials')}  score {_fmt(ev.get('score'))}"
    if kind == "checkpoint":
        return f"checkpoint at episode {ev.get('episode')}"
    if kind == "warning":
        return f"warning: {ev.get('message')}"
    if kind == "evaluation":
        m = ev.get("metrics") or {}
        keys = [k for k in ("total_return", "sharpe_ratio", "max_drawdown") if k in m]
        body = "  ".join(f"{k} {_fmt(m[k])}" for k in keys)
        return f"evaluation ({ev.get('split', 'test')}): {body}"
    if kind == "failed":
        return f"engine failed: {ev.get('reason')}"
    if kind == "finished":
        return "engine finished"
    return None


def _print_run_result(ctx: Any, run: Any) -> None:
    out = ctx.stdout
    print(f"run {run.id} ({run.name}) {run.state}", file=out)
    if run.reason:
        print(f"  reason: {run.reason}", file=out)
    test = (run.metrics or {}).get("test") or {}
    shown = [k for k in SUMMARY_METRICS if k in test]
    if shown:
        print("  test metrics:", file=out)
        for key in shown:
            print(f"    {key:<20} {_fmt(test[key])}", file=out)
    if run.results_uri:
        print(f"  results: {run.results_uri}", file=out)
        from pathlib import Path

        report = Path(run.results_uri) / "report.html"
        if "://" not in run.results_uri and report.exists():
            print(f"  report:  {report}", file=out)


# The few figures a summary shows (`dqlctl show RUN --json` and test_metrics.json have them all).
SUMMARY_METRICS = ("total_return", "annual_return", "annual_volatility", "sharpe_ratio",
                   "sortino_ratio", "max_drawdown", "win_rate", "n_trades", "exposure")


PS_COLUMNS = ("ID", "NAME", "PROVIDER", "STATE", "PROGRESS", "AGE", "COST", "RESULT")


def _progress(run: Any) -> str:
    from dqlctl.runs import progress_text

    return progress_text(run, episode_prefix="ep ")


def _result(run: Any) -> str:
    test = (run.metrics or {}).get("test") or {}
    if "sharpe_ratio" in test and test["sharpe_ratio"] is not None:
        return f"sharpe {test['sharpe_ratio']:.2f}"
    if run.reason and run.state == "FAILED":
        return run.reason[:40]
    return "-"


def render_table(rows: list[list[str]], headers: tuple[str, ...]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


# -- verbs ---------------------------------------------------------------------------------------


def cmd_launch(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    req = runs.LaunchRequest(
        provider=args.provider, data=args.data, agent_type=args.agent_type,
        episodes=args.episodes, name=args.name, command=args.command, tune=args.tune,
        runtime=args.runtime, region=args.region, instance_type=args.instance_type,
        gpu=args.gpu, spot=args.spot, seed=args.seed, results_dir=args.results_dir,
        max_price=args.max_price, image=args.image, image_id=args.image_id,
        ssh_cidr=args.ssh_cidr, keep=args.keep, max_cost=args.max_cost,
        max_recoveries=args.max_recoveries, engine_args=args.engine_args)
    quiet = args.json
    if args.dry_run:
        plan = runs.plan(ctx, req)
        if args.json:
            print(json.dumps(plan, indent=2), file=ctx.stdout)
        else:
            print("dry run: nothing is created. `launch` without --dry-run would:", file=ctx.stdout)
            for key, value in plan.items():
                if value is not None:
                    print(f"  {key.replace('_', ' '):<16} {value}", file=ctx.stdout)
        return 0

    def on_state(run: Any) -> None:
        if not quiet:
            print(f"{run.id}  {run.state}", file=ctx.stderr)

    run = runs.launch(ctx, req, on_state=on_state)
    if not args.follow:
        if args.json:
            print(json.dumps(runs.run_summary(ctx, run, ctx.clock()), indent=2), file=ctx.stdout)
        else:
            print(f"launched run {run.id} ({run.name}); follow it with: dqlctl logs -f {run.id}",
                  file=ctx.stdout)
        return 0

    def on_event(ev: dict[str, Any]) -> None:
        line = format_event(ev)
        if line and not quiet:
            print(line, file=ctx.stdout, flush=True)

    try:
        run = runs.follow(ctx, run, on_event=on_event)
    except KeyboardInterrupt:
        print(f"\ndetached: run {run.id} keeps going. `dqlctl logs -f {run.id}` to follow, "
              f"`dqlctl down {run.id}` to stop it.", file=ctx.stderr)
        return 130
    if args.json:
        print(json.dumps(runs.run_summary(ctx, run, ctx.clock()), indent=2), file=ctx.stdout)
    else:
        if run.state != "SUCCEEDED":
            tail = runs.log_tail(ctx, run, 10)
            if tail:
                print("last lines of the engine log:", file=ctx.stdout)
                for line in tail:
                    print(f"  | {line}", file=ctx.stdout)
        _print_run_result(ctx, run)
    return runs.run_exit_code(run)


def _orphan_rows(instances: list[Any]) -> str:
    rows = [[i.provider, i.instance_id, i.tags.get("dqlctl:run", "-"), i.state,
             i.region or "-", i.instance_type or "-"] for i in instances]
    return render_table(rows, ("PROVIDER", "INSTANCE", "RUN", "STATE", "REGION", "TYPE"))


def cmd_ps(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    if args.orphans:
        found = runs.orphans(ctx, args.provider, warn=lambda m: print(f"warning: {m}",
                                                                      file=ctx.stderr))
        if args.json:
            print(json.dumps([i.to_dict() for i in found], indent=2), file=ctx.stdout)
        else:
            print(_orphan_rows(found) if found else "no orphaned instances", file=ctx.stdout)
        return 0
    runs.reconcile_all(ctx)
    rows = ctx.registry.list(include_terminal=args.all)
    now = ctx.clock()
    if args.json:
        print(json.dumps([runs.run_summary(ctx, r, now) for r in rows], indent=2), file=ctx.stdout)
        return 0
    if not rows:
        hint = "" if args.all else " (`dqlctl ps --all` shows finished ones)"
        print(f"no runs{hint}", file=ctx.stdout)
        return 0
    table = [[r.id, r.name, r.provider, r.state, _progress(r), runs.fmt_duration(now - r.created_at),
              f"${runs.run_cost(ctx, r, now):.2f}", _result(r)] for r in rows]
    print(render_table(table, PS_COLUMNS), file=ctx.stdout)
    return 0


def _resolve(ctx: Any, ref: str) -> Any:
    from dqlctl.registry import RegistryError

    try:
        return ctx.registry.resolve(ref)
    except RegistryError as exc:
        raise DqlctlError(str(exc), EXIT_USAGE) from None


def cmd_show(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    run = runs.reconcile(ctx, _resolve(ctx, args.run))
    now = ctx.clock()
    if args.json:
        data = runs.run_summary(ctx, run, now)
        data["events"] = ctx.registry.events(run.id)
        print(json.dumps(data, indent=2), file=ctx.stdout)
        return 0
    out = ctx.stdout
    print(f"run {run.id}  {run.name}", file=out)
    fields = [("state", run.state), ("provider", run.provider), ("region", run.region),
              ("instance", ", ".join(run.instance_ids) or "-"),
              ("instance type", run.instance_type), ("spot", "yes" if run.spot else "no"),
              ("age", runs.fmt_duration(now - run.created_at)), ("progress", _progress(run)),
              ("cost", f"${runs.run_cost(ctx, run, now):.4f}"), ("results", run.results_uri),
              ("reason", run.reason)]
    for key, value in fields:
        if value not in (None, ""):
            print(f"  {key:<14} {value}", file=out)
    test = (run.metrics or {}).get("test") or {}
    shown = [k for k in SUMMARY_METRICS if k in test]
    if shown:
        print("  test metrics:", file=out)
        for key in shown:
            print(f"    {key:<20} {_fmt(test[key])}", file=out)
    print("  history:", file=out)
    import time as _time

    for ev in ctx.registry.events(run.id):
        stamp = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(ev["ts"]))
        what = ev["to_state"] or ev["kind"]
        why = ev["data"].get("reason")
        print(f"    {stamp}  {what}" + (f"  ({why})" if why else ""), file=out)
    return 0


def cmd_logs(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    if args.tail is not None and args.tail < 0:
        raise DqlctlError(f"--tail must be 0 or more, got {args.tail}")
    run = runs.reconcile(ctx, _resolve(ctx, args.run))
    try:
        for line in runs.iter_log(ctx, run, args.follow, args.tail):
            print(line, file=ctx.stdout, flush=args.follow)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_down(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    if args.orphans:
        found = runs.orphans(ctx, args.provider)
        if not found:
            print("no orphaned instances", file=ctx.stdout)
            return 0
        if not args.yes:
            raise DqlctlError(f"{len(found)} orphaned instance(s); add --yes to terminate them "
                              "(`dqlctl ps --orphans` lists them)")
        for inst_id in runs.down_orphans(ctx, found):
            print(f"terminated {inst_id}", file=ctx.stdout)
        return 0
    if not args.run:
        raise DqlctlError("name a RUN to stop (or --orphans)")
    run = runs.reconcile(ctx, _resolve(ctx, args.run))
    if not run.terminal and not args.yes:
        if not sys.stdin.isatty():
            raise DqlctlError(f"run {run.id} is {run.state}: add --yes to stop it "
                              "(no terminal to ask on)")
        answer = input(f"stop run {run.id} ({run.name}, {run.state}) and release its machine? "
                       "[y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("left running", file=ctx.stdout)
            return 0
    run = runs.down(ctx, run)
    print(f"run {run.id} {run.state}; instance released", file=ctx.stdout)
    return 0


def cmd_stop(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs

    if args.wait <= 0:
        raise DqlctlError(f"--wait must be a positive number of seconds, got {args.wait}")
    run = runs.stop(ctx, _resolve(ctx, args.run), wait_s=args.wait)
    print(f"run {run.id} {run.state}" + (f": {run.reason}" if run.reason else ""),
          file=ctx.stdout)
    return 0


def cmd_ssh(ctx: Any, args: argparse.Namespace) -> int:
    import subprocess

    from dqlctl import runs

    shell = runs.shell_command(ctx, runs.reconcile(ctx, _resolve(ctx, args.run)), args.command)
    try:
        return subprocess.call(shell.argv, cwd=shell.cwd)  # noqa: S603
    except FileNotFoundError:
        raise DqlctlError(f"{shell.argv[0]} is not installed (the OpenSSH client: "
                          "apt install openssh-client)") from None


def cmd_check(ctx: Any, args: argparse.Namespace) -> int:
    from providers import COMPUTE_PROVIDERS, PLANNED_PROVIDERS

    names = args.providers or sorted(COMPUTE_PROVIDERS)
    results = []
    for name in names:
        if name not in COMPUTE_PROVIDERS:
            if name in PLANNED_PROVIDERS:
                raise DqlctlError(f"provider {name!r} is not available in this build yet")
            raise DqlctlError(f"unknown provider {name!r} (choose from: "
                              f"{', '.join(sorted(COMPUTE_PROVIDERS))})")
        results.append(ctx.provider(name).check())
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(r) for r in results], indent=2), file=ctx.stdout)
    else:
        for res in results:
            print(f"{res.provider}: {'ready' if res.ok else 'NOT ready'}", file=ctx.stdout)
            for item in res.items:
                mark = "ok " if item.ok else "!! "
                print(f"  {mark}{item.name}: {item.detail}", file=ctx.stdout)
                if item.fix and not item.ok:
                    print(f"       fix: {item.fix}", file=ctx.stdout)
    # Like `sky check`: a survey of every provider is informational; naming providers asks
    # whether those are ready, and the exit code says so.
    if not args.providers:
        return 0
    return 0 if all(r.ok for r in results) else EXIT_PROVIDER


VERBS = {"launch": cmd_launch, "ps": cmd_ps, "show": cmd_show, "logs": cmd_logs,
         "down": cmd_down, "stop": cmd_stop, "ssh": cmd_ssh, "check": cmd_check}


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
    handler = getattr(args, "func", None) or VERBS[args.verb]
    try:
        return handler(ctx, args)
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


def _open_tui(parser: argparse.ArgumentParser) -> int:
    try:
        from dqlctl.tui import run_tui  # type: ignore[import-not-found]
    except ImportError:
        parser.print_help()
        return 0
    return run_tui()


if __name__ == "__main__":
    sys.exit(main())
