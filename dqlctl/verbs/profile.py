"""``dqlctl profile``: measure the engine's throughput here, and list the profiles kept.

    dqlctl profile                                      the default run (custom agent) here, 5 s
    dqlctl profile --agent-type dql --batch-size 1024 --n-envs 256 --seconds 10
    dqlctl profile --list                               the shipped and measured profiles
    dqlctl profile --fill --device cuda --seconds 5     the n_envs and batch fastest here

``--fill`` measures several (n_envs, batch) pairs at the configuration's replay ratio (its own,
and larger ones for the device: ``engine.profile.fill``), keeps every one as a profile, and
names the fastest; n_envs and batch change what a run learns, so that is a recommendation for
speed, to be checked with ``dqlctl sweep`` before a default changes.

A profile is env steps/s and updates/s of one engine configuration (agent, network, batch,
n_envs) on one device (the CPU model, or the GPU's name): a short training run of the engine
(``engine.profile.measure``, the trainer's own timing), kept in ``<dqlctl home>/profiles.json``
next to the ones the package ships (``providers/prices/data/profiles.json``) and the ones each
run records after training (its ``throughput`` event). ``dqlctl cost --episodes N --data FILE``
turns them into the duration and cost of a run per offer.

Exit codes: 0; 2 bad input (a setting, a data file).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dqlctl.errors import EXIT_USAGE, DqlctlError
from dqlctl.render import render_table

EPILOG = """\
examples:
  dqlctl profile
  dqlctl profile --agent-type dql --batch-size 1024 --n-envs 256 --hidden-sizes 64,64
  dqlctl profile --device cuda --batch-size 4096 --n-envs 1024 --seconds 10
  dqlctl profile --fill --device cuda --seconds 5
  dqlctl profile --fill --pairs 64:256,256:1024 --agent-type dql
  dqlctl profile --list --json
