"""GCE end to end: the official google-cloud-compute client against a local GCE server, a real sshd
as the VM.

``tests/fake_gce.py`` answers the REST shapes (long-running operations, 404s, capacity and quota
errors); credentials are a service-account key file whose token endpoint is that server, found
through Application Default Credentials as in production. The VM stand-in trusts the keys in the
``ssh-keys`` metadata of running instances (its ``AuthorizedKeysCommand`` asks the fake server),
so a deleted instance can no longer be reached. dqlctl reaches it through the documented test hook
``[providers.gcp] ssh_host_override``. Runs use ``--runtime native`` on the VM's Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dqlctl import owner, runs
from dqlctl import registry as reg
from dqlctl.cli import main
from dqlctl.context import Context
from dqlctl.owner import owner_tags
from providers.base import JobSpec, LaunchSpec
from providers.selfdelete import GCE_COMPUTE, GCE_METADATA
from providers.storage import open_store
from tests.fake_gce import FakeGce, serving_adc
from tests.fake_metadata import FakeGceMetadata
from tests.held_engine import hold_in
from tests.token_gate import TokenGate, gcs_policy
from tests.vm import controller_killed_mid_run, deleted_itself_record, vm_sshd

CIDR = "198.51.100.7/32"
SECRET = "123456:telegram-secret-token-do-not-leak"
NOTHING = {"instances": [], "firewalls": [], "service_accounts": [], "bucket_members": []}
BUCKET = "dqlctl-results"
STORAGE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"


@pytest.fixture()
def gce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGce]:
    with serving_adc(FakeGce(), tmp_path, monkeypatch) as fake:
        yield fake


@pytest.fixture()
def vm(gce: FakeGce, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with vm_sshd(tmp_path / "vm-disk", gce.keys_url()) as info:
        gce.vm_host_keys = [info["host_key"]]  # what the guest agent publishes
        yield info


@pytest.fixture()
def metadata(gce: FakeGce) -> Iterator[FakeGceMetadata]:
    """The metadata server the VM asks for its service account's token and its own name."""
    with FakeGceMetadata(gce) as server:
        yield server


@pytest.fixture()
def gcs_gate(gce: FakeGce, fake_gcs: str) -> Iterator[TokenGate]:
    """fake-gcs-server as the VM reaches it: behind a gate that lets in only a VM's token
    (from the metadata server) whose service account the bucket's IAM policy names."""
    with TokenGate(fake_gcs, gcs_policy(gce)) as gate:
        yield gate


