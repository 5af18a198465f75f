"""Each real stand-in server answers its cloud's official SDK (smoke tests of tests/conftest.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests import servers
from tests.servers import SshVm


def test_moto_answers_boto3(aws_env: str) -> None:
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="smoke")
    s3.put_object(Bucket="smoke", Key="a b/ü.txt", Body=b"hi")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="smoke")["Contents"]]
    assert keys == ["a b/ü.txt"]
    assert s3.meta.endpoint_url == aws_env


def test_moto_reset_forgets_state(aws_env: str) -> None:
    """On its own: what this test makes is gone after a reset (it used to rely on the test
    above having left a bucket, and passed vacuously when run alone)."""
    import boto3

    from tests.servers import moto_reset

    s3 = boto3.client("s3")
    assert s3.list_buckets()["Buckets"] == []            # aws_env starts from a reset server
    s3.create_bucket(Bucket="left-over")
    boto3.client("ec2").create_security_group(GroupName="g", Description="d")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["left-over"]
    moto_reset(aws_env)
    assert s3.list_buckets()["Buckets"] == []
    groups = boto3.client("ec2").describe_security_groups()["SecurityGroups"]
    assert [g["GroupName"] for g in groups if g["GroupName"] != "default"] == []


def test_env_fixtures_do_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``aws_env``, ``gcs_env`` and ``azure_env`` set (tests.servers.point_*) is undone
    when their test ends, whatever was set before. On its own: it used to check that no such
    variable was set at its start, which held only when no earlier test (or the caller's own
    shell) had left one, and so depended on the order the tests ran in."""
    monkeypatch.setenv("AWS_PROFILE", "mine")              # the caller's own settings
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-project")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    before = dict(os.environ)
    with pytest.MonkeyPatch.context() as fixture:
        servers.point_aws(fixture, "http://127.0.0.1:1")
        servers.point_gcs(fixture, "http://127.0.0.1:2")
        servers.point_azure(fixture, "UseDevelopmentStorage=true")
        assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
        assert "AWS_PROFILE" not in os.environ             # no profile overrides the endpoint
        assert os.environ["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:2"
        assert os.environ["GOOGLE_CLOUD_PROJECT"] == "dqlctl-test"
        assert os.environ["AZURE_STORAGE_CONNECTION_STRING"] == "UseDevelopmentStorage=true"
    assert dict(os.environ) == before
    assert os.environ["OMP_NUM_THREADS"]                   # conftest's default for every test


def test_azurite_answers_blob_service_client(azure_env: str) -> None:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    container = service.create_container(name)
    container.upload_blob("x/y.txt", b"hello")
    assert [b.name for b in container.list_blobs()] == ["x/y.txt"]
    assert name in [c.name for c in service.list_containers()]


def test_fake_gcs_answers_storage_client(gcs_env: str) -> None:
    from google.cloud import storage

    client = storage.Client()
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    bucket = client.create_bucket(name)
    bucket.blob("deep/ä b.txt").upload_from_string(b"hello")
    blobs = list(client.list_blobs(name))
    assert [b.name for b in blobs] == ["deep/ä b.txt"]
    assert blobs[0].md5_hash and blobs[0].crc32c


def test_sshd_vm_pins_its_host_key_and_runs_commands(sshd_vm: SshVm) -> None:
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(sshd_vm.known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(sshd_vm.host, sshd_vm.port, username=sshd_vm.username,
                   key_filename=str(sshd_vm.key_path), look_for_keys=False, allow_agent=False,
                   timeout=10)
    try:
        _, stdout, _ = client.exec_command("echo hi")
        assert stdout.read().decode().strip() == "hi"
        assert stdout.channel.recv_exit_status() == 0
    finally:
        client.close()
    assert sshd_vm.known_hosts_line.startswith(f"[127.0.0.1]:{sshd_vm.port} ssh-ed25519 ")


def test_sshd_vm_rejects_an_unknown_host_key(sshd_vm: SshVm) -> None:
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        client.connect(sshd_vm.host, sshd_vm.port, username=sshd_vm.username,
                       key_filename=str(sshd_vm.key_path), look_for_keys=False,
                       allow_agent=False, timeout=10)
    client.close()


def test_a_missing_tool_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import servers

    monkeypatch.setattr(servers, "AZURITE_BIN", tmp_path / "nope" / "azurite-blob")
    with pytest.raises(servers.MissingTool, match="make system-deps"):
        servers.start_azurite(tmp_path)
    monkeypatch.setattr(servers, "SSHD", tmp_path / "sshd")
    with pytest.raises(servers.MissingTool, match="openssh-server"):
        servers.start_sshd(tmp_path, "nobody")
