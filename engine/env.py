"""The vectorised trading environment: ``n_envs`` traders over one market, stepped as arrays.

Timing. At bar ``t`` an environment observes the last ``window`` feature rows (bars
``t-window+1..t``) and the position it holds coming into bar ``t``; it picks a position ``p[t]`` in
{-1, 0, 1} (short, flat, long; {0, 1} when ``long_only``), holds it over ``t -> t+1`` and earns::

    r[t] = p[t] * log(close[t+1] / close[t]) - (transaction_cost + slippage) * |p[t] - p[t-1]|

exactly :func:`engine.portfolio.position_returns` (the one cost model; a test checks that a
stepped episode sums to the same total). Episodes start flat. Each step is O(1) per environment:
index arithmetic on arrays, never a pass over the history.

Rewards (``reward=``):

- ``"profit"``: ``r[t]`` itself (net log return), times ``reward_scale``.
- ``"sharpe_ratio"``: the differential Sharpe ratio of Moody & Saffell (1998): with exponential
  moving estimates ``A`` (mean) and ``B`` (second moment) of ``r`` at rate ``sharpe_eta``,
  ``D[t] = (B dA - A dB / 2) / (B - A^2)^(3/2)`` where ``dA = r - A``, ``dB = r^2 - B``; the
  per-step contribution to an exponentially weighted Sharpe ratio, O(1) and Markov in (A, B).
  ``A`` starts at 0 and ``B`` at the mean squared log return of the environment's bars (a reward
  scale, not an observation), and the variance is floored at 1% of that so that a long flat spell
  cannot blow the reward up.
- ``"sortino"``: the differential downside deviation ratio (Moody & Saffell 2001), the same idea
  with the downside second moment.
- ``"calmar"``: has no differential form; it is mapped to ``"sharpe_ratio"`` and
  ``env.reward_note`` says so (the CLI logs it).

With ``excess_reward`` each of these is computed from ``r[t] - log(close[t+1] / close[t])``, the
excess over holding the market (``info["net_return"]`` stays ``r[t]``). ``position_levels`` k
> 1 adds the positions in between, in steps of 1/k. ``obs_noise`` s > 0 adds N(0, s^2) noise to
the feature rows of every observation handed out (augmentation; drawn from the environment's
generator, so it is checkpointed and repeatable); :func:`evaluate_policy` never adds noise.

:class:`MultiMarketEnv` steps several markets' environments as one batch.

Episodes. ``episode_length=None`` runs from ``start`` to the last bar (every episode the same);
otherwise each episode is ``episode_length`` steps from a random start drawn with a numpy
Generator seeded by ``seed`` (deterministic). An environment whose episode ends is reset at once
(auto-reset): ``step`` returns the first observation of its new episode and
``info["final_obs"]`` holds, for every environment, the observation that followed its action
(the terminal one where ``done``). ``info["terminated"]`` marks episodes that reached the end of
the data and ``info["truncated"]`` those cut by ``episode_length``; ``done`` is either.

Observation: ``(window, F + 1)`` float32, the feature rows plus one channel holding the current
position, constant across the window (so an MLP over the flattened window and a GRU reading the
rows both see it at every step).

Two paths, one step math. The per-step arithmetic (:func:`_step_math`, :meth:`_begin`) is
written once over "backend arrays" and runs on numpy arrays (the host path) or on tensors (the
device path), with the few functions that differ chosen per backend (:data:`_NUMPY`,
:data:`_TORCH`).

- Host path (the default on CPU): positions, the differential-ratio state and episode returns
  are numpy float64; the per-step math is a dozen tiny array operations, where numpy's ~1 us per
  call beats torch's ~5-10 us on CPU (measured: the same env in torch ran ~30% slower on CPU).
  The observation batch is gathered in numpy and handed out zero-copy (fresh memory every step,
  safe to keep in a replay buffer). On a non-CPU device with the host path forced
  (``step_on_device=False``) actions come to the host and rewards go to the device every step.
- Device path (the default on any other device; ``step_on_device=True`` forces it, also on CPU,
  for tests and comparisons; ``--step_on_device on|off|auto`` in the engine): positions, A, B,
  episode returns, the log-return and feature tables and a copy of the bar indices live on the
  device as tensors (float64, float32 on mps); actions never leave it, and a step makes no host
  sync. The host keeps the deterministic schedule: each environment's bar and episode end advance
  by one per step whatever the actions, so when an episode ends, and which environments to
  reset, is known on the host without asking the device; segment starts come from the same numpy
  generator, so a seed gives the same starts on both paths. Host -> device copies happen only at
  resets (new bars, which environments) and for ``obs_noise`` (drawn on the host from the same
  generator), all ``non_blocking``. ``info`` then holds tensors on the device, except ``bar`` and
  ``episode_length`` (the host schedule, numpy). The action-range check of the host path
  (a ValueError) would be a sync: on the device path an out-of-range action instead fails the
  bounds check of the position table's ``index_select`` (IndexError on CPU, a device-side assert
  on CUDA), never silently.

Measured here (2 shared vCPU, torch 2.13 CPU, 1 thread, random actions, F=10, window=10,
``python -m engine.env``): n_envs=1 about 20,000-34,000 steps/s; n_envs=256 about 8,000-14,000
batched steps/s = 2.1-3.5 million env steps/s (ranges: other jobs shared the cores). The
Gymnasium wrapper does about 14,000 steps/s. For scale, one DQN update is ~2 ms here, so the
environment is not the bottleneck.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from engine.portfolio import log_returns, position_returns

REWARDS = ("profit", "sharpe_ratio", "sortino", "calmar")
PolicyFn = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


def action_positions(long_only: bool, levels: int = 1) -> np.ndarray:
    """Position of each action index: (-1, 0, 1) for short/flat/long, or (0, 1) if long only;
    with ``levels`` k > 1 every multiple of 1/k in between (k = 2: -1, -0.5, 0, 0.5, 1)."""
    k = max(1, int(levels))
    if long_only:
        return np.arange(k + 1, dtype=np.float64) / k
    return np.arange(-k, k + 1, dtype=np.float64) / k


class _Ops(NamedTuple):
    """The functions of one backend that operators and methods do not cover."""

    where: Callable[..., Any]  # where(cond, x, y)
    at_least: Callable[[Any, float], Any]  # elementwise max(x, c)
    at_most: Callable[[Any, float], Any]  # elementwise min(x, c)


_NUMPY = _Ops(np.where, np.maximum, np.minimum)
_TORCH = _Ops(torch.where, lambda x, c: x.clamp(min=c), lambda x, c: x.clamp(max=c))


def _step_math(ops: _Ops, new_pos: Any, pos: Any, lr: Any, a: Any, b: Any, *, cost: float,
               excess: bool, reward: str, eta: float, var_floor: float, scale: float
               ) -> tuple[Any, Any, Any, Any]:
    """One step's ``(net return, reward, A, B)`` from the new and old positions and the bar's log
    return, on numpy arrays or tensors alike (the one copy of the formulas; module docstring)."""
    net = new_pos * lr - cost * abs(new_pos - pos)
    r = net - lr if excess else net
    if reward == "profit":
        out = r
    elif reward == "sharpe_ratio":
        d_a, d_b = r - a, r * r - b
        var = ops.at_least(b - a * a, var_floor)
        out = (b * d_a - 0.5 * a * d_b) / var ** 1.5
        a, b = a + eta * d_a, b + eta * d_b
    else:  # sortino: differential downside deviation ratio; b is the downside moment DD^2
        dd2 = ops.at_least(b, var_floor)
        dd = dd2 ** 0.5
        up = (r - 0.5 * a) / dd
        down = (dd2 * (r - 0.5 * a) - 0.5 * a * r * r) / (dd2 * dd)
        out = ops.where(r > 0, up, down)
        a, b = a + eta * (r - a), b + eta * (ops.at_most(r, 0.0) ** 2 - b)
    if scale != 1.0:
        out = out * scale
    return net, out, a, b


def _upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device`` without waiting for the device (a fresh copy is sent, so the
    caller may change ``array`` at once)."""
    return torch.from_numpy(np.array(array)).to(device, non_blocking=True)


