"""The copies of a sync (``providers.sync``, step 2): ``transfers`` worker threads, each file
streamed through this host (never whole in memory) and written atomically by its store, or pulled
by the destination itself from a URL the source signs (a server-side copy). Every copy is
verified (size, and the source's hash where both sides know it); transient errors are retried
with exponential backoff; progress is reported every ``PROGRESS_EVERY`` seconds; setting
``cancel`` (or Ctrl+C) abandons the uploads in flight and raises ``Cancelled``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from providers.storage import MD5, Cancelled, ObjectInfo, StorageError, Store
from providers.sync.plan import HASH_PREFERENCE
from providers.sync.records import FileEntry, Progress

RETRIES = 3                 # after the first attempt
BACKOFF = 0.25              # seconds, doubled per retry, with jitter
PROGRESS_EVERY = 0.2        # seconds between progress callbacks


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


def copy_all(pool: ThreadPoolExecutor, src_store: Store, dst_store: Store,
             src_files: dict[str, ObjectInfo], dst_prefix: str, copies: list[FileEntry],
             progress: Callable[[Progress], None] | None, cancel: threading.Event | None,
             started: float) -> str | None:
    """Copy every entry of ``copies`` on ``pool``; each entry says how it went (``verified``,
    ``via``, ``attempts``, ``error``). Returns why the destination could not pull from the
    source's URLs (those copies streamed instead), or None."""
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
            # woken once per PROGRESS_EVERY (or when all are done), not once per file: a
            # wait on N futures costs O(N), so waking per completion is O(N^2) for N files
            _, futures = wait(futures, timeout=PROGRESS_EVERY, return_when=ALL_COMPLETED)
            report()
        if cancel.is_set():
            raise Cancelled("sync cancelled")
    except BaseException:
        cancel.set()
        for fut in futures:
            fut.cancel()
        wait(futures)
        raise
    return pull_refused[0] if pull_refused else None


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

