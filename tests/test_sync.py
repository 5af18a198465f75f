"""``sync`` between every pair of stores, on the real stand-ins (moto, fake-gcs-server, Azurite).

Covers: each source/destination pair, the chain local -> s3 -> gs -> az -> local byte for byte,
no-op re-syncs that copy nothing (and HEAD nothing), dry-run, delete (and its refusal after a
failed copy), --checksum, filters, retries with verification, progress, bad inputs (one line,
exit code 2 or 3, nothing changed), and a sync killed with SIGKILL mid-transfer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

import pytest

from providers.storage import MD5, ObjectInfo, StorageError, open_store
from providers.storage.local import LocalStore
from providers.sync import Progress, sync
from providers.sync_cli import main
from tests import servers
from tests.test_storage_conformance import new_bucket

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["local", "s3", "gcs", "azure"]
MIB = 1024 * 1024

SMALL_TREE = {
    "a.txt": b"alpha\n",
    "empty.bin": b"",
    "with space/b c.csv": b"x,y\n1,2\n" * 50,
    "ünï/日本/d.json": b'{"k": "v"}' * 20,
    "deep/1/2/3/4/5/e.dat": bytes(range(256)) * 9,
}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def read_tree(uri: str) -> dict[str, bytes]:
    """Every object under ``uri`` (a folder or prefix), by relative key."""
    store, key = open_store(uri)
    prefix = key.strip("/") + "/" if key.strip("/") else ""
    try:
        return {o.key[len(prefix):]: store.get_bytes(o.key) for o in store.list(prefix)}
    finally:
        store.close()


def location(kind: str, tmp_path: Path, request: pytest.FixtureRequest, sub: str = "r") -> str:
    return new_bucket(kind, tmp_path, request).rstrip("/") + "/" + sub


def copied_keys(result: Any) -> list[str]:
    return sorted(f.key for f in result.files if f.action == "copy")


# -- every pair ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dst_kind", KINDS)
@pytest.mark.parametrize("src_kind", KINDS)
def test_every_pair_copies_then_resync_copies_nothing(src_kind: str, dst_kind: str,
                                                      tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    tree = write_tree(tmp_path / "tree", SMALL_TREE)
    src = location(src_kind, tmp_path, request, "src data")
    dst = location(dst_kind, tmp_path, request, "dst")
    if src_kind != "local":
        assert sync(str(tree), src).ok
    else:
        src = str(tree)
    first = sync(src, dst)
    assert first.ok, first.errors
    assert first.copied == len(SMALL_TREE) and first.skipped == 0
    assert read_tree(dst) == SMALL_TREE
    assert all(f.verified in ("md5", "crc32c", "size") for f in first.files)
    assert {f.compare for f in first.files} == {"none"}        # nothing there to compare

    again = sync(src, dst)
    assert again.ok and again.copied == 0 and again.skipped == len(SMALL_TREE)
    # hashes both listings carry; else the stored source mtime; S3's listing has only its
    # upload time and an ETag: a small local file is hashed and compared with the ETag
    clouds = src_kind != "local" and dst_kind != "local"
    expected = "md5" if clouds or "s3" in (src_kind, dst_kind) else "size+mtime"
    assert again.compare == {expected: len(SMALL_TREE)}, again.compare
    # planned from listings alone: no HEAD per object, nothing transferred
    for side in ("src", "dst"):
        assert again.requests[side].get("stat", 0) == 0, again.requests
        assert again.requests[side].get("read", 0) == 0, again.requests
    assert '"compare": "' + expected in again.to_json()


def test_chain_local_s3_gcs_azure_local_byte_for_byte(tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    files = dict(SMALL_TREE)
    files["big/model.pt"] = os.urandom(17 * MIB)        # above the 16 MiB part threshold
    for i in range(40):
        files[f"many/f{i:03d}.txt"] = f"file {i}\n".encode() * (i + 1)
    tree = write_tree(tmp_path / "results", files)
    s3 = location("s3", tmp_path, request)
    gs = location("gcs", tmp_path, request)
    az = location("azure", tmp_path, request)
    back = tmp_path / "back"
    hops = [(str(tree), s3), (s3, gs), (gs, az), (az, str(back))]
    for src, dst in hops:
        result = sync(src, dst, transfers=4)
        assert result.ok, result.errors
        assert result.copied == len(files), (src, dst)
    assert read_tree(str(back)) == files
    assert {p.relative_to(back).as_posix() for p in back.rglob("*") if p.is_file()} == set(files)
    for src, dst in hops:
        result = sync(src, dst)
        assert result.ok and result.copied == 0, (src, dst, copied_keys(result))
        # S3's multipart object has its md5 in metadata only: one HEAD for it, no more; a big
        # local file's stored time at S3 costs one HEAD (rather than reading the file)
        assert result.requests["src"].get("stat", 0) <= 1
        assert result.requests["dst"].get("stat", 0) == (dst == s3)


# -- options ------------------------------------------------------------------------------------

@pytest.fixture()
def s3_pair(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    return write_tree(tmp_path / "tree", SMALL_TREE), location("s3", tmp_path, request)


def test_dry_run_changes_nothing(s3_pair: tuple[Path, str]) -> None:
    tree, dst = s3_pair
    assert sync(str(tree), dst).ok
    store, key = open_store(dst)
    store.put_bytes(key + "/extra.txt", b"only at dst")
    (tree / "a.txt").write_bytes(b"changed, longer content")
    (tree / "new.txt").write_bytes(b"new")
    before = read_tree(dst)
    plan = sync(str(tree), dst, dry_run=True, delete=True)
    assert plan.dry_run and plan.ok
    actions = {f.key: (f.action, f.reason) for f in plan.files}
    assert actions["a.txt"] == ("copy", "size") and actions["new.txt"] == ("copy", "missing")
    assert actions["extra.txt"] == ("delete", "extra")
    assert plan.copied == 2 and plan.deleted == 1
    assert plan.requests["dst"].get("put", 0) == 0
    assert read_tree(dst) == before


def test_delete_removes_extras_after_copies(s3_pair: tuple[Path, str]) -> None:
    tree, dst = s3_pair
    assert sync(str(tree), dst).ok
    store, key = open_store(dst)
    store.put_bytes(key + "/extra/x.txt", b"1")
    kept = sync(str(tree), dst)                  # without --delete extras stay
    assert kept.deleted == 0 and "extra/x.txt" in read_tree(dst)
    result = sync(str(tree), dst, delete=True)
    assert result.ok and result.deleted == 1 and result.copied == 0
    assert read_tree(dst) == SMALL_TREE


class FlakyLocal(LocalStore):
    """A local source/destination with injected faults."""

    def __init__(self, root: str, fail_read: set[str] | None = None,
                 corrupt_once: set[str] | None = None) -> None:
        super().__init__(root)
        self.fail_read = fail_read or set()
        self.corrupt_once = corrupt_once or set()

    def open_read(self, key: str) -> BinaryIO:
        if key in self.fail_read:
            raise StorageError(f"{key}: permission denied by the provider", code=3)
        return super().open_read(key)

    def put(self, key: str, source: BinaryIO | IO[bytes] | str | Path, *,
            size: int | None = None, mtime: float | None = None,
            md5: str | None = None) -> ObjectInfo:
        info = super().put(key, source, size=size, mtime=mtime, md5=md5)
        if key in self.corrupt_once:             # report what a corrupting service would
            self.corrupt_once.discard(key)
            return ObjectInfo(key, info.size - 1, info.mtime, {MD5: "0" * 32})
        return info


def test_no_delete_when_a_copy_failed(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", SMALL_TREE)
    dst = write_tree(tmp_path / "dst", {"extra.txt": b"keep me"})
    result = sync("src", "dst", delete=True,
                  _stores=(FlakyLocal(str(src), fail_read={"a.txt"}), LocalStore(str(dst))))
    assert not result.ok and result.exit_code == 3 and result.failed == 1
    assert result.deleted == 0 and result.delete_skipped
    assert (dst / "extra.txt").read_bytes() == b"keep me"
    assert "a.txt" in result.errors[0]


def test_a_bad_copy_is_detected_and_retried(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", SMALL_TREE)
    dst = tmp_path / "dst"
    dst.mkdir()
    result = sync("src", "dst", _stores=(LocalStore(str(src)),
                                         FlakyLocal(str(dst), corrupt_once={"a.txt"})))
    assert result.ok, result.errors
    entry = next(f for f in result.files if f.key == "a.txt")
    assert entry.attempts == 2 and entry.error is None
    assert read_tree(str(dst)) == SMALL_TREE


def test_checksum_finds_a_change_size_and_mtime_miss(tmp_path: Path) -> None:
    """Same size, and the old mtime put back: equal by rclone's rule, so only --checksum sees
    it (local to local: no hash in either listing)."""
    tree = write_tree(tmp_path / "tree", SMALL_TREE)
    dst = str(tmp_path / "dst")
    assert sync(str(tree), dst).ok
    path = tree / "a.txt"
    st = path.stat()
    path.write_bytes(b"ALPHA\n")                 # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))     # and the same mtime
    assert sync(str(tree), dst).copied == 0      # size+mtime cannot see it
    result = sync(str(tree), dst, checksum=True)
    assert result.copied == 1 and copied_keys(result) == ["a.txt"]
    entry = next(f for f in result.files if f.key == "a.txt")
    assert (entry.compare, entry.reason) == ("md5", "hash")
    assert read_tree(dst)["a.txt"] == b"ALPHA\n"


def test_s3_etag_finds_a_same_size_rewrite_with_an_older_mtime(
        s3_pair: tuple[Path, str]) -> None:
    """S3's listing has no stored mtime: the small local file is hashed against the ETag."""
    tree, dst = s3_pair
    assert sync(str(tree), dst).ok
    path = tree / "a.txt"
    old = path.stat().st_mtime
    path.write_bytes(b"ALPHA\n")                 # same size
    os.utime(path, (old - 3600, old - 3600))     # and older
    result = sync(str(tree), dst)
    assert copied_keys(result) == ["a.txt"]
    entry = next(f for f in result.files if f.key == "a.txt")
    assert (entry.compare, entry.reason) == ("md5", "hash")
    assert read_tree(dst)["a.txt"] == b"ALPHA\n"


