"""Who owns what in the cloud (issue 14): every resource carries its run id, its registry's id
and the OS user; orphans are found in every region and of every kind dqlctl creates (a launch
killed before its instance existed leaves a security group, a key pair, a role), and only this
registry's are removed unless ``--all-owners``. Also: ``--ssh-cidr`` and the caller-address
lookup are checked, and a VM whose host key is not the one its cloud published is refused on
the first connection (moto server; the VM is a real sshd)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from dqlctl import registry as reg
from dqlctl.cli import main
from dqlctl.context import Context
from dqlctl.owner import owner_tags, registry_id
from dqlctl.runs.request import checked_ssh_cidr
from providers.base import OWNER_TAG, RUN_TAG, ProviderError
from providers.ssh import fingerprint, host_keys_in_console, matches_expected
from providers.vm import SshVm
from tests.host_keys import console_block
from tests.test_aws_e2e import NOTHING, ami, home, imds, launch_args, leftovers, vm  # noqa: F401

PUBLIC = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDkZ6kAuY9jEk6ewhzQ0Y1bM0bmMY0KgBPrZfPr8a4Ws")
OTHER_REGISTRY = "0123456789abcdef"


# -- ownership and orphans ------------------------------------------------------------------------


def test_the_registry_id_is_made_once_and_kept(tmp_path: Path) -> None:
    first = registry_id(tmp_path)
    assert len(first) == 16 and registry_id(tmp_path) == first
    assert (tmp_path / "registry.id").read_text().strip() == first
    assert registry_id(tmp_path / "another") != first
    tags = owner_tags(tmp_path, "r1")
    assert tags[RUN_TAG] == "r1" and tags[OWNER_TAG] == first and tags["dqlctl:user"]


def _leak(where: Path, run_id: str) -> None:
    """What a launch killed before its instance existed leaves: a security group and a key pair
    (in eu-west-1, not the default region), a role with its policy and an instance profile."""
    tags = [{"Key": k, "Value": v} for k, v in owner_tags(where, run_id).items()]
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    name = f"dqlctl-{run_id}"
    ec2.create_security_group(GroupName=name, Description="leaked", TagSpecifications=[
        {"ResourceType": "security-group", "Tags": tags}])
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=PUBLIC.encode(), TagSpecifications=[
        {"ResourceType": "key-pair", "Tags": tags}])
    iam = boto3.client("iam")
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {
            "Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}), Tags=tags)
    iam.put_role_policy(RoleName=name, PolicyName="run-bucket", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "s3:*",
                                                "Resource": "*"}]}))
    iam.create_instance_profile(InstanceProfileName=name, Tags=tags)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)


def _colleagues_instance(run_id: str) -> str:
    """A live instance another registry launched, in us-west-2 (not the default region)."""
    ec2 = boto3.client("ec2", region_name="us-west-2")
    tags = [{"Key": RUN_TAG, "Value": run_id}, {"Key": OWNER_TAG, "Value": OTHER_REGISTRY},
            {"Key": "dqlctl:user", "Value": "colleague"}]
    reply = ec2.run_instances(ImageId=ami("us-west-2"), MinCount=1, MaxCount=1,
                              InstanceType="t3.micro",
                              TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
    return reply["Instances"][0]["InstanceId"]


def _state(instance_id: str) -> str:
    ec2 = boto3.client("ec2", region_name="us-west-2")
    res = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return res[0]["Instances"][0]["State"]["Name"]


def test_orphans_of_every_kind_and_region_and_only_this_registrys_are_removed(
        aws_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = tmp_path / "home"
    _leak(where, "leak0001")
    theirs = _colleagues_instance("their0001")

    assert main(["ps", "--orphans", "--provider", "aws", "--json"], ctx=Context(home=where)) == 0
    found = json.loads(capsys.readouterr().out)
    assert sorted((o["kind"], o["resource_id"], o["region"], o["owned"]) for o in found) == [
        ("instance", theirs, "us-west-2", False),
        ("instance-profile", "dqlctl-leak0001", None, True),
        ("key-pair", "dqlctl-leak0001", "eu-west-1", True),
        ("role", "dqlctl-leak0001", None, True),
        ("security-group", next(o["resource_id"] for o in found
                                if o["kind"] == "security-group"), "eu-west-1", True)]
    assert main(["ps", "--orphans", "--provider", "aws"], ctx=Context(home=where)) == 0
    table = capsys.readouterr().out
    assert OTHER_REGISTRY in table and "this" in table and "OWNER" in table

    # without --yes: nothing removed, exit 2
    assert main(["gc", "--provider", "aws"], ctx=Context(home=where)) == 2
    capsys.readouterr()
    # gc removes this registry's leaks, everywhere; the colleague's instance runs on
    assert main(["gc", "--provider", "aws", "--yes", "--json"], ctx=Context(home=where)) == 0
    out, err = capsys.readouterr()
    assert sorted(r["kind"] for r in json.loads(out)) == [
        "instance-profile", "key-pair", "role", "security-group"]
    assert "left alone 1 resource(s) of other registries" in err
    assert {k: v for k, v in leftovers("leak0001").items() if k != "instances"} == \
        {k: v for k, v in NOTHING.items() if k != "instances"}
    west = boto3.client("ec2", region_name="eu-west-1")
    assert not [g for g in west.describe_security_groups()["SecurityGroups"]
                if g["GroupName"].startswith("dqlctl-")]
    assert not west.describe_key_pairs()["KeyPairs"]
    assert _state(theirs) == "running"

    # down --orphans is the same; --all-owners takes the colleague's too
    assert main(["down", "--orphans", "--provider", "aws", "--yes"], ctx=Context(home=where)) == 0
    assert "no orphaned resources of this registry (1 of other registries" in \
        capsys.readouterr().out
    assert _state(theirs) == "running"
    assert main(["down", "--orphans", "--provider", "aws", "--yes", "--all-owners"],
                ctx=Context(home=where)) == 0
    assert f"removed aws instance {theirs}" in capsys.readouterr().out
    assert _state(theirs) == "terminated"


# -- who may reach port 22 ----------------------------------------------------------------------


def test_ssh_cidr_is_an_address_block_and_wider_than_a_24_needs_yes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert checked_ssh_cidr("203.0.113.7") == "203.0.113.7/32"
    assert checked_ssh_cidr("203.0.113.0/24") == "203.0.113.0/24"
    base = ["launch", "--provider", "local", "--data", "test_small.csv", "--dry-run"]
    for bad, why in (("0.0.0.0/0", "wider than a /24"), ("10.0.0.0/23", "wider than a /24"),
                     ("banana", "not an address or CIDR block")):
        assert main([*base, "--ssh-cidr", bad], ctx=Context(home=tmp_path)) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1
    assert main([*base, "--ssh-cidr", "0.0.0.0/0", "--yes"], ctx=Context(home=tmp_path)) == 0


@pytest.fixture()
def checkip(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bytes]]:
    """A checkip service answering what the test puts in ``answer["body"]``."""
    answer = {"body": b"203.0.113.9\n"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr("providers.vm.CHECKIP_URL", f"http://127.0.0.1:{server.server_port}/")
    yield answer
    server.shutdown()
    server.server_close()


def test_the_callers_address_must_be_an_address(checkip: dict[str, bytes]) -> None:
    machine = SshVm()
    machine.ssh_cidr = None
    assert machine._operator_cidr() == "203.0.113.9/32"
    checkip["body"] = b"<html>captive portal</html>"
    with pytest.raises(ProviderError, match="not an IP address; pass --ssh-cidr"):
        machine._operator_cidr()


# -- host keys ------------------------------------------------------------------------------------


def test_host_keys_are_read_from_cloud_init_console_blocks() -> None:
    text = ("Linux version 6.8.0\nec2: ####\n" + console_block([PUBLIC])
            + "ec2: -----BEGIN SSH HOST KEY KEYS-----\n"
            f"ec2: {PUBLIC} root@ip-172-31-0-7\n"
            "ec2: -----END SSH HOST KEY KEYS-----\nlogin: ")
    found = host_keys_in_console(text)
    assert found == [fingerprint(PUBLIC), PUBLIC]
    assert matches_expected(PUBLIC + " comment", [fingerprint(PUBLIC)])
    assert not matches_expected(PUBLIC, ["SHA256:" + "A" * 43])
    assert host_keys_in_console("Linux version 2.6.16-xenU\nno blocks here\n") == []


def test_a_vm_whose_host_key_is_not_the_published_one_is_refused_at_first_contact(
        home: Path, vm: dict[str, Any], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    """The console says one key, the VM presents another (a machine in the middle): the
    first connection is refused, the run FAILED, everything it created removed."""
    from providers.aws.compute import AwsProvider

    assert vm["host_key"] != PUBLIC
    monkeypatch.setattr(AwsProvider, "_console_output",
                        lambda self, instance: console_block([PUBLIC]))
    ctx = Context(home=home)
    assert main(launch_args("--episodes", "2", "--name", "mitm"), ctx=ctx) == 3
    err = capsys.readouterr().err
    assert "not one the cloud published" in err and fingerprint(PUBLIC) in err
    (run,) = Context(home=home).registry.list()
    assert run.state == reg.FAILED and "HostKeyMismatch" in (run.reason or "")
    assert leftovers(run.id) == NOTHING
