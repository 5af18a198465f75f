"""GCE (issue 14): the VM's host key is verified against what its guest agent published in
guest attributes before the first connection; a VM presenting another key is refused and its
run torn down; where the cloud publishes nothing, first use is trusted with a warning recorded
in the run's events. Leaked firewalls and service accounts are orphans, another registry's are
left alone. Fake GCE, a real sshd as the VM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dqlctl import registry as reg
from dqlctl.cli import main
from dqlctl.context import Context
from dqlctl.owner import owner_tags
from providers.base import OWNER_TAG
from providers.ssh import fingerprint
from tests.fake_gce import FakeGce
from tests.test_gcp_e2e import (  # noqa: F401 (fixtures)
    NOTHING,
    gce,
    gcs_gate,
    home,
    launch_args,
    metadata,
    vm,
)

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDkZ6kAuY9jEk6ewhzQ0Y1bM0bmMY0KgBPrZfPr8a4Ws"


def test_a_vm_presenting_another_key_than_its_guest_attributes_is_refused(
        home: Path, gce: FakeGce, vm: dict[str, Any],  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    gce.vm_host_keys = [OTHER_KEY]                     # what the cloud says
    assert vm["host_key"] != OTHER_KEY                 # what answers on port 22
    assert main(launch_args("--episodes", "2", "--name", "mitm"), ctx=Context(home=home)) == 3
    err = capsys.readouterr().err
    assert "not one the cloud published" in err and fingerprint(vm["host_key"]) in err
    (run,) = Context(home=home).registry.list()
    assert run.state == reg.FAILED and "HostKeyMismatch" in (run.reason or "")
    assert gce.leftovers() == NOTHING


def test_no_published_key_is_trusted_on_first_use_with_a_warning_in_the_events(
        home: Path, gce: FakeGce, vm: dict[str, Any]) -> None:  # noqa: F811
    gce.vm_host_keys = None                            # the guest agent wrote nothing
    config = home / "config.toml"
    config.write_text(config.read_text().replace("[providers.gcp]\n",
                                                 "[providers.gcp]\nhost_key_wait = 0.5\n", 1))
    assert main(launch_args("--episodes", "2", "--name", "tofu"), ctx=Context(home=home)) == 0
    ctx = Context(home=home)
    (run,) = ctx.registry.list()
    assert run.state == reg.RUNNING, run.reason
    assert run.instance["extra"]["host_keys"] == []
    assert run.instance["extra"]["host_key"] == vm["host_key"]     # pinned from here on
    warnings = [e["data"]["message"] for e in ctx.registry.events(run.id)
                if e["kind"] == "warning"]
    assert len(warnings) == 1 and "trust on first use" in warnings[0]
    assert main(["down", run.id, "--yes"], ctx=ctx) == 0
    assert gce.leftovers() == NOTHING


def test_leaked_firewalls_and_service_accounts_are_orphans_and_owners_are_respected(
        home: Path, gce: FakeGce, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """A launch killed after its firewall rules and service account, before its instance:
    gc removes them; the same left by another registry stays unless --all-owners."""
    ctx = Context(home=home)
    provider = ctx.provider("gcp")
    provider._create_firewall("leak0001", "198.51.100.7/32", owner_tags(home, "leak0001"))
    theirs = {**owner_tags(home, "their0001"), OWNER_TAG: "0123456789abcdef"}
    provider._create_firewall("their0001", "198.51.100.8/32", theirs)
    gce.service_accounts["dqlctl-leak0001@dqlctl-test.iam.gserviceaccount.com"] = {
        "email": "dqlctl-leak0001@dqlctl-test.iam.gserviceaccount.com",
        "description": "dqlctl run leak0001: b only (dqlctl-run=leak0001 dqlctl-owner="
                       f"{ctx.registry_id} dqlctl-user=root)"}
    assert main(["ps", "--orphans", "--provider", "gcp", "--json"], ctx=ctx) == 0
    found = json.loads(capsys.readouterr().out)
    assert sorted((o["kind"], o["resource_id"], o["owned"]) for o in found) == [
        ("firewall", "dqlctl-leak0001", True), ("firewall", "dqlctl-leak0001-deny-ssh", True),
        ("firewall", "dqlctl-their0001", False),
        ("firewall", "dqlctl-their0001-deny-ssh", False),
        ("service-account", "dqlctl-leak0001@dqlctl-test.iam.gserviceaccount.com", True)]
    assert main(["gc", "--provider", "gcp", "--yes"], ctx=Context(home=home)) == 0
    assert gce.leftovers()["firewalls"] == ["dqlctl-their0001", "dqlctl-their0001-deny-ssh"]
    assert gce.leftovers()["service_accounts"] == []
    assert main(["gc", "--provider", "gcp", "--yes", "--all-owners"],
                ctx=Context(home=home)) == 0
    assert gce.leftovers() == NOTHING
