"""The environment's device path (``step_on_device``), forced on the CPU: the same trajectories
as the numpy host path for the same seed, the same training within float tolerance, and no
device -> host conversion inside a training step (what would be a host sync on a GPU).

``DQL_TEST_DEVICE=cuda`` (what ``bench/gpu_check.sh`` sets where a GPU exists) puts the device
path on that device: parity is then CPU host path vs the GPU, and the no-sync check runs the
training steps under ``torch.cuda.set_sync_debug_mode("error")``. By default everything is CPU,
the "device" tensors live on the CPU, and the no-sync check records the conversions that would
synchronise a GPU's stream (``item``, ``tolist``, ``numpy``, ``__bool__``..., ``cpu``, and any
``to``/``copy_`` to another device that is not ``non_blocking``). ``DQL_TEST_COMPILE=1`` adds a
real ``torch.compile`` of the update (~25 s on 2 CPU cores: not in the default run).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from engine import checkpoint as ckpt
from engine.config import Config
from engine.data import MarketData
from engine.env import MultiMarketEnv, VecTradingEnv, evaluate_policy
from engine.train import Trainer, prepare_data, run_training

torch.set_num_threads(1)
DEVICE = os.environ.get("DQL_TEST_DEVICE", "cpu")
ON_GPU = DEVICE != "cpu"

ENV_CASES = {
    "profit": {},
    "sharpe_ratio": {"reward": "sharpe_ratio"},
    "sortino": {"reward": "sortino"},
    "excess_sortino": {"reward": "sortino", "excess_reward": True},
    "long_only_levels": {"long_only": True, "position_levels": 2, "reward": "sharpe_ratio"},
    "levels_3": {"position_levels": 3, "reward_scale": 50.0},
    "obs_noise": {"obs_noise": 0.1, "reward": "sharpe_ratio"},
    "whole_split": {"episode_length": None, "stop": 40},  # terminated at the end of data
}


def _market(n: int = 300, f: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, f)).astype(np.float32)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    return feats, close


def _env(on_device: bool, seed: int = 3, **kw: Any) -> VecTradingEnv:
    feats, close = _market()
    args: dict[str, Any] = {"n_envs": 5, "window": 6, "episode_length": 17, "seed": seed, **kw}
    return VecTradingEnv(feats, close, step_on_device=on_device,
                         device=DEVICE if on_device else "cpu", **args)


def _host(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _same_step(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    (obs_a, r_a, d_a, info_a), (obs_b, r_b, d_b, info_b) = a, b
    np.testing.assert_allclose(_host(obs_a), _host(obs_b), rtol=0, atol=1e-6)
    np.testing.assert_allclose(_host(r_a), _host(r_b), rtol=1e-5, atol=1e-7)
    assert np.array_equal(_host(d_a), _host(d_b))
    assert set(info_a) == set(info_b)
    for key in info_a:
        np.testing.assert_allclose(_host(info_a[key]), _host(info_b[key]), rtol=1e-9,
                                   atol=1e-6, err_msg=key)


@pytest.mark.parametrize("case", sorted(ENV_CASES))
def test_env_paths_give_the_same_trajectories(case: str) -> None:
    host, dev = _env(False, **ENV_CASES[case]), _env(True, **ENV_CASES[case])
    assert not host.on_device and dev.on_device
    np.testing.assert_allclose(_host(host.reset()), _host(dev.reset()), atol=1e-6)
    actions = np.random.default_rng(1).integers(0, host.n_actions, (60, host.n_envs))
    dones = 0
    for row in actions:
        step_h = host.step(row)
        step_d = dev.step(torch.from_numpy(row).to(DEVICE))
        _same_step(step_h, step_d)
        dones += int(_host(step_h[2]).sum())
        assert isinstance(step_d[3]["net_return"], torch.Tensor)  # stays on the device
    assert dones > 0  # auto-resets were exercised
    np.testing.assert_allclose(_host(host.positions()), _host(dev.positions()))


def test_multi_market_paths_agree() -> None:
    def build(on_device: bool) -> MultiMarketEnv:
        feats, close = _market(seed=0)
        feats2, close2 = _market(n=250, seed=9)
        return MultiMarketEnv([
            VecTradingEnv(feats, close, n_envs=3, window=6, episode_length=20, seed=1,
                          reward="sortino", step_on_device=on_device,
                          device=DEVICE if on_device else "cpu"),
            VecTradingEnv(feats2, close2, n_envs=3, window=6, episode_length=30, seed=2,
                          reward="sortino", step_on_device=on_device,
                          device=DEVICE if on_device else "cpu")])

    host, dev = build(False), build(True)
    np.testing.assert_allclose(_host(host.reset(seed=4)), _host(dev.reset(seed=4)), atol=1e-6)
    for row in np.random.default_rng(2).integers(0, 3, (50, 6)):
        _same_step(host.step(row), dev.step(torch.from_numpy(row).to(DEVICE)))


def test_device_path_checkpoint_round_trip_and_bounds() -> None:
    env = _env(True, reward="sharpe_ratio")
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(10):
        env.step(torch.from_numpy(rng.integers(0, 3, env.n_envs)))
    saved = ckpt.env_state(env)
    other = _env(True, reward="sharpe_ratio", seed=99)
    other.reset()
    ckpt.load_env_state(other, saved)
    for _ in range(25):
        act = torch.from_numpy(rng.integers(0, 3, env.n_envs))
        _same_step(env.step(act), other.step(act))
    if ON_GPU:  # a device-side assert would end the CUDA context
        return
    # the host path's range check is a sync; the device path relies on index_select's bounds
    with pytest.raises(IndexError):
        env.step(torch.full((env.n_envs,), 3))
    with pytest.raises(IndexError):
        env.step(torch.full((env.n_envs,), -1))


def test_evaluate_policy_on_a_tensor_policy() -> None:
    feats, close = _market()
    torch.manual_seed(0)
    w = torch.randn(6 * 5, 3)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        return (obs.flatten(1) @ w.to(obs.device)).argmax(dim=1)

    pos, net = evaluate_policy(feats, close, policy, window=6)
    env = _env(True, n_envs=1, episode_length=None)
    obs = env.reset()
    for t in range(5, len(close) - 1):
        obs, _, _, info = env.step(policy(obs))
        assert float(info["position"][0]) == pos[t]
        assert float(info["net_return"][0]) == pytest.approx(net[t], abs=1e-12)


# -- training ------------------------------------------------------------------------------------

def _tiny_market(n: int = 400) -> MarketData:
    rng = np.random.default_rng(5)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    ts = np.datetime64("2010-01-01") + np.arange(n).astype("timedelta64[D]")
    return MarketData(timestamps=ts.astype("datetime64[ns]"), open=close.copy(),
                      high=close * 1.001, low=close * 0.999, close=close, volume=np.ones(n),
                      source="tiny.csv")


def _cfg(**kw: Any) -> Config:
    base: dict[str, Any] = {"agent_type": "custom", "episodes": 3, "n_envs": 8,
                            "learning_starts": 64, "batch_size": 32, "replay_ratio": 4.0,
                            "buffer_size": 2000, "hidden_sizes": (16,), "train_frac": 0.6,
                            "val_frac": 0.2, "checkpoint_every": 0, "device": "cpu",
                            "prioritized": True, "obs_noise": 0.05, "seed": 7}
    return Config(**{**base, **kw}).resolved()


@pytest.mark.skipif(ON_GPU, reason="a GPU draws actions and samples from its own generator")
def test_training_is_the_same_on_both_paths() -> None:
    md = _tiny_market()
    histories = []
    for mode in ("off", "on"):
        cfg = _cfg(step_on_device=mode, reward_goal="sharpe_ratio")
        result = run_training(cfg, data=prepare_data(cfg, md=md), log=lambda _m: None)
        histories.append(result.history)
    host, dev = histories
    assert len(host) == len(dev) == 3 and host[-1]["updates"] > 0
    for h, d in zip(host, dev, strict=True):
        for key in ("reward", "loss", "val_sharpe", "val_return", "epsilon"):
            assert d[key] == pytest.approx(h[key], rel=1e-4, abs=1e-6), key
        assert (d["env_steps"], d["updates"], d["best"]) == (h["env_steps"], h["updates"],
                                                             h["best"])


def test_update_is_the_same_on_the_device() -> None:
    """The same batch and weights give the same updates on the CPU and on DEVICE."""
    from engine.agents import DQNAgent
    from engine.replay import Batch

    cfg = _cfg(agent_type="custom", compile="off")
    gen = torch.Generator().manual_seed(0)
    shape = (cfg.window, 5)
    batch = (torch.randn(64, *shape, generator=gen), torch.randint(3, (64,), generator=gen),
             torch.randn(64, generator=gen), torch.randn(64, *shape, generator=gen),
             torch.full((64,), 0.9), torch.arange(64), torch.rand(64, generator=gen))
    out = []
    for device in ("cpu", DEVICE):
        torch.manual_seed(1)
        agent = DQNAgent(cfg, shape, 3, device)
        losses = [agent.update(Batch(*(t.to(device) for t in batch)))[0] for _ in range(3)]
        out.append(([float(v) for v in losses],
                    {k: v.cpu() for k, v in agent.online.state_dict().items()}))
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-4)
    for k, v in out[0][1].items():
        torch.testing.assert_close(out[1][1][k], v, rtol=1e-4, atol=1e-5)


# -- no host sync ----------------------------------------------------------------------------------

_CONVERSIONS = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__",
                "__array__", "cpu"}
# ops whose output size depends on the data: on a GPU the host must wait to learn it
_DATA_SHAPED = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive",
                "nonzero_static"}


def _bool_index(index: Any) -> bool:
    """A boolean-mask index (``x[mask]``, ``x[mask] = v``): a nonzero() underneath."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts)


