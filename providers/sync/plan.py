"""The plan of a sync (``providers.sync``, step 1): list both sides and decide, file by file,
what is equal and why; nothing at DST changes here.

Both sides are listed (in parallel, page by page): no request per object. A source that lists
nothing is an error unless ``allow_empty_source``; every key bound for a local folder is checked
(``providers.storage.keys``); SRC and DST may not overlap. Equal means equal (rclone's rule): the
sizes agree and either a hash both listings carry agrees (md5, then crc32c) or the source's
modification time equals the one stored with the copy (within ``MODIFY_WINDOW``). Pairs the
listings cannot settle cost a HEAD or a local hash, in ``checkers`` threads (the HEADs of big local
files bound for S3 go out beside DST's listing: ``head_ahead``); ``checksum`` compares by hashes
only, ``update`` keeps the newer-only rule (``MTIME_TOLERANCE``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from providers.storage import (
    CRC32C,
    EXIT_BAD_INPUT,
    MD5,
    ObjectInfo,
    StorageError,
    Store,
)
from providers.storage.base import PendingUpload
from providers.storage.keys import check_key
from providers.sync.records import FileEntry, Options

HASH_PREFERENCE = (MD5, CRC32C)
MTIME_TOLERANCE = 1.0       # seconds, for --update: S3 keeps LastModified to the second
MODIFY_WINDOW = 0.001       # seconds: stored times are kept to the microsecond
HASH_NOT_HEAD = 1024 * 1024  # a local file up to this size is hashed rather than HEAD its copy


@contextlib.contextmanager
def side(side: str) -> Iterator[None]:
    """A StorageError raised inside is about this end of the sync (``StorageError.side``)."""
    try:
        yield
    except StorageError as exc:
        if exc.side is None:
            exc.side = side
        raise


def dir_prefix(key: str) -> str:
    key = key.strip("/")
    return f"{key}/" if key else ""


def location(store: Store, prefix: str) -> str:
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


def listing(store: Store, prefix: str, include: Sequence[str],
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


def check_locations(src: str, dst: str, src_store: Store, src_prefix: str, dst_store: Store,
                    dst_prefix: str) -> None:
    """Refuse, before listing, SRC and DST that overlap, a local SRC that is missing or a file,
    and a local DST that is a file."""
    a, b = location(src_store, src_prefix), location(dst_store, dst_prefix)
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


def prehash(store: Store, files: dict[str, ObjectInfo], until: Future[Any]) -> None:
    """The md5 of small local source files (up to ``HASH_NOT_HEAD``), computed while the
    other side's listing is still on its way (``until``) and kept in their ``hashes``.

    A destination whose listing has only upload times (S3) settles a same-size pair by the
    source's md5 against its ETag, and an upload sends the md5 first: either way each small
    file is hashed once, and this does it while the main thread would only wait (500 x 4 KiB:
    about 30 ms of a no-op that used to follow the listing). It stops when the listing is in;
    a file it cannot read is left to the checks after the listing, which say so."""
    for info in files.values():
        if until.done():
            return
        if info.size <= HASH_NOT_HEAD and MD5 not in info.hashes:
            try:
                info.hashes[MD5] = store.compute_hash(info.key, MD5)
            except StorageError:
                continue


def _stat_or_none(store: Store, key: str) -> ObjectInfo | None:
    try:
        return store.stat(key)
    except Exception:       # missing, or failing: the plan's own HEAD (if any) will say
        return None


def head_ahead(dst_store: Store, dst_prefix: str, src_files: dict[str, ObjectInfo],
               checkers: int) -> dict[str, Future[ObjectInfo | None]]:
    """HEADs of the copies of the big local source files, sent while DST's listing is still
    on its way: their result, by relative key.

    A destination whose listing has only upload times (S3) settles a same-size pair above
    ``HASH_NOT_HEAD`` by the source time stored with the copy, which costs a HEAD. Sent after
    the listing (as rclone does), that HEAD is a second round trip in every no-op sync of a
    folder holding a model or a checkpoint; sent now, it rides along with the listing. At most
    ``checkers`` of them go ahead (in their own threads, one each); the rest wait for the plan.
    A HEAD for a copy that turns out missing is one wasted request, in a sync that uploads
    that file anyway. ``use_heads`` keeps a result only where the listing agrees with it."""
    big = [rel for rel, info in src_files.items() if info.size > HASH_NOT_HEAD][:checkers]
    if not big:
        return {}
    ahead = ThreadPoolExecutor(len(big))
    heads = {rel: ahead.submit(_stat_or_none, dst_store, dst_prefix + rel) for rel in big}
    ahead.shutdown(wait=False)          # the threads end with their HEAD
    return heads


def use_heads(heads: dict[str, Future[ObjectInfo | None]],
              dst_files: dict[str, ObjectInfo]) -> None:
    """Put the early HEADs' answers (``head_ahead``) in place of the listed objects they
    describe. One is dropped (and its object HEADed again if the plan needs it) unless it and
    the listing agree on the size and the md5 (the ETag of a single-part upload): an object
    rewritten between the HEAD and the listing must not be judged by its old metadata."""
    for rel, future in heads.items():
        listed = dst_files.get(rel)
        if listed is None:
            continue                    # not there: nothing to wait for
        head = future.result()
        if head is None or head.size != listed.size:
            continue
        a, b = head.hashes.get(MD5), listed.hashes.get(MD5)
        if a is not None and b is not None and a != b:
            continue
        dst_files[rel] = head


def list_sides(pool: ThreadPoolExecutor, src: str, src_store: Store, src_prefix: str,
               dst_store: Store, dst_prefix: str, opts: Options
               ) -> tuple[dict[str, ObjectInfo], dict[str, ObjectInfo], list[PendingUpload]]:
    """Both sides' selected objects (listed in parallel on ``pool``) and the unfinished uploads
    at DST. Raises StorageError (nothing changed) for a source that lists nothing (unless
    ``allow_empty_source``), a key that would leave a local DST, an unreadable local file."""
    src_list_f = pool.submit(listing, src_store, src_prefix, opts.include, opts.exclude)
    dst_list_f = pool.submit(listing, dst_store, dst_prefix, opts.include, opts.exclude)
    stale_f = pool.submit(dst_store.stale_uploads, dst_prefix)
    heads: dict[str, Future[ObjectInfo | None]] = {}
    with side("src"):
        src_files, src_listed = src_list_f.result()
        if src_store.scheme == "file" and dst_store.lists_upload_time and not opts.update:
            if not opts.checksum:
                heads = head_ahead(dst_store, dst_prefix, src_files, opts.checkers)
            prehash(src_store, src_files, dst_list_f)
    with side("dst"):
        dst_files, _ = dst_list_f.result()
        stale = stale_f.result()
        use_heads(heads, dst_files)
    if not src_listed and not opts.allow_empty_source:
        raise StorageError(f"source {src} lists nothing (no such folder or prefix?): "
                           "refusing to sync from it, which could delete everything at "
                           "DST; pass --allow-empty-source if it is meant to be empty",
                           code=EXIT_BAD_INPUT, side="src")
    if dst_store.scheme == "file":      # keys are data: none may leave the folder
        with side("src"):
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
    return src_files, dst_files, stale


def plan_files(src_store: Store, dst_store: Store, src_files: dict[str, ObjectInfo],
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
