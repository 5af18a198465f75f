"""engine.replay and engine.agents: the ring buffer, n-step returns, prioritised replay, the
epsilon schedule on environment steps, the networks and one update."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.agents import Adam, DQNAgent, GRUQNet, MLPQNet, build_qnet, epsilon_at
from engine.config import Config
from engine.replay import Batch, NStepAccumulator, ReplayBuffer

torch.set_num_threads(1)

OBS = (4, 3)


def _obs(n: int, value: float) -> torch.Tensor:
    return torch.full((n, *OBS), float(value))


def test_ring_buffer_wraps_and_samples_a_namedtuple() -> None:
    buf = ReplayBuffer(5, OBS, "cpu")
    for step in range(3):  # 3 x 2 = 6 transitions into 5 slots: the first one is overwritten
        k = torch.arange(2) + 2 * step
        buf.add(_obs(2, 0) + k.view(-1, 1, 1), k, k.float(), _obs(2, 1), torch.ones(2))
    assert len(buf) == 5 and buf.pos == 1
    assert sorted(buf.actions.tolist()) == [1, 2, 3, 4, 5]
    gen = torch.Generator().manual_seed(0)
    batch = buf.sample(16, gen)
    assert isinstance(batch, Batch)
    assert batch.obs.shape == (16, *OBS) and batch.actions.dtype == torch.int64
    assert torch.equal(batch.obs[:, 0, 0], batch.actions.float())  # rows stay together
    assert torch.equal(batch.weights, torch.ones(16))


def test_buffer_state_round_trip() -> None:
    buf = ReplayBuffer(8, OBS, "cpu", prioritized=True)
    buf.add(_obs(3, 2), torch.tensor([0, 1, 2]), torch.ones(3), _obs(3, 3), torch.ones(3))
    buf.update_priorities(torch.tensor([1]), torch.tensor([5.0]))
    other = ReplayBuffer(8, OBS, "cpu", prioritized=True)
    other.load_state_dict(buf.state_dict())
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = buf.sample(10, g1), other.sample(10, g2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_prioritized_sampling_prefers_large_td_errors() -> None:
    buf = ReplayBuffer(100, OBS, "cpu", prioritized=True, alpha=1.0)
    buf.add(_obs(100, 0), torch.zeros(100, dtype=torch.int64), torch.zeros(100), _obs(100, 0),
            torch.ones(100))
    buf.update_priorities(torch.arange(100), torch.full((100,), 0.01))
    buf.update_priorities(torch.tensor([7]), torch.tensor([10.0]))
    batch = buf.sample(1000, torch.Generator().manual_seed(0), beta=1.0)
    assert (batch.indices == 7).float().mean() > 0.8
    assert batch.weights.max() == 1.0 and batch.weights.min() > 0
    assert batch.weights[batch.indices == 7].max() < batch.weights[batch.indices != 7].min()


def _brute_nstep(rewards: list[list[float]], done: list[list[bool]], term: list[list[bool]],
                 n: int, gamma: float, t: int, e: int) -> tuple[float, float, int]:
    """(return, discount, index of the step whose next_obs is used) for start t, env e."""
    g, disc, last = 0.0, 0.0, t
    for k in range(n):
        g += gamma ** k * rewards[t + k][e]
        last = t + k
        disc = gamma ** (k + 1) * (0.0 if term[t + k][e] else 1.0)
        if done[t + k][e]:
            break
    return g, disc, last


def test_nstep_returns_stop_at_episode_ends() -> None:
    n, gamma, envs, steps = 3, 0.9, 2, 9
    gen = torch.Generator().manual_seed(1)
    rewards = torch.randn(steps, envs, generator=gen).tolist()
    done = [[False, False] for _ in range(steps)]
    term = [[False, False] for _ in range(steps)]
    done[2][0] = term[2][0] = True  # env 0 terminates (end of data) at step 2
    done[5][1] = True  # env 1 is truncated at step 5 (bootstraps)
    acc = NStepAccumulator(n, gamma, envs, OBS, "cpu")
    emitted = []
    for t in range(steps):
        out = acc.push(_obs(envs, t), torch.full((envs,), t), torch.tensor(rewards[t]),
                       _obs(envs, 100 + t), torch.tensor(term[t]), torch.tensor(done[t]))
        if t < n - 1:
            assert out is None
        else:
            emitted.append((t - n + 1, out))
    assert len(emitted) == steps - n + 1
    for start, (obs, act, ret, nxt, disc) in emitted:
        assert torch.equal(act, torch.full((envs,), start))
        for e in range(envs):
            g, d, last = _brute_nstep(rewards, done, term, n, gamma, start, e)
            assert ret[e].item() == pytest.approx(g, rel=1e-5)
            assert disc[e].item() == pytest.approx(d, rel=1e-6)
            assert nxt[e, 0, 0].item() == 100 + last
            assert obs[e, 0, 0].item() == start


def test_one_step_passes_through() -> None:
    acc = NStepAccumulator(1, 0.5, 2, OBS, "cpu")
    obs, act, ret, nxt, disc = acc.push(_obs(2, 1), torch.tensor([0, 1]), torch.tensor([1., 2.]),
                                        _obs(2, 2), torch.tensor([True, False]),
                                        torch.tensor([True, False]))
    assert disc.tolist() == [0.0, 0.5] and ret.tolist() == [1.0, 2.0]


def test_epsilon_follows_environment_steps_not_updates() -> None:
    cfg = Config(eps_start=1.0, eps_end=0.1, eps_fraction=0.5)
    total = 10_000
    assert epsilon_at(0, total, cfg) == 1.0
    assert epsilon_at(2_500, total, cfg) == pytest.approx(0.55)
    assert epsilon_at(5_000, total, cfg) == pytest.approx(0.1)
    assert epsilon_at(9_999, total, cfg) == pytest.approx(0.1)
    exp = dataclasses.replace(cfg, eps_schedule="exponential")
    values = [epsilon_at(s, total, exp) for s in range(0, 6_000, 500)]
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(values[:-2], values[1:-1], strict=True))
    assert epsilon_at(4_999, total, exp) == pytest.approx(0.1 + 0.9 * 0.01, rel=1e-2)


@pytest.mark.parametrize("agent", ["dql", "custom", "memory"])
def test_networks_and_defaults(agent: str) -> None:
    cfg = Config(agent_type=agent).resolved()
    net = build_qnet(cfg, (10, 11), 3)
    assert net(torch.zeros(5, 10, 11)).shape == (5, 3)
    if agent == "memory":
        assert isinstance(net, GRUQNet)
    else:
        assert isinstance(net, MLPQNet)
        widths = [m.out_features for m in net.body if isinstance(m, torch.nn.Linear)]
        assert widths == ([128, 128] if agent == "dql" else [256, 128, 64])
    assert cfg.double_dqn == (agent != "dql") and cfg.dueling == (agent == "custom")
    assert cfg.n_step == (3 if agent == "custom" else 1)


def _fixed_batch(n: int = 64) -> Batch:
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(n, *OBS, generator=gen)
    actions = torch.randint(3, (n,), generator=gen)
    rewards = obs[:, -1, 0] * (actions.float() - 1.0)  # a learnable reward
    return Batch(obs, actions, rewards, torch.randn(n, *OBS, generator=gen), torch.zeros(n),
                 torch.arange(n), torch.ones(n))


@pytest.mark.parametrize("agent", ["dql", "custom", "memory"])
def test_updates_fit_a_fixed_batch(agent: str) -> None:
    torch.manual_seed(0)
    cfg = Config(agent_type=agent, lr=1e-2, hidden_sizes=(32,), target_update_freq=1000)
    learner = DQNAgent(cfg, OBS, 3, "cpu")
    batch = _fixed_batch()
    first, _ = learner.update(batch)
    for _ in range(150):
        loss, td = learner.update(batch)
    assert loss.item() < 0.2 * first.item()
    assert td.shape == (64,) and bool((td >= 0).all())
    assert learner.updates == 151


def test_target_network_hard_and_polyak() -> None:
    torch.manual_seed(0)
    hard = DQNAgent(Config(hidden_sizes=(8,), target_update_freq=2, lr=0.1), OBS, 3, "cpu")
    batch = _fixed_batch()
    before = [p.clone() for p in hard.target.parameters()]
    hard.update(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, hard.target.parameters(), strict=True))
    hard.update(batch)
    assert all(torch.equal(a, b) for a, b in zip(hard.online.parameters(),
                                                 hard.target.parameters(), strict=True))
    soft = DQNAgent(Config(hidden_sizes=(8,), target_update_freq=1, tau=0.5, lr=0.1), OBS, 3,
                    "cpu")
    t0 = [p.clone() for p in soft.target.parameters()]
    soft.update(batch)
    for t, o, old in zip(soft.target.parameters(), soft.online.parameters(), t0, strict=True):
        assert torch.allclose(t, 0.5 * old + 0.5 * o)


def test_adam_matches_torch_adam() -> None:
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    ours, ref = Adam(list(a.parameters()), lr=1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    x = torch.randn(16, 4)
    for _ in range(5):
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_gradient_clipping_matches_torch() -> None:
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(16, 4) * 100
    for net in (a, b):
        net(x).pow(2).mean().backward()
    ours = Adam(list(a.parameters()), lr=1e-2).clip_grad_norm_(1.0)
    ref = torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
    assert torch.allclose(ours, ref) and ours > 1.0
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad)


def test_acting_draws_the_same_random_numbers_whatever_epsilon() -> None:
    learner = DQNAgent(Config(hidden_sizes=(8,)), OBS, 3, "cpu")
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    learner.act(_obs(4, 0), 1.0, g1)
    learner.act(_obs(4, 0), 0.0, g2)
    assert torch.equal(g1.get_state(), g2.get_state())
    greedy = learner.act(_obs(4, 0), 0.0, g1)
    assert torch.equal(greedy, learner.greedy(_obs(4, 0)))


def test_greedy_holding_keeps_buy_and_holds_position_unless_another_is_surely_better() -> None:
    """--hold_margin: the fully long action (the last) is kept while no other action beats it by
    more than the margin; 0 is the plain argmax."""
    from engine.agents import greedy_holding

    q = torch.tensor([[0.00, 0.05, 0.00],     # flat-ish best by 0.05: within 0.1, hold
                      [0.50, 0.00, 0.20],     # flat best by 0.30: beyond 0.1, go flat
                      [0.00, 0.00, 0.40],     # long is best anyway
                      [0.28, 0.00, 0.20]])    # short of 0.1 again: hold
    assert greedy_holding(q, 0.0).tolist() == [1, 0, 2, 0]
    assert greedy_holding(q, 0.1).tolist() == [2, 0, 2, 2]
    assert greedy_holding(q, 1.0).tolist() == [2, 2, 2, 2]
