"""Sync that is safe by construction (issue 19), on the real stand-ins.

- Keys are data, never paths: one function (``providers.storage.keys``) maps a key to a local
  path and refuses what would leave the destination; sync, ``--resume``'s fetch and result
  collection from a VM all use it. A conformance case per backend: each holds the unsafe keys
  it can, and a sync to a local folder refuses them (one line, the key named, exit 2, nothing
  written).
- Equal means equal: a same-size rewrite right after a sync, and a destination changed after
  the source, are both copied on every backend pair; ``--update`` keeps the newer-only rule.
- Deletes need a witness: a source that lists nothing is an error, ``--max-delete``, and an
  S3 multipart upload a killed sync left open is listed by ``--dry-run`` and aborted by the
  next sync.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from providers.storage import StorageError, UnsafeKey, check_key, local_path, open_store
from providers.storage.local import LocalStore
from providers.sync import sync
from providers.sync_cli import main
from tests.test_storage_conformance import new_bucket
from tests.test_sync import KINDS, ROOT, SMALL_TREE, copied_keys, location, read_tree, write_tree

MIB = 1024 * 1024


# -- keys are data ------------------------------------------------------------------------------

BAD_KEYS = {
    "../escaped.txt": "'..' segment",
    "results/../../escaped.txt": "'..' segment",
    "a/./b": "'.' segment",
    "/etc/passwd": "absolute",
    "a\\..\\..\\b": "backslash",
    "a//b": "empty path segment",
    "trailing/": "empty path segment",
    "nul\x00.txt": "NUL",
    "bell\x07.txt": "control character",
    "x" * 256: "longer than 255 bytes",
    "/".join(["d" * 200] * 25): "path would be longer",
    "": "empty key",
}


@pytest.mark.parametrize("key", list(BAD_KEYS), ids=range(len(BAD_KEYS)))
def test_unsafe_keys_are_refused_with_the_key_named(key: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeKey) as info:
        local_path(tmp_path, key)
    assert BAD_KEYS[key] in str(info.value) and repr(key) in str(info.value)
    assert info.value.code == 2 and len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("key", ["a.txt", "with space/ü 日本.bin", "..hidden", "a..b/c.",
                                 ".dotfile", "x" * 255, "deep/" * 30 + "leaf"])
def test_safe_keys_map_under_the_root(key: str, tmp_path: Path) -> None:
    path = local_path(tmp_path, key)
    assert path == tmp_path / key and check_key(key) == key


def test_the_local_store_refuses_to_read_write_or_delete_outside_its_root(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.txt").write_bytes(b"keep")
    store = LocalStore(str(root))
    for call in (lambda: store.put_bytes("../escaped.txt", b"x"),
                 lambda: store.get_bytes("../outside.txt"),
                 lambda: store.delete("../outside.txt"),
                 lambda: store.put_bytes("a//b", b"x")):
        with pytest.raises(UnsafeKey):
            call()
    assert not (tmp_path / "escaped.txt").exists()
    assert (tmp_path / "outside.txt").read_bytes() == b"keep"
    assert list(root.iterdir()) == []


# Unsafe keys each backend can hold (found on the stand-ins): S3 and GCS keep any key; Azure
# (its SDK normalises dot segments, Azurite turns "\" into "/") keeps "/abs" and "a//b"; a
# local disk can hold a backslash in a file name.
HOSTILE = {
    "s3": ["results/../../escaped.txt", "results//abs.txt", "results/a\\..\\b.txt"],
    "gcs": ["results/../../escaped.txt", "results//abs.txt", "results/./x.txt"],
    "azure": ["results//abs.txt", "results/a//b.txt"],
    "local": ["results/a\\..\\b.txt"],
}


@pytest.mark.parametrize("kind", KINDS)
def test_conformance_a_hostile_key_never_leaves_a_local_destination(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Synced to a local folder, a listing with an unsafe key is refused as a whole: one line
    naming the key, exit 2, nothing written (not even the safe files)."""
    uri = new_bucket(kind, tmp_path, request)
    if kind == "local":
        for key in ["results/ok.txt", *HOSTILE[kind]]:
            path = Path(uri) / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    else:
        store, _ = open_store(uri)
        for key in ["results/ok.txt", *HOSTILE[kind]]:
            store.put_bytes(key, b"x")
        assert {o.key for o in store.list("results/")} >= set(HOSTILE[kind])
    out = tmp_path / "deep" / "er" / "out"
    code = main([uri.rstrip("/") + "/results", str(out), "--delete"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "refusing object key" in err and "nothing was written" in err
    assert any(repr(key[len("results/"):]) in err for key in HOSTILE[kind]), err
    assert not out.exists()
    assert [p for p in tmp_path.rglob("escaped*")] == []
    assert [p for p in tmp_path.rglob("abs.txt")] == []


def test_resume_fetch_refuses_a_hostile_key_before_writing(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from engine.checkpoint import RemoteMirror

    uri = new_bucket("s3", tmp_path, request)
    store, _ = open_store(uri)
    store.put_bytes("exp/events.jsonl", b"{}\n")
    store.put_bytes("exp/../../escaped.txt", b"x")
    local = tmp_path / "a" / "b" / "exp"
    with pytest.raises(UnsafeKey) as info:
        RemoteMirror(uri + "/exp").fetch_all(local)
    assert "../../escaped.txt" in str(info.value)
    assert not local.exists() and list(tmp_path.rglob("escaped.txt")) == []


def test_collect_from_a_vm_refuses_a_name_that_is_not_a_plain_path(
        sshd_vm: Any, tmp_path: Path) -> None:
    """A results file on the VM whose name holds a backslash (or a "../" a hostile server
    could send) is refused before anything is written at home."""
    from providers.ssh import SshSession
    from tests.test_provider_debts import _instance, _vm

    remote = tmp_path / "vm" / "results"
    (remote / "exp").mkdir(parents=True)
    (remote / "exp" / "events.jsonl").write_text("{}\n")
    (remote / "exp" / "evil\\..\\name").write_text("x")
    dest = tmp_path / "home-results"
    vm = _vm(sshd_vm, tmp_path)
    spec = {"job": {"results_dir": str(dest), "experiment": "exp"}}
    with pytest.raises(UnsafeKey):
        vm.collect(_instance(sshd_vm, remote), spec)
    assert not dest.exists()

    real = SshSession.list_tree

    def hostile(self: Any, remote_dir: str) -> list[tuple[str, int]]:
        return [*real(self, remote_dir), ("../../escaped.txt", 1)]

    (remote / "exp" / "evil\\..\\name").unlink()
    SshSession.list_tree = hostile  # type: ignore[method-assign]
    try:
        for results_dir in (str(dest), dest.as_uri()):
            spec = {"job": {"results_dir": results_dir, "experiment": "exp"}}
            with pytest.raises(UnsafeKey):
                vm.collect(_instance(sshd_vm, remote), spec)
    finally:
        SshSession.list_tree = real  # type: ignore[method-assign]
    assert not dest.exists() and list(tmp_path.rglob("escaped.txt")) == []


# -- equal means equal --------------------------------------------------------------------------

def _rewrite(uri: str, rel: str, data: bytes) -> None:
    """Overwrite one file at ``uri`` (a folder or a prefix) the way another writer would."""
    store, key = open_store(uri)
    prefix = key.strip("/") + "/" if key.strip("/") else ""
    try:
        if store.scheme == "file":
            store.path(prefix + rel).write_bytes(data)
        else:
            store.put_bytes(prefix + rel, data)
    finally:
        store.close()


@pytest.mark.parametrize("dst_kind", KINDS)
@pytest.mark.parametrize("src_kind", KINDS)
def test_same_size_rewrites_and_a_changed_destination_are_copied(
        src_kind: str, dst_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    tree = write_tree(tmp_path / "tree", SMALL_TREE)
    src = location(src_kind, tmp_path, request, "src") if src_kind != "local" else str(tree)
    if src_kind != "local":
        assert sync(str(tree), src).ok
    dst = location(dst_kind, tmp_path, request, "dst")
    assert sync(src, dst).copied == len(SMALL_TREE)

    # (a) the source rewritten at once, same size: copied
    _rewrite(src, "a.txt", b"ALPHA\n")
    result = sync(src, dst)
    assert copied_keys(result) == ["a.txt"], (result.files, result.requests)
    assert read_tree(dst)["a.txt"] == b"ALPHA\n"

    # (b) the destination changed later than the source, same size: restored
    _rewrite(dst, "a.txt", b"omega\n")
    result = sync(src, dst)
    assert copied_keys(result) == ["a.txt"], (result.files, result.requests)
    assert read_tree(dst) == {**SMALL_TREE, "a.txt": b"ALPHA\n"}

    # and then nothing more to do
    assert sync(src, dst).copied == 0


def test_update_keeps_the_newer_only_rule(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "tree", SMALL_TREE)
    dst = tmp_path / "dst"
    assert sync(str(tree), str(dst)).ok
    later = time.time() + 10
    (dst / "a.txt").write_bytes(b"newer!")          # newer at DST, same size: kept
    os.utime(dst / "a.txt", (later, later))
    (dst / "new-at-dst.txt").write_bytes(b"1")
    later += 10
    path = tree / "with space" / "b c.csv"
    path.write_bytes(b"changed")
    os.utime(path, (later, later))                  # newer at SRC: copied
    result = sync(str(tree), str(dst), update=True)
    assert copied_keys(result) == ["with space/b c.csv"]
    assert next(f for f in result.files if f.key == "a.txt").reason == "newer"
    assert (dst / "a.txt").read_bytes() == b"newer!"
    # without --update the destination's change is undone
    assert copied_keys(sync(str(tree), str(dst))) == ["a.txt"]


# -- deletes need a witness ---------------------------------------------------------------------

def test_a_mistyped_source_prefix_deletes_nothing(tmp_path: Path,
                                                  request: pytest.FixtureRequest,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``dqlctl sync s3://bkt/reslts s3://bkt/results --delete``: the issue's typo."""
    bucket = new_bucket("s3", tmp_path, request)
    tree = write_tree(tmp_path / "tree", SMALL_TREE)
    assert sync(str(tree), bucket + "/results").ok
    code = main([bucket + "/reslts", bucket + "/results", "--delete"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "lists nothing" in err, err
    assert "--allow-empty-source" in err
    assert read_tree(bucket + "/results") == SMALL_TREE
    # said on purpose: everything goes
    assert main([bucket + "/reslts", bucket + "/results", "--delete",
                 "--allow-empty-source"]) == 0
    assert read_tree(bucket + "/results") == {}
    # an empty local folder is no witness either
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageError, match="lists nothing") as info:
        sync(str(tmp_path / "empty"), str(tmp_path / "out"), delete=True)
    assert info.value.side == "src"


def test_max_delete_refuses_a_plan_that_deletes_more(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    tree = write_tree(tmp_path / "tree", {"keep.txt": b"k"})
    dst = write_tree(tmp_path / "dst", {f"old{i}.txt": b"o" for i in range(5)})
    before = read_tree(str(dst))
    code = main([str(tree), str(dst), "--delete", "--max-delete", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "more than --max-delete 4" in err and "nothing was changed" in err
    assert read_tree(str(dst)) == before               # not even the copy was made
    assert main([str(tree), str(dst), "--delete", "--max-delete", "4", "--dry-run"]) == 2
    assert "would delete old4.txt" in capsys.readouterr().out
    assert main([str(tree), str(dst), "--delete", "--max-delete", "5"]) == 0
    assert read_tree(str(dst)) == {"keep.txt": b"k"}


def test_deletes_at_s3_are_batched(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    dst = location("s3", tmp_path, request)
    tree = write_tree(tmp_path / "tree", {"keep.txt": b"k"})
    extra = write_tree(tmp_path / "extra", {f"x/{i:04d}.txt": b"e" for i in range(1203)})
    assert sync(str(extra), dst).ok
    result = sync(str(tree), dst, delete=True)
    assert result.ok and result.deleted == 1203, result.errors
    assert result.requests["dst"].get("delete_batch") == 2          # 1000 + 203
    assert result.requests["dst"].get("delete", 0) == 0
    assert read_tree(dst) == {"keep.txt": b"k"}


def test_a_killed_multipart_upload_is_listed_then_aborted_by_the_next_sync(
        tmp_path: Path, request: pytest.FixtureRequest, dqlctl_home: Path) -> None:
    from tests.test_sync import _kill_when, _spawn, gcs_to_s3_multipart

    files, gs, s3, bucket, client = gcs_to_s3_multipart(tmp_path, request)
    proc = _spawn(gs, s3)
    _kill_when(proc, lambda: any((dqlctl_home / "uploads").glob("*.json")) and bool(
        client.list_multipart_uploads(Bucket=bucket).get("Uploads")))
    open_ids = [u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket)["Uploads"]]
    assert len(list((dqlctl_home / "uploads").glob("*.json"))) == 1

    plan = sync(gs, s3, dry_run=True)
    assert [u["upload_id"] for u in plan.stale_uploads] == open_ids
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads")     # dry run: kept
    cli = subprocess.run([sys.executable, "-m", "providers.sync_cli", gs, s3, "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ})
    assert "would abort the unfinished upload of r/big.bin" in cli.stdout, cli

    result = sync(gs, s3)
    assert result.ok and [u["upload_id"] for u in result.stale_uploads] == open_ids
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list((dqlctl_home / "uploads").glob("*.json")) == []
    assert read_tree(s3) == files
    # nothing recorded, nothing to ask S3: a no-op makes no uploads request
    again = sync(gs, s3)
    assert again.stale_uploads == [] and "list_uploads" not in again.requests["dst"]
