"""The plan of a sync (providers/sync/plan.py), decision by decision: "equal means equal" (same
size and a hash both listings carry, else the source's stored modification time), what a HEAD or
a local hash costs, --checksum, --update, --delete, --include/--exclude, and the refusals made
before anything changes.

The stores are in-memory stand-ins with the shapes the backends list: ``s3`` (only the upload
time in a listing, md5 from a single-part ETag, the stored mtime behind a HEAD), ``gs`` (md5 +
crc32c and the stored mtime in the listing), ``az`` (stored mtime, md5 only when set) and a local
folder (no hash listed, md5 computable). Milliseconds: ``make mutation`` runs these once per
mutant of plan.py. tests/test_sync*.py run the real backends end to end.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from providers.storage import CRC32C, MD5, ObjectInfo, StorageError
from providers.storage.local import LocalStore
from providers.sync import plan
from providers.sync.plan import (
    HASH_NOT_HEAD,
    check_locations,
    dir_prefix,
    list_sides,
    listing,
    location,
    plan_files,
)
from providers.sync.records import Options

BIG = HASH_NOT_HEAD + 1


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Fake:
    """A bucket of objects: ``key -> (data, stored mtime)``; what a listing shows depends on the
    kind of store (see the module docstring)."""

    def __init__(self, scheme: str, objects: dict[str, tuple[bytes, float]] | None = None, *,
                 bucket: str = "bkt", listed_md5: bool = True, size: int | None = None) -> None:
        self.scheme = scheme
        self.bucket = bucket
        self.objects = dict(objects or {})
        self.listed_md5 = listed_md5         # False: a multipart ETag / a blob without MD5
        self.size = size                     # pretend every object has this size
        self.hash_types = {"s3": frozenset({MD5}), "gs": frozenset({MD5, CRC32C}),
                           "az": frozenset({MD5}), "file": frozenset()}[scheme]
        self.computable_hashes = frozenset({MD5}) if scheme == "file" else frozenset()
        self.lists_upload_time = scheme == "s3"  # (providers.storage.Store)
        self.stats: list[str] = []
        self.hashed: list[str] = []
        self.stale: list[object] = []

    def _size(self, data: bytes) -> int:
        return self.size if self.size is not None else len(data)

    def _hashes(self, data: bytes, *, head: bool) -> dict[str, str]:
        if self.scheme == "file":
            return {}
        out = {}
        if self.listed_md5 or (head and self.scheme == "s3"):  # the md5 dqlctl stores
            out[MD5] = md5(data)
        if self.scheme == "gs" and self.listed_md5:
            out[CRC32C] = f"crc-{md5(data)[:8]}"
        return out

    def list(self, prefix: str = ""):  # noqa: ANN201
        for key in sorted(self.objects):
            if key.startswith(prefix):
                data, mtime = self.objects[key]
                upload = self.scheme == "s3"
                yield ObjectInfo(key, self._size(data), 5_000.0 if upload else mtime,
                                 self._hashes(data, head=False), upload_time=upload)

    def stat(self, key: str) -> ObjectInfo:
        self.stats.append(key)
        data, mtime = self.objects[key]
        return ObjectInfo(key, self._size(data), mtime, self._hashes(data, head=True))

    def compute_hash(self, key: str, kind: str) -> str:
        assert self.scheme == "file" and kind == MD5
        self.hashed.append(key)
        return md5(self.objects[key][0])

    def stale_uploads(self, prefix: str) -> list[object]:
        return list(self.stale)


def decide(src: Fake, dst: Fake, **opts: object) -> dict[str, tuple[str, str, str]]:
    """``key -> (action, reason, compare)`` of the plan."""
    options = Options(**opts)  # type: ignore[arg-type]
    s, _ = listing(src, "", options.include, options.exclude)
    d, _ = listing(dst, "", options.include, options.exclude)
    return {f.key: (f.action, f.reason, f.compare) for f in plan_files(src, dst, s, d, options)}


@pytest.mark.parametrize("kind", ["gs", "az"])
def test_a_newer_source_of_the_same_size_is_copied(kind: str) -> None:
    """The stored mtime differs and no hash settles it (blobs without Content-MD5; objects
    whose listing carries no hash): copied ("mtime"). An equal stored time is the same file;
    one within the 1 ms window too."""
    src = Fake(kind, {"a": (b"new!", 2_000.0), "b": (b"same", 1_000.0),
                      "c": (b"clos", 1_000.0)}, listed_md5=False)
    dst = Fake(kind, {"a": (b"old!", 1_000.0), "b": (b"same", 1_000.0),
                      "c": (b"clos", 1_000.0005)}, listed_md5=False)
    assert decide(src, dst) == {"a": ("copy", "mtime", "size+mtime"),
                                "b": ("skip", "same", "size+mtime"),
                                "c": ("skip", "same", "size+mtime")}
    # a destination changed later than its source is copied over as well
    dst.objects["a"] = (b"dst!", 3_000.0)
    assert decide(src, dst)["a"] == ("copy", "mtime", "size+mtime")


def test_a_listed_hash_decides_before_the_time() -> None:
    src = Fake("gs", {"same": (b"abcd", 1.0), "diff": (b"abcd", 1.0), "size": (b"abc", 1.0)})
    dst = Fake("gs", {"same": (b"abcd", 9.0), "diff": (b"wxyz", 1.0), "size": (b"abcd", 1.0)})
    assert decide(src, dst) == {"same": ("skip", "same", "md5"),    # times differ: same bytes
                                "diff": ("copy", "hash", "md5"),    # times equal: other bytes
                                "size": ("copy", "size", "md5")}
    # only crc32c in common (the Azure side has no MD5 here): crc32c decides
    az = Fake("az", {"same": (b"abcd", 1.0)}, listed_md5=False)
    src2 = Fake("gs", {"same": (b"abcd", 1.0)})
    got = decide(src2, az)["same"]
    assert got == ("skip", "same", "size+mtime")   # no common hash: the equal stored time


def test_crc32c_is_used_when_md5_is_missing_on_one_side() -> None:
    src = Fake("gs", {"k": (b"abcd", 1.0)})
    dst = Fake("gs", {"k": (b"abcd", 1.0)})
    s, _ = listing(src, "", (), ())
    d, _ = listing(dst, "", (), ())
    s["k"] = replace(s["k"], hashes={CRC32C: s["k"].hashes[CRC32C]})
    files = plan_files(src, dst, s, d, Options())
    assert [(f.action, f.reason, f.compare) for f in files] == [("skip", "same", "crc32c")]
    d["k"] = replace(d["k"], hashes={**d["k"].hashes, CRC32C: "other"})
    files = plan_files(src, dst, s, d, Options())
    assert [(f.action, f.reason, f.compare) for f in files] == [("copy", "hash", "crc32c")]
    d["k"] = replace(d["k"], size=5)   # sizes differ: the method names the hash both carry
    files = plan_files(src, dst, s, d, Options())
    assert [(f.action, f.reason, f.compare) for f in files] == [("copy", "size", "crc32c")]


def test_a_small_local_file_is_hashed_against_the_s3_etag_with_no_request() -> None:
    local = Fake("file", {"same": (b"abcd", 1.0), "diff": (b"abcd", 1.0)})
    s3 = Fake("s3", {"same": (b"abcd", 7.0), "diff": (b"wxyz", 1.0)})
    assert decide(local, s3) == {"same": ("skip", "same", "md5"),
                                 "diff": ("copy", "hash", "md5")}
    assert s3.stats == [] and sorted(local.hashed) == ["diff", "same"]
    # and the other way (S3 -> local): the local copy is hashed, no HEAD
    local.hashed.clear()
    assert decide(s3, local) == {"same": ("skip", "same", "md5"),
                                 "diff": ("copy", "hash", "md5")}
    assert s3.stats == [] and sorted(local.hashed) == ["diff", "same"]


def test_a_large_local_file_costs_one_head_for_the_stored_time() -> None:
    local = Fake("file", {"same": (b"x", 1_000.0), "newer": (b"y", 2_000.0)}, size=BIG)
    s3 = Fake("s3", {"same": (b"x", 1_000.0), "newer": (b"z", 1_000.0)}, size=BIG,
              listed_md5=False)             # a multipart ETag: no md5 to compare
    assert decide(local, s3) == {"same": ("skip", "same", "size+mtime"),   # not read
                                 "newer": ("copy", "hash", "md5")}    # times differ: read
    assert sorted(s3.stats) == ["newer", "same"] and local.hashed == ["newer"]
    s3.stats.clear()
    local.hashed.clear()
    assert decide(s3, local) == {"same": ("skip", "same", "size+mtime"),
                                 "newer": ("copy", "hash", "md5")}
    assert sorted(s3.stats) == ["newer", "same"] and local.hashed == ["newer"]
    # the newer file with the same bytes: equal, not copied
    local.objects["newer"] = (b"z", 2_000.0)
    local.hashed.clear()
    assert decide(local, s3)["newer"] == ("skip", "same", "md5")


def test_a_small_local_file_against_a_multipart_object_needs_the_head() -> None:
    local = Fake("file", {"k": (b"abcd", 1_000.0)})
    s3 = Fake("s3", {"k": (b"abcd", 1_000.0)}, listed_md5=False)
    assert decide(local, s3) == {"k": ("skip", "same", "size+mtime")}
    assert s3.stats == ["k"] and local.hashed == []


def test_s3_to_s3_reads_both_stored_times() -> None:
    a = Fake("s3", {"same": (b"abcd", 1.0), "newer": (b"abcd", 2.0), "eq": (b"abcd", 2.0)},
             listed_md5=False)
    b = Fake("s3", {"same": (b"wxyz", 1.0), "newer": (b"wxyz", 1.0), "eq": (b"abcd", 1.0)},
             listed_md5=False)
    assert decide(a, b) == {"same": ("skip", "same", "size+mtime"),  # equal stored times
                            "newer": ("copy", "hash", "md5"),        # the HEADs' md5
                            "eq": ("skip", "same", "md5")}
    assert sorted(a.stats) == sorted(b.stats) == ["eq", "newer", "same"]
    # with md5 in the listings the ETags decide, no HEAD at all
    a2, b2 = Fake("s3", {"k": (b"abcd", 1.0)}), Fake("s3", {"k": (b"abcd", 2.0)})
    assert decide(a2, b2) == {"k": ("skip", "same", "md5")}
    assert a2.stats == b2.stats == []


def test_local_to_local_compares_the_bytes_when_the_times_differ(tmp_path: Path) -> None:
    a = Fake("file", {"same": (b"abcd", 1.0), "diff": (b"abcd", 1.0), "eq": (b"qq", 5.0)})
    b = Fake("file", {"same": (b"abcd", 2.0), "diff": (b"wxyz", 2.0), "eq": (b"zz", 5.0)})
    assert decide(a, b) == {"same": ("skip", "same", "md5"), "diff": ("copy", "hash", "md5"),
                            "eq": ("skip", "same", "size+mtime")}   # equal times: not read
    assert "eq" not in a.hashed and "eq" not in b.hashed


def test_checksum_compares_hashes_only() -> None:
    """--checksum: equal times do not make a file equal; a hash both sides can give decides,
    else the size alone (rclone)."""
    local = Fake("file", {"k": (b"abcd", 1.0), "big": (b"y", 1.0)})
    s3 = Fake("s3", {"k": (b"wxyz", 1.0), "big": (b"y", 1.0)}, listed_md5=False)
    got = decide(local, s3, checksum=True)
    assert got["k"] == ("copy", "hash", "md5")          # equal times, other bytes
    assert got["big"] == ("skip", "same", "md5")
    assert sorted(s3.stats) == ["big", "k"]             # the md5 behind a HEAD
    a = Fake("file", {"k": (b"abcd", 1.0)})
    b = Fake("file", {"k": (b"abcd", 9.0)})
    assert decide(a, b, checksum=True) == {"k": ("skip", "same", "md5")}
    b.objects["k"] = (b"abce", 1.0)
    assert decide(a, b, checksum=True) == {"k": ("copy", "hash", "md5")}
    # no hash both sides can give: the size alone
    az = Fake("az", {"k": (b"abcd", 1.0)}, listed_md5=False)
    az.hash_types = frozenset()
    az2 = Fake("az", {"k": (b"wxyz", 9.0)}, listed_md5=False)
    az2.hash_types = frozenset()
    assert decide(az, az2, checksum=True) == {"k": ("skip", "same", "size")}
    assert plan._usable_hashes(az, az2, True) == []
    assert plan._usable_hashes(local, s3, True) == [MD5]
    assert plan._usable_hashes(local, s3, False) == []
    assert plan._usable_hashes(Fake("gs"), Fake("gs"), False) == [MD5, CRC32C]


def test_checksum_skips_the_hash_of_the_destination_when_the_source_has_none() -> None:
    src = Fake("gs", {"k": (b"abcd", 1.0)})
    dst = Fake("gs", {"k": (b"abcd", 1.0)})
    s, _ = listing(src, "", (), ())
    d, _ = listing(dst, "", (), ())
    s["k"] = replace(s["k"], hashes={})
    src.hash_types = frozenset()
    assert plan._compare(src, dst, s["k"], d["k"], [MD5, CRC32C], True) == (True, "size", "same")


def test_update_keeps_the_newer_only_rule() -> None:
    src = Fake("gs", {"newer": (b"abcd", 10.0), "older": (b"abcd", 10.0), "size": (b"a", 10.0),
                      "same": (b"abcd", 10.0), "tol": (b"abcd", 10.9)}, listed_md5=False)
    dst = Fake("gs", {"newer": (b"wxyz", 5.0), "older": (b"wxyz", 12.0), "size": (b"ab", 10.0),
                      "same": (b"wxyz", 10.0), "tol": (b"wxyz", 10.0)}, listed_md5=False)
    assert decide(src, dst, update=True) == {
        "newer": ("copy", "mtime", "size+mtime"),   # a newer source of the same size
        "older": ("skip", "newer", "size+mtime"),   # DST is newer: kept
        "size": ("copy", "size", "size+mtime"),
        "same": ("skip", "same", "size+mtime"),
        "tol": ("skip", "same", "size+mtime"),      # within the 1 s tolerance
    }
    dst.objects["size"] = (b"ab", 11.5)              # newer by more than 1 s: kept, any size
    assert decide(src, dst, update=True)["size"] == ("skip", "newer", "size+mtime")
    dst.objects["size"] = (b"ab", 10.9)              # newer by less: the size decides
    assert decide(src, dst, update=True)["size"] == ("copy", "size", "size+mtime")
    dst.objects["same"] = (b"wxyz", 8.9)             # src newer by 1.1 s
    assert decide(src, dst, update=True)["same"] == ("copy", "mtime", "size+mtime")


def test_missing_files_are_copied_and_extras_deleted_only_with_delete() -> None:
    src = Fake("gs", {"b": (b"1", 1.0), "a": (b"22", 1.0)})
    dst = Fake("gs", {"z": (b"333", 1.0), "y": (b"4", 1.0), "b": (b"1", 1.0)})
    s, _ = listing(src, "", (), ())
    d, _ = listing(dst, "", (), ())
    files = plan_files(src, dst, s, d, Options())
    assert [(f.key, f.action, f.reason, f.compare, f.size) for f in files] == [
        ("a", "copy", "missing", "none", 2), ("b", "skip", "same", "md5", 1)]
    files = plan_files(src, dst, s, d, Options(delete=True))
    assert [(f.key, f.action, f.reason, f.compare, f.size) for f in files] == [
        ("a", "copy", "missing", "none", 2), ("b", "skip", "same", "md5", 1),
        ("y", "delete", "extra", "none", 1), ("z", "delete", "extra", "none", 3)]


def test_pairs_needing_a_request_are_checked_in_threads_with_the_same_verdicts() -> None:
    objects = {f"k{i:02}": (b"abcd", float(i % 2)) for i in range(20)}
    a = Fake("az", objects, listed_md5=False)
    b = Fake("az", {k: (v[0], 0.0) for k, v in objects.items()}, listed_md5=False)
    for checkers in (1, 3, 64):
        got = decide(a, b, checkers=checkers)
        assert got == {k: ("copy", "mtime", "size+mtime") if int(k[1:]) % 2 else
                       ("skip", "same", "size+mtime") for k in objects}


def test_include_and_exclude_select_by_path_or_by_name() -> None:
    keys = ["a.csv", "sub/b.csv", "sub/c.txt", "sub/deep/d.csv", "e.txt"]
    store = Fake("gs", {f"p/{k}": (b"x", 1.0) for k in keys})

    def sel(include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[str]:
        got, listed = listing(store, "p/", include, exclude)
        assert listed == len(keys)                   # every object was listed
        assert all(info.key == f"p/{rel}" for rel, info in got.items())
        return sorted(got)

    assert sel() == sorted(keys)
    assert sel(include=("*.csv",)) == ["a.csv", "sub/b.csv", "sub/deep/d.csv"]  # by name
    assert sel(include=("sub/*.csv",)) == ["sub/b.csv", "sub/deep/d.csv"]       # by path
    assert sel(include=("b.csv",)) == ["sub/b.csv"]
    assert sel(include=("sub/b.csv",)) == ["sub/b.csv"]
    assert sel(exclude=("*.txt",)) == ["a.csv", "sub/b.csv", "sub/deep/d.csv"]
    assert sel(include=("*.csv",), exclude=("sub/deep/*",)) == ["a.csv", "sub/b.csv"]
    assert sel(include=("*.csv", "e.txt")) == ["a.csv", "e.txt", "sub/b.csv", "sub/deep/d.csv"]
    assert sel(exclude=("deep",)) == sorted(keys)        # a name pattern is not a folder
    assert sel(include=("sub",)) == []
    # the prefix itself (a folder marker) is listed but never a file
    store.objects["p/"] = (b"", 1.0)
    got, listed = listing(store, "p/", (), ())
    assert "" not in got and listed == len(keys) + 1


def test_prefixes_and_locations(tmp_path: Path) -> None:
    assert dir_prefix("/a/b/") == "a/b/" and dir_prefix("a") == "a/"
    assert dir_prefix("") == "" and dir_prefix("/") == ""
    assert location(Fake("s3", bucket="bk"), "p/") == "s3://bk/p/"
    local = LocalStore(str(tmp_path))
    assert location(local, "x/y/") == f"file://{tmp_path.resolve()}/x/y/"
    assert location(local, "") == f"file://{tmp_path.resolve()}/"


def test_overlapping_missing_or_file_locations_are_refused(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    (tmp_path / "file").write_text("x")
    root = LocalStore(str(tmp_path))

    def check(src: str, dst: str) -> StorageError:
        with pytest.raises(StorageError) as info:
            check_locations(src, dst, root, dir_prefix(src), root, dir_prefix(dst))
        assert info.value.code == 2
        return info.value

    err = check("src", "src/sub")
    assert "overlap" in str(err) and err.side == "dst"
    assert "overlap" in str(check("src/sub", "src"))
    assert "overlap" in str(check("src", "src"))
    err = check("nope", "dst")
    assert str(err) == "source nope does not exist" and err.side == "src"
    err = check("file", "dst")
    assert "is a file" in str(err) and err.side == "src"
    err = check("src", "file")
    assert str(err) == "destination file is a file, not a folder" and err.side == "dst"
    # what is allowed: siblings with a common name prefix, a missing DST, S3 either side
    check_locations("src", "srcx", root, "src/", root, "srcx/")
    check_locations("src", "new", root, "src/", root, "new/")
    check_locations("s3://bkt/x", "src", Fake("s3"), "x/", root, "src/")
    check_locations("src", "s3://bkt/x", root, "src/", Fake("s3"), "x/")


def test_list_sides_refuses_an_empty_source_and_hostile_keys(tmp_path: Path) -> None:
    pool = ThreadPoolExecutor(3)
    src = Fake("s3", {})
    dst = LocalStore(str(tmp_path))
    with pytest.raises(StorageError, match="lists nothing") as info:
        list_sides(pool, "s3://bkt/typo", src, "typo/", dst, "", Options())
    assert info.value.side == "src" and info.value.code == 2
    got = list_sides(pool, "s3://bkt/typo", src, "typo/", dst, "",
                     Options(allow_empty_source=True))
    assert got == ({}, {}, [])
    # listed objects that are all excluded still witness the source
    src.objects["typo/a.txt"] = (b"x", 1.0)
    assert list_sides(pool, "s3://bkt/typo", src, "typo/", dst, "",
                      Options(exclude=("*.txt",)))[0] == {}
    src.objects["typo/../escape"] = (b"x", 1.0)
    with pytest.raises(StorageError, match=r"\.\./escape") as info:
        list_sides(pool, "s3://bkt/typo", src, "typo/", dst, "", Options())
    assert info.value.side == "src"
    # a hostile key going to another bucket is only a key
    s, d, stale = list_sides(pool, "s3://bkt/typo", src, "typo/", Fake("gs"), "", Options())
    assert sorted(s) == ["../escape", "a.txt"] and d == {} and stale == []
    gs = Fake("gs")
    gs.stale = ["upload"]
    assert list_sides(pool, "x", Fake("s3", {"k": (b"1", 1.0)}), "", gs, "", Options())[2] == [
        "upload"]
    pool.shutdown()


class ListsAfterAHead(Fake):
    """An S3 bucket whose listing is still on its way when the first HEAD arrives: it
    answers only once a HEAD has been asked (or after 10 s, and then says so)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.headed = threading.Event()
        self.heads_before_listing: int | None = None

    def stat(self, key: str) -> ObjectInfo:
        try:
            return super().stat(key)
        finally:
            self.headed.set()

    def list(self, prefix: str = ""):  # noqa: ANN201
        self.headed.wait(timeout=10)
        self.heads_before_listing = len(self.stats)
        yield from super().list(prefix)


