"""``dqlctl sync`` itself, through ``dqlctl.cli.main`` (the other sync tests call the core or
``python -m providers.sync``): every flag the README lists, on local folders, and one round trip
through S3 (moto)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from dqlctl.cli import main
from dqlctl.context import Context


def dqlctl(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), ctx=Context(home=home, stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def sync_json(home: Path, *argv: str, code: int = 0) -> dict[str, Any]:
    got, out, err = dqlctl(home, "sync", *argv, "--json")
    assert got == code, err
    return json.loads(out)


def tree(root: Path, files: dict[str, bytes], mtime: float = 1_600_000_000.0) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
    return root


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def actions(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {f["key"]: (f["action"], f["reason"]) for f in result["files"]}


FILES = {"a.csv": b"1,2,3\n", "b.csv": b"4,5\n", "sub/c.txt": b"hello", "sub/d.csv": b"6\n"}


def test_sync_copies_then_finds_nothing_to_do(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", FILES)
    dst = tmp_path / "dst"
    code, out, err = dqlctl(tmp_path, "sync", str(src), str(dst))
    assert code == 0, err
    assert contents(dst) == FILES
    assert out.splitlines()[-1].startswith("copied 4, skipped 0, deleted 0, ")
    again = sync_json(tmp_path, str(src), str(dst))
    assert (again["copied"], again["skipped"], again["deleted"], again["ok"]) == (0, 4, 0, True)
    assert set(actions(again).values()) == {("skip", "same")}


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", FILES)
    dst = tree(tmp_path / "dst", {"a.csv": b"1,2,3\n", "extra": b"x"})
    code, out, err = dqlctl(tmp_path, "sync", str(src), str(dst), "--dry-run", "--delete")
    assert code == 0, err
    assert sorted(out.splitlines()[:-1]) == [
        "  would copy b.csv  (missing)", "  would copy sub/c.txt  (missing)",
        "  would copy sub/d.csv  (missing)", "  would delete extra  (extra)"]
    assert out.splitlines()[-1].startswith("would copy 3, skipped 1, would delete 1, ")
    assert contents(dst) == {"a.csv": b"1,2,3\n", "extra": b"x"}          # untouched
    plan = sync_json(tmp_path, str(src), str(dst), "--dry-run")
    assert plan["dry_run"] is True and actions(plan)["b.csv"] == ("copy", "missing")
    assert contents(dst) == {"a.csv": b"1,2,3\n", "extra": b"x"}


def test_delete_removes_extras_only_when_asked(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", FILES)
    dst = tree(tmp_path / "dst", {"old.csv": b"old", "sub/old.txt": b"old"})
    kept = sync_json(tmp_path, str(src), str(dst))
    assert kept["deleted"] == 0 and contents(dst) == {**FILES, "old.csv": b"old",
                                                      "sub/old.txt": b"old"}
    gone = sync_json(tmp_path, str(src), str(dst), "--delete")
    assert gone["deleted"] == 2 and gone["delete"] is True
    assert contents(dst) == FILES


def test_checksum_finds_a_change_size_and_time_miss(tmp_path: Path) -> None:
    """Same size, same modification time, other bytes: equal by size+mtime, copied with
    --checksum (the md5 of both sides)."""
    src = tree(tmp_path / "src", {"model.bin": b"AAAA"})
    dst = tree(tmp_path / "dst", {"model.bin": b"BBBB"})
    plain = sync_json(tmp_path, str(src), str(dst))
    assert actions(plain) == {"model.bin": ("skip", "same")}
    assert (dst / "model.bin").read_bytes() == b"BBBB"
    summed = sync_json(tmp_path, str(src), str(dst), "--checksum")
    assert summed["checksum"] is True
    assert [(f["action"], f["reason"], f["compare"]) for f in summed["files"]] == [
        ("copy", "hash", "md5")]
    assert (dst / "model.bin").read_bytes() == b"AAAA"


def test_include_and_exclude_pick_the_files(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", FILES)
    dst = tmp_path / "dst"
    got = sync_json(tmp_path, str(src), str(dst), "--include", "*.csv", "--exclude", "b*")
    assert got["copied"] == 2
    assert contents(dst) == {"a.csv": FILES["a.csv"], "sub/d.csv": FILES["sub/d.csv"]}
    # an excluded file at DST is not an extra: --delete leaves it
    (dst / "keep.txt").write_text("mine")
    got = sync_json(tmp_path, str(src), str(dst), "--exclude", "*.txt", "--delete")
    assert "keep.txt" not in actions(got) and (dst / "keep.txt").read_text() == "mine"
    assert contents(dst)["b.csv"] == FILES["b.csv"]


def test_max_delete_refuses_a_plan_that_deletes_more(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"a": b"1"})
    dst = tree(tmp_path / "dst", {"x": b"1", "y": b"2", "z": b"3"})
    code, out, err = dqlctl(tmp_path, "sync", str(src), str(dst), "--delete", "--max-delete", "2")
    assert code == 2 and out == ""
    assert "3" in err and "--max-delete" in err and len(err.strip().splitlines()) == 1
    assert contents(dst) == {"x": b"1", "y": b"2", "z": b"3"}              # nothing changed
    got = sync_json(tmp_path, str(src), str(dst), "--delete", "--max-delete", "3")
    assert got["deleted"] == 3 and contents(dst) == {"a": b"1"}
    code, _, err = dqlctl(tmp_path, "sync", str(src), str(dst), "--max-delete", "-1")
    assert code == 2 and "--max-delete must be at least 0" in err


def test_an_empty_source_deletes_nothing_unless_allowed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    dst = tree(tmp_path / "dst", {"x": b"1"})
    code, out, err = dqlctl(tmp_path, "sync", str(src), str(dst), "--delete")
    assert code == 2 and out == ""
    assert "lists nothing" in err and "--allow-empty-source" in err
    assert contents(dst) == {"x": b"1"}
    got = sync_json(tmp_path, str(src), str(dst), "--delete", "--allow-empty-source")
    assert got["deleted"] == 1 and contents(dst) == {}


def test_update_transfers_and_checkers(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"old": b"src", "new": b"src", "a": b"1", "b": b"2"},
               mtime=1_000_000.0)
    dst = tree(tmp_path / "dst", {"old": b"dst"}, mtime=2_000_000.0)       # newer at DST
    tree(dst, {"new": b"dst"}, mtime=500_000.0)                            # older at DST
    got = sync_json(tmp_path, str(src), str(dst), "--update", "--transfers", "2",
                    "--checkers", "3")
    assert (got["update"], got["transfers"], got["checkers"]) == (True, 2, 3)
    assert actions(got) == {"a": ("copy", "missing"), "b": ("copy", "missing"),
                            "new": ("copy", "mtime"), "old": ("skip", "newer")}
    assert contents(dst) == {"a": b"1", "b": b"2", "new": b"src", "old": b"dst"}
    for flag in ("--transfers", "--checkers"):
        code, _, err = dqlctl(tmp_path, "sync", str(src), str(dst), flag, "0")
        assert code == 2 and f"{flag} must be at least 1, got 0" in err


def test_sync_through_s3_and_back(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from tests.test_storage_conformance import new_bucket

    bucket = new_bucket("s3", tmp_path, request)
    src = tree(tmp_path / "src", FILES)
    up = sync_json(tmp_path, str(src), f"{bucket}/results")
    assert up["copied"] == 4 and {f["verified"] for f in up["files"]} == {"md5"}
    again = sync_json(tmp_path, str(src), f"{bucket}/results")
    assert again["copied"] == 0 and again["skipped"] == 4
    back = tmp_path / "back"
    down = sync_json(tmp_path, f"{bucket}/results", str(back))
    assert down["copied"] == 4 and contents(back) == FILES
    # a mistyped prefix with --delete: exit 2, nothing deleted at DST
    code, _, err = dqlctl(tmp_path, "sync", f"{bucket}/reslts", str(back), "--delete")
    assert code == 2 and "lists nothing" in err and contents(back) == FILES