@pytest.fixture()
def home(tmp_path: Path, gce: FakeGce, vm: dict[str, Any], metadata: FakeGceMetadata,
         gcs_gate: TokenGate, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dqlctl-home"
    home.mkdir()
    (home / "config.toml").write_text(
        "[providers.gcp]\n"
        f'compute_endpoint = "{gce.url}"\n'
        f'iam_endpoint = "{gce.url}"\n'
        f'storage_endpoint = "{gce.url}"\n'
        f'ssh_host_override = "127.0.0.1:{vm["port"]}"\n'
        'ssh_user = "root"\n'
        f'remote_root = "{vm["root"]}"\n'
        f'remote_python = "{sys.executable}"\n'
        f'metadata_endpoint = "{metadata.url}"\n'   # test hook: the VM's metadata server
        "ready_timeout = 60\npoll_interval = 0.1\n"
        # test hook: the VM's storage SDK reaches GCS (fake-gcs-server) through the gate;
        # its token comes from the metadata server above
        "[providers.gcp.vm_env]\n"
        f'API_ENDPOINT_OVERRIDE = "{gcs_gate.url}"\n')
    monkeypatch.setenv("DQLCTL_HOME", str(home))
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", SECRET)
    return home


def bindings_of(gce: FakeGce, email: str) -> dict[str, list[str]]:
    """bucket -> the roles ``email`` holds there, from the policies the fake server was sent."""
    member = f"serviceAccount:{email}"
    found = {b: [x["role"] for x in p["bindings"] if member in x["members"]]
             for b, p in gce.bucket_policies.items()}
    return {b: roles for b, roles in found.items() if roles}


def may_delete_itself(gce: FakeGce, zone: str, name: str, email: str) -> bool:
    """Whether the instance's IAM policy binds ``email`` to the custom role that holds
    compute.instances.delete and nothing else (and nothing else to anyone)."""
    (binding,) = gce.instance_policies[(zone, name)]["bindings"]
    role = gce.roles[binding["role"]]
    return binding["members"] == [f"serviceAccount:{email}"] and \
        role["includedPermissions"] == ["compute.instances.delete"]


def launch_args(*extra: str) -> list[str]:
    return ["launch", "--provider", "gcp", "--gpu", "T4:1", "--data", "test_small.csv",
            "--agent-type", "dql", "--command", "train", "--ssh-cidr", CIDR, *extra,
            "--", "--n_envs", "4"]


@pytest.fixture()
def results_bucket(gcs_env: str) -> str:
    """A bucket in fake-gcs-server for the run's results."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="dqlctl-test", credentials=AnonymousCredentials())
    if client.lookup_bucket(BUCKET) is None:    # the server outlives a test (the session's)
        client.create_bucket(BUCKET)
    return f"gs://{BUCKET}/runs"


def test_launch_train_write_to_gcs_and_tear_down(
        home: Path, gce: FakeGce, vm: dict[str, Any], results_bucket: str,
        metadata: FakeGceMetadata, gcs_gate: TokenGate) -> None:
    ctx = Context(home=home)
    args = launch_args("--episodes", "2", "--name", "e2e", "--results-dir", results_bucket,
                       "--json")
    assert main(args, ctx=ctx) == 0
    ctx = Context(home=home)
    (run,) = ctx.registry.list()
    assert run.state == reg.RUNNING, run.reason
    # while it runs: one firewall rule, port 22 from the operator only, for this instance's tag
    rule = gce.firewalls[f"dqlctl-{run.id}"]
    assert rule["sourceRanges"] == [CIDR] and rule["targetTags"] == [f"dqlctl-{run.id}"]
    assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    ((zone, name), raw), = gce.instances.items()
    sched = raw["scheduling"]
    assert (sched["provisioningModel"], sched["instanceTerminationAction"],
            sched["onHostMaintenance"], sched["automaticRestart"]) == \
        ("SPOT", "DELETE", "TERMINATE", False)
    assert raw["machineType"].endswith(f"zones/{zone}/machineTypes/n1-standard-4")
    assert [(a["acceleratorType"].rsplit("/", 1)[-1], a["acceleratorCount"])
            for a in raw["guestAccelerators"]] == [("nvidia-tesla-t4", 1)]
    assert raw["labels"] == {"dqlctl-run": run.id, "dqlctl-owner": ctx.registry_id,
                             "dqlctl-user": owner.os_user()}
    assert raw["tags"]["items"] == [name]
    # the default network's default-allow-ssh (0.0.0.0/0) is shadowed: only the operator gets in
    assert gce.firewalls["default-allow-ssh"]["sourceRanges"] == ["0.0.0.0/0"]
    assert gce.allowed(zone, name, CIDR.split("/")[0], 22)
    assert not gce.allowed(zone, name, "203.0.113.9", 22)
    assert gce.allowed(zone, name, "203.0.113.9", 3389)   # rules dqlctl does not touch stand
    assert run.instance["extra"]["host_keys"] == [vm["host_key"]]  # verified, not trusted
    meta = {i["key"]: i["value"] for i in raw["metadata"]["items"]}
    assert meta["ssh-keys"].startswith("root:ssh-ed25519 ")
    assert meta["block-project-ssh-keys"] == "true"
    # its identity: a service account of its own, allowed objects in the results bucket only,
    # and the deletion of its own instance (a custom role with that permission alone)
    email = f"dqlctl-{run.id}@{gce.project}.iam.gserviceaccount.com"
    assert raw["serviceAccounts"] == [{"email": email, "scopes": [STORAGE_SCOPE, COMPUTE_SCOPE]}]
    assert bindings_of(gce, email) == {BUCKET: ["roles/storage.objectAdmin"]}
    assert may_delete_itself(gce, zone, name, email)
    key = Path(run.instance["extra"]["key_path"])
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert run.instance["extra"]["host_key"] == vm["host_key"]
    assert runs.orphans(ctx, ["gcp"]) == []       # tagged, but a live run owns it

    final = runs.follow(ctx, run)
    assert final.state == reg.SUCCEEDED, final.reason
    # the VM's engine wrote its results to GCS itself, with its service account's token
    # from the metadata server (the gate let nothing else in); nothing was collected
    assert final.instance["extra"]["direct"] is True
    assert metadata.token_requests >= 1
    assert gcs_gate.passed and {(who, bucket) for who, _, bucket in gcs_gate.passed} == \
        {(email, BUCKET)}
    assert final.results_uri == f"{results_bucket}/e2e"
    store, prefix = open_store(final.results_uri)
    events = store.get_bytes(f"{prefix}/events.jsonl").decode().splitlines()
    kinds = [json.loads(x)["event"] for x in events]
    assert kinds.count("episode") == 2 and kinds[-1] == "finished"
    assert gce.leftovers() == NOTHING and not key.exists()
    assert gce.ssh_keys() == ""                   # the VM trusts no key any more
    assert bindings_of(gce, email) == {}
    workdir = Path(final.instance["extra"]["workdir"])
    assert not (workdir / "secrets.env").exists()  # deleted once the supervisor read it
    assert SECRET not in (workdir / "engine.log").read_text()
    assert SECRET.encode() not in (home / "registry.db").read_bytes()


def test_zone_fall_through_scoped_service_account_and_orphans(
        home: Path, gce: FakeGce, capsys: pytest.CaptureFixture[str]) -> None:
    """Pool exhausted in zone a (an operation error), quota in zone b (a 403 on insert):
    the instance lands in zone c; its identity may use the run's bucket and nothing else.
    Launched outside any run, it is an orphan: `ps --orphans` shows it, `down --orphans` ends it."""
    gce.capacity.update({"us-central1-a": "ZONE_RESOURCE_POOL_EXHAUSTED",
                         "us-central1-b": "quotaExceeded"})
    provider = Context(home=home).provider("gcp")
    spec = LaunchSpec(run_id="5ca1ab1e", name="scoped", gpu="L4:1",
                      job=JobSpec(["train"], "test_small.csv", f"gs://{BUCKET}/runs", "x"),
                      tags=owner_tags(home, "5ca1ab1e"), extra={"ssh_cidr": CIDR})
    inst = provider.launch(spec)
    assert inst.extra["zone"] == "us-central1-c" and inst.instance_type == "g2-standard-4"
    inserts = [p.split("/")[6] for m, p, _ in gce.received
               if m == "POST" and p.endswith("/instances")]
    assert inserts == ["us-central1-a", "us-central1-b", "us-central1-c"]
    email = f"dqlctl-5ca1ab1e@{gce.project}.iam.gserviceaccount.com"
    raw = gce.instances[("us-central1-c", "dqlctl-5ca1ab1e")]
    assert raw["serviceAccounts"] == [{"email": email, "scopes": [STORAGE_SCOPE, COMPUTE_SCOPE]}]
    assert may_delete_itself(gce, "us-central1-c", "dqlctl-5ca1ab1e", email)
    assert "guestAccelerators" not in raw or raw["guestAccelerators"] == []  # built into g2
    assert bindings_of(gce, email) == {BUCKET: ["roles/storage.objectAdmin"]}
    assert [i.instance_id for i in provider.list_instances({"dqlctl:run": "5ca1ab1e"})] == \
        ["dqlctl-5ca1ab1e"]
    assert provider.list_instances({"dqlctl:run": "other"}) == []
    # no run in the registry owns it: an orphan, which `down --orphans` removes with all it has
    assert main(["ps", "--orphans", "--provider", "gcp", "--json"], ctx=Context(home=home)) == 0
    found = json.loads(capsys.readouterr().out)
    assert sorted((o["kind"], o["resource_id"], o["owned"]) for o in found) == [
        ("firewall", "dqlctl-5ca1ab1e", True), ("firewall", "dqlctl-5ca1ab1e-deny-ssh", True),
        ("instance", inst.instance_id, True), ("service-account", email, True)]
    assert {o["tags"]["dqlctl:run"] for o in found} == {"5ca1ab1e"}
    assert main(["down", "--orphans", "--provider", "gcp", "--yes"], ctx=Context(home=home)) == 0
    assert gce.leftovers() == NOTHING
    provider.terminate(inst)                       # idempotent
    assert provider.describe(inst).state == "terminated"


def test_no_capacity_anywhere_fails_cleanly(home: Path, gce: FakeGce,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for zones in gce.regions.values():
        for zone in zones:
            gce.capacity[zone] = "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert main(launch_args("--episodes", "2"), ctx=Context(home=home)) == 3
    err = capsys.readouterr().err
    assert "no capacity for n1-standard-4 in us-central1 (" in err and "us-central1-c" in err
    assert "europe-west4 (europe-west4-a: ZONE_RESOURCE_POOL_EXHAUSTED" in err
    (run,) = Context(home=home).registry.list()
    assert run.state == reg.FAILED
    assert gce.leftovers() == NOTHING
    assert not list((home / "keys").glob("*"))


def test_a_region_without_capacity_fails_over_to_the_next_one(
        home: Path, gce: FakeGce, capsys: pytest.CaptureFixture[str]) -> None:
    """Every zone of the default region is exhausted: the run lands in the next region that
    offers a T4 (by the catalog's GPU price) and its history says why; nothing stays behind."""
    for zone in gce.regions["us-central1"]:
        gce.capacity[zone] = "ZONE_RESOURCE_POOL_EXHAUSTED"
    ctx = Context(home=home)
    assert main(launch_args("--episodes", "2"), ctx=ctx) == 0
    (run,) = ctx.registry.list()
    assert run.region == "europe-west4" and run.state == reg.RUNNING
    events = ctx.registry.events(run.id)
    refused = [(e["data"]["region"], e["data"]["zone"], e["data"]["code"])
               for e in events if e["kind"] == "capacity"]
    assert refused == [("us-central1", z, "ZONE_RESOURCE_POOL_EXHAUSTED")
                       for z in gce.regions["us-central1"]]
    (move,) = [e["data"] for e in events if e["kind"] == "failover"]
    assert move["to"] == "europe-west4" and move["from"] == ["us-central1"]
    capsys.readouterr()
    assert main(["show", run.id], ctx=ctx) == 0
    shown = capsys.readouterr().out
    assert "capacity  (gcp us-central1/us-central1-a n1-standard-4: " \
           "ZONE_RESOURCE_POOL_EXHAUSTED)" in shown
    assert "failover  (no capacity in us-central1: trying europe-west4)" in shown
    assert main(["down", run.id, "--yes"], ctx=ctx) == 0
    assert gce.leftovers() == NOTHING


def test_dry_run_check_and_missing_credentials_exit_3(
        home: Path, gce: FakeGce, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(launch_args("--dry-run"), ctx=Context(home=home)) == 0
    out = capsys.readouterr().out
    assert "n1-standard-4" in out and CIDR in out and "spot" in out and "nvidia-tesla-t4" in out
    assert gce.leftovers() == NOTHING and Context(home=home).registry.list() == []
    assert main(["check", "gcp"], ctx=Context(home=home)) == 0
    capsys.readouterr()
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    assert main(launch_args("--episodes", "2"), ctx=Context(home=home)) == 3
    err = capsys.readouterr().err
    assert "no Google Cloud credentials" in err and "GOOGLE_APPLICATION_CREDENTIALS" in err
    assert err.strip().splitlines()[-1].startswith("dqlctl: error: gcp: credentials: ")
    assert Context(home=home).registry.list() == []  # refused before any run was recorded
    assert main(["check", "gcp"], ctx=Context(home=home)) == 3
    assert gce.leftovers() == NOTHING


def test_the_vm_deletes_itself_when_its_controller_is_gone(
        home: Path, gce: FakeGce, vm: dict[str, Any], metadata: FakeGceMetadata) -> None:
    """The operator's dqlctl dies mid-run: the run ends on the VM, nobody collects, and after
    the collect grace the VM deletes its own instance (boot disk and all) with its service
    account's token from the metadata server, not the operator's: nothing is left stopped."""
    release = hold_in(home, 1)    # the engine waits mid-episode 2 until the controller is dead
    run = controller_killed_mid_run(home, launch_args(
        "--episodes", "3", "--name", "alone", "--collect-grace", "0.05", "--follow"), "alone")
    release.touch()
    workdir = Path(run.instance["extra"]["workdir"])

    zone, name = run.instance["extra"]["zone"], run.instance_ids[0]
    email = f"dqlctl-{run.id}@{gce.project}.iam.gserviceaccount.com"
    deadline = time.monotonic() + 300
    while any(i["name"] == name for i in gce.live_instances()):
        assert time.monotonic() < deadline, "the VM did not delete itself"
        time.sleep(0.2)
    assert gce.deleted_by[(zone, name)] == email       # with the VM's own identity
    assert metadata.token_requests >= 1
    deleted_itself_record(workdir, Path(vm["root"]))   # no shutdown fallback was needed
    # what the VM cannot remove (its firewall rules, its service account) goes with `down`
    assert main(["down", run.id, "--yes"], ctx=Context(home=home)) == 0
    assert gce.leftovers() == NOTHING


def test_self_delete_takes_the_vms_token_for_its_own_instance_only(
        home: Path, gce: FakeGce, metadata: FakeGceMetadata, tmp_path: Path) -> None:
    """providers.selfdelete as the VM runs it: refused (exit 1, instance kept) while the
    instance's policy does not let its account delete it, and for anything but that delete;
    accepted once it does, and the instance goes."""
    provider = Context(home=home).provider("gcp")
    spec = LaunchSpec(run_id="5e1fde1e", name="self", gpu="T4:1",
                      job=JobSpec(["train"], "test_small.csv", str(tmp_path / "out"), "x"),
                      tags=owner_tags(home, "5e1fde1e"), extra={"ssh_cidr": CIDR})
    inst = provider.launch(spec)
    zone, email = inst.extra["zone"], f"dqlctl-5e1fde1e@{gce.project}.iam.gserviceaccount.com"
    raw = gce.instances[(zone, inst.instance_id)]
    # no bucket: a service account all the same, with the compute scope only
    assert raw["serviceAccounts"] == [{"email": email, "scopes": [COMPUTE_SCOPE]}]
    assert bindings_of(gce, email) == {}
    while provider.describe(inst).state != "running":
        time.sleep(0.05)
    env = {**os.environ, GCE_METADATA: metadata.url, GCE_COMPUTE: gce.url,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def self_delete() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "providers.selfdelete", "gcp"], env=env,
                              capture_output=True, text=True, timeout=60)

    policy = gce.instance_policies.pop((zone, inst.instance_id))
    refused = self_delete()
    assert refused.returncode == 1 and "HTTP 403" in refused.stdout
    assert (zone, inst.instance_id) in gce.instances
    gce.instance_policies[(zone, inst.instance_id)] = policy
    token = gce.mint_vm_token(zone, inst.instance_id)
    other = subprocess.run(  # the VM's token on anything but its own delete: refused
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
         f"Authorization: Bearer {token}",
         f"{gce.base}/zones/{zone}/instances/{inst.instance_id}"], capture_output=True,
        text=True, timeout=30)
    assert other.stdout == "403"
    done = self_delete()
    assert done.returncode == 0, done.stdout
    assert gce.deleted_by[(zone, inst.instance_id)] == email
    provider.terminate(inst)
    assert gce.leftovers() == NOTHING