def test_include_exclude(s3_pair: tuple[Path, str]) -> None:
    tree, dst = s3_pair
    result = sync(str(tree), dst, include=["*.csv", "*.txt"], exclude=["a.*"])
    assert copied_keys(result) == ["with space/b c.csv"]
    assert list(read_tree(dst)) == ["with space/b c.csv"]
    # an excluded file at DST is not deleted
    result = sync(str(tree), dst, include=["*.json"], delete=True)
    assert result.deleted == 0 and sorted(read_tree(dst)) == ["with space/b c.csv",
                                                               "ünï/日本/d.json"]


def test_progress_reports_files_bytes_rate_eta(tmp_path: Path,
                                               request: pytest.FixtureRequest) -> None:
    files = {f"p/{i}.bin": os.urandom(64 * 1024) for i in range(30)}
    tree = write_tree(tmp_path / "tree", files)
    seen: list[Progress] = []
    result = sync(str(tree), location("azure", tmp_path, request), progress=seen.append)
    assert result.ok and seen
    last = seen[-1]
    assert (last.files_done, last.files_total) == (30, 30)
    assert last.bytes_done == last.bytes_total == 30 * 64 * 1024
    assert all(p.bytes_done <= p.bytes_total for p in seen)
    assert last.rate > 0 and last.eta == 0