def local_files(root: Path, sizes: dict[str, int], mtime: float) -> LocalStore:
    for name, size in sizes.items():
        path = root / name
        path.write_bytes(name.encode().ljust(size, b"."))
        os.utime(path, (mtime, mtime))
    return LocalStore(str(root))


def copies_of(root: Path, names: list[str]) -> dict[str, tuple[bytes, float]]:
    """The objects of an S3 bucket holding what dqlctl uploaded of these files."""
    return {n: (root.joinpath(n).read_bytes(), 1_000.0) for n in names}


def test_the_heads_of_big_files_go_out_while_the_listing_is_on_its_way(tmp_path: Path) -> None:
    # an S3 listing has only upload times: a big model's stored time costs a HEAD, sent
    # beside the listing rather than after it (one round trip, not two, per no-op sync)
    names = ["a.pt", "b.pt", "c.pt"]
    local = local_files(tmp_path, {"edge.bin": HASH_NOT_HEAD} | dict.fromkeys(names, BIG),
                        1_000.0)
    s3 = ListsAfterAHead("s3", copies_of(tmp_path, ["edge.bin", *names]))
    pool = ThreadPoolExecutor(3)
    src, dst, _ = list_sides(pool, str(tmp_path), local, "", s3, "", Options(checkers=2))
    assert s3.heads_before_listing is not None and s3.heads_before_listing >= 1
    # no more HEADs ahead than checkers, and none for a file small enough to hash
    assert sorted(s3.stats) == ["a.pt", "b.pt"]
    entries = plan_files(local, s3, src, dst, Options(checkers=2))
    assert {e.key: (e.action, e.compare) for e in entries} == {
        "edge.bin": ("skip", "md5")} | {n: ("skip", "size+mtime") for n in names}
    assert sorted(s3.stats) == names        # each object HEADed once: none asked twice
    # a file missing at DST wastes its HEAD and is copied; the others' HEADs still count
    del s3.objects["a.pt"]
    s3.stats.clear()
    src, dst, _ = list_sides(pool, str(tmp_path), local, "", s3, "", Options())
    assert "a.pt" not in dst
    entries = plan_files(local, s3, src, dst, Options())
    assert [(e.key, e.action) for e in entries if e.action == "copy"] == [("a.pt", "copy")]
    # b and c HEADed once, early (a's early HEAD may still be on its way: nothing waits for it);
    # edge.bin (exactly HASH_NOT_HEAD bytes) is hashed, never HEADed
    assert s3.stats.count("b.pt") == s3.stats.count("c.pt") == 1
    assert s3.stats.count("a.pt") <= 1 and "edge.bin" not in s3.stats
    # --checksum and --update send none
    for opts in (Options(checksum=True), Options(update=True)):
        plain = Fake("s3", dict(s3.objects))
        list_sides(pool, str(tmp_path), local, "", plain, "", opts)
        assert plain.stats == []
    pool.shutdown()


