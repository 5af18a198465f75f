"""Runs through the real command line, for what no other test runs that way: ``make run``'s own
command (the default ``--command full-workflow``), every ``launch`` flag reaching the run (local
provider; the cloud flags in an AWS ``--dry-run``, which contacts nothing), Ctrl+C on ``launch
--follow``, ``stop --wait``, ``--max-cost`` enforced by a plain ``ps``, ``logs -n``, plain
``ps``, ``show``/``check --json`` and ``--version``."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dqlctl import registry as reg
from dqlctl.cli import main
from dqlctl.context import Context
from providers.local.compute import pid_alive
from tests import servers

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--", "--n_envs", "4"]


def dqlctl(home: Path, *argv: str) -> tuple[int, str, str]:
    """``dqlctl ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), ctx=Context(home=home, stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def dqlctl_process(home: Path, *args: str, **popen: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "DQLCTL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dqlctl", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=servers.interruptible, **popen)


def show(home: Path, run: str) -> dict[str, Any]:
    code, out, err = dqlctl(home, "show", run, "--json")
    assert code == 0, err
    return json.loads(out)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_make_run_trains_the_full_workflow_and_every_verb_reads_the_result(
        tmp_path: Path) -> None:
    """What `make run` runs (with one episode), then what a person types next."""
    proc = dqlctl_process(tmp_path, "launch", "--provider", "local", "--data",
                          "data/STOCKS_GOOGL.csv", "--agent-type", "custom", "--episodes", "1",
                          "--name", "quickstart", "--follow")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    lines = out.splitlines()
    run_line = next(x for x in lines if x.startswith("run ") and "(quickstart)" in x)
    run_id = run_line.split()[1]
    assert run_line == f"run {run_id} (quickstart) SUCCEEDED"
    assert "  test metrics:" in lines and any(x.split()[:1] == ["sharpe_ratio"] for x in lines)
    # the engine's honest verdict, not a bare number: one seed says so
    verdict = " ".join(x.strip() for x in lines[lines.index("  verdict:") + 1:])
    assert "buy-and-hold" in verdict and "single seed" in verdict
    assert lines[-1].split() == ["report:", f"{tmp_path}/runs/{run_id}/results/quickstart/"
                                 "report.html"]
    detail = show(tmp_path, "quickstart")
    assert detail["id"] == run_id and detail["state"] == reg.SUCCEEDED
    engine_args = detail["spec"]["job"]["engine_args"]
    assert engine_args[0] == "full-workflow" and "--skip_tuning" in engine_args  # no --tune
    results = Path(detail["results_uri"])
    for name in ("report.html", "test_metrics.json", "strategy_comparison.csv", "model.pth"):
        assert (results / name).is_file(), name
    test_metrics = json.loads((results / "test_metrics.json").read_text())
    assert detail["metrics"]["test"]["sharpe_ratio"] == pytest.approx(
        test_metrics["sharpe_ratio"])
    assert [e["to_state"] for e in detail["events"] if e["to_state"]] == [
        reg.PENDING, reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING, reg.COLLECTING,
        reg.SUCCEEDED]
    # logs -n N: the last N lines of the engine's log, exactly
    log = (Path(detail["instance"]["extra"]["workdir"]) / "engine.log").read_text().splitlines()
    code, got, _ = dqlctl(tmp_path, "logs", "quickstart", "-n", "3")
    assert code == 0 and got.splitlines() == log[-3:]
    code, got, _ = dqlctl(tmp_path, "logs", run_id[:5])
    assert code == 0 and got.splitlines() == log
    code, _, got = dqlctl(tmp_path, "logs", "quickstart", "-n", "-1")
    assert code == 2 and "--tail must be 0 or more" in got
    # plain ps: unfinished runs only; --all shows it
    code, got, _ = dqlctl(tmp_path, "ps")
    assert (code, got) == (0, "no runs (`dqlctl ps --all` shows finished ones)\n")
    code, got, _ = dqlctl(tmp_path, "ps", "--all")
    (row,) = [x for x in got.splitlines() if run_id in x]
    assert "quickstart" in row and reg.SUCCEEDED in row
    # stop on an ended run changes nothing
    code, got, _ = dqlctl(tmp_path, "stop", "quickstart", "--wait", "5")
    assert (code, got) == (0, f"run {run_id} {reg.SUCCEEDED}\n")
    code, _, got = dqlctl(tmp_path, "stop", "quickstart", "--wait", "0")
    assert code == 2 and "--wait must be a positive number" in got
    assert show(tmp_path, run_id)["events"] == detail["events"]


def test_every_launch_flag_reaches_the_run(tmp_path: Path) -> None:
    results = tmp_path / "elsewhere"
    code, out, err = dqlctl(
        tmp_path, "launch", "--provider", "local", "--data", "test_small.csv", "--agent-type",
        "dql", "--episodes", "1", "--command", "train", "--name", "flags", "--seed", "5",
        "--tune", "--runtime", "native", "--keep", "--max-recoveries", "0", "--image", "img:1",
        "--instance-type", "x1", "--region", "r1", "--on-demand", "--idle-minutes", "5",
        "--collect-grace", "2", "--results-dir", str(results), "--max-cost", "100", "--json",
        *FAST)
    assert code == 0, err
    launched = json.loads(out)
    assert launched["name"] == "flags" and launched["provider"] == "local"
    assert err == ""                                     # --json: no state lines either
    spec = launched["spec"]
    assert spec["job"]["engine_args"] == ["train", "--agent_type", "dql", "--episodes", "1",
                                          "--experiment_name", "flags", "--seed", "5",
                                          "--n_envs", "4"]
    assert spec["job"]["results_dir"] == str(results)
    assert (spec["image"], spec["instance_type"], spec["region"]) == ("img:1", "x1", "r1")
    assert (spec["spot"], spec["runtime"]) == (False, "native")
    assert spec["extra"] == {"keep": True, "max_recoveries": 0, "max_cost": 100.0,
                             "idle_minutes": 5.0, "collect_grace_minutes": 2.0,
                             "region_pinned": True}     # --region: no capacity failover
    code, _, err = dqlctl(tmp_path, "logs", "-f", "flags")
    assert code == 0, err
    done = show(tmp_path, "flags")
    assert done["state"] == reg.SUCCEEDED, done["reason"]
    assert (results / "flags" / "train_metrics.json").is_file()   # where --results-dir said


def test_cloud_flags_in_a_dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An AWS plan from the flags alone: nothing is asked of AWS for a dry run."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")   # nothing answers there
    base = ["launch", "--provider", "aws", "--data", "s3://bkt/test_small.csv", "--region",
            "eu-west-1", "--instance-type", "g4dn.xlarge", "--ssh-cidr", "203.0.113.9/32",
            "--results-dir", "s3://bkt/runs", "--dry-run", "--json"]
    code, out, err = dqlctl(tmp_path, *base, "--tune", "--on-demand", "--runtime", "docker",
                            "--image", "img:1", "--max-price", "0.9", "--keep", "--gpu", "T4:1")
    assert code == 0, err
    plan = json.loads(out)
    assert (plan["provider"], plan["region"], plan["instance_type"]) == (
        "aws", "eu-west-1", "g4dn.xlarge")
    assert (plan["market"], plan["runtime"], plan["max_price"]) == ("on-demand", "docker", 0.9)
    assert plan["security_group"].endswith("tcp 22 from 203.0.113.9/32")
    assert plan["instance_role"].endswith("s3 on bkt")
    assert "--skip_tuning" not in plan["engine"].split()            # --tune: it tunes
    code, out, err = dqlctl(tmp_path, *base)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["market"] == "spot" and plan["engine"].split()[0] == "full-workflow"
    assert "--skip_tuning" in plan["engine"].split()
    # a dry run creates nothing, not even a registry row
    assert dqlctl(tmp_path, "ps", "--all", "--json")[1] == "[]\n"
    # text form: one line per planned item
    code, out, _ = dqlctl(tmp_path, *[a for a in base if a != "--json"])
    assert code == 0 and out.splitlines()[0].startswith("dry run: nothing is created.")
    assert any(x.split()[:2] == ["region", "eu-west-1"] for x in out.splitlines()[1:])