class _ObsBuilder:
    """Gathers observation windows: rows ``t-window+1..t`` plus a position channel.

    On the host path the gather is numpy (handed out zero-copy as a tensor); on the device path
    the feature table lives on ``device``, and bars and positions are tensors there (host arrays
    given are uploaded). ``on_host`` None: the host path exactly when ``device`` is the CPU.
    """

    def __init__(self, features: np.ndarray, window: int, device: torch.device,
                 noise: float = 0.0, rng: np.random.Generator | None = None,
                 on_host: bool | None = None) -> None:
        feats = np.asarray(features, dtype=np.float32)
        self.table = np.zeros((feats.shape[0], feats.shape[1] + 1), dtype=np.float32)
        self.table[:, :-1] = feats
        self.offsets = np.arange(1 - window, 1, dtype=np.int64)
        self.device = device
        self.on_host = device.type == "cpu" if on_host is None else bool(on_host)
        self.dev_table = torch.from_numpy(self.table).to(device)
        self.dev_offsets = torch.from_numpy(self.offsets).to(device)
        self.noise = float(noise)
        self.rng = rng  # draws the augmentation noise (the environment's own generator)

    def _noise(self, shape: tuple[int, ...]) -> np.ndarray:
        assert self.rng is not None
        return (self.noise * self.rng.standard_normal(shape)).astype(np.float32)

    def __call__(self, bars: np.ndarray | torch.Tensor,
                 positions: np.ndarray | torch.Tensor) -> torch.Tensor:
        if self.on_host:
            idx = np.asarray(bars)[:, None] + self.offsets[None, :]
            obs_np = self.table[idx]  # (n, window, F + 1), fresh memory
            if self.noise > 0:
                obs_np[:, :, :-1] += self._noise(obs_np[:, :, :-1].shape)
            obs_np[:, :, -1] = np.asarray(positions)[:, None]
            obs = torch.from_numpy(obs_np)
            return obs if self.device.type == "cpu" else obs.to(self.device)
        if not isinstance(bars, torch.Tensor):
            bars = _upload(bars, self.device)
        if not isinstance(positions, torch.Tensor):  # float32 on the host (mps has no float64)
            positions = _upload(np.asarray(positions, dtype=np.float32), self.device)
        obs = self.dev_table[bars[:, None] + self.dev_offsets[None, :]]
        if self.noise > 0:
            obs[:, :, :-1] += _upload(self._noise(tuple(obs[:, :, :-1].shape)), self.device)
        obs[:, :, -1] = positions.to(torch.float32)[:, None]
        return obs


