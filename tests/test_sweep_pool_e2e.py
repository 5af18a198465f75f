"""A VM-pool sweep (dqlctl/sweeps/pool.py) on the AWS stand-ins (moto + an sshd as every VM,
tests/test_aws_e2e.py):

- 4 tiny members on 2 VMs: all SUCCEEDED, exactly 2 instances ever launched, each taking
  members one after another, both terminated at the end with everything made for them; ``down``
  of a finished member leaves the VM the next member runs on alone;
- ``sweep down`` mid-sweep, one VM idle between members: no instance left running;
- the handover on the VM (the supervisor's ``--pool``): a handed-over supervisor exits without
  shutting down once the next engine started, and shuts down when it never does; a supervisor
  that claimed the shutdown first refuses the handover;
- an older registry gains the pool table.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from dqlctl import registry as reg
from dqlctl import sweeps
from dqlctl.cli import main
from dqlctl.context import Context
from dqlctl.registry import SCHEMA_VERSION, Registry
from dqlctl.registry_sweeps import VM_GONE, VM_IDLE
from tests import test_aws_e2e as aws
from tests.test_aws_e2e import CIDR, NOTHING, ami, leftovers, make_home

vm = aws.vm          # the sshd every instance stands for
imds = aws.imds      # the metadata service the VMs' roles answer from


@pytest.fixture()
def home(tmp_path: Path, vm: dict[str, Any], imds: Any, aws_env: str,
         monkeypatch: pytest.MonkeyPatch) -> Path:
    """The AWS e2e's home, with the SSH rule and the image every member gets (a sweep spec has
    no --ssh-cidr / --image-id: the provider's settings give them)."""
    home = make_home(tmp_path / "dqlctl-home", vm, imds, aws_env, monkeypatch)
    config = home / "config.toml"
    config.write_text(config.read_text().replace(
        "[providers.aws]\n", f'[providers.aws]\nssh_cidr = "{CIDR}"\nimage_id = "{ami()}"\n', 1))
    return home


def spec_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\nprovider = "aws"\ndata = "test_small.csv"\nseeds = 4\n'
                    'agent_type = "dql"\ncommand = "train"\nepisodes = 2\nconcurrency = 2\n'
                    'engine_args = ["--n_envs", "2"]\n')
    return path


def launched() -> dict[str, str]:
    """Every instance moto ever launched with a run tag: id -> state."""
    ec2 = boto3.client("ec2")
    return {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances(
        Filters=[{"Name": "tag-key", "Values": ["dqlctl:run"]}])["Reservations"]
        for i in r["Instances"]}


def summary_of(ctx: Context, sweep: Any) -> dict[str, Any]:
    """What `sweep show --json` says of the sweep (its pool VMs among it)."""
    return sweeps.summary(ctx, ctx.registry.get_sweep(sweep.id), ctx.clock(), compare=False)


def test_four_members_on_two_vms(home: Path, tmp_path: Path) -> None:
    ctx = Context(home=home)
    assert main(["sweep", "launch", str(spec_file(tmp_path, "pool")), "--json"], ctx=ctx) == 0
    ctx = Context(home=home)
    (sweep,) = ctx.registry.list_sweeps()
    downed = False
    deadline = time.monotonic() + 150
    while sweep.state == "ACTIVE":
        assert time.monotonic() < deadline, [r.state for r in ctx.registry.sweep_runs(sweep.id)]
        sweep, problems = sweeps.look(ctx, sweep)
        assert not problems, problems
        runs_ = ctx.registry.sweep_runs(sweep.id)
        busy = {v.instance_id: v for v in ctx.registry.pool_vms(sweep.id) if v.members > 1
                and v.state == "BUSY"}
        before = [r for r in runs_ if r.terminal and r.instance_ids
                  and r.instance_ids[0] in busy]
        if not downed and before:
            # the member before has ended: its `down` must not touch the VM the next one uses
            assert main(["down", before[0].id, "--yes"], ctx=ctx) == 0
            assert launched()[before[0].instance_ids[0]] == "running"
            downed = True
        time.sleep(0.3)
    assert sweep.state == "DONE" and downed
    runs_ = ctx.registry.sweep_runs(sweep.id)
    assert [r.state for r in runs_] == [reg.SUCCEEDED] * 4, [r.reason for r in runs_]
    vms = ctx.registry.pool_vms(sweep.id)
    assert len(vms) == 2 and {v.state for v in vms} == {VM_GONE}
    assert sum(v.members for v in vms) == 4
    assert {r.instance_ids[0] for r in runs_} == {v.instance_id for v in vms}
    ever = launched()
    assert set(ever) == {v.instance_id for v in vms}, ever
    assert set(ever.values()) == {"terminated"}
    reused = [e for r in runs_ for e in ctx.registry.events(r.id) if e["kind"] == "pool_vm"]
    assert sorted(bool(e["data"]["reused"]) for e in reused) == [False, False, True, True]
    for event in reused:  # the member before's supervisor left the VM to the next one's
        if event["data"]["reused"]:
            before_dir = Path(ctx.registry.get(event["data"]["after"]).instance["extra"]
                              ["workdir"])
            deadline = time.monotonic() + 10
            while not (before_dir / "selfcare.json").exists():
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert "handed over" in (before_dir / "selfcare.json").read_text()
    for v in vms:
        assert leftovers(v.owner_run) == NOTHING
    for r in runs_:  # every member's results came home
        assert (Path(r.results_uri) / "events.jsonl").exists()
    shown = summary_of(ctx, sweep)
    assert sorted((v["instance_id"], v["state"], v["members"]) for v in shown["vms"]) == \
        sorted((v.instance_id, VM_GONE, v.members) for v in vms)


