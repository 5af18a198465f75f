"""End to end on this machine: dqlctl launches the real engine through the local provider.

Each test waits on what the run writes (events.jsonl, exit.json, the registry), never on time.
"""

from __future__ import annotations

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
from dqlctl import runs
from dqlctl.cli import main
from dqlctl.context import Context
from dqlctl.errors import DqlctlError, ProviderFailure, UsageError
from providers.base import OWNER_TAG, RUN_TAG, Instance, ProviderError
from providers.local.compute import LocalProvider, pid_alive

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--", "--n_envs", "4"]  # small engine settings for quick runs


def dqlctl(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DQLCTL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dqlctl", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 180) -> Any:
    """Poll a condition the run itself makes true; fail with ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def runs_json(home: Path) -> list[dict[str, Any]]:
    proc = dqlctl(home, "ps", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def engine_events(run: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(run["results_uri"]) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def launch_detached(home: Path, name: str, episodes: int = 500) -> dict[str, Any]:
    proc = dqlctl(home, "launch", "--data", "test_small.csv", "--agent-type", "dql",
                  "--episodes", str(episodes), "--command", "train", "--name", name, "--json",
                  *FAST)
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["state"] == reg.RUNNING
    return run


def wait_first_episode(run: dict[str, Any]) -> None:
    wait_for(lambda: any(e["event"] == "episode" for e in engine_events(run)),
             "the first episode event")


def test_launch_follow_streams_progress_and_another_process_sees_the_run(tmp_path: Path) -> None:
    proc = dqlctl(tmp_path, "launch", "--data", "test_small.csv", "--agent-type", "dql",
                  "--episodes", "2", "--command", "train", "--name", "smoke", "--seed", "3",
                  "--follow", *FAST)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "episode 1/2" in proc.stdout and "episode 2/2" in proc.stdout
    assert "SUCCEEDED" in proc.stdout
    (run,) = runs_json(tmp_path)
    assert run["name"] == "smoke" and run["state"] == reg.SUCCEEDED
    assert run["progress"]["episode"] == 2 and run["exit_code"] == 0
    logs = dqlctl(tmp_path, "logs", "smoke")
    log = (Path(run["instance"]["extra"]["workdir"]) / "engine.log").read_text()
    assert logs.returncode == 0 and logs.stdout.splitlines() == log.splitlines()
    assert any(line.startswith("episode 2/2") for line in log.splitlines())
    show = dqlctl(tmp_path, "show", run["id"][:4])
    assert show.returncode == 0 and "SUCCEEDED" in show.stdout
    # nothing of the run is left running
    assert LocalProvider().list_instances({"dqlctl:run": run["id"]}) == []


def test_killing_the_engine_marks_the_run_failed_with_the_reason(tmp_path: Path) -> None:
    run = launch_detached(tmp_path, "victim")
    wait_first_episode(run)
    workdir = tmp_path / "runs" / run["id"]
    engine_pid = json.loads((workdir / "job.json").read_text())["pid"]
    os.kill(engine_pid, signal.SIGKILL)
    wait_for(lambda: (workdir / "exit.json").exists(), "the supervisor to record the exit")
    (row,) = runs_json(tmp_path)
    assert row["state"] == reg.FAILED
    assert "SIGKILL" in row["reason"]


def test_dqlctl_killed_while_following_leaves_the_run_going(tmp_path: Path) -> None:
    env = {**os.environ, "DQLCTL_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    follower = subprocess.Popen(
        [sys.executable, "-m", "dqlctl", "launch", "--data", "test_small.csv", "--agent-type",
         "dql", "--episodes", "500", "--command", "train", "--name", "orphaned", "--follow",
         *FAST], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        for line in follower.stdout:  # the follower prints each episode as it happens
            if line.startswith("episode "):
                break
        follower.kill()
        follower.wait(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    (run,) = runs_json(tmp_path)
    assert run["state"] == reg.RUNNING  # a new process reconciled it: still alive
    inst = run["instance"]["extra"]
    assert pid_alive(inst["pid"], inst["start_ticks"])
    down = dqlctl(tmp_path, "down", "orphaned", "--yes")
    assert down.returncode == 0, down.stderr
    (run,) = runs_json(tmp_path)
    assert run["state"] == reg.CANCELLED
    assert not pid_alive(inst["pid"], inst["start_ticks"])
    assert LocalProvider().list_instances({"dqlctl:run": run["id"]}) == []


def test_a_vanished_process_is_not_left_running(tmp_path: Path) -> None:
    run = launch_detached(tmp_path, "vanish")
    wait_first_episode(run)
    pid = run["instance"]["extra"]["pid"]
    os.killpg(pid, signal.SIGKILL)  # supervisor and engine together: no exit status written
    wait_for(lambda: not pid_alive(pid, run["instance"]["extra"]["start_ticks"]),
             "the process group to die")
    (row,) = runs_json(tmp_path)
    assert row["state"] == reg.FAILED
    assert "vanished" in row["reason"]


def test_logs_follow_ends_with_the_run(tmp_path: Path) -> None:
    run = launch_detached(tmp_path, "short", episodes=2)
    proc = dqlctl(tmp_path, "logs", "-f", run["id"])
    assert proc.returncode == 0, proc.stderr
    (row,) = runs_json(tmp_path)
    assert row["state"] == reg.SUCCEEDED
    log = (tmp_path / "runs" / run["id"] / "engine.log").read_text()
    assert proc.stdout.splitlines() == log.splitlines()    # every line, once, in order
    tail = dqlctl(tmp_path, "logs", "--tail", "1", run["id"])
    assert tail.stdout.splitlines() == log.splitlines()[-1:]


@pytest.mark.parametrize("args,needle", [
    (["launch", "--provider", "nimbus"], "unknown provider 'nimbus'"),
    (["launch", "--data", "no_such_file.csv"], "no_such_file.csv"),
    (["launch", "--episodes", "-5"], "--episodes"),
    (["launch", "--agent-type", "transformer"], "unknown agent type"),
    (["show", "deadbeef"], "no run 'deadbeef'"),
    (["logs", "deadbeef"], "no run 'deadbeef'"),
    (["down", "deadbeef", "--yes"], "no run 'deadbeef'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = dqlctl(tmp_path, *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert runs_json(tmp_path) == []  # nothing was created


def test_bad_data_fails_the_run_with_the_engines_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("date,open,high,low,close,volume\n2024-01-01,1,1,1,1,1\n"
                   "2024-01-02,1,1,1,-3,1\n")
    proc = dqlctl(tmp_path, "launch", "--data", str(bad), "--episodes", "1", "--command",
                  "train", "--follow")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (run,) = runs_json(tmp_path)
    assert run["state"] == reg.FAILED
    assert "bad.csv" in proc.stdout


class _BrokenBootstrap(LocalProvider):
    def wait_ready(self, instance):  # type: ignore[no-untyped-def]
        self.started = instance
        raise ProviderError("bootstrap failed: engine image missing")


def test_failed_bootstrap_tears_down_what_was_started(tmp_path: Path) -> None:
    provider = _BrokenBootstrap()
    ctx = Context(home=tmp_path, providers={"local": provider})
    code = main(["launch", "--data", "test_small.csv", "--episodes", "500", "--command", "train",
                 *FAST], ctx=ctx)
    assert code == 3
    ctx = Context(home=tmp_path)
    (run,) = ctx.registry.list()
    assert run.state == reg.FAILED and "engine image missing" in run.reason
    extra = provider.started.extra
    assert not pid_alive(extra["pid"], extra["start_ticks"])


def test_max_cost_stops_the_run_when_its_budget_is_spent(tmp_path: Path) -> None:
    # this machine priced at $36,000/h: a $1 budget lasts a tenth of a second
    (tmp_path / "config.toml").write_text("[providers.local]\nprice_per_hour = 36000.0\n")
    proc = dqlctl(tmp_path, "launch", "--data", "test_small.csv", "--agent-type", "dql",
                  "--episodes", "500", "--command", "train", "--name", "budget", "--max-cost",
                  "1", "--follow", *FAST)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (run,) = runs_json(tmp_path)
    assert run["state"] == reg.CANCELLED and "budget reached" in run["reason"]
    assert run["price_per_hour"] == 36000.0 and run["cost_usd"] >= 1.0
    extra = run["instance"]["extra"]
    assert not pid_alive(extra["pid"], extra["start_ticks"])


def test_provider_auto_picks_the_cheapest_offer_from_the_catalog(tmp_path: Path) -> None:
    from providers.prices.estimate import PriceRequest, cheapest_offer

    proc = dqlctl(tmp_path, "launch", "--provider", "auto", "--gpu", "A100", "--dry-run",
                  "--ssh-cidr", "203.0.113.9/32", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    best = cheapest_offer(PriceRequest(gpu="A100", provider="auto"), home=tmp_path)
    assert (plan["provider"], plan["region"], plan["instance_type"]) == \
        (best.provider, best.region, best.instance_type)
    assert f"{best.price_per_hour:.4f}" in plan["price"]
    assert runs_json(tmp_path) == []  # a dry run creates nothing


def test_stop_checkpoints_then_releases_and_ssh_opens_the_runs_folder(tmp_path: Path) -> None:
    """`stop` keeps the work (SIGTERM: the engine checkpoints) where `down` would just release;
    `ssh` on a local run runs in the run's own folder."""
    run = launch_detached(tmp_path, "stopme")
    wait_first_episode(run)
    where = dqlctl(tmp_path, "ssh", run["id"], "--", "pwd")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip() == run["instance"]["extra"]["workdir"]

    proc = dqlctl(tmp_path, "stop", run["id"], "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = runs_json(tmp_path)
    assert row["state"] == reg.CANCELLED
    stopped = json.loads(proc.stdout)  # the final row, as `show --json` prints it
    shown = json.loads(dqlctl(tmp_path, "show", run["id"], "--json").stdout)
    assert stopped.keys() == shown.keys() and stopped["events"] == shown["events"]
    assert stopped["state"] == reg.CANCELLED and stopped["reason"] == row["reason"]
    assert row["reason"].startswith("stopped at episode ") and "checkpoint" in row["reason"]
    ckpts = list((Path(run["results_uri"]) / "checkpoints").glob("ckpt-*.pt"))
    assert ckpts, "the engine wrote no checkpoint on the way out"
    workdir = Path(run["instance"]["extra"]["workdir"])
    assert json.loads((workdir / "exit.json").read_text())["exit_code"] == 143
    assert not pid_alive(run["instance"]["extra"]["pid"], run["instance"]["extra"]["start_ticks"])
    # an ended run has no machine: ssh says so in one line, and stop leaves it as it is
    again = dqlctl(tmp_path, "ssh", run["id"])
    assert again.returncode == 2 and "no machine" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert dqlctl(tmp_path, "stop", run["id"]).returncode == 0
    assert runs_json(tmp_path)[0]["reason"] == row["reason"]


def test_down_json_prints_the_final_run_and_the_orphans_it_ended(tmp_path: Path) -> None:
    run = launch_detached(tmp_path, "downme")
    proc = dqlctl(tmp_path, "down", run["id"], "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["id"] == run["id"] and row["state"] == reg.CANCELLED
    assert row["events"][-1]["kind"] == "down" and "cost_usd" in row
    assert not pid_alive(run["instance"]["extra"]["pid"], run["instance"]["extra"]["start_ticks"])


class _OneOrphan(LocalProvider):
    """One tagged instance no run owns (the real local provider would see every supervisor on
    this machine, other tests' included)."""

    def __init__(self) -> None:
        super().__init__()
        self.terminated: list[str] = []

    owner = ""  # this registry's id, set by the test

    def list_instances(self, tag):  # type: ignore[no-untyped-def]
        return [] if self.terminated else [Instance(
            "local", "local-424242", "running", "local", "localhost",
            tags={RUN_TAG: "gone1234", OWNER_TAG: self.owner}, extra={})]

    def terminate(self, instance):  # type: ignore[no-untyped-def]
        self.terminated.append(instance.instance_id)


def test_down_orphans_json_lists_the_instances_it_terminated(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    provider = _OneOrphan()
    ctx = Context(home=tmp_path, providers={"local": provider})
    provider.owner = ctx.registry_id
    assert main(["down", "--orphans", "--yes", "--json", "--provider", "local"], ctx=ctx) == 0
    (gone,) = json.loads(capsys.readouterr().out)
    assert gone["resource_id"] == "local-424242" and provider.terminated == ["local-424242"]
    ctx = Context(home=tmp_path, providers={"local": provider})
    assert main(["down", "--orphans", "--json", "--provider", "local"], ctx=ctx) == 0
    assert json.loads(capsys.readouterr().out) == []


def _run_row(ctx: Context) -> reg.Run:
    run = ctx.registry.create(name="fold", provider="local", spec={})
    return ctx.registry.get(run.id)


def test_the_kept_models_validation_sharpe_is_tracked(tmp_path: Path) -> None:
    """``best`` marks the episode whose model became the kept one: its val_sharpe and episode
    are the run's ``best_val_sharpe`` / ``best_episode``, whatever later episodes score."""
    ctx = Context(home=tmp_path)
    run = _run_row(ctx)
    episodes = [{"event": "episode", "episode": 1, "episodes": 4, "val_sharpe": 0.2, "best": True},
                {"event": "episode", "episode": 2, "episodes": 4, "val_sharpe": 0.9, "best": True},
                {"event": "episode", "episode": 3, "episodes": 4, "val_sharpe": 0.5,
                 "best": False}]
    runs.apply_engine_events(ctx, run, episodes[:2])
    runs.apply_engine_events(ctx, run, episodes[2:] + [
        {"event": "episode", "episode": 4, "episodes": 4, "val_sharpe": 1.4}])  # no flag: not kept
    progress = ctx.registry.get(run.id).progress
    assert progress["val_sharpe"] == 1.4 and progress["episode"] == 4
    assert progress["best_val_sharpe"] == 0.9 and progress["best_episode"] == 2


@pytest.mark.parametrize("changes,field", [
    ({"episodes": 0}, "episodes"),
    ({"provider": "nimbus"}, "provider"),
    ({"data": "no_such_file.csv"}, "data"),
    ({"agent_type": "transformer"}, "agent_type"),
    ({"command": "dance"}, "command"),
    ({"name": "no spaces"}, "name"),
    ({"max_cost": -1.0}, "max_cost"),
    ({"max_recoveries": -1}, "max_recoveries"),
    ({"seed": 2**32}, "seed"),   # the engine would refuse it on the VM, after the launch
    ({"seed": -1}, "seed"),
    ({"provider": "auto", "gpu": "NO-SUCH-GPU"}, "gpu"),
    ({"provider": "auto", "instance_type": "no.such"}, "instance_type"),
])
def test_usage_errors_name_the_request_field(tmp_path: Path, changes: dict[str, Any],
                                             field: str) -> None:
    req = runs.LaunchRequest(**{"data": "test_small.csv", **changes})
    with pytest.raises(UsageError) as exc:
        runs.validate_request(Context(home=tmp_path), req)
    assert exc.value.field == field


class _PickyProvider(LocalProvider):
    def plan(self, spec):  # type: ignore[no-untyped-def]
        raise ProviderError("no such region 'mars-1'", field="region")


def test_a_provider_error_in_plan_keeps_its_field(tmp_path: Path) -> None:
    ctx = Context(home=tmp_path, providers={"local": _PickyProvider()})
    with pytest.raises(ProviderFailure) as exc:
        runs.plan(ctx, runs.LaunchRequest(data="test_small.csv"))
    assert exc.value.field == "region" and exc.value.exit_code == 3
    assert DqlctlError("x").field is None


def test_logs_never_pass_a_machines_escape_sequences_to_the_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A VM or an engine writing terminal escapes (a window title, a screen clear, a cursor
    query, colours) cannot drive the operator's terminal through `dqlctl logs`, piped or not."""
    ctx = Context(home=tmp_path)
    run = ctx.registry.create(name="esc", provider="local", spec={
        "job": {"results_dir": str(tmp_path), "experiment": "esc"}})
    workdir = tmp_path / "vm"
    workdir.mkdir()
    (workdir / "engine.log").write_bytes(
        b"ok \x1b]0;owned title\x07line\n\x1b[2J\x1b[31mred\x1b[0m\ttab\r\n"
        b"\xc2\x9b6n\x1bPdcs\x1b\\ end\x07\n")
    gone = Instance("local", "local-1", "terminated", extra={
        "pid": 2**22 + 7, "start_ticks": 1, "workdir": str(workdir)})
    ctx.registry.update(run.id, instance=gone.to_dict())
    assert main(["logs", run.id], ctx=ctx) == 0
    assert capsys.readouterr().out.splitlines() == ["ok line", "red\ttab", " end"]
