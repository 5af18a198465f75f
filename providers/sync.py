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
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from providers.storage import (
    CRC32C,
    EXIT_BAD_INPUT,
    MD5,
    Cancelled,
    ObjectInfo,
    StorageError,
    Store,
    open_store,
)
from providers.storage.keys import check_key

HASH_PREFERENCE = (MD5, CRC32C)
MTIME_TOLERANCE = 1.0       # seconds, for --update: S3 keeps LastModified to the second
MODIFY_WINDOW = 0.001       # seconds: stored times are kept to the microsecond
HASH_NOT_HEAD = 1024 * 1024  # a local file up to this size is hashed rather than HEAD its copy
RETRIES = 3                 # after the first attempt
BACKOFF = 0.25              # seconds, doubled per retry, with jitter
PROGRESS_EVERY = 0.2        # seconds between progress callbacks


@dataclass
class FileEntry:
    """One file of the plan: what was done to it, why, and how it was compared/verified."""

    key: str                     # relative to SRC (and DST)
    action: str                  # "copy" | "skip" | "delete"
    reason: str                  # "missing" | "size" | "hash" | "mtime" | "same" | "extra"
    #                              | "newer" (--update: DST is newer)
    compare: str                 # "md5" | "crc32c" | "size+mtime" | "size" | "none"
    size: int
    verified: str | None = None  # "md5" | "crc32c" | "size": how the copy was checked
    #: "server": the destination pulled it from a URL the source signed (no byte through this
    #: host); "stream": read here and written there
    via: str | None = None
    attempts: int = 0
    error: str | None = None


@dataclass
class Progress:
    """What the CLI shows while a sync runs."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    elapsed: float
    rate: float                  # bytes per second so far
    eta: float | None            # seconds left, None until a rate is known
    #: the copies in flight, oldest first: (key, bytes read so far, size)
    active: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass
class SyncResult:
    src: str
    dst: str
    dry_run: bool
    delete: bool
    checksum: bool
    transfers: int
    files: list[FileEntry] = field(default_factory=list)
    copied: int = 0
    skipped: int = 0
    deleted: int = 0
    failed: int = 0
    bytes_copied: int = 0
    seconds: float = 0.0
    compare: dict[str, int] = field(default_factory=dict)    # method -> files compared so
    errors: list[str] = field(default_factory=list)
    delete_skipped: str | None = None                        # why extras were kept
    update: bool = False
    checkers: int = 8
    #: unfinished uploads a killed sync left at DST: aborted (listed by a dry run)
    stale_uploads: list[dict[str, Any]] = field(default_factory=list)
    #: requests made to each side, by kind (list_page, stat, read, put, put_part, delete)
    requests: dict[str, dict[str, int]] = field(default_factory=dict)

    #: why the destination could not pull from the source's URLs (the copies streamed)
    server_side_refused: str | None = None
    #: why a dry run's plan would be refused (more deletes than --max-delete)
    refused: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.errors and self.refused is None

    @property
    def exit_code(self) -> int:
        """0 when everything was done; 2 when the plan would be refused; 3 when a copy or
        delete failed (provider error)."""
        if self.refused is not None:
            return 2
        return 0 if self.ok else 3

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


class _Meter:
    """Bytes moved, counted by every transfer thread (high-water mark per attempt)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes = 0
        self.files = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes += n


class _ProgressReader:
    """Counts bytes read into the meter (those of the last pass, when a store reads a local
    file twice, to hash it first) and stops the transfer when the sync is cancelled."""

    def __init__(self, inner: Any, meter: _Meter, cancel: threading.Event) -> None:
        self._inner = inner
        self._meter = meter
        self._cancel = cancel
        self.pos = 0
        self.high = 0

    def read(self, n: int = -1) -> bytes:
        if self._cancel.is_set():
            raise Cancelled("sync cancelled")
        data: bytes = self._inner.read(n)
        self.pos += len(data)
        if self.pos > self.high:
            self._meter.add(self.pos - self.high)
            self.high = self.pos
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        try:
            return bool(self._inner.seekable())
        except AttributeError:
            return False

    def tell(self) -> int:
        return int(self._inner.tell())

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = int(self._inner.seek(offset, whence))
        if self.pos < self.high:        # a store re-reads (hashes first, then sends):
            self._meter.add(self.pos - self.high)   # count the bytes of the last pass only
            self.high = self.pos
        return self.pos

    def close(self) -> None:
        self._inner.close()


