"""Azure end to end: the official azure-mgmt-* clients against a local ARM server, a real sshd as
the VM.

``tests/fake_azure.py`` answers the ARM REST shapes (long-running operations polled through
``Azure-AsyncOperation``/``Location``, 404s, ``SkuNotAvailable`` and allocation failures).
Credentials come through ``DefaultAzureCredential`` as in production: an ``az`` on PATH hands out
the fake server's token, as ``az login`` would. The VM stand-in trusts the SSH public keys of
running VMs (its ``AuthorizedKeysCommand`` asks the fake server); dqlctl reaches it through the
documented test hook ``[providers.azure] ssh_host_override``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dqlctl import registry as reg
from dqlctl import runs
from dqlctl.cli import main
from dqlctl.context import Context
from dqlctl.owner import os_user, owner_tags
from providers.base import Instance, JobSpec, LaunchSpec
from providers.ssh import fingerprint
from tests.fake_azure import TOKEN, FakeAzure, serving_arm
from tests.fake_gce import FakeHttpServer, Request, Response
from tests.fake_metadata import FakeAzureImds
from tests.held_engine import hold_in
from tests.token_gate import TokenGate, blob_policy
from tests.vm import controller_killed_mid_run, deleted_itself_record, vm_sshd

CIDR = "198.51.100.7/32"
SECRET = "123456:telegram-secret-token-do-not-leak"
NOTHING: dict[str, list[str]] = {"groups": [], "resources": [], "role_assignments": []}
VM_CONTRIBUTOR = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


@pytest.fixture()
def arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzure]:
    with serving_arm(tmp_path, monkeypatch) as fake:
        yield fake


@pytest.fixture()
def vm(arm: FakeAzure, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with vm_sshd(tmp_path / "vm-disk", arm.keys_url()) as info:
        arm.vm_host_keys = [info["host_key"]]  # printed by cloud-init to the serial console
        yield info


@pytest.fixture()
def imds(arm: FakeAzure) -> Iterator[FakeAzureImds]:
    """IMDS, where the VM finds its managed identity's token and its own resource id."""
    with FakeAzureImds(arm) as server:
        yield server