def _to_numpy_actions(actions: Any) -> np.ndarray:
    if isinstance(actions, torch.Tensor):
        return actions.detach().to("cpu").numpy().astype(np.int64, copy=False).reshape(-1)
    return np.asarray(actions, dtype=np.int64).reshape(-1)


def _to_device_actions(actions: Any, device: torch.device) -> torch.Tensor:
    """Actions as an int64 tensor on ``device`` (a tensor already there is used as it is)."""
    if isinstance(actions, torch.Tensor):
        if actions.device != device:
            actions = actions.to(device, non_blocking=True)
        return (actions if actions.dtype == torch.int64 else actions.long()).reshape(-1)
    return torch.from_numpy(np.asarray(actions, dtype=np.int64).reshape(-1)).to(device)


class VecTradingEnv:
    """``n_envs`` trading environments over one market (see the module docstring).

    ``features`` (T, F) float32, already normalised; ``close`` (T,) prices. Usable bars are
    ``start..stop-1``: ``start`` is raised to ``window - 1`` if lower (the first full window);
    pass ``start=feature_warmup(...)`` to skip the feature warm-up. ``stop`` (default T) lets the
    environment use a split of arrays computed over the whole series, so that observations at the
    split's first bars see the (earlier) bars before it. ``step_on_device``: the device path
    (True, also on CPU), the host path (False), or None: the device path exactly when ``device``
    is not the CPU.
    """

    def __init__(self, features: np.ndarray, close: np.ndarray, n_envs: int = 1, window: int = 10,
                 transaction_cost: float = 1e-4, slippage: float = 2e-4, long_only: bool = False,
                 reward: str = "profit", episode_length: int | None = None, start: int = 0,
                 device: str = "cpu", seed: int | None = None, *, stop: int | None = None,
                 sharpe_eta: float = 0.01, reward_scale: float = 1.0, position_levels: int = 1,
                 excess_reward: bool = False, obs_noise: float = 0.0,
                 step_on_device: bool | None = None) -> None:
        feats = np.asarray(features, dtype=np.float32)
        prices = np.asarray(close, dtype=np.float64)
        if feats.ndim != 2:
            raise ValueError(f"features must be (T, F), got shape {feats.shape}")
        if prices.shape != (feats.shape[0],):
            raise ValueError(f"close must be ({feats.shape[0]},) like features, got {prices.shape}")
        if not np.all(np.isfinite(prices)) or np.any(prices <= 0):
            raise ValueError("close prices must be finite and > 0")
        if not np.all(np.isfinite(feats)):
            raise ValueError("features contain NaN or inf")
        if n_envs < 1 or window < 1:
            raise ValueError(f"n_envs and window must be >= 1, got {n_envs} and {window}")
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; choose one of {', '.join(REWARDS)}")
        if transaction_cost < 0 or slippage < 0:
            raise ValueError("transaction_cost and slippage must be >= 0")
        if not 0 < sharpe_eta < 1:
            raise ValueError(f"sharpe_eta must be in (0, 1), got {sharpe_eta}")
        T = feats.shape[0]
        self.stop = T if stop is None else int(stop)
        if not 0 < self.stop <= T:
            raise ValueError(f"stop must be in 1..{T}, got {stop}")
        self.start = max(int(start), window - 1)
        max_steps = self.stop - 1 - self.start
        if max_steps < 1:
            raise ValueError(f"no step possible: usable bars {self.start}..{self.stop - 1} "
                             f"(window {window}, {T} bars); need more data or a smaller window")
        if episode_length is not None and not 1 <= episode_length <= max_steps:
            raise ValueError(f"episode_length must be in 1..{max_steps} for bars "
                             f"{self.start}..{self.stop - 1}, got {episode_length}")

        self.n_envs = int(n_envs)
        self.window = int(window)
        self.n_features = feats.shape[1]
        self.obs_shape: tuple[int, int] = (self.window, self.n_features + 1)
        self.long_only = bool(long_only)
        self._pos_of_action = action_positions(self.long_only, position_levels)
        self.excess_reward = bool(excess_reward)
        self.n_actions = len(self._pos_of_action)
        self.cost = float(transaction_cost) + float(slippage)
        self.episode_length = episode_length
        self.device = torch.device(device)
        self.reward_note: str | None = None
        if reward == "calmar":
            self.reward_note = ("reward 'calmar' has no per-step (differential) form; "
                                "using the differential Sharpe ratio")
            reward = "sharpe_ratio"
        self.reward = reward
        self.eta = float(sharpe_eta)
        self.reward_scale = float(reward_scale)

        self._lr = np.zeros(T)
        self._lr[:-1] = log_returns(prices)  # _lr[t] = log(close[t+1] / close[t])
        usable = self._lr[self.start:self.stop - 1]
        self._b0 = max(float(np.mean(usable ** 2)), 1e-16)
        self._var_floor = 0.01 * self._b0
        self._rng = np.random.default_rng(seed)
        self.on_device = (self.device.type != "cpu" if step_on_device is None
                          else bool(step_on_device))
        self._ops = _TORCH if self.on_device else _NUMPY
        self._dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._obs = _ObsBuilder(feats, self.window, self.device, noise=obs_noise, rng=self._rng,
                                on_host=not self.on_device)

        n = self.n_envs
        self._t = np.zeros(n, dtype=np.int64)  # current bar (the host schedule)
        self._end = np.zeros(n, dtype=np.int64)  # last bar of the episode
        self._ep_len = np.zeros(n, dtype=np.int64)
        if self.on_device:
            self._lr_x = torch.from_numpy(self._lr).to(self._dtype).to(self.device)
            self._pos_table_x = torch.from_numpy(self._pos_of_action).to(self._dtype).to(
                self.device)
            self._t_x = torch.zeros(n, dtype=torch.int64, device=self.device)  # copies of the
            self._end_x = torch.zeros(n, dtype=torch.int64, device=self.device)  # schedule
            self._sent: tuple[np.ndarray, np.ndarray] | None = None  # what _t_x/_end_x hold
        # Backend arrays (numpy on the host path, tensors on the device path): the position held
        # coming into the current bar, the differential ratios' moving mean A and (downside)
        # second moment B, and the episode's return so far.
        self._xpos = self._zeros()
        self._xa = self._zeros()
        self._xb = self._zeros()
        self._xret = self._zeros()
        self._ready = False

    def _zeros(self) -> Any:
        if self.on_device:
            return torch.zeros(self.n_envs, dtype=self._dtype, device=self.device)
        return np.zeros(self.n_envs)

    # The backend arrays as numpy (what engine.checkpoint saves and restores).
    def _get(name: str) -> property:  # noqa: N805 (a property factory, run at class creation)
        def get(self: VecTradingEnv) -> np.ndarray:
            value = getattr(self, name)
            return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value

        def put(self: VecTradingEnv, value: np.ndarray) -> None:
            arr = np.array(value, dtype=np.float64)
            setattr(self, name, torch.from_numpy(arr).to(self._dtype).to(self.device)
                    if self.on_device else arr)

        return property(get, put)

    _pos = _get("_xpos")
    _a = _get("_xa")
    _b = _get("_xb")
    _ep_ret = _get("_xret")
    del _get

    def _schedule_x(self) -> torch.Tensor:
        """The device's copy of the current bars (re-sent when the host's arrays were replaced,
        as a checkpoint load does)."""
        if self._sent is None or self._sent[0] is not self._t or self._sent[1] is not self._end:
            self._t_x = _upload(self._t, self.device)
            self._end_x = _upload(self._end, self.device)
            self._sent = (self._t, self._end)
        return self._t_x

    # -- episodes --------------------------------------------------------------------------
    def _begin(self, which: np.ndarray) -> Any:
        """Start new episodes for the environments at indices ``which``; returns ``which`` as
        the backend's index (on the device on the device path)."""
        k = len(which)
        if self.episode_length is None:
            starts = np.full(k, self.start, dtype=np.int64)
            ends = np.full(k, self.stop - 1, dtype=np.int64)
        else:
            starts = self._rng.integers(self.start, self.stop - self.episode_length, size=k)
            ends = starts + self.episode_length
        self._t[which] = starts
        self._end[which] = ends
        self._ep_len[which] = 0
        idx: Any = which
        if self.on_device:
            idx = _upload(which, self.device)
            self._sent = None  # the schedule changed: send it again
        b0 = self._b0 if self.reward == "sharpe_ratio" else 0.5 * self._b0
        # fresh arrays: what the last step handed out in ``info`` keeps its values
        for name, value in (("_xpos", 0.0), ("_xa", 0.0), ("_xb", b0), ("_xret", 0.0)):
            arr = getattr(self, name)
            arr = arr.clone() if self.on_device else arr.copy()
            arr[idx] = value
            setattr(self, name, arr)
        return idx

    def _bars_x(self) -> Any:
        return self._schedule_x() if self.on_device else self._t

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Start every environment afresh; ``seed`` reseeds the episode-start generator."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._obs.rng = self._rng
        self._begin(np.arange(self.n_envs))
        self._ready = True
        return self._obs(self._bars_x(), self._xpos)

    def positions(self) -> torch.Tensor:
        """Position each environment holds coming into its current bar, (n_envs,) float32."""
        if self.on_device:
            return self._xpos.to(torch.float32)
        return torch.from_numpy(self._xpos.astype(np.float32)).to(self.device)

    def bars(self) -> np.ndarray:
        """Current bar index of each environment (a copy)."""
        return self._t.copy()

    # -- stepping --------------------------------------------------------------------------
    def _positions_of(self, actions: torch.Tensor | np.ndarray) -> Any:
        """The positions the actions lead to, with the bounds check of the path (module
        docstring)."""
        if self.on_device:
            act_x = _to_device_actions(actions, self.device)
            if act_x.shape != (self.n_envs,):
                raise ValueError(f"expected {self.n_envs} actions, got shape "
                                 f"{tuple(act_x.shape)}")
            return torch.index_select(self._pos_table_x, 0, act_x)
        act = _to_numpy_actions(actions)
        if act.shape != (self.n_envs,):
            raise ValueError(f"expected {self.n_envs} actions, got shape {tuple(act.shape)}")
        if act.min() < 0 or act.max() >= self.n_actions:
            raise ValueError(f"actions must be in 0..{self.n_actions - 1}, got {act.min()}..."
                             f"{act.max()}")
        return self._pos_of_action[act]

    def step(self, actions: torch.Tensor | np.ndarray
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Apply one action per environment (ints in ``0..n_actions-1``).

        Returns ``(obs, reward, done, info)``: obs (n_envs, *obs_shape) float32, reward (n_envs,)
        float32 and done (n_envs,) bool on ``device``. ``info`` holds ``net_return`` (the profit
        of this step, costs included, unscaled), ``position``, ``bar`` (the decision bar),
        ``terminated``, ``truncated``, ``episode_return`` and ``episode_length`` (finished
        values where done): numpy arrays on the host path, tensors on the device on the device
        path except ``bar`` and ``episode_length``; and the tensor ``final_obs``.
        """
        if not self._ready:
            raise RuntimeError("call reset() before step()")
        new_pos = self._positions_of(actions)
        bar = self._t
        on_device = self.on_device
        if on_device:
            bar_x = self._schedule_x()
            lr = torch.index_select(self._lr_x, 0, bar_x)
        else:
            lr = self._lr[bar]
        net, reward, self._xa, self._xb = _step_math(
            self._ops, new_pos, self._xpos, lr, self._xa, self._xb, cost=self.cost,
            excess=self.excess_reward, reward=self.reward, eta=self.eta,
            var_floor=self._var_floor, scale=self.reward_scale)
        self._xpos = new_pos
        self._xret = self._xret + net
        self._t = bar + 1
        self._ep_len += 1
        done = self._t >= self._end  # the host schedule: no need to ask the device
        if on_device:
            self._t_x = bar_x + 1
            self._sent = (self._t, self._end)
            done_x = self._t_x >= self._end_x
            terminated = done_x & (self._end_x >= self.stop - 1)
        else:
            done_x = done
            terminated = done & (self._end >= self.stop - 1)
        info: dict[str, Any] = {
            "net_return": net, "position": new_pos, "bar": bar, "terminated": terminated,
            "truncated": done_x & ~terminated, "episode_return": self._xret,
            "episode_length": self._ep_len.copy(),
        }
        next_obs = self._obs(self._bars_x(), self._xpos)
        info["final_obs"] = next_obs
        if done.any():
            idx = self._begin(np.flatnonzero(done))
            obs = next_obs.clone()
            rows = idx if on_device else torch.from_numpy(idx).to(self.device)
            obs[rows] = self._obs(self._bars_x()[idx], self._xpos[idx])
        else:
            obs = next_obs
        if on_device:
            return obs, reward.to(torch.float32), done_x, info
        return (obs, torch.from_numpy(reward.astype(np.float32)).to(self.device),
                torch.from_numpy(done).to(self.device), info)


class MultiMarketEnv:
    """Several markets' :class:`VecTradingEnv` stepped as one batch (market-balanced sampling:
    each market gets the same number of environments, whatever its length).

    Environments ``i * m .. (i + 1) * m - 1`` trade market ``i``. The observation layout, actions
    and ``info`` are those of one VecTradingEnv, concatenated; the markets must share the window
    and the feature count (their features are normalised per market, so the scale of a price or
    its volume says nothing about which market it is).
    """

    def __init__(self, envs: list[VecTradingEnv]) -> None:
        if not envs:
            raise ValueError("MultiMarketEnv needs at least one market")
        shapes = {e.obs_shape for e in envs}
        if len(shapes) != 1 or len({e.n_actions for e in envs}) != 1:
            raise ValueError(f"markets differ in observation shape or actions: {shapes}")
        self.envs = envs
        self.obs_shape = envs[0].obs_shape
        self.n_actions = envs[0].n_actions
        self.n_envs = sum(e.n_envs for e in envs)
        self.device = envs[0].device
        self.on_device = envs[0].on_device
        if len({e.on_device for e in envs}) != 1:
            raise ValueError("markets differ in step_on_device")
        self.reward_note = envs[0].reward_note
        bounds = np.cumsum([0] + [e.n_envs for e in envs])
        self._slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:],
                                                              strict=True)]

    def reset(self, seed: int | None = None) -> torch.Tensor:
        return torch.cat([e.reset(None if seed is None else seed + i)
                          for i, e in enumerate(self.envs)])

    def step(self, actions: torch.Tensor | np.ndarray
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        act = (_to_device_actions(actions, self.device) if self.envs[0].on_device
               else _to_numpy_actions(actions))
        if act.shape != (self.n_envs,):
            raise ValueError(f"expected {self.n_envs} actions, got shape {tuple(act.shape)}")
        parts = [e.step(act[s]) for e, s in zip(self.envs, self._slices, strict=True)]
        info: dict[str, Any] = {}
        for key in parts[0][3]:
            vals = [p[3][key] for p in parts]
            info[key] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else \
                np.concatenate(vals)
        return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                torch.cat([p[2] for p in parts]), info)

    def state_dict(self) -> dict[str, Any]:
        from engine.checkpoint import env_state

        return {"markets": [env_state(e) for e in self.envs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from engine.checkpoint import load_env_state

        if len(state["markets"]) != len(self.envs):
            raise ValueError(f"environment state holds {len(state['markets'])} markets, this run "
                             f"has {len(self.envs)}")
        for e, st in zip(self.envs, state["markets"], strict=True):
            load_env_state(e, st)


def evaluate_policy(features: np.ndarray, close: np.ndarray, policy_fn: PolicyFn,
                    window: int = 10, *, start: int | None = None,
                    transaction_cost: float = 1e-4, slippage: float = 2e-4,
                    long_only: bool = False, device: str = "cpu",
                    batch_size: int = 4096, position_levels: int = 1
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic greedy pass over a whole series: ``(positions, net_returns)``.

    ``policy_fn`` maps an observation batch (B, window, F + 1) float32 on ``device`` (the
    environment's observations) to B action indices; it must treat rows independently and be
    deterministic (greedy, eval mode, no state carried between calls). The first decision is at
    bar ``start`` (default ``window - 1``, raised to it if lower), from a flat position, and the
    pass runs to the end of the arrays. Both arrays have length ``T - 1`` and line up with
    :func:`engine.portfolio.position_returns` (which computes ``net_returns``); positions before
    ``start`` are 0, so ``net_returns[start:]`` is the evaluated period. To evaluate a split with
    the bars before it as context, pass arrays ending at the split's end and ``start`` = its first
    bar.

    Fast: the observation at bar ``t`` depends on the position only through its position
    channel, so the policy is queried in large batches for every bar and every possible current
    position, and the positions are then followed in one pass through that table (the same
    positions stepping a ``VecTradingEnv`` would produce).
    """
    feats = np.asarray(features, dtype=np.float32)
    prices = np.asarray(close, dtype=np.float64)
    T = len(prices)
    if feats.ndim != 2 or len(feats) != T:
        raise ValueError(f"features must be ({T}, F), got shape {feats.shape}")
    first = max(window - 1, 0 if start is None else int(start))
    choices = action_positions(long_only, position_levels)
    positions = np.zeros(max(T - 1, 0))
    if first <= T - 2:
        build = _ObsBuilder(feats, window, torch.device(device))
        k = len(choices)
        bars = np.arange(first, T - 1, dtype=np.int64)
        table = np.empty((len(bars), k), dtype=np.int64)  # action at bar, given position index
        step = max(1, batch_size // k)
        with torch.no_grad():
            for lo in range(0, len(bars), step):
                chunk = bars[lo:lo + step]
                obs = build(np.repeat(chunk, k), np.tile(choices, len(chunk)))
                act = _to_numpy_actions(policy_fn(obs))
                if act.shape != (len(chunk) * k,):
                    raise ValueError(f"policy_fn returned {act.shape} actions for "
                                     f"{len(chunk) * k} observations")
                table[lo:lo + len(chunk)] = act.reshape(len(chunk), k)
        if table.min() < 0 or table.max() >= k:
            raise ValueError(f"policy_fn returned actions outside 0..{k - 1}")
        # The action index equals the index of the position it leads to in ``choices``.
        j = int(np.flatnonzero(choices == 0.0)[0])  # start flat
        chosen = np.empty(len(bars), dtype=np.int64)
        rows = table.tolist()
        for i, row in enumerate(rows):
            j = row[j]
            chosen[i] = j
        positions[first:] = choices[chosen]
    net = position_returns(prices, positions, transaction_cost, slippage)
    return positions, net


def bench_env(n_envs: int, steps: int = 2000, n_bars: int = 5000, n_features: int = 10,
              window: int = 10, step_on_device: bool | None = None) -> float:
    """Raw environment steps per second (batched steps x n_envs) with random actions."""
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n_bars, n_features)).astype(np.float32)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n_bars)))
    env = VecTradingEnv(feats, close, n_envs=n_envs, window=window, episode_length=500, seed=0,
                        step_on_device=step_on_device)
    env.reset()
    actions = torch.from_numpy(rng.integers(0, env.n_actions, (steps, n_envs)))
    t0 = time.perf_counter()
    for i in range(steps):
        env.step(actions[i])
    return steps * n_envs / (time.perf_counter() - t0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for n in (1, 256):
        print(f"n_envs={n}: {bench_env(n):,.0f} env steps/s (host path), "
              f"{bench_env(n, step_on_device=True):,.0f} (device path forced on the CPU)")
