"""The engine's commands end to end: check the input, then train, evaluate, report, notify.

``run_command(command, cfg, given=..., experiments=...)`` is what the CLI calls once it has a
:class:`engine.config.Config`; it returns the process exit status:

- 0: done;
- 1: the run failed (a ``failed`` event and one line on stderr);
- 2: bad input (settings, a data file that does not load or is too short, a missing model):
  refused before anything is written, so a data error leaves no results folder behind;
- 130 / 143: stopped by SIGINT / SIGTERM. During training the current vectorised step is
  finished, a checkpoint is written (``checkpoint`` event), a ``failed`` event says how to
  continue (``--resume``) and the process exits 128 + the signal number. A second signal ends the
  process at once.

Stages of ``full-workflow``: tune (``engine.tune``, unless ``--skip_tuning``; then the saved
``best_params.json`` is reused; or ``--params_file PATH|URI``: the ``params`` of that
``best_params.json``, tuned elsewhere, and tuning is skipped) -> train -> evaluate (test split, with the baselines of
``engine.report``/``engine.baselines``) -> report (``engine.report.build_report``). Each stage's
module is optional: when it is not importable, the stage is skipped with a ``warning`` event and
the workflow still ends with the model and its test metrics. ``train --params_file`` applies the
file's parameters (and its tuned training cost) the same way before training; the file is read
and checked before anything is written (a bad one is exit 2 naming it), ``run_started`` carries
``params_from`` (where it was read), and the run keeps a copy as its own ``best_params.json``
(with ``params_from``), which the report shows.

Events (``<results_dir>/<experiment>/events.jsonl``; on stdout too with ``--events_stdout``):
``run_started`` -> ``warning`` (data quirks, skipped stages) -> ``stage`` (tune, train, evaluate,
report) -> ``trial`` (from tuning) -> ``episode`` per episode and ``checkpoint`` per checkpoint ->
``evaluation`` (split ``val``, then ``test``) -> ``finished`` (with the test metrics) or
``failed`` (with the reason).

Results on object storage (``--results_dir s3://bucket/prefix``): the run writes into a local
staging folder (``$DQL_STAGING_DIR`` or ``~/.cache/dql-trading/staging``), uploads each
checkpoint as it is written and every other file at the end; a data file given as a URI is
copied to ``~/.cache/dql-trading/data`` first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from engine.config import BadInput, Config, ConfigError, apply_overrides
from engine.events import EventWriter
from providers.layout import STAGING_ENV, experiment_uri, is_uri, staged_experiment_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SIGNAL_EXIT = {int(signal.SIGINT): 130, int(signal.SIGTERM): 143}

# Files a fresh (not --resume) training run replaces; tuning results stay for --skip_tuning.
RUN_FILES = ("events.jsonl", "engine.log", "model.pth", "train_metrics.json", "config.json",
             "test_metrics.json", "test_metrics.csv", "val_metrics.json",
             "strategy_comparison.csv", "test_series.csv", "report.html", "markets.csv")
RUN_DIRS = ("checkpoints", "plots", "members", "markets")


class Interrupted(Exception):
    """A stop signal arrived (between stages, or in training after its checkpoint)."""

    def __init__(self, signum: int, checkpoint: Path | None = None, episode: int | None = None):
        super().__init__(f"signal {signum}")
        self.signum, self.checkpoint, self.episode = signum, checkpoint, episode


def _optional(module: str) -> ModuleType | None:
    """An optional module of the engine (issue 4's tune/report/notify), None when absent."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


class RunLog:
    """Human log lines: stdout (flushed), and ``engine.log`` in the results once it exists."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._pending: list[str] = []
        self._fh: TextIO | None = None

    def __call__(self, message: str) -> None:
        out = self.stream or sys.stdout
        print(message, file=out, flush=True)
        if self._fh is not None:
            self._fh.write(message + "\n")
            self._fh.flush()
        else:
            self._pending.append(message)

    def attach(self, path: Path) -> None:
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115
        for line in self._pending:
            self._fh.write(line + "\n")
        self._pending.clear()
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@contextlib.contextmanager
def stop_signals(stop: Any) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop.signum`` (training checkpoints and stops); a second one kills.
    SIGUSR1 sets ``stop.checkpoint_now`` (training checkpoints at the end of its current step
    and goes on: a spot VM's rebalance recommendation, providers/local/supervisor.py)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.signum is None:
            stop.signum = signum
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def checkpoint_now(signum: int, frame: Any) -> None:
        stop.checkpoint_now = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    if hasattr(signal, "SIGUSR1"):
        old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, checkpoint_now)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def default_signals() -> Iterator[None]:
    """Plain signal behaviour (for stages that cannot checkpoint, like tuning)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL),
           signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- locations ----------------------------------------------------------------------------------

