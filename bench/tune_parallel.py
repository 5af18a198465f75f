"""Tuning trials in parallel: the same trials on 1 worker, then on 2 (or --workers N).

    .venv/bin/python bench/tune_parallel.py                 # synthetic DQN-update trials
    .venv/bin/python bench/tune_parallel.py --real          # real training trials (engine.train)

Prints the wall time of each run and the speed-up ratio (time with 1 worker / time with N). On
2 idle cores the ideal is 2.0; process start-up (spawn, imports) and other jobs on the machine
take some of it. A benchmark, not a timed test: machines differ.

Shared machines: with the kernel's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_
enabled`` = 1) CPU time is shared between sessions, not processes. While other sessions keep the
cores busy, this session's workers together get one session's share however many there are: the
"cores on average" line shows it (about the same for 1 and 2 workers), and the speed-up appears
only when cores are free (not measured here on a dedicated machine).

The synthetic trial does what dominates a real trial's time: DQN-style gradient updates (MLP
256-256, batch 256, Adam) on one torch thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def real_trial(cfg: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """The engine's default trial (engine.tune.train_trial), with its CPU time."""
    from engine import tune

    c0 = time.process_time()
    out = tune.train_trial(cfg, work_dir)
    return {**out, "cpu_s": time.process_time() - c0}


def synthetic_trial(cfg: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """``cfg["updates"]`` gradient updates of a Q-network; returns a made-up Sharpe ratio."""
    c0 = time.process_time()
    import torch

    torch.manual_seed(int(cfg.get("seed", 0)))
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 3))
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg.get("lr", 1e-4)))
    x = torch.randn(256, 64)
    y = torch.randn(256, 3)
    for _ in range(int(cfg.get("updates", 300))):
        loss = torch.nn.functional.mse_loss(net(x), y * float(cfg.get("gamma", 0.99)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"sharpe_ratio": -loss.item(), "threads": torch.get_num_threads(), "pid": os.getpid(),
            "cpu_s": time.process_time() - c0}


def _time(workers: int, args: argparse.Namespace) -> tuple[float, Any]:
    from engine import tune

    if args.real:
        from engine.config import Config

        cfg: Any = Config(data_file=args.data, tuning_episodes=args.episodes, n_iter=args.trials,
                          seed=0)
        trial_fn = "tune_parallel:real_trial"
        space = None
    else:
        cfg = {"updates": args.updates, "n_iter": args.trials, "seed": 0}
        trial_fn = "tune_parallel:synthetic_trial"
        space = {"gamma": ("uniform", 0.9, 0.99), "lr": ("loguniform", 1e-5, 1e-3)}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = tune.run_tuning(cfg, d, method="random", workers=workers, trial_fn=trial_fn,
                              space=space)
        wall = time.perf_counter() - t0
    failed = [t for t in res.trials if t["status"] != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} trials failed: {failed[0].get('error')}")
    cpu = sum(float(t["metrics"].get("cpu_s", 0.0)) for t in res.trials)
    print(f"{workers} worker{'s' if workers != 1 else ' '}: {wall:6.2f} s wall, trials used "
          f"{cpu:6.2f} CPU s = {cpu / wall:.2f} cores on average")
    return wall, res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--updates", type=int, default=400, help="updates per synthetic trial")
    p.add_argument("--real", action="store_true", help="real training trials (engine.train)")
    p.add_argument("--data", default="STOCKS_GOOGL.csv")
    p.add_argument("--episodes", type=int, default=10, help="episodes per real trial")
    p.add_argument("--repeat", type=int, default=1, help="alternating rounds; best time kept")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)  # the 1-worker run trains in this process: one thread, as a worker
    kind = "real training" if args.real else f"synthetic ({args.updates} DQN updates)"
    print(f"{args.trials} trials of {kind}; {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"load average before: {_load()}")
    ones, manys = [], []
    res = None
    for _ in range(max(1, args.repeat)):  # alternate, keep the best of each (less noise)
        one, _ = _time(1, args)
        ones.append(one)
        many, res = _time(args.workers, args)
        manys.append(many)
    one, many = min(ones), min(manys)
    print(f"load average after: {_load()}")
    print(f"speed-up 1 -> {res.workers if res else args.workers} workers (best of "
          f"{len(ones)}): {one / many:.2f}x ({'faster' if many < one else 'NOT faster'})")


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
