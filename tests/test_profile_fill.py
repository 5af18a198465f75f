"""``profile --fill`` (issue 17): the (n_envs, batch) pairs that make the engine fastest on the
machine a run will use, measured with the one measuring loop (``engine.profile.measure``) at the
configuration's replay ratio, kept as profiles by ``dqlctl profile --fill``.

Rates are never checked, only their order and form: the pairs always include the
configuration's own, impossible pairs are skipped with a reason, the records come back fastest
first, each measured one is kept in the home (``dqlctl cost --batch-size B --n-envs N`` then
prices a run at exactly that shape), and the recommendation names the fastest pair with the
caveat that n_envs and batch change what a run learns. Tiny data, a tiny network, a fraction of
a second per pair, one torch thread.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import dqlctl.cli as cli
from dqlctl.context import Context
from engine.cli import main as engine_main
from engine.config import Config
from engine.profile import (
    CPU_PAIRS,
    GPU_PAIRS,
    LEARNING_CAVEAT,
    default_pairs,
    fill,
    fill_lines,
    parse_pairs,
)
from providers.prices.profiles import Profile, load_profiles

NOW = 1_790_000_000.0
TINY = Config(data_file="test_small.csv", agent_type="dql", hidden_sizes=(16,), batch_size=32,
              n_envs=4, device="cpu", torch_threads=1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def dqlctl(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), ctx=Context(home=home, stdout=out, stderr=err,
                                            clock=lambda: NOW))
    return code, out.getvalue(), err.getvalue()


def test_the_default_pairs_include_the_configurations_own_and_follow_the_device() -> None:
    cpu = default_pairs(TINY, "cpu")
    assert cpu[0] == (4, 32) and cpu[1:] == CPU_PAIRS
    gpu = default_pairs(TINY, "cuda")
    assert gpu[0] == (4, 32) and gpu[1:] == GPU_PAIRS
    assert max(n for n, _ in gpu) >= 4096 and max(b for _, b in gpu) >= 16384
    # the own pair once, first, when it is one of the device's
    own = Config(n_envs=64, batch_size=1024)
    assert default_pairs(own, "cpu") == ((64, 1024), (64, 256), (256, 256), (256, 1024))
    assert parse_pairs("64:256, 256:1024") == ((64, 256), (256, 1024))
    for bad in ("64", "0:256", "a:b", ""):
        with pytest.raises(ValueError, match="n_envs:batch"):
            parse_pairs(bad)


def test_fill_measures_each_pair_skips_the_impossible_and_sorts_fastest_first() -> None:
    logged: list[str] = []
    records = fill(TINY, 0.2, pairs=[(16, 64), (4, 99_999), (5000, 8)], log=logged.append)
    measured = [r for r in records if not r.get("skipped")]
    skipped = [r for r in records if r.get("skipped")]
    assert records == measured + skipped                      # the skipped ones last
    assert {(r["n_envs"], r["batch_size"]) for r in measured} == {(4, 32), (16, 64)}
    rates = [r["steps_per_s"] for r in measured]
    assert rates == sorted(rates, reverse=True) and all(s > 0 for s in rates)
    own = next(r for r in measured if r["own"])
    assert (own["n_envs"], own["batch_size"], own["speedup"]) == (4, 32, 1.0)
    other = next(r for r in measured if not r["own"])
    assert other["speedup"] == pytest.approx(other["steps_per_s"] / own["steps_per_s"], abs=0.01)
    for r in measured:      # the configuration's replay ratio and network at every pair
        assert (r["replay_ratio"], r["hidden_sizes"], r["source"]) == (16.0, [16], "profile")
        Profile.from_dict(r)                                  # a well-formed profile record
    reasons = {(r["n_envs"], r["batch_size"]): r["skipped"] for r in skipped}
    assert "exceeds the replay buffer (--buffer_size 50,000)" in reasons[(4, 99_999)]
    assert "5,000 environments exceed the data's" in reasons[(5000, 8)]
    assert any(m.startswith("skipped n_envs 5,000") for m in logged)
    with pytest.raises(ValueError, match="seconds"):
        fill(TINY, 0)


def rec(n_envs: int, batch: int, sps: float, speedup: float | None, own: bool = False
        ) -> dict[str, Any]:
    return {"n_envs": n_envs, "batch_size": batch, "steps_per_s": sps, "updates_per_s": 10.0,
            "speedup": speedup, "own": own, "device": "cuda", "device_name": "NVIDIA H100"}


def test_the_recommendation_names_the_fastest_pair_and_the_learning_caveat() -> None:
    records = [rec(1024, 4096, 90_000.0, 3.0), rec(256, 1024, 30_000.0, 1.0, own=True),
               {"n_envs": 8192, "batch_size": 32768, "skipped": "failed: CUDA out of memory"}]
    lines = fill_lines(records)
    assert lines[0].endswith("3.00 x this configuration")
    assert lines[1].endswith(", this configuration")
    assert lines[2].endswith("skipped: failed: CUDA out of memory")
    assert lines[3] == ("fastest: --n_envs 1024 --batch_size 4096 (3.00 x this configuration) "
                        "on NVIDIA H100 (cuda)")
    assert lines[4] == LEARNING_CAVEAT
    assert "shorter segments" in LEARNING_CAVEAT and "fewer, larger updates" in LEARNING_CAVEAT
    assert "dqlctl sweep" in LEARNING_CAVEAT
    dashed = fill_lines(records, flag=lambda name: "--" + name.replace("_", "-"))
    assert dashed[3].startswith("fastest: --n-envs 1024 --batch-size 4096 (")
    own_best = fill_lines([rec(256, 1024, 30_000.0, 1.0, own=True)])
    assert "(1.00 x this configuration: it is already the fastest)" in own_best[1]
    lost = fill_lines([rec(1024, 4096, 9.0, None),
                       {"n_envs": 4, "batch_size": 9, "skipped": "why"}])
    assert "speed-up unknown: this configuration could not run" in lost[2]
    assert fill_lines([{"n_envs": 4, "batch_size": 9, "skipped": "why"}])[-1] == (
        "fastest: none: no pair could run here")


def test_dqlctl_profile_fill_keeps_every_pair_and_cost_finds_it(tmp_path: Path) -> None:
    """The agent's own network (dql 128-128, as ``dqlctl cost`` shapes a run), two pairs."""
    code, out, err = dqlctl(tmp_path, "profile", "--fill", "--agent-type", "dql",
                            "--batch-size", "32", "--n-envs", "4", "--pairs", "16:64,4:99999",
                            "--data", "test_small.csv", "--device", "cpu", "--threads", "1",
                            "--seconds", "0.2", "--json")
    assert code == 0, err
    records = json.loads(out)
    measured = [r for r in records if not r.get("skipped")]
    assert [(r["n_envs"], r["batch_size"]) for r in records[len(measured):]] == [(4, 99_999)]
    assert sorted((r["n_envs"], r["batch_size"]) for r in measured) == [(4, 32), (16, 64)]
    kept = {(p.n_envs, p.batch_size): p for p in load_profiles(tmp_path)
            if p.where == "dqlctl profile --fill"}
    assert set(kept) == {(4, 32), (16, 64)}
    for r in measured:
        assert kept[(r["n_envs"], r["batch_size"])].steps_per_s == r["steps_per_s"]
    code, out, err = dqlctl(tmp_path, "cost", "--gpu", "none", "--provider", "aws", "--region",
                            "us-east-1", "--episodes", "10", "--data", "test_small.csv",
                            "--agent-type", "dql", "--batch-size", "64", "--n-envs", "16",
                            "--json", "--limit", "1")
    assert code == 0, err
    d = json.loads(out)["offers"][0]["extra"]["duration"]
    assert d["basis"] == "cpu-other" and d["steps_per_s"] == kept[(16, 64)].steps_per_s


