"""Training: a batch of trading environments on the training split, a DQN-family agent learning
from replay, a greedy validation pass after every episode, checkpoints that survive preemption.

The entry point (also what tuning calls in its worker processes)::

    run_training(cfg: Config, *, data: PreparedData | list[PreparedData] | None = None,
                 out_dir: Path | None = None, events: EventWriter | None = None,
                 log: Callable[[str], None] = print, stop: StopRequest | None = None,
                 runtime_info: RuntimeInfo | None = None, mirror: RemoteMirror | None = None,
                 train_transaction_cost: float | None = None,
                 member: tuple[int, int] | None = None) -> TrainResult

    train_agent(...)  # the same arguments: run_training, or an ensemble of seeds (--ensemble)

- ``cfg`` is resolved here (agent defaults filled in). ``data`` defaults to
  ``prepare_data(cfg)``; pass one PreparedData to many trials to load and featurise once. A
  list of PreparedData (:func:`prepare_markets`, each market normalised on its own training
  split) trains one agent on all of them: ``ceil(n_envs / markets)`` environments per market
  (market-balanced), validation and selection over every market's folds
  (:func:`validate_net`).
- ``out_dir`` None (tuning trials): nothing is written. Otherwise ``out_dir`` receives
  ``checkpoints/``, ``model.pth`` (best weights + normaliser + config) and ``train_metrics.json``,
  and ``cfg.resume`` continues from the newest complete checkpoint there.
- ``events`` gets ``episode`` and ``checkpoint`` events; ``log`` one human line per episode.
- ``stop.signum`` set (by a SIGTERM/SIGINT handler) makes training finish the current vectorised
  step, write a checkpoint, emit its event and raise :class:`TrainingInterrupted`;
  ``stop.checkpoint_now`` (SIGUSR1) a checkpoint after the current step, training going on.
- ``train_transaction_cost`` (tuning): the cost the training environments charge, when it
  differs from ``cfg.transaction_cost``; validation always uses ``cfg.transaction_cost``.
- Returns :class:`TrainResult`: the history, the best validation episode and its metrics, and
  the network holding the best weights (eval mode).

What one episode is: ``L`` env steps in total, ``L`` being the decision bars of the training
split (its bars after the feature warm-up, minus the last), spread over ``n_envs`` environments:
``ceil(L / n_envs)`` vectorised steps. The amount of experience per episode, and with a fixed
replay ratio the number of gradient samples, does not depend on ``n_envs``. Each environment
plays random-start segments of ``episode_length`` bars (auto: ``ceil(L / n_envs)``, at least
``min(L, 100)``); with ``n_envs = 1`` an episode is exactly one pass over the training split.
The episode's ``reward`` is the sum of all its env steps' rewards, unscaled (for the profit reward:
the net log return earned, comparable to one pass's total).

Order of one vectorised step (top to bottom in :meth:`Trainer._step`): epsilon from the env-step
count -> epsilon-greedy actions -> environment step -> n-step accumulator -> replay buffer ->
as many gradient updates as the replay ratio has accumulated samples for (``n_envs *
replay_ratio`` per step, ``batch_size`` per update), once ``learning_starts`` env steps are
collected. Determinism: every random draw comes from generators seeded by ``cfg.seed`` (torch
global for network init, the trainer's own torch generator for actions and sampling, the
environments' numpy generator for segment starts); a CPU run is bit-for-bit repeatable, and a
resumed run continues bit-for-bit (the test kills one with SIGKILL and compares). On a GPU the
trainer's generator is the GPU's (its own random stream): a run there follows other actions and
samples than on the CPU; the environment, the update and the replay compute the same values on
both within float tolerance for the same inputs (tests/test_device_path.py, bench/gpu_check.sh).

On a device other than the CPU a vectorised step makes no host sync (``--step_on_device``:
engine.env; no ``.item()`` or Python branch on a tensor in acting, the n-step accumulator, the
replay buffer, prioritised sampling or the update). The syncs left are per episode: the
episode's reward and loss read for its record, the validation pass (its greedy actions come to
the host), best-weights copies, checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine import checkpoint as ckpt
from engine.agents import DQNAgent, EnsembleQNet, average_into, epsilon_at, weights_copy
from engine.config import RESUME_FREE, Config, ConfigError
from engine.data import DataError, MarketData, bars_per_year, load_market_data, split_indices
from engine.env import MultiMarketEnv, VecTradingEnv, evaluate_policy
from engine.events import EventWriter
from engine.features import (
    FEATURE_NAMES,
    Normalizer,
    compute_features,
    feature_names,
    first_decision_bar,
)
from engine.replay import NStepAccumulator, ReplayBuffer
from engine.runtime import RuntimeInfo, detect

MODEL_FORMAT = "dqlctl-model/1"
MIN_TRAIN_STEPS = 20  # decision bars the training split must offer
MIN_EVAL_BARS = 2  # bars a validation / test split must hold (one decision and its outcome)
DEFAULT_SEGMENT = 100  # shortest auto episode_length (bars), when the split is that long
STEP_ON_DEVICE = {"auto": None, "on": True, "off": False}  # --step_on_device -> env's


# -- data ---------------------------------------------------------------------------------------

@dataclass
class PreparedData:
    """A market ready for training: normalised causal features over the whole series, splits."""

    md: MarketData
    features: np.ndarray  # (T, F) float32, normalised with training-split statistics
    close: np.ndarray  # (T,) float64
    train: slice
    val: slice
    test: slice
    start: int  # first decision bar of the training split (after the feature warm-up)
    bars_per_year: float
    normalizer: Normalizer
    feature_names: tuple[str, ...] = FEATURE_NAMES

    @property
    def train_steps(self) -> int:
        """Decision bars of the training split (``L``)."""
        return int(self.train.stop) - 1 - self.start

    def summary(self) -> dict[str, Any]:
        def span(s: slice) -> dict[str, Any]:
            a, b = int(s.start), int(s.stop)
            ts = self.md.timestamps
            return {"bars": b - a, "start": str(ts[a]) if b > a else None,
                    "end": str(ts[b - 1]) if b > a else None}

        return {"source": self.md.source, "tic": self.md.tic, "bars": self.md.n,
                "bars_per_year": self.bars_per_year, "warnings": list(self.md.warnings),
                "first_train_decision_bar": self.start, "train": span(self.train),
                "val": span(self.val), "test": span(self.test),
                "features": list(self.feature_names)}


Markets = list[PreparedData]


def as_markets(data: PreparedData | Markets) -> Markets:
    """One market or several, as a list."""
    return list(data) if isinstance(data, list | tuple) else [data]


def market_label(data: PreparedData) -> str:
    """The market's name (its file stem)."""
    from engine.data import market_name

    return market_name(str(data.md.source or "market"))


