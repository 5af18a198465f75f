"""Shared fixtures: real local servers for the clouds, started only when a test asks for one.

Session-scoped servers (each starts on first use, on a free port, and is killed at the end):

- ``moto_server`` -> str: the endpoint URL of a moto server (AWS S3, EC2, IAM, ...).
- ``azurite`` -> str: a connection string for an in-memory Azurite blob service.
- ``fake_gcs`` -> str: the endpoint of an in-memory fake-gcs-server (STORAGE_EMULATOR_HOST).
- ``azurite_oauth`` -> :class:`tests.servers.Server`: Azurite over HTTPS in OAuth mode (bearer
  tokens accepted), its self-signed certificate in ``extra['cert']``.
- ``sshd_vm`` -> :class:`tests.servers.SshVm`: an OpenSSH server acting as a VM (host, port,
  username, client key path, the known_hosts line that pins its host key).

Function-scoped environment fixtures point the official SDKs at them through their own
variables, via ``monkeypatch`` (nothing leaks into other tests):

- ``moto_clean`` empties the moto server (``POST /moto-api/reset``); returns its endpoint.
- ``aws_env`` resets moto (``POST /moto-api/reset``) and sets AWS_ENDPOINT_URL + test keys.
- ``gcs_env`` sets STORAGE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT.
- ``azure_env`` sets AZURE_STORAGE_CONNECTION_STRING.
- ``dqlctl_home`` sets DQLCTL_HOME to a fresh temporary folder.
- ``iam_moto`` -> dict: a moto server of the test's own that enforces IAM (signatures and
  policies), the environment set to its administrator's keys (``endpoint``, ``key``,
  ``secret``, ``arn``).

A server whose tool is missing fails the test with what to install; nothing is skipped.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

# Tests share few cores; keep BLAS/OpenMP pools small in every process they start. Defaults
# only: a caller's explicit setting wins. (Never import torch here: most tests do not need it.)
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402

from tests import servers  # noqa: E402


@pytest.hookimpl(tryfirst=True)      # before xdist's own hook, which reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``make test`` runs the suite on two workers (pytest-xdist, ``--dist loadgroup``). Each
    file is one unit of work, so its module fixtures (a trained model, a server of its own)
    are made once; a file that names a group of its own (the image files:
    ``containers.IMAGE_GROUP``) shares it. A plain ``pytest`` run (no ``-n``) ignores them."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            file = item.nodeid.split("::", 1)[0]     # tests/test_x.py: unique, unlike a name
            item.add_marker(pytest.mark.xdist_group(file))


def pytest_sessionfinish() -> None:
    """What a session leaves outside its temporary folders goes (in each xdist worker too)."""
    containers = sys.modules.get("tests.containers")
    if containers is not None:
        containers.remove_vm_store()


def _start(start: Callable[[], servers.Server]) -> servers.Server:
    try:
        return start()
    except (servers.MissingTool, servers.ServerFailed) as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL (``http://127.0.0.1:PORT``) of a moto server shared by the session."""
    server = _start(lambda: servers.start_moto(tmp_path_factory.mktemp("moto")))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A connection string for an in-memory Azurite blob service shared by the session."""
    server = _start(lambda: servers.start_azurite(tmp_path_factory.mktemp("azurite")))
    try:
        yield server.extra["connection_string"]
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite_oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    """Azurite over HTTPS with ``--oauth basic`` (it takes bearer tokens too), shared by the
    session: ``url`` (https), ``extra['connection_string']`` and ``extra['cert']`` (the
    self-signed certificate a client must trust, e.g. REQUESTS_CA_BUNDLE)."""
    from tests.token_gate import self_signed

    workdir = tmp_path_factory.mktemp("azurite-oauth")
    cert, key = self_signed(workdir / "tls")
    server = _start(lambda: servers.start_azurite_oauth(workdir, cert, key))
    server.extra["cert"] = str(cert)
    server.extra["key"] = str(key)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint (``http://127.0.0.1:PORT``) of an in-memory fake-gcs-server."""
    server = _start(lambda: servers.start_fake_gcs(tmp_path_factory.mktemp("fake-gcs")))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sshd_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.SshVm]:
    """An OpenSSH server on 127.0.0.1 with its own host key, trusting a generated client key."""
    workdir = tmp_path_factory.mktemp("sshd-vm")
    holder: list[servers.SshVm] = []

    def start() -> servers.Server:
        server, vm = servers.start_sshd(workdir, getpass.getuser())
        holder.append(vm)
        return server

    server = _start(start)
    try:
        yield holder[0]
    finally:
        server.stop()


ADMIN = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@pytest.fixture()
def iam_moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A moto server of its own that enforces IAM as AWS does (the shared one takes any key):
    its three free actions make the operator, an administrator, whose keys then sign every
    request here; a key moto does not know, a wrong signature, or a policy that does not
    allow, is refused."""
    import boto3

    try:
        server = servers.start_moto(tmp_path / "moto-iam", free_actions=3)
    except (servers.MissingTool, servers.ServerFailed) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        iam = boto3.client("iam", endpoint_url=server.url, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        user = iam.create_user(UserName="operator")["User"]
        iam.put_user_policy(UserName="operator", PolicyName="admin",
                            PolicyDocument=json.dumps(ADMIN))
        key = iam.create_access_key(UserName="operator")["AccessKey"]
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        # boto3's default session keeps the keys it first found (another test's): a new one
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
        yield {"endpoint": server.url, "key": key["AccessKeyId"],
               "secret": key["SecretAccessKey"], "arn": user["Arn"]}
    finally:
        server.stop()


@pytest.fixture()
def moto_clean(moto_server: str) -> str:
    """Empty the shared moto server before the test; returns its endpoint."""
    servers.moto_reset(moto_server)
    return moto_server


@pytest.fixture()
def aws_env(moto_clean: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3 pointed at a freshly reset moto server through AWS_ENDPOINT_URL; the endpoint."""
    servers.point_aws(monkeypatch, moto_clean)
    return moto_clean


@pytest.fixture()
def gcs_env(fake_gcs: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """google-cloud-storage pointed at fake-gcs-server (STORAGE_EMULATOR_HOST); the endpoint."""
    servers.point_gcs(monkeypatch, fake_gcs)
    return fake_gcs


@pytest.fixture()
def azure_env(azurite: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """azure-storage-blob pointed at Azurite (AZURE_STORAGE_CONNECTION_STRING); the string."""
    servers.point_azure(monkeypatch, azurite)
    return azurite


@pytest.fixture()
def dqlctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty DQLCTL_HOME for the test."""
    home = tmp_path / "dqlctl-home"
    home.mkdir()
    monkeypatch.setenv("DQLCTL_HOME", str(home))
    return home
