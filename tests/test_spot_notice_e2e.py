"""A spot preemption notice on AWS, end to end on the stand-ins of tests/test_aws_e2e.py (moto,
an sshd as the VM, the EC2 metadata service with its notice endpoints, tests/fake_imds.py).

The engine holds mid-episode (tests/held_engine.py) until a stop signal, so the notice always
lands in the middle of an episode, after the last periodic checkpoint: without the notice the
work since that checkpoint would be lost; with it the VM's supervisor (``--notices aws``) records
the notice and stops the engine, which checkpoints mid-episode and uploads it to the run's bucket
before it exits, well inside the two minutes EC2 gives.

The notice, the resume from the notice's checkpoint losing nothing, and the history it leaves are
tests/test_aws_recovery_e2e.py's ``notice`` case (tests/spot_recovery.py, one flow for the three
clouds); this file keeps what only a controller watching at the moment of the notice sees.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3

from dqlctl import registry as reg
from dqlctl import runs
from dqlctl.cli import main
from dqlctl.context import Context
from tests import test_aws_e2e as aws
from tests.fake_imds import FakeImds
from tests.held_engine import hold_in
from tests.test_aws_e2e import CIDR, NOTHING, ami, kill_vm_processes, leftovers

vm, imds, home = aws.vm, aws.imds, aws.home     # its fixtures: the VM, its metadata, dqlctl's

BUCKET = "dqlctl-results"
HOLD_AFTER = 4          # the engine holds in the middle of episode 5
CHECKPOINT_EVERY = 3    # the last checkpoint before the hold: episode 3


def noticed_run(home: Path, name: str, *extra: str) -> tuple[Any, Path]:
    """A spot run with its results in the bucket, its engine held mid-episode 5, notices
    polled every 0.1 s; returns the run and the file that releases the hold."""
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    release = hold_in(home, HOLD_AFTER, name)
    config = home / "config.toml"
    config.write_text(config.read_text()
                      + 'DQLCTL_NOTICE_POLL_S = "0.1"\n')  # in [providers.aws.vm_env], the last table
    assert main(["launch", "--provider", "aws", "--gpu", "T4:1", "--data", "test_small.csv",
                 "--agent-type", "dql", "--command", "train", "--ssh-cidr", CIDR,
                 "--image-id", ami(), "--episodes", "8", "--name", name,
                 "--results-dir", f"s3://{BUCKET}/runs", *extra, "--",
                 "--n_envs", "4", "--checkpoint_every", str(CHECKPOINT_EVERY)],
                ctx=Context(home=home)) == 0
    (run,) = Context(home=home).registry.list()
    return run, release


def wait_for(what: str, check: Any, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def notice_and_checkpoint(imds: FakeImds, run: Any, release: Path) -> dict[str, Any]:
    """The cloud announces the end while the engine is mid-episode; once the engine has ended
    (its checkpoint uploaded): the notice and checkpoint events, from the VM's disk."""
    wait_for("the engine did not reach its hold", Path(f"{release}.held").exists)
    workdir = Path(run.instance["extra"]["workdir"])
    imds.notice("terminate", in_s=120)
    wait_for("the engine did not end on the notice", (workdir / "exit.json").exists)
    ended = json.loads((workdir / "exit.json").read_text())
    assert ended["exit_code"] == 143 and ended["notice"]["action"] == "terminate", ended
    events = [json.loads(x) for x in Path(run.instance["extra"]["events_path"]).read_text()
              .splitlines()]
    kinds = [e["event"] for e in events]
    notice = events[kinds.index("notice")]
    checkpoint = events[kinds.index("checkpoint", kinds.index("notice"))]
    return {"notice": notice, "checkpoint": checkpoint, "events": events}


def test_a_controller_that_sees_the_notice_makes_the_run_preempted_at_once(
        home: Path, vm: dict[str, Any], imds: FakeImds) -> None:
    """A dqlctl looking while the VM is still there: the engine's end after a notice is a
    preemption (not a failure), recorded at once, the machine released without waiting for the
    cloud; with no recovery left it ends there, its checkpoint in the bucket."""
    run, release = noticed_run(home, "seen", "--max-recoveries", "0")
    notice_and_checkpoint(imds, run, release)
    (row,) = runs.reconcile_all(Context(home=home))
    assert row.state in (reg.PREEMPTED, reg.FAILED), row.reason
    assert "aws preemption notice (terminate)" in row.reason and "checkpointed" in row.reason
    state = boto3.client("ec2").describe_instances(InstanceIds=run.instance_ids)[
        "Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state in ("shutting-down", "terminated")
    history = [e["to_state"] or e["kind"] for e in Context(home=home).registry.events(run.id)]
    assert history[history.index("notice"):][:3] == ["notice", "checkpoint", reg.PREEMPTED]
    release.touch()
    assert main(["down", run.id, "--yes"], ctx=Context(home=home)) == 0
    kill_vm_processes(run.id)
    assert leftovers(run.id) == NOTHING
