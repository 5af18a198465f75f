"""Tuning: parameter sets, trials in worker processes, trial events, best_params.json reuse."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from engine import tune
from engine.config import Config
from engine.events import EventWriter, read_events


def fake_trial(cfg: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """A cheap, deterministic trial: best at gamma 0.95, lr 1e-4; batch 256 fails."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "model.pth").write_bytes(b"x")
    if cfg["batch_size"] == 256:
        raise RuntimeError("CUDA out of memory (pretend)")
    sharpe = 1.0 - 100 * (cfg["gamma"] - 0.95) ** 2 - abs(math.log10(cfg["lr"]) + 4)
    return {"sharpe_ratio": sharpe, "total_return": 0.01, "n_trades": cfg["episodes"],
            "pid": os.getpid()}


def test_random_sampling_is_seeded_and_in_range() -> None:
    a = tune.sample_random(tune.RANDOM_SPACE, 50, seed=3)
    assert a == tune.sample_random(tune.RANDOM_SPACE, 50, seed=3)
    assert a != tune.sample_random(tune.RANDOM_SPACE, 50, seed=4)
    for p in a:
        assert 0.85 <= p["gamma"] <= 0.999 and 1e-5 <= p["lr"] <= 1e-3
        assert 0.1 <= p["eps_fraction"] <= 0.8
        assert type(p["batch_size"]) is int and p["batch_size"] in (32, 64, 128, 256)
        assert p["buffer_size"] in (10_000, 20_000, 50_000, 100_000)
    json.dumps(a)
    assert tune.TRAIN_COST_KEY in tune.search_space("random", tune_costs=True)


def test_grid_points_full_and_truncated() -> None:
    full = tune.grid_points(tune.GRID_SPACE)
    assert len(full) == 3 * 3 * 2 * 2 * 2
    assert len({json.dumps(p, sort_keys=True) for p in full}) == len(full)
    part = tune.grid_points(tune.GRID_SPACE, 5, seed=1)
    assert len(part) == 5 and all(p in full for p in part)
    assert part == tune.grid_points(tune.GRID_SPACE, 5, seed=1)


def test_run_tuning_in_worker_processes(tmp_path: Path) -> None:
    space = {"gamma": [0.9, 0.95], "lr": [1e-4, 1e-3], "batch_size": [64, 256]}
    with EventWriter(tmp_path / "events.jsonl") as ev:
        res = tune.run_tuning(Config(n_iter=8, tuning_episodes=3), tmp_path, method="grid",
                              space=space, workers=2, events=ev,
                              trial_fn="tests.test_engine_tune:fake_trial")
    assert res.workers == 2 and len(res.trials) == 8
    assert res.best_params == {"gamma": 0.95, "lr": 1e-4, "batch_size": 64}
    assert res.best_score == pytest.approx(1.0)
    failed = [t for t in res.trials if t["status"] == "failed"]
    assert len(failed) == 4 and "out of memory" in failed[0]["error"]
    pids = {t["metrics"]["pid"] for t in res.trials if t["status"] == "ok"}
    assert os.getpid() not in pids  # trials ran in worker processes
    assert all(t["metrics"]["n_trades"] == 3 for t in res.trials if t["status"] == "ok")
    events = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "trial"]
    assert len(events) == 8 and {e["trial"] for e in events} == set(range(1, 9))
    assert all(e["trials"] == 8 and "params" in e and "score" in e for e in events)
    assert sum(e["status"] == "failed" and e["score"] is None for e in events) == 4
    assert not (tmp_path / "tuning").exists()  # trial work folders cleaned up
    rows = (tmp_path / "tuning_results.csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("trial,status,score,")
    saved = json.loads((tmp_path / "best_params.json").read_text())
    assert saved["params"] == res.best_params and saved["metric"] == "sharpe_ratio"
    assert saved["method"] == "grid" and saved["n_trials"] == 8 and saved["trial"] == res.best_trial


def test_skip_tuning_reuses_best_params(tmp_path: Path) -> None:
    space = {"gamma": ("uniform", 0.9, 0.99), "lr": ("loguniform", 1e-5, 1e-3),
             "batch_size": ("choice", [32, 64]), tune.TRAIN_COST_KEY: ("uniform", 1e-4, 1e-3)}
    res = tune.run_tuning({"seed": 1, "n_iter": 4, "tuning_episodes": 2}, tmp_path,
                          method="random", space=space, workers=1,
                          trial_fn="tests.test_engine_tune:fake_trial")
    assert len(res.trials) == 4 and all(t["status"] == "ok" for t in res.trials)
    # the training friction is tuned but is not a setting of the run
    assert tune.TRAIN_COST_KEY in res.trials[0]["params"]
    assert tune.TRAIN_COST_KEY not in res.best_params
    assert 1e-4 <= res.train_transaction_cost <= 1e-3
    assert tune.load_train_transaction_cost(tmp_path) == res.train_transaction_cost
    cfg, params = tune.apply_best_params(Config(), tmp_path)
    assert params == res.best_params
    assert cfg.gamma == params["gamma"] and cfg.lr == params["lr"]
    assert cfg.batch_size == params["batch_size"]
    assert tune.apply_best_params(Config(), tmp_path / "none") == (Config(), {})


def test_all_failed_saves_nothing_and_legacy_file(tmp_path: Path) -> None:
    res = tune.run_tuning({"n_iter": 2}, tmp_path, method="grid",
                          space={"gamma": [0.9, 0.99], "lr": [1e-4], "batch_size": [256]},
                          workers=1, trial_fn="tests.test_engine_tune:fake_trial")
    assert res.best_params == {} and res.best_score is None
    assert not (tmp_path / "best_params.json").exists()
    (tmp_path / "optimal_parameters.json").write_text(json.dumps(
        {"agent_params": {"gamma": 0.97, "learning_rate": 5e-4, "batch_size": 32},
         "env_params": {"reward_scaling": 1e-3}}))
    assert tune.load_best_params(tmp_path) == {"gamma": 0.97, "lr": 5e-4, "batch_size": 32}


def test_real_training_trial_in_process(tmp_path: Path) -> None:
    """The default trial (engine.train.run_training) end to end, one tiny trial in-process."""
    import torch

    torch.set_num_threads(1)
    cfg = Config(data_file="test_small.csv", tuning_episodes=1, n_iter=1, seed=0, n_envs=4,
                 learning_starts=50, batch_size=32, hidden_sizes=(16,), replay_ratio=1.0)
    res = tune.run_tuning(cfg, tmp_path, workers=1, space={"gamma": [0.9], "batch_size": [32]},
                          method="grid")
    trial = res.trials[0]
    assert trial["status"] == "ok", trial.get("error")
    assert trial["metrics"]["n_bars"] > 0 and "sharpe_ratio" in trial["metrics"]
    assert res.best_params == {"gamma": 0.9, "batch_size": 32}
    assert not list(tmp_path.glob("**/model.pth"))  # trials write nothing
