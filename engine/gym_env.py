"""A Gymnasium view of the trading environment, for other RL libraries (stable-baselines3, ...).

``TradingGymEnv`` wraps one :class:`engine.env.VecTradingEnv` (``n_envs=1``, CPU), so the market,
the timing, the cost model and the rewards are exactly those the engine's own agents train on;
there is no second copy of the step logic. Observations are float32, flattened to
``Box(window * (F + 1),)`` by default (what SB3's MlpPolicy and env checker expect; row-major, so
``obs.reshape(window, F + 1)`` recovers the engine's layout) or ``Box(window, F + 1)`` with
``flatten=False``; the bounds are the features' own range. Actions are ``Discrete(3)`` (short/flat/long) or ``Discrete(2)`` when long
only. ``terminated`` means the episode reached the end of the data, ``truncated`` that it reached
``episode_length``; after either, call ``reset``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from engine.env import VecTradingEnv


class TradingGymEnv(gym.Env[np.ndarray, np.int64]):
    """One trading environment with the Gymnasium API; keyword arguments as VecTradingEnv."""

    metadata = {"render_modes": []}

    def __init__(self, features: np.ndarray, close: np.ndarray, window: int = 10,
                 transaction_cost: float = 1e-4, slippage: float = 2e-4, long_only: bool = False,
                 reward: str = "profit", episode_length: int | None = None, start: int = 0,
                 seed: int | None = None, flatten: bool = True, **kwargs: Any) -> None:
        super().__init__()
        self.vec = VecTradingEnv(features, close, n_envs=1, window=window,
                                 transaction_cost=transaction_cost, slippage=slippage,
                                 long_only=long_only, reward=reward,
                                 episode_length=episode_length, start=start, device="cpu",
                                 seed=seed, **kwargs)
        # Bounds from the data itself (every observation is made of these rows), so the space is
        # finite; the position channel spans the possible positions.
        feats = np.asarray(features, dtype=np.float32)
        low = np.empty(self.vec.obs_shape, dtype=np.float32)
        high = np.empty(self.vec.obs_shape, dtype=np.float32)
        low[:, :-1], high[:, :-1] = feats.min(axis=0), feats.max(axis=0)
        low[:, -1], high[:, -1] = (0.0 if long_only else -1.0), 1.0
        self.flatten = bool(flatten)
        if self.flatten:
            low, high = low.reshape(-1), high.reshape(-1)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(self.vec.n_actions)
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        obs = self.vec.reset(seed=seed)
        self._needs_reset = False
        return self._np(obs), {"bar": int(self.vec.bars()[0]), "position": 0.0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (and after an episode ends)")
        act = torch.as_tensor(np.asarray(action, dtype=np.int64).reshape(1))
        _, reward, done, info = self.vec.step(act)
        terminated = bool(info["terminated"][0])
        truncated = bool(info["truncated"][0])
        self._needs_reset = bool(done[0])
        out = {"net_return": float(info["net_return"][0]),
               "position": float(info["position"][0]), "bar": int(info["bar"][0])}
        if self._needs_reset:
            out["episode_return"] = float(info["episode_return"][0])
            out["episode_length"] = int(info["episode_length"][0])
        # The vec env has already auto-reset; the observation after this action is final_obs.
        return self._np(info["final_obs"]), float(reward[0]), terminated, truncated, out

    def _np(self, obs: torch.Tensor) -> np.ndarray:
        out = obs[0].cpu().numpy().astype(np.float32, copy=True)
        return out.reshape(-1) if self.flatten else out