def prepare_markets(cfg: Config, files: list[str]) -> Markets:
    """:func:`prepare_data` for each market file, each normalised with its own training split's
    statistics (so a feature's scale never tells which market it is)."""
    from dataclasses import replace

    return [prepare_data(replace(cfg, data_file=f)) for f in files]


def augmented_markets(cfg: Config, markets: Markets) -> Markets:
    """The training-only copies of ``markets`` that ``--augment_filter`` / ``--augment_stretch``
    ask for (engine/augment.py), each featurised and normalised on its own training split."""
    from engine import augment

    return [prepare_data(cfg, md) for m in markets for md in augment.copies(m.md, cfg)]


def prepare_data(cfg: Config, md: MarketData | None = None,
                 normalizer: Normalizer | None = None) -> PreparedData:
    """Load (unless given), featurise, split and normalise (fitted on the training split, or
    ``normalizer`` when given: a saved model's); DataError if the data is too short for the
    window, the warm-up and the splits."""
    if md is None:
        md = load_market_data(cfg.data_file)
    name = Path(md.source).name or cfg.data_file
    trend = int(cfg.trend_window or 0)
    start = first_decision_bar(cfg)
    try:
        train, val, test = split_indices(md.n, cfg.train_frac, cfg.val_frac)
    except ValueError as exc:
        raise DataError(f"{name}: {exc}") from None
    steps = int(train.stop) - 1 - start
    if steps < MIN_TRAIN_STEPS:
        need = math.ceil((start + 1 + MIN_TRAIN_STEPS) / cfg.train_frac)
        raise DataError(f"{name}: {md.n} bars leave the training split {steps} decision bars "
                        f"after the {start}-bar warm-up (window {cfg.window}, feature window "
                        f"{cfg.feature_window}, trend window {trend}); need at least "
                        f"{MIN_TRAIN_STEPS}, i.e. about {need} bars (use a longer file or "
                        "smaller windows)")
    for label, s in (("validation", val), ("test", test)):
        if cfg.val_frac == 0 and label == "validation":
            continue
        if int(s.stop) - int(s.start) < MIN_EVAL_BARS:
            raise DataError(f"{name}: the {label} split has {int(s.stop) - int(s.start)} bars of "
                            f"{md.n}; need at least {MIN_EVAL_BARS} (use a longer file)")
    raw = compute_features(md, window=cfg.feature_window, trend_window=trend)
    norm = normalizer or Normalizer().fit(raw[start:int(train.stop)])
    feats = norm.transform(raw)
    try:
        bpy = bars_per_year(md.timestamps)
    except ValueError as exc:
        raise DataError(f"{name}: {exc}") from None
    return PreparedData(md=md, features=feats, close=np.asarray(md.close, dtype=np.float64),
                        train=train, val=val, test=test, start=start, bars_per_year=bpy,
                        normalizer=norm, feature_names=feature_names(trend))


