"""Hyperparameter search: random or grid, trials in parallel worker processes.

``dql-trading tune`` and the tuning stage of ``full-workflow`` call :func:`run_tuning`. Each trial
trains an agent for ``tuning_episodes`` episodes with one set of parameters and is scored by
``optimization_metric`` on the validation split (never the test split). Trials run in a pool of
worker processes (spawn context, one torch thread each, ``workers`` = the cores this process may
use, at most the number of trials), so a 16-core machine runs 16 trials at once. As each trial
finishes, a ``trial`` event (trial, trials, params, score, plus status, metrics and wall_s) goes
to ``events.jsonl``, so a watcher sees trials finish live. At the end:

- ``tuning_results.csv``: one row per trial (parameters, score, headline validation metrics);
- ``best_params.json``: the best trial's parameters and how they were found; ``--skip_tuning``
  reuses them from the run's own folder, ``--params_file PATH|URI`` from any file (another
  run's, on another machine: tune on many CPU cores, train on a GPU). One reader for both,
  :func:`read_best_params` (:func:`load_best_params`, :func:`apply_best_params` on top); a
  run given ``--params_file`` keeps a copy in its folder (:func:`copy_best_params`).

The search space (:data:`RANDOM_SPACE`, :data:`GRID_SPACE`) keeps the predecessor's ranges, mapped
onto this engine's settings: ``gamma``, ``lr`` (its ``learning_rate``), ``eps_fraction`` (its
``epsilon_decay``: the predecessor decayed epsilon per gradient step, which ended exploration
after about a thousand updates; here the knob is the fraction of training over which epsilon
anneals), ``batch_size``, ``buffer_size``, and ``train_transaction_cost`` (its
``env_transaction_cost_pct``, 5e-5..1e-3): the cost the *training* environments charge, a
regulariser against over-trading. Trials are always judged at the run's real
``transaction_cost`` + ``slippage`` (a trial judged at the cost it chose would simply pick the
cheapest market), and ``--skip_tuning`` reuses every tuned setting except that one, which is not
a setting of the run (``tune_costs=False`` leaves it out of the search).

Trials run on the CPU unless the config names a device (``--device cuda``): with ``device auto``
a 16-core GPU machine runs 16 small-network trials at once on its cores.

Optuna would add pruning and TPE sampling; with 20 trials of a few episodes each, random search
in a process pool uses the machine as fully, so the engine does not depend on it.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import itertools
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import BadInput
from engine.metrics import score as metric_score
from providers.layout import is_uri

BEST_PARAMS_FILE = "best_params.json"
RESULTS_CSV = "tuning_results.csv"
TRIALS_DIR = "tuning"
DEFAULT_TRIAL_FN = "engine.tune:train_trial"
TRAIN_COST_KEY = "train_transaction_cost"

# Distributions: ("uniform", lo, hi), ("loguniform", lo, hi) or ("choice", [values]).
RANDOM_SPACE: dict[str, tuple[Any, ...]] = {
    "gamma": ("uniform", 0.85, 0.999),
    "lr": ("loguniform", 1e-5, 1e-3),
    "eps_fraction": ("uniform", 0.1, 0.8),
    "batch_size": ("choice", [32, 64, 128, 256]),
    "buffer_size": ("choice", [10_000, 20_000, 50_000, 100_000]),
}
GRID_SPACE: dict[str, list[Any]] = {
    "gamma": [0.9, 0.95, 0.99],
    "lr": [1e-4, 5e-4, 1e-3],
    "eps_fraction": [0.2, 0.5],
    "batch_size": [64, 128],
    "buffer_size": [10_000, 50_000],
}
COST_RANDOM = ("uniform", 5e-5, 1e-3)
COST_GRID = [1e-4, 5e-4]

TrialFn = Callable[[dict[str, Any], Path], Mapping[str, Any]]
"""A trial: ``fn(config_dict, work_dir) -> validation metrics`` (the config already holds the
trial's parameters). It runs in a worker process, so give it as ``"module:function"``."""


# -- parameter sets ------------------------------------------------------------------------------
def sample_random(space: Mapping[str, tuple[Any, ...]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` parameter sets drawn from ``space`` with a seeded generator (Python scalars)."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    for _ in range(n):
        params: dict[str, Any] = {}
        for name, dist in space.items():
            kind = dist[0]
            if kind == "uniform":
                params[name] = float(rng.uniform(dist[1], dist[2]))
            elif kind == "loguniform":
                params[name] = float(math.exp(rng.uniform(math.log(dist[1]), math.log(dist[2]))))
            elif kind == "choice":
                values = list(dist[1])
                params[name] = _py(values[int(rng.integers(0, len(values)))])
            else:
                raise ValueError(f"unknown distribution {kind!r} for {name}")
        out.append(params)
    return out


def grid_points(space: Mapping[str, Sequence[Any]], n: int | None = None,
                seed: int = 0) -> list[dict[str, Any]]:
    """Every combination of ``space`` in order; if ``n`` is smaller than the grid, ``n`` of them
    picked by a seeded shuffle (a truncated grid still spreads over the space)."""
    names = list(space)
    combos = [dict(zip(names, map(_py, values), strict=True))
              for values in itertools.product(*(space[k] for k in names))]
    if n is not None and 0 < n < len(combos):
        order = np.random.default_rng(seed).permutation(len(combos))[:n]
        combos = [combos[i] for i in sorted(order.tolist())]
    return combos


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def search_space(method: str, *, tune_costs: bool = True) -> dict[str, Any]:
    """The default space of ``method`` (random or grid), with the training cost if asked."""
    if method == "random":
        space: dict[str, Any] = dict(RANDOM_SPACE)
        if tune_costs:
            space[TRAIN_COST_KEY] = COST_RANDOM
        return space
    if method == "grid":
        grid: dict[str, Any] = dict(GRID_SPACE)
        if tune_costs:
            grid[TRAIN_COST_KEY] = COST_GRID
        return grid
    raise ValueError(f"search method must be random or grid, got {method!r}")


# -- workers -------------------------------------------------------------------------------------
def _init_worker() -> None:
    """Each worker: one BLAS/OpenMP thread, and one torch thread (:func:`_one_torch_thread`).

    Many single-threaded processes beat a few wide ones for small networks, and several threads
    per process on busy cores collapse (measured: 30x slower with 2 threads on 2 busy cores).
    Torch reads ``OMP_NUM_THREADS`` when it is first imported, so setting it here, before any
    trial imports torch, already gives one intra-op thread.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    # Ctrl+C reaches the whole process group: the parent handles it and ends the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the tuning process dies (even by SIGKILL), so no trial
    keeps burning a core for an orphaned search. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: end running trials and drop queued ones (tuning was interrupted).

    ``shutdown`` alone would wait for running trials (minutes); the worker processes are taken
    before it forgets them (``_processes``: no public API for this before Python 3.14's
    ``terminate_workers``)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for proc in procs:
        try:
            proc.terminate()
        except (OSError, AttributeError, ValueError):
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        try:
            proc.join(timeout=5)
        except (OSError, AttributeError, AssertionError, ValueError):
            pass


def _one_torch_thread() -> None:
    """Pin torch to one thread if the trial's code has imported it (not imported otherwise:
    torch takes seconds to import and a trial function may not need it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started in this process
        pass


def _resolve(fn: str | TrialFn) -> TrialFn:
    if callable(fn):
        return fn
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _run_trial(trial_fn: str | TrialFn, cfg: dict[str, Any], work_dir: str) -> dict[str, Any]:
    """One trial in a worker; never raises (a failed trial is reported, not fatal)."""
    t0 = time.perf_counter()
    try:
        fn = _resolve(trial_fn)
        if os.environ.get("OMP_NUM_THREADS") == "1":  # in a worker (see _init_worker)
            _one_torch_thread()
        metrics = dict(fn(cfg, Path(work_dir)))
        return {"status": "ok", "metrics": metrics, "wall_s": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - reported as a failed trial
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return {"status": "failed", "error": last[:500], "metrics": {},
                "wall_s": time.perf_counter() - t0}


_DATA_CACHE: dict[tuple[Any, ...], Any] = {}  # per worker process: PreparedData by its inputs


def train_trial(cfg: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """The default trial: :func:`engine.train.run_training` with ``cfg`` (writing nothing:
    ``out_dir`` None), returning the validation metrics of its best weights. The trial's
    ``train_transaction_cost``, if any, is the training environments' cost only; validation is
    always judged at the run's ``transaction_cost``. Data are loaded and featurised once per
    worker process and shared by its trials."""
    from engine.config import Config
    from engine.data import market_files
    from engine.train import prepare_data, prepare_markets, run_training

    values = dict(cfg)
    train_cost = values.pop(TRAIN_COST_KEY, None)
    config = Config.from_dict(values, source="tuning trial")
    config = dataclasses.replace(config, checkpoint_every=0, notify=False, events_stdout=False,
                                 test=False, resume=False, torch_threads=1,
                                 device="cpu" if config.device == "auto" else config.device)
    key = (config.data_file, config.feature_window, config.trend_window, config.window,
           config.train_frac, config.val_frac)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        files = market_files(config.data_file)  # several markets: one agent on all
        _DATA_CACHE[key] = (prepare_data(config.resolved()) if files is None
                            else prepare_markets(config.resolved(), files))
    result = run_training(config, data=_DATA_CACHE[key], out_dir=None, log=lambda _m: None,
                          train_transaction_cost=None if train_cost is None
                          else float(train_cost))
    if result.val_metrics is None:
        raise ValueError("no validation split to score the trial on (val_frac is 0)")
    return dict(result.val_metrics)


# -- the search ----------------------------------------------------------------------------------
@dataclasses.dataclass
class TuningResult:
    """What a search found (also in best_params.json and tuning_results.csv)."""

    best_params: dict[str, Any]
    """The best trial's run settings (Config field -> value; apply with
    ``engine.config.apply_overrides``). The tuned training friction is not among them."""
    best_score: float | None
    best_trial: int | None
    metric: str
    trials: list[dict[str, Any]]
    wall_s: float
    workers: int
    path: Path | None = None
    train_transaction_cost: float | None = None
    """The best trial's training-environment cost (pass it to ``run_training``'s
    ``train_transaction_cost``); None when costs were not tuned."""


def _config_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):
        return dict(cfg.to_dict())
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {k: v for k, v in dataclasses.asdict(cfg).items() if not k.startswith("_")}
    return dict(cfg)


def default_workers(n_trials: int) -> int:
    """Cores this process may use (cgroup- and affinity-aware), at most one per trial."""
    try:
        from engine.runtime import cpu_count

        cores = cpu_count()
    except ImportError:
        cores = os.cpu_count() or 1
    return max(1, min(int(n_trials), cores))


def run_tuning(cfg: Any, results_dir: str | os.PathLike[str], *, method: str | None = None,
               n_iter: int | None = None, metric: str | None = None,
               episodes: int | None = None, workers: int = 0, events: Any = None,
               space: Mapping[str, Any] | None = None, tune_costs: bool = True,
               trial_fn: str | TrialFn = DEFAULT_TRIAL_FN, seed: int | None = None,
               keep_trial_dirs: bool = False,
               log: Callable[[str], None] | None = None) -> TuningResult:
    """Search hyperparameters for ``cfg`` (an :class:`engine.config.Config` or a dict of its
    settings); write ``best_params.json`` and ``tuning_results.csv`` in ``results_dir``.

    Defaults come from the config: ``search_method``, ``n_iter``, ``optimization_metric``,
    ``tuning_episodes``, ``seed``. ``workers`` 0 = :func:`default_workers`; 1 runs the trials in
    this process (no pool). ``events`` is an :class:`engine.events.EventWriter` (a ``trial``
    event per finished trial). ``space`` overrides the default search space (distributions for
    random, value lists for grid). ``trial_fn`` ("module:function" for worker processes) runs
    one trial; the default trains with :func:`engine.train.run_training`. Trial work folders
    live under ``results_dir/tuning/`` and are removed unless ``keep_trial_dirs``.
    """
    base = _config_dict(cfg)
    method = method or str(base.get("search_method", "random"))
    metric = metric or str(base.get("optimization_metric", "sharpe_ratio"))
    n = int(n_iter if n_iter is not None else base.get("n_iter", 20))
    seed = int(seed if seed is not None else base.get("seed", 0))
    eps = int(episodes if episodes is not None else base.get("tuning_episodes", 20))
    space = dict(space) if space is not None else search_space(method, tune_costs=tune_costs)
    if method == "random":
        param_sets = sample_random(space, n, seed)
    elif method == "grid":
        param_sets = grid_points(space, n, seed)
    else:
        raise ValueError(f"search method must be random or grid, got {method!r}")
    if not param_sets:
        raise ValueError("no tuning trials to run (n_iter must be >= 1)")
    out_dir = Path(results_dir)
    work_root = out_dir / TRIALS_DIR
    work_root.mkdir(parents=True, exist_ok=True)
    total = len(param_sets)
    n_workers = default_workers(total) if workers <= 0 else max(1, min(int(workers), total))
    say = log or (lambda _msg: None)
    say(f"tuning: {total} {method} trials of {eps} episodes on {n_workers} worker"
        f"{'s' if n_workers != 1 else ''}, maximising validation {metric}")

    def trial_cfg(params: Mapping[str, Any]) -> dict[str, Any]:
        d = {**base, "episodes": eps}
        d.update(params)
        return d

    trials: list[dict[str, Any]] = []

    def finished(index: int, params: dict[str, Any], outcome: dict[str, Any]) -> None:
        metrics = outcome.get("metrics") or {}
        ok = outcome.get("status") == "ok"
        value = metric_score(metrics, metric) if ok else -math.inf
        record = {"trial": index + 1, "params": params, "status": outcome.get("status"),
                  "score": value if math.isfinite(value) else None, "rank_score": value,
                  "metrics": metrics, "wall_s": round(float(outcome.get("wall_s", 0.0)), 3)}
        if not ok:
            record["error"] = outcome.get("error")
        trials.append(record)
        if events is not None:
            extra = {"error": record["error"]} if not ok else {}
            events.emit("trial", trial=index + 1, trials=total, params=params,
                        score=record["score"], status=record["status"], metric=metric,
                        metrics=metrics, wall_s=record["wall_s"], **extra)
        best = max(trials, key=lambda t: t["rank_score"])
        say(f"trial {index + 1}/{total} {record['status']}: {metric} "
            f"{_fmt(record['score'])} (best so far {_fmt(best['score'])}, trial "
            f"{best['trial']}) in {record['wall_s']:.1f}s"
            + (f" - {record.get('error')}" if not ok else ""))
        if not keep_trial_dirs:
            shutil.rmtree(work_root / f"trial_{index + 1:03d}", ignore_errors=True)

    t0 = time.perf_counter()
    jobs = [(i, p, trial_cfg(p), str(work_root / f"trial_{i + 1:03d}"))
            for i, p in enumerate(param_sets)]
    if n_workers == 1:
        for i, p, c, w in jobs:
            finished(i, p, _run_trial(trial_fn, c, w))
    else:
        pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=get_context("spawn"),
                                   initializer=_init_worker)
        try:
            pending: dict[Future[dict[str, Any]], tuple[int, dict[str, Any]]] = {
                pool.submit(_run_trial, trial_fn, c, w): (i, p) for i, p, c, w in jobs}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i, p = pending.pop(fut)
                    try:
                        outcome = fut.result()
                    except Exception as exc:  # noqa: BLE001 - a worker died (killed, OOM)
                        outcome = {"status": "failed", "metrics": {}, "wall_s": 0.0,
                                   "error": f"worker process failed: {type(exc).__name__}"}
                    finished(i, p, outcome)
        except BaseException:  # KeyboardInterrupt, a signal handler's exception, ...
            _terminate(pool)
            raise
        pool.shutdown(wait=True)
    wall = time.perf_counter() - t0
    if not keep_trial_dirs:
        shutil.rmtree(work_root, ignore_errors=True)

    trials.sort(key=lambda t: t["trial"])
    ok_trials = [t for t in trials if t["status"] == "ok"]
    best = max(ok_trials, key=lambda t: t["rank_score"]) if ok_trials else None
    best_all = dict(best["params"]) if best else {}
    train_cost = best_all.pop(TRAIN_COST_KEY, None)
    result = TuningResult(best_params=best_all,
                          train_transaction_cost=None if train_cost is None else float(train_cost),
                          best_score=best["score"] if best else None,
                          best_trial=best["trial"] if best else None, metric=metric,
                          trials=trials, wall_s=wall, workers=n_workers)
    _write_results_csv(out_dir / RESULTS_CSV, trials)
    if best is not None:
        result.path = save_best_params(out_dir, result, method=method, episodes=eps, base=base)
        say(f"tuning: best {metric} {_fmt(best['score'])} (trial {best['trial']}) in "
            f"{wall:.1f}s; parameters in {result.path}")
    else:
        say("tuning: every trial failed; no parameters saved")
    return result


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4g}"


def _write_results_csv(path: Path, trials: Sequence[Mapping[str, Any]]) -> None:
    keys = ("sharpe_ratio", "sortino_ratio", "total_return", "max_drawdown", "n_trades")
    pcols = sorted({k for t in trials for k in t["params"]})
    cols = ["trial", "status", "score", *pcols, *(f"val_{k}" for k in keys), "wall_s", "error"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for t in trials:
            row = {"trial": t["trial"], "status": t["status"], "score": t["score"],
                   "wall_s": t["wall_s"], "error": t.get("error")}
            row.update(t["params"])
            row.update({f"val_{k}": (t["metrics"] or {}).get(k) for k in keys})
            w.writerow(["" if row.get(c) is None else row.get(c) for c in cols])


def save_best_params(results_dir: str | os.PathLike[str], result: TuningResult, *,
                     method: str, episodes: int,
                     base: Mapping[str, Any] | None = None) -> Path:
    """Write ``best_params.json``: ``params`` (setting -> value), ``train_transaction_cost``
    (or null), ``metric``, ``score``, ``trial``, ``n_trials``, ``method``, ``tuning_episodes``,
    ``workers``, ``wall_s``, ``data_file``, ``created``."""
    doc = {"params": result.best_params,
           "train_transaction_cost": result.train_transaction_cost,
           "metric": result.metric, "score": result.best_score,
           "trial": result.best_trial, "n_trials": len(result.trials), "method": method,
           "tuning_episodes": episodes, "workers": result.workers,
           "wall_s": round(result.wall_s, 3),
           "data_file": (base or {}).get("data_file"),
           "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return _write_doc(Path(results_dir) / BEST_PARAMS_FILE, doc)


def copy_best_params(results_dir: str | os.PathLike[str], found: SavedParams) -> Path:
    """Keep the parameters a run was given (``--params_file``) in its own results folder as
    ``best_params.json``, with ``params_from`` = where they were read: the report shows them,
    and ``--skip_tuning`` / ``--resume`` of this run reuse them."""
    doc = {**found.doc, "params": {**found.params}, "params_from": found.source}
    doc.setdefault(TRAIN_COST_KEY, found.train_transaction_cost)
    return _write_doc(Path(results_dir) / BEST_PARAMS_FILE, doc)


def _write_doc(path: Path, doc: Mapping[str, Any]) -> Path:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


class ParamsNotFound(BadInput):
    """A ``best_params.json`` that is not there (:func:`read_best_params`, ``strict``)."""


@dataclasses.dataclass(frozen=True)
class SavedParams:
    """A ``best_params.json`` that was read (:func:`read_best_params`)."""

    params: dict[str, Any]
    """Its run settings (setting -> value), the tuned training cost left out."""
    train_transaction_cost: float | None
    """The tuned training-environment cost, or None."""
    source: str
    """Where it was read from (a path or a storage URI)."""
    doc: dict[str, Any]
    """The whole document (metric, score, trial, n_trials ...; ``{}`` for the predecessor's)."""


def _params_location(where: str | os.PathLike[str]) -> tuple[str, bool]:
    """(the file to read, whether it is a storage URI): a results folder means its
    ``best_params.json``; ``file://`` is a path."""
    text = os.fspath(where)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if is_uri(text):
        return text, True
    path = Path(text).expanduser()
    return str(path / BEST_PARAMS_FILE if path.is_dir() else path), False


def read_best_params(where: str | os.PathLike[str], *,
                     strict: bool = False) -> SavedParams | None:
    """The tuned parameters at ``where``: a results folder (its ``best_params.json``, or the
    predecessor's ``optimal_parameters.json``), a ``best_params.json`` path, or a storage URI
    (s3://, gs://, az://; read through ``providers.storage``).

    None when there is nothing there (and not ``strict``). ``strict`` (a file the user named,
    ``--params_file``): a missing or unreadable file, one that is not JSON or holds no ``params``
    object is a :class:`engine.config.BadInput` naming the file; so is a folder without one.
    Without ``strict`` a malformed file reads as nothing. A file that is not there is
    :class:`ParamsNotFound` (a BadInput)."""
    name, remote = _params_location(where)

    def bad(why: str) -> SavedParams | None:
        if strict:
            raise (ParamsNotFound if why == "not found" else BadInput)(
                f"params file {name}: {why}")
        return None

    if remote:
        from providers.storage import StorageError, open_store

        try:
            store, key = open_store(name)
            if not store.exists(key):
                return bad("not found")
            raw = store.get_bytes(key)
        except StorageError as exc:
            return bad(f"cannot read it ({str(exc).strip().splitlines()[0]})")
    else:
        path = Path(name)
        if not path.is_file():
            legacy = path.parent / "optimal_parameters.json"
            if path.name == BEST_PARAMS_FILE and legacy.is_file() and not strict:
                return _legacy_params(legacy)
            return bad("not found")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            return bad(f"cannot read it ({exc.strerror or exc})")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return bad(f"not JSON ({str(exc).splitlines()[0]})")
    params = doc.get("params") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        return bad("no 'params' object (expected a best_params.json written by tuning)")
    cost = doc.get(TRAIN_COST_KEY)
    if cost is None:
        cost = params.get(TRAIN_COST_KEY)
    if cost is not None and not (isinstance(cost, int | float) and not isinstance(cost, bool)
                                 and math.isfinite(cost) and cost >= 0):
        return bad(f"{TRAIN_COST_KEY} must be a number >= 0, got {cost!r}")
    return SavedParams(params={k: v for k, v in params.items() if k != TRAIN_COST_KEY},
                       train_transaction_cost=None if cost is None else float(cost),
                       source=name, doc=doc)


def _legacy_params(path: Path) -> SavedParams | None:
    """The predecessor's ``optimal_parameters.json`` (agent_params + env_params)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    agent = dict(doc.get("agent_params") or {}) if isinstance(doc, dict) else {}
    out: dict[str, Any] = {}
    for old, new in (("gamma", "gamma"), ("learning_rate", "lr"), ("lr", "lr"),
                     ("batch_size", "batch_size"), ("buffer_size", "buffer_size"),
                     ("memory_size", "buffer_size")):
        if old in agent:
            out[new] = agent[old]
    return SavedParams(params=out, train_transaction_cost=None, source=str(path),
                       doc={}) if out else None


def load_best_params(where: str | os.PathLike[str], *,
                     strict: bool = False) -> dict[str, Any] | None:
    """The ``params`` of the ``best_params.json`` at ``where`` (:func:`read_best_params`: a
    results folder, a file, a URI); None when there is none. Also reads the predecessor's
    ``optimal_parameters.json`` (agent_params + env_params) in a results folder."""
    found = read_best_params(where, strict=strict)
    return dict(found.params) if found is not None and found.params else None


def load_train_transaction_cost(where: str | os.PathLike[str]) -> float | None:
    """The tuned training-environment cost saved in ``best_params.json``; None if none."""
    found = read_best_params(where)
    return None if found is None else found.train_transaction_cost


def apply_best_params(cfg: Any, where: str | os.PathLike[str] | SavedParams, *,
                      strict: bool = False) -> tuple[Any, dict[str, Any]]:
    """``(cfg with the saved best settings applied, those settings)``; ``cfg`` unchanged and
    ``{}`` when nothing was saved. ``where``: a results folder, a ``best_params.json`` path or
    URI (``--params_file``), or what :func:`read_best_params` returned. A saved name that is not
    a setting, or a value that does not fit it, is a ConfigError naming the file. The tuned
    training cost is not a setting of the run (the run is always judged at its real costs): it
    is :attr:`SavedParams.train_transaction_cost`."""
    found = where if isinstance(where, SavedParams) else read_best_params(where, strict=strict)
    if found is None or not found.params:
        return cfg, {}
    from engine.config import apply_overrides

    return (apply_overrides(cfg, found.params, source=f"params file {found.source}"),
            dict(found.params))
