"""``s3://bucket/prefix`` through boto3 (imported when a store is opened, not before).

Endpoint, region and credentials come from boto3's own chain (``AWS_ENDPOINT_URL``, profiles,
instance roles ...). Hashes: S3's ETag is an MD5 only for single-part uploads, so every upload
also records its MD5 in the object's metadata (``x-amz-meta-md5``); a listing reports md5 only
for single-part ETags, ``stat`` (HEAD) also from that metadata. Objects above
``multipart_threshold`` go up as a multipart upload with parallel parts; S3 makes the object
visible only when the upload completes, and a failed or interrupted upload is aborted (or, if
the process was killed, stays an invisible incomplete upload).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

from providers.storage import uploads
from providers.storage.base import (
    EXIT_BAD_INPUT,
    EXIT_PROVIDER,
    MD5,
    REQUESTS_ENV,
    ObjectInfo,
    PendingUpload,
    StorageError,
    Store,
    env_key,
    missing_sdk,
    shared_client,
)
from providers.storage.streams import (
    StoreReader,
    md5_of_stream,
    read_ahead,
    read_full,
    source_reader,
    source_size,
)

if TYPE_CHECKING:
    from providers.aws.direct_put import DirectPut

AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
              "InvalidToken", "AllAccessDisabled", "AccountProblem"}
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                   "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed"}
MAX_COPY = 5 * 1024 ** 3
MAX_PARTS = 10_000
MIB = 1024 * 1024


def _etag_md5(etag: str | None) -> str | None:
    value = (etag or "").strip('"').lower()
    if len(value) == 32 and "-" not in value:
        return value
    return None


#: a body up to this size goes without ``Expect: 100-continue`` (see _no_continue_when_small)
NO_CONTINUE_BELOW = 1 * MIB


def _no_continue_when_small(model: Any, params: dict[str, Any], **_: Any) -> None:
    """botocore asks S3 for ``100 Continue`` before sending any PUT body: one more round
    trip before the bytes. Worth it for a large body the server may refuse, pure latency for
    a small one (a whole RTT of a 4 KiB upload); rclone never asks. Dropped below
    ``NO_CONTINUE_BELOW`` (bodies we hold in memory)."""
    if model.name != "PutObject":
        return
    body = params.get("body")
    if isinstance(body, bytes | bytearray) and len(body) < NO_CONTINUE_BELOW or \
            hasattr(body, "getbuffer") and body.getbuffer().nbytes < NO_CONTINUE_BELOW:
        params["headers"].pop("Expect", None)


def fast_timestamp(value: Any) -> Any:
    """botocore's timestamp parser, fast for the ISO 8601 times S3 listings carry.

    botocore parses every ``LastModified`` of a listing with dateutil, about 70 us each: 35 ms
    of a 500-key no-op sync, a third of its client time. ``datetime.fromisoformat`` reads the
    same ``2026-11-30T23:59:59.000Z`` in about 1 us; anything else (HTTP dates in headers,
    epoch numbers) goes to botocore's own parser. Timezone-aware either way."""
    if isinstance(value, str) and len(value) >= 20 and value[10:11] == "T":
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    from botocore.utils import parse_timestamp

    return parse_timestamp(value)


