"""The deletes of a sync (``providers.sync``, step 3): extras at DST go only after every copy
succeeded (else they are kept and the result says why), in batched requests where the store has
them (S3 DeleteObjects), else one request per key across the pool."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from providers.storage import ObjectInfo, StorageError, Store
from providers.sync.records import FileEntry, SyncResult


def delete_extras(result: SyncResult, deletes: list[FileEntry], failed: int,
                  dst_store: Store, dst_files: dict[str, ObjectInfo],
                  pool: ThreadPoolExecutor) -> None:
    """Delete the plan's extras at DST unless a copy failed; counts and errors go on ``result``
    and each entry. ``failed``: how many copies failed."""
    if deletes and failed:
        result.delete_skipped = (f"{failed} copies failed: kept {len(deletes)} "
                                 "extra files at DST")
        for e in deletes:
            e.action, e.reason = "keep", "copy failed"
    elif deletes:
        _delete(dst_store, [(e, dst_files[e.key].key) for e in deletes], pool)
        bad = [e for e in deletes if e.error]
        result.deleted = len(deletes) - len(bad)
        result.errors += [f"{e.key}: {e.error}" for e in bad]
        result.failed += len(bad)


def _delete(store: Store, targets: list[tuple[FileEntry, str]], pool: ThreadPoolExecutor) -> None:
    """Delete ``(entry, key)`` targets: in batched requests where the store has them, else
    one request per key across the pool; a failure is written on its entry."""
    def delete_some(batch: list[tuple[FileEntry, str]]) -> None:
        try:
            errors = store.delete_many([key for _, key in batch])
        except StorageError as exc:
            errors = {key: str(exc) for _, key in batch}
        for entry, key in batch:
            entry.error = errors.get(key)

    size = store.delete_batch or 1
    list(pool.map(delete_some, [targets[i:i + size] for i in range(0, len(targets), size)]))

