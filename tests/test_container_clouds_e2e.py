"""The containerised engine on GCE and Azure: ``image push`` to the cloud's registry, ``launch
--runtime docker`` on the VM stand-in, which pulls with its own identity and runs the engine,
results straight to the bucket.

* The registry: Debian's docker-registry (tests/containers.py ``start_registry``), reached only
  through tests/registry_gate.py, which admits what the cloud's registry would: on GCP user
  ``oauth2accesstoken`` with a token the fake GCE issued (the operator's may push into an
  existing repository; a VM's may pull where its service account is a reader); on Azure user
  ``00000000-...`` with a refresh token the fake ACR exchange issued (a managed identity's may
  pull where it holds AcrPull). ``[providers.gcp|azure] registry`` names the gate's address.
* GCP: the push makes the Artifact Registry repository through its REST API (tests/fake_gce.py);
  the run's service account is granted ``roles/artifactregistry.reader`` on it, the VM's token
  comes from the metadata server; the engine writes to fake-gcs-server through the GCS gate.
* Azure: the push trades the operator's token at the exchange; the run's identity is granted
  AcrPull on ``registry_id``, its IMDS token exchanged on the VM (``DQLCTL_ACR_EXCHANGE_URL``);
  the engine writes to Azurite through the blob gate (TLS: its CA is mounted into every
  container of the VM's podman, as a VM image would carry it).
* Each VM stand-in's ``docker`` is podman with logins of its own, so it pulls with its own
  login; the VMs share one image store (``containers.vm_store``: the first pull of the
  session fetches the layers, later ones the manifest). The engine image is the one the AWS e2e builds (built once).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dqlctl import registry as reg
from dqlctl.cli import main
from dqlctl.context import Context
from providers.storage import open_store
from tests import containers
from tests.fake_azure import FakeAzure, serving_arm
from tests.fake_gce import FakeGce, serving_adc
from tests.fake_metadata import FakeAzureImds, FakeGceMetadata
from tests.registry_gate import RegistryGate, acr_policy, artifact_policy
from tests.token_gate import TokenGate, blob_policy, gcs_policy
from tests.vm import vm_sshd

CIDR = "198.51.100.7/32"
pytestmark = pytest.mark.xdist_group(containers.IMAGE_GROUP)
UPSTREAM = ("gate", "gate-secret-0451")


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The registry behind the gates; it lets in the gates' own user only."""
    missing = containers.tools_missing()
    assert not missing, f"missing {missing}: `make system-deps` installs them"
    server = containers.start_registry(tmp_path_factory.mktemp("cloud-registry"),
                                       dict([UPSTREAM]))
    yield server.extra["address"]
    server.stop()


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return containers.engine_image(tmp_path_factory.mktemp("podman-build"))


