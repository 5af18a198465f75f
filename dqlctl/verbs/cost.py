"""``dqlctl cost``: what a run would cost on each cloud, and what runs did cost.

    dqlctl cost --gpu A100 --hours 10                 offers on every cloud, cheapest first
    dqlctl cost --gpu T4:1 --on-demand --region us-east-1 --json
    dqlctl cost --gpu A100 --data-gb 200 --data-from s3   adds egress out of S3 to other clouds
    dqlctl cost --refresh --gpu A100                  live prices first (cached in the data dir)
    dqlctl cost --runs                                spend per provider and month, from runs
    dqlctl cost --gpu T4 --episodes 100 --data data/STOCKS_GOOGL.csv   cost of that run per offer

Cost per run (``--episodes N --data FILE [--agent-type T] [--batch-size B] [--n-envs E]``): the
hours of each offer become the run's duration on it, from the nearest throughput profile
(``providers.prices.profiles``: env steps = episodes x training bars rounded up to whole
vectorised steps; duration = env steps / the profile's steps/s x (1 + its validation share) +
bring-up), so offers rank by the estimated cost of the run, with a DURATION column and each
duration's basis (measured on a CPU model, or for a GPU without a profile a guess from a
launch-bound model, said as such) explained under the table. CPU instance types are offers like
any other. With ``--gpu``, the best offer without a GPU is priced for the same run on a line of its
own, "cheaper without a GPU: ..." when it beats the cheapest GPU offer ("without a GPU: ...,
not cheaper" otherwise), so a small batch that a GPU cannot speed up shows its cheaper machine.
``--gpu none`` lists only the machines without a GPU.

Phases (``--phase tune|train|all``, ``--trials N``, ``--trial-episodes N``; defaults: the
engine's ``--n_iter`` 20 and ``--tuning_episodes`` 20): a run that tunes first
(``full-workflow``) has a tuning phase of N independent trials, run at once on the machine's
vCPUs (workers = min(trials, vCPUs), waves = ceil(trials / workers), each trial one CPU
thread: trials never use a GPU) and a training phase (the one sequential run above).
``--phase tune`` / ``train`` rank offers for that phase alone; ``--phase all`` ranks them for
the whole run on one machine and then says the cheapest machine for each phase, and whether
the split (tune on one, train on the other, a second bring-up paid) is cheaper: "split: tune on
X ($a, h1), train on Y ($b, h2): $a+b vs $c on one machine". Without ``--phase``, a request
naming ``--trials`` or ``--trial-episodes`` is ``--phase all``; one naming neither prices the
training alone, as before. The figures: ``providers.prices.profiles.phase_duration``.

Running a split: ``dqlctl launch --command tune --instance-type X ... -- --n_iter N
--tuning_episodes M`` runs the trials alone on the cheap machine (its ``best_params.json`` in
its results), then ``dqlctl launch --command train --params-from <that run> --instance-type Y
--episodes E ...`` trains with them on the other (the file is copied into the new run's
results, where its machine reads it: a cloud run needs ``--results-dir`` on a bucket). The
split line prints the two commands with each machine's provider, region and instance type.

The figures come from ``providers.prices`` (the same estimate launch and the TUI use) and, for
``--runs``, from ``dqlctl.runs.costs``; this module only renders them. Standard library only at import time.
Exit codes: 0; 2 bad input or nothing matches; 3 a refresh failed (offers are still printed,
from the prices kept).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dqlctl.errors import EXIT_PROVIDER, EXIT_USAGE, DqlctlError
from dqlctl.render import fmt_hours, fmt_money, render_table, split_text

PHASES = ("tune", "train", "all")        # providers.prices.profiles.PHASES (not imported here)

EPILOG = """\
examples:
  dqlctl cost --gpu A100 --hours 10
  dqlctl cost --gpu T4:1 --provider aws --on-demand
  dqlctl cost --gpu A100:8 --hours 24 --data-gb 500 --data-from gs
  dqlctl cost --refresh --gpu L4
  dqlctl cost --runs
  dqlctl cost --gpu T4 --episodes 100 --data data/STOCKS_GOOGL.csv
  dqlctl cost --episodes 50 --data data/STOCKS_GOOGL.csv --agent-type dql --batch-size 64