def test_a_head_the_listing_contradicts_is_not_trusted(tmp_path: Path) -> None:
    # a second operator rewrites a model (same size, other bytes) between the early HEAD and
    # the listing: the HEAD's stored time is the old object's, the listing's ETag the new one's
    local = local_files(tmp_path, {"a.pt": BIG, "b.pt": BIG, "c.pt": BIG}, 1_000.0)

    class RewrittenAfterTheHead(Fake):
        """Answers the HEADs of a.pt and b.pt, then has them rewritten; lists only after
        both (or after 10 s)."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.lock = threading.Lock()
            self.rewritten = threading.Event()

        def stat(self, key: str) -> ObjectInfo:
            with self.lock:
                info = super().stat(key)
                if key == "a.pt" and self.stats.count(key) == 1:       # same size
                    self.objects[key] = (b"x" * BIG, 1_500.0)
                if key == "b.pt" and self.stats.count(key) == 1:       # another size
                    self.objects[key] = (b"y" * (BIG + 5), 1_000.0)
                if {"a.pt", "b.pt"} <= set(self.stats):
                    self.rewritten.set()
                return info

        def list(self, prefix: str = ""):  # noqa: ANN201
            self.rewritten.wait(timeout=10)
            yield from super().list(prefix)

    s3 = RewrittenAfterTheHead("s3", copies_of(tmp_path, ["a.pt", "b.pt", "c.pt"]))
    pool = ThreadPoolExecutor(3)
    src, dst, _ = list_sides(pool, str(tmp_path), local, "", s3, "", Options())
    pool.shutdown()
    assert dst["a.pt"].upload_time and dst["b.pt"].upload_time   # the listing's own entries
    assert not dst["c.pt"].upload_time                            # unchanged: its HEAD holds
    entries = {e.key: (e.action, e.reason) for e in plan_files(local, s3, src, dst, Options())}
    assert entries == {"a.pt": ("copy", "hash"), "b.pt": ("copy", "size"),
                       "c.pt": ("skip", "same")}
    assert sorted(s3.stats) == ["a.pt", "a.pt", "b.pt", "c.pt"]


def test_an_early_head_that_fails_is_asked_again_by_the_plan(tmp_path: Path) -> None:
    local = local_files(tmp_path, {"a.pt": BIG, "b.pt": BIG}, 1_000.0)

    class FailsOnce(ListsAfterAHead):
        def stat(self, key: str) -> ObjectInfo:
            if key == "a.pt" and "a.pt" not in self.stats:
                self.stats.append(key)
                self.headed.set()
                raise StorageError("s3://bkt/a.pt: connection reset", code=3)
            return super().stat(key)

    s3 = FailsOnce("s3", copies_of(tmp_path, ["a.pt", "b.pt"]))
    pool = ThreadPoolExecutor(3)
    src, dst, _ = list_sides(pool, str(tmp_path), local, "", s3, "", Options())
    pool.shutdown()
    assert dst["a.pt"].upload_time and not dst["b.pt"].upload_time
    entries = {e.key: (e.action, e.compare) for e in plan_files(local, s3, src, dst, Options())}
    assert entries == {"a.pt": ("skip", "size+mtime"), "b.pt": ("skip", "size+mtime")}
    assert sorted(s3.stats) == ["a.pt", "a.pt", "b.pt"]


def test_small_files_are_hashed_and_big_ones_headed_while_the_listing_is_on_its_way(
        tmp_path: Path) -> None:
    # the source's small files are hashed (for S3's ETags) while DST's listing is on its way,
    # and at the same time as the HEADs of its big files: none waits for another
    small = {f"s{i}.bin": 100 * (i + 1) for i in range(4)} | {"edge.bin": HASH_NOT_HEAD}
    local = local_files(tmp_path, small | {"model.pt": BIG}, 1_000.0)
    hashed: list[str] = []
    all_hashed = threading.Event()
    compute_hash = local.compute_hash

    def counting(key: str, kind: str) -> str:
        hashed.append(key)
        if len(hashed) == len(small):
            all_hashed.set()
        if len(hashed) == 1:            # the first file it reads fails
            raise StorageError(f"cannot read {tmp_path / key}")
        return compute_hash(key, kind)

    local.compute_hash = counting  # type: ignore[method-assign]

    class Slow(Fake):
        hashes_seen_by_head: int | None = None

        def stat(self, key: str) -> ObjectInfo:
            all_hashed.wait(timeout=10)
            self.hashes_seen_by_head = len(hashed)
            return super().stat(key)

        def list(self, prefix: str = ""):  # noqa: ANN201
            all_hashed.wait(timeout=10)
            yield from super().list(prefix)

    s3 = Slow("s3", copies_of(tmp_path, ["model.pt"]))
    pool = ThreadPoolExecutor(3)
    src, _, _ = list_sides(pool, str(tmp_path), local, "", s3, "", Options())
    pool.shutdown()
    assert s3.hashes_seen_by_head == len(small)      # the HEAD did not hold the hashing back
    assert sorted(hashed) == sorted(small)           # every small file, past one that failed
    for name in small:
        want = md5(tmp_path.joinpath(name).read_bytes()) if name != hashed[0] else None
        assert src[name].hashes.get(MD5) == want, name
    assert MD5 not in src["model.pt"].hashes


def test_an_unreadable_local_source_file_refuses_the_sync(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "src" / name).write_text(name)
    src = LocalStore(str(tmp_path))
    src.readable = lambda key: not key.endswith(("b", "c"))  # type: ignore[method-assign]
    pool = ThreadPoolExecutor(3)
    with pytest.raises(StorageError) as info:
        list_sides(pool, "src", src, "src/", Fake("gs"), "", Options())
    assert str(info.value) == (f"cannot read {tmp_path}/src/b (and 1 more): permission "
                               "denied; nothing was copied")
    assert info.value.side == "src" and info.value.code == 2
    src.readable = lambda key: not key.endswith("c")  # type: ignore[method-assign]
    with pytest.raises(StorageError) as info:
        list_sides(pool, "src", src, "src/", Fake("gs"), "", Options())
    assert str(info.value).startswith(f"cannot read {tmp_path}/src/c: permission denied")
    src.readable = lambda key: True  # type: ignore[method-assign]
    files, _, _ = list_sides(pool, "src", src, "src/", Fake("gs"), "", Options())
    assert sorted(files) == ["a", "b", "c"]
    pool.shutdown()


def test_an_error_names_its_side() -> None:
    with pytest.raises(StorageError) as info, plan.side("dst"):
        raise StorageError("boom")
    assert info.value.side == "dst"
    with pytest.raises(StorageError) as info, plan.side("dst"):
        raise StorageError("boom", side="src")
    assert info.value.side == "src"                      # already said: kept
    with pytest.raises(ValueError), plan.side("dst"):
        raise ValueError("not storage")


def test_hash_of_takes_the_listing_then_a_head_then_a_read() -> None:
    s3 = Fake("s3", {"k": (b"abcd", 1.0)}, listed_md5=False)
    info = next(s3.list())
    assert plan._hash_of(s3, ObjectInfo("k", 4, 1.0, {MD5: "listed"}), MD5) == "listed"
    assert s3.stats == []
    assert plan._hash_of(s3, info, MD5) == md5(b"abcd") and s3.stats == ["k"]  # a HEAD
    az = Fake("az", {"k": (b"abcd", 1.0)}, listed_md5=False)
    assert plan._hash_of(az, next(az.list()), MD5) is None  # no Content-MD5 on the blob
    local = Fake("file", {"k": (b"abcd", 1.0)})
    assert plan._hash_of(local, next(local.list()), MD5) == md5(b"abcd")
    assert local.hashed == ["k"]
    assert plan._hash_of(local, next(local.list()), CRC32C) is None


# -- what make mutation found unchecked ------------------------------------------------------------

def test_sizes_differ_with_no_hash_listed() -> None:
    src = Fake("az", {"k": (b"abc", 1.0)}, listed_md5=False)
    dst = Fake("az", {"k": (b"ab", 1.0)}, listed_md5=False)
    assert decide(src, dst) == {"k": ("copy", "size", "size+mtime")}


def test_update_tolerance_is_one_second_exclusive() -> None:
    src = Fake("az", {"dst1s": (b"abcd", 10.0), "src1s": (b"abcd", 11.0)}, listed_md5=False)
    dst = Fake("az", {"dst1s": (b"abc", 11.0), "src1s": (b"wxyz", 10.0)}, listed_md5=False)
    assert decide(src, dst, update=True) == {
        "dst1s": ("copy", "size", "size+mtime"),    # DST newer by exactly 1 s: not "newer"
        "src1s": ("skip", "same", "size+mtime")}    # SRC newer by exactly 1 s: within


def test_an_upload_time_is_not_a_stored_modification_time() -> None:
    """S3 lists the upload time: equal to the other side's mtime by chance, it proves
    nothing; the stored time (a HEAD) and the hashes decide."""
    s3 = Fake("s3", {"k": (b"abcd", 1_000.0)}, listed_md5=False)   # listed at 5000.0
    gs = Fake("gs", {"k": (b"wxyz", 5_000.0)})
    assert decide(s3, gs) == {"k": ("copy", "hash", "md5")}
    assert s3.stats == ["k"]
    # a small local file at the listed upload time of its S3 copy: hashed, not trusted
    local = Fake("file", {"k": (b"abcd", 5_000.0)})
    s3 = Fake("s3", {"k": (b"wxyz", 5_000.0)})
    assert decide(local, s3) == {"k": ("copy", "hash", "md5")}


def test_a_stored_time_a_millisecond_apart_is_the_same(tmp_path: Path) -> None:
    local = Fake("file", {"k": (b"x", 0.0)}, size=BIG)
    s3 = Fake("s3", {"k": (b"x", 0.001)}, size=BIG, listed_md5=False)
    assert decide(local, s3) == {"k": ("skip", "same", "size+mtime")}
    assert local.hashed == []


def test_a_large_s3_object_with_its_md5_listed_still_costs_a_head_not_a_read() -> None:
    s3 = Fake("s3", {"k": (b"x", 1_000.0)}, size=BIG)            # md5 in the listing
    local = Fake("file", {"k": (b"x", 1_000.0)}, size=BIG)
    assert decide(s3, local) == {"k": ("skip", "same", "size+mtime")}
    assert s3.stats == ["k"] and local.hashed == []
    # exactly HASH_NOT_HEAD bytes still counts as small: hashed, no HEAD
    s3 = Fake("s3", {"k": (b"x", 1_000.0)}, size=HASH_NOT_HEAD)
    local = Fake("file", {"k": (b"x", 1_000.0)}, size=HASH_NOT_HEAD)
    assert decide(local, s3) == {"k": ("skip", "same", "md5")}
    assert s3.stats == [] and local.hashed == ["k"]
    assert decide(s3, local) == {"k": ("skip", "same", "md5")}
    assert s3.stats == []


def test_checksum_needs_both_hashes() -> None:
    """--checksum, local to an Azure blob without Content-MD5: no hash on one side, so the
    size decides (not a comparison against nothing)."""
    local = Fake("file", {"k": (b"abcd", 1.0)})
    az = Fake("az", {"k": (b"wxyz", 1.0)}, listed_md5=False)
    assert decide(local, az, checksum=True) == {"k": ("skip", "same", "size")}


def test_without_a_hash_on_both_sides_the_time_decides() -> None:
    gs = Fake("gs", {"k": (b"abcd", 1.0)})
    az = Fake("az", {"k": (b"wxyz", 2.0)}, listed_md5=False)
    assert decide(gs, az) == {"k": ("copy", "mtime", "size+mtime")}
    local = Fake("file", {"k": (b"abcd", 1.0)})
    assert decide(local, az) == {"k": ("copy", "mtime", "size+mtime")}
    assert decide(az, local) == {"k": ("copy", "mtime", "size+mtime")}


def test_requests_run_in_checker_threads_and_local_hashes_inline() -> None:
    import threading
    import time as _time

    seen: list[str] = []

    class Slow(Fake):
        def stat(self, key: str) -> ObjectInfo:
            seen.append(threading.current_thread().name)
            _time.sleep(0.005)
            return super().stat(key)

        def compute_hash(self, key: str, kind: str) -> str:
            seen.append(threading.current_thread().name)
            return super().compute_hash(key, kind)

    objects = {f"k{i:02}": (b"abcd", 1.0) for i in range(12)}
    a, b = Slow("s3", objects, listed_md5=False), Slow("s3", objects, listed_md5=False)
    got = decide(a, b, checkers=3)
    assert set(got.values()) == {("skip", "same", "size+mtime")}
    assert len(seen) == 24 and all(n.startswith("check") for n in seen)
    assert 1 < len(set(seen)) <= 3
    seen.clear()
    decide(a, b, checkers=1)
    assert len(set(seen)) == 1 and seen[0].startswith("check")
    seen.clear()
    local = Slow("file", {k: (v[0], 2.0) for k, v in objects.items()})
    s3 = Slow("s3", objects)
    files = {f.key: f for f in plan_files(local, s3, *(
        listing(x, "", (), ())[0] for x in (local, s3)), Options(checkers=3))}
    assert set(seen) == {threading.current_thread().name}       # small local: no pool
    assert {f.size for f in files.values()} == {4}
    seen.clear()
    edge = Slow("file", {"k": (b"x", 2.0)}, size=HASH_NOT_HEAD)  # the limit is still small
    decide(edge, Slow("s3", {"k": (b"x", 1.0)}, size=HASH_NOT_HEAD), checkers=3)
    assert seen == [threading.current_thread().name]
    seen.clear()
    decide(local, s3, checksum=True, checkers=3)                 # --checksum: the pool
    assert seen and all(n.startswith("check") for n in seen)


def test_each_side_of_a_listing_error_is_named_and_filters_apply_to_both() -> None:
    class Broken(Fake):
        def list(self, prefix: str = ""):  # noqa: ANN201
            raise StorageError("listing failed")

    pool = ThreadPoolExecutor(3)
    with pytest.raises(StorageError, match="listing failed") as info:
        list_sides(pool, "x", Broken("gs"), "", Fake("gs"), "", Options())
    assert info.value.side == "src"
    with pytest.raises(StorageError, match="listing failed") as info:
        list_sides(pool, "x", Fake("gs", {"a": (b"1", 1.0)}), "", Broken("gs"), "", Options())
    assert info.value.side == "dst"
    # DST is listed with the same include/exclude: what is not selected is not an extra
    src = Fake("gs", {"p/a.csv": (b"1", 1.0), "p/z.log": (b"9", 1.0)})
    dst = Fake("gs", {"q/a.csv": (b"1", 1.0), "q/b.txt": (b"2", 1.0), "q/c.csv": (b"3", 1.0),
                      "q/d.log": (b"4", 1.0)})
    asked: list[str] = []
    dst.stale_uploads = lambda prefix: asked.append(prefix) or []  # type: ignore[method-assign]
    s, d, _ = list_sides(pool, "gs://b/p", src, "p/", dst, "q/",
                         Options(include=("*.csv", "*.txt"), exclude=("c*",)))
    assert sorted(d) == ["a.csv", "b.txt"] and sorted(s) == ["a.csv"] and asked == ["q/"]
    # a local source without a readable() check (not LocalStore) is listed as it is
    s, _, _ = list_sides(pool, "x", Fake("file", {"k": (b"1", 1.0)}), "", Fake("gs"), "",
                         Options())
    assert list(s) == ["k"]
    pool.shutdown()


def test_the_empty_source_message_says_what_to_do() -> None:
    pool = ThreadPoolExecutor(3)
    with pytest.raises(StorageError) as info:
        list_sides(pool, "s3://b/typo", Fake("s3"), "typo/", Fake("gs"), "", Options())
    assert str(info.value) == (
        "source s3://b/typo lists nothing (no such folder or prefix?): refusing to sync from "
        "it, which could delete everything at DST; pass --allow-empty-source if it is meant "
        "to be empty")
    pool.shutdown()


def test_the_path_length_limit_counts_the_destination_folder(tmp_path: Path) -> None:
    """A key that fits alone but not under DST's folder (and its prefix) is refused."""
    bucket = str(tmp_path / "dst")
    prefix = "p" * 200 + "/"
    assert len(bucket) > 52
    length = 4096 - len(bucket) - 150
    key = "/".join(["k" * 199] * (length // 200)) + "/" + "k" * (length % 200 or 1)
    src = Fake("gs", {key: (b"1", 1.0)})
    pool = ThreadPoolExecutor(3)
    with pytest.raises(StorageError, match="longer than 4096 bytes") as info:
        list_sides(pool, "gs://b", src, "", LocalStore(bucket), prefix, Options())
    assert info.value.side == "src"
    pool.shutdown()


def test_names_folders_and_roots_with_x_and_slashes(tmp_path: Path) -> None:
    assert dir_prefix("Xdata/") == "Xdata/" and dir_prefix("/X/") == "X/"
    assert location(LocalStore("/"), "") == "file:///"
    assert location(LocalStore(str(tmp_path / "X")), "") == f"file://{tmp_path.resolve()}/X/"
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert location(LocalStore(str(link)), "a/") == f"file://{tmp_path.resolve()}/a/"
    (tmp_path / "dataX").mkdir()
    (tmp_path / "dataX" / "f").write_text("1")
    (tmp_path / "outX").mkdir()
    (tmp_path / "fileX").write_text("x")
    root = LocalStore(str(tmp_path))
    check_locations("dataX", "outX", root, "dataX/", root, "outX/")      # both fine
    with pytest.raises(StorageError, match="is a file, not a folder"):
        check_locations("dataX", "fileX", root, "dataX/", root, "fileX/")
    keys = sorted(listing(Fake("gs", {"a/b/c.csv": (b"1", 1.0), "c.csv": (b"1", 1.0)}), "",
                          ("c.csv",), ())[0])
    assert keys == ["a/b/c.csv", "c.csv"]                # a name pattern, at any depth