def test_sweep_down_mid_sweep_leaves_no_instance(home: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from dqlctl.runs.reconciling import reconcile

    ctx = Context(home=home)
    spec = str(spec_file(tmp_path, "halt"))
    assert main(["sweep", "launch", spec, "--dry-run", "--json"], ctx=ctx) == 0
    planned = json.loads(capsys.readouterr().out)
    assert "at most 2 aws VM(s) (g4dn.xlarge" in planned["where"] and not launched()
    assert main(["sweep", "launch", spec, "--json"], ctx=ctx) == 0
    ctx = Context(home=home)
    (sweep,) = ctx.registry.list_sweeps()
    deadline = time.monotonic() + 90
    # one member ends and its VM waits idle (reconciled, not pumped: nobody hands it on)
    while not ctx.registry.pool_vms(sweep.id, (VM_IDLE,)):
        assert time.monotonic() < deadline
        for run in ctx.registry.sweep_runs(sweep.id):
            if not run.terminal:
                reconcile(ctx, run)
        time.sleep(0.3)
    assert set(launched().values()) == {"running"}
    assert main(["sweep", "down", sweep.id, "--yes", "--json"], ctx=ctx) == 0
    assert ctx.registry.get_sweep(sweep.id).state == "CANCELLED"
    assert set(launched().values()) == {"terminated"} and len(launched()) == 2
    assert {v.state for v in ctx.registry.pool_vms(sweep.id)} == {VM_GONE}
    assert all(r.terminal for r in ctx.registry.sweep_runs(sweep.id))
    members = ctx.registry.members(sweep.id)
    assert [m.state for m in members].count("CANCELLED") == 2     # never started


# -- the handover on the VM (no cloud) ------------------------------------------------------------

def supervise(workdir: Path, *extra: str) -> Any:
    """A supervisor (pool mode) whose engine ends at once; its shutdown writes a file."""
    import subprocess
    import sys

    workdir.mkdir(parents=True)
    shutdown = f"touch {workdir / 'shut-down'}"
    return subprocess.Popen([sys.executable, "-m", "providers.local.supervisor",
                             f"--workdir={workdir}", "--pool", "--shutdown-command", shutdown,
                             *extra, "--", sys.executable, "-c", "pass"])


def test_a_handed_over_supervisor_exits_once_the_next_engine_started(tmp_path: Path) -> None:
    from providers.local.supervisor import NEXT
    from providers.remote_job import POOL_NEXT

    assert NEXT == POOL_NEXT        # the controller's and the supervisor's name for the file
    first, second = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    proc = supervise(first, "--end-grace", "30")
    while not (first / "exit.json").exists():
        time.sleep(0.05)
    (first / NEXT).write_text(f"{second}\n")        # the controller's handover
    time.sleep(1.5)
    assert proc.poll() is None                         # waits for the next engine
    second.mkdir(parents=True)
    (second / "job.json").write_text("{}")
    assert proc.wait(timeout=10) == 0
    assert not (first / "shut-down").exists()
    assert "handed over" in (first / "selfcare.json").read_text()


def test_a_supervisor_shutting_down_refuses_the_handover(tmp_path: Path) -> None:
    from providers.local.supervisor import handed_over

    first = tmp_path / "runs" / "a"
    proc = supervise(first, "--end-grace", "0")
    assert proc.wait(timeout=20) == 0
    assert (first / "shut-down").exists() and (first / "next").read_text() == "shutdown\n"
    (first / "next").unlink()       # a handover nobody followed: shut down after the wait
    (first / "next").write_text(f"{tmp_path / 'runs' / 'never'}\n")
    assert "never started" in (handed_over(first, wait_s=0.2) or "")


def test_an_older_registry_gains_the_pool_table(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE pool_vms")
    con.execute("PRAGMA user_version = 5")
    con.commit()
    con.close()
    r = Registry(path)
    assert r.pool_vms("none") == [] and not r.pool_holds("r1")
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
