"""engine.train: the agent learns a real pattern, finds no edge in noise, is deterministic, and
reports each episode through the event contract."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import Config
from engine.data import DataError, MarketData
from engine.events import read_events
from engine.portfolio import position_returns
from engine.train import greedy_pass, prepare_data, run_training

torch.set_num_threads(1)

EPISODE_FIELDS = {"episode", "episodes", "reward", "loss", "epsilon", "val_sharpe",
                  "steps_per_s", "env_steps"}


def synthetic(kind: str, n: int = 2000, seed: int = 0) -> MarketData:
    """Daily bars whose log returns are AR(1) with phi = -0.5 (strong mean reversion: the next
    return is predictable from the last) or i.i.d. noise (nothing to predict)."""
    rng = np.random.default_rng(seed)
    eps = rng.normal(0.0, 0.01, n)
    r = np.zeros(n)
    if kind == "mean_reverting":
        for t in range(1, n):
            r[t] = -0.5 * r[t - 1] + eps[t]
    else:
        r = eps
    close = 100.0 * np.exp(np.cumsum(r))
    ts = (np.datetime64("2010-01-01") + np.arange(n).astype("timedelta64[D]"))
    return MarketData(timestamps=ts.astype("datetime64[ns]"), open=close.copy(),
                      high=close * 1.001, low=close * 0.999, close=close, volume=np.ones(n),
                      source=f"{kind}.csv")


# 10 episodes: custom's hold margin keeps a barely trained agent long (5 sufficed without it)
FAST = {"episodes": 10, "learning_starts": 500, "replay_ratio": 8.0, "batch_size": 128,
        "train_frac": 0.6, "val_frac": 0.1}


def _train_and_test(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    md = synthetic(kind, seed=seed)
    cfg = Config(agent_type="custom", seed=seed, **FAST).resolved()  # type: ignore[arg-type]
    data = prepare_data(cfg, md=md)
    result = run_training(cfg, data=data, log=lambda _m: None)
    _, agent = greedy_pass(result.net, data, data.test, cfg)
    a, b = int(data.test.start), int(data.test.stop)
    hold = position_returns(md.close[a:b], np.ones(b - a - 1), cfg.transaction_cost,
                            cfg.slippage)
    return agent, hold


def _t_stat(r: np.ndarray) -> float:
    return float(r.mean() / r.std(ddof=1) * np.sqrt(len(r)))


def test_custom_agent_learns_mean_reversion() -> None:
    agent, hold = _train_and_test("mean_reverting", seed=0)
    # 799 test bars; perfect foresight of the sign would earn ~0.4% a bar before costs.
    assert agent.sum() > hold.sum() + 0.5, (agent.sum(), hold.sum())
    assert _t_stat(agent) > 4.0


def test_no_edge_on_independent_returns() -> None:
    agent, _ = _train_and_test("iid", seed=0)
    # Nothing is predictable: the agent's test returns are noise around (minus) its costs.
    assert abs(_t_stat(agent)) < 2.5, _t_stat(agent)


def _small_cfg(**kw: object) -> Config:
    base = {"agent_type": "dql", "hidden_sizes": (16,), "episodes": 3, "n_envs": 4,
            "learning_starts": 100, "batch_size": 32, "replay_ratio": 4.0, "seed": 3}
    base.update(kw)
    return Config(**base).resolved()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small_data() -> object:
    return prepare_data(_small_cfg(), md=synthetic("mean_reverting", n=300, seed=5))


def test_same_seed_same_run_bit_for_bit(small_data: object, tmp_path: Path) -> None:
    runs = [run_training(_small_cfg(agent_type=a), data=small_data, log=lambda _m: None)  # type: ignore[arg-type]
            for a in ("dql", "dql", "custom")]
    first, again, other = runs
    for p, q in zip(first.net.state_dict().values(), again.net.state_dict().values(),
                    strict=True):
        assert torch.equal(p, q)
    strip = [{k: v for k, v in h.items() if k != "steps_per_s"} for h in first.history]
    assert strip == [{k: v for k, v in h.items() if k != "steps_per_s"} for h in again.history]
    assert other.history[-1]["reward"] != first.history[-1]["reward"]


def test_outputs_and_episode_events(small_data: object, tmp_path: Path) -> None:
    from engine.events import EventWriter

    cfg = _small_cfg(agent_type="memory", episodes=4, checkpoint_every=2)
    with EventWriter(tmp_path / "events.jsonl") as events:
        result = run_training(cfg, data=small_data, out_dir=tmp_path, events=events,  # type: ignore[arg-type]
                              log=lambda _m: None)
    evs = list(read_events(tmp_path / "events.jsonl"))
    episodes = [e for e in evs if e["event"] == "episode"]
    assert [e["episode"] for e in episodes] == [1, 2, 3, 4]
    assert all(EPISODE_FIELDS <= set(e) and e["episodes"] == 4 for e in episodes)
    assert [e["episode"] for e in evs if e["event"] == "checkpoint"] == [2, 4]
    env_steps = [e["env_steps"] for e in episodes]
    assert env_steps == [env_steps[0] * k for k in (1, 2, 3, 4)]
    # one episode is the training split's decision bars in env steps, whatever n_envs is
    assert env_steps[0] == small_data.train_steps + (-small_data.train_steps) % 4  # type: ignore[attr-defined]
    eps = [e["epsilon"] for e in episodes]
    assert eps == sorted(eps, reverse=True) and eps[-1] == pytest.approx(cfg.eps_end)
    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    assert metrics["best_episode"] == result.best_episode and len(metrics["history"]) == 4
    bundle = torch.load(tmp_path / "model.pth", weights_only=True)
    assert bundle["agent_type"] == "memory" and bundle["best_episode"] == result.best_episode
    assert len(list((tmp_path / "checkpoints").glob("ckpt-*.pt"))) == 2


def test_best_model_and_early_stopping(small_data: object) -> None:
    result = run_training(_small_cfg(episodes=30, patience=2), data=small_data,  # type: ignore[arg-type]
                          log=lambda _m: None)
    hist = result.history
    assert result.stopped_early and len(hist) < 30
    best = max(hist, key=lambda h: h["val_sharpe"])
    assert result.best_episode == best["episode"]
    assert all(h["val_sharpe"] <= best["val_sharpe"] for h in hist[best["episode"]:])
    assert len(hist) == result.best_episode + 2


def test_too_short_data_is_a_data_error() -> None:
    with pytest.raises(DataError, match="decision bars"):
        prepare_data(Config(), md=synthetic("iid", n=60))
    cfg = dataclasses.replace(Config(), window=5, feature_window=5)
    assert prepare_data(cfg, md=synthetic("iid", n=150)).train_steps > 20


def test_a_trend_window_model_keeps_its_features_through_save_and_load(tmp_path: Path) -> None:
    """--trend_window N widens the observation by the slow columns; the saved model names them,
    and a reload (an evaluation, a report) rebuilds the same features and acts the same."""
    from engine.train import load_model

    md = synthetic("mean_reverting", n=400, seed=5)
    cfg = _small_cfg(trend_window=60, episodes=2)
    data = prepare_data(cfg, md=md)
    assert data.start == 60 and data.features.shape[1] == 13
    result = run_training(cfg, data=data, out_dir=tmp_path, log=lambda _m: None)
    net, saved, bundle = load_model(tmp_path / "model.pth")
    assert saved.trend_window == 60 and bundle["features"][-3:] == ["trend", "trend_momentum",
                                                                    "vol_regime"]
    again = prepare_data(saved, md=md)
    assert np.array_equal(again.features, data.features)
    assert np.array_equal(greedy_pass(net, again, again.test, saved)[0],
                          greedy_pass(result.net, data, data.test, cfg)[0])
    # without the setting a run sees the ten fast columns, as before the setting existed
    assert prepare_data(_small_cfg(), md=md).features.shape[1] == 10


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_neutral_value() -> None:
    """A checkpoint's config that lacks the newer settings (trend_window, long_only, ...) ran
    with their neutral values: a dql run resumes; asking for the slow features is refused with
    the setting named."""
    from engine.config import COMMON_DEFAULTS, ConfigError
    from engine.train import check_resumable

    cfg = _small_cfg()
    old = {k: v for k, v in cfg.to_dict().items() if k not in COMMON_DEFAULTS}
    old["hidden_sizes"] = list(cfg.hidden_sizes or ())
    check_resumable(cfg, old, "ckpt-00000100.pt")
    with pytest.raises(ConfigError, match=r"trend_window=0 \(now 60\)"):
        check_resumable(_small_cfg(trend_window=60), old, "ckpt-00000100.pt")


def test_weight_average_keeps_the_mean_of_the_eligible_episodes_weights() -> None:
    """--weight_average: the model is the mean of the weights at the end of every episode from
    select_from on (here episodes 3 and 4 of 4), not any one episode's; its validation score is
    the mean's own."""
    from engine.agents import weights_copy
    from engine.train import Trainer, validate_net

    md = synthetic("mean_reverting", n=900, seed=4)
    cfg = Config(agent_type="custom", seed=4, episodes=4, select_from=0.5, weight_average=True,
                 hidden_sizes=(16,), n_envs=4, learning_starts=100, batch_size=32,
                 replay_ratio=4.0, train_frac=0.6, val_frac=0.2).resolved()
    data = prepare_data(cfg, md=md)
    trainer = Trainer(cfg, data, "cpu", log=lambda _m: None)
    ends = []
    while trainer.s.episode < cfg.episodes:
        trainer._collect_episode()
        trainer._end_episode()
        ends.append(weights_copy(trainer.agent.online))
    result = run_training(cfg, data=data, log=lambda _m: None)
    model = result.net.state_dict()
    for key, value in model.items():
        assert torch.allclose(value, (ends[2][key] + ends[3][key]) / 2, atol=1e-6), key
    assert not all(torch.equal(model[k], ends[3][k]) for k in model)    # not the last
    assert not all(torch.equal(model[k], ends[2][k]) for k in model)
    _, score, _ = validate_net(result.net, [data], cfg, "cpu")
    assert result.best_val_sharpe == pytest.approx(score) and result.best_episode == 4
