"""engine.checkpoint and preemption: atomic checkpoints, corrupt ones skipped, and a run killed
mid-way (SIGKILL, or SIGTERM mid-episode) that resumes to exactly the uninterrupted result."""

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

from engine import checkpoint as ckpt
from engine.cli import main
from engine.env import VecTradingEnv
from engine.events import read_events

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


# -- unit ----------------------------------------------------------------------------------------

def test_atomic_save_keeps_the_newest_two(tmp_path: Path) -> None:
    for steps in (10, 20, 30):
        ckpt.save({"x": torch.tensor([steps])}, tmp_path, steps)
    (tmp_path / ".ckpt-000000000040.pt.abc.tmp").write_bytes(b"half a file")  # a crash mid-write
    ckpt.save({"x": torch.tensor([40])}, tmp_path, 40)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "ckpt-000000000040.pt", "ckpt-000000000030.pt"]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning(tmp_path: Path) -> None:
    ckpt.save({"x": torch.tensor([1])}, tmp_path, 100)
    newest = ckpt.save({"x": torch.tensor([2])}, tmp_path, 200)
    newest.write_bytes(newest.read_bytes()[:50])
    warnings: list[str] = []
    found = ckpt.load_latest(tmp_path, warnings.append)
    assert found is not None
    state, path = found
    assert path.name == "ckpt-000000000100.pt" and state["x"].item() == 1
    assert len(warnings) == 1 and "ckpt-000000000200.pt" in warnings[0]
    assert ckpt.load_latest(tmp_path / "none", warnings.append) is None