def test_ctrl_c_on_launch_follow_detaches_and_stop_wait_keeps_the_checkpoint(
        tmp_path: Path) -> None:
    follower = dqlctl_process(tmp_path, "launch", "--data", "test_small.csv", "--agent-type",
                              "dql", "--episodes", "500", "--command", "train", "--name",
                              "detach", "--follow", *FAST)
    try:
        assert follower.stdout is not None
        for line in follower.stdout:                 # the first episode, live
            if line.startswith("episode "):
                break
        follower.send_signal(signal.SIGINT)          # Ctrl+C: the follower only
        _, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 130
    run = show(tmp_path, "detach")
    assert f"detached: run {run['id']} keeps going" in err
    assert run["state"] == reg.RUNNING                # the run was not touched
    extra = run["instance"]["extra"]
    assert pid_alive(extra["pid"], extra["start_ticks"])
    code, out, err = dqlctl(tmp_path, "stop", "detach", "--wait", "120", "--json")
    assert code == 0, err
    stopped = json.loads(out)
    assert stopped["state"] == reg.CANCELLED and "checkpoint" in stopped["reason"]
    assert list((Path(run["results_uri"]) / "checkpoints").glob("ckpt-*.pt"))
    assert not pid_alive(extra["pid"], extra["start_ticks"])


