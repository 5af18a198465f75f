"""``dqlctl sweep``: many runs as one object. ``sweep launch [SPEC] [flags]`` (``--dry-run``: the
members, where they go, the cost; ``--follow``: drive it to the end and print the comparison),
``sweep ps``, ``sweep show SWEEP`` (members, states, the comparison; its report written to the
sweep's folder), ``sweep down SWEEP``. Every member is an ordinary run: ``ps``, ``logs``,
``show`` and ``down`` work on it too."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dqlctl.errors import UsageError
from dqlctl.render import (
    SWEEP_MARKET_COLUMNS,
    SWEEP_MEMBER_COLUMNS,
    fmt_duration,
    render_table,
    safe_text,
    sweep_arm_lines,
    sweep_market_cells,
    sweep_member_cells,
    sweep_vms_text,
)
from dqlctl.verbs import print_json

SWEEP_COLUMNS = ("ID", "NAME", "PROVIDER", "STATE", "MEMBERS", "RUNNING", "QUEUED", "DONE",
                 "FAILED", "AGE", "COST")


def register(sub: Any) -> None:
    p = sub.add_parser("sweep", help="many runs as one object: markets x seeds x settings",
                       description="Sweeps: markets x seeds x agent types x engine settings, "
                       "each member an ordinary run, compared together.")
    verbs = p.add_subparsers(dest="sweep_verb", metavar="SWEEP_VERB")
    p.set_defaults(func=lambda ctx, args: _no_verb(p))

    lp = verbs.add_parser("launch", help="start a sweep from a spec file and/or flags")
    lp.add_argument("spec", metavar="SPEC", nargs="?", help="a TOML sweep spec (flags given "
                    "as well replace its keys)")
    lp.add_argument("--provider", help="where members run: local (default); aws, gcp or azure "
                    "(a pool of at most --concurrency VMs); aws-batch (each member an AWS Batch "
                    "job)")
    lp.add_argument("--backend", choices=("batch",), help="the cloud's batch service: "
                    "--provider aws --backend batch is --provider aws-batch")
    lp.add_argument("--data", action="append", metavar="PATH", help="market data: a file, a "
                    "folder of *.csv/*.parquet or a glob; repeat for more")
    lp.add_argument("--seeds", metavar="N|S,S,...", help="a count (seeds 1..N) or a list")
    lp.add_argument("--agent-type", action="append", metavar="TYPE",
                    help="dql, custom or memory; repeat for more")
    lp.add_argument("--episodes", type=int, help="training episodes per member (default 20)")
    lp.add_argument("--command", help="engine command: full-workflow (default) or train")
    lp.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                    help="an engine setting over values (the cross product); repeat for more")
    lp.add_argument("--concurrency", type=int, metavar="N", help="members running at once "
                    "(default: the cores of this machine)")
    lp.add_argument("--max-cost", type=float, metavar="USD", help="no member starts (and the "
                    "running ones stop) once the sweep has cost this much")
    lp.add_argument("--name", help="a name for the sweep (default: from its data)")
    lp.add_argument("--dry-run", action="store_true",
                    help="print the members, where they go and the cost; create nothing")
    lp.add_argument("-f", "--follow", action="store_true", help="start queued members as "
                    "slots free until every member ended, then print the comparison")
    lp.add_argument("--json", action="store_true")
    lp.add_argument("engine_args", nargs="*", metavar="-- ENGINE ARGS",
                    help="extra engine flags for every member after --, e.g. -- --n_envs 4")
    lp.set_defaults(func=cmd_launch)

    pp = verbs.add_parser("ps", help="list sweeps (each looked at: queued members started)")
    pp.add_argument("--json", action="store_true")
    pp.set_defaults(func=cmd_ps)

    sp = verbs.add_parser("show", help="one sweep: members, states, the comparison")
    sp.add_argument("sweep", metavar="SWEEP", help="a sweep id, unique prefix, or name")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_show)

    dp = verbs.add_parser("down", help="stop a sweep: queued members cancelled, running "
                          "ones brought down")
    dp.add_argument("sweep", metavar="SWEEP")
    dp.add_argument("-y", "--yes", action="store_true", help="do not ask")
    dp.add_argument("--json", action="store_true")
    dp.set_defaults(func=cmd_down)


def _no_verb(parser: argparse.ArgumentParser) -> int:
    raise UsageError("name a sweep verb: launch, ps, show or down (dqlctl sweep --help)")


def _resolve(ctx: Any, ref: str) -> Any:
    from dqlctl.registry import RegistryError

    try:
        return ctx.registry.resolve_sweep(ref)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None


def _spec(args: argparse.Namespace) -> Any:
    from dqlctl import sweeps

    spec = sweeps.load_spec(args.spec) if args.spec else sweeps.SweepSpec()
    flags: dict[str, Any] = {}
    provider = args.provider
    if args.backend == "batch":
        if (provider or "aws") not in ("aws", "aws-batch"):
            raise UsageError(f"--backend batch: only AWS Batch is built (--provider aws); "
                             f"not {provider}", field="provider")
        provider = "aws-batch"
    for key, value in (("provider", provider), ("data", args.data),
                       ("seeds", args.seeds), ("agent_type", args.agent_type),
                       ("episodes", args.episodes), ("command", args.command),
                       ("concurrency", args.concurrency), ("max_cost", args.max_cost),
                       ("name", args.name)):
        if value is not None:
            flags[key] = value
    if args.engine_args:
        flags["engine_args"] = [*spec.engine_args, *args.engine_args]
    if args.grid:
        flags["grid"] = dict(sweeps.parse_grid_flag(g) for g in args.grid)
    return sweeps.merge(spec, flags, source="flags") if flags else spec


def cmd_launch(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import sweeps

    prepared = sweeps.prepare(ctx, _spec(args))
    if args.dry_run:
        plan = sweeps.plan(ctx, prepared)
        if args.json:
            print_json(ctx, plan)
            return 0
        out = ctx.stdout
        print("dry run: nothing is created. `sweep launch` without --dry-run would start:",
              file=out)
        for key in ("name", "provider", "members", "concurrency", "max_cost", "where", "cost"):
            if plan.get(key) is not None:
                print(f"  {key.replace('_', ' '):<12} {plan[key]}", file=out)
        rows = [[r["name"], r["market"], r["agent_type"], str(r["seed"]),
                 " ".join(f"{k}={v}" for k, v in r["settings"].items()) or "-"]
                for r in plan["runs"]]
        print(render_table(rows, ("NAME", "MARKET", "AGENT", "SEED", "SETTINGS")), file=out)
        return 0
    sweep = sweeps.launch(ctx, prepared)
    if not args.follow:
        if args.json:
            print_json(ctx, sweeps.summary(ctx, sweep, ctx.clock(), compare=False))
        else:
            print(f"launched sweep {sweep.id} ({sweep.name}): {len(prepared.members)} members, "
                  f"{sweep.concurrency} at a time. `dqlctl sweep show {sweep.id}` looks at it "
                  "(and starts queued members as slots free); `--follow` drives it to the end.",
                  file=ctx.stdout)
        return 0

    def on_change(member: dict[str, Any]) -> None:
        if not args.json:
            print(f"{member['run_id']}  {member['name']:<40} {member['state']}",
                  file=ctx.stderr, flush=True)

    try:
        sweep = sweeps.follow(ctx, sweep, on_change)
    except KeyboardInterrupt:
        print(f"\ndetached: sweep {sweep.id} keeps going; its queued members start on the next "
              f"look (`dqlctl sweep show {sweep.id}`). `dqlctl sweep down {sweep.id}` stops it.",
              file=ctx.stderr)
        return 130
    data = sweeps.summary(ctx, sweep, ctx.clock())
    if args.json:
        print_json(ctx, data)
    else:
        _print_show(ctx, data)
    return 0 if data["counts"].get("SUCCEEDED", 0) == len(data["members"]) else 1


def cmd_ps(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import sweeps

    sweeps.look_all(ctx)
    now = ctx.clock()
    rows = [sweeps.summary(ctx, s, now, compare=False) for s in ctx.registry.list_sweeps()]
    if args.json:
        print_json(ctx, rows)
        return 0
    if not rows:
        print("no sweeps (`dqlctl sweep launch` starts one)", file=ctx.stdout)
        return 0
    table = [[d["id"], d["name"], d["provider"], d["state"], str(len(d["members"])),
              str(d["running"]), str(d["queued"]), str(d["counts"].get("SUCCEEDED", 0)),
              str(d["counts"].get("FAILED", 0)), fmt_duration(now - d["created_at"]),
              f"${d['cost_usd']:.2f}"] for d in rows]
    print(render_table(table, SWEEP_COLUMNS), file=ctx.stdout)
    return 0


def cmd_show(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import sweeps

    sweep, problems = sweeps.look(ctx, _resolve(ctx, args.sweep))
    for problem in problems:
        print(f"warning: {problem}", file=ctx.stderr)
    data = sweeps.summary(ctx, sweep, ctx.clock())
    if args.json:
        print_json(ctx, data)
    else:
        _print_show(ctx, data)
    return 0


def cmd_down(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import sweeps

    sweep = _resolve(ctx, args.sweep)
    live = ctx.registry.live_count(sweep.id)
    if sweep.state == "ACTIVE" and not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"sweep {sweep.id} is ACTIVE: add --yes to stop it (no terminal "
                             "to ask on)")
        answer = input(f"stop sweep {sweep.id} ({sweep.name}): cancel its queued members and "
                       f"bring down {live} running? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("left running", file=ctx.stdout)
            return 0
    sweep = sweeps.down(ctx, sweep)
    data = sweeps.summary(ctx, sweep, ctx.clock(), compare=False)
    if args.json:
        print_json(ctx, data)
    else:
        print(f"sweep {sweep.id} {sweep.state}; {live} running member(s) brought down, queued "
              "ones cancelled", file=ctx.stdout)
    return 0


def _print_show(ctx: Any, data: dict[str, Any]) -> None:
    out = ctx.stdout
    print(f"sweep {data['id']}  {data['name']}", file=out)
    wall, summed = data.get("wall_s"), data.get("members_s")
    for key, value in (("state", data["state"]), ("provider", data["provider"]),
                       ("concurrency", data["concurrency"]),
                       ("members", " ".join(f"{k} {v}" for k, v in
                                            sorted(data["counts"].items()))),
                       ("cost", f"${data['cost_usd']:.4f}" + (
                           f" of max ${data['max_cost']:.2f}" if data.get("max_cost") else "")),
                       ("time", f"{fmt_duration(wall)} wall, {fmt_duration(summed)} summed "
                        "over members" if wall is not None and summed is not None else None),
                       ("reason", safe_text(data.get("reason") or "")),
                       ("vms", sweep_vms_text(data.get("vms") or [])),
                       ("folder", data["folder"])):
        if value not in (None, ""):
            print(f"  {key:<12} {value}", file=out)
    rows = [sweep_member_cells(m) for m in data["members"]]
    print(render_table(rows, SWEEP_MEMBER_COLUMNS), file=out)
    comparison = data.get("comparison") or {}
    for arm in comparison.get("arms", []):
        print(f"\ncomparison: {arm['label']}", file=out)
        if "error" in arm:
            print(f"  cannot compare: {arm['error']}", file=out)
            continue
        table = [sweep_market_cells(r) for r in arm["summary"]["markets"]]
        print(render_table(table, SWEEP_MARKET_COLUMNS), file=out)
        for line in sweep_arm_lines(arm["summary"]):
            print(f"  {line}", file=out)
        print(f"  report:  {arm['report']}", file=out)
    missing = comparison.get("not_compared") or []
    if missing:
        print(f"\nnot compared: {', '.join(m['name'] + ' (' + m['why'] + ')' for m in missing)}",
              file=out)