class SyncRecorder(TorchFunctionMode):
    """Records every tensor call that would make the host wait for a GPU: conversions to
    Python or numpy, and copies to another device that are not ``non_blocking``."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in _CONVERSIONS or name in _DATA_SHAPED:
            self.syncs.append(name)
        elif name == "where" and len(args) == 1:        # where(cond): nonzero
            self.syncs.append("where(cond)")
        elif name in ("__getitem__", "__setitem__") and len(args) > 1 and _bool_index(args[1]):
            self.syncs.append(f"{name}[bool mask]")
        elif name in ("to", "copy_"):
            moves = any(isinstance(a, torch.device | str) for a in args[1:]) or \
                "device" in kwargs or name == "copy_"
            if moves and not kwargs.get("non_blocking") and not (
                    name == "copy_" and args[0].device == args[1].device):
                self.syncs.append(name)
        return func(*args, **kwargs)


@contextmanager
def recording() -> Iterator[SyncRecorder]:
    """The recorder on the CPU; on a GPU, CUDA's own sync check (an error at any sync)."""
    rec = SyncRecorder()
    if ON_GPU:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield rec
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return
    with rec:
        yield rec


TRAIN_CASES = {
    "dql": {"agent_type": "dql", "prioritized": False, "obs_noise": 0.0},
    "custom_per_nstep_noise": {},
    "memory_sortino": {"agent_type": "memory", "reward_goal": "sortino", "n_step": 2},
}