def test_dqlctl_profile_fill_prints_the_pairs_the_recommendation_and_the_caveat(
        tmp_path: Path) -> None:
    code, out, err = dqlctl(tmp_path, "profile", "--fill", "--agent-type", "dql",
                            "--hidden-sizes", "16", "--batch-size", "32", "--n-envs", "4",
                            "--pairs", "8:32", "--data", "test_small.csv", "--device", "cpu",
                            "--threads", "1", "--seconds", "0.2")
    assert code == 0, err
    assert "measuring n_envs 8, batch 32 ..." in err
    lines = out.splitlines()
    fastest = next(line for line in lines if line.startswith("fastest: "))
    rates = {}
    for line in lines[:2]:
        pair, rest = line.split(": ", 1)
        rates[pair] = float(rest.split(" env steps/s")[0].replace(",", ""))
    best = max(rates, key=lambda k: rates[k])
    n, b = (int(w.strip(",").replace(",", "")) for w in best.split()[1::2])
    assert fastest.startswith(f"fastest: --n-envs {n} --batch-size {b} (")
    assert LEARNING_CAVEAT in lines
    assert lines[-1].startswith("kept 2 profiles in ") and "dqlctl cost" in lines[-1]


@pytest.mark.parametrize("argv, says", [
    (("--fill", "--list"), "--list"),
    (("--fill", "--seconds", "0"), "--seconds"),
    (("--fill", "--pairs", "64"), "--pairs"),
    (("--pairs", "64:256"), "--pairs goes with --fill"),
])
def test_dqlctl_profile_fill_bad_input_is_one_line_and_exit_2(
        tmp_path: Path, argv: tuple[str, ...], says: str) -> None:
    code, out, err = dqlctl(tmp_path, "profile", *argv)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1 and not out


@pytest.mark.parametrize("argv, says", [
    (("--fill", "--seconds", "0"), "--seconds"),
    (("--fill", "--pairs", "0:64"), "--pairs"),
    (("--pairs", "64:256"), "--pairs goes with --fill"),
])
def test_dql_trading_profile_fill_bad_input_is_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str) -> None:
    assert engine_main(["profile", "--data_file", "test_small.csv", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_dql_trading_profile_fill_prints_json_records_and_the_recommendation(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = engine_main(["profile", "--fill", "--data_file", "test_small.csv", "--agent_type",
                        "dql", "--hidden_sizes", "16", "--batch_size", "32", "--n_envs", "4",
                        "--device", "cpu", "--torch_threads", "1", "--seconds", "0.2",
                        "--pairs", "8:32,4:99999"])
    out, err = capsys.readouterr()
    assert code == 0, err
    records = json.loads(out)
    assert records[-1]["skipped"] and records[0]["steps_per_s"] >= records[1]["steps_per_s"]
    first = records[0]
    assert (f"fastest: --n_envs {first['n_envs']} --batch_size {first['batch_size']} ("
            in err) and LEARNING_CAVEAT in err