def operator_podman(tmp_path: Path, gate: RegistryGate,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's podman (the store the image was built in) for this test's gate."""
    env = containers.podman_env(tmp_path / "podman", containers.CACHE / "storage", gate.address)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def vm_podman(tmp_path: Path, gate: RegistryGate,
              volumes: list[str] | None = None) -> dict[str, str]:
    return containers.podman_env(tmp_path / "vm-podman", containers.vm_store(), gate.address,
                                 volumes)


def dqlctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str,
                vm: dict[str, Any], settings: dict[str, str],
                vm_env: dict[str, str]) -> Path:
    """dqlctl's home (``DQLCTL_HOME``) whose config points ``provider`` at the stand-ins: the
    VM stand-in (``ssh_host_override``...), ``settings`` and the VM's ``vm_env`` test hook."""
    home = tmp_path / "dqlctl-home"
    home.mkdir()
    table = {"ssh_host_override": f"127.0.0.1:{vm['port']}", "ssh_user": "root",
             "remote_root": str(vm["root"]), "remote_python": sys.executable, **settings}
    (home / "config.toml").write_text(
        f"[providers.{provider}]\nready_timeout = 60\npoll_interval = 0.1\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
        + f"[providers.{provider}.vm_env]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in vm_env.items()))
    monkeypatch.setenv("DQLCTL_HOME", str(home))
    return home


def push(provider: str, home: Path, built: dict[str, Any], capsys: Any) -> dict[str, Any]:
    """``image push`` of the built image, by a tag of this test's own (the store is shared
    with other checkouts' tests, which may tag ``dqlctl-engine:test`` meanwhile)."""
    tag = f"localhost/dqlctl-engine:{provider}-{os.getpid()}"
    containers.podman({k: os.environ[k] for k in containers.PODMAN_VARS}, "tag", built["id"],
                      tag)
    capsys.readouterr()
    assert main(["image", "push", "--provider", provider, "--engine", "podman", "--tag", tag,
                 "--json"], ctx=Context(home=home)) == 0
    return dict(json.loads(capsys.readouterr().out))


def launch(provider: str, results: str) -> list[str]:
    """Two episodes, the image ``image push`` remembered (pinned by digest)."""
    return ["launch", "--provider", provider, "--gpu", "T4:1", "--data", "test_small.csv",
            "--agent-type", "dql", "--command", "train", "--ssh-cidr", CIDR, "--runtime",
            "docker", "--results-dir", results, "--name", "boxed", "--episodes", "2",
            "--follow"]


def pulled(vm: dict[str, str], gate: RegistryGate, pinned: str) -> bool:
    """The VM holds the pushed digest and, logged out again, no registry token on its disk
    (that it logged in with its own identity, the gate's ``pulled_by`` shows)."""
    auth = json.loads(Path(vm["REGISTRY_AUTH_FILE"]).read_text())
    found = containers.podman(vm, "image", "inspect", "--format", "{{json .RepoDigests}}",
                              pinned)
    return gate.address not in auth.get("auths", {}) and pinned in json.loads(found.stdout)


def finished(results_uri: str) -> bool:
    """The bucket holds the run's two episodes, its end and its model."""
    store, prefix = open_store(results_uri)
    events = store.get_bytes(f"{prefix}/events.jsonl").decode().splitlines()
    kinds = [json.loads(x)["event"] for x in events]
    return kinds.count("episode") == 2 and kinds[-1] == "finished" and \
        store.exists(f"{prefix}/model.pth")


# -- GCP ------------------------------------------------------------------------------------------

BUCKET = "dqlctl-boxed"
LOCATION = "us-central1"


def test_push_to_artifact_registry_pull_with_the_service_account_and_run(
        built: dict[str, Any], upstream: str, fake_gcs: str, gcs_env: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="dqlctl-test", credentials=AnonymousCredentials())
    if client.lookup_bucket(BUCKET) is None:
        client.create_bucket(BUCKET)
    with serving_adc(FakeGce(), tmp_path, monkeypatch) as gce, \
            RegistryGate(upstream, UPSTREAM, artifact_policy(gce, LOCATION)) as ar_gate, \
            FakeGceMetadata(gce) as metadata, TokenGate(fake_gcs, gcs_policy(gce)) as gcs_gate, \
            vm_sshd(tmp_path / "vm-disk", gce.keys_url(), tools={"docker": containers.docker_shim()},
                    env=(podman := vm_podman(tmp_path, ar_gate))) as vm:
        gce.vm_host_keys = [vm["host_key"]]
        operator_podman(tmp_path, ar_gate, monkeypatch)
        home = dqlctl_home(tmp_path, monkeypatch, "gcp", vm, {
            "compute_endpoint": gce.url, "iam_endpoint": gce.url, "storage_endpoint": gce.url,
            "artifact_endpoint": gce.url, "registry": ar_gate.address,
            "metadata_endpoint": metadata.url}, {"API_ENDPOINT_OVERRIDE": gcs_gate.url})

        # push: the repository made through Artifact Registry's API, the bytes in the registry
        pushed = push("gcp", home, built, capsys)
        path = f"{gce.project}/dqlctl/dqlctl-engine"
        repository = f"projects/{gce.project}/locations/{LOCATION}/repositories/dqlctl"
        assert pushed["repository"] == f"{ar_gate.address}/{path}"
        assert pushed["pinned"] == f"{ar_gate.address}/{path}@{pushed['digest']}"
        assert gce.repositories[repository]["format"] == "DOCKER"
        assert ar_gate.passed and {who for who, _, _ in ar_gate.passed} == {"operator"}

        assert main(launch("gcp", f"gs://{BUCKET}/runs"), ctx=Context(home=home)) == 0
        (run,) = Context(home=home).registry.list()
        assert run.state == reg.SUCCEEDED, run.reason
        assert run.spec["image"] == pushed["pinned"]
        # the VM pulled with its service account's token (a reader of that repository only),
        # and the engine in the container wrote to the bucket with the same account
        email = f"dqlctl-{run.id}@{gce.project}.iam.gserviceaccount.com"
        assert ar_gate.pulled_by(email) == {path}
        assert not [r for r in ar_gate.refused if r[0] == email]
        assert pulled(podman, ar_gate, pushed["pinned"])
        assert {who for who, _, _ in gcs_gate.passed} == {email}
        assert run.instance["extra"]["direct"] is True
        assert finished(run.results_uri)
        # the run's grant went with it
        assert gce.repository_readers(repository) == []
        assert gce.leftovers()["service_accounts"] == []
    containers.podman(podman, "rm", "--force", "--all", check=False)


# -- Azure ----------------------------------------------------------------------------------------

CONTAINER = "boxed"


@pytest.fixture()
def arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzure]:
    with serving_arm(tmp_path, monkeypatch) as fake:
        yield fake


def test_push_to_acr_pull_with_the_managed_identity_and_run(
        built: dict[str, Any], arm: FakeAzure, upstream: str, azurite_oauth: Any,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from azure.storage.blob import BlobServiceClient

    registry_id = (f"/subscriptions/{arm.subscription}/resourceGroups/images/providers/"
                   "Microsoft.ContainerRegistry/registries/dqlctltest")
    account = (f"/subscriptions/{arm.subscription}/resourceGroups/data/providers/"
               "Microsoft.Storage/storageAccounts/dqlctldata")
    cert, key = Path(azurite_oauth.extra["cert"]), Path(azurite_oauth.extra["key"])
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       azurite_oauth.extra["connection_string"])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    blobs = BlobServiceClient.from_connection_string(azurite_oauth.extra["connection_string"])
    if not blobs.get_container_client(CONTAINER).exists():
        blobs.create_container(CONTAINER)
    gate = RegistryGate(upstream, UPSTREAM, acr_policy(arm, "", registry_id))
    gate.policy = acr_policy(arm, gate.address, registry_id)   # the exchange's service
    operator_podman(tmp_path, gate, monkeypatch)
    podman = vm_podman(tmp_path, gate, volumes=[str(cert.parent)])
    with gate, FakeAzureImds(arm) as imds, \
            TokenGate(azurite_oauth.url, blob_policy(arm, account), tls=(cert, key),
                      upstream_ca=cert) as blob_gate, \
            vm_sshd(tmp_path / "vm-disk", arm.keys_url(),
                    tools={"docker": containers.docker_shim()}, env=podman) as vm:
        arm.vm_host_keys = [vm["host_key"]]
        home = dqlctl_home(tmp_path, monkeypatch, "azure", vm, {
            "arm_endpoint": arm.url, "storage_account_id": account, "registry": gate.address,
            "registry_id": registry_id, "acr_exchange_endpoint": arm.url,
            "imds_endpoint": imds.url}, {
            "AZURE_STORAGE_ACCOUNT_URL": f"{blob_gate.url}/devstoreaccount1",
            "REQUESTS_CA_BUNDLE": str(cert)})

        pushed = push("azure", home, built, capsys)
        assert pushed["repository"] == f"{gate.address}/dqlctl-engine"
        assert pushed["pinned"] == f"{gate.address}/dqlctl-engine@{pushed['digest']}"
        assert {who for who, _, _ in gate.passed} == {"operator"}

        assert main(launch("azure", f"az://{CONTAINER}/runs"), ctx=Context(home=home)) == 0
        (run,) = Context(home=home).registry.list()
        assert run.state == reg.SUCCEEDED, run.reason
        assert run.spec["image"] == pushed["pinned"]
        principal = run.instance["extra"]["principal_id"]
        assert run.instance["extra"]["registry_id"] == registry_id
        assert gate.pulled_by(principal) == {"dqlctl-engine"}
        assert not [r for r in gate.refused if r[0] == principal]
        assert pulled(podman, gate, pushed["pinned"])
        assert {who for who, _, _ in blob_gate.passed} == {principal}
        assert run.instance["extra"]["direct"] is True
        assert finished(run.results_uri)
        assert not [a for a in arm.role_assignments.values()
                    if re.search("registries/dqlctltest", a["properties"]["scope"])]
    containers.podman(podman, "rm", "--force", "--all", check=False)