class S3Store(Store):
    scheme = "s3"
    hash_types = frozenset({MD5})
    wants_md5_first = True
    lists_upload_time = True
    # A file up to 200 MiB (rclone's upload_cutoff) goes up in one streamed PUT: its ETag is
    # its MD5, so listings can compare it without a HEAD. Larger files, and streams that
    # cannot seek beyond ``buffer_limit``, go up as multipart uploads of 8 MiB parts (the AWS
    # CLI's size), 4 in parallel.
    multipart_threshold = 200 * MIB
    part_size = 8 * MIB

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        try:
            # botocore alone: boto3 adds nothing a sync uses, and importing it (with
            # s3transfer) is a third of a no-op's import time
            import botocore.session
            from botocore.config import Config
        except ImportError:
            raise missing_sdk("boto3", "aws", "s3") from None
        # One client per AWS environment and pool size, for the process (``shared_client``).
        # Its pool holds a connection for every transfer and checker thread, and the parts
        # each transfer sends at once.
        def build() -> Any:
            with self._errors("connect"):
                session = botocore.session.get_session()
                session.get_component("response_parser_factory").set_parser_defaults(
                    timestamp_parser=fast_timestamp)
                client = session.create_client("s3", config=Config(
                    max_pool_connections=max(32, 4 * self.part_concurrency),
                    retries={"mode": "standard", "max_attempts": 4},
                    parameter_validation=False,     # we build every request ourselves
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ))
            # last among the handlers of every S3 call: after botocore's own add_expect_header
            client.meta.events.register_last("before-call.s3", _no_continue_when_small)
            # the client's own credentials (the session keeps the one object it gave it)
            return client, session.get_credentials()

        self.client, self._credentials = shared_client(
            ("s3", env_key("AWS_", *REQUESTS_ENV), self.part_concurrency), build)
        #: small PUTs without botocore's per-call CPU (``providers.aws.direct_put``): made at
        #: the first small upload; off once one failed (botocore alone from then on)
        self._direct: DirectPut | None = None
        self._direct_off = False

    # -- errors -----------------------------------------------------------------------------
    def _translate(self, exc: Exception, what: str, key: str | None) -> StorageError:
        from botocore import exceptions as bex

        where = self.uri(key) if key is not None else f"s3://{self.bucket}"
        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
            return StorageError("no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE / `aws configure`",
                                code=EXIT_PROVIDER)
        if isinstance(exc, bex.NoRegionError):
            return StorageError("no AWS region: set AWS_DEFAULT_REGION or a profile region",
                                code=EXIT_PROVIDER)
        if isinstance(exc, bex.EndpointConnectionError | bex.ConnectionClosedError
                      | bex.ReadTimeoutError | bex.ConnectTimeoutError
                      | bex.ResponseStreamingError):
            return StorageError(f"{what} {where}: cannot reach S3 ({exc})", code=EXIT_PROVIDER,
                                transient=True)
        if isinstance(exc, bex.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code == "NoSuchBucket" or (status == 404 and key is None):
                return StorageError(f"bucket s3://{self.bucket} does not exist",
                                    code=EXIT_BAD_INPUT)
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return StorageError(f"no such object {where}", code=EXIT_BAD_INPUT)
            if code in AUTH_CODES or status == 403:
                return StorageError(f"{what} {where}: access denied by S3 ({code})",
                                    code=EXIT_PROVIDER)
            if code in TRANSIENT_CODES or status >= 500 or status == 429:
                return StorageError(f"{what} {where}: S3 error {code or status}",
                                    code=EXIT_PROVIDER, transient=True)
            return StorageError(f"{what} {where}: S3 error {code}: {err.get('Message', '')}",
                                code=EXIT_PROVIDER)
        if isinstance(exc, bex.BotoCoreError):
            return StorageError(f"{what} {where}: {exc}", code=EXIT_PROVIDER)
        if isinstance(exc, OSError):
            return StorageError(f"{what} {where}: {exc}", code=EXIT_PROVIDER, transient=True)
        return StorageError(f"{what} {where}: {type(exc).__name__}: {exc}", code=EXIT_PROVIDER)

    # -- listing ----------------------------------------------------------------------------
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix,
                                      "MaxKeys": self.list_page_size}
            if token:
                kwargs["ContinuationToken"] = token
            with self._errors("list"):
                page = self.client.list_objects_v2(**kwargs)
            self._count("list_page")
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/"):
                    continue            # a "folder" marker, not a file
                md5 = _etag_md5(item.get("ETag"))
                yield ObjectInfo(key, int(item["Size"]), item["LastModified"].timestamp(),
                                 {MD5: md5} if md5 else {}, upload_time=True)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def stat(self, key: str) -> ObjectInfo:
        self._count("stat")
        with self._errors("stat", key):
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        meta = head.get("Metadata", {})
        md5 = meta.get("md5") or _etag_md5(head.get("ETag"))
        mtime, upload_time = head["LastModified"].timestamp(), True
        with contextlib.suppress(ValueError, TypeError, KeyError):
            mtime, upload_time = float(meta["mtime"]), False
        return ObjectInfo(key, int(head["ContentLength"]), mtime, {MD5: md5} if md5 else {},
                          upload_time=upload_time)

    # -- reading ----------------------------------------------------------------------------
    def open_read(self, key: str) -> BinaryIO:
        self._count("read")
        with self._errors("read", key):
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        mtime = None
        with contextlib.suppress(ValueError, TypeError, KeyError):
            mtime = float(resp["Metadata"]["mtime"])
        return cast(BinaryIO, StoreReader(resp["Body"], self, key, read_all=None, mtime=mtime))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        self._count("read")
        with self._errors("read", key):
            resp = self.client.get_object(Bucket=self.bucket, Key=key,
                                          Range=f"bytes={start}-{start + length - 1}")
            data: bytes = resp["Body"].read()
            return data

    def presigned_url(self, key: str, seconds: int = 3600) -> str | None:
        """A SigV4 presigned GET (computed here, no request): what Azure pulls from."""
        with self._errors("sign a URL for", key):
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=seconds)
        return url

    # -- writing ----------------------------------------------------------------------------
    def put(self, key: str, source: BinaryIO | IO[bytes] | str | Path, *,
            size: int | None = None, mtime: float | None = None,
            md5: str | None = None) -> ObjectInfo:
        with source_reader(source) as reader:
            known = size if size is not None else source_size(reader)
            if known is not None and known > self.buffer_limit and _seekable(reader):
                if md5 is None:             # S3 takes the md5 (metadata) before the bytes
                    here = reader.tell()
                    md5 = md5_of_stream(reader)[0]
                    reader.seek(here)
                if known <= self.multipart_threshold:
                    return self._put_stream(key, reader, known, mtime, md5)
                return self._put_multipart(key, reader, b"", known, mtime, md5)
            first, fits = read_ahead(reader, known, self.buffer_limit)
            if not fits:
                return self._put_multipart(key, reader, first, size, mtime, md5)
            return self._put_single(key, first, size, mtime, md5)

    def _put_stream(self, key: str, reader: IO[bytes] | BinaryIO, size: int,
                    mtime: float | None, md5: str) -> ObjectInfo:
        """One PUT streamed from a seekable file whose md5 is known."""
        self._count("put")
        with self._errors("upload", key):
            resp = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=reader, ContentLength=size,
                ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode(),
                Metadata=self._metadata(mtime, md5))
        etag = _etag_md5(resp.get("ETag"))
        if etag is not None and etag != md5 and resp.get("ServerSideEncryption") != "aws:kms":
            raise StorageError(f"{self.uri(key)}: S3 stored md5 {etag}, the file's is {md5} "
                               "(it changed while copying?)", code=EXIT_PROVIDER, transient=True)
        return ObjectInfo(key, size, mtime if mtime is not None else 0.0, {MD5: md5})

    def _metadata(self, mtime: float | None, md5: str | None) -> dict[str, str]:
        meta = {}
        if md5:
            meta["md5"] = md5
        if mtime is not None:
            meta["mtime"] = f"{mtime:.6f}"
        return meta

    @staticmethod
    def _check(key: str, got_size: int, size: int | None, digest: str, md5: str | None) -> None:
        if size is not None and got_size != size:
            raise StorageError(f"{key}: read {got_size} bytes, expected {size} (the source "
                               "changed while copying?)", code=EXIT_PROVIDER, transient=True)
        if md5 is not None and digest != md5:
            raise StorageError(f"{key}: md5 {digest} of the bytes read differs from the "
                               f"source's {md5}", code=EXIT_PROVIDER, transient=True)

    def _put_single(self, key: str, data: bytes, size: int | None, mtime: float | None,
                    md5: str | None) -> ObjectInfo:
        raw = hashlib.md5(data).digest()
        digest = raw.hex()
        self._check(key, len(data), size, digest, md5)
        self._count("put")
        content_md5, metadata = base64.b64encode(raw).decode(), self._metadata(mtime, digest)
        sent = self._put_direct(key, data, content_md5, metadata)
        if sent is None:
            with self._errors("upload", key):
                resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                              ContentMD5=content_md5, Metadata=metadata)
            sent = resp.get("ETag"), resp.get("ServerSideEncryption")
        etag = _etag_md5(sent[0])
        if etag is not None and etag != digest and sent[1] != "aws:kms":
            raise StorageError(f"{self.uri(key)}: S3 stored md5 {etag}, sent {digest}",
                               code=EXIT_PROVIDER, transient=True)
        return ObjectInfo(key, len(data), mtime if mtime is not None else 0.0, {MD5: digest})

    def _put_direct(self, key: str, data: bytes, content_md5: str,
                    metadata: dict[str, str]) -> tuple[str | None, str | None] | None:
        """A small PUT sent as one signed request (``DirectPut``): the ETag and server-side
        encryption S3 answered, or None when it is for botocore to send (a large body, no
        direct path, or this one failed: it is then sent again through botocore, which alone
        sends the store's later PUTs)."""
        if len(data) >= NO_CONTINUE_BELOW or self._direct_off:
            return None
        try:
            direct = self._direct
            if direct is None:
                from providers.aws.direct_put import DirectPut

                direct = self._direct = DirectPut(self.client, self._credentials, self.bucket)
            headers = {"Content-MD5": content_md5,
                       **{f"x-amz-meta-{name}": value for name, value in metadata.items()}}
            answer = direct.put(key, data, headers)
        except Exception:           # botocore sends it again, and says what went wrong
            self._direct_off = True
            return None
        return answer.get("ETag"), answer.get("x-amz-server-side-encryption")

    def _put_multipart(self, key: str, reader: IO[bytes] | BinaryIO, first: bytes,
                       size: int | None, mtime: float | None, md5: str | None) -> ObjectInfo:
        self._count("put")
        with self._errors("upload", key):
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, Metadata=self._metadata(mtime, md5))["UploadId"]
        journal = uploads.record(self.uri(), key, upload_id)     # found again if we are killed
        part_size = self.part_size
        if size is not None and size > part_size * (MAX_PARTS - 1):
            part_size = -(-size // (MAX_PARTS - 1) // MIB) * MIB + MIB
        whole = hashlib.md5()
        total = 0
        digests: list[bytes] = []
        futures: list[Future[tuple[int, str]]] = []
        slots = threading.BoundedSemaphore(self.part_concurrency + 1)
        pool = ThreadPoolExecutor(self.part_concurrency, thread_name_prefix="s3-part")

        def upload(number: int, chunk: bytes, raw: bytes) -> tuple[int, str]:
            try:
                self._count("put_part")
                with self._errors("upload part of", key):
                    resp = self.client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        Body=chunk, ContentMD5=base64.b64encode(raw).decode())
                etag = (resp.get("ETag") or "").strip('"')
                if _etag_md5(etag) not in (None, raw.hex()):
                    raise StorageError(f"{self.uri(key)}: part {number} stored with md5 "
                                       f"{etag}, sent {raw.hex()}", code=EXIT_PROVIDER,
                                       transient=True)
                return number, etag
            finally:
                slots.release()

        try:
            buffer = first
            number = 0
            while True:
                while len(buffer) < part_size:
                    more = read_full(reader, part_size - len(buffer))
                    if not more:
                        break
                    buffer += more
                chunk, buffer = buffer[:part_size], buffer[part_size:]
                if not chunk and number > 0:
                    break
                number += 1
                raw = hashlib.md5(chunk).digest()
                whole.update(chunk)
                total += len(chunk)
                digests.append(raw)
                slots.acquire()
                for done in [f for f in futures if f.done()]:
                    done.result()       # fail fast on a failed part
                futures.append(pool.submit(upload, number, chunk, raw))
                if len(chunk) < part_size and not buffer:
                    break
            parts = [f.result() for f in futures]
            digest = whole.hexdigest()
            self._check(key, total, size, digest, md5)
            with self._errors("complete upload of", key):
                resp = self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})
        except BaseException:
            for fut in futures:
                fut.cancel()
            pool.shutdown(wait=True)
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
                uploads.forget(journal)
            raise
        pool.shutdown(wait=True)
        uploads.forget(journal)
        expected = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
        etag = (resp.get("ETag") or "").strip('"')
        if "-" in etag and etag != expected:
            raise StorageError(f"{self.uri(key)}: S3 assembled ETag {etag}, expected "
                               f"{expected}", code=EXIT_PROVIDER, transient=True)
        if md5 is None and total <= MAX_COPY:
            # A stream of unknown MD5: record it now, by copying the object onto itself with
            # the full metadata (one atomic server-side step; content unchanged).
            with self._errors("record md5 of", key):
                self.client.copy_object(Bucket=self.bucket, Key=key,
                                        CopySource={"Bucket": self.bucket, "Key": key},
                                        Metadata=self._metadata(mtime, digest),
                                        MetadataDirective="REPLACE")
        return ObjectInfo(key, total, mtime if mtime is not None else 0.0, {MD5: digest})

    def delete(self, key: str) -> None:
        self._count("delete")
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    delete_batch = 1000

    def delete_many(self, keys: list[str]) -> dict[str, str]:
        """DeleteObjects, 1000 keys a request (quiet: only failures come back)."""
        errors: dict[str, str] = {}
        for at in range(0, len(keys), self.delete_batch):
            batch = keys[at:at + self.delete_batch]
            self._count("delete_batch")
            with self._errors("delete"):
                resp = self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in batch], "Quiet": True})
            for err in resp.get("Errors", []):
                errors[err.get("Key", "")] = (f"delete {self.uri(err.get('Key', ''))}: S3 error "
                                              f"{err.get('Code')}: {err.get('Message', '')}")
        return errors

    def stale_uploads(self, prefix: str) -> list[PendingUpload]:
        """Multipart uploads a killed dqlctl left under ``prefix`` (its journal says which),
        still open at S3. No request unless the journal names one."""
        recorded = uploads.stale(self.uri(), prefix)
        if not recorded:
            return []
        self._count("list_uploads")
        with self._errors("list uploads of"):
            open_ids = {u["UploadId"] for u in self.client.list_multipart_uploads(
                Bucket=self.bucket, Prefix=prefix).get("Uploads", [])}
        for gone in [u for u in recorded if u.upload_id not in open_ids]:
            uploads.forget(gone.journal)        # completed or aborted by someone else
        return [u for u in recorded if u.upload_id in open_ids]

    def abort_upload(self, upload: PendingUpload) -> None:
        self._count("abort_upload")
        with self._errors("abort upload of", upload.key):
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload.key,
                                                   UploadId=upload.upload_id)
            except Exception as exc:
                if "NoSuchUpload" not in str(exc):
                    raise
        uploads.forget(upload.journal)

    def close(self) -> None:
        """Nothing to release: the client is shared (see ``__init__``)."""


def _seekable(reader: Any) -> bool:
    try:
        return bool(reader.seekable())
    except (AttributeError, ValueError, OSError):
        return False
