"""What the stores put on the wire, on the real stand-ins through the official SDKs.

- A small S3 upload goes in one round trip: no ``Expect: 100-continue`` (botocore's default
  waits for the server's ``100 Continue`` before any PUT body; rclone never asks). A large
  body still asks, so S3 can refuse it before the bytes are sent.
- A proxy set in the environment is used by every store, and ``NO_PROXY`` bypasses it, though
  the requests-based SDKs (GCS, Azure) read the environment once per client, not per request.
"""

from __future__ import annotations

import http.client
import os
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from providers.storage import Store, open_store
from tests.fault_proxy import answer
from tests.test_storage_conformance import new_bucket
from tests.token_gate import HOP_HEADERS

MIB = 1024 * 1024
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
              "https_proxy", "all_proxy", "no_proxy")


def test_a_small_s3_upload_does_not_wait_for_100_continue(
        tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = new_bucket("s3", tmp_path, request)
    store, _ = open_store(uri)
    sent: list[tuple[str, object]] = []
    # what reaches the client's HTTP session: botocore's calls and the direct small PUT alike
    session = store.client._endpoint.http_session
    send = session.send

    def capture(prepared: object) -> object:
        if prepared.method == "PUT":  # type: ignore[attr-defined]
            sent.append((prepared.url.rsplit("/", 1)[-1],  # type: ignore[attr-defined]
                         prepared.headers.get("Expect")))  # type: ignore[attr-defined]
        return send(prepared)

    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(4096))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * MIB))
    with monkeypatch.context() as patch:        # the client is shared: undone at once
        patch.setattr(session, "send", capture)
        store.put("small.bin", small, size=4096, mtime=1.0)
        store.put("big.bin", big, mtime=1.0)
    assert dict(sent) == {"small.bin": None, "big.bin": b"100-continue"}
    assert _read(store, "small.bin") == small.read_bytes()
    assert _read(store, "big.bin") == big.read_bytes()


def _read(store: Store, key: str) -> bytes:
    with store.open_read(key) as reader:
        return reader.read()


class _ForwardProxy(BaseHTTPRequestHandler):
    """A plain-HTTP forward proxy (absolute-URI requests), counting what it forwards."""

    hits: list[str]

    def _forward(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("proxy-connection", "connection", "expect")}
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        target = url.path + (f"?{url.query}" if url.query else "")
        conn.request(self.command, target, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.server.hits.append(f"{self.command} {url.path}")  # type: ignore[attr-defined]
        # hop-by-hop headers stay here: Azurite's ``Keep-Alive`` passed on would tell the client
        # to reuse a connection this proxy closes (Connection: close on HTTP/1.0 is then not
        # read as the end), and the Azure SDK's retry of the dropped request waits 15-18 s
        answer(self, resp.status, {k: v for k, v in resp.getheaders()
                                   if k.lower() not in HOP_HEADERS}, data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ForwardProxy)
    server.hits = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_a_proxy_from_the_environment_is_used_and_no_proxy_bypasses_it(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        proxy: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = new_bucket(kind, tmp_path, request)
    hits: list[str] = proxy.hits  # type: ignore[attr-defined]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    data = uuid.uuid4().bytes * 64

    store, _ = open_store(uri)
    store.put_bytes("via-proxy.bin", data)
    assert _read(store, "via-proxy.bin") == data
    through = len(hits)
    assert through >= 2, hits          # the upload and the read went through the proxy

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    store, _ = open_store(uri)          # a changed environment gets a client of its own
    store.put_bytes("direct.bin", data)
    assert sorted(info.key for info in store.list()) == ["direct.bin", "via-proxy.bin"]
    assert len(hits) == through, hits[through:]


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_a_store_sends_only_the_requests_its_calls_need(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        proxy: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload, a read and a listing are three requests, and nothing else reaches the store,
    also later: google-cloud-storage 3.x would GET the bucket's metadata from a thread of its own
    to label trace spans that are off (``providers.gcp.storage.without_span_metadata``)."""
    uri = new_bucket(kind, tmp_path, request)
    hits: list[str] = proxy.hits  # type: ignore[attr-defined]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    before = set(threading.enumerate())
    store, _ = open_store(uri)
    store.put_bytes("once.bin", b"x" * 1024)
    assert _read(store, "once.bin") == b"x" * 1024
    assert [info.key for info in store.list()] == ["once.bin"]
    for thread in set(threading.enumerate()) - before:    # what the calls left running ends
        thread.join(timeout=60)
    assert len(hits) == 3, hits


class _CutFirstListing(_ForwardProxy):
    """The forward proxy, except that the first List Blobs answer stops halfway through its
    body and the connection closes (a reset while a page streams)."""

    def _forward(self) -> None:
        if "comp=list" not in self.path or self.server.cut:  # type: ignore[attr-defined]
            return super()._forward()
        self.server.cut = True  # type: ignore[attr-defined]
        url = urllib.parse.urlsplit(self.path)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("proxy-connection", "connection", "expect")}
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request("GET", f"{url.path}?{url.query}", headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        self.send_response(resp.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.close_connection = True

    do_GET = _forward


def test_an_azure_listing_cut_while_its_page_streams_is_asked_again(
        tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Azure store parses a listing page as it arrives (the SDK's retries end with the
    headers), so a body cut short is its own to retry: the listing is whole, not short."""
    uri = new_bucket("azure", tmp_path, request)
    store, _ = open_store(uri)
    keys = [f"d/{i:03d}.bin" for i in range(40)]
    for key in keys:
        store.put_bytes(key, b"x")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CutFirstListing)
    server.hits, server.cut = [], False  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        store, _ = open_store(uri)      # a client of its own, through the proxy
        assert sorted(info.key for info in store.list("d/")) == keys
        assert server.cut is True, server.hits  # type: ignore[attr-defined]
        assert store.calls["list_page"] == 1
    finally:
        server.shutdown()
        server.server_close()