@pytest.fixture()
def home(tmp_path: Path, arm: FakeAzure, vm: dict[str, Any], imds: FakeAzureImds,
         monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dqlctl-home"
    home.mkdir()
    (home / "config.toml").write_text(
        "[providers.azure]\n"
        f'arm_endpoint = "{arm.url}"\n'
        f'storage_account_id = "/subscriptions/{arm.subscription}/resourceGroups/data/'
        'providers/Microsoft.Storage/storageAccounts/dqlctldata"\n'
        f'ssh_host_override = "127.0.0.1:{vm["port"]}"\n'
        'ssh_user = "root"\n'
        f'remote_root = "{vm["root"]}"\n'
        f'remote_python = "{sys.executable}"\n'
        f'imds_endpoint = "{imds.url}"\n'     # test hook: the VM's metadata service
        "ready_timeout = 60\npoll_interval = 0.05\n")
    monkeypatch.setenv("DQLCTL_HOME", str(home))
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", SECRET)
    return home


def roles_of(arm: FakeAzure, principal: str) -> list[tuple[str, str]]:
    """(scope, role definition id) of every role assignment of ``principal``."""
    return sorted((a["properties"]["scope"], a["properties"]["roleDefinitionId"].rsplit("/")[-1])
                  for a in arm.role_assignments.values()
                  if a["properties"]["principalId"] == principal)


def launch_args(*extra: str) -> list[str]:
    return ["launch", "--provider", "azure", "--gpu", "T4:1", "--data", "test_small.csv",
            "--agent-type", "dql", "--command", "train", "--ssh-cidr", CIDR, *extra,
            "--", "--n_envs", "4"]


def test_launch_train_collect_and_tear_down(home: Path, arm: FakeAzure,
                                            vm: dict[str, Any]) -> None:
    ctx = Context(home=home)
    code = main(launch_args("--episodes", "2", "--name", "e2e", "--max-price", "0.35", "--json"),
                ctx=ctx)
    assert code == 0
    ctx = Context(home=home)
    (run,) = ctx.registry.list()
    assert run.state == reg.RUNNING, run.reason
    group = f"dqlctl-{run.id}"
    assert arm.groups[group.lower()]["tags"] == {
        "dqlctl-run": run.id, "dqlctl-owner": ctx.registry_id, "dqlctl-user": os_user()}
    assert run.instance["extra"]["host_keys"] == [fingerprint(vm["host_key"])]  # serial log
    nsg = next(r for r in arm.resources.values()
               if r["type"] == "Microsoft.Network/networkSecurityGroups")
    (rule,) = nsg["properties"]["securityRules"]
    assert {k: rule["properties"][k] for k in ("sourceAddressPrefix", "destinationPortRange",
                                               "access", "direction", "protocol")} == \
        {"sourceAddressPrefix": CIDR, "destinationPortRange": "22", "access": "Allow",
         "direction": "Inbound", "protocol": "Tcp"}
    props = arm.vm(group, group)["properties"]
    assert (props["priority"], props["evictionPolicy"], props["billingProfile"]["maxPrice"]) \
        == ("Spot", "Delete", 0.35)
    assert props["hardwareProfile"]["vmSize"] == "Standard_NC4as_T4_v3"
    linux = props["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"][0]["keyData"].startswith("ssh-ed25519 ")
    # no container named: its identity may delete its own VM, and nothing else
    identity = arm.vm(group, group)["identity"]
    assert roles_of(arm, identity["principalId"]) == [
        (arm.vm(group, group)["id"], VM_CONTRIBUTOR)]
    assert run.instance["extra"]["host_key"] == vm["host_key"]
    key = Path(run.instance["extra"]["key_path"])
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert runs.orphans(ctx, ["azure"]) == []

    final = runs.follow(ctx, run)
    assert final.state == reg.SUCCEEDED, final.reason
    events = (Path(final.results_uri) / "events.jsonl").read_text().splitlines()
    kinds = [json.loads(x)["event"] for x in events]
    assert kinds.count("episode") == 2 and kinds[-1] == "finished"
    assert arm.leftovers() == NOTHING and not key.exists()
    workdir = Path(final.instance["extra"]["workdir"])
    # once its results were copied home, the VM was told it may go (should terminate fail)
    assert (workdir / "collected").exists()
    assert SECRET not in (workdir / "engine.log").read_text()
    assert SECRET.encode() not in (home / "registry.db").read_bytes()


def test_zone_fall_through_scoped_identity_and_orphans(
        home: Path, arm: FakeAzure, capsys: pytest.CaptureFixture[str]) -> None:
    """SkuNotAvailable in zone 1 (refused at once), ZonalAllocationFailed in zone 2 (the
    operation fails, the VM stays behind Failed and is removed): the VM lands in zone 3, and its
    identity may write to the run's container only. Launched outside any run, it is an orphan:
    `ps --orphans` shows it, `down --orphans` ends it."""
    arm.sku_not_available.add("1")
    arm.allocation_failures["2"] = "ZonalAllocationFailed"
    provider = Context(home=home).provider("azure")
    spec = LaunchSpec(run_id="5ca1ab1e", name="scoped", gpu="A100:1",
                      job=JobSpec(["train"], "test_small.csv", "az://results/runs", "x"),
                      tags=owner_tags(home, "5ca1ab1e"), extra={"ssh_cidr": CIDR})
    inst = provider.launch(spec)
    vm_puts = [b["zones"] for m, p, b in arm.received
               if m == "PUT" and "/virtualMachines/" in p and "roleAssignments" not in p]
    assert vm_puts == [["1"], ["2"], ["3"]] and inst.extra["zone"] == "3"
    raw = arm.vm("dqlctl-5ca1ab1e", "dqlctl-5ca1ab1e")
    assert raw["properties"]["hardwareProfile"]["vmSize"] == "Standard_NC24ads_A100_v4"
    assert raw["properties"]["billingProfile"] == {"maxPrice": -1}
    assert raw["identity"]["type"] == "SystemAssigned"
    assert roles_of(arm, raw["identity"]["principalId"]) == sorted([
        (raw["id"], VM_CONTRIBUTOR),
        (f"/subscriptions/{arm.subscription}/resourceGroups/data/providers/Microsoft.Storage/"
         "storageAccounts/dqlctldata/blobServices/default/containers/results",
         BLOB_DATA_CONTRIBUTOR)])
    found = provider.list_instances({"dqlctl:run": "5ca1ab1e"})
    assert [(i.instance_id, i.spot) for i in found] == [("dqlctl-5ca1ab1e", True)]
    assert provider.list_instances({"dqlctl:run": "other"}) == []
    # no run in the registry owns it: an orphan, which `down --orphans` removes with all it has
    assert main(["ps", "--orphans", "--provider", "azure", "--json"],
                ctx=Context(home=home)) == 0
    found = json.loads(capsys.readouterr().out)
    assert sorted((o["kind"], o["resource_id"], o["owned"]) for o in found) == [
        ("instance", inst.instance_id, True), ("resource-group", "dqlctl-5ca1ab1e", True)]
    assert {o["tags"]["dqlctl:run"] for o in found} == {"5ca1ab1e"}
    assert main(["down", "--orphans", "--provider", "azure", "--yes"],
                ctx=Context(home=home)) == 0
    assert arm.leftovers() == NOTHING               # the role assignment outside the group too
    provider.terminate(inst)                       # idempotent
    assert provider.describe(inst).state == "terminated"


def test_no_capacity_anywhere_fails_cleanly(home: Path, arm: FakeAzure,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    arm.allocation_failures.update({"1": "AllocationFailed", "2": "AllocationFailed",
                                    "3": "ZonalAllocationFailed"})
    assert main(launch_args("--episodes", "2"), ctx=Context(home=home)) == 3
    err = capsys.readouterr().err
    assert "no capacity for Standard_NC4as_T4_v3 in eastus" in err and "zone 3" in err
    (run,) = Context(home=home).registry.list()
    assert run.state == reg.FAILED
    assert arm.leftovers() == NOTHING
    assert not list((home / "keys").glob("*"))


def test_dry_run_check_and_missing_credentials_exit_3(
        home: Path, arm: FakeAzure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(launch_args("--dry-run"), ctx=Context(home=home)) == 0
    out = capsys.readouterr().out
    assert "Standard_NC4as_T4_v3" in out and CIDR in out and "spot" in out
    assert arm.leftovers() == NOTHING and Context(home=home).registry.list() == []
    assert main(["check", "azure"], ctx=Context(home=home)) == 0
    capsys.readouterr()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")     # no `az login` any more
    assert main(launch_args("--episodes", "2"), ctx=Context(home=home)) == 3
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("dqlctl: error: azure: credentials: ")
    assert Context(home=home).registry.list() == []  # refused before any run was recorded
    assert "no Azure credentials" in err and "AZURE_CLIENT_ID" in err and "az login" in err
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID")
    assert main(["check", "azure"], ctx=Context(home=home)) == 3
    assert "AZURE_SUBSCRIPTION_ID" in capsys.readouterr().out
    assert arm.leftovers() == NOTHING


@contextmanager
def blob_gate(arm: FakeAzure, home: Path, azurite_oauth: Any,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenGate]:
    """Azure Blob as the VM reaches it: Azurite in OAuth mode (HTTPS) behind a gate that lets
    in only a managed identity's storage token whose principal holds Storage Blob Data
    Contributor on the container (the account is the one of ``storage_account_id``). The VM's
    SDK is pointed at the gate (``[providers.azure.vm_env]``, a test hook) and trusts the
    stand-in's certificate; the operator's side (this process) uses Azurite's shared key."""
    cert = azurite_oauth.extra["cert"]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       azurite_oauth.extra["connection_string"])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    config = home / "config.toml"
    account = re.search(r'storage_account_id = "([^"]+)"', config.read_text()).group(1)  # type: ignore[union-attr]
    with TokenGate(azurite_oauth.url, blob_policy(arm, account),
                   tls=(Path(cert), Path(azurite_oauth.extra["key"])),
                   upstream_ca=Path(cert)) as gate:
        config.write_text(config.read_text() + "[providers.azure.vm_env]\n"
                          f'AZURE_STORAGE_ACCOUNT_URL = "{gate.url}/devstoreaccount1"\n'
                          f'REQUESTS_CA_BUNDLE = "{cert}"\n')
        yield gate


def test_results_land_in_the_runs_blob_container(
        home: Path, arm: FakeAzure, vm: dict[str, Any], imds: FakeAzureImds,
        azurite_oauth: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The VM's engine writes its results to the container itself, with its managed
    identity's token from IMDS: no key or connection string goes to the VM."""
    from azure.storage.blob import BlobServiceClient

    with blob_gate(arm, home, azurite_oauth, monkeypatch) as gate:
        blobs = BlobServiceClient.from_connection_string(
            azurite_oauth.extra["connection_string"])
        if not blobs.get_container_client("results").exists():
            blobs.create_container("results")
        ctx = Context(home=home)
        assert main(launch_args("--episodes", "2", "--name", "toblob", "--results-dir",
                                "az://results/runs"), ctx=ctx) == 0
        (run,) = Context(home=home).registry.list()
        group = f"dqlctl-{run.id}"
        principal = arm.vm(group, group)["identity"]["principalId"]
        final = runs.follow(Context(home=home), run)
        assert final.state == reg.SUCCEEDED, final.reason
        assert final.instance["extra"]["direct"] is True
        assert imds.token_requests >= 1
        assert gate.passed and {(who, c) for who, _, c in gate.passed} == \
            {(principal, "results")}
        assert gate.refused == []
        shipped = Context(home=home).provider("azure").vm_env(Instance.from_dict(
            final.instance))        # what the VM's environment file held
        assert "AZURE_STORAGE_CONNECTION_STRING" not in shipped
        assert not any("AccountKey" in v for v in shipped.values())
        assert shipped["AZURE_TOKEN_CREDENTIALS"] == "ManagedIdentityCredential"
    container = blobs.get_container_client("results")
    names = {b.name for b in container.list_blobs(name_starts_with="runs/toblob/")}
    assert {"runs/toblob/events.jsonl", "runs/toblob/model.pth"} <= names
    events = container.download_blob("runs/toblob/events.jsonl").readall().decode()
    assert [json.loads(x)["event"] for x in events.splitlines()][-1] == "finished"
    assert arm.leftovers() == NOTHING


def test_the_vm_deletes_itself_when_its_controller_is_gone(
        home: Path, arm: FakeAzure, vm: dict[str, Any], imds: FakeAzureImds) -> None:
    """The operator's dqlctl dies mid-run: the run ends on the VM, nobody collects, and after
    the collect grace the VM deletes itself (and its OS disk) through ARM with its managed
    identity's token from IMDS, not the operator's: nothing is left allocated."""
    release = hold_in(home, 1)    # the engine waits mid-episode 2 until the controller is dead
    run = controller_killed_mid_run(home, launch_args(
        "--episodes", "3", "--name", "alone", "--collect-grace", "0.05", "--follow"), "alone")
    release.touch()
    workdir = Path(run.instance["extra"]["workdir"])

    group = f"dqlctl-{run.id}"
    vm_id = arm.vm(group, group)["id"]
    principal = arm.vm(group, group)["identity"]["principalId"]
    deadline = time.monotonic() + 300

    def kinds() -> set[str]:
        with arm.lock:
            return {r["type"] for r in arm.resources.values()}

    while "Microsoft.Compute/virtualMachines" in kinds():
        assert time.monotonic() < deadline, "the VM did not delete itself"
        time.sleep(0.2)
    assert "Microsoft.Compute/disks" not in kinds()           # its OS disk went with it
    assert arm.deleted_by_identity == {vm_id.lower(): principal}   # its own identity
    assert imds.token_requests >= 1
    deleted_itself_record(workdir, Path(vm["root"]))   # no shutdown fallback was needed
    # what the VM cannot remove (its group's network, its role assignment) goes with `down`
    assert main(["down", run.id, "--yes"], ctx=Context(home=home)) == 0
    assert arm.leftovers() == NOTHING


def test_self_delete_needs_the_role_on_its_own_vm(home: Path, arm: FakeAzure,
                                                  imds: FakeAzureImds, tmp_path: Path) -> None:
    """providers.selfdelete as the VM runs it: refused (exit 1, the VM kept) without the role on
    the VM, and the identity's token does nothing else; accepted with it, and the VM goes."""
    provider = Context(home=home).provider("azure")
    spec = LaunchSpec(run_id="5e1fde1e", name="self", gpu="T4:1",
                      job=JobSpec(["train"], "test_small.csv", str(tmp_path / "out"), "x"),
                      tags=owner_tags(home, "5e1fde1e"), extra={"ssh_cidr": CIDR})
    inst = provider.launch(spec)
    group = "dqlctl-5e1fde1e"
    raw = arm.vm(group, group)
    env = {**os.environ, "DQLCTL_AZURE_IMDS_URL": imds.url, "DQLCTL_AZURE_ARM_URL": arm.url,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def self_delete() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "providers.selfdelete", "azure"], env=env,
                              capture_output=True, text=True, timeout=60)

    (key, assignment), = arm.role_assignments.items()
    del arm.role_assignments[key]
    refused = self_delete()
    assert refused.returncode == 1 and "HTTP 403" in refused.stdout
    arm.role_assignments[key] = assignment
    token = arm.mint_identity_token(raw["identity"]["principalId"], "https://management.azure.com/")
    other = subprocess.run(  # the identity's token on anything but its VM's delete: refused
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", "-H",
         f"Authorization: Bearer {token}", f"{arm.url}/subscriptions/{arm.subscription}/"
         f"resourceGroups/{group}?api-version=2022-09-01"],
        capture_output=True, text=True, timeout=30)
    assert other.stdout == "403" and group.lower() in arm.groups
    done = self_delete()
    assert done.returncode == 0, done.stdout
    assert arm.deleted_by_identity == {raw["id"].lower(): raw["identity"]["principalId"]}
    provider.terminate(inst)
    assert arm.leftovers() == NOTHING


class CheckIp(FakeHttpServer):
    """The check-IP service on 127.0.0.1: ``answer`` is the body of every GET (the real one
    answers the caller's address and a newline)."""

    def __init__(self, answer: str) -> None:
        super().__init__()
        self.answer = answer

    def handle(self, req: Request) -> Response:
        return Response(200, self.answer)


@pytest.fixture()
def checkip(monkeypatch: pytest.MonkeyPatch) -> Iterator[CheckIp]:
    """dqlctl asks this stand-in, not https://checkip.amazonaws.com, who is calling."""
    server = CheckIp(f"{OPERATOR}\n")
    server.start()
    monkeypatch.setattr("providers.vm.CHECKIP_URL", server.url + "/")
    for key in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(key, raising=False)
    yield server
    server.stop()


OPERATOR = "203.0.113.41"                   # what the check-IP service says we are


@pytest.fixture()
def cloud_vm(arm: FakeAzure, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A VM stand-in at port 22 of its own loopback address, which the fake hands out as the
    VM's public IP: dqlctl finds it from the cloud's answer, no ``ssh_host_override``."""
    n = int.from_bytes(os.urandom(2), "big")
    address = f"127.{100 + n % 100}.{n // 256 % 250 + 1}.{n % 250 + 1}"
    with vm_sshd(tmp_path / "vm-disk", arm.keys_url(), address=address, port=22) as info:
        arm.vm_host_keys = [info["host_key"]]
        arm.public_address = address
        yield info


def test_the_operators_address_and_the_vms_come_from_the_services(
        arm: FakeAzure, cloud_vm: dict[str, Any], checkip: CheckIp, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """No --ssh-cidr and no SSH host override: port 22 opens to the address the check-IP
    service gives (and nobody else), and dqlctl reaches the VM at the address Azure gives.
    A check-IP answer that is not an address is refused before anything is created."""
    home = tmp_path / "dqlctl-home"
    home.mkdir()
    (home / "config.toml").write_text(
        "[providers.azure]\n"
        f'arm_endpoint = "{arm.url}"\n'
        'ssh_user = "root"\n'
        f'remote_root = "{cloud_vm["root"]}"\n'
        f'remote_python = "{sys.executable}"\n'
        "ready_timeout = 60\npoll_interval = 0.05\n")
    monkeypatch.setenv("DQLCTL_HOME", str(home))
    argv = [a for a in launch_args("--episodes", "2", "--name", "found")
            if a not in ("--ssh-cidr", CIDR)]

    checkip.answer = "<html><body>Sign in to the hotel Wi-Fi</body></html>\n"
    assert main(argv, ctx=Context(home=home)) == 3
    err = capsys.readouterr().err
    assert "not an IP address" in err and "--ssh-cidr" in err and "<html>" in err
    assert arm.leftovers() == NOTHING           # no rule was made from it, nothing was made

    checkip.answer = f"{OPERATOR}\n"
    assert main(argv, ctx=Context(home=home)) == 0
    run = next(r for r in Context(home=home).registry.list() if r.state == reg.RUNNING)
    group = f"dqlctl-{run.id}"
    assert run.instance["public_ip"] == cloud_vm["address"]  # where dqlctl reached it
    assert arm.allowed(group, group, OPERATOR, 22)
    assert not arm.allowed(group, group, "203.0.113.42", 22)          # anyone else
    assert not arm.allowed(group, group, "8.8.8.8", 22)
    assert not arm.allowed(group, group, OPERATOR, 3389)              # another port
    final = runs.follow(Context(home=home), run)
    assert final.state == reg.SUCCEEDED, final.reason
    assert arm.leftovers() == NOTHING


def test_the_fake_keeps_azures_nsg_rules(arm: FakeAzure) -> None:
    """What the Azure fake refuses and adds, as Azure does: user priorities outside 100-4096,
    two rules at one priority; the default rules under every NSG, and how they decide."""
    import urllib.error
    import urllib.request

    group = f"{arm.url}/subscriptions/{arm.subscription}/resourceGroups/g"

    def put(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(f"{group}{path}?api-version=2024-05-01", method="PUT",
                                     data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def rule(name: str, priority: int, source: str = CIDR) -> dict[str, Any]:
        return {"name": name, "properties": {
            "protocol": "Tcp", "access": "Allow", "direction": "Inbound", "priority": priority,
            "sourceAddressPrefix": source, "sourcePortRange": "*",
            "destinationAddressPrefix": "*", "destinationPortRange": "22"}}

    assert put("", {"location": "eastus"})[0] == 201
    nsg = "/providers/Microsoft.Network/networkSecurityGroups/n"
    for bad in (99, 4097, 65000):
        status, body = put(nsg, {"location": "eastus", "properties": {
            "securityRules": [rule("ssh", bad)]}})
        assert (status, body["error"]["code"]) == (400, "SecurityRuleInvalidPriority"), bad
    status, body = put(nsg, {"location": "eastus", "properties": {
        "securityRules": [rule("a", 100), rule("b", 100, "192.0.2.1/32")]}})
    assert (status, body["error"]["code"]) == (400, "SecurityRulesConflictingPriority")
    status, body = put(nsg, {"location": "eastus", "properties": {
        "securityRules": [rule("ssh", 4096)]}})
    assert status == 201
    defaults = {(r["name"], r["properties"]["priority"], r["properties"]["access"])
                for r in body["properties"]["defaultSecurityRules"]}
    assert {("AllowVnetInBound", 65000, "Allow"), ("AllowAzureLoadBalancerInBound", 65001,
            "Allow"), ("DenyAllInBound", 65500, "Deny")} <= defaults
    props = arm.resources[f"/subscriptions/{arm.subscription}/resourceGroups/g{nsg}".lower()][
        "properties"]
    vnet = ["10.42.0.0/16"]
    ip = ipaddress.ip_address
    assert arm._nsg_allows(props, ip(CIDR.split("/")[0]), vnet, 22, "Tcp")
    assert not arm._nsg_allows(props, ip("198.51.100.8"), vnet, 22, "Tcp")   # DenyAllInBound
    assert arm._nsg_allows(props, ip("10.42.0.9"), vnet, 3389, "Tcp")        # AllowVnetInBound
    assert arm._nsg_allows(props, ip("168.63.129.16"), vnet, 80, "Tcp")      # the probe