def _is_uri(name: str) -> bool:
    return is_uri(name)


def _cache_dir(kind: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dql-trading" / kind


def output_location(cfg: Config) -> tuple[Path, str | None]:
    """(local experiment folder, its object-storage URI or None)."""
    root = cfg.results_dir
    if root.startswith("file://"):
        root = root[len("file://"):]
    if not _is_uri(root):
        return Path(root).expanduser() / cfg.experiment_name, None
    staging = os.environ.get(STAGING_ENV) or str(_cache_dir("staging"))
    return (Path(staged_experiment_dir(staging, root, cfg.experiment_name)),
            experiment_uri(root, cfg.experiment_name))


def local_data_file(name: str) -> str:
    """A local path for the data file ``name`` (a storage URI is downloaded once, cached)."""
    if not _is_uri(name):
        return name
    from providers.storage import StorageError, open_store

    target = _cache_dir("data") / hashlib.sha1(name.encode()).hexdigest()[:12] / \
        name.rstrip("/").rsplit("/", 1)[-1]
    if target.is_file():
        return str(target)
    try:
        store, key = open_store(name)
        data = store.get_bytes(key)
    except StorageError as exc:
        raise BadInput(f"cannot read data file {name}: {exc}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    from engine.checkpoint import atomic_write

    atomic_write(target, lambda fh: fh.write(data))
    return str(target)


def local_data_files(spec: str) -> list[str]:
    """The local market files ``--data_file`` names: one file (resolved as before), a folder or
    a glob of files (:func:`engine.data.market_files`), or a storage prefix ending in ``/``
    (each market file under it copied locally once)."""
    from engine.data import MARKET_SUFFIXES, DataError, market_files, resolve_data_path

    if _is_uri(spec) and spec.endswith("/"):
        from providers.storage import StorageError, open_store

        try:
            store, prefix = open_store(spec)
            keys = sorted(o.key for o in store.list(prefix)
                          if o.key.lower().endswith(MARKET_SUFFIXES))
        except StorageError as exc:
            raise BadInput(f"cannot list data files under {spec}: {exc}") from None
        if not keys:
            raise DataError(f"no .csv or .parquet market files under {spec}")
        folder = _cache_dir("data") / hashlib.sha1(spec.encode()).hexdigest()[:12]
        out = []
        for key in keys:
            target = folder / key.rstrip("/").rsplit("/", 1)[-1]
            if not target.is_file():
                try:
                    data = store.get_bytes(key)
                except StorageError as exc:
                    raise BadInput(f"cannot read data file {key} under {spec}: {exc}") from None
                target.parent.mkdir(parents=True, exist_ok=True)
                from engine.checkpoint import atomic_write

                atomic_write(target, lambda fh, d=data: fh.write(d))
            out.append(str(target))
        return out
    if not _is_uri(spec):
        found = market_files(spec)
        if found is not None:
            return found
    return [resolve_data_path(local_data_file(spec))]


def _upload_all(out: Path, uri: str | None, log: Callable[[str], None]) -> None:
    if uri is None:
        return
    from engine.checkpoint import CKPT_DIR, RemoteMirror

    mirror = RemoteMirror(uri)
    count = 0
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not rel.startswith(CKPT_DIR + "/") and not path.name.endswith(
                ".tmp"):
            mirror.put(path, rel)
            count += 1
    log(f"uploaded {count} files to {uri}")


def _clear_previous_run(out: Path, log: Callable[[str], None]) -> None:
    found = [n for n in (*RUN_FILES, *RUN_DIRS) if (out / n).exists()]
    if not found:
        return
    log(f"note: {out} holds an earlier run; replacing it (use --resume to continue it)")
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)


# -- the commands -----------------------------------------------------------------------------

def run_command(command: str, cfg: Config, *, given: frozenset[str] = frozenset(),
                experiments: list[str] | None = None, stream: TextIO | None = None) -> int:
    """Run one engine command (see the module docstring); returns the exit status."""
    if command == "check-dependencies":
        return check_dependencies(stream or sys.stdout)
    if command == "compare":
        return _compare(cfg, experiments or [], stream or sys.stdout)
    if command == "report":
        return _report_only(cfg.resolved(), stream or sys.stdout)
    if command in ("train", "full-workflow", "tune", "evaluate"):
        return _run(command, cfg, given, RunLog(stream))
    raise BadInput(f"unknown command {command!r}")


@dataclasses.dataclass
class _Ctx:
    command: str
    cfg: Config
    out: Path
    uri: str | None
    events: EventWriter
    log: RunLog
    notifier: Any
    t0: float
    strategies: dict[str, Any] = dataclasses.field(default_factory=dict)
    report: Path | None = None
    saved: Any = None
    """The tuned parameters of ``--params_file`` (``engine.tune.SavedParams``), or None."""


def _run(command: str, cfg: Config, given: frozenset[str], log: RunLog) -> int:
    """train / full-workflow / tune / evaluate: validate everything, then create outputs."""
    from engine.data import DataError

    cfg = cfg.resolved()
    out, uri = output_location(cfg)
    model_bundle: Any = None
    if command == "evaluate":
        cfg, model_bundle = _evaluation_config(cfg, given, out)
    saved = _params_file(command, cfg, given)
    try:  # a missing file fails here, before torch and pandas are imported
        files = local_data_files(cfg.data_file)
        # several markets: the local folder of a storage prefix's copies, else the folder/glob
        data_path = files[0] if len(files) == 1 else (
            str(Path(files[0]).parent) if _is_uri(cfg.data_file) else cfg.data_file)
    except DataError as exc:
        raise BadInput(str(exc)) from None
    local_cfg = dataclasses.replace(cfg, data_file=data_path)
    from engine.runtime import detect
    from engine.train import prepare_data, prepare_markets

    try:
        normalizer = None
        if model_bundle is not None and len(files) == 1:
            from engine.features import Normalizer

            normalizer = Normalizer.from_state_dict(model_bundle["normalizer"])
        data: Any = (prepare_data(local_cfg, normalizer=normalizer) if len(files) == 1
                     else prepare_markets(local_cfg, files))
    except DataError as exc:
        raise BadInput(str(exc)) from None
    try:
        rt = detect(cfg.device, cfg.torch_threads)
    except RuntimeError as exc:
        raise BadInput(str(exc)) from None
    if cfg.resume and command in ("train", "full-workflow"):
        _check_resume(cfg, out, uri, saved)

    # Input is good: from here on, outputs exist and every end is recorded as an event.
    if command in ("train", "full-workflow") and not cfg.resume:
        _clear_previous_run(out, log)
    out.mkdir(parents=True, exist_ok=True)
    log.attach(out / "engine.log")
    events = EventWriter(out / "events.jsonl", echo_stdout=cfg.events_stdout)
    notifier = _notifier(cfg, events, log)
    ctx = _Ctx(command, cfg, out, uri, events, log, notifier, time.perf_counter(), saved=saved)
    events.emit("run_started", experiment=cfg.experiment_name, command=command,
                agent_type=cfg.agent_type, episodes=cfg.episodes, data_file=cfg.data_file,
                device=rt.device, seed=cfg.seed, pid=os.getpid(),
                **({"params_from": saved.source} if saved is not None else {}))
    log(f"dql-trading {command}: experiment {cfg.experiment_name} -> {uri or out}")
    log(rt.line())
    for market in (data if isinstance(data, list) else [data]):
        log(f"data: {Path(market.md.source or data_path).name}, {market.md.n:,} bars, "
            f"{market.bars_per_year:,.0f} bars/year; train {_span(market.train)}, validation "
            f"{_span(market.val)}, test {_span(market.test)}")
        for w in market.md.warnings:
            _warn(ctx, f"data: {Path(market.md.source or data_path).name}: {w}")
    if notifier is not None:
        notifier.start(cfg.experiment_name, command=command,
                       details={"agent": cfg.agent_type, "data": Path(cfg.data_file).name,
                                "episodes": cfg.episodes})
    stop = _Stop()
    try:
        with stop_signals(stop):
            metrics = _stages(ctx, local_cfg, given, data, rt, stop, model_bundle)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        where = f" at episode {exc.episode}" if exc.episode is not None else ""
        saved = f"; checkpoint {exc.checkpoint.name}" if exc.checkpoint else ""
        reason = (f"stopped by {name}{where}{saved}; continue with --resume"
                  if exc.checkpoint else f"stopped by {name}{where}")
        log(reason)
        events.emit("failed", reason=reason)
        _safe_upload(ctx)
        if notifier is not None:
            notifier.failed(cfg.experiment_name, reason)
        _close(ctx)
        return SIGNAL_EXIT.get(exc.signum, 128 + exc.signum)
    except BaseException as exc:
        reason = _one_line(exc)
        if not isinstance(exc, BadInput):  # the traceback goes to engine.log (and --debug)
            _log_file_only(log, "".join(traceback.format_exception(exc)).rstrip())
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted (SIGINT)"
        events.emit("failed", reason=reason)
        _safe_upload(ctx)
        if notifier is not None:
            notifier.failed(cfg.experiment_name, reason)
        _close(ctx)
        raise
    events.emit("finished", status="succeeded", metrics=metrics or {})
    elapsed = time.perf_counter() - ctx.t0
    log(f"done in {elapsed:.1f}s: results in {uri or out}")
    _safe_upload(ctx)
    if notifier is not None:
        notifier.finished(cfg.experiment_name, metrics,
                          baseline=ctx.strategies.get("buy_and_hold"), elapsed_s=elapsed)
        if ctx.report is not None:
            notifier.send_document(ctx.report, caption=f"{cfg.experiment_name}: report")
    _close(ctx)
    return EXIT_OK


class _Stop:
    signum: int | None = None
    checkpoint_now: bool = False


def _emit_throughput(events: EventWriter, cfg: Config, rt: Any, result: Any) -> None:
    """The ``throughput`` event: the run's profile record (engine.profile), which the control
    center keeps as a measured profile of this configuration on this device."""
    from engine.profile import throughput_record

    try:
        record = throughput_record(cfg, rt, result)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # never fails a run
        events.emit("warning", message=f"no throughput record: {type(exc).__name__}: {exc}")
        return
    if record is not None:
        events.emit("throughput", **record)


def _stages(ctx: _Ctx, cfg: Config, given: frozenset[str], data: Any, rt: Any, stop: _Stop,
            model_bundle: Any) -> dict[str, Any] | None:
    """The stages of the command; returns the test metrics (None when not evaluated)."""
    from engine.train import TrainingInterrupted, load_model

    command, out, events, log = ctx.command, ctx.out, ctx.events, ctx.log
    tuned: dict[str, Any] = {}
    train_cost: float | None = None
    if command in ("tune", "full-workflow") or ctx.saved is not None:
        cfg, tuned = _tune_stage(ctx, cfg, given, data, stop)
        if command == "tune":
            return None
        tune = _optional("engine.tune")
        if tune is not None and "transaction_cost" not in given:
            # the tuned training-only cost (trials are always judged at the real costs)
            train_cost = (ctx.saved.train_transaction_cost if ctx.saved is not None
                          else tune.load_train_transaction_cost(out))
            if train_cost is not None:
                tuned["train_transaction_cost"] = train_cost
    _check(stop)
    if command == "evaluate":
        net, _, _ = load_model(out / "model.pth", rt.device)
        _write_config(ctx, cfg, rt, data, tuned)
        members = getattr(net, "members", None)  # an ensemble: each seed is judged too
        seeds = None if members is None else types.SimpleNamespace(
            members=[types.SimpleNamespace(net=m) for m in members], history=[])
        return _evaluate_stage(ctx, cfg, data, net, rt.device, val_series=None, result=seeds)

    _write_config(ctx, cfg, rt, data, tuned)
    events.emit("stage", name="train")
    mirror = None
    if ctx.uri is not None:
        from engine.checkpoint import RemoteMirror

        mirror = RemoteMirror(ctx.uri)
    from engine.augment import describe
    from engine.train import as_markets, train_agent

    markets = as_markets(data)
    where = f" over {len(markets)} markets" if len(markets) > 1 else ""
    seeds = f", an ensemble of {cfg.ensemble} seeds" if (cfg.ensemble or 1) > 1 else ""
    log(f"training {cfg.agent_type}: {cfg.episodes} episodes x "
        f"{sum(m.train_steps for m in markets):,} env steps on {cfg.n_envs} environments"
        f"{where}{seeds}{describe(cfg)}")
    try:
        result = train_agent(cfg, data=data, out_dir=out, events=events, log=log, stop=stop,
                             runtime_info=rt, mirror=mirror, train_transaction_cost=train_cost)
    except TrainingInterrupted as exc:
        raise Interrupted(exc.signum, exc.path, exc.episode) from None
    best = "n/a" if result.best_val_sharpe is None else f"{result.best_val_sharpe:.3f}"
    log(f"trained: {result.env_steps:,} env steps, {result.updates:,} updates in "
        f"{result.wall_s:.1f}s; best validation Sharpe {best} at episode {result.best_episode}")
    _emit_throughput(events, cfg, rt, result)
    if result.val_metrics is not None:
        events.emit("evaluation", split="val", metrics=result.val_metrics)
    if command == "train" and not cfg.test:
        return None
    _check(stop)
    metrics = _evaluate_stage(ctx, cfg, data, result.net, rt.device, result.val_series,
                              result=result, tuned=bool(tuned))
    if command == "full-workflow":
        _check(stop)
        _report_stage(ctx, cfg)
    return metrics


def _check(stop: _Stop) -> None:
    if stop.signum is not None:
        raise Interrupted(stop.signum)


def _tune_stage(ctx: _Ctx, cfg: Config, given: frozenset[str], data: Any, stop: _Stop
                ) -> tuple[Config, dict[str, Any]]:
    """Tune (or reuse saved parameters); the config to train with and the parameters applied."""
    tune = _optional("engine.tune")
    if tune is None:
        if ctx.command == "tune":
            raise BadInput("tuning is not available in this build yet (engine.tune is missing)")
        _warn(ctx, "tuning is not available in this build; training with the given settings")
        return cfg, {}
    reuse = ctx.command == "full-workflow" and (
        cfg.skip_tuning or (cfg.resume and (ctx.out / tune.BEST_PARAMS_FILE).exists()))
    if ctx.saved is not None:  # --params_file: tuned elsewhere (checked before outputs)
        tuned_cfg, params = tune.apply_best_params(cfg, ctx.saved)
        tune.copy_best_params(ctx.out, ctx.saved)
        skipped = "; tuning skipped" if ctx.command == "full-workflow" else ""
        ctx.log(f"tuned parameters from {ctx.saved.source}{skipped}: {params}")
    elif reuse:
        tuned_cfg, params = tune.apply_best_params(cfg, ctx.out)
        if params:
            ctx.log(f"reusing tuned parameters from {tune.BEST_PARAMS_FILE}: {params}")
        elif cfg.skip_tuning:
            ctx.log("--skip_tuning: no saved parameters; training with the given settings")
    else:
        ctx.events.emit("stage", name="tune")
        with default_signals():
            result = tune.run_tuning(cfg, ctx.out, events=ctx.events, log=ctx.log)
        params = dict(result.best_params)
        tuned_cfg = apply_overrides(cfg, params, source="tuning") if params else cfg
    kept = sorted(k for k in params if k in given)
    if kept:
        ctx.log(f"kept {', '.join('--' + k for k in kept)} from the command line over the tuned "
                "values")
        tuned_cfg = apply_overrides(tuned_cfg, {k: getattr(cfg, k) for k in kept})
    return tuned_cfg.resolved(), {k: v for k, v in params.items() if k not in kept}


def _trials_searched(ctx: _Ctx, cfg: Config) -> int:
    """How many tuning trials chose the parameters trained with (the deflated Sharpe's
    count): the ``n_trials`` their ``best_params.json`` records (``--params_file``, or the
    run's own when reused), else ``--n_iter``."""
    doc = ctx.saved.doc if ctx.saved is not None else None
    if doc is None:
        try:
            doc = json.loads((ctx.out / "best_params.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = None
    found = doc.get("n_trials") if isinstance(doc, dict) else None
    return int(found) if isinstance(found, int) and found > 0 else int(cfg.n_iter)


def _evaluate_stage(ctx: _Ctx, cfg: Config, data: Any, net: Any, device: str,
                    val_series: tuple[Any, Any] | None, *, result: Any = None,
                    tuned: bool = False) -> dict[str, Any]:
    """Greedy pass of the best model over each market's test split; metrics, baselines, the
    honest statistics (:mod:`engine.evaluation`), files."""
    from engine.evaluation import evaluate_markets

    ctx.events.emit("stage", name="evaluate")
    n_iter = _trials_searched(ctx, cfg) if tuned else 1
    done = evaluate_markets(ctx.out, cfg, data, net, device, val_series=val_series,
                            result=result, tuning_trials=n_iter)
    metrics = done["test_metrics"]
    strategies = done["strategies"]
    ctx.events.emit("evaluation", split="test", metrics=metrics)
    if done.get("equity") is not None:
        from engine.train import emit_equity

        market, tret = done["equity"]
        emit_equity(ctx.events, market, market.test, "test", tret, cfg)
    line = (f"test: return {_pct(metrics.get('total_return'))}, Sharpe "
            f"{_num(metrics.get('sharpe_ratio'))}, max drawdown {_pct(metrics.get('max_drawdown'))}"
            f", {metrics.get('n_trades')} trades")
    bh = strategies.get("buy_and_hold")
    if bh:
        line += f" (buy & hold {_pct(bh.get('total_return'))}, Sharpe {_num(bh.get('sharpe_ratio'))})"
    ctx.log(line)
    if metrics.get("verdict"):
        ctx.log(str(metrics["verdict"]))
    ctx.strategies = strategies
    return metrics


def _report_stage(ctx: _Ctx, cfg: Config) -> Path | None:
    report = _optional("engine.report")
    if report is None or not hasattr(report, "build_report"):
        _warn(ctx, "reports are not available in this build; skipping the report stage")
        return None
    ctx.events.emit("stage", name="report")
    path: Path = report.build_report(ctx.out, metric=cfg.optimization_metric)
    ctx.log(f"report: {path}")
    ctx.report = path
    return path


def _params_file(command: str, cfg: Config, given: frozenset[str]) -> Any:
    """``--params_file`` of train / full-workflow, read and checked (``engine.tune``'s reader:
    the file, its ``params`` all settings with usable values) before anything is written; a bad
    one is BadInput naming it. None without one, and for evaluate (the model's own config may
    name the file its training read)."""
    if not cfg.params_file or command == "evaluate":
        return None
    if command == "tune":
        raise BadInput("--params_file is for train and full-workflow: tune searches the "
                       "settings itself")
    tune = _optional("engine.tune")
    if tune is None:
        raise BadInput("--params_file: tuning is not available in this build (engine.tune is "
                       "missing)")
    saved = tune.read_best_params(cfg.params_file, strict=True)
    tuned_cfg, _ = tune.apply_best_params(cfg, saved)  # a name that is no setting: ConfigError
    try:
        tuned_cfg.resolved()
    except ConfigError as exc:
        raise BadInput(f"params file {saved.source}: {exc}") from None
    return saved


def _check_resume(cfg: Config, out: Path, uri: str | None, saved: Any = None) -> None:
    """Refuse --resume with settings other than the checkpoint's, before writing anything.
    ``saved``: the ``--params_file`` parameters the run trains with."""
    from engine import checkpoint as ckpt
    from engine.train import check_resumable

    folder = out / ckpt.CKPT_DIR
    if uri is not None:  # a new machine: bring the run's files into the staging folder
        ckpt.RemoteMirror(uri).fetch_all(out)
    found = ckpt.load_latest(folder, warn=lambda _m: None, mmap=True)
    if found is not None:  # tuned parameters are checked once they are applied (in training)
        settings = dict(found[0]["config"])
        tuned = list(saved.params) if saved is not None else _saved_params(out)
        check_resumable(apply_overrides(cfg, {k: settings[k] for k in tuned if k in settings}),
                        settings, found[1].name)


def _saved_params(out: Path) -> list[str]:
    try:
        doc = json.loads((out / "best_params.json").read_text(encoding="utf-8"))
        return [str(k) for k in (doc.get("params") or {})]
    except (OSError, ValueError, AttributeError):
        return []


def _evaluation_config(cfg: Config, given: frozenset[str], out: Path) -> tuple[Config, Any]:
    """The saved model's config, with what the command line set for the evaluation itself."""
    model = out / "model.pth"
    if not model.is_file():
        raise BadInput(f"no trained model at {model}: train experiment "
                       f"{cfg.experiment_name!r} first (train or full-workflow)")
    import torch

    try:
        bundle = torch.load(model, map_location="cpu", weights_only=True)
        saved = Config.from_dict(bundle["config"], source=str(model))
    except (ConfigError, KeyError, RuntimeError, ValueError, OSError) as exc:
        raise BadInput(f"{model}: not a usable model file ({_one_line(exc)})") from None
    free = ("data_file", "transaction_cost", "slippage", "results_dir", "experiment_name",
            "device", "torch_threads", "events_stdout", "debug", "notify", "seed")
    merged = apply_overrides(saved, {k: getattr(cfg, k) for k in given if k in free})
    if "data_file" not in given:
        merged = dataclasses.replace(merged, data_file=saved.data_file)
    return merged.resolved(), bundle


def _write_config(ctx: _Ctx, cfg: Config, rt: Any, data: Any, tuned: dict[str, Any]) -> None:
    from engine.checkpoint import atomic_write_text

    doc: dict[str, Any] = dict(ctx.cfg.to_dict())
    doc.update(cfg.to_dict())
    doc["data_file"] = ctx.cfg.data_file
    doc.update({"command": ctx.command, "tuned_params": tuned, "runtime": rt.to_dict(),
                "data": (data.summary() if not isinstance(data, list)
                         else {"markets": [m.summary() for m in data]}),
                "argv": sys.argv[1:],
                "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    atomic_write_text(ctx.out / "config.json", json.dumps(doc, indent=2, default=str) + "\n")


def _notifier(cfg: Config, events: EventWriter, log: Callable[[str], None]) -> Any:
    if not cfg.notify:
        return None
    notify = _optional("engine.notify")
    if notify is None:
        events.emit("warning", message="--notify: notifications are not available in this build")
        return None
    notifier = notify.Notifier.from_env(warn=lambda m: events.emit("warning", message=m))
    if not notifier.enabled:
        msg = f"--notify: {', '.join(notifier.missing)} not set; no messages will be sent"
        log(f"warning: {msg}")
        events.emit("warning", message=msg)
        return None
    return notifier


def _close(ctx: _Ctx) -> None:
    ctx.events.close()
    ctx.log.close()


def _safe_upload(ctx: _Ctx) -> None:
    try:
        _upload_all(ctx.out, ctx.uri, ctx.log)
    except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more
        _warn(ctx, f"upload to {ctx.uri} failed: {_one_line(exc)}")


def _warn(ctx: _Ctx, message: str) -> None:
    ctx.log(f"warning: {message}")
    ctx.events.emit("warning", message=message)


def _log_file_only(log: RunLog, text: str) -> None:
    if log._fh is not None:
        log._fh.write(text + "\n")
        log._fh.flush()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, BadInput):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _span(s: slice) -> str:
    return f"{int(s.stop) - int(s.start):,} bars"


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):+.2f}%"


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.2f}"


# -- report, compare, check-dependencies --------------------------------------------------------

def _report_only(cfg: Config, stream: TextIO) -> int:
    report = _optional("engine.report")
    if report is None:
        print("dql-trading: error: reports are not available in this build yet", file=sys.stderr)
        return EXIT_USAGE
    out, uri = output_location(cfg)
    if uri is not None:
        raise BadInput("report: give a local --results_dir (download the results first)")
    if not out.is_dir():
        raise BadInput(f"no results for experiment {cfg.experiment_name!r} in {out.parent}")
    try:
        path = report.build_report(out, metric=cfg.optimization_metric)
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from None
    print(f"report: {path}", file=stream)
    return EXIT_OK


def _compare(cfg: Config, names: list[str], stream: TextIO) -> int:
    compare = _optional("engine.compare")
    if compare is None:
        print("dql-trading: error: compare is not available in this build yet", file=sys.stderr)
        return EXIT_USAGE
    root = Path(cfg.results_dir).expanduser()
    if not names and root.is_dir():
        names = sorted(p.parent.name for p in root.glob("*/test_metrics.json"))
    if not names:
        raise BadInput(f"no evaluated experiments under {root} (give --experiments A B ...)")
    try:
        rows = compare.compare_experiments(root, names, out_csv=root / "comparison.csv")
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from None
    print(compare.format_table(rows), file=stream)
    print(f"written: {root / 'comparison.csv'}", file=stream)
    return EXIT_OK


DEPENDENCIES = (("torch", True), ("numpy", True), ("pandas", True), ("gymnasium", True),
                ("pyarrow", False), ("matplotlib", False), ("yaml", False),
                ("stable_baselines3", False))


def check_dependencies(stream: TextIO) -> int:
    """Print each dependency's version (or that it is missing); 1 if a required one is."""
    missing = []
    for name, required in DEPENDENCIES:
        try:
            mod = importlib.import_module(name)
            version = getattr(mod, "__version__", "installed")
            print(f"  ok       {name:<18} {version}", file=stream)
        except ImportError:
            tag = "MISSING " if required else "absent  "
            what = "required" if required else "optional"
            print(f"  {tag}{name:<18} ({what})", file=stream)
            if required:
                missing.append(name)
    if not missing:
        from engine.runtime import detect

        print(detect("auto").line(), file=stream)
    if missing:
        print(f"missing required packages: {', '.join(missing)} "
              "(pip install 'dqlctl[engine]')", file=stream)
        return EXIT_FAILED
    print("all required dependencies are installed", file=stream)
    return EXIT_OK
