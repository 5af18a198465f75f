"""Tune on one machine, train on another (issue 17): the engine's ``--params_file`` and dqlctl's
``launch --command tune`` / ``launch --params-from``.

Local provider end to end (a ``tune`` run, then a ``train --params-from <its id>`` run that
trains with exactly the tuned settings), the refusals (a run that never tuned, a cloud run
whose results stay on its VM, ``--episodes`` on tune) with nothing launched, and the engine's
reader on a path, an S3 URI and bad files (one line naming the file, exit 2, nothing written).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from dqlctl import cli
from dqlctl.context import Context
from engine.cli import main as engine_main

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
FAST = ["--n_envs", "4"]
TRIALS = ["--n_iter", "2", "--tuning_episodes", "1"]
PARAMS = {"gamma": 0.93, "lr": 2e-4, "eps_fraction": 0.3, "batch_size": 32,
          "buffer_size": 10_000}


def dqlctl(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DQLCTL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dqlctl", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def in_process(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), ctx=Context(home=home, stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def run_count(home: Path) -> int:
    code, out, _ = in_process(home, "ps", "--all", "--json")
    assert code == 0
    return len(json.loads(out))


# -- dqlctl, local provider ------------------------------------------------------------------------

def test_tune_run_then_train_with_its_params(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = dqlctl(home, "launch", "--command", "tune", "--data", "test_small.csv",
                  "--agent-type", "dql", "--name", "tuner", "--follow", "--json", "--",
                  *TRIALS, *FAST)
    assert proc.returncode == 0, proc.stderr
    tuner = json.loads(proc.stdout)
    assert tuner["state"] == "SUCCEEDED"
    best = json.loads((Path(tuner["results_uri"]) / "best_params.json").read_text())
    started = json.loads((Path(tuner["results_uri"]) / "events.jsonl").read_text()
                         .splitlines()[0])
    assert started["command"] == "tune"

    # the dry run names the file and the engine's --params_file; it writes nothing
    code, out, err = in_process(home, "launch", "--command", "train", "--params-from",
                                tuner["id"], "--data", "test_small.csv", "--dry-run")
    assert code == 0, err
    assert f"--params_file {home}/runs/dry-run/results/" in out and "params_from.json" in out
    assert f"{tuner['results_uri']}/best_params.json, copied to the run's results" in out
    assert not (home / "runs" / "dry-run").exists()

    proc = dqlctl(home, "launch", "--command", "train", "--params-from", tuner["id"],
                  "--data", "test_small.csv", "--agent-type", "dql", "--episodes", "2",
                  "--name", "trainer", "--follow", "--json", "--", *FAST)
    assert proc.returncode == 0, proc.stderr
    trainer = json.loads(proc.stdout)
    out_dir = Path(trainer["results_uri"])
    config = json.loads((out_dir / "config.json").read_text())
    assert {k: config[k] for k in best["params"]} == best["params"]     # trained with them
    assert config["tuned_params"] == {**best["params"],
                                      "train_transaction_cost": best["train_transaction_cost"]}
    copy = json.loads((out_dir / "params_from.json").read_text())
    assert copy["copied_from_run"] == tuner["id"] and copy["params"] == best["params"]
    assert config["params_file"] == str(out_dir / "params_from.json")
    events = [json.loads(x) for x in (out_dir / "events.jsonl").read_text().splitlines()]
    assert events[0]["params_from"] == str(out_dir / "params_from.json")
    assert not any(e["event"] == "trial" for e in events)
    kept = json.loads((out_dir / "best_params.json").read_text())   # the report shows it
    assert kept["params_from"] == str(out_dir / "params_from.json")


def test_params_from_a_run_that_never_tuned_launches_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, out, err = in_process(home, "launch", "--command", "train", "--data", "test_small.csv",
                                "--agent-type", "dql", "--episodes", "1", "--name", "plain",
                                "--follow", "--json", "--", *FAST)
    assert code == 0, err
    plain = json.loads(out)
    before = run_count(home)
    code, out, err = in_process(home, "launch", "--command", "train", "--params-from",
                                plain["id"], "--data", "test_small.csv")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"run {plain['id']} (plain, SUCCEEDED) has not finished tuning" in lines[0]
    assert run_count(home) == before
    code, _, err = in_process(home, "launch", "--params-from", "nosuchrun", "--dry-run")
    assert code == 2 and "no such run, file or URI" in err


@pytest.mark.parametrize("argv,needle", [
    (["--command", "tune", "--episodes", "5"], "--episodes: the engine's tune trains no final"),
    (["--command", "tune", "--params-from", "{file}"], "the engine's tune takes no tuned"),
    (["--tune", "--params-from", "{file}"], "drop --tune"),
    (["--provider", "aws", "--command", "train", "--params-from", "{file}"],
     "on aws the VM reads the parameters from the run's bucket"),
    (["--command", "train", "--params-from", "{bad}"], "unknown setting 'gammma'"),
])
def test_launch_refusals(tmp_path: Path, argv: list[str], needle: str) -> None:
    home = tmp_path / "home"
    good, bad = tmp_path / "best_params.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"params": PARAMS}))
    bad.write_text(json.dumps({"params": {"gammma": 0.9}}))
    argv = [a.format(file=good, bad=bad) for a in argv]
    code, _, err = in_process(home, "launch", "--data", "test_small.csv", *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert run_count(home) == 0


def test_a_path_params_from_on_a_bucket_results_dir_is_copied_there(
        aws_env: str, tmp_path: Path) -> None:
    """A cloud run's role reads only its runs bucket: the file goes into the run's results
    there (written with this machine's credentials) and --params_file names that copy."""
    import boto3

    from dqlctl.runs.request import LaunchRequest, build_spec

    boto3.client("s3").create_bucket(Bucket="runs")
    src = tmp_path / "best_params.json"
    src.write_text(json.dumps({"params": PARAMS, "train_transaction_cost": 2e-4}))
    ctx = Context(home=tmp_path / "home")
    req = LaunchRequest(provider="local", data="test_small.csv", command="train",
                        params_from=str(src), results_dir="s3://runs/r", name="exp")
    spec = build_spec(ctx, req, "abcd1234")
    args = spec.job.engine_args
    assert args[args.index("--params_file") + 1] == "s3://runs/r/exp/params_from.json"
    body = boto3.client("s3").get_object(Bucket="runs", Key="r/exp/params_from.json")["Body"]
    doc = json.loads(body.read())
    assert doc["params"] == PARAMS and doc["copied_from"] == str(src)


# -- the engine ---------------------------------------------------------------------------------

def _engine_args(tmp_path: Path, command: str = "train") -> list[str]:
    return [command, "--data_file", "test_small.csv", "--agent_type", "dql", "--episodes", "1",
            "--results_dir", str(tmp_path / "results"), "--experiment_name", "x",
            "--checkpoint_every", "0", *FAST]


def test_engine_params_file_from_s3_skips_tuning_in_full_workflow(
        aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket="tuned")
    boto3.client("s3").put_object(Bucket="tuned", Key="t/best_params.json", Body=json.dumps(
        {"params": PARAMS, "train_transaction_cost": 3e-4, "n_trials": 7}).encode())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code = engine_main([*_engine_args(tmp_path, "full-workflow"), "--lr", "5e-4",
                        "--params_file", "s3://tuned/t/best_params.json"])
    assert code == 0
    out = tmp_path / "results" / "x"
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in PARAMS if k != "lr"} == {k: v for k, v in PARAMS.items()
                                                           if k != "lr"}
    assert config["lr"] == 5e-4                      # a flag given wins over the file
    assert config["tuned_params"]["train_transaction_cost"] == 3e-4
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert events[0]["params_from"] == "s3://tuned/t/best_params.json"
    assert "tune" not in [e.get("name") for e in events if e["event"] == "stage"]
    assert "s3://tuned/t/best_params.json" in (out / "report.html").read_text()  # says where
    # the deflated Sharpe counts the 7 trials that chose these parameters elsewhere
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["n_trials"] == 1 * int(config.get("val_folds") or 1) * 7