estimate = hours x $/h x (1 + interruption overhead) + egress. The overhead (spot) is the work
lost per interruption (half a checkpoint interval + 6 min to restart) times the interruption
rate of the offer's band (AWS spot advisor, Azure eviction rate) where one is known; '*' marks
estimates without it. Egress is charged when --data-from is another cloud than the offer's.
Live prices are cached in $DQLCTL_HOME/prices/; prices older than 3 days are marked stale.

With --episodes and --data the hours are each offer's duration for that run, from the nearest
throughput profile (`dqlctl profile` measures one here; runs record theirs): env steps /
steps per second x (1 + validation) + 6 min bring-up; offers rank by the cost of the run.

Phases of a run that tunes first (full-workflow: --trials trials of --trial-episodes episodes,
default 20 x 20, then the training): --phase tune ranks offers for the trials (run at once on
the vCPUs: ceil(trials / min(trials, vCPUs)) waves of one trial each), --phase train for the
training, --phase all (the default with --trials or --trial-episodes) for both on one machine,
then the cheapest machine per phase and whether a split pays for its second bring-up:
  dqlctl cost --phase all --episodes 100 --data data/STOCKS_GOOGL.csv
  dqlctl cost --phase tune --trials 40 --trial-episodes 10 --data data/STOCKS_GOOGL.csv
A split runs as two launches (the split line prints them with each machine):
  dqlctl launch --command tune --instance-type X ... -- --n_iter 20 --tuning_episodes 20
  dqlctl launch --command train --params-from <that run> --instance-type Y --episodes N ...
