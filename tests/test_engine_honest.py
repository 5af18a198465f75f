"""Issue 15: results never claim luck as skill, and the agent still finds a real pattern.

- engine.stats: the stationary bootstrap, the Sharpe-difference interval, the (deflated)
  probabilistic Sharpe ratio and the verdict's words;
- a no-signal market (a random walk) shows no edge and the report says "not distinguishable";
- a learnable market (negatively autocorrelated returns) beats buy-and-hold beyond the noise;
- multi-market runs and ensembles resume bit for bit after SIGTERM;
- ``dql-trading benchmark`` aggregates markets x seeds into one report.

Tiny networks and few episodes: seconds each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine import stats
from engine.cli import main
from engine.events import read_events

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)

FAST = ["--agent_type", "custom", "--hidden_sizes", "32,32", "--torch_threads", "1",
        "--n_envs", "8", "--batch_size", "64", "--replay_ratio", "8", "--learning_starts", "200"]


def _write(path: Path, close: np.ndarray, bar: str = "D") -> Path:
    """Bars of ``close``, one a day (``bar`` "D") or one an hour ("h")."""
    times = np.datetime64("2010-01-01T00:00") + np.arange(len(close)).astype(f"timedelta64[{bar}]")
    stamps = [str(t)[:10] if bar == "D" else str(t).replace("T", " ") for t in times]
    lines = ["date,open,high,low,close,volume"]
    lines += [f"{d},{c:.6f},{c * 1.002:.6f},{c * 0.998:.6f},{c:.6f},1000"
              for d, c in zip(stamps, close, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def random_walk(path: Path, n: int = 3000, seed: int = 3, bar: str = "D") -> Path:
    rng = np.random.default_rng(seed)
    return _write(path, 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))), bar)


def mean_reverting(path: Path, n: int = 3000, seed: int = 3, phi: float = -0.4) -> Path:
    rng = np.random.default_rng(seed)
    eps = rng.normal(0, 0.01, n)
    r = np.zeros(n)
    for t in range(1, n):
        r[t] = phi * r[t - 1] + eps[t]
    return _write(path, 100 * np.exp(np.cumsum(r)))


# -- statistics -----------------------------------------------------------------------------------

def test_stationary_bootstrap_keeps_blocks_and_covers_every_bar() -> None:
    rng = np.random.default_rng(0)
    idx = stats.stationary_bootstrap_indices(200, 500, 10.0, rng)
    assert idx.shape == (500, 200) and idx.min() >= 0 and idx.max() < 200
    steps = np.diff(idx, axis=1)
    continued = np.mean((steps == 1) | (steps == -199))
    assert 0.85 < continued < 0.95  # a new block with probability 1/10
    assert len(np.unique(idx)) == 200


def test_sharpe_difference_interval_contains_zero_without_an_edge_and_not_with_one() -> None:
    rng = np.random.default_rng(1)
    bench = rng.normal(0.0003, 0.01, 750)
    same = rng.normal(0.0003, 0.01, 750)
    ci = stats.sharpe_diff_ci(same, bench, 252.0)
    assert ci["low"] < 0 < ci["high"]
    assert stats.NOT_DISTINGUISHABLE in stats.verdict_text(ci, n_seeds=1)
    assert "single seed" in stats.verdict_text(ci, n_seeds=1)
    better = bench + np.abs(rng.normal(0.002, 0.001, 750))
    ci2 = stats.sharpe_diff_ci(better, bench, 252.0)
    assert ci2["low"] > 0 and "beat buy-and-hold" in stats.verdict_text(ci2, n_seeds=3)
    # the validation-test gap, said the way round it is
    assert stats.verdict_text(ci, n_seeds=3, val_test_gap=0.8).endswith(
        "Validation Sharpe exceeded test Sharpe by 0.80.")
    assert stats.verdict_text(ci, n_seeds=3, val_test_gap=-0.47).endswith(
        "Validation Sharpe fell short of test Sharpe by 0.47.")
    # Several markets: the mean difference.
    ci3 = stats.sharpe_diff_ci([same, better], [bench, bench], [252.0, 252.0])
    assert ci3["diff"] == pytest.approx((ci["diff"] + ci2["diff"]) / 2)


def test_deflated_sharpe_falls_with_the_number_of_trials() -> None:
    r = np.random.default_rng(2).normal(0.0008, 0.01, 500)  # per-bar Sharpe ~0.08
    one = stats.deflated_sharpe(r, 1)
    many = stats.deflated_sharpe(r, 200)
    assert one["dsr"] == pytest.approx(stats.probabilistic_sharpe(r))
    assert many["sr0"] > 0 and many["dsr"] < one["dsr"]
    assert stats.expected_max_sharpe(1, 0.01) == 0.0
    assert stats.seed_summary([1.0]) == {"n": 1, "mean": 1.0, "std": 0.0, "min": 1.0,
                                         "max": 1.0}


# -- no signal, and a real one -----------------------------------------------------------------

def test_a_random_walk_shows_no_edge_and_the_report_says_so(tmp_path: Path) -> None:
    data = random_walk(tmp_path / "rw.csv")
    args = ["full-workflow", "--skip_tuning", "--data_file", str(data), "--results_dir",
            str(tmp_path), "--experiment_name", "rw", *FAST, "--episodes", "4",
            "--ensemble", "2", "--val_folds", "3", "--transaction_cost", "0", "--slippage", "0",
            # an agent that trades on the noise (custom's hold margin keeps a 4-episode agent
            # fully long, the same returns as buy-and-hold: no edge, but no test of the CI)
            "--hold_margin", "0"]
    assert main(args) == 0
    out = tmp_path / "rw"
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["n_seeds"] == 2 and test["seed_sharpe_std"] >= 0
    assert abs(test["seed_sharpe_mean"]) < 1.5
    assert test["sharpe_vs_bh_ci_low"] < 0 < test["sharpe_vs_bh_ci_high"]
    assert stats.NOT_DISTINGUISHABLE in test["verdict"]
    assert test["n_trials"] == 4 * 3 and test["deflated_sharpe"] is not None
    page = (out / "report.html").read_text()
    assert stats.NOT_DISTINGUISHABLE in page and "Best of" not in page
    finished = [e for e in read_events(out / "events.jsonl") if e["event"] == "finished"][-1]
    assert finished["metrics"]["verdict"] == test["verdict"]
    from engine.train import MEMBER_SEED_STRIDE, member_seeds

    second = 42 + MEMBER_SEED_STRIDE  # the members' seeds are far apart (next test)
    assert {p.name for p in (out / "members").iterdir()} == {"seed42", f"seed{second}"}
    assert (out / "members" / "seed42" / "model.pth").exists()
    trained = json.loads((out / "train_metrics.json").read_text())
    assert [m["seed"] for m in trained["members"]] == member_seeds(42, 2) == [42, second]


def test_ensembles_of_neighbouring_seeds_share_no_member() -> None:
    """``benchmark --seeds 3 --ensemble 3`` (or a sweep's seeds 1, 2, 3) runs seeds 1, 2, 3:
    their ensembles must be nine agents, or the seeds' spread (and the verdict's CI) would
    understate the noise; an ensemble of one is the plain run of its seed."""
    from engine.config import SEED_MAX
    from engine.train import member_seeds

    groups = [set(member_seeds(s, 3)) for s in (1, 2, 3)]
    assert len(set().union(*groups)) == 9
    assert member_seeds(5, 1) == [5]
    assert max(member_seeds(SEED_MAX, 32)) < 2**32  # numpy's seeding takes every member


def test_a_learnable_market_beats_buy_and_hold_clearly(tmp_path: Path) -> None:
    data = mean_reverting(tmp_path / "ar.csv")
    args = ["train", "--test", "--data_file", str(data), "--results_dir", str(tmp_path),
            "--experiment_name", "ar", *FAST, "--episodes", "16", "--val_folds", "3",
            "--transaction_cost", "0", "--slippage", "0"]
    assert main(args) == 0
    test = json.loads((tmp_path / "ar" / "test_metrics.json").read_text())
    assert test["sharpe_vs_bh_ci_low"] > 0, test["verdict"]
    # custom is long only by default: it earns the rebounds, not the falls (long/short: > 2)
    assert test["sharpe_ratio"] > 1.0 and "beat buy-and-hold" in test["verdict"]
    assert "single seed" in test["verdict"]


# -- multi-market and ensemble: outputs and bit-exact resume ---------------------------------------

def _markets(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    mean_reverting(folder / "AAA.csv", n=700, seed=11)
    random_walk(folder / "BBB.csv", n=600, seed=12)
    return folder


def _multi_args(data: Path, results: Path, name: str) -> list[str]:
    return ["train", "--test", "--data_file", str(data), "--results_dir", str(results),
            "--experiment_name", name, "--agent_type", "custom", "--episodes", "4",
            "--checkpoint_every", "1", "--seed", "7", "--torch_threads", "1", "--n_envs", "4",
            "--hidden_sizes", "16,16", "--batch_size", "32", "--replay_ratio", "4",
            "--learning_starts", "100", "--ensemble", "2", "--val_folds", "2",
            "--obs_noise", "0.1", "--dropout", "0.1", "--weight_decay", "0.001",
            "--position_levels", "2", "--excess_reward", "--prioritized"]


def _final(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    model = torch.load(out / "model.pth", weights_only=True)["state_dict"]
    metrics = json.loads((out / "train_metrics.json").read_text())
    history = [{k: v for k, v in h.items() if k != "steps_per_s"} for h in metrics["history"]]
    test = json.loads((out / "test_metrics.json").read_text())
    return model, history, test


def test_multi_market_ensemble_outputs_and_sigterm_resume_is_bit_exact(tmp_path: Path) -> None:
    data = _markets(tmp_path / "markets")
    assert main(_multi_args(data, tmp_path, "ref")) == 0
    ref = tmp_path / "ref"
    test = json.loads((ref / "test_metrics.json").read_text())
    assert test["n_markets"] == 2 and test["n_seeds"] == 2
    assert [m["market"] for m in test["markets"]] == ["AAA", "BBB"]
    rows = (ref / "markets.csv").read_text().splitlines()
    assert rows[0].startswith("market,agent_sharpe,bh_sharpe") and len(rows) == 3
    assert {p.name for p in (ref / "markets").iterdir()} == {"AAA", "BBB"}
    from engine.report import build_report

    page = build_report(ref).read_text()
    assert "Per market" in page and "Skill or luck" in page and "AAA" in page

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    victim = tmp_path / "victim"
    proc = subprocess.Popen([sys.executable, "-m", "engine", *_multi_args(data, tmp_path,
                                                                          "victim")],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # stop inside the second member's training
        if sum(e["event"] == "episode" for e in read_events(victim / "events.jsonl")) >= 5:
            break
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    kinds = [e["event"] for e in read_events(victim / "events.jsonl")]
    assert "finished" not in kinds and kinds.count("episode") < 8, "stopped too late to test"
    assert main([*_multi_args(data, tmp_path, "victim"), "--resume"]) == 0
    ma, ha, ta = _final(ref)
    mb, hb, tb = _final(victim)
    assert ha == hb
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert ta["sharpe_ratio"] == tb["sharpe_ratio"] and ta["verdict"] == tb["verdict"]


# -- benchmark ----------------------------------------------------------------------------------

def test_benchmark_aggregates_markets_and_seeds(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from engine.aggregate import aggregate, records_from_run

    data = _markets(tmp_path / "markets")
    args = ["benchmark", "--data_dir", str(data), "--seeds", "2", "--workers", "2",
            "--results_dir", str(tmp_path), "--experiment_name", "bench", "--agent_type",
            "custom", "--episodes", "2", "--hidden_sizes", "16", "--n_envs", "4",
            "--batch_size", "32", "--learning_starts", "100"]
    assert main(args) == 0
    out = tmp_path / "bench"
    doc = json.loads((out / "benchmark.json").read_text())
    assert doc["n_markets"] == 2 and doc["n_seeds"] == 2 and doc["n_runs"] == 4
    assert [m["market"] for m in doc["markets"]] == ["AAA", "BBB"]
    assert doc["ci_low"] <= doc["sharpe_vs_bh"] <= doc["ci_high"]
    assert "of 2 markets" in doc["verdict"]
    assert (out / "benchmark.csv").read_text().startswith("market,n_seeds,agent_sharpe_mean")
    assert "Per market" in (out / "benchmark.html").read_text()
    # The aggregation is callable on its own, and a rerun skips finished runs.
    runs = sorted((out / "runs").glob("*/seed*"))
    assert len(runs) == 4
    again = aggregate([r for run in runs for r in records_from_run(run)])
    assert again["sharpe_vs_bh"] == pytest.approx(doc["sharpe_vs_bh"])
    capsys.readouterr()
    assert main(args) == 0
    assert "(4 already done)" in capsys.readouterr().out


def test_pooled_benchmark_pools_markets_of_one_bar_interval_only(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--pooled trains one agent over the daily markets; an hourly market is never pooled with
    them (it trains alone); every market still gets its own row."""
    from engine.benchmark import bar_interval

    data = _markets(tmp_path / "markets")
    random_walk(tmp_path / "markets" / "FXH.csv", n=700, seed=13, bar="h")
    assert [bar_interval(str(data / f)) for f in ("AAA.csv", "FXH.csv")] == ["1d", "1h"]
    args = ["benchmark", "--data_dir", str(data), "--seeds", "1", "--workers", "2", "--pooled",
            "--results_dir", str(tmp_path), "--experiment_name", "pool", "--agent_type",
            "custom", "--episodes", "2", "--hidden_sizes", "16", "--n_envs", "4",
            "--batch_size", "32", "--learning_starts", "100"]
    assert main(args) == 0
    out = tmp_path / "pool"
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["FXH", "pooled-1d"]
    assert sorted(p.name for p in (out / "groups" / "1d").iterdir()) == ["AAA.csv", "BBB.csv"]
    pooled = json.loads((out / "runs" / "pooled-1d" / "seed42" / "config.json").read_text())
    assert pooled["data_file"] == str(out / "groups" / "1d")
    doc = json.loads((out / "benchmark.json").read_text())
    assert [m["market"] for m in doc["markets"]] == ["AAA", "BBB", "FXH"]
    capsys.readouterr()


def test_a_storage_prefix_names_several_markets(aws_env: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="mkts")
    folder = _markets(tmp_path / "markets")
    for name in ("AAA", "BBB"):
        s3.upload_file(str(folder / f"{name}.csv"), "mkts", f"daily/{name}.csv")
    s3.put_object(Bucket="mkts", Key="daily/README.txt", Body=b"not a market")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["train", "--test", "--data_file", "s3://mkts/daily/", "--results_dir",
            str(tmp_path), "--experiment_name", "s3m", "--agent_type", "custom",
            "--episodes", "1", "--hidden_sizes", "16", "--n_envs", "2", "--batch_size", "32",
            "--learning_starts", "50", "--torch_threads", "1"]
    assert main(args) == 0
    test = json.loads((tmp_path / "s3m" / "test_metrics.json").read_text())
    assert [m["market"] for m in test["markets"]] == ["AAA", "BBB"]