def test_max_cost_is_enforced_by_a_plain_ps(tmp_path: Path) -> None:
    """No follower: the next `ps` stops a run that has spent its budget."""
    (tmp_path / "config.toml").write_text("[providers.local]\nprice_per_hour = 36000.0\n")
    code, out, err = dqlctl(tmp_path, "launch", "--data", "test_small.csv", "--agent-type",
                            "dql", "--episodes", "500", "--command", "train", "--name", "spend",
                            "--max-cost", "1", "--json", *FAST)
    assert code == 0, err
    run = json.loads(out)
    assert run["state"] == reg.RUNNING and run["spec"]["extra"]["max_cost"] == 1.0
    time.sleep(0.2)                                   # $36,000/h: $1 lasts 0.1 s

    def stopped() -> dict[str, Any] | None:
        assert dqlctl(tmp_path, "ps")[0] == 0
        row = show(tmp_path, run["id"])
        return row if row["state"] in reg.TERMINAL else None

    row = wait_for(stopped, "ps to enforce the budget", timeout=120)
    assert row["state"] == reg.CANCELLED and "budget reached" in row["reason"]
    assert row["cost_usd"] >= 1.0
    extra = row["instance"]["extra"]
    assert not pid_alive(extra["pid"], extra["start_ticks"])


def test_check_json_and_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = dqlctl(tmp_path, "check", "local", "--json")
    assert code == 0, err
    (local,) = json.loads(out)
    assert local["provider"] == "local" and local["ok"] is True and local["items"]
    code, out, _ = dqlctl(tmp_path, "check", "local")
    assert code == 0 and out.splitlines()[0] == "local: ready"
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    from dqlctl import __version__

    assert exited.value.code == 0 and capsys.readouterr().out == f"dqlctl {__version__}\n"


@pytest.mark.parametrize("uris, why", [
    (["gs://"], "give a bucket URI"),
    (["/tmp/results"], "give a bucket URI"),
    (["gs://a/runs", "gs://b/runs"], "two places on gcp"),
])
def test_failover_results_must_be_one_bucket_per_cloud(tmp_path: Path, uris: list[str],
                                                       why: str) -> None:
    flags = [x for uri in uris for x in ("--failover-results", uri)]
    code, out, err = dqlctl(tmp_path, "launch", "--provider", "local", "--data",
                            "test_small.csv", "--failover-clouds", *flags, "--dry-run")
    assert code == 2 and out == "", err
    (line,) = err.strip().splitlines()
    assert line.startswith("dqlctl: error: --failover-results") and why in line
    code, out, _ = dqlctl(tmp_path, "ps", "--all", "--json")
    assert code == 0 and json.loads(out) == []           # nothing was recorded
