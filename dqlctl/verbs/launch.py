"""``dqlctl launch``: start a training run (``--dry-run``: say what would be created;
``--follow``: stream its progress and exit with its status).

Tune on one machine and train on another (``dqlctl cost --phase all`` says when it pays):
``launch --command tune --instance-type X ... -- --n_iter 40 --tuning_episodes 10`` runs only
the trials (``--episodes`` is refused there: tune trains no final model), then
``launch --command train --params-from <that run> --instance-type Y --episodes N ...`` trains
with its ``best_params.json`` (``dqlctl.runs.request``: read, checked, copied to the new run's
results)."""

from __future__ import annotations

import argparse
from typing import Any

from dqlctl.render import format_event, print_run_result, safe_text
from dqlctl.verbs import print_json


def register(sub: Any) -> None:
    p = sub.add_parser("launch", help="start a training run",
                       description="Start a training run on a provider (default: this machine).")
    p.add_argument("--provider", default="local", help="local (default), aws, gcp, azure, or "
                   "auto: the cheapest priced offer for --gpu across the clouds")
    p.add_argument("--data", default="STOCKS_GOOGL.csv",
                   help="market data: a path, a bare name under data/ or $DQL_DATA_DIR, or a URI")
    p.add_argument("--agent-type", default="custom", help="dql, custom (default) or memory")
    p.add_argument("--episodes", type=int, help="training episodes (default 20; not with "
                   "--command tune, whose trials are -- --n_iter N --tuning_episodes M)")
    p.add_argument("--name", help="a name for the run (default: from the data and agent)")
    p.add_argument("--command", default="full-workflow", help="engine command: full-workflow "
                   "(default: train, evaluate, report), train, or tune (the trials alone: "
                   "-- --n_iter N --tuning_episodes M; its best_params.json feeds "
                   "--params-from)")
    p.add_argument("--tune", action="store_true", help="run the tuning stage first")
    p.add_argument("--params-from", metavar="RUN|PATH|URI",
                   help="train / full-workflow with tuned parameters: a run's (id or name: one "
                   "that finished tuning, e.g. a --command tune run), or a best_params.json "
                   "path or URI; copied to the run's results, tuning skipped")
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
                   "machine's public address/32; wider than a /24 needs --yes)")
    p.add_argument("-y", "--yes", action="store_true",
                   help="with --ssh-cidr wider than a /24: open port 22 to it anyway")
    p.add_argument("--keep", action="store_true", help="leave the VM up when the run ends")
    p.add_argument("--idle-minutes", type=float, metavar="M",
                   help="the VM shuts itself down M minutes after its run ended (default 30; "
                   "with --keep: only when given)")
    p.add_argument("--collect-grace", type=float, metavar="M", dest="collect_grace_minutes",
                   help="results on the VM's disk: it waits M minutes for dqlctl to collect them "
                   "before shutting down (default 30)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be created, create nothing")
    p.add_argument("--results-dir", help="where results go (default: the run's folder)")
    p.add_argument("--failover-clouds", action="store_true",
                   help="no capacity on this cloud in any region: go on to the next cloud "
                   "offering the GPU, cheapest first (on with --provider auto)")
    p.add_argument("--failover-results", action="append", default=[], metavar="URI",
                   help="where results go on another cloud after a cross-cloud failover, e.g. "
                   "gs://bucket/runs (repeat per cloud; the checkpoint is copied there)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="stream progress until the run ends; exit with its status")
    p.add_argument("--json", action="store_true", help="print the run as JSON")
    p.add_argument("engine_args", nargs="*", metavar="-- ENGINE ARGS",
                   help="extra engine flags after --, e.g. -- --n_envs 32")
    p.set_defaults(func=cmd_launch)


def cmd_launch(ctx: Any, args: argparse.Namespace) -> int:
    from dqlctl import runs
    from dqlctl.errors import UsageError

    if args.command == "tune" and args.episodes is not None:
        raise UsageError("--episodes: the engine's tune trains no final model; its trials are "
                         "set by -- --n_iter N --tuning_episodes M", field="episodes")
    req = runs.LaunchRequest(
        provider=args.provider, data=args.data, agent_type=args.agent_type,
        episodes=20 if args.episodes is None else args.episodes, name=args.name,
        command=args.command, tune=args.tune, params_from=args.params_from,
        runtime=args.runtime, region=args.region, instance_type=args.instance_type,
        gpu=args.gpu, spot=args.spot, seed=args.seed, results_dir=args.results_dir,
        max_price=args.max_price, image=args.image, image_id=args.image_id,
        ssh_cidr=args.ssh_cidr, wide_ssh_ok=args.yes, keep=args.keep, max_cost=args.max_cost,
        idle_minutes=args.idle_minutes, collect_grace_minutes=args.collect_grace_minutes,
        max_recoveries=args.max_recoveries, engine_args=args.engine_args,
        failover_clouds=args.failover_clouds, failover_results=args.failover_results)
    quiet = args.json
    if args.dry_run:
        plan = runs.plan(ctx, req)
        from dqlctl.profiles import run_estimate

        plan.update(run_estimate(ctx.home, req, plan))  # the run's duration and cost there
        if args.json:
            print_json(ctx, plan)
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
            print_json(ctx, runs.run_summary(ctx, run, ctx.clock()))
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
        print_json(ctx, runs.run_summary(ctx, run, ctx.clock()))
    else:
        if run.state != "SUCCEEDED":
            tail = runs.log_tail(ctx, run, 10)
            if tail:
                print("last lines of the engine log:", file=ctx.stdout)
                for line in tail:
                    print(f"  | {safe_text(line)}", file=ctx.stdout)
        print_run_result(run, ctx.stdout)
    return runs.run_exit_code(run)