"""


def register(sub: Any) -> None:
    p = sub.add_parser("profile", help="measure engine throughput here; list kept profiles",
                       description="Measure env steps/s and updates/s of an engine "
                                   "configuration on this machine (a short training run) and "
                                   "keep it for `dqlctl cost --episodes`; or list the "
                                   "profiles kept.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent-type", default="custom", choices=("dql", "custom", "memory"),
                   help="the agent (default custom, as launch)")
    p.add_argument("--batch-size", type=int, help="--batch_size (default: the engine's)")
    p.add_argument("--n-envs", type=int, help="--n_envs (default: the engine's)")
    p.add_argument("--hidden-sizes", help="--hidden_sizes, e.g. 64,64 (default: the agent's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: the engine's choice for this machine)")
    p.add_argument("--data", default="STOCKS_GOOGL.csv",
                   help="the market the run trains on (default STOCKS_GOOGL.csv)")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="loop time to measure once learning has started (default 5; with "
                        "--fill: per pair)")
    p.add_argument("--fill", action="store_true",
                   help="measure several --n-envs/--batch-size pairs at this replay ratio "
                        "(this configuration's own and larger ones for the device), keep each, "
                        "and name the fastest")
    p.add_argument("--pairs", metavar="N:B,...",
                   help="with --fill: the n_envs:batch pairs to try, e.g. 64:256,256:1024 "
                        "(default: by the device)")
    p.add_argument("--list", action="store_true", help="list the profiles kept, do not measure")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)


def _rows(profiles: list[Any], now: float) -> list[list[str]]:
    from providers.prices.catalog import fmt_age

    out = []
    for p in sorted(profiles, key=lambda p: (p.device, p.device_name, p.agent_type,
                                             p.batch_size, p.n_envs)):
        age = p.age_s(now)
        out.append([p.agent_type, "-".join(map(str, p.hidden_sizes)), str(p.batch_size),
                    str(p.n_envs), f"{p.device_name} ({p.device})", f"{p.steps_per_s:,.0f}",
                    f"{p.updates_per_s:,.0f}", f"+{100 * p.val_overhead:.0f}%",
                    "?" if age is None else fmt_age(age), p.where])
    return out


HEADERS = ("AGENT", "NETWORK", "BATCH", "ENVS", "DEVICE", "STEPS/S", "UPDATES/S", "VALIDATION",
           "AGE", "FROM")


def cmd_profile(ctx: Any, args: argparse.Namespace) -> int:
    from providers.prices.profiles import load_profiles

    if args.list and (args.fill or args.pairs):
        raise DqlctlError(f"{'--fill' if args.fill else '--pairs'} measures; --list lists the "
                          "kept profiles: give one of them", EXIT_USAGE)
    if args.pairs and not args.fill:
        raise DqlctlError("--pairs goes with --fill", EXIT_USAGE)
    if args.list:
        profiles = load_profiles(ctx.home)
        if args.json:
            print(json.dumps([p.to_dict() for p in profiles], indent=2), file=ctx.stdout)
        else:
            print(render_table(_rows(profiles, ctx.clock()), HEADERS), file=ctx.stdout)
        return 0
    if not args.seconds > 0:
        raise DqlctlError(f"--seconds must be more than 0, got {args.seconds:g}", EXIT_USAGE)
    settings: dict[str, Any] = {"agent_type": args.agent_type, "data_file": args.data,
                                "device": args.device, "torch_threads": args.threads}
    for key in ("batch_size", "n_envs", "hidden_sizes"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.fill:
        return _fill(ctx, args, settings)
    from dqlctl.profiles import ShapeError, measure

    if not args.json:
        print(f"measuring {args.agent_type} on {args.data} for about {args.seconds:g} s ...",
              file=ctx.stderr, flush=True)
    try:
        profile = measure(ctx.home, settings, args.seconds)
    except (ShapeError, ValueError, RuntimeError) as exc:
        raise DqlctlError(str(exc).strip().splitlines()[0], EXIT_USAGE) from None
    if args.json:
        print(json.dumps(profile.to_dict(), indent=2), file=ctx.stdout)
        return 0
    print(render_table(_rows([profile], ctx.clock()), HEADERS), file=ctx.stdout)
    from providers.prices.profiles import store_path

    print(f"kept in {store_path(ctx.home)}", file=ctx.stdout)
    return 0


def _fill(ctx: Any, args: argparse.Namespace, settings: dict[str, Any]) -> int:
    """``profile --fill``: every pair measured and kept; a line each, the fastest, the caveat
    (``engine.profile.fill_lines``, dqlctl's flag spellings); ``--json``: the records."""
    from dqlctl.profiles import ShapeError, measure_fill
    from engine.profile import fill_lines, parse_pairs

    try:
        pairs = parse_pairs(args.pairs) if args.pairs else None
    except ValueError as exc:
        raise DqlctlError(f"--pairs: {exc}", EXIT_USAGE) from None

    def say(message: str) -> None:
        if not args.json:
            print(message, file=ctx.stderr, flush=True)

    say(f"measuring {args.agent_type} on {args.data} at several n_envs and batch sizes, about "
        f"{args.seconds:g} s each ...")
    try:
        records = measure_fill(ctx.home, settings, args.seconds, pairs=pairs, log=say)
    except (ShapeError, ValueError, RuntimeError) as exc:
        raise DqlctlError(str(exc).strip().splitlines()[0], EXIT_USAGE) from None
    if args.json:
        print(json.dumps(records, indent=2), file=ctx.stdout)
        return 0
    from providers.prices.profiles import store_path

    lines = fill_lines(records, flag=lambda name: "--" + name.replace("_", "-"))
    print("\n".join(lines), file=ctx.stdout)
    kept = sum(1 for r in records if not r.get("skipped"))
    print(f"kept {kept} profile{'s' if kept != 1 else ''} in {store_path(ctx.home)}: `dqlctl "
          "cost --episodes E --data FILE --batch-size B --n-envs N` prices a run at any of "
          "them", file=ctx.stdout)
    return 0