def greedy_pass(net: nn.Module, data: PreparedData, split: slice, cfg: Config,
                device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The greedy policy of ``net`` over one split, from flat: (positions, net returns) of the
    split's ``stop - start - 1`` decision bars (the bars before the split are context only).
    With ``hold_margin`` the policy keeps buy-and-hold's position unless another beats it by
    more than the margin (``engine.agents.greedy_holding``); validation, selection, tests and
    reports all act through here."""
    from engine.agents import greedy_holding

    a, b = int(split.start), int(split.stop)
    was_training = net.training
    net.eval()
    margin = float(cfg.hold_margin or 0.0)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        return greedy_holding(net(obs), margin)

    try:
        pos, ret = evaluate_policy(data.features[:b], data.close[:b], policy, cfg.window,
                                   start=a, transaction_cost=cfg.transaction_cost,
                                   slippage=cfg.slippage, long_only=cfg.long_only,
                                   device=str(device),
                                   position_levels=int(cfg.position_levels or 1))
    finally:
        net.train(was_training)
    return pos[a:], ret[a:]


def emit_equity(events: EventWriter | None, data: PreparedData, split: slice, name: str,
                returns: np.ndarray, cfg: Config, episode: int | None = None) -> None:
    """An ``equity`` event: the agent's equity over one split against buy-and-hold's, under the
    same cost model (``engine.baselines``), for the control center's plot."""
    if events is None:
        return
    from engine.metrics import equity_points

    _, bh = buy_and_hold_returns(data, split, cfg)
    events.emit("equity", split=name, episode=episode, agent=equity_points(returns),
                buy_and_hold=equity_points(bh))


def buy_and_hold_returns(data: PreparedData, split: slice, cfg: Config
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Buy-and-hold's (positions, net returns) over one split, under the run's cost model."""
    from engine.baselines import run_baselines

    a, b = int(split.start), int(split.stop)
    return run_baselines(data.close[:b], cfg.transaction_cost, cfg.slippage, start=a,
                         long_only=cfg.long_only, names=("buy_and_hold",))["buy_and_hold"]


def fold_sharpes(returns: np.ndarray, folds: int, bars_per_year: float) -> list[float]:
    """Annualised Sharpe ratio of each of ``folds`` consecutive blocks of ``returns`` (a block
    with no variation scores 0)."""
    out = []
    for block in np.array_split(np.asarray(returns, dtype=np.float64), max(1, folds)):
        sd = float(block.std(ddof=1)) if len(block) >= 2 else 0.0
        out.append(float(block.mean()) / sd * math.sqrt(bars_per_year) if sd > 1e-12 else 0.0)
    return out


def validate_net(net: nn.Module, markets: Markets, cfg: Config,
                 device: str | torch.device = "cpu"
                 ) -> tuple[dict[str, Any] | None, float, np.ndarray | None]:
    """The greedy policy's validation metrics (None without a validation split; the mean over
    markets when there are several), the selection criterion, and the first market's returns.

    The criterion is the validation Sharpe ratio; with several markets or ``val_folds`` > 1 it
    is the mean over markets of the mean Sharpe ratio over each market's consecutive folds
    (walk-forward blocks of its validation split).
    """
    from engine.metrics import mean_metrics
    from engine.metrics import score as metric_score

    folds = int(cfg.val_folds or 1)
    per_market: list[dict[str, Any]] = []
    scores: list[float] = []
    first: np.ndarray | None = None
    for market in markets:
        if int(market.val.stop) - int(market.val.start) < MIN_EVAL_BARS:
            continue
        pos, ret = greedy_pass(net, market, market.val, cfg, device)
        if first is None:
            first = ret
        per_market.append(split_metrics(pos, ret, market, market.val, cfg))
        scores.append(float(np.mean(fold_sharpes(ret, folds, market.bars_per_year))))
    if not per_market:
        return None, -math.inf, None
    if len(per_market) == 1 and folds == 1:
        # Selection by validation Sharpe; an undefined one ranks by the sign of the return.
        return per_market[0], metric_score(per_market[0], "sharpe_ratio"), first
    metrics = per_market[0] if len(per_market) == 1 else mean_metrics(per_market)
    return metrics, float(np.mean(scores)), first


def split_metrics(positions: np.ndarray, returns: np.ndarray, data: PreparedData,
                  split: slice, cfg: Config) -> dict[str, Any]:
    """Every metric of :mod:`engine.metrics` for one split's greedy pass."""
    from engine.metrics import compute_metrics

    a, b = int(split.start), int(split.stop)
    return compute_metrics(returns, positions, data.bars_per_year,
                           timestamps=data.md.timestamps[a:b],
                           cost=cfg.transaction_cost + cfg.slippage)


# -- models on disk ----------------------------------------------------------------------------

def save_model(path: Path, net: nn.Module, cfg: Config, data: PreparedData | Markets,
               obs_shape: tuple[int, ...], n_actions: int, extra: dict[str, Any]) -> Path:
    """``model.pth``: weights, config, normaliser, shapes (``torch.load(weights_only=True)``)."""
    markets = as_markets(data)
    bundle = {"format": MODEL_FORMAT, "agent_type": cfg.agent_type, "config": cfg.to_dict(),
              "obs_shape": list(obs_shape), "n_actions": int(n_actions),
              "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
              "normalizer": markets[0].normalizer.state_dict(),
              "features": list(markets[0].feature_names),
              **extra}
    if isinstance(net, EnsembleQNet):
        bundle["ensemble_members"] = len(net.members)
    if len(markets) > 1:
        bundle["normalizers"] = {market_label(m): m.normalizer.state_dict() for m in markets}
    return ckpt.atomic_torch_save(bundle, path)


def load_model(path: Path, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, Config, dict[str, Any]]:
    """The network of a ``model.pth`` (eval mode), its config and the whole bundle."""
    from engine.agents import build_qnet

    try:
        bundle = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable model file ({str(exc).splitlines()[0]})") \
            from None
    if not isinstance(bundle, dict) or bundle.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a {MODEL_FORMAT} model file")
    cfg = Config.from_dict(bundle["config"], source=str(path)).resolved()
    shape, n_act = tuple(bundle["obs_shape"]), int(bundle["n_actions"])
    k = int(bundle.get("ensemble_members") or 0)
    net: nn.Module = (EnsembleQNet([build_qnet(cfg, shape, n_act) for _ in range(k)]) if k
                      else build_qnet(cfg, shape, n_act))
    net = net.to(device)
    net.load_state_dict(bundle["state_dict"])
    net.eval()
    return net, cfg, bundle


# -- the trainer ---------------------------------------------------------------------------------

class StopRequest:
    """Set by a signal handler: ``signum`` of the first SIGTERM/SIGINT, else None;
    ``checkpoint_now`` (SIGUSR1): write a checkpoint after the current step and go on."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.checkpoint_now = False


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint (``path``, None if no out_dir)."""

    def __init__(self, signum: int, path: Path | None, episode: int) -> None:
        super().__init__(f"stopped by signal {signum} at episode {episode}")
        self.signum, self.path, self.episode = signum, path, episode


@dataclass
class LoopState:
    """Counters and bookkeeping of the training loop (all of it goes into checkpoints)."""

    episode: int = 0  # episodes completed
    step_in_episode: int = 0  # vectorised steps done in the current episode
    env_steps: int = 0
    samples_owed: float = 0.0  # gradient samples earned by the replay ratio, not yet drawn
    ep_updates: int = 0
    ep_time: float = 0.0  # seconds of stepping + learning in the current episode
    best_val: float = -math.inf
    best_episode: int = 0
    since_best: int = 0
    averaged: int = 0  # episodes in the weight average (--weight_average)
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    """What a training run produced."""

    config: Config
    history: list[dict[str, Any]]
    best_episode: int
    best_val_sharpe: float | None
    val_metrics: dict[str, Any] | None  # best weights on the validation split
    val_series: tuple[np.ndarray, np.ndarray] | None  # (positions, net returns) of that pass
    env_steps: int
    updates: int
    steps_per_s: float
    wall_s: float
    stopped_early: bool
    net: nn.Module  # best weights, eval mode
    model_path: Path | None
    resumed_from: Path | None
    members: list[TrainResult] = field(default_factory=list)  # an ensemble's seeds


class Trainer:
    """One training run (see the module docstring); ``run()`` returns a TrainResult."""

    def __init__(self, cfg: Config, data: PreparedData | Markets, device: str, *,
                 out_dir: Path | None = None, events: EventWriter | None = None,
                 log: Callable[[str], None] = print, stop: StopRequest | None = None,
                 mirror: ckpt.RemoteMirror | None = None,
                 train_transaction_cost: float | None = None,
                 member: tuple[int, int] | None = None) -> None:
        self.markets = as_markets(data)
        self.cfg, self.data, self.device = cfg, self.markets[0], torch.device(device)
        self.out_dir, self.events, self.log, self.stop = out_dir, events, log, stop
        self.mirror = mirror
        self.member = member  # (index, count) in an ensemble: tagged on episode events
        self.val_returns: np.ndarray | None = None  # of the last validation pass

        # Seeding: one block, everything derives from cfg.seed.
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(cfg.seed)

        # Environments on the training split only: arrays end at its last bar.
        cost = (cfg.transaction_cost if train_transaction_cost is None
                else float(train_transaction_cost))
        # --augment_*: the training environments also step copies of each market (they share
        # its step budget: L counts the real markets only); validation never sees them
        trained = self.markets + augmented_markets(cfg, self.markets)
        k = len(trained)
        per_market = cfg.n_envs if k == 1 else math.ceil(cfg.n_envs / k)
        n = per_market * k
        L = sum(m.train_steps for m in self.markets)
        self.steps_per_episode = math.ceil(L / n)
        scales, envs, segments = [], [], []
        for i, market in enumerate(trained):
            Lm = market.train_steps
            seg = cfg.episode_length or max(self.steps_per_episode, min(Lm, DEFAULT_SEGMENT))
            segments.append(min(seg, Lm))
            scales.append(self._reward_scale(market))
            b = int(market.train.stop)
            envs.append(VecTradingEnv(
                market.features[:b], market.close[:b], n_envs=per_market, window=cfg.window,
                transaction_cost=cost, slippage=cfg.slippage, long_only=cfg.long_only,
                reward=cfg.reward_goal, episode_length=segments[-1], start=market.start,
                device=str(self.device), seed=cfg.seed + i, reward_scale=scales[-1],
                position_levels=int(cfg.position_levels or 1),
                excess_reward=bool(cfg.excess_reward), obs_noise=float(cfg.obs_noise or 0.0),
                step_on_device=STEP_ON_DEVICE[cfg.step_on_device]))
        self.segment = segments[0]
        self.reward_scale = float(np.mean(scales))
        self.env: VecTradingEnv | MultiMarketEnv = envs[0] if k == 1 else MultiMarketEnv(envs)
        if self.env.reward_note:
            self.log(f"note: {self.env.reward_note}")
        self.obs_shape = tuple(self.env.obs_shape)
        self.total_env_steps = cfg.episodes * self.steps_per_episode * n

        self.agent = DQNAgent(cfg, self.obs_shape, self.env.n_actions, self.device,
                              warn=lambda m: _warn(self.events, self.log, m))
        self.buffer = ReplayBuffer(max(cfg.buffer_size, n), self.obs_shape, self.device,
                                   prioritized=cfg.prioritized, alpha=cfg.per_alpha)
        self.nstep = NStepAccumulator(int(cfg.n_step or 1), cfg.gamma, n, self.obs_shape,
                                      self.device)
        self.s = LoopState()
        self.best_weights: dict[str, torch.Tensor] | None = None
        #: the running mean of the weights at eligible episodes' ends (--weight_average)
        self.avg_weights: dict[str, torch.Tensor] | None = None
        self.ep_reward = torch.zeros((), dtype=torch.float64, device=self.device)
        self.ep_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.obs = self.env.reset()
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self.progressed = False  # stepped or ended an episode in this process

    def _reward_scale(self, market: PreparedData) -> float:
        cfg = self.cfg
        if cfg.reward_scale > 0:
            return float(cfg.reward_scale)
        if cfg.reward_goal != "profit":
            return 1.0
        close = market.close[market.start:int(market.train.stop)]
        std = float(np.std(np.diff(np.log(close))))
        return 1.0 / std if std > 1e-12 else 1.0

    # -- one vectorised step -------------------------------------------------------------------
    def _step(self) -> None:
        cfg, s, n = self.cfg, self.s, self.env.n_envs
        self.progressed = True
        eps = epsilon_at(s.env_steps, self.total_env_steps, cfg)
        actions = self.agent.act(self.obs, eps, self.gen)
        next_obs, reward, done, info = self.env.step(actions)
        terminated = info["terminated"]  # a tensor on the device on the device path
        if not isinstance(terminated, torch.Tensor):
            terminated = torch.from_numpy(terminated).to(self.device)
        transition = self.nstep.push(self.obs, actions, reward, info["final_obs"], terminated,
                                     done)
        if transition is not None:
            self.buffer.add(*transition)
        self.obs = next_obs
        s.env_steps += n
        s.step_in_episode += 1
        self.ep_reward += reward.sum(dtype=torch.float64)

        if s.env_steps < cfg.learning_starts or len(self.buffer) < cfg.batch_size:
            return
        s.samples_owed += n * cfg.replay_ratio
        beta = cfg.per_beta + (1.0 - cfg.per_beta) * min(1.0, s.env_steps / self.total_env_steps)
        while s.samples_owed >= cfg.batch_size:
            batch = self.buffer.sample(cfg.batch_size, self.gen, beta)
            loss, td = self.agent.update(batch)
            self.buffer.update_priorities(batch.indices, td)
            self.ep_loss += loss
            s.ep_updates += 1
            s.samples_owed -= cfg.batch_size

    # -- episodes ------------------------------------------------------------------------------
    def _collect_episode(self) -> None:
        s = self.s
        t0 = time.perf_counter()
        while s.step_in_episode < self.steps_per_episode:
            self._step()
            if self.stop is not None and getattr(self.stop, "checkpoint_now", False):
                self.stop.checkpoint_now = False    # asked for one now (SIGUSR1), go on
                self.checkpoint()
            if self.stop is not None and self.stop.signum is not None:
                s.ep_time += time.perf_counter() - t0
                path = self.checkpoint()
                raise TrainingInterrupted(self.stop.signum, path, s.episode)
        s.ep_time += time.perf_counter() - t0

    def validate(self) -> tuple[dict[str, Any] | None, float]:
        """See :func:`validate_net` (of the online network)."""
        metrics, score, self.val_returns = validate_net(self.agent.online, self.markets,
                                                        self.cfg, self.device)
        return metrics, score

    def _end_episode(self) -> None:
        cfg, s = self.cfg, self.s
        env_steps_ep = s.step_in_episode * self.env.n_envs
        self.progressed = True
        s.episode += 1
        s.step_in_episode = 0
        val, score = self.validate()
        val_sharpe = None if val is None else val["sharpe_ratio"]
        val_return = None if val is None else val["total_return"]
        # No selection while exploration makes a good score luck (--select_from); the last
        # episode is always eligible.
        eligible = (s.episode > int(float(cfg.select_from or 0.0) * cfg.episodes)
                    or s.episode >= cfg.episodes)
        improved = eligible and (val is None or score > s.best_val)
        if improved:
            s.best_val, s.best_episode, s.since_best = score, s.episode, 0
            self.best_weights = weights_copy(self.agent.online)
        elif eligible:
            s.since_best += 1
        if eligible and cfg.weight_average:
            s.averaged += 1
            self.avg_weights = average_into(self.avg_weights, self.agent.online, s.averaged)
        if cfg.patience and s.since_best >= cfg.patience:
            s.stopped_early = True
        loss = float(self.ep_loss) / s.ep_updates if s.ep_updates else None
        record = {"episode": s.episode, "reward": float(self.ep_reward) / self.reward_scale,
                  "loss": loss, "epsilon": epsilon_at(s.env_steps, self.total_env_steps, cfg),
                  "val_sharpe": val_sharpe, "val_return": val_return,
                  "val_score": None if not math.isfinite(score) else score,
                  "env_steps": s.env_steps,
                  "updates": self.agent.updates, "best": improved,
                  "steps_per_s": env_steps_ep / s.ep_time if s.ep_time > 0 else None}
        s.history.append(record)
        if self.events is not None:
            self.events.emit("episode", episode=s.episode, episodes=cfg.episodes,
                             reward=record["reward"], loss=loss, epsilon=record["epsilon"],
                             val_sharpe=val_sharpe, steps_per_s=record["steps_per_s"],
                             env_steps=s.env_steps,
                             **({} if self.member is None else
                                {"member": self.member[0], "members": self.member[1]}))
        if improved and val is not None and self.val_returns is not None:
            emit_equity(self.events, self.data, self.data.val, "val", self.val_returns, cfg,
                        episode=s.episode)
        self.log(_episode_line(record, cfg.episodes))
        self.ep_reward.zero_()
        self.ep_loss.zero_()
        s.ep_updates, s.ep_time = 0, 0.0
        if s.stopped_early:
            self.log(f"early stop: no better validation Sharpe for {cfg.patience} episodes "
                     f"(best {s.best_val:.3f} at episode {s.best_episode})")

    def run(self) -> None:
        """Train until ``cfg.episodes`` (or early stopping); checkpoints on the way and at the end."""
        cfg, s = self.cfg, self.s
        while s.episode < cfg.episodes and not s.stopped_early:
            self._collect_episode()
            self._end_episode()
            last = s.episode >= cfg.episodes or s.stopped_early
            if not last and cfg.checkpoint_every and s.episode % cfg.checkpoint_every == 0:
                self.checkpoint()
            if self.stop is not None and self.stop.signum is not None and not last:
                path = self.checkpoint()
                raise TrainingInterrupted(self.stop.signum, path, s.episode)
        if self.resumed_from is None or self.progressed:  # else: resumed at the very end
            self.checkpoint()

    # -- checkpoints ---------------------------------------------------------------------------
    def _ckpt_dir(self) -> Path:
        assert self.out_dir is not None
        return self.out_dir / ckpt.CKPT_DIR

    def state(self) -> dict[str, Any]:
        """Everything a bit-exact continuation needs (see engine.checkpoint)."""
        return {"config": self.cfg.to_dict(), "loop": dataclasses.asdict(self.s),
                "ep_reward": self.ep_reward.cpu(), "ep_loss": self.ep_loss.cpu(),
                "agent": self.agent.state_dict(), "best_weights": self.best_weights,
                "avg_weights": self.avg_weights,
                "buffer": self.buffer.state_dict(), "nstep": self.nstep.state_dict(),
                "env": ckpt.env_state(self.env), "obs": self.obs.cpu(),
                "rng": ckpt.rng_state(), "generator": self.gen.get_state()}

    def checkpoint(self) -> Path | None:
        """Write a checkpoint now (atomically), emit its event; None without an out_dir."""
        if self.out_dir is None:
            return None
        folder = self._ckpt_dir()
        before = set(ckpt.list_checkpoints(folder))
        path = ckpt.save(self.state(), folder, self.s.env_steps)
        where = str(path)
        if self.mirror is not None:
            rel = f"{ckpt.CKPT_DIR}/{path.name}"
            self.mirror.put(path, rel)
            where = f"{self.mirror.uri}/{rel}"
            for old in before - set(ckpt.list_checkpoints(folder)):
                self.mirror.delete(f"{ckpt.CKPT_DIR}/{old.name}")
        self.last_checkpoint = path
        if self.events is not None:
            self.events.emit("checkpoint", episode=self.s.episode, path=where)
            # the events so far go up with their checkpoint: a machine lost later (a spot VM
            # taken back) leaves them where --resume finds them, and the resumed engine appends
            # from the checkpoint on, so each episode is in the run's events once
            log_path = self.events.path
            if self.mirror is not None and log_path is not None \
                    and log_path.parent == self.out_dir and log_path.exists():
                self.mirror.put(log_path, log_path.name)
        return path

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint's state (after __init__ built everything afresh)."""
        check_resumable(self.cfg, state["config"], path.name)
        dev = self.device
        self.agent.load_state_dict(state["agent"])
        self.buffer.load_state_dict(state["buffer"])
        self.nstep.load_state_dict(state["nstep"])
        ckpt.load_env_state(self.env, state["env"])
        self.obs = state["obs"].to(dev)
        self.s = LoopState(**state["loop"])
        bw = state["best_weights"]
        self.best_weights = None if bw is None else {k: v.to(dev) for k, v in bw.items()}
        aw = state.get("avg_weights")       # absent in checkpoints from before the setting
        self.avg_weights = None if aw is None else {k: v.to(dev) for k, v in aw.items()}
        self.ep_reward = state["ep_reward"].to(dev)
        self.ep_loss = state["ep_loss"].to(dev)
        ckpt.set_rng_state(state["rng"])
        self.gen.set_state(state["generator"])
        self.resumed_from = path
        self.last_checkpoint = path


def check_resumable(cfg: Config, saved: dict[str, Any], name: str) -> None:
    """ConfigError unless a checkpoint made with settings ``saved`` can continue as ``cfg``
    (only settings that do not change the computation may differ: RESUME_FREE)."""
    from engine.config import COMMON_DEFAULTS

    mine = cfg.resolved().to_dict()
    # A checkpoint from before a setting existed ran with that setting's neutral value.
    saved = {**COMMON_DEFAULTS, **saved}
    diff = [k for k in mine if k not in RESUME_FREE and saved.get(k) != mine[k]]
    if diff:
        shown = ", ".join(f"{k}={saved.get(k)!r} (now {mine[k]!r})" for k in diff[:4])
        raise ConfigError(f"--resume: {name} was made with different settings: {shown}; "
                          "resume with the same settings, or start afresh without --resume")


def _episode_line(r: dict[str, Any], episodes: int) -> str:
    def num(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    sps = r["steps_per_s"]
    return (f"episode {r['episode']}/{episodes}  reward {r['reward']:+.4f}  loss "
            f"{num(r['loss'], '.4f')}  eps {r['epsilon']:.3f}  val_sharpe "
            f"{num(r['val_sharpe'], '+.3f')}  env_steps {r['env_steps']:,}  steps/s "
            f"{'n/a' if sps is None else f'{sps:,.0f}'}{'  *best' if r['best'] else ''}")


def run_training(cfg: Config, *, data: PreparedData | Markets | None = None,
                 out_dir: Path | None = None,
                 events: EventWriter | None = None, log: Callable[[str], None] = print,
                 stop: StopRequest | None = None, runtime_info: RuntimeInfo | None = None,
                 mirror: ckpt.RemoteMirror | None = None,
                 train_transaction_cost: float | None = None,
                 member: tuple[int, int] | None = None) -> TrainResult:
    """Train one agent (see the module docstring for the arguments; ``member`` = (index,
    count) of an ensemble member, tagged on its episode events)."""
    cfg = cfg.resolved()
    rt = runtime_info or detect(cfg.device, cfg.torch_threads)
    data = data or prepare_data(cfg)
    t_start = time.perf_counter()
    trainer = Trainer(cfg, data, rt.device, out_dir=out_dir, events=events, log=log, stop=stop,
                      mirror=mirror, train_transaction_cost=train_transaction_cost,
                      member=member)
    if cfg.resume and out_dir is not None:
        folder = out_dir / ckpt.CKPT_DIR
        if mirror is not None:
            mirror.fetch_checkpoints(folder)
        found = ckpt.load_latest(folder, warn=lambda m: _warn(events, log, m))
        if found is None:
            _warn(events, log, f"--resume: no checkpoint in {folder}; starting from scratch")
        else:
            state, path = found
            trainer.restore(state, path)
            log(f"resumed from {path.name}: episode {trainer.s.episode}/{cfg.episodes}, "
                f"{trainer.s.env_steps:,} env steps")
    trainer.run()
    wall = time.perf_counter() - t_start
    s = trainer.s

    # The best validation episode's weights are the model, or with --weight_average the mean
    # of the weights over the eligible episodes (its validation score is then the mean's).
    net = trainer.agent.online
    if cfg.weight_average and trainer.avg_weights is not None:
        net.load_state_dict(trainer.avg_weights)
        _, score, _ = validate_net(net, as_markets(data), cfg, rt.device)
        s.best_val, s.best_episode = score, s.episode
    elif trainer.best_weights is not None:
        net.load_state_dict(trainer.best_weights)
    net.eval()
    val_metrics: dict[str, Any] | None = None
    val_series = None
    markets = as_markets(data)
    if len(markets) > 1:
        val_metrics, _ = trainer.validate()
    elif int(markets[0].val.stop) - int(markets[0].val.start) >= MIN_EVAL_BARS:
        val_series = greedy_pass(net, markets[0], markets[0].val, cfg, rt.device)
        val_metrics = split_metrics(*val_series, markets[0], markets[0].val, cfg)
    steps_times = [(h["env_steps"], h["steps_per_s"]) for h in s.history if h["steps_per_s"]]
    sps = float(np.median([v for _, v in steps_times])) if steps_times else 0.0
    best_val = None if not math.isfinite(s.best_val) else s.best_val
    model_path = None
    if out_dir is not None:
        model_path = save_model(out_dir / "model.pth", net, cfg, data, trainer.obs_shape,
                                trainer.env.n_actions,
                                {"best_episode": s.best_episode, "val_sharpe": best_val,
                                 "env_steps": s.env_steps})
        summary = {"agent_type": cfg.agent_type, "episodes": cfg.episodes,
                   "markets": [market_label(m) for m in markets],
                   "episodes_run": s.episode, "stopped_early": s.stopped_early,
                   "best_episode": s.best_episode, "best_val_sharpe": best_val,
                   "env_steps": s.env_steps, "gradient_updates": trainer.agent.updates,
                   "steps_per_episode": trainer.steps_per_episode * trainer.env.n_envs,
                   "segment_length": trainer.segment, "reward_scale": trainer.reward_scale,
                   "median_steps_per_s": sps, "val_metrics": val_metrics,
                   "history": s.history}
        ckpt.atomic_write_text(out_dir / "train_metrics.json",
                               json.dumps(_json_safe(summary), indent=2) + "\n")
    return TrainResult(config=cfg, history=list(s.history), best_episode=s.best_episode,
                       best_val_sharpe=best_val, val_metrics=val_metrics, val_series=val_series,
                       env_steps=s.env_steps, updates=trainer.agent.updates, steps_per_s=sps,
                       wall_s=wall, stopped_early=s.stopped_early, net=net,
                       model_path=model_path, resumed_from=trainer.resumed_from)


MEMBER_SEED_STRIDE = 100_003


def member_seeds(seed: int, k: int) -> list[int]:
    """The seeds of an ensemble of ``k`` whose run seed is ``seed``: the first is ``seed`` itself
    (an ensemble of one is the plain run), the others ``MEMBER_SEED_STRIDE`` apart, so runs with
    seeds 1, 2, 3 (a benchmark's or a sweep's) are ensembles of nine distinct agents, not of
    five shared ones whose spread would understate the seeds' noise."""
    return [seed + i * MEMBER_SEED_STRIDE for i in range(k)]


def train_agent(cfg: Config, *, data: PreparedData | Markets | None = None,
                out_dir: Path | None = None, events: EventWriter | None = None,
                log: Callable[[str], None] = print, stop: StopRequest | None = None,
                runtime_info: RuntimeInfo | None = None,
                mirror: ckpt.RemoteMirror | None = None,
                train_transaction_cost: float | None = None) -> TrainResult:
    """:func:`run_training`, or with ``ensemble`` K > 1 K of them (seeds :func:`member_seeds`,
    each in ``<out_dir>/members/seed<S>/`` with its own checkpoints, so ``--resume`` continues
    each bit for bit) combined into one model that acts on their mean Q-values."""
    cfg = cfg.resolved()
    k = int(cfg.ensemble or 1)
    if k == 1:
        return run_training(cfg, data=data, out_dir=out_dir, events=events, log=log, stop=stop,
                            runtime_info=runtime_info, mirror=mirror,
                            train_transaction_cost=train_transaction_cost)
    from engine.env import action_positions

    rt = runtime_info or detect(cfg.device, cfg.torch_threads)
    markets = as_markets(data or prepare_data(cfg))
    t0 = time.perf_counter()
    members: list[TrainResult] = []
    seeds = member_seeds(cfg.seed, k)
    for i, seed in enumerate(seeds):
        sub = None if out_dir is None else out_dir / "members" / f"seed{seed}"
        resume = cfg.resume and sub is not None and (sub / ckpt.CKPT_DIR).is_dir()
        mcfg = dataclasses.replace(cfg, seed=seed, ensemble=1, resume=resume)
        sub_mirror = None if mirror is None else ckpt.RemoteMirror(
            f"{mirror.uri}/members/seed{seed}")
        log(f"ensemble member {i + 1}/{k} (seed {seed})")
        members.append(run_training(mcfg, data=markets, out_dir=sub, events=events, log=log,
                                    stop=stop, runtime_info=rt, mirror=sub_mirror,
                                    train_transaction_cost=train_transaction_cost,
                                    member=(i, k)))
    net = EnsembleQNet([m.net for m in members]).eval()
    val_metrics, score, _ = validate_net(net, markets, cfg, rt.device)
    val_series = None
    if len(markets) == 1 and val_metrics is not None:
        val_series = greedy_pass(net, markets[0], markets[0].val, cfg, rt.device)
    best = None if not math.isfinite(score) else score
    history = [{**h, "member": i} for i, m in enumerate(members) for h in m.history]
    model_path = None
    if out_dir is not None:
        obs_shape = (cfg.window, markets[0].features.shape[1] + 1)
        n_actions = len(action_positions(cfg.long_only, int(cfg.position_levels or 1)))
        model_path = save_model(out_dir / "model.pth", net, cfg, markets, obs_shape, n_actions,
                                {"val_sharpe": best, "member_seeds": seeds})
        summary = {"agent_type": cfg.agent_type, "episodes": cfg.episodes, "ensemble": k,
                   "markets": [market_label(m) for m in markets],
                   "members": [{"seed": seeds[i], "best_episode": m.best_episode,
                                "best_val_sharpe": m.best_val_sharpe,
                                "episodes_run": len(m.history), "stopped_early": m.stopped_early}
                               for i, m in enumerate(members)],
                   "best_val_sharpe": best, "env_steps": sum(m.env_steps for m in members),
                   "gradient_updates": sum(m.updates for m in members),
                   "val_metrics": val_metrics, "history": history}
        ckpt.atomic_write_text(out_dir / "train_metrics.json",
                               json.dumps(_json_safe(summary), indent=2) + "\n")
    return TrainResult(config=cfg, history=history, best_episode=members[0].best_episode,
                       best_val_sharpe=best, val_metrics=val_metrics, val_series=val_series,
                       env_steps=sum(m.env_steps for m in members),
                       updates=sum(m.updates for m in members),
                       steps_per_s=float(np.mean([m.steps_per_s for m in members])),
                       wall_s=time.perf_counter() - t0,
                       stopped_early=all(m.stopped_early for m in members), net=net,
                       model_path=model_path, resumed_from=members[-1].resumed_from,
                       members=members)


def _warn(events: EventWriter | None, log: Callable[[str], None], message: str) -> None:
    log(f"warning: {message}")
    if events is not None:
        events.emit("warning", message=message)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value