@contextlib.contextmanager
def _side(side: str) -> Iterator[None]:
    """A StorageError raised inside is about this end of the sync (``StorageError.side``)."""
    try:
        yield
    except StorageError as exc:
        if exc.side is None:
            exc.side = side
        raise


def _dir_prefix(key: str) -> str:
    key = key.strip("/")
    return f"{key}/" if key else ""


def _location(store: Store, prefix: str) -> str:
    if store.scheme == "file":
        path = os.path.realpath(os.path.join(store.bucket, prefix))
        return "file://" + path.rstrip("/") + "/"
    return f"{store.scheme}://{store.bucket}/{prefix}"


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or ("/" not in p and fnmatch.fnmatchcase(base, p))
               for p in patterns)


def _selected(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not _matches(rel, include):
        return False
    return not (exclude and _matches(rel, exclude))


def _listing(store: Store, prefix: str, include: Sequence[str],
             exclude: Sequence[str]) -> tuple[dict[str, ObjectInfo], int]:
    """The selected objects by key relative to ``prefix``, and how many were listed at all."""
    out = {}
    listed = 0
    for info in store.list(prefix):
        rel = info.key[len(prefix):]
        listed += 1
        if rel and _selected(rel, include, exclude):
            out[rel] = info
    return out, listed


def _usable_hashes(src: Store, dst: Store, checksum: bool) -> list[str]:
    if checksum:
        have_src = src.hash_types | src.computable_hashes
        have_dst = dst.hash_types | dst.computable_hashes
    else:
        have_src, have_dst = src.hash_types, dst.hash_types
    return [h for h in HASH_PREFERENCE if h in have_src and h in have_dst]


def _hash_of(store: Store, info: ObjectInfo, kind: str) -> str | None:
    """The ``kind`` hash of an object: from its listing, else a HEAD where the store declares
    it, else computed where the store can."""
    if kind in info.hashes:
        return info.hashes[kind]
    if kind in store.hash_types:
        return store.stat(info.key).hashes.get(kind)
    if kind in store.computable_hashes:
        return store.compute_hash(info.key, kind)
    return None


Verdict = tuple[bool, str, str]        # (equal, method, reason)


def _by_hash(a: str, b: str, kind: str) -> Verdict:
    return a == b, kind, "same" if a == b else "hash"


def _compare_listed(s: ObjectInfo, d: ObjectInfo, checksum: bool,
                    update: bool) -> Verdict | None:
    """The verdict the two listings give on their own, or None when it needs a request or a
    read (``_compare``)."""
    if update:          # the newer-only rule, from listing times
        if d.mtime > s.mtime + MTIME_TOLERANCE:
            return True, "size+mtime", "newer"
        if s.size != d.size:
            return False, "size+mtime", "size"
        if s.mtime > d.mtime + MTIME_TOLERANCE:
            return False, "size+mtime", "mtime"
        return True, "size+mtime", "same"
    if s.size != d.size:
        kinds = [k for k in HASH_PREFERENCE if k in s.hashes and k in d.hashes]
        return False, kinds[0] if kinds else "size+mtime", "size"
    for kind in HASH_PREFERENCE:
        if kind in s.hashes and kind in d.hashes:
            return _by_hash(s.hashes[kind], d.hashes[kind], kind)
    if not (checksum or s.upload_time or d.upload_time) and \
            abs(s.mtime - d.mtime) <= MODIFY_WINDOW:
        return True, "size+mtime", "same"
    return None


def _compare(src_store: Store, dst_store: Store, s: ObjectInfo, d: ObjectInfo,
             hashes: list[str], checksum: bool) -> Verdict:
    """The verdict for a same-size pair the listings could not settle (``_compare_listed``)."""
    if checksum:
        for kind in hashes:
            a = _hash_of(src_store, s, kind)
            b = _hash_of(dst_store, d, kind) if a is not None else None
            if a is not None and b is not None:
                return _by_hash(a, b, kind)
        return True, "size", "same"     # no hash both sides have: size alone (rclone)
    # An S3 listing has only the upload time (to the second): the time stored at upload
    # costs one HEAD, unless the other side is a small local file, cheaper to hash.
    local_src = MD5 in src_store.computable_hashes
    local_dst = MD5 in dst_store.computable_hashes
    if s.upload_time and MD5 in src_store.hash_types and not (
            local_dst and s.size <= HASH_NOT_HEAD and MD5 in s.hashes):
        s = src_store.stat(s.key)
    if d.upload_time and MD5 in dst_store.hash_types and not (
            local_src and s.size <= HASH_NOT_HEAD and MD5 in d.hashes):
        d = dst_store.stat(d.key)
    if not (s.upload_time or d.upload_time) and abs(s.mtime - d.mtime) <= MODIFY_WINDOW:
        return True, "size+mtime", "same"
    # the times differ (or only an upload time is known): a hash, where one can be had
    for kind in HASH_PREFERENCE:
        a = s.hashes.get(kind) or (d.hashes.get(kind) and _hash_of(src_store, s, kind))
        b = d.hashes.get(kind) or (a and kind in dst_store.computable_hashes
                                   and _hash_of(dst_store, d, kind))
        if a and b:
            return _by_hash(a, b, kind)
    if local_src and local_dst:         # local to local
        return _by_hash(_hash_of(src_store, s, MD5) or "", _hash_of(dst_store, d, MD5) or "-",
                        MD5)
    return False, "size+mtime", "mtime"


@dataclass(frozen=True)
class Options:
    """What a sync is asked to do, besides SRC and DST (see ``sync``)."""

    dry_run: bool = False
    delete: bool = False
    checksum: bool = False
    update: bool = False
    transfers: int = 4
    checkers: int = 8
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    allow_empty_source: bool = False
    max_delete: int | None = None


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
    with _side("src"):
        src_store, src_key = open_store(src)
    try:
        with _side("dst"):
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


def _plan(src_store: Store, dst_store: Store, src_files: dict[str, ObjectInfo],
          dst_files: dict[str, ObjectInfo], opts: Options) -> list[FileEntry]:
    """Every file's entry: copy, skip or delete, and why. Pairs the listings cannot settle are
    compared in ``opts.checkers`` threads (a HEAD, or hashing a local file)."""
    hashes = _usable_hashes(src_store, dst_store, opts.checksum)
    entries: dict[str, FileEntry] = {}
    pending = []
    for rel, s in src_files.items():
        d = dst_files.get(rel)
        if d is None:
            entries[rel] = FileEntry(rel, "copy", "missing", "none", s.size)
            continue
        verdict = _compare_listed(s, d, opts.checksum, opts.update)
        if verdict is None:
            pending.append((rel, s, d))
        else:
            entries[rel] = FileEntry(rel, "skip" if verdict[0] else "copy", verdict[2],
                                     verdict[1], s.size)

    def check(t: tuple[str, ObjectInfo, ObjectInfo]) -> Verdict:
        return _compare(src_store, dst_store, t[1], t[2], hashes, opts.checksum)

    local = "file" in (src_store.scheme, dst_store.scheme)
    if local and not opts.checksum and all(t[1].size <= HASH_NOT_HEAD for t in pending):
        verdicts = [check(t) for t in pending]      # small local files hashed: no request
    else:
        with ThreadPoolExecutor(max(1, min(opts.checkers, len(pending))),
                                thread_name_prefix="check") as checkers:
            verdicts = list(checkers.map(check, pending))
    for (rel, s, _), (equal, method, reason) in zip(pending, verdicts, strict=True):
        entries[rel] = FileEntry(rel, "skip" if equal else "copy", reason, method, s.size)
    files = [entries[rel] for rel in sorted(entries)]
    if opts.delete:
        files += [FileEntry(rel, "delete", "extra", "none", dst_files[rel].size)
                  for rel in sorted(set(dst_files) - set(src_files))]
    return files


def _sync(src: str, dst: str, src_store: Store, src_key: str, dst_store: Store, dst_key: str,
          opts: Options, progress: Callable[[Progress], None] | None,
          cancel: threading.Event | None, started: float) -> SyncResult:
    src_prefix, dst_prefix = _dir_prefix(src_key), _dir_prefix(dst_key)
    dry_run, delete, transfers = opts.dry_run, opts.delete, opts.transfers
    result = SyncResult(src, dst, dry_run, delete, opts.checksum, transfers,
                        update=opts.update, checkers=opts.checkers)

    a, b = _location(src_store, src_prefix), _location(dst_store, dst_prefix)
    if a.startswith(b) or b.startswith(a):
        raise StorageError(f"SRC and DST overlap ({a} and {b}): sync would copy into itself",
                           code=EXIT_BAD_INPUT, side="dst")
    if src_store.scheme == "file":
        path = os.path.join(src_store.bucket, src_prefix.rstrip("/"))
        if not os.path.exists(path):
            raise StorageError(f"source {src} does not exist", code=EXIT_BAD_INPUT, side="src")
        if not os.path.isdir(path):
            raise StorageError(f"source {src} is a file: sync copies a folder or a prefix",
                               code=EXIT_BAD_INPUT, side="src")
    if dst_store.scheme == "file":
        path = os.path.join(dst_store.bucket, dst_prefix)
        if os.path.exists(path.rstrip("/")) and not os.path.isdir(path.rstrip("/")):
            raise StorageError(f"destination {dst} is a file, not a folder",
                               code=EXIT_BAD_INPUT, side="dst")

    with ThreadPoolExecutor(max(2, transfers), thread_name_prefix="sync") as pool:
        # -- 1. plan ----------------------------------------------------------------------
        src_list_f = pool.submit(_listing, src_store, src_prefix, opts.include, opts.exclude)
        dst_list_f = pool.submit(_listing, dst_store, dst_prefix, opts.include, opts.exclude)
        stale_f = pool.submit(dst_store.stale_uploads, dst_prefix)
        with _side("src"):
            src_files, src_listed = src_list_f.result()
        with _side("dst"):
            dst_files, _ = dst_list_f.result()
            stale = stale_f.result()
        if not src_listed and not opts.allow_empty_source:
            raise StorageError(f"source {src} lists nothing (no such folder or prefix?): "
                               "refusing to sync from it, which could delete everything at "
                               "DST; pass --allow-empty-source if it is meant to be empty",
                               code=EXIT_BAD_INPUT, side="src")
        if dst_store.scheme == "file":      # keys are data: none may leave the folder
            with _side("src"):
                root = os.path.join(dst_store.bucket, dst_prefix)
                for rel in src_files:
                    check_key(rel, Path(root))
        if src_store.scheme == "file":
            readable = getattr(src_store, "readable", None)
            bad = [rel for rel, info in src_files.items()
                   if readable is not None and not readable(info.key)]
            if bad:
                raise StorageError(f"cannot read {os.path.join(src_store.bucket, src_prefix, bad[0])}"
                                   f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}: "
                                   "permission denied; nothing was copied", code=EXIT_BAD_INPUT,
                                   side="src")
        files = _plan(src_store, dst_store, src_files, dst_files, opts)
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
            with _side("dst"):
                dst_store.abort_upload(upload)

        # -- 2. copy ----------------------------------------------------------------------
        meter = _Meter()
        cancel = cancel if cancel is not None else threading.Event()
        active: dict[str, tuple[_ProgressReader, int]] = {}    # copies in flight, by key
        bytes_total = sum(e.size for e in copies)

        # a server-side copy where the destination can pull from a URL the source signs
        server_side = type(dst_store).put_from_url is not Store.put_from_url and \
            type(src_store).presigned_url is not Store.presigned_url
        pull_refused: list[str] = []    # why the destination could not pull (then: stream)

        def _pull(s: ObjectInfo, dst_name: str, md5: str) -> ObjectInfo | None:
            """The destination pulls the object itself; None: stream it instead (the source
            cannot sign a URL, or the service could not pull it: said once in the result)."""
            if pull_refused:
                return None
            url = src_store.presigned_url(s.key)
            if url is None:
                return None
            try:
                return dst_store.put_from_url(dst_name, url, size=s.size, mtime=s.mtime, md5=md5)
            except StorageError as exc:
                if exc.transient:
                    raise
                pull_refused.append(str(exc))
                return None

        def copy_one(entry: FileEntry) -> None:
            s = src_files[entry.key]
            dst_name = dst_prefix + entry.key
            for attempt in range(1, RETRIES + 2):
                entry.attempts = attempt
                reader: _ProgressReader | None = None
                try:
                    md5 = s.hashes.get(MD5)
                    if server_side and md5 and (info := _pull(s, dst_name, md5)) is not None:
                        entry.via = "server"
                        entry.verified = _verify(s, info)
                        entry.error = None
                        meter.add(s.size)
                        with meter.lock:
                            meter.files += 1
                        return
                    entry.via = "stream"
                    if (md5 is None and dst_store.wants_md5_first and MD5 in src_store.hash_types
                            and s.size > dst_store.buffer_limit):
                        md5 = src_store.stat(s.key).hashes.get(MD5)  # S3 records it up front
                    with src_store.open_read(s.key) as raw:
                        reader = _ProgressReader(raw, meter, cancel)
                        with meter.lock:
                            active[entry.key] = (reader, s.size)
                        # the source's own mtime where its reader knows it (S3 metadata)
                        mtime = getattr(raw, "mtime", None) or s.mtime
                        info = dst_store.put(dst_name, reader, size=s.size, mtime=mtime,
                                             md5=md5)
                    entry.verified = _verify(s, info)
                    entry.error = None
                    with meter.lock:
                        meter.files += 1
                    return
                except Cancelled:
                    entry.error = "cancelled"
                    return
                except StorageError as exc:
                    entry.error = str(exc)
                    if not exc.transient or attempt > RETRIES or cancel.is_set():
                        return
                except Exception as exc:  # an SDK error no store mapped: retry it
                    entry.error = f"{type(exc).__name__}: {exc}"
                    if attempt > RETRIES or cancel.is_set():
                        return
                finally:
                    with meter.lock:
                        active.pop(entry.key, None)
                    if reader is not None and entry.error is not None:
                        meter.add(-reader.high)     # a failed attempt moved nothing
                time.sleep(BACKOFF * 2 ** (attempt - 1) * (0.5 + random.random()))

        def report() -> None:
            if progress is None:
                return
            elapsed = time.monotonic() - started
            with meter.lock:
                done_bytes, done_files = meter.bytes, meter.files
                moving = [(key, r.high, size) for key, (r, size) in active.items()]
            rate = done_bytes / elapsed if elapsed > 0 else 0.0
            eta = (bytes_total - done_bytes) / rate if rate > 0 else None
            progress(Progress(done_files, len(copies), done_bytes, bytes_total, elapsed, rate,
                              eta, moving))

        futures: set[Future[None]] = {pool.submit(copy_one, e) for e in copies}
        try:
            report()
            while futures and not cancel.is_set():
                _, futures = wait(futures, timeout=PROGRESS_EVERY, return_when=FIRST_COMPLETED)
                report()
            if cancel.is_set():
                raise Cancelled("sync cancelled")
        except BaseException:
            cancel.set()
            for fut in futures:
                fut.cancel()
            wait(futures)
            raise
        if pull_refused:
            result.server_side_refused = pull_refused[0]
        failed = [e for e in copies if e.error is not None]
        result.copied = len(copies) - len(failed)
        result.failed = len(failed)
        result.bytes_copied = sum(e.size for e in copies if e.error is None)
        result.errors = [f"{e.key}: {e.error}" for e in failed]

        # -- 3. delete --------------------------------------------------------------------
        if deletes and failed:
            result.delete_skipped = (f"{len(failed)} copies failed: kept {len(deletes)} "
                                     "extra files at DST")
            for e in deletes:
                e.action, e.reason = "keep", "copy failed"
        elif deletes:
            _delete(dst_store, [(e, dst_files[e.key].key) for e in deletes], pool)
            bad = [e for e in deletes if e.error]
            result.deleted = len(deletes) - len(bad)
            result.errors += [f"{e.key}: {e.error}" for e in bad]
            result.failed += len(bad)
    result.requests = {"src": dict(src_store.calls), "dst": dict(dst_store.calls)}
    result.seconds = time.monotonic() - started
    return result


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


def _verify(s: ObjectInfo, info: ObjectInfo) -> str:
    """How a copy was checked; raises a transient StorageError when it does not match."""
    if info.size != s.size:
        raise StorageError(f"{info.key}: {info.size} bytes written, source has {s.size}",
                           code=3, transient=True)
    for kind in HASH_PREFERENCE:
        if kind in s.hashes and kind in info.hashes:
            if s.hashes[kind] != info.hashes[kind]:
                raise StorageError(f"{info.key}: {kind} {info.hashes[kind]} written, source "
                                   f"has {s.hashes[kind]}", code=3, transient=True)
            return kind
    # the store checked the hash the service reported against the bytes it sent
    return MD5 if MD5 in info.hashes else "size"


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
