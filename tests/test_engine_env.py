"""engine.env and engine.gym_env: rewards match the cost model, episodes, determinism, gym API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from engine.env import VecTradingEnv, action_positions, evaluate_policy
from engine.gym_env import TradingGymEnv
from engine.portfolio import position_returns

torch.set_num_threads(1)

T, F, W = 200, 4, 5
TC, SLIP = 1e-3, 5e-4


@pytest.fixture()
def market() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    feats = rng.standard_normal((T, F)).astype(np.float32)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, T)))
    return feats, close


def make(market: tuple[np.ndarray, np.ndarray], **kw: object) -> VecTradingEnv:
    feats, close = market
    args: dict[str, object] = {"window": W, "transaction_cost": TC, "slippage": SLIP}
    args.update(kw)
    return VecTradingEnv(feats, close, **args)  # type: ignore[arg-type]


def test_shapes_and_types(market: tuple[np.ndarray, np.ndarray]) -> None:
    env = make(market, n_envs=3)
    assert env.n_actions == 3 and env.obs_shape == (W, F + 1)
    obs = env.reset()
    assert obs.shape == (3, W, F + 1) and obs.dtype == torch.float32
    assert torch.equal(obs[0, :, :F], torch.from_numpy(market[0][0:W]))  # bars 0..W-1
    obs, reward, done, info = env.step(torch.tensor([0, 1, 2]))
    assert reward.shape == (3,) and reward.dtype == torch.float32 and done.dtype == torch.bool
    assert torch.equal(env.positions(), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(obs[:, 0, F], torch.tensor([-1.0, 0.0, 1.0]))  # position channel
    assert torch.equal(obs[:, :, F], obs[:, :1, F].expand(3, W))  # constant across the window
    with pytest.raises(ValueError):
        env.step(torch.tensor([0, 1, 3]))
    with pytest.raises(RuntimeError):
        make(market).step(torch.tensor([1]))


def test_rewards_match_position_returns(market: tuple[np.ndarray, np.ndarray]) -> None:
    feats, close = market
    start = 30
    env = make(market, start=start)
    env.reset()
    rng = np.random.default_rng(7)
    positions = np.zeros(T - 1)
    rewards, nets, done = [], [], torch.tensor([False])
    for bar in range(start, T - 1):
        assert not done[0]
        action = int(rng.integers(0, 3))
        positions[bar] = action - 1
        _, reward, done, info = env.step(torch.tensor([action]))
        rewards.append(float(reward[0]))
        nets.append(float(info["net_return"][0]))
        assert int(info["bar"][0]) == bar
    assert bool(done[0]) and bool(info["terminated"][0]) and not bool(info["truncated"][0])
    expected = position_returns(close, positions, TC, SLIP)
    assert np.allclose(nets, expected[start:], rtol=0, atol=1e-15)
    assert np.allclose(rewards, expected[start:], rtol=1e-6, atol=1e-9)
    assert sum(nets) == pytest.approx(expected.sum(), abs=1e-12)
    assert float(info["episode_return"][0]) == pytest.approx(expected.sum(), abs=1e-12)
    assert int(info["episode_length"][0]) == T - 1 - start


def test_evaluate_policy_matches_stepping(market: tuple[np.ndarray, np.ndarray]) -> None:
    feats, close = market

    def policy(obs: torch.Tensor) -> torch.Tensor:  # depends on features and on the position
        score = obs[:, -1, 0] + 0.8 * obs[:, -1, F]
        return torch.where(score > 0.5, 2, torch.where(score < -0.5, 0, 1))

    start = 20
    positions, net = evaluate_policy(feats, close, policy, W, start=start, transaction_cost=TC,
                                     slippage=SLIP, batch_size=64)
    assert positions.shape == net.shape == (T - 1,)
    assert np.all(positions[:start] == 0) and np.any(positions != 0)
    assert np.array_equal(net, position_returns(close, positions, TC, SLIP))
    env = make(market, start=start)
    obs = env.reset()
    stepped = []
    for _ in range(start, T - 1):
        obs, _, _, info = env.step(policy(obs))
        stepped.append(float(info["position"][0]))
    assert np.array_equal(positions[start:], stepped)
    long_pos, _ = evaluate_policy(feats, close, lambda o: torch.ones(len(o), dtype=torch.long),
                                  W, long_only=True)
    assert np.all(long_pos[W - 1:] == 1) and np.all(long_pos[: W - 1] == 0)


def test_seeded_episodes_are_deterministic(market: tuple[np.ndarray, np.ndarray]) -> None:
    actions = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (60, 8)))

    def run(seed: int) -> tuple[list[torch.Tensor], np.ndarray]:
        env = make(market, n_envs=8, episode_length=25, seed=seed, reward="sharpe_ratio")
        out = [env.reset()]
        for a in actions:
            obs, reward, _, _ = env.step(a)
            out += [obs, reward]
        return out, env.bars()

    first, bars1 = run(3)
    second, bars2 = run(3)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert np.array_equal(bars1, bars2)
    _, bars3 = run(4)
    assert not np.array_equal(bars1, bars3)


def test_auto_reset_and_final_obs(market: tuple[np.ndarray, np.ndarray]) -> None:
    env = make(market, n_envs=4, episode_length=3, seed=1)
    obs = env.reset()
    starts = env.bars()
    assert np.all((starts >= W - 1) & (starts <= T - 1 - 3))
    for i in range(3):
        obs, _, done, info = env.step(torch.full((4,), 2))
        assert bool(done.all()) == (i == 2)
    assert np.all(info["truncated"] | info["terminated"])
    final = info["final_obs"]
    assert torch.all(final[:, :, F] == 1.0)  # terminal obs: still long
    assert torch.all(obs[:, :, F] == 0.0)  # new episode starts flat
    assert torch.all(env.positions() == 0)
    feats = torch.from_numpy(market[0])
    for k, (s, new) in enumerate(zip(starts, env.bars(), strict=True)):
        assert torch.equal(final[k, :, :F], feats[s + 3 - W + 1: s + 4])
        assert torch.equal(obs[k, :, :F], feats[new - W + 1: new + 1])
    assert np.all(info["episode_length"] == 3)


def test_long_only_action_mapping(market: tuple[np.ndarray, np.ndarray]) -> None:
    assert list(action_positions(True)) == [0.0, 1.0]
    assert list(action_positions(False)) == [-1.0, 0.0, 1.0]
    env = make(market, long_only=True)
    assert env.n_actions == 2
    env.reset()
    _, _, _, info = env.step(torch.tensor([1]))
    assert info["position"][0] == 1.0
    _, _, _, info = env.step(torch.tensor([0]))
    assert info["position"][0] == 0.0
    with pytest.raises(ValueError):
        env.step(torch.tensor([2]))


def test_shaped_rewards(market: tuple[np.ndarray, np.ndarray]) -> None:
    feats = market[0]
    rising = 100 * np.exp(np.cumsum(np.full(T, 0.001) + np.random.default_rng(1).normal(0, 1e-4,
                                                                                          T)))
    for name in ("sharpe_ratio", "sortino"):
        env = VecTradingEnv(feats, rising, window=W, reward=name, transaction_cost=0, slippage=0)
        env.reset()
        rewards = [float(env.step(torch.tensor([2]))[1][0]) for _ in range(50)]
        assert np.all(np.isfinite(rewards)) and np.mean(rewards) > 0
    calmar = VecTradingEnv(feats, rising, window=W, reward="calmar")
    assert calmar.reward == "sharpe_ratio" and calmar.reward_note
    with pytest.raises(ValueError, match="unknown reward"):
        VecTradingEnv(feats, rising, reward="alpha")
    with pytest.raises(ValueError, match="episode_length"):
        VecTradingEnv(feats, rising, window=W, episode_length=T)


def test_gym_env_passes_checker(market: tuple[np.ndarray, np.ndarray]) -> None:
    feats, close = market
    check_env(TradingGymEnv(feats, close, window=W, episode_length=20), skip_render_check=True)
    check_env(TradingGymEnv(feats, close, window=W, long_only=True, flatten=False,
                            reward="sharpe_ratio"), skip_render_check=True)


def test_gym_env_episode(market: tuple[np.ndarray, np.ndarray]) -> None:
    feats, close = market
    env = TradingGymEnv(feats, close, window=W, start=T - 5, transaction_cost=TC, slippage=SLIP)
    obs, info = env.reset(seed=0)
    assert obs.shape == (W * (F + 1),) and obs.dtype == np.float32 and info["bar"] == T - 5
    total, terminated, truncated = 0.0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(2)
        total += reward
    assert terminated and not truncated
    positions = np.zeros(T - 1)
    positions[T - 5:] = 1.0
    assert total == pytest.approx(position_returns(close, positions, TC, SLIP).sum(), rel=1e-5)
    assert obs.reshape(W, F + 1)[-1, F] == 1.0
    with pytest.raises(RuntimeError):
        env.step(1)


def test_device_gather_path_matches_numpy_path(market: tuple[np.ndarray, np.ndarray]) -> None:
    """The torch gather used on GPUs builds the same observations as the CPU numpy gather."""
    from engine.env import _ObsBuilder

    host = _ObsBuilder(market[0], W, torch.device("cpu"))
    dev = _ObsBuilder(market[0], W, torch.device("cpu"))
    dev.dev_table = torch.from_numpy(dev.table.copy())  # what a GPU device would hold
    bars = np.array([W - 1, 50, T - 1])
    pos = np.array([-1.0, 0.0, 1.0])
    assert torch.equal(host(bars, pos), dev(bars, pos))