def _trainer(**kw: Any) -> Trainer:
    cfg = _cfg(step_on_device="on", device=DEVICE, **kw)
    return Trainer(cfg, prepare_data(cfg, md=_tiny_market()), DEVICE, log=lambda _m: None)


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_training_steps_make_no_host_sync(case: str) -> None:
    trainer = _trainer(**TRAIN_CASES[case])
    assert trainer.env.on_device
    for _ in range(10):  # past learning_starts: updates and priority updates run too
        trainer._step()
    updates = trainer.agent.updates
    with recording() as rec:
        for _ in range(trainer.segment + 2):  # an episode end (auto-reset) in between
            trainer._step()
    assert trainer.agent.updates > updates
    assert rec.syncs == []


@pytest.mark.skipif(ON_GPU, reason="the CPU's recorder")
def test_the_recorder_sees_a_sync_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer()
    step = trainer.env.step

    def syncing_step(actions: Any) -> Any:
        out = step(actions)
        float(out[1].sum())  # e.g. logging the reward each step
        return out

    monkeypatch.setattr(trainer.env, "step", syncing_step)
    with recording() as rec:
        trainer._step()
    assert rec.syncs == ["__float__"]
    with recording() as rec:
        torch.ones(2).to("cpu")
        torch.ones(2).to("cpu", non_blocking=True)
        torch.ones(2)[torch.tensor([True, False])]
        torch.ones(2).tolist()
    assert rec.syncs == ["to", "__getitem__[bool mask]", "tolist"]


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile on: a compiler error becomes a warning and the update runs eager (the real
    compile takes ~25 s on 2 CPU cores, too slow for this suite: bench/gpu_check.sh runs it)."""
    def broken(fn: Any, **_kw: Any) -> Any:
        def call(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("no C++ compiler\nmore")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    warnings: list[str] = []
    trainer = _trainer(compile="on")
    trainer.agent.warn = warnings.append
    for _ in range(12):
        trainer._step()
    assert trainer.agent.updates > 0 and not trainer.agent.compiled
    assert warnings == ["torch.compile of the update failed, running eager: RuntimeError: "
                        "no C++ compiler"]


@pytest.mark.skipif(os.environ.get("DQL_TEST_COMPILE") != "1",
                    reason="a real torch.compile takes ~25 s here (DQL_TEST_COMPILE=1)")
def test_compiled_update_trains_like_eager() -> None:
    losses = []
    for mode in ("off", "on"):
        trainer = _trainer(compile=mode, agent_type="dql", prioritized=False, obs_noise=0.0)
        for _ in range(30):
            trainer._step()
        assert trainer.agent.compiled == (mode == "on")
        losses.append(float(trainer.ep_loss) / max(1, trainer.s.ep_updates))
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def test_settings_reach_the_environment() -> None:
    assert _trainer().env.on_device
    cfg = dataclasses.replace(_cfg(), step_on_device="auto")
    assert not Trainer(cfg, prepare_data(cfg, md=_tiny_market()), "cpu",
                       log=lambda _m: None).env.on_device
