"""The object-storage interface every backend implements, and the records it exchanges.

Standard library only: importing this (or :mod:`providers.storage`) loads no cloud SDK.

A store is one bucket (S3, GCS), one container (Azure) or one filesystem root (local). Keys are
``/``-separated paths inside it. The verbs::

    list(prefix)                 -> Iterator[ObjectInfo]   paginated, recursive, sorted by key
    stat(key)                    -> ObjectInfo             every hash the object really has
    open_read(key)               -> BinaryIO               a streaming reader (a context manager)
    read_range(key, start, n)    -> bytes
    put(key, source, ...)        -> ObjectInfo             streamed; atomic from a reader's view
    delete(key)                                            a missing key is not an error

Hashes are declared, not faked (rclone's ``Hashes()``): ``hash_types`` names the hashes a
backend's listing or ``stat`` can report, ``computable_hashes`` those it can work out by reading
the object itself (the local disk). An :class:`ObjectInfo` carries only hashes that are known.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, ClassVar

EXIT_BAD_INPUT = 2      # unknown scheme, missing bucket/container, unreadable file, overlap
EXIT_PROVIDER = 3       # credentials, SDK missing, the provider failed

MD5 = "md5"
CRC32C = "crc32c"
MIB = 1024 * 1024


class StorageError(Exception):
    """One line for the operator. ``code`` is the CLI's exit code (2 bad input, 3 provider).

    ``transient`` marks errors worth retrying (a dropped connection, a 5xx, throttling).
    ``side`` is ``"src"`` or ``"dst"`` when a sync's error is about one of its two ends.
    """

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT, *,
                 transient: bool = False, side: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient
        self.side = side


class Cancelled(Exception):
    """A transfer was stopped on purpose (Ctrl+C); the upload was abandoned, nothing written."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its key in the store, size in bytes, modification time (epoch seconds).

    ``mtime`` is the source's modification time when the backend's listing carries the one
    dqlctl stored at upload (GCS and Azure listings do), else the service's last-modified time
    (the upload time), and then ``upload_time`` is True (an S3 listing: the stored one needs a
    HEAD). ``hashes`` maps a hash name (``md5``, ``crc32c``) to lowercase hex.
    """

    key: str
    size: int
    mtime: float
    hashes: dict[str, str] = field(default_factory=dict)
    upload_time: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "mtime": self.mtime,
                "hashes": dict(self.hashes), "upload_time": self.upload_time}


@dataclass(frozen=True)
class PendingUpload:
    """An unfinished upload dqlctl started (an S3 multipart upload): invisible, yet billed."""

    key: str
    upload_id: str
    started: float              # epoch seconds
    journal: str = ""           # the local record of it (``providers.storage.uploads``)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "upload_id": self.upload_id, "started": self.started}


class Store(ABC):
    """One bucket, container or filesystem root. Subclasses import their SDK lazily."""

    scheme: ClassVar[str]
    hash_types: ClassVar[frozenset[str]] = frozenset()
    computable_hashes: ClassVar[frozenset[str]] = frozenset()
    #: the store records an md5 only if told before the upload starts (S3 metadata)
    wants_md5_first: ClassVar[bool] = False
    #: the listing carries only the upload time, not the source's stored mtime (S3): a
    #: same-size pair is then settled by a hash (or a HEAD), never by the listing's times
    lists_upload_time: ClassVar[bool] = False
    #: files larger than this go up in parts (multipart, blocks, resumable chunks)
    multipart_threshold: int = 16 * MIB
    #: the most of a stream that cannot seek read into memory for a one-request upload;
    #: longer streams go up in parts
    buffer_limit: int = 16 * MIB
    part_size: int = 16 * MIB
    #: parts of one object in flight at once
    part_concurrency: int = 4
    list_page_size: int = 1000
    TUNABLE: ClassVar[tuple[str, ...]] = ("multipart_threshold", "buffer_limit", "part_size",
                                          "part_concurrency", "list_page_size")

    def __init__(self, bucket: str, **options: Any) -> None:
        """``options`` override the tuning attributes above (tests use smaller parts)."""
        for name, value in options.items():
            if name not in self.TUNABLE:
                raise TypeError(f"unknown store option {name!r}")
            setattr(self, name, int(value))
        self.bucket = bucket
        #: requests made, by kind ("list_page", "stat", "read", "put", "put_part", "delete"):
        #: lets tests assert that a plan needed no HEAD per object
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    def _count(self, kind: str, n: int = 1) -> None:
        with self._calls_lock:
            self.calls[kind] += n

    @property
    def single_limit(self) -> int:
        """The largest upload sent in one request (read into memory first); larger ones go
        up in parts."""
        return min(self.multipart_threshold, self.buffer_limit)

    # -- errors and paging -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, what: str, key: str | None = None) -> Iterator[None]:
        """An SDK's exception inside becomes one ``StorageError`` (``_translate``); ours pass."""
        try:
            yield
        except (StorageError, Cancelled):
            raise
        except Exception as exc:
            raise self._translate(exc, what, key) from None

    def _translate(self, exc: Exception, what: str, key: str | None) -> StorageError:
        """What an SDK's exception means, in one line (backends say more)."""
        where = self.uri(key) if key is not None else self.uri()
        return StorageError(f"{what} {where}: {type(exc).__name__}: {exc}", code=EXIT_PROVIDER)

    def _paged(self, pages: Iterator[Iterable[Any]]) -> Iterator[Any]:
        """The items of an SDK's page iterator; each page fetched inside ``_errors`` (a
        listing fails as one StorageError, not halfway through a page) and counted."""
        while True:
            with self._errors("list"):
                page = next(pages, None)
                if page is None:
                    return
                items = list(page)
            self._count("list_page")
            yield from items

    # -- identity -----------------------------------------------------------------------------
    def uri(self, key: str = "") -> str:
        """The URI of ``key`` in this store (``s3://bucket/key``)."""
        return f"{self.scheme}://{self.bucket}/{key}"

    # -- the verbs ------------------------------------------------------------------------------
    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursively), page by page."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """The object ``key`` with every hash it has; StorageError(code 2) if there is none."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A streaming reader of the object (use it as a context manager)."""

    @abstractmethod
    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object)."""

    @abstractmethod
    def put(self, key: str, source: BinaryIO | IO[bytes] | str | Path, *,
            size: int | None = None, mtime: float | None = None,
            md5: str | None = None) -> ObjectInfo:
        """Write the object from a file object or a local path, streaming.

        Readers see the old object or the whole new one, never a part. ``mtime`` (the source's)
        is stored with the object; ``md5`` (hex), when the caller knows it, is checked against
        the bytes read and lets S3 record it before a multipart upload starts. The returned
        ObjectInfo carries the hashes the service reported for what it stored, after checking
        them against the bytes sent.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""

    def compute_hash(self, key: str, kind: str) -> str:
        """Work out a hash in ``computable_hashes`` by reading the object."""
        raise StorageError(f"{self.scheme}:// cannot compute {kind}", code=EXIT_BAD_INPUT)

    # -- server-side copies between clouds -----------------------------------------------------
    def presigned_url(self, key: str, seconds: int = 3600) -> str | None:
        """A URL any service can GET the object from for ``seconds`` (no request made), or
        None where this store cannot sign one."""
        return None

    def put_from_url(self, key: str, url: str, *, size: int, mtime: float | None,
                     md5: str) -> ObjectInfo | None:
        """Have the service pull the object from ``url`` itself (no byte through this host),
        checking the source's ``md5``; None where the service cannot pull."""
        return None

    #: keys one batched delete request takes (S3 DeleteObjects 1000, Azure batch 256); 0: none
    delete_batch: ClassVar[int] = 0

    def delete_many(self, keys: list[str]) -> dict[str, str]:
        """Remove objects, in batches of ``delete_batch`` where the service has them;
        returns ``{key: error}`` for those that could not be removed (missing ones can)."""
        errors: dict[str, str] = {}
        for key in keys:
            try:
                self.delete(key)
            except StorageError as exc:
                errors[key] = str(exc)
        return errors

    def stale_uploads(self, prefix: str) -> list[PendingUpload]:
        """Unfinished uploads under ``prefix`` that dqlctl started and whose process is gone
        (killed mid-upload): S3 keeps their parts, billed, until aborted. None elsewhere."""
        return []

    def abort_upload(self, upload: PendingUpload) -> None:  # noqa: B027 - optional
        """Abort one of :meth:`stale_uploads` (its parts are freed)."""

    def close(self) -> None:  # noqa: B027 - optional for a backend
        """Release connections (optional)."""

    # -- conveniences -------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, *, mtime: float | None = None) -> ObjectInfo:
        return self.put(key, io.BytesIO(data), size=len(data), mtime=mtime)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as reader:
            return reader.read()

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except StorageError as exc:
            if exc.code == EXIT_BAD_INPUT:
                return False
            raise
        return True


# -- helpers shared by the backends ----------------------------------------------------------

_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def shared_client(key: tuple[Any, ...], build: Any) -> Any:
    """The SDK client for ``key`` (the scheme, the environment variables it reads, its pool
    size), built once per process by ``build()``: building one costs 0.1-0.2 s (service
    models, credential discovery), clients are thread-safe, and the TUI syncs often. A store's
    ``close`` leaves it open for the next."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = build()
        return client


#: what requests reads from the environment for every request (proxies, the CA bundle): part of
#: a requests-based client's ``shared_client`` key, since ``settle_environment`` reads it once
REQUESTS_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                "https_proxy", "all_proxy", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def settle_environment(session: Any, url: str) -> None:
    """Read a requests session's environment settings once, for the endpoint ``url``.

    With ``trust_env`` (the default) requests scans the whole environment for proxies and a CA
    bundle on every request: 15-20 % of the CPU of a small upload to GCS or Azure. The same
    settings (proxies for ``url``, honouring NO_PROXY; ``REQUESTS_CA_BUNDLE`` /
    ``CURL_CA_BUNDLE``) are set on the session here and the scan switched off; the client is
    rebuilt when those variables change (``REQUESTS_ENV`` is part of its key)."""
    import requests.utils

    if not session.trust_env:
        return
    session.proxies.update(requests.utils.get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and session.verify is True:
        session.verify = bundle
    session.trust_env = False


def env_key(*prefixes: str) -> tuple[tuple[str, str], ...]:
    """The environment variables a client depends on (those starting with ``prefixes``)."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(prefixes)))


def missing_sdk(module: str, extra: str, scheme: str) -> StorageError:
    from providers.base import install_hint  # standard library only, like this module

    return StorageError(f"{scheme}:// needs the {module} package: install dqlctl[{extra}] "
                        f"({install_hint(extra)})", code=EXIT_PROVIDER)
