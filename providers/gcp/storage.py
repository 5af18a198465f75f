"""``gs://bucket/prefix`` through google-cloud-storage (imported when a store is opened).

Credentials from Application Default Credentials; ``STORAGE_EMULATOR_HOST`` points the SDK at
an emulator by itself. GCS keeps md5 and crc32c of every object it stores (not of composite
objects, which dqlctl never makes), and its listing carries them and our ``mtime`` metadata.
Small objects go up in one request; larger ones as a resumable upload in ``part_size`` chunks,
which GCS makes visible only when the last chunk arrives.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from providers.storage.base import (
    CRC32C,
    EXIT_BAD_INPUT,
    EXIT_PROVIDER,
    MD5,
    REQUESTS_ENV,
    ObjectInfo,
    StorageError,
    Store,
    env_key,
    missing_sdk,
    settle_environment,
    shared_client,
)
from providers.storage.streams import (
    HashingReader,
    StoreReader,
    read_ahead,
    read_full,
    source_reader,
    source_size,
)

MIB = 1024 * 1024


def without_span_metadata(client: Any) -> Any:
    """``client`` without the bucket-metadata fetches that only label trace spans.

    Since 3.x, google-cloud-storage starts a thread on a client's first call about a bucket
    that GETs the bucket's metadata (``_bucket_metadata_cache``), to label OpenTelemetry spans
    with its project and location, and it does so with its traces off (the default), when the
    labels go nowhere. That is one more request per bucket and process, a 403 in the audit log
    of a VM whose service account may only use objects (``roles/storage.objectUser``), and a
    request that can land after the operation that caused it returned (a test counting the
    requests through a proxy saw it late under load). With ``ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES``
    on, the client keeps it: the SDK's own reading of that variable decides."""
    from google.cloud.storage import _opentelemetry_tracing

    traces = getattr(_opentelemetry_tracing, "enable_otel_traces", False)
    if not traces and getattr(client, "_bucket_metadata_cache", None) is not None:
        client._bucket_metadata_cache = None        # the SDK checks it before each use
    return client


def _b64_to_hex(value: str | None) -> str | None:
    return base64.b64decode(value).hex() if value else None


def _blob_info(blob: Any) -> ObjectInfo:
    hashes = {}
    if blob.md5_hash:
        hashes[MD5] = _b64_to_hex(blob.md5_hash) or ""
    if blob.crc32c:
        hashes[CRC32C] = _b64_to_hex(blob.crc32c) or ""
    # the source's mtime stored at upload; else the object's own time. The SDK parses that
    # time with strptime on every read of ``updated`` (30 us): a third of a 500-object
    # listing's client time, spent on a time that objects dqlctl wrote never need.
    mtime = None
    meta = blob.metadata or {}
    with contextlib.suppress(KeyError, ValueError, TypeError):
        mtime = float(meta["mtime"])
    if mtime is None:
        updated = blob.updated
        mtime = updated.timestamp() if updated else 0.0
    return ObjectInfo(blob.name, int(blob.size or 0), mtime, hashes)