(a cloud run reads the tuned parameters from its bucket: give it --results-dir there).
"""


def register(sub: Any) -> None:
    p = sub.add_parser("cost", help="GPU offers and run cost estimates; spend per run",
                       description="Offers across AWS, GCP and Azure cheapest first, with "
                                   "on-demand, spot, saving\nand the estimate for a run; or "
                                   "(--runs) what runs cost, by provider and month.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", help="GPU model and optional count, e.g. A100 (any count) or A100:8; "
                                 "none: machines without a GPU")
    p.add_argument("--instance-type", help="one instance type (also shows retired types)")
    p.add_argument("--provider", help="aws, gcp or azure (default: all three)")
    p.add_argument("--region", help="one region, e.g. us-east-1, us-central1, eastus")
    p.add_argument("--hours", type=float, default=1.0, help="hours of work (default 1)")
    cap = p.add_mutually_exclusive_group()
    cap.add_argument("--spot", dest="spot", action="store_true", default=True,
                     help="estimate on spot prices (default)")
    cap.add_argument("--on-demand", dest="spot", action="store_false",
                     help="estimate on on-demand prices")
    p.add_argument("--data-gb", type=float, default=0.0,
                   help="dataset size in GB moved to the run's machine")
    p.add_argument("--data-from", choices=("s3", "gs", "az"),
                   help="where the dataset lives: egress is added for offers on other clouds")
    p.add_argument("--checkpoint-min", type=float, default=15.0,
                   help="minutes between checkpoints, for the interruption overhead (default 15)")
    p.add_argument("--episodes", type=int,
                   help="price a run of N episodes (with --data): its duration on each offer")
    p.add_argument("--data", help="the run's market file (its training split sets the length)")
    p.add_argument("--agent-type", default="custom", choices=("dql", "custom", "memory"),
                   help="the run's agent (default custom, as launch)")
    p.add_argument("--batch-size", type=int, help="the run's --batch_size (default: the engine's)")
    p.add_argument("--n-envs", type=int, help="the run's --n_envs (default: the engine's)")
    p.add_argument("--phase", choices=PHASES,
                   help="price one phase of a run that tunes first (tune, train) or all of it "
                        "with the split per phase (all; the default with --trials)")
    p.add_argument("--trials", type=int,
                   help="tuning trials (the engine's --n_iter, default 20)")
    p.add_argument("--trial-episodes", type=int,
                   help="episodes per tuning trial (the engine's --tuning_episodes, default 20)")
    p.add_argument("--refresh", action="store_true",
                   help="read live prices first (AWS, Azure, GCP price APIs) into the cache")
    p.add_argument("--limit", type=int, default=0, help="show only the N cheapest offers")
    p.add_argument("--runs", action="store_true",
                   help="what runs cost, by provider and month (from the run registry)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cost)


# -- offers ----------------------------------------------------------------------------------------


def _request(args: argparse.Namespace) -> Any:
    from providers.prices.estimate import PriceRequest

    if args.hours <= 0:
        raise DqlctlError(f"--hours must be more than 0, got {args.hours:g}", EXIT_USAGE)
    if args.data_gb < 0:
        raise DqlctlError(f"--data-gb must not be negative, got {args.data_gb:g}", EXIT_USAGE)
    if args.data_gb and not args.data_from:
        raise DqlctlError("--data-gb needs --data-from s3|gs|az (where the data lives)",
                          EXIT_USAGE)
    if args.checkpoint_min <= 0:
        raise DqlctlError("--checkpoint-min must be more than 0", EXIT_USAGE)
    if args.limit < 0:
        raise DqlctlError("--limit must be 0 (all) or more", EXIT_USAGE)
    return PriceRequest(gpu=args.gpu, instance_type=args.instance_type, provider=args.provider,
                        region=args.region, hours=args.hours, spot=args.spot,
                        data_gb=args.data_gb, data_from=args.data_from,
                        checkpoint_interval_h=args.checkpoint_min / 60.0, run=_run(args),
                        phase=_phase(args) or "train")


def _phase(args: argparse.Namespace) -> str | None:
    """``--phase``; ``all`` when only ``--trials``/``--trial-episodes`` say the run tunes;
    None: no phase named (the training alone, as before phases)."""
    if args.phase:
        return str(args.phase)
    return "all" if args.trials is not None or args.trial_episodes is not None else None


def _run(args: argparse.Namespace) -> Any:
    """The run to price (``--episodes`` + ``--data``; ``--phase tune``: ``--data``), or None."""
    phase = _phase(args)
    for flag, value in (("--trials", args.trials), ("--trial-episodes", args.trial_episodes)):
        if value is not None and value < 1:
            raise DqlctlError(f"{flag} must be at least 1, got {value}", EXIT_USAGE)
    if phase == "tune" and args.data is None:
        raise DqlctlError("--phase tune needs --data: the market file the trials train on",
                          EXIT_USAGE)
    if phase not in (None, "tune") and (args.data is None or args.episodes is None):
        raise DqlctlError(f"--phase {phase} needs --episodes and --data: the run to price",
                          EXIT_USAGE)
    if args.episodes is None and args.data is None:
        return None
    if args.data is None or (args.episodes is None and phase != "tune"):
        raise DqlctlError("--episodes and --data go together: the run to price", EXIT_USAGE)
    from dqlctl.profiles import ShapeError, run_shape

    engine_args = []
    for flag, value in (("--batch_size", args.batch_size), ("--n_envs", args.n_envs),
                        ("--n_iter", args.trials), ("--tuning_episodes", args.trial_episodes)):
        if value is not None:
            engine_args += [flag, str(value)]
    command = {None: "train", "train": "train", "tune": "tune"}.get(phase, "full-workflow")
    try:
        return run_shape(args.data, args.episodes or 0, args.agent_type, engine_args,
                         command=command)
    except ShapeError as exc:
        raise DqlctlError(str(exc), EXIT_USAGE) from None


def fmt_price(value: float | None) -> str:
    """A $/h as the catalog writes it: up to 6 decimals, no trailing zeros; '-' when unknown."""
    if value is None:
        return "-"
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text else "0"


def _interrupt(offer: Any) -> str:
    if not offer.spot:
        return "-"
    band = offer.extra.get("interruption_band")
    overhead = offer.extra["estimate"]["overhead_frac"]
    if not band or overhead is None:
        return "?"
    return f"{band} +{100 * overhead:.2g}%"


def _age(offer: Any) -> str:
    from providers.prices.catalog import fmt_age

    x = offer.extra
    text = f"{x['price_source']} {fmt_age(x['price_age_s'])}"
    return text + (" STALE" if x["stale"] else "")


_money = fmt_money


def _basis(offer: Any) -> str:
    d = offer.extra.get("duration") or {}
    pm = d.get("plus_minus")
    short = {"measured": "measured", "nearest": "near", "cpu-other": "CPU",
             "gpu-guess": "guess"}.get(d.get("basis", ""), "n/a")
    return short + (f" ±{pm:.0%}" if pm is not None else "")


def run_line(run: Any, phase: str = "train") -> str:
    """What the run is: episodes, data, env steps and the engine configuration; with a phase
    that tunes, the trials."""
    sizes = "-".join(map(str, run.hidden_sizes))
    config = f"{run.agent_type} {sizes}, batch {run.batch_size}, {run.n_envs} envs"
    trials = ""
    if phase != "train" and run.trials:
        trials = (f"{run.trials} tuning trials x {run.trial_episodes} episodes "
                  f"({run.trial().env_steps:,} env steps each)")
    if phase == "tune":
        return f"phase tune: {trials} of {run.data}, {config}"
    text = (f"run: {run.episodes} episodes x {run.train_bars:,} training bars of {run.data} "
            f"({run.env_steps:,} env steps), {config}")
    return f"phase all: {trials}, then {text[5:]}" if trials else text


def _workers(offer: Any) -> str:
    d = offer.extra.get("duration") or {}
    if d.get("workers") is None:
        return "-"
    return f"{d['workers']} x{d['waves']}"


def render_offers(q: Any, limit: int = 0, without_gpu: Any = None, plan: Any = None) -> str:
    from providers.prices.estimate import gpu_label

    req = q.request
    shown = q.offers[:limit] if limit else q.offers
    egress = bool(req.data_gb)
    per_run = req.run is not None
    tunes = per_run and req.phase != "train" and req.run.trials > 0
    headers = ["PROVIDER", "REGION", "INSTANCE TYPE", "GPUS", "VCPUS", "MEM GiB",
               "ON-DEMAND $/H", "SPOT $/H", "SAVING", "INTERRUPTIONS"]
    headers += ["EGRESS"] if egress else []
    headers += ["TRIALS AT ONCE x WAVES"] if tunes else []
    headers += ["DURATION", "BASIS", "RUN COST"] if per_run else ["ESTIMATE"]
    headers += ["PRICE AGE"]
    rows = []
    starred = False
    for o in shown:
        est = o.extra["estimate"]
        total = _money(est["total_usd"])
        if o.spot and est["overhead_frac"] is None and est["total_usd"] is not None:
            total += "*"
            starred = True
        saving = o.extra["saving_pct"]
        if o.extra.get("priced_at", "").startswith("on-demand (") and total != "-":
            total += "°"
        row = [o.provider, o.region, o.instance_type, gpu_label(o.gpu, o.gpu_count), str(o.vcpus),
               f"{o.memory_gib:g}", fmt_price(o.extra["on_demand"]),
               fmt_price(o.extra["spot_price"]), "-" if saving is None else f"{saving:.0f}%",
               _interrupt(o)]
        row += [_money(est["egress_usd"])] if egress else []
        row += [_workers(o)] if tunes else []
        if per_run:
            row += [fmt_hours((o.extra.get("duration") or {}).get("hours")), _basis(o)]
        row += [total, _age(o)]
        rows.append(row)
    kind = "spot" if req.spot else "on-demand"
    what = req.gpu or req.instance_type or "all instance types"
    work = run_line(req.run, req.phase) if per_run else f"{req.hours:g} h of work"
    lines = [f"{what}, {kind}, {work}, checkpoint every {req.checkpoint_interval_h * 60:g} min"
             + (f", {req.data_gb:g} GB from {req.data_from}" if egress else "")]
    groups: dict[str, list[str]] = {}
    for provider, f in q.freshness.items():
        groups.setdefault(_freshness_line(f), []).append(provider)
    for text, providers in groups.items():
        lines.append(f"prices ({', '.join(providers)}): {text}")
    if rows:
        lines.append(render_table(rows, tuple(headers)))
    else:
        from providers.prices.catalog import load_catalog

        gpus = sorted({r.gpu for r in load_catalog()})
        lines.append("no offers match" + (f" (GPU models in the catalog: {', '.join(gpus)})"
                                          if req.gpu else ""))
    if limit and len(q.offers) > limit:
        lines.append(f"{len(q.offers) - limit} more offers (--limit 0 shows all)")
    if without_gpu is not None:
        lines.append(without_gpu_line(q, without_gpu))
    if plan is not None:
        lines += phase_lines(plan)
    if per_run:
        lines += duration_notes(shown + ([without_gpu] if without_gpu is not None else []))
    if any(o.extra.get("priced_at", "").startswith("on-demand (") for o in shown):
        lines.append("° spot price not in the catalog: priced at on-demand (an upper bound)")
    if starred:
        lines.append("* no interruption overhead in the estimate: the interruption band of "
                     "that type and region is not known")
    if egress:
        from providers.prices.estimate import EGRESS, data_cloud

        cloud = data_cloud(req.data_from) or ""
        rate = EGRESS[cloud]
        lines.append(f"egress: {req.data_gb:g} GB out of {cloud} to another cloud at "
                     f"${rate.usd_per_gb}/GB ({rate.what}; {rate.as_of}); none within {cloud}")
    if q.hidden:
        reasons: dict[str, int] = {}
        for _, why in q.hidden:
            reasons[why] = reasons.get(why, 0) + 1
        lines.append("not shown: " + "; ".join(f"{n} {why}" for why, n in reasons.items()))
    return "\n".join(lines)


def phase_lines(plan: Any) -> list[str]:
    """``--phase all``: the cheapest machine for the whole run and for each phase, and the
    split line (only when the split is cheaper; else why not)."""
    def what(offer: Any) -> str:
        if offer is None:
            return "none priced"
        d = offer.extra["duration"]
        at_once = f", {d['workers']} trials at once x{d['waves']}" if d.get("workers") and \
            d.get("phase") == "tune" else ""
        return (f"{offer.provider} {offer.region} {offer.instance_type} ({offer.vcpus} vCPU, "
                f"GPU {offer.gpu or 'none'}{at_once}), {fmt_hours(d['hours'])}, "
                f"{fmt_money(offer.extra['estimate']['total_usd'])}")

    lines = [f"one machine for all of it: {what(plan.single)}",
             f"tune phase alone: {what(plan.tune)}", f"train phase alone: {what(plan.train)}"]
    if plan.single is None or plan.tune is None or plan.train is None \
            or plan.split_usd is None:
        return lines
    if plan.cheaper:
        lines.append(f"split: {split_text(plan)}")
    elif (plan.tune.provider, plan.tune.region, plan.tune.instance_type) == (
            plan.train.provider, plan.train.region, plan.train.instance_type):
        lines.append("no split: both phases are cheapest on the same machine")
    else:
        lines.append(f"no split: {split_text(plan)}")
    return lines


def duration_notes(offers: list[Any]) -> list[str]:
    """One line per basis of the durations shown: where each figure comes from."""
    seen: dict[str, list[str]] = {}
    for o in offers:
        d = o.extra.get("duration")
        if d:
            seen.setdefault(d["provenance"], []).append(o.gpu if o.gpu_count else "CPU")
    return [f"duration ({', '.join(dict.fromkeys(kinds))} offers): {text}"
            for text, kinds in seen.items()]


def without_gpu_line(q: Any, cpu: Any) -> str:
    """The best offer without a GPU for the same run, against the cheapest GPU offer."""

    total = cpu.extra["estimate"]["total_usd"]
    best = next((o.extra["estimate"]["total_usd"] for o in q.offers
                 if o.extra["estimate"]["total_usd"] is not None), None)
    what = (f"{cpu.provider} {cpu.region} {cpu.instance_type} ({cpu.vcpus} vCPU), "
            f"{fmt_hours(cpu.extra['duration']['hours'])}, {_money(total)} at "
            f"{fmt_price(cpu.price_per_hour)}/h {cpu.extra['priced_at']}")
    if total is not None and (best is None or total < best):
        return f"cheaper without a GPU: {what}"
    return f"without a GPU: {what}, not cheaper"


def best_without_gpu(req: Any, home: Any, now: float) -> Any:
    """The cheapest offer without a GPU for ``req``'s run (its other filters kept); None."""
    import dataclasses

    from providers.prices.estimate import quote

    if req.run is None or not req.gpu or req.gpu_filter() == ("", 0) or req.instance_type:
        return None
    cpu = quote(dataclasses.replace(req, gpu="none"), home=home, now=now).offers
    return next((o for o in cpu if o.extra["estimate"]["total_usd"] is not None), None)


