"""``dqlctl sync SRC DST``: make DST hold what SRC holds, between any two stores.

The core returns data (a :class:`SyncResult`); the CLI renders it. The steps:

1. **Plan from listings.** Both sides are listed (in parallel, page by page): no request per
   object. A source that lists nothing is an error (rclone's "directory not found": a typo in
   SRC must not become "delete everything at DST") unless ``allow_empty_source``. Every key
   bound for a local folder is checked first (``providers.storage.keys``): one that would
   leave it stops the sync before anything is written. Equal means equal (rclone's rule): the
   sizes agree and either a hash both listings carry agrees (md5, then crc32c) or the source's
   modification time equals the one stored with the copy (within ``MODIFY_WINDOW``, either
   way: a destination changed later is restored too). Where the destination's listing has
   only its upload time (S3), a small local source is hashed and compared with the listed
   ETag, a large one costs one HEAD for the stored time. Times that differ are settled by a
   hash where one can be had (a HEAD, or reading a local file), else the file is copied.
   ``checksum=True`` compares by hashes only (computing a local file's md5); ``update=True``
   keeps the newer-only rule (skip files newer at DST; copy when SRC is newer by more than
   ``MTIME_TOLERANCE``). Comparisons that need a request run in ``checkers`` threads.
2. **Copy** in ``transfers`` threads, streamed through this host (never whole files in memory),
   each object written atomically by its store. Every copy is verified: the store checks the
   hash the service reports against the bytes sent, and the size and (where known) the
   source's hash must match. Transient errors are retried with exponential backoff.
3. **Delete** extras at DST (``delete=True``) only after every copy succeeded, in batches
   where the store has them (S3 DeleteObjects), and never more than ``max_delete``: a plan
   that would delete more changes nothing.

``dry_run=True`` lists, compares and returns the plan without changing anything. Interrupting
(Ctrl+C, SIGKILL) leaves no partial object at DST: uploads become visible only when complete;
an S3 multipart upload a killed sync left open is aborted by the next sync of that prefix
(listed, not aborted, by a dry run).

The steps live in modules of their own, this one composes them and is the public face:
``records`` (Options, FileEntry, Progress, SyncResult), ``plan`` (listing, comparing),
``transfer`` (the copies: workers, retries, verification, progress, cancel) and ``delete``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from providers.storage import EXIT_BAD_INPUT, StorageError, Store, open_store
from providers.sync.delete import delete_extras
from providers.sync.plan import (
    HASH_NOT_HEAD,
    HASH_PREFERENCE,
    MODIFY_WINDOW,
    MTIME_TOLERANCE,
    check_locations,
    dir_prefix,
    list_sides,
    plan_files,
    side,
)
from providers.sync.records import FileEntry, Options, Progress, SyncResult, human_size
from providers.sync.transfer import BACKOFF, PROGRESS_EVERY, RETRIES, copy_all

__all__ = ["BACKOFF", "HASH_NOT_HEAD", "HASH_PREFERENCE", "MODIFY_WINDOW", "MTIME_TOLERANCE",
           "PROGRESS_EVERY", "RETRIES", "FileEntry", "Options", "Progress", "SyncResult",
           "human_size", "sync"]


def sync(src: str, dst: str, *, dry_run: bool = False, delete: bool = False,
         checksum: bool = False, update: bool = False, transfers: int = 4, checkers: int = 8,
         include: Iterable[str] = (), exclude: Iterable[str] = (),
         allow_empty_source: bool = False, max_delete: int | None = None,
         progress: Callable[[Progress], None] | None = None,
         cancel: threading.Event | None = None,
         _stores: tuple[Store, Store] | None = None) -> SyncResult:
    """Make ``dst`` hold what ``src`` holds. See the module docstring.

    Raises StorageError (``.code`` 2 bad input, 3 provider/credentials) for problems found
    before anything changed: unknown scheme, missing bucket or container, no credentials, an
    unreadable local file, SRC and DST overlapping, a source that lists nothing (unless
    ``allow_empty_source``), a key that would leave a local DST (``UnsafeKey``), more deletes
    than ``max_delete``. Failures of single copies after retries are reported in the result
    (``ok`` False, ``exit_code`` 3) and stop ``delete``.
    Ctrl+C cancels the transfers (uploads in flight are abandoned) and re-raises; so does
    setting ``cancel`` from another thread (a TUI's Cancel), which raises ``Cancelled``.
    """
    started = time.monotonic()
    opts = Options(dry_run, delete, checksum, update, transfers, checkers, tuple(include),
                   tuple(exclude), allow_empty_source, max_delete)
    if transfers < 1:
        raise StorageError(f"--transfers must be at least 1 (got {transfers})")
    if checkers < 1:
        raise StorageError(f"--checkers must be at least 1 (got {checkers})")
    if max_delete is not None and max_delete < 0:
        raise StorageError(f"--max-delete must be 0 or more (got {max_delete})")
    if _stores is not None:
        return _sync(src, dst, _stores[0], "", _stores[1], "", opts, progress, cancel, started)
    with side("src"):
        src_store, src_key = open_store(src)
    try:
        with side("dst"):
            dst_store, dst_key = open_store(dst)
    except BaseException:
        src_store.close()
        raise
    try:
        return _sync(src, dst, src_store, src_key, dst_store, dst_key, opts, progress, cancel,
                     started)
    finally:
        src_store.close()
        dst_store.close()


def _sync(src: str, dst: str, src_store: Store, src_key: str, dst_store: Store, dst_key: str,
          opts: Options, progress: Callable[[Progress], None] | None,
          cancel: threading.Event | None, started: float) -> SyncResult:
    src_prefix, dst_prefix = dir_prefix(src_key), dir_prefix(dst_key)
    dry_run, delete, transfers = opts.dry_run, opts.delete, opts.transfers
    result = SyncResult(src, dst, dry_run, delete, opts.checksum, transfers,
                        update=opts.update, checkers=opts.checkers)
    check_locations(src, dst, src_store, src_prefix, dst_store, dst_prefix)

    with ThreadPoolExecutor(max(2, transfers), thread_name_prefix="sync") as pool:
        # -- 1. plan ----------------------------------------------------------------------
        src_files, dst_files, stale = list_sides(pool, src, src_store, src_prefix, dst_store,
                                                 dst_prefix, opts)
        files = plan_files(src_store, dst_store, src_files, dst_files, opts)
        result.files = files
        result.compare = dict(Counter(e.compare for e in files if e.action != "delete"))
        result.stale_uploads = [u.to_dict() for u in stale]
        copies = [e for e in files if e.action == "copy"]
        deletes = [e for e in files if e.action == "delete"]
        result.skipped = sum(e.action == "skip" for e in files)
        if opts.max_delete is not None and len(deletes) > opts.max_delete:
            why = (f"the plan deletes {len(deletes)} files at DST, more than --max-delete "
                   f"{opts.max_delete}")
            if not dry_run:
                raise StorageError(f"{why}: nothing was changed", code=EXIT_BAD_INPUT,
                                   side="dst")
            result.refused = f"{why}: a sync would change nothing"
        if dry_run:
            result.copied = len(copies)
            result.bytes_copied = sum(e.size for e in copies)
            result.deleted = len(deletes)
            result.requests = {"src": dict(src_store.calls), "dst": dict(dst_store.calls)}
            result.seconds = time.monotonic() - started
            return result
        for upload in stale:        # parts a killed sync left, billed until aborted
            with side("dst"):
                dst_store.abort_upload(upload)

        # -- 2. copy ----------------------------------------------------------------------
        result.server_side_refused = copy_all(pool, src_store, dst_store, src_files,
                                              dst_prefix, copies, progress, cancel, started)
        failed = [e for e in copies if e.error is not None]
        result.copied = len(copies) - len(failed)
        result.failed = len(failed)
        result.bytes_copied = sum(e.size for e in copies if e.error is None)
        result.errors = [f"{e.key}: {e.error}" for e in failed]

        # -- 3. delete --------------------------------------------------------------------
        delete_extras(result, deletes, len(failed), dst_store, dst_files, pool)
    result.requests = {"src": dict(src_store.calls), "dst": dict(dst_store.calls)}
    result.seconds = time.monotonic() - started
    return result
