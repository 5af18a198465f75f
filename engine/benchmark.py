"""``dql-trading benchmark --data_dir DIR --seeds N``: the agent on every market, every seed, in
parallel on this machine, judged in one comparison report.

Jobs: each market file of ``DIR`` (``*.csv``, ``*.parquet``) x seeds ``seed .. seed+N-1``, each
a ``train --test`` with the given settings into
``<results_dir>/<experiment_name>/runs/<market>/seed<S>/``; with ``--pooled``, one multi-market
agent per seed for each bar interval among the files (``runs/pooled-1d/seed<S>/``,
``runs/pooled-1h/...``; a market alone at its interval trains alone, as without ``--pooled``).
Markets of different intervals are never pooled: one agent for hourly FX and daily equities
wrecked the FX market (bench/ablation.md, -8.60 Sharpe against +1.73 alone); a group is a folder
of links, ``<experiment_name>/groups/<interval>/``. Jobs run in worker processes
(spawned, one torch thread each, at most ``--workers`` of them, at most the CPU count); a job
already finished (its ``test_metrics.json`` exists) is not run again, so an interrupted benchmark
continues where it stopped. Then :mod:`engine.aggregate` writes ``benchmark.json``,
``benchmark.csv`` and ``benchmark.html`` into ``<results_dir>/<experiment_name>/``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from engine.config import BadInput, Config


def _job(cfg_dict: dict[str, Any]) -> tuple[str, int, float]:
    """One benchmark run (in a worker process): (run folder, exit status, seconds)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from engine.workflow import run_command

    cfg = Config.from_dict(cfg_dict, source="benchmark")
    t0 = time.perf_counter()
    try:
        rc = run_command("train", cfg, stream=io.StringIO())
    except BadInput:
        rc = 2
    return str(Path(cfg.results_dir) / cfg.experiment_name), rc, time.perf_counter() - t0


def plan(cfg: Config, data_dir: str, seeds: int, *, pooled: bool = False) -> list[Config]:
    """The runs of a benchmark (see the module docstring)."""
    from engine.data import market_files, market_name

    files = market_files(data_dir)
    if files is None:
        raise BadInput(f"--data_dir {data_dir}: not a folder of market files")
    if seeds < 1:
        raise BadInput(f"--seeds must be >= 1, got {seeds}")
    root = Path(cfg.results_dir).expanduser() / (cfg.experiment_name or "benchmark") / "runs"
    base = dataclasses.replace(cfg, test=True, torch_threads=1, events_stdout=False,
                               notify=False, resume=False)
    targets = (pooled_targets(files, root.parent / "groups") if pooled
               else [(market_name(f), f) for f in files])
    jobs = []
    for s in range(cfg.seed, cfg.seed + seeds):
        for name, data in targets:
            jobs.append(dataclasses.replace(base, data_file=data, seed=s,
                                            results_dir=str(root / name),
                                            experiment_name=f"seed{s}"))
    return jobs


def bar_interval(path: str) -> str:
    """The median spacing of a market file's bars, as a short label: ``1d``, ``1h``, ``15m``,
    ``1w`` (7 days), ``30s``."""
    import numpy as np

    from engine.data import load_market_data

    ts = np.unique(np.asarray(load_market_data(path).timestamps, dtype="datetime64[s]"))
    secs = float(np.median(np.diff(ts.astype(np.int64)))) if len(ts) > 1 else 0.0
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * 0.9:
            return f"{round(secs / size)}{unit}"
    return f"{round(secs)}s"


def pooled_targets(files: list[str], groups: Path) -> list[tuple[str, str]]:
    """(run name, data spec) of ``--pooled``: the files grouped by :func:`bar_interval`; a group
    of several is a folder of links to its files (rebuilt each time), a lone file itself."""
    import shutil
    from collections import defaultdict

    from engine.data import market_name

    by: dict[str, list[str]] = defaultdict(list)
    for f in files:
        by[bar_interval(f)].append(f)
    out = []
    for label, members in sorted(by.items()):
        if len(members) == 1:
            out.append((market_name(members[0]), members[0]))
            continue
        folder = groups / label
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for f in members:
            (folder / Path(f).name).symlink_to(Path(f).resolve())
        out.append((f"pooled-{label}", str(folder)))
    return out


def run_benchmark(cfg: Config, data_dir: str, seeds: int, *, workers: int = 0,
                  pooled: bool = False, log: Callable[[str], None] = print) -> int:
    """Run the benchmark and write its report; returns the exit status (1 if a run failed)."""
    from engine.aggregate import aggregate, records_from_run, write_summary

    name = cfg.experiment_name or "benchmark"
    cfg = dataclasses.replace(cfg, experiment_name=name)
    jobs = plan(cfg, data_dir, seeds, pooled=pooled)
    cores = os.cpu_count() or 1
    n_workers = max(1, min(workers or cores, cores, len(jobs)))
    todo = [j for j in jobs
            if not (Path(j.results_dir) / j.experiment_name / "test_metrics.json").exists()]
    log(f"benchmark {name}: {len(jobs)} runs ({len(jobs) - len(todo)} already done), "
        f"{n_workers} worker processes")
    failed = 0
    t0 = time.perf_counter()
    if todo:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            futures = [pool.submit(_job, j.to_dict()) for j in todo]
            for fut in as_completed(futures):
                where, rc, secs = fut.result()
                failed += rc != 0
                log(f"  {'ok    ' if rc == 0 else f'exit {rc}'} {where} ({secs:.0f}s)")
    records = [r for j in jobs for r in records_from_run(Path(j.results_dir) / j.experiment_name)]
    if not records:
        raise BadInput("benchmark: no run produced test results")
    summary = aggregate(records, seed=cfg.seed)
    out = Path(cfg.results_dir).expanduser() / name
    settings = {k: v for k, v in cfg.resolved().to_dict().items()
                if k not in ("data_file", "results_dir", "experiment_name", "seed")}
    settings.update(data_dir=data_dir, seeds=seeds, pooled=pooled,
                    wall_s=round(time.perf_counter() - t0, 1))
    paths = write_summary(summary, out, title=f"Benchmark {name}", settings=settings)
    log(summary["verdict"])
    log(f"report: {paths['html']}")
    return 1 if failed else 0
