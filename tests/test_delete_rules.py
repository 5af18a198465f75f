"""The deletes of a sync (providers/sync/delete.py): extras at DST go only when every copy
succeeded, in batches where the store deletes several keys per request, and a failed delete is
counted and named. An in-memory store stands in for the destination: ``make mutation`` runs
these once per mutant."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import pytest

from providers.storage import ObjectInfo, StorageError
from providers.sync.delete import delete_extras
from providers.sync.records import FileEntry, SyncResult


class MemoryStore:
    """What delete_extras uses of a Store: ``delete_batch`` and ``delete_many``."""

    delete_batch: ClassVar[int] = 0

    def __init__(self, keys: list[str], refuse: set[str] = frozenset(),
                 down: bool = False) -> None:
        self.keys = set(keys)
        self.refuse = refuse          # keys whose delete fails
        self.down = down              # every request fails
        self.requests: list[list[str]] = []

    def delete_many(self, keys: list[str]) -> dict[str, str]:
        self.requests.append(list(keys))
        if self.down:
            raise StorageError("service unavailable")
        errors = {k: "access denied" for k in keys if k in self.refuse}
        self.keys -= set(keys) - set(errors)
        return errors


class BatchStore(MemoryStore):
    delete_batch: ClassVar[int] = 3


def extras(*keys: str) -> tuple[list[FileEntry], dict[str, ObjectInfo]]:
    entries = [FileEntry(k, "delete", "extra", "none", 1) for k in keys]
    listing = {k: ObjectInfo(f"prefix/{k}", 1, 0.0) for k in keys}
    return entries, listing


def result() -> SyncResult:
    return SyncResult("src", "dst", dry_run=False, delete=True, checksum=False, transfers=4)


def run(store: MemoryStore, entries: list[FileEntry], listing: dict[str, ObjectInfo],
        failed: int = 0, res: SyncResult | None = None) -> SyncResult:
    res = res or result()
    with ThreadPoolExecutor(4) as pool:
        delete_extras(res, entries, failed, store, listing, pool)  # type: ignore[arg-type]
    return res


def test_extras_are_deleted_by_their_key_at_dst_and_counted() -> None:
    entries, listing = extras("a", "b/c", "d")
    store = MemoryStore(["prefix/a", "prefix/b/c", "prefix/d", "prefix/keep"])
    res = run(store, entries, listing)
    assert store.keys == {"prefix/keep"}
    assert res.deleted == 3 and res.failed == 0 and res.errors == []
    assert res.delete_skipped is None
    assert [(e.action, e.reason, e.error) for e in entries] == [("delete", "extra", None)] * 3


def test_without_batches_each_key_is_its_own_request() -> None:
    entries, listing = extras("a", "b", "c", "d", "e")
    store = MemoryStore([f"prefix/{k}" for k in "abcde"])
    run(store, entries, listing)
    assert sorted(store.requests) == [[f"prefix/{k}"] for k in "abcde"]


def test_a_store_with_batches_gets_them_full_in_order() -> None:
    entries, listing = extras(*"abcdefg")
    store = BatchStore([f"prefix/{k}" for k in "abcdefg"])
    res = run(store, entries, listing)
    assert sorted(store.requests) == [["prefix/a", "prefix/b", "prefix/c"],
                                      ["prefix/d", "prefix/e", "prefix/f"], ["prefix/g"]]
    assert res.deleted == 7 and store.keys == set()


def test_extras_are_kept_when_a_copy_failed_and_the_result_says_why() -> None:
    entries, listing = extras("a", "b")
    store = MemoryStore(["prefix/a", "prefix/b"])
    res = run(store, entries, listing, failed=2)
    assert store.requests == [] and store.keys == {"prefix/a", "prefix/b"}
    assert res.delete_skipped == "2 copies failed: kept 2 extra files at DST"
    assert [(e.action, e.reason) for e in entries] == [("keep", "copy failed")] * 2
    assert res.deleted == 0 and res.failed == 0


def test_a_failed_delete_is_named_counted_and_the_others_still_go() -> None:
    entries, listing = extras("a", "b", "c")
    res = result()
    res.failed, res.errors = 1, ["x: copy failed earlier"]
    store = MemoryStore(["prefix/a", "prefix/b", "prefix/c"], refuse={"prefix/b"})
    run(store, entries, listing, res=res)
    assert store.keys == {"prefix/b"}
    assert res.deleted == 2
    assert res.failed == 2                                  # added to what was there
    assert res.errors == ["x: copy failed earlier", "b: access denied"]
    assert [e.error for e in entries] == [None, "access denied", None]


@pytest.mark.parametrize("store_kind", [MemoryStore, BatchStore])
def test_a_request_that_fails_marks_every_key_of_it(store_kind: type[MemoryStore]) -> None:
    entries, listing = extras("a", "b")
    store = store_kind(["prefix/a", "prefix/b"], down=True)
    res = run(store, entries, listing)
    assert res.deleted == 0 and res.failed == 2
    assert res.errors == ["a: service unavailable", "b: service unavailable"]
    assert [e.error for e in entries] == ["service unavailable"] * 2


def test_nothing_to_delete_makes_no_request_even_after_failed_copies() -> None:
    store = MemoryStore(["prefix/a"])
    res = run(store, [], {}, failed=3)
    assert store.requests == [] and res.delete_skipped is None
    assert res.deleted == 0 and res.failed == 0