# -- bad inputs: one line, exit 2 or 3, nothing changed -----------------------------------------

def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_inputs_are_one_line_and_change_nothing(
        tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    tree = write_tree(tmp_path / "tree", SMALL_TREE)
    s3 = location("s3", tmp_path, request)
    request.getfixturevalue("gcs_env")
    request.getfixturevalue("azure_env")
    cases = [
        ([str(tree), "ftp://host/x"], 2, "unknown storage scheme"),
        ([str(tree), "s3://no-such-bucket/x"], 2, "does not exist"),
        (["gs://no-such-bucket/x", str(tmp_path / "out")], 2, "does not exist"),
        (["az://no-such-container/x", str(tmp_path / "out")], 2, "does not exist"),
        ([str(tmp_path / "missing"), s3], 2, "does not exist"),
        ([str(tree / "a.txt"), s3], 2, "is a file"),
        ([str(tree), str(tree / "sub")], 2, "overlap"),
        ([s3, s3 + "/inner"], 2, "overlap"),
    ]
    for argv, code, needle in cases:
        got, err = run_main(argv, capsys)
        assert (got, len(err.splitlines())) == (code, 1), (argv, err)
        assert needle in err, (argv, err)
    assert not (tmp_path / "out").exists() and not (tree / "sub").exists()
    assert read_tree(s3) == {}

    # no credentials: exit 3, one line naming what to set
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    got, err = run_main([str(tree), s3], capsys)
    assert got == 3 and "no AWS credentials" in err and len(err.splitlines()) == 1
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    got, err = run_main([str(tree), "az://c/x"], capsys)
    assert got == 3 and "AZURE_STORAGE_CONNECTION_STRING" in err
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    got, err = run_main([str(tree), "gs://b/x"], capsys)
    assert got == 3 and "Google credentials" in err and len(err.splitlines()) == 1


def test_an_unreadable_local_file_is_exit_2_and_nothing_copied(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    s3 = location("s3", tmp_path, request)
    tree = write_tree(tmp_path / "tree", SMALL_TREE)
    (tree / "a.txt").chmod(0o000)
    argv = [sys.executable, "-m", "providers.sync_cli", str(tree), s3]
    if os.geteuid() == 0:       # root reads anything: drop the capabilities that allow it
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to run this test as root"
        argv = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
    (tree / "a.txt").chmod(0o644)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "cannot read" in proc.stderr and "a.txt" in proc.stderr
    assert read_tree(s3) == {}


# -- interrupted ------------------------------------------------------------------------------

def _spawn(src: str, dst: str) -> subprocess.Popen[bytes]:
    """The sync CLI whose big file stalls after 20 of its 24 MiB until Ctrl+C or a kill
    (tests/stalled_sync.py): it is always still on the way when the test acts."""
    return subprocess.Popen([sys.executable, "-m", "tests.stalled_sync", src, dst, "--transfers",
                             "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=servers.interruptible)


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool],
               timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"sync ended before it could be killed: {proc.stderr!r}"
        assert time.monotonic() < deadline, "the transfer never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def _whole(found: dict[str, bytes], files: dict[str, bytes]) -> None:
    for key, data in found.items():
        assert hashlib.md5(data).digest() == hashlib.md5(files[key]).digest(), key


def test_sigkill_mid_transfer_leaves_no_partial_object_and_rerun_completes(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """local -> Azure (blocks), Azure -> S3 (multipart), S3 -> local (temp file + rename):
    each sync is killed while its big file is on the way, then run again."""
    import boto3
    from azure.storage.blob import BlobServiceClient

    files = {"big/a.bin": os.urandom(24 * MIB)}
    files.update({f"small/{i:03d}.txt": f"{i}".encode() * 100 for i in range(30)})
    tree = write_tree(tmp_path / "tree", files)
    az = location("azure", tmp_path, request)
    s3 = location("s3", tmp_path, request)
    container, az_prefix = az[len("az://"):].split("/", 1)
    blob = BlobServiceClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"]).get_blob_client(
        container, f"{az_prefix}/big/a.bin")
    bucket = s3[len("s3://"):].split("/")[0]
    client = boto3.client("s3")

    def staged_blocks() -> bool:
        try:
            return bool(blob.get_block_list("uncommitted")[1])
        except Exception:
            return False

    back = tmp_path / "back"
    hops = [
        (str(tree), az, staged_blocks),
        (az, s3, lambda: bool(client.list_multipart_uploads(Bucket=bucket).get("Uploads"))),
        (s3, str(back), lambda: any(back.rglob(".dqlctl-*.tmp"))),
    ]
    for src, dst, in_flight in hops:
        proc = _spawn(src, dst)
        _kill_when(proc, in_flight)
        found = read_tree(dst)
        assert "big/a.bin" not in found and len(found) < len(files), (src, dst)
        _whole(found, files)
        result = sync(src, dst)
        assert result.ok, result.errors
        assert result.copied == len(files) - len(found)
        assert read_tree(dst) == files
    assert list(back.rglob(".dqlctl-*")) == []   # the killed process's temp file is gone


def gcs_to_s3_multipart(tmp_path: Path, request: pytest.FixtureRequest,
                        ) -> tuple[dict[str, bytes], str, str, str, Any]:
    """(files, gs URI, s3 URI, bucket, boto3 client): a big file on GCS whose copy to S3 is a
    multipart upload (GCS streams cannot seek)."""
    import boto3

    files = {"big.bin": os.urandom(24 * MIB), "small.txt": b"s"}
    gs = location("gcs", tmp_path, request)
    assert sync(str(write_tree(tmp_path / "tree", files)), gs).ok
    s3 = location("s3", tmp_path, request)
    return files, gs, s3, s3[len("s3://"):].split("/")[0], boto3.client("s3")


def test_ctrl_c_aborts_uploads_in_flight_and_exits_130(tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    files, gs, s3, bucket, client = gcs_to_s3_multipart(tmp_path, request)
    proc = _spawn(gs, s3)
    deadline = time.monotonic() + 60
    while not client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted
    assert "big.bin" not in read_tree(s3)


def test_python_m_providers_sync_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = write_tree(tmp_path / "tree", SMALL_TREE)
    assert main([str(tree), str(tmp_path / "out"), "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["copied"] == len(SMALL_TREE) and out["ok"] is True
    assert {f["compare"] for f in out["files"]} == {"none"}
    assert main([str(tree), str(tmp_path / "out"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["copied"] == 0 and out["compare"] == {"size+mtime": len(SMALL_TREE)}


def test_the_json_result_holds_every_field_and_is_a_copy() -> None:
    """``--json`` is read by scripts: every field of the result and of each file, as
    ``dataclasses.asdict`` would give them, plus ``ok``; changing the dict leaves the result."""
    import dataclasses

    from providers.sync.records import FileEntry, SyncResult

    result = SyncResult("src", "s3://b/p", False, True, False, 4, copied=1, failed=1,
                        files=[FileEntry("a", "copy", "missing", "md5", 3, "md5", "stream", 2,
                                         "boom")],
                        compare={"md5": 1}, errors=["e"], delete_skipped="a copy failed",
                        stale_uploads=[{"key": "k", "upload_id": "u"}],
                        requests={"dst": {"put": 2}}, refused="too many deletes")
    out = result.to_dict()
    assert out == {**dataclasses.asdict(result), "ok": False}
    assert list(out) == [f.name for f in dataclasses.fields(SyncResult)] + ["ok"]
    out["files"][0]["key"] = "x"
    out["requests"]["dst"]["put"] = 0
    out["stale_uploads"][0]["key"] = "x"
    assert result.files[0].key == "a" and result.requests == {"dst": {"put": 2}}
    assert result.stale_uploads[0]["key"] == "k"


def test_an_error_says_which_end_of_the_sync_it_is_about(tmp_path: Path) -> None:
    """``StorageError.side``: what the sync screen marks (src or dst), from the core itself."""
    src = write_tree(tmp_path / "src", {"a.txt": b"a"})
    (tmp_path / "file").write_bytes(b"x")
    cases = [(str(tmp_path / "missing"), str(tmp_path / "out"), "src"),
             (str(src / "a.txt"), str(tmp_path / "out"), "src"),
             (str(src), str(tmp_path / "file"), "dst"),
             (str(src), "ftp://host/x", "dst"),
             ("ftp://host/x", str(tmp_path / "out"), "src"),
             (str(src), str(src / "inner"), "dst")]
    for a, b, side in cases:
        with pytest.raises(StorageError) as info:
            sync(a, b)
        assert info.value.side == side, (a, b, str(info.value))
    assert not (tmp_path / "out").exists()