def phase_plan_of(req: Any, home: Any, now: float) -> Any:
    """``--phase all`` of a run that tunes: the cheapest machine for all of it and per phase,
    among the request's offers and, with ``--gpu``, the machines without a GPU; else None."""
    import dataclasses

    from providers.prices.estimate import phase_plan

    if req.run is None or req.phase != "all" or req.run.trials <= 0:
        return None
    requests = [req]
    if req.gpu and req.gpu_filter() != ("", 0) and not req.instance_type:
        requests.append(dataclasses.replace(req, gpu="none"))
    return phase_plan(requests, home=home, now=now)


def _freshness_line(f: dict[str, Any]) -> str:
    from providers.prices.catalog import fmt_age

    if f["oldest_age_s"] is None:
        return "none"
    if f["source"] == "catalog":
        text = f"bundled catalog of {f['catalog_as_of']}"
    else:
        text = f"{f['source']}, cache updated {f.get('cache_updated', '?')}"
    text += f"; oldest price {fmt_age(f['oldest_age_s'])} old"
    if f["stale"]:
        text += ", STALE (`dqlctl cost --refresh` reads live prices)"
    return text


def _refresh(ctx: Any, req: Any) -> list[Any]:
    from providers.prices import refresh as refresh_mod
    from providers.prices.catalog import all_rows
    from providers.prices.estimate import matching_rows

    rows = matching_rows(req, all_rows())
    return refresh_mod.refresh(ctx.home, rows, req.providers(), now=ctx.clock())