def test_rng_and_environment_state_round_trip() -> None:
    rng = np.random.default_rng(0)
    env = VecTradingEnv(rng.standard_normal((200, 3)).astype(np.float32),
                        100 * np.exp(np.cumsum(rng.normal(0, 0.01, 200))), n_envs=3, window=5,
                        episode_length=20, seed=4)
    env.reset()
    for _ in range(7):
        env.step(torch.tensor([0, 1, 2]))
    torch.manual_seed(1)
    np.random.seed(1)
    saved_env, saved_rng = ckpt.env_state(env), ckpt.rng_state()
    saved = torch.load(_roundtrip(saved_env | {"rng_all": saved_rng}), weights_only=True)

    def future() -> list[Any]:
        steps = [env.step(torch.tensor([2, 0, 1]))[0] for _ in range(40)]
        return [*steps, torch.rand(3), np.random.rand(3), int(env.bars()[0])]

    expected = future()
    ckpt.load_env_state(env, saved)
    ckpt.set_rng_state(saved["rng_all"])
    again = future()
    for a, b in zip(expected, again, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def _roundtrip(obj: Any) -> Any:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


# -- kill and resume -------------------------------------------------------------------------------

def _write_market(path: Path, n: int = 700, seed: int = 11) -> Path:
    rng = np.random.default_rng(seed)
    r = np.zeros(n)
    eps = rng.normal(0, 0.01, n)
    for t in range(1, n):
        r[t] = -0.4 * r[t - 1] + eps[t]
    close = 100 * np.exp(np.cumsum(r))
    days = np.datetime64("2012-01-02") + np.arange(n).astype("timedelta64[D]")
    lines = ["date,open,high,low,close,volume"]
    lines += [f"{d},{c:.6f},{c * 1.002:.6f},{c * 0.998:.6f},{c:.6f},1000"
              for d, c in zip(days, close, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _args(data: Path, results: Path, name: str) -> list[str]:
    return ["train", "--data_file", str(data), "--results_dir", str(results),
            "--experiment_name", name, "--agent_type", "custom", "--prioritized",
            "--episodes", "8", "--checkpoint_every", "2", "--seed", "7", "--torch_threads", "1",
            "--n_envs", "4", "--hidden_sizes", "32,32", "--batch_size", "64",
            "--replay_ratio", "4", "--learning_starts", "200"]


def _final(out: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], Any]:
    """(model weights, last checkpoint's online weights, history without timings, val metrics)."""
    model = torch.load(out / "model.pth", weights_only=True)["state_dict"]
    last = ckpt.load(ckpt.list_checkpoints(out / "checkpoints")[0])
    metrics = json.loads((out / "train_metrics.json").read_text())
    history = [{k: v for k, v in h.items() if k != "steps_per_s"} for h in metrics["history"]]
    return model, last["agent"]["online"], history, metrics["val_metrics"]


def _assert_same(a: Path, b: Path) -> None:
    ma, oa, ha, va = _final(a)
    mb, ob, hb, vb = _final(b)
    assert ha == hb
    assert va == vb
    for x, y in ((ma, mb), (oa, ob)):
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The uninterrupted run (in this process) and its data file."""
    root = tmp_path_factory.mktemp("ref")
    data = _write_market(root / "market.csv")
    assert main(_args(data, root, "reference")) == 0
    return data, root / "reference"


def _start(data: Path, results: Path, name: str, held_after: int,
           *extra: str) -> subprocess.Popen[bytes]:
    """The engine, held mid-way through the episode after ``held_after`` until it gets a stop
    signal (tests/held_engine.py): the signal always lands before the run can finish."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "held_engine.py"),
                             str(held_after), "-", *_args(data, results, name), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _wait_for_event(proc: subprocess.Popen[bytes], events: Path, kind: str,
                    timeout: float = 120.0, count: int = 1) -> None:
    """Until ``events`` holds ``count`` events of ``kind``; fails if the engine exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(e["event"] == kind for e in read_events(events)) >= count:
            return
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"engine exited ({proc.returncode}) before a {kind} event: {err}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"no {kind} event in {timeout}s")


def _killed_and_resumed(data: Path, results: Path, name: str, held_after: int,
                        checkpoints: int, *extra: str) -> None:
    """The engine with ``extra`` settings, SIGKILLed (held mid-way through the episode after
    ``held_after``) once it has written ``checkpoints`` checkpoints, then resumed to its end in
    this process."""
    proc = _start(data, results, name, held_after, *extra)
    events = results / name / "events.jsonl"
    _wait_for_event(proc, events, "checkpoint", count=checkpoints)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert "finished" not in [e["event"] for e in read_events(events)]
    assert main([*_args(data, results, name), *extra, "--resume"]) == 0


def test_sigkill_then_resume_equals_the_uninterrupted_run(reference: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    data, ref = reference
    proc = _start(data, tmp_path, "victim", held_after=2)
    events = tmp_path / "victim" / "events.jsonl"
    _wait_for_event(proc, events, "checkpoint")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    seen = [e["event"] for e in read_events(events)]
    assert "finished" not in seen and seen.count("episode") < 8, "killed too late to test"
    assert main([*_args(data, tmp_path, "victim"), "--resume"]) == 0
    _assert_same(ref, tmp_path / "victim")


def test_a_weight_averaged_run_killed_and_resumed_equals_the_uninterrupted_one(
        reference: tuple[Path, Path], tmp_path: Path) -> None:
    """--weight_average keeps a running mean across checkpoints: a run SIGKILLed after its
    averaging began resumes to the same model as one never stopped."""
    data, _ = reference
    avg = ("--weight_average", "--test")
    assert main([*_args(data, tmp_path, "whole"), *avg]) == 0
    # averaging begins at episode 5 of 8; held in episode 7, after the checkpoint of episode
    # 6 (the third), which carries a mean of two
    _killed_and_resumed(data, tmp_path, "victim", 6, 3, *avg)
    _assert_same(tmp_path / "whole", tmp_path / "victim")
    whole, _, _, _ = _final(tmp_path / "whole")
    ref, _, _, _ = _final(reference[1])
    assert any(not torch.equal(whole[k], ref[k]) for k in whole)   # not the best episode's
    # no episode was chosen: the deflated Sharpe's trials are the 4 validation folds alone
    test = json.loads((tmp_path / "whole" / "test_metrics.json").read_text())
    assert test["n_trials"] == 4


def test_an_augmented_run_killed_and_resumed_equals_the_uninterrupted_one(
        reference: tuple[Path, Path], tmp_path: Path) -> None:
    """--augment_filter / --augment_stretch train on copies of the market: a resumed run
    rebuilds the same copies and their environments continue where they were."""
    data, _ = reference
    aug = ("--augment_filter", "5", "--augment_stretch", "0.3")
    assert main([*_args(data, tmp_path, "whole"), *aug]) == 0
    _killed_and_resumed(data, tmp_path, "victim", 3, 1, *aug)
    _assert_same(tmp_path / "whole", tmp_path / "victim")
    whole, _, _, _ = _final(tmp_path / "whole")
    ref, _, _, _ = _final(reference[1])
    assert any(not torch.equal(whole[k], ref[k]) for k in whole)   # the copies were trained on


def test_sigterm_mid_episode_checkpoints_exits_143_and_resumes_exactly(
        reference: tuple[Path, Path], tmp_path: Path) -> None:
    data, ref = reference
    proc = _start(data, tmp_path, "spot", held_after=1)
    events = tmp_path / "spot" / "events.jsonl"
    _wait_for_event(proc, events, "episode")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    evs = list(read_events(events))
    kinds = [e["event"] for e in evs]
    assert kinds[-2:] == ["checkpoint", "failed"]
    assert "--resume" in evs[-1]["reason"] and "SIGTERM" in evs[-1]["reason"]
    assert "finished" not in kinds
    assert main([*_args(data, tmp_path, "spot"), "--resume"]) == 0
    assert [e["event"] for e in read_events(events)][-1] == "finished"
    _assert_same(ref, tmp_path / "spot")


def test_sigusr1_checkpoints_mid_episode_and_training_goes_on_unchanged(
        reference: tuple[Path, Path], tmp_path: Path) -> None:
    """A spot VM's rebalance recommendation (providers/local/supervisor.py): a checkpoint at
    the end of the current step, then on to the same result as an unasked run."""
    data, ref = reference
    release = tmp_path / "release"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "held_engine.py"), "1",
                             str(release), *_args(data, tmp_path, "asked")],
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not Path(f"{release}.held").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the engine never held"
        time.sleep(0.005)
    proc.send_signal(signal.SIGUSR1)    # mid-episode 2: handled, not fatal; its handler runs
    release.touch()                     # at the engine's next bytecode, long before the end
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    evs = list(read_events(tmp_path / "asked" / "events.jsonl"))
    marks = [(e["event"], e.get("episode")) for e in evs if e["event"] in ("episode",
                                                                          "checkpoint")]
    assert marks[:3] == [("episode", 1), ("checkpoint", 1), ("episode", 2)]  # the asked one
    _assert_same(ref, tmp_path / "asked")


def test_resume_with_other_settings_is_refused(reference: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data, ref = reference
    args = _args(data, ref.parent, "reference")
    args[args.index("--episodes") + 1] = "12"
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "episodes=8" in err[0] and "Traceback" not in err[0]


def test_results_and_resume_on_object_storage(aws_env: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--results_dir s3://...: checkpoints go up as they are written, everything else at the
    end, and --resume on a machine with an empty staging folder continues from the bucket."""
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="runs")
    s3.upload_file(str(_write_market(tmp_path / "m.csv", n=400)), "runs", "data/market.csv")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DQL_STAGING_DIR", str(tmp_path / "machine1"))
    args = _args(Path("s3://runs/data/market.csv"), Path("unused"), "cloud")
    args[args.index("--results_dir") + 1] = "s3://runs/results"
    args[args.index("--data_file") + 1] = "s3://runs/data/market.csv"
    args[args.index("--episodes") + 1] = "4"
    assert main(args) == 0

    def keys() -> set[str]:
        listing = s3.list_objects_v2(Bucket="runs", Prefix="results/cloud/")
        return {o["Key"][len("results/cloud/"):] for o in listing.get("Contents", [])}

    uploaded = keys()
    assert {"events.jsonl", "model.pth", "train_metrics.json", "config.json"} <= uploaded
    assert len([k for k in uploaded if k.startswith("checkpoints/ckpt-")]) == 2
    first_run = s3.get_object(Bucket="runs", Key="results/cloud/events.jsonl")["Body"].read()

    monkeypatch.setenv("DQL_STAGING_DIR", str(tmp_path / "machine2"))  # a fresh machine
    assert main([*args, "--resume"]) == 0
    events = s3.get_object(Bucket="runs", Key="results/cloud/events.jsonl")["Body"].read()
    assert events.startswith(first_run)  # the earlier events are kept
    later = [json.loads(line) for line in events[len(first_run):].splitlines()]
    assert [e["event"] for e in later if e["event"] in ("episode", "finished")] == ["finished"]
