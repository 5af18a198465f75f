"""``az://container/prefix`` through azure-storage-blob (imported when a store is opened).

The account comes from ``AZURE_STORAGE_CONNECTION_STRING``, else from ``AZURE_STORAGE_ACCOUNT_URL``
(or ``AZURE_STORAGE_ACCOUNT``) with ``DefaultAzureCredential`` (az login, managed identity,
environment). Small blobs go up in one Put Blob (Azure records their Content-MD5); larger ones
as blocks staged in parallel and committed at the end, when the blob appears whole. Azure
records no MD5 for a committed block list, so dqlctl sets Content-MD5 itself on commit, from
the bytes it streamed, after the service checked each block's own MD5.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import os
import threading
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, BinaryIO, cast
from xml.etree import ElementTree

from providers.storage.base import (
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
from providers.storage.streams import StoreReader, read_ahead, read_full, source_reader, source_size

MIB = 1024 * 1024


def _props_info(props: Any) -> ObjectInfo:
    settings = getattr(props, "content_settings", None)
    raw = getattr(settings, "content_md5", None) if settings is not None else None
    hashes = {MD5: bytes(raw).hex()} if raw else {}
    mtime = props.last_modified.timestamp() if props.last_modified else 0.0
    meta = props.metadata or {}
    with contextlib.suppress(ValueError, TypeError):
        mtime = float(meta["mtime"]) if "mtime" in meta else mtime
    return ObjectInfo(props.name, int(props.size or 0), mtime, hashes)


def _xml_info(blob: ElementTree.Element) -> ObjectInfo | None:
    """An ObjectInfo from one <Blob> of a List Blobs answer (None for a "folder" marker)."""
    name_el = blob.find("Name")
    name = (name_el.text or "") if name_el is not None else ""
    if name_el is not None and name_el.get("Encoded") == "true":
        name = urllib.parse.unquote(name)
    if not name or name.endswith("/"):
        return None
    props = blob.find("Properties")
    get = props.findtext if props is not None else (lambda _tag: None)
    raw = get("Content-MD5")
    hashes = {MD5: base64.b64decode(raw).hex()} if raw else {}
    try:
        mtime = float(blob.findtext("Metadata/mtime") or "")    # the source's, set by a put
    except ValueError:
        stamp = get("Last-Modified")
        mtime = email.utils.parsedate_to_datetime(stamp).timestamp() if stamp else 0.0
    return ObjectInfo(name, int(get("Content-Length") or 0), mtime, hashes)


def _parse_list_page(chunks: Iterable[bytes]) -> tuple[list[ObjectInfo], str]:
    """The blobs of a List Blobs answer, parsed chunk by chunk as it arrives, and its
    NextMarker ("" on the last page)."""
    parser = ElementTree.XMLPullParser(("end",))
    infos: list[ObjectInfo] = []
    marker = ""

    def take() -> None:
        nonlocal marker
        for _, element in parser.read_events():
            if element.tag == "Blob":
                info = _xml_info(element)
                if info is not None:
                    infos.append(info)
                element.clear()
            elif element.tag == "NextMarker":
                marker = element.text or ""

    for chunk in chunks:
        parser.feed(chunk)
        take()
    parser.close()
    take()
    return infos, marker


class AzureStore(Store):
    scheme = "az"
    hash_types = frozenset({MD5})
    part_size = 8 * MIB         # blocks staged 4 at a time

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        try:
            from azure.storage.blob import BlobServiceClient
        except ImportError:
            raise missing_sdk("azure-storage-blob", "azure", "az") from None
        self.service = shared_client(("az", env_key("AZURE_", "MSI_", "IDENTITY_",
                                                   *REQUESTS_ENV)),
                                     lambda: self._connect(BlobServiceClient))
        self.container = self.service.get_container_client(bucket)
        self.account = self.service.account_name

    def _connect(self, service_class: Any) -> Any:
        """The account's client (one per process and environment: ``shared_client``), its
        connection pool sized for every transfer, checker and block in flight (the SDK's
        default of 10 made 4 transfers of 4 blocks each reconnect)."""
        import requests
        from azure.core.pipeline.transport import RequestsTransport

        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # azure-core passes its own ``verify`` on every request, which overrides the
        # session's: a CA bundle (REQUESTS_CA_BUNDLE, as settle_environment honours it for
        # the other stores) has to be the transport's
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        transport = RequestsTransport(session=session, session_owner=True,
                                      **({"connection_verify": bundle} if bundle else {}))
        settings: dict[str, Any] = {"max_single_get_size": 4 * MIB,
                                    "max_chunk_get_size": 4 * MIB, "retry_total": 3,
                                    "transport": transport}
        with self._errors("connect to"):
            service = self._service(service_class, settings)
        settle_environment(session, service.url)
        return service

    @staticmethod
    def _service(service_class: Any, settings: dict[str, Any]) -> Any:
        """The account's client from a connection string, or an account and Azure AD."""
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn:
            return service_class.from_connection_string(conn, **settings)
        url = os.environ.get("AZURE_STORAGE_ACCOUNT_URL")
        account = os.environ.get("AZURE_STORAGE_ACCOUNT")
        if not url and account:
            url = f"https://{account}.blob.core.windows.net"
        if not url:
            raise StorageError(
                "no Azure storage account: set AZURE_STORAGE_CONNECTION_STRING, or "
                "AZURE_STORAGE_ACCOUNT (signed in with `az login` or a managed identity)",
                code=EXIT_PROVIDER)
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise missing_sdk("azure-identity", "azure", "az") from None
        return service_class(url, credential=DefaultAzureCredential(), **settings)

    # -- errors -----------------------------------------------------------------------------
    def _translate(self, exc: Exception, what: str, key: str | None) -> StorageError:
        from azure.core import exceptions as aex

        where = self.uri(key) if key is not None else f"az://{self.bucket}"
        code = str(getattr(exc, "error_code", "") or "")
        if isinstance(exc, aex.ClientAuthenticationError):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return StorageError(f"{what} {where}: Azure credentials rejected or missing "
                                f"({first[:160]})", code=EXIT_PROVIDER)
        if isinstance(exc, aex.ResourceNotFoundError):
            if code == "ContainerNotFound" or key is None:
                return StorageError(f"container az://{self.bucket} does not exist",
                                    code=EXIT_BAD_INPUT)
            return StorageError(f"no such object {where}", code=EXIT_BAD_INPUT)
        if isinstance(exc, aex.ServiceRequestError | aex.ServiceResponseError):
            return StorageError(f"{what} {where}: cannot reach Azure Blob ({exc})",
                                code=EXIT_PROVIDER, transient=True)
        if isinstance(exc, aex.HttpResponseError):
            status = exc.status_code or 0
            if status in (401, 403):
                return StorageError(f"{what} {where}: access denied by Azure ({code})",
                                    code=EXIT_PROVIDER)
            # 501: an API the service (Azurite) does not implement: retrying will not help
            return StorageError(f"{what} {where}: Azure error {status} {code}",
                                code=EXIT_PROVIDER,
                                transient=(status >= 500 and status != 501) or status == 429)
        if isinstance(exc, ValueError):
            return StorageError(f"Azure storage settings: {exc}", code=EXIT_PROVIDER)
        if isinstance(exc, OSError):
            return StorageError(f"{what} {where}: {exc}", code=EXIT_PROVIDER, transient=True)
        return StorageError(f"{what} {where}: {type(exc).__name__}: {exc}", code=EXIT_PROVIDER)

    # -- listing ----------------------------------------------------------------------------
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """List Blobs pages, read straight from their XML: the SDK's model deserializer
        costs ~2 ms a blob (a no-op's listing of 500 blobs took 1 s, the request 0.2 s)."""
        marker = ""
        while True:
            with self._errors("list"):
                infos, marker = self._list_page(prefix, marker)
            self._count("list_page")
            yield from infos
            if not marker:
                return

    def _list_page(self, prefix: str, marker: str) -> tuple[list[ObjectInfo], str]:
        """One List Blobs request through the SDK's pipeline (its auth, retries, errors):
        its blobs and the next page's marker ("" after the last page).

        The XML is parsed as it arrives: Azurite sends a page of 500 blobs over ~30 ms and
        parsing it after the last byte took another ~15. The pipeline's retries end when the
        headers are in, so a failure while the body streams is retried here, once."""
        from azure.core.exceptions import (
            HttpResponseError,
            IncompleteReadError,
            ResourceNotFoundError,
            ServiceResponseError,
        )
        from azure.core.rest import HttpRequest

        query = {"restype": "container", "comp": "list", "include": "metadata",
                 "maxresults": str(self.list_page_size)}
        if prefix:
            query["prefix"] = prefix
        if marker:
            query["marker"] = marker
        base = self.container.url
        url = f"{base}{'&' if '?' in base else '?'}{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"
        for attempt in (1, 2):
            resp = self.container._client._send_request(HttpRequest(
                "GET", url, headers={"x-ms-version": self.container.api_version,
                                     "Accept": "application/xml"}), stream=True)
            if resp.status_code >= 300:
                resp.read()
                kind = ResourceNotFoundError if resp.status_code == 404 else HttpResponseError
                exc = kind(response=resp)
                exc.error_code = resp.headers.get("x-ms-error-code")
                raise exc
            try:
                return _parse_list_page(resp.iter_bytes())
            except (IncompleteReadError, ServiceResponseError, OSError):
                if attempt == 2:
                    raise
            finally:
                resp.close()
        raise AssertionError("unreachable")

    def stat(self, key: str) -> ObjectInfo:
        self._count("stat")
        with self._errors("stat", key):
            props = self.container.get_blob_client(key).get_blob_properties()
        return _props_info(props)

    # -- reading ----------------------------------------------------------------------------
    def open_read(self, key: str) -> BinaryIO:
        self._count("read")
        with self._errors("read", key):
            downloader = self.container.get_blob_client(key).download_blob()
        return cast(BinaryIO, StoreReader(downloader, self, key))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        self._count("read")
        with self._errors("read", key):
            data: bytes = self.container.get_blob_client(key).download_blob(
                offset=start, length=length).readall()
        return data

    # -- writing ----------------------------------------------------------------------------
    def put(self, key: str, source: BinaryIO | IO[bytes] | str | Path, *,
            size: int | None = None, mtime: float | None = None,
            md5: str | None = None) -> ObjectInfo:
        with source_reader(source) as reader:
            known = size if size is not None else source_size(reader)
            first, fits = read_ahead(reader, known, self.single_limit)
            if fits:
                return self._put_single(key, first, size, mtime, md5)
            return self._put_blocks(key, reader, first, size, mtime, md5)

    def _metadata(self, mtime: float | None) -> dict[str, str]:
        return {"mtime": f"{mtime:.6f}"} if mtime is not None else {}

    def _check(self, key: str, got: int, size: int | None, digest: str,
               md5: str | None) -> None:
        if size is not None and got != size:
            raise StorageError(f"{self.uri(key)}: read {got} bytes, expected {size} (the "
                               "source changed while copying?)", code=EXIT_PROVIDER,
                               transient=True)
        if md5 is not None and digest != md5:
            raise StorageError(f"{self.uri(key)}: md5 {digest} of the bytes read differs from "
                               f"the source's {md5}", code=EXIT_PROVIDER, transient=True)

    def _put_single(self, key: str, data: bytes, size: int | None, mtime: float | None,
                    md5: str | None) -> ObjectInfo:
        from azure.storage.blob import ContentSettings

        raw = hashlib.md5(data).digest()
        self._check(key, len(data), size, raw.hex(), md5)
        self._count("put")
        with self._errors("upload", key):
            resp = self.container.get_blob_client(key).upload_blob(
                data, length=len(data), overwrite=True, metadata=self._metadata(mtime),
                content_settings=ContentSettings(content_type="application/octet-stream",
                                                 content_md5=bytearray(raw)))
        stored = resp.get("content_md5")
        if stored and bytes(stored) != raw:
            raise StorageError(f"{self.uri(key)}: Azure stored md5 {bytes(stored).hex()}, "
                               f"sent {raw.hex()}", code=EXIT_PROVIDER, transient=True)
        return ObjectInfo(key, len(data), mtime if mtime is not None else 0.0, {MD5: raw.hex()})

    def _put_blocks(self, key: str, reader: IO[bytes] | BinaryIO, first: bytes,
                    size: int | None, mtime: float | None, md5: str | None) -> ObjectInfo:
        from azure.storage.blob import BlobBlock, ContentSettings

        self._count("put")
        client = self.container.get_blob_client(key)
        tag = uuid.uuid4().hex[:16]         # block ids: equal length, unique per upload
        whole = hashlib.md5()
        total = 0
        ids: list[str] = []
        futures: list[Future[None]] = []
        slots = threading.BoundedSemaphore(self.part_concurrency + 1)
        pool = ThreadPoolExecutor(self.part_concurrency, thread_name_prefix="az-block")

        def stage(block_id: str, chunk: bytes) -> None:
            try:
                self._count("put_part")
                with self._errors("upload block of", key):
                    client.stage_block(block_id, chunk, length=len(chunk),
                                       validate_content=True)
            finally:
                slots.release()

        try:
            buffer = first
            while True:
                while len(buffer) < self.part_size:
                    more = read_full(reader, self.part_size - len(buffer))
                    if not more:
                        break
                    buffer += more
                chunk, buffer = buffer[:self.part_size], buffer[self.part_size:]
                if not chunk and ids:
                    break
                block_id = base64.b64encode(f"{tag}-{len(ids):08d}".encode()).decode()
                ids.append(block_id)
                whole.update(chunk)
                total += len(chunk)
                slots.acquire()
                for done in [f for f in futures if f.done()]:
                    done.result()
                futures.append(pool.submit(stage, block_id, chunk))
                if len(chunk) < self.part_size and not buffer:
                    break
            for fut in futures:
                fut.result()
            digest = whole.hexdigest()
            self._check(key, total, size, digest, md5)
            with self._errors("commit", key):
                client.commit_block_list(
                    [BlobBlock(block_id=b) for b in ids], metadata=self._metadata(mtime),
                    content_settings=ContentSettings(content_type="application/octet-stream",
                                                     content_md5=bytearray(whole.digest())))
        except BaseException:
            for fut in futures:
                fut.cancel()
            pool.shutdown(wait=True)
            raise       # staged blocks that are never committed are discarded by Azure
        pool.shutdown(wait=True)
        with self._errors("stat", key):
            props = client.get_blob_properties()
        info = _props_info(props)
        if info.size != total:
            raise StorageError(f"{self.uri(key)}: Azure holds {info.size} bytes, sent {total}",
                               code=EXIT_PROVIDER, transient=True)
        return ObjectInfo(key, total, info.mtime, {MD5: digest})

    FROM_URL_MAX = 5000 * MIB       # Put Blob From URL's limit; larger: Put Block From URL
    FROM_URL_BLOCK = 100 * MIB

    def put_from_url(self, key: str, url: str, *, size: int, mtime: float | None,
                     md5: str) -> ObjectInfo | None:
        """Put Blob From URL (Put Block From URL + commit above 5000 MiB): Azure reads the
        source itself and checks its md5 (``x-ms-source-content-md5``); the blob records it
        as its Content-MD5. Visible only when whole, like every put."""
        from azure.storage.blob import BlobBlock, ContentSettings

        client = self.container.get_blob_client(key)
        raw = bytearray(bytes.fromhex(md5))
        settings = ContentSettings(content_type="application/octet-stream", content_md5=raw)
        self._count("put_from_url")
        with self._errors("copy from URL to", key):
            if size <= self.FROM_URL_MAX:
                client.upload_blob_from_url(url, overwrite=True, metadata=self._metadata(mtime),
                                            content_settings=settings, source_content_md5=raw,
                                            include_source_blob_properties=False)
            else:
                tag = uuid.uuid4().hex[:16]
                ids = []
                for n, start in enumerate(range(0, size, self.FROM_URL_BLOCK)):
                    block_id = base64.b64encode(f"{tag}-{n:08d}".encode()).decode()
                    self._count("put_part")
                    client.stage_block_from_url(block_id, url, source_offset=start,
                                                source_length=min(self.FROM_URL_BLOCK,
                                                                  size - start))
                    ids.append(block_id)
                client.commit_block_list([BlobBlock(block_id=b) for b in ids],
                                         metadata=self._metadata(mtime),
                                         content_settings=settings)
            props = client.get_blob_properties()
        info = _props_info(props)
        if info.size != size or info.hashes.get(MD5, md5) != md5:
            raise StorageError(f"{self.uri(key)}: Azure holds {info.size} bytes, md5 "
                               f"{info.hashes.get(MD5)}; the source has {size}, {md5}",
                               code=EXIT_PROVIDER, transient=True)
        return ObjectInfo(key, size, info.mtime, {MD5: md5})

    def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        self._count("delete")
        with self._errors("delete", key):
            with contextlib.suppress(ResourceNotFoundError):
                self.container.get_blob_client(key).delete_blob()

    def close(self) -> None:
        """Nothing to release: the client is shared (``shared_client``)."""


