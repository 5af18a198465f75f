"""Provider debts paid off: bucket IAM through google-cloud-storage, SFTP transfers streamed (not
held in memory), ``check`` asking the container daemon rather than finding a binary, and install
hints that say the command that works for this installation (a source checkout or a package)."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers import base
from providers.base import Instance, JobSpec, LaunchSpec, install_hint
from tests.fake_gce import FakeGce, Request, Response, serving_adc
from tests.servers import SshVm

ROOT = Path(__file__).resolve().parents[1]
CIDR = "198.51.100.7/32"
ROLE = "roles/storage.objectAdmin"


# -- GCS bucket IAM through google-cloud-storage ------------------------------------------------


class RecordingGce(FakeGce):
    """The GCE stand-in, also keeping each bucket-IAM request's query and headers; with
    ``race`` set, another writer changes the policy just before the first PUT lands."""

    def __init__(self) -> None:
        super().__init__()
        self.iam_requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.race = False

    def dispatch(self, req: Request) -> Response:
        if req.path.startswith("/storage/v1/b/") and req.path.endswith("/iam"):
            with self.lock:
                self.iam_requests.append((req.method, req.query, req.headers))
        return super().dispatch(req)

    def bucket_iam_set(self, req: Request, bucket: str) -> Response:
        if self.race:
            self.race = False
            policy = self.bucket_policies[bucket]
            policy["bindings"].append({"role": "roles/storage.objectViewer",
                                       "members": ["user:other@example.com"]})
            policy["etag"] = "CHANGED="
        return super().bucket_iam_set(req, bucket)


@pytest.fixture()
def gce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingGce]:
    with serving_adc(RecordingGce(), tmp_path, monkeypatch) as fake:
        yield fake


def _gcp(gce: FakeGce, home: Path) -> Any:
    from providers.gcp.compute import GcpProvider

    return GcpProvider(home=home, compute_endpoint=gce.url, iam_endpoint=gce.url,
                       storage_endpoint=gce.url, ssh_cidr=CIDR)


def _members(gce: FakeGce, bucket: str) -> dict[str, list[str]]:
    return {b["role"]: sorted(b["members"]) for b in gce.bucket_policies[bucket]["bindings"]}


def test_bucket_iam_is_granted_and_removed_through_the_storage_sdk(
        gce: RecordingGce, tmp_path: Path) -> None:
    """The grant and its removal are google-cloud-storage's ``get_iam_policy(version 3)`` /
    ``set_iam_policy`` against a server answering the real REST shape, not hand-made HTTP."""
    provider = _gcp(gce, tmp_path / "home")
    spec = LaunchSpec(run_id="b0cce7a1", name="iam", gpu="T4:1",
                      job=JobSpec(["train"], "test_small.csv", "gs://bkt/runs", "x"))
    inst = provider.launch(spec)
    email = f"serviceAccount:dqlctl-b0cce7a1@{gce.project}.iam.gserviceaccount.com"
    assert _members(gce, "bkt")[ROLE] == [email]
    provider.terminate(inst)
    assert ROLE not in _members(gce, "bkt")
    assert gce.leftovers()["bucket_members"] == []
    methods = [m for m, _, _ in gce.iam_requests]
    assert methods == ["GET", "PUT", "GET", "PUT"]
    for method, query, headers in gce.iam_requests:
        assert "gccl/" in headers.get("x-goog-api-client", ""), headers  # the storage SDK
        assert headers.get("authorization", "").startswith("Bearer ")
        if method == "GET":
            assert query.get("optionsRequestedPolicyVersion") == "3"


def test_bucket_iam_rereads_a_policy_changed_under_it(gce: RecordingGce,
                                                      tmp_path: Path) -> None:
    """Another writer's change between read and write (a 412 on the stale etag): read again,
    keep their binding, add ours."""
    provider = _gcp(gce, tmp_path / "home")
    gce.race = True
    email = f"dqlctl-5eed0001@{gce.project}.iam.gserviceaccount.com"
    gce.service_accounts[email] = {"email": email}
    provider._edit_bucket_policy("bkt", email, grant=True)
    assert [m for m, _, _ in gce.iam_requests] == ["GET", "PUT", "GET", "PUT"]
    members = _members(gce, "bkt")
    assert members[ROLE] == [f"serviceAccount:{email}"]
    assert members["roles/storage.objectViewer"] == ["user:other@example.com"]
    provider._edit_bucket_policy("bkt", email, grant=False)
    assert ROLE not in _members(gce, "bkt")
    assert "roles/storage.objectViewer" in _members(gce, "bkt")


# -- `dqlctl check`: a container engine counts when its daemon answers ---------------------------


def _fake_engine(bin_dir: Path, name: str, info_exit: int) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\nif [ "$1" = info ]; then exit {info_exit}; fi\nexit 0\n')
    script.chmod(0o755)


def _engine_line(monkeypatch: pytest.MonkeyPatch, bin_dir: Path) -> Any:
    from providers.local.compute import LocalProvider

    monkeypatch.setenv("PATH", str(bin_dir))
    result = LocalProvider().check()
    (item,) = [i for i in result.items if i.name.startswith("container engine")]
    return item


def test_check_says_the_docker_daemon_is_not_answering(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_engine(tmp_path / "bin", "docker", 1)
    item = _engine_line(monkeypatch, tmp_path / "bin")
    assert item.ok  # optional: runs go native
    assert item.detail == ("docker: client found, daemon not answering "
                           "(start it, or use --runtime native)")


def test_check_says_docker_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_engine(tmp_path / "bin", "docker", 0)
    _fake_engine(tmp_path / "bin", "podman", 1)
    item = _engine_line(monkeypatch, tmp_path / "bin")
    assert item.ok
    assert item.detail == "docker: daemon answers; podman: client found, daemon not answering"


def test_check_without_any_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    assert _engine_line(monkeypatch, tmp_path / "bin").detail == \
        "none; runs use --runtime native"


# -- install hints: the command that works for this installation --------------------------------


def _hint_from_copy(tmp_path: Path, pyproject: str | None) -> str:
    """install_hint('aws') from a copy of providers/base.py in a fresh tree, with ``pyproject``
    (its text) beside the package, or none (as in site-packages)."""
    tree = tmp_path / "tree"
    (tree / "providers").mkdir(parents=True)
    (tree / "providers" / "__init__.py").write_text("")
    (tree / "providers" / "base.py").write_text((ROOT / "providers" / "base.py").read_text())
    if pyproject is not None:
        (tree / "pyproject.toml").write_text(pyproject)
    out = subprocess.run(
        [sys.executable, "-c", "from providers.base import install_hint; "
         "print(install_hint('aws'))"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
        text=True, check=True)
    return out.stdout.strip()


def _pip() -> str:
    return (shlex.quote(str(Path(sys.prefix) / "bin" / "pip"))
            if sys.prefix != sys.base_prefix else "pip")


def test_install_hint_from_a_source_checkout(tmp_path: Path) -> None:
    hint = _hint_from_copy(tmp_path, '[project]\nname = "dqlctl"\nversion = "0"\n')
    tree = (tmp_path / "tree").resolve()
    assert hint == f"{_pip()} install -e '{tree}[aws]'"
    # this checkout itself
    assert install_hint("gcp") == f"{_pip()} install -e '{ROOT}[gcp]'"


def test_install_hint_from_an_installed_package(tmp_path: Path) -> None:
    assert _hint_from_copy(tmp_path, None) == f"{_pip()} install 'dqlctl[aws]'"
    # a pyproject.toml of some other project beside the package is no dqlctl checkout
    other = _hint_from_copy(tmp_path / "other", '[project]\nname = "elsewhere"\n')
    assert other == f"{_pip()} install 'dqlctl[aws]'"


def test_install_hint_in_a_pipx_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / "pipx" / "venvs" / "dqlctl"
    venv.mkdir(parents=True)
    (venv / "pipx_metadata.json").write_text("{}")
    monkeypatch.setattr(base, "source_checkout", lambda: None)
    monkeypatch.setattr(sys, "prefix", str(venv))
    assert install_hint("azure") == "pipx install --force 'dqlctl[azure]'"


def test_missing_sdk_messages_use_the_hint() -> None:
    from providers.storage.base import missing_sdk

    assert install_hint("aws") in str(missing_sdk("boto3", "aws", "s3"))


# -- SFTP transfers streamed, not held in memory --------------------------------------------------

BIG = 64 * 2**20
MEMORY_CEILING = 16 * 2**20   # far below the file: a read window plus copy buffers


def _write_random(path: Path, size: int) -> str:
    """A file of ``size`` random bytes; its sha256."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for _ in range(size // 2**20):
            block = os.urandom(2**20)
            digest.update(block)
            fh.write(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def _peak_growth(action: Any) -> int:
    """Bytes of Python memory ``action()`` needed at its peak, above what was in use before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _vm(sshd_vm: SshVm, tmp_path: Path) -> Any:
    """An SshVm provider whose VM is the sshd stand-in (same machine, same files)."""
    from providers.vm import SshVm as VmBase

    class StandIn(VmBase):
        name = "stand-in"
        capabilities = frozenset()

        def describe(self, instance: Instance) -> Instance:
            return instance

    vm = StandIn()
    vm.home = tmp_path / "home"
    vm.ssh_host_override = f"{sshd_vm.host}:{sshd_vm.port}"
    vm.ssh_user = sshd_vm.username
    return vm


def _instance(sshd_vm: SshVm, results_dir: Path) -> Instance:
    return Instance("stand-in", "vm-1", "running", public_ip=sshd_vm.host,
                    extra={"key_path": str(sshd_vm.key_path),
                           "host_key": sshd_vm.host_public_key,
                           "results_dir": str(results_dir)})


@pytest.mark.parametrize("to_store", [False, True], ids=["folder", "store"])
def test_collect_streams_a_big_results_file(sshd_vm: SshVm, tmp_path: Path,
                                            to_store: bool) -> None:
    """A 64 MiB results file comes home intact while Python's peak memory grows by a small
    fraction of it, into a local folder (temp name, renamed) or a store (``put`` streamed)."""
    remote = tmp_path / "vm" / "results"
    want = _write_random(remote / "exp" / "checkpoints" / "big.pt", BIG)
    (remote / "exp" / "events.jsonl").write_text('{"event": "finished"}\n')
    (remote / "exp" / "empty").write_bytes(b"")
    dest = tmp_path / "home-results"
    results_dir = dest.as_uri() if to_store else str(dest)
    vm = _vm(sshd_vm, tmp_path)
    spec = {"job": {"results_dir": results_dir, "experiment": "exp"}}
    growth = _peak_growth(lambda: vm.collect(_instance(sshd_vm, remote), spec))
    assert growth < MEMORY_CEILING, f"peak grew by {growth / 2**20:.1f} MiB"
    got = dest / "exp"
    assert _sha256(got / "checkpoints" / "big.pt") == want
    assert (got / "events.jsonl").read_text() == '{"event": "finished"}\n'
    assert (got / "empty").read_bytes() == b""
    assert sorted(p.name for p in got.rglob("*") if p.is_file()) == \
        ["big.pt", "empty", "events.jsonl"]  # no temp names left behind


class _OddSftp:
    """The calls of paramiko's SFTP client a read window makes, answering from ``data`` in ways
    the protocol allows and this machine's OpenSSH never shows: the newest request first, every
    other read with half the bytes asked, and end of file past the end."""

    def __init__(self, data: bytes) -> None:
        self.data, self.waiting, self.number = data, [], 0

    def _async_request(self, fileobj: Any, t: int, handle: bytes, offset: int,
                       size: int) -> int:
        self.number += 1
        self.waiting.append((self.number, fileobj, int(offset), size))
        return self.number

    def _read_response(self) -> None:
        from paramiko.sftp import CMD_DATA, CMD_STATUS

        num, fileobj, offset, size = self.waiting.pop()
        if offset >= len(self.data):
            fileobj._async_response(CMD_STATUS, None, num)
            return
        size = size if num % 2 else max(1, size // 2)
        answer = type("Msg", (), {"get_string": lambda _: self.data[offset:offset + size]})()
        fileobj._async_response(CMD_DATA, answer, num)

    def _convert_status(self, msg: Any) -> None:
        raise EOFError()


@pytest.mark.parametrize("told", [0, 100_000], ids=["exact", "file-shrank"])
def test_a_download_is_reassembled_from_answers_out_of_order_and_short(told: int) -> None:
    """SftpReader returns the file's bytes in order whatever order and sizes the server's
    answers come in; a file shorter than its listed size ends early (the size check of the
    caller then refuses it), never with bytes made up or repeated."""
    from providers.ssh import SFTP_REQUEST, SftpReader

    data = os.urandom(10 * SFTP_REQUEST + 12345)
    handle = type("File", (), {"handle": b"h", "close": lambda _: None})()
    handle.sftp = _OddSftp(data)
    with SftpReader(handle, len(data) + told, window=4 * SFTP_REQUEST) as reader:
        got = reader.read()
    assert got == data
    assert not handle.sftp.waiting       # every request answered, none left behind


def test_upload_streams_a_big_data_file(sshd_vm: SshVm, tmp_path: Path) -> None:
    """put_file sends a 64 MiB data file without reading it into memory, atomically (a temp
    name renamed) and with its mode set before any byte lands."""
    from providers.ssh import SshSession

    local = tmp_path / "data.csv"
    want = _write_random(local, BIG)
    target = tmp_path / "vm" / "data" / "data.csv"
    target.parent.mkdir(parents=True)
    vm = _vm(sshd_vm, tmp_path)
    with SshSession(vm.ssh_target(_instance(sshd_vm, tmp_path))).connect() as session:
        growth = _peak_growth(lambda: session.put_file(local, str(target), mode=0o644))
    assert growth < MEMORY_CEILING, f"peak grew by {growth / 2**20:.1f} MiB"
    assert _sha256(target) == want
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in target.parent.iterdir()] == ["data.csv"]
