"""Chaos: ``dqlctl launch`` SIGKILLed right after each state transition of a launch, on this
machine and on AWS (moto + the sshd VM of tests/test_aws_e2e.py); then ``dqlctl ps`` (a new
process, as after a crash) until the run is terminal. After that:

- every run is terminal (or legitimately live while it is still polled);
- no instance bills without a run that owns it, and nothing tagged with a terminal run is left
  (instances; on AWS also security groups, key pairs, instance profiles, roles);
- no event is lost: the run's state events are a legal path through the lifecycle that passes
  through the state it was killed in, and a run whose controller died was ``adopted``.

The kill comes from the documented test hook ``DQLCTL_FAULT_KILL_AFTER`` (dqlctl.registry).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from dqlctl import registry as reg
from dqlctl.cli import main
from dqlctl.context import Context
from providers.base import RUN_TAG
from providers.local.compute import LocalProvider
from tests.test_aws_e2e import (  # noqa: F401 - fixtures: the AWS stand-ins
    NOTHING,
    home,
    imds,
    kill_vm_processes,
    launch_args,
    leftovers,
    vm,
)

ROOT = Path(__file__).resolve().parents[1]
#: the state a launch is killed right after -> how the run must end once `ps` has taken over
KILLED = {reg.PROVISIONING: reg.FAILED, reg.BOOTSTRAPPING: reg.SUCCEEDED,
          reg.RUNNING: reg.SUCCEEDED, reg.COLLECTING: reg.SUCCEEDED}


def killed_launch(folder: Path, state: str, argv: list[str]) -> None:
    """``dqlctl launch --follow`` in its own process, SIGKILLed right after entering ``state``
    (``folder`` is its DQLCTL_HOME)."""
    env = {**os.environ, "DQLCTL_HOME": str(folder), reg.FAULT_KILL_AFTER: state}
    proc = subprocess.run([sys.executable, "-m", "dqlctl", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def ps_until_terminal(folder: Path, billed: Any, timeout: float = 180) -> dict[str, Any]:
    """``dqlctl ps --all --json`` until the one run is terminal; at every look, each instance
    that bills is owned by a run that is not terminal (``billed()``: [(instance, run id)])."""
    deadline = time.monotonic() + timeout
    while True:
        out = io.StringIO()
        assert main(["ps", "--all", "--json"], ctx=Context(home=folder, stdout=out)) == 0
        (run,) = json.loads(out.getvalue())
        for instance, owner in billed():
            assert owner == run["id"] and (run["state"] not in reg.TERMINAL), \
                f"{instance} bills for {owner}, which is {run['state']}"
        if run["state"] in reg.TERMINAL:
            return run
        assert time.monotonic() < deadline, f"still {run['state']}: {run['reason']}"
        time.sleep(0.2)


def assert_history(folder: Path, run: dict[str, Any], killed: str) -> None:
    events = Context(home=folder).registry.events(run["id"])
    moves = [e for e in events if e["to_state"]]
    assert moves[0]["to_state"] == reg.PENDING
    for before, after in zip(moves, moves[1:], strict=False):
        assert after["from_state"] == before["to_state"], moves
        assert after["to_state"] in reg.TRANSITIONS[before["to_state"]], moves
    assert killed in [m["to_state"] for m in moves]
    if killed in reg.LEASED:
        assert [e["data"]["state"] for e in events if e["kind"] == "adopted"] == [killed]


@pytest.mark.parametrize("killed", list(KILLED))
def test_local_launch_killed_at_each_transition_is_taken_over(tmp_path: Path,
                                                              killed: str) -> None:
    killed_launch(tmp_path, killed, [
        "launch", "--data", "test_small.csv", "--agent-type", "dql", "--episodes", "2",
        "--command", "train", "--name", "chaos", "--follow", "--", "--n_envs", "4"])

    def billed() -> list[tuple[str, str]]:
        return [(i.instance_id, i.tags[RUN_TAG]) for i in
                LocalProvider().list_instances({RUN_TAG: None})
                if (i.extra.get("workdir") or "").startswith(str(tmp_path))]

    run = ps_until_terminal(tmp_path, billed)
    assert run["state"] == KILLED[killed], run["reason"]
    assert billed() == []
    assert_history(tmp_path, run, killed)
    if run["state"] == reg.SUCCEEDED:
        assert (Path(run["results_uri"]) / "model.pth").exists()


@pytest.mark.parametrize("killed", list(KILLED))
def test_aws_launch_killed_at_each_transition_leaves_nothing(
        home: Path, vm: dict[str, Any], killed: str) -> None:  # noqa: F811 - fixtures
    argv = launch_args("--episodes", "2", "--name", "chaos", "--follow")
    ec2 = boto3.client("ec2")

    def billed() -> list[tuple[str, str]]:
        return [(i["InstanceId"], {t["Key"]: t["Value"] for t in i["Tags"]}[RUN_TAG])
                for r in ec2.describe_instances(Filters=[
                    {"Name": "tag-key", "Values": [RUN_TAG]},
                    {"Name": "instance-state-name", "Values": ["pending", "running"]}])
                ["Reservations"] for i in r["Instances"]]

    killed_launch(home, killed, argv)
    (row,) = Context(home=home).registry.list()
    try:
        run = ps_until_terminal(home, billed)
    finally:
        kill_vm_processes(row.id)
    assert run["state"] == KILLED[killed], run["reason"]
    assert billed() == [] and leftovers(run["id"]) == NOTHING
    assert_history(home, run, killed)