class GcsStore(Store):
    scheme = "gs"
    hash_types = frozenset({MD5, CRC32C})
    # Resumable chunks of 100 MiB, the SDK's own default: GCS (and fake-gcs-server even
    # more) pays per chunk, and each chunk is one sequential request held in memory.
    part_size = 100 * MIB

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        # resumable chunks must be multiples of 256 KiB
        self.part_size = max(256 * 1024, self.part_size // (256 * 1024) * (256 * 1024))
        try:
            from google.cloud import storage
        except ImportError:
            raise missing_sdk("google-cloud-storage", "gcp", "gs") from None
        def build() -> Any:
            with self._errors("connect to"):
                client = without_span_metadata(
                    storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT")))
                settle_environment(client._http, client._connection.API_BASE_URL)
                return client

        # one client per process and environment (``shared_client``): building one looks
        # for credentials (files, the metadata server)
        self.client = shared_client(
            ("gs", env_key("GOOGLE_", "STORAGE_EMULATOR_HOST", "CLOUDSDK_", "GCE_", *REQUESTS_ENV)),
            build)
        self._bucket = self.client.bucket(bucket)

    # -- errors -----------------------------------------------------------------------------
    def _translate(self, exc: Exception, what: str, key: str | None) -> StorageError:
        from google.api_core import exceptions as gex
        from google.auth import exceptions as aex

        where = self.uri(key) if key is not None else f"gs://{self.bucket}"
        if isinstance(exc, aex.DefaultCredentialsError):
            return StorageError("no Google credentials found: run `gcloud auth "
                                "application-default login` or set "
                                "GOOGLE_APPLICATION_CREDENTIALS", code=EXIT_PROVIDER)
        if isinstance(exc, aex.GoogleAuthError):
            return StorageError(f"{what} {where}: Google credentials rejected ({exc})",
                                code=EXIT_PROVIDER)
        status = getattr(exc, "code", None)
        response = getattr(exc, "response", None)
        if status is None and response is not None:
            status = getattr(response, "status_code", None)
        if isinstance(exc, gex.NotFound) or status == 404:
            text = str(exc).lower()
            if key is None or "bucket" in text:
                return StorageError(f"bucket gs://{self.bucket} does not exist",
                                    code=EXIT_BAD_INPUT)
            return StorageError(f"no such object {where}", code=EXIT_BAD_INPUT)
        if isinstance(exc, gex.Forbidden | gex.Unauthorized) or status in (401, 403):
            return StorageError(f"{what} {where}: access denied by GCS", code=EXIT_PROVIDER)
        if isinstance(exc, gex.GoogleAPICallError):
            transient = isinstance(exc, gex.ServerError | gex.TooManyRequests)
            return StorageError(f"{what} {where}: GCS error {exc.code}: {exc.message}",
                                code=EXIT_PROVIDER, transient=transient)
        if isinstance(status, int) and (status >= 500 or status == 429):
            return StorageError(f"{what} {where}: GCS error {status}", code=EXIT_PROVIDER,
                                transient=True)
        if isinstance(exc, OSError) or type(exc).__module__.startswith(("requests", "urllib3")):
            return StorageError(f"{what} {where}: cannot reach GCS ({exc})", code=EXIT_PROVIDER,
                                transient=True)
        return StorageError(f"{what} {where}: {type(exc).__name__}: {exc}", code=EXIT_PROVIDER)

    # -- listing ----------------------------------------------------------------------------
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._errors("list"):
            pages = self.client.list_blobs(self.bucket, prefix=prefix or None,
                                           page_size=self.list_page_size).pages
        for blob in self._paged(pages):
            if not blob.name.endswith("/"):
                yield _blob_info(blob)

    def stat(self, key: str) -> ObjectInfo:
        self._count("stat")
        with self._errors("stat", key):
            blob = self._bucket.get_blob(key)
        if blob is None:
            raise StorageError(f"no such object {self.uri(key)}", code=EXIT_BAD_INPUT)
        return _blob_info(blob)

    # -- reading ----------------------------------------------------------------------------
    def open_read(self, key: str) -> BinaryIO:
        self._count("read")
        blob = self._bucket.blob(key)
        with self._errors("read", key):
            reader = blob.open("rb", chunk_size=min(self.part_size, 16 * MIB))
        return cast(BinaryIO, StoreReader(reader, self, key))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        self._count("read")
        with self._errors("read", key):
            data: bytes = self._bucket.blob(key).download_as_bytes(
                start=start, end=start + length - 1, checksum=None)
        return data

    def presigned_url(self, key: str, seconds: int = 3600) -> str | None:
        """A V4 signed GET where the credentials can sign (a service account key), else None
        (user credentials, the emulator's anonymous ones): the copy then streams."""
        import datetime as dt

        try:
            url: str = self._bucket.blob(key).generate_signed_url(
                version="v4", expiration=dt.timedelta(seconds=seconds), method="GET")
        except Exception:       # cannot sign with these credentials
            return None
        return url

    # -- writing ----------------------------------------------------------------------------
    def put(self, key: str, source: BinaryIO | IO[bytes] | str | Path, *,
            size: int | None = None, mtime: float | None = None,
            md5: str | None = None) -> ObjectInfo:
        with source_reader(source) as reader:
            known = size if size is not None else source_size(reader)
            first, fits = read_ahead(reader, known, self.single_limit)
            resumable = not fits
            blob = self._bucket.blob(key, chunk_size=self.part_size if resumable else None)
            if mtime is not None:
                blob.metadata = {"mtime": f"{mtime:.6f}"}
            self._count("put")
            if resumable:
                stream = HashingReader(_Chain(first, reader, self))
                with self._errors("upload", key):
                    blob.upload_from_file(stream, size=known, checksum=None, retry=None,
                                          content_type="application/octet-stream")
            else:
                stream = HashingReader(io.BytesIO(first))
                with self._errors("upload", key):
                    blob.upload_from_file(stream, size=len(first), checksum=None, retry=None,
                                          content_type="application/octet-stream")
        digest = stream.hexdigest()
        info = _blob_info(blob)
        problem = None
        if size is not None and stream.size != size:
            problem = f"read {stream.size} bytes, expected {size} (the source changed?)"
        elif md5 is not None and digest != md5:
            problem = f"md5 {digest} of the bytes read differs from the source's {md5}"
        elif info.hashes.get(MD5) not in (None, digest) or info.size != stream.size:
            problem = f"GCS stored md5 {info.hashes.get(MD5)} / {info.size} bytes, sent {digest}"
        if problem:
            with contextlib.suppress(Exception):
                blob.delete()
            raise StorageError(f"{self.uri(key)}: {problem}", code=EXIT_PROVIDER,
                               transient=True)
        return info

    def delete(self, key: str) -> None:
        from google.api_core.exceptions import NotFound

        self._count("delete")
        with self._errors("delete", key):
            with contextlib.suppress(NotFound):
                self._bucket.blob(key).delete()

    def close(self) -> None:
        """Nothing to release: the client is shared (``shared_client``)."""


class _Chain(io.RawIOBase):
    """Bytes already read, then the rest of the stream; counts resumable chunks as parts."""

    def __init__(self, first: bytes, rest: IO[bytes] | BinaryIO, store: GcsStore) -> None:
        super().__init__()
        self._first = first
        self._rest = rest
        self._store = store

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        self._store._count("put_part")
        if n is None or n < 0:
            out, self._first = self._first + self._rest.read(), b""
            return out
        if self._first:
            out, self._first = self._first[:n], self._first[n:]
            if len(out) < n:
                out += read_full(self._rest, n - len(out))
            return out
        return read_full(self._rest, n)


