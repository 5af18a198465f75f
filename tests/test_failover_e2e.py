"""Capacity failover on AWS, end to end: boto3 -> a fault-injecting proxy -> moto server, and
an OpenSSH server as the VM (tests/test_aws_e2e.py's stand-ins).

EC2 answers ``InsufficientInstanceCapacity`` for every zone of the cheapest region (us-east-1,
by the bundled catalog); the run lands in the next region offering g4dn.xlarge (us-west-2),
trains to the end there, and its history names each refusal and the move. The refusals come
from the proxy in EC2's own error shape (HTTP 500 + the EC2 error XML), read by the real
botocore; nothing in the client is patched. A refusal no other region can fix
(``UnauthorizedOperation``) stops the launch at once, in the first region.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from dqlctl import registry as reg
from dqlctl import runs
from dqlctl.cli import main
from dqlctl.context import Context
from tests.fake_imds import FakeImds
from tests.fault_proxy import FaultProxy
from tests.test_aws_e2e import NOTHING, launch_args, leftovers, make_home
from tests.vm import AWS_KEYS, vm_sshd

LANDING = "us-west-2"


@pytest.fixture()
def proxy(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """EC2 (only) reached through the fault proxy; every other service straight at moto.
    One attempt per call: botocore would retry a 500 four times, with backoff, per zone."""
    fault = FaultProxy(aws_env).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", fault.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    yield fault
    fault.stop()


@pytest.fixture()
def home(tmp_path: Path, aws_env: str, proxy: FaultProxy,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, dict[str, Any]]]:
    """dqlctl's folder and the VM: its sshd trusts the key pairs EC2 holds in the region the
    run lands in (as cloud-init does on the instance)."""
    keys = AWS_KEYS.format(endpoint=aws_env).replace("/us-east-1/", f"/{LANDING}/")
    imds = FakeImds()
    imds.start()
    with vm_sshd(tmp_path / "vm-disk", keys_command=keys) as vm:
        yield make_home(tmp_path / "dqlctl-home", vm, imds, aws_env, monkeypatch), vm
    imds.stop()


def test_no_capacity_in_the_cheapest_region_lands_in_the_next(
        home: tuple[Path, dict[str, Any]], proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str]) -> None:
    proxy.refuse("RunInstances", "InsufficientInstanceCapacity", region="us-east-1")
    zones = [z["ZoneName"] for z in boto3.client("ec2", region_name="us-east-1")
             .describe_availability_zones()["AvailabilityZones"]]
    ctx = Context(home=home[0])
    assert main(launch_args("--episodes", "2", "--name", "moved"), ctx=ctx) == 0
    (run,) = ctx.registry.list()
    assert run.state == reg.RUNNING and run.region == LANDING, run.reason
    # every zone of us-east-1 was asked (and refused) before the move; then us-west-2's first
    launches = [(region, zone, refused) for action, region, zone, refused in proxy.seen
                if action == "RunInstances"]
    assert launches[:len(zones)] == [("us-east-1", z, True) for z in zones]
    assert launches[len(zones)][:1] == (LANDING,) and launches[-1][2] is False
    events = ctx.registry.events(run.id)
    assert [(e["data"]["region"], e["data"]["zone"], e["data"]["code"])
            for e in events if e["kind"] == "capacity"] == [
        ("us-east-1", z, "InsufficientInstanceCapacity") for z in zones]
    (move,) = [e["data"] for e in events if e["kind"] == "failover"]
    assert move["from"] == ["us-east-1"] and move["to"] == LANDING
    # the instance is a spot g4dn.xlarge in us-west-2; us-east-1 kept nothing of the attempt
    raw = boto3.client("ec2", region_name=LANDING).describe_instances(
        InstanceIds=run.instance_ids)["Reservations"][0]["Instances"][0]
    assert raw["InstanceType"] == "g4dn.xlarge" and raw.get("InstanceLifecycle") == "spot"
    east = leftovers(run.id, "us-east-1")
    assert east["instances"] == east["key_pairs"] == east["security_groups"] == []

    final = runs.follow(Context(home=home[0]), run)
    assert final.state == reg.SUCCEEDED, final.reason
    capsys.readouterr()
    assert main(["show", run.id], ctx=Context(home=home[0])) == 0
    shown = capsys.readouterr().out
    assert f"region         {LANDING}" in shown
    assert "failover  (no capacity in us-east-1: trying us-west-2)" in shown
    assert f"capacity  (aws us-east-1/{zones[0]} g4dn.xlarge: InsufficientInstanceCapacity)" \
        in shown
    for region in ("us-east-1", LANDING):
        assert leftovers(run.id, region) == NOTHING


def test_an_error_no_region_can_fix_stops_at_once(
        home: tuple[Path, dict[str, Any]], proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str]) -> None:
    proxy.refuse("RunInstances", "UnauthorizedOperation")
    ctx = Context(home=home[0])
    assert main(launch_args("--episodes", "2", "--name", "denied"), ctx=ctx) == 3
    assert "UnauthorizedOperation" in capsys.readouterr().err
    (run,) = ctx.registry.list()
    assert run.state == reg.FAILED
    launches = [(region, refused) for action, region, _, refused in proxy.seen
                if action == "RunInstances"]
    assert launches == [("us-east-1", True)]          # one zone, one region: no walk
    assert not [e for e in ctx.registry.events(run.id) if e["kind"] in ("failover", "capacity")]
    for region in ("us-east-1", LANDING):
        assert leftovers(run.id, region) == NOTHING


def test_a_pinned_region_only_walks_its_zones(
        home: tuple[Path, dict[str, Any]], proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str]) -> None:
    proxy.refuse("RunInstances", "InsufficientInstanceCapacity", region="us-east-1")
    ctx = Context(home=home[0])
    assert main(launch_args("--episodes", "2", "--region", "us-east-1"), ctx=ctx) == 3
    err = capsys.readouterr().err
    assert "no capacity for g4dn.xlarge in us-east-1 (us-east-1a: InsufficientInstanceCapacity" \
        in err and "another --region" in err
    assert {region for action, region, _, _ in proxy.seen if action == "RunInstances"} == \
        {"us-east-1"}
    (run,) = ctx.registry.list()
    assert run.state == reg.FAILED
    assert leftovers(run.id, "us-east-1") == NOTHING