def cmd_cost(ctx: Any, args: argparse.Namespace) -> int:
    if args.runs:
        return _cmd_runs(ctx, args)
    from providers.prices.estimate import PriceError, quote

    try:
        req = _request(args)
        req.providers()
        req.gpu_filter()
        results = _refresh(ctx, req) if args.refresh else []
        q = quote(req, home=ctx.home, now=ctx.clock())
        cpu = best_without_gpu(req, ctx.home, ctx.clock())
        plan = phase_plan_of(req, ctx.home, ctx.clock())
    except PriceError as exc:
        raise DqlctlError(str(exc), EXIT_USAGE) from None
    failed = [r for r in results if not r.ok]
    if args.json:
        from dataclasses import asdict

        data = q.to_dict()
        data["refresh"] = [r.to_dict() for r in results]
        if req.run is not None:
            data["run"] = req.run.to_dict()
            data["without_gpu"] = None if cpu is None else asdict(cpu)
        if _phase(args) is not None:
            data["phase"] = req.phase
            data["phases"] = None if plan is None else plan.to_dict()
        print(json.dumps(data, indent=2), file=ctx.stdout)
    else:
        for r in results:
            print(("warning: " if not r.ok else "") + r.message, file=ctx.stderr)
        for w in q.warnings:
            print(f"warning: {w}", file=ctx.stderr)
        print(render_offers(q, args.limit, cpu, plan), file=ctx.stdout)
    if failed:
        return EXIT_PROVIDER
    return 0 if q.offers else EXIT_USAGE


# -- what runs cost --------------------------------------------------------------------------------


def _cmd_runs(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl.runs.costs import spend_by_month

    rows = spend_by_month(ctx, ctx.clock())
    if args.provider:
        rows = [r for r in rows if r["provider"] == args.provider]
    total = round(sum(r["cost_usd"] for r in rows), 4)
    if args.json:
        print(json.dumps({"months": rows, "total_usd": total}, indent=2), file=ctx.stdout)
        return 0
    if not rows:
        print("no runs", file=ctx.stdout)
        return 0
    table = [[r["month"], r["provider"], str(r["runs"]), f"{r['instance_hours']:.2f}",
              f"${r['cost_usd']:,.2f}"] for r in rows]
    runs = len({rid for r in rows for rid in r["run_ids"]})
    table.append(["total", "", str(runs),
                  f"{sum(r['instance_hours'] for r in rows):.2f}", f"${total:,.2f}"])
    print(render_table(table, ("MONTH", "PROVIDER", "RUNS", "INSTANCE-HOURS", "COST")),
          file=ctx.stdout)
    return 0