@pytest.mark.parametrize("content,needle", [
    (None, "not found"),
    ("nope", "not JSON"),
    ('{"score": 1}', "no 'params' object"),
    ('{"params": {"gammma": 0.9}}', "unknown setting 'gammma'"),
    ('{"params": {"gamma": 5}}', "--gamma must be in [0, 1]"),
])
def test_engine_bad_params_file_is_one_line_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None,
        needle: str) -> None:
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    assert engine_main([*_engine_args(tmp_path), "--params_file", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"params file {path}" in err[0] and needle in err[0], err
    assert not (tmp_path / "results").exists()


def test_engine_tune_refuses_a_params_file(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"params": PARAMS}))
    assert engine_main([*_engine_args(tmp_path, "tune"), "--params_file", str(path)]) == 2
    assert "--params_file is for train and full-workflow" in capsys.readouterr().err


def test_one_reader_for_folders_files_and_skip_tuning(tmp_path: Path) -> None:
    from engine import tune
    from engine.config import Config

    (tmp_path / "best_params.json").write_text(json.dumps(
        {"params": {**PARAMS, "train_transaction_cost": 1e-4}}))
    found: Any = tune.read_best_params(tmp_path)
    assert found.params == PARAMS and found.train_transaction_cost == 1e-4
    assert tune.load_best_params(tmp_path / "best_params.json") == PARAMS
    cfg, params = tune.apply_best_params(Config(), f"file://{tmp_path}")
    assert params == PARAMS and cfg.gamma == 0.93
    assert tune.read_best_params(tmp_path / "none") is None
    with pytest.raises(tune.ParamsNotFound):
        tune.read_best_params(tmp_path / "none", strict=True)
