"""A small S3 upload as one signed PUT, without botocore's per-call machinery.

botocore spends about 2.5 ms of CPU on every call before and after the request itself: events,
parameter building, endpoint rules, retry bookkeeping, response parsing. A sync of many small
files is made of such calls, and with 4 transfers sharing one interpreter that CPU is what
holds the next request back (500 x 4 KiB to moto: 1.3 s of client CPU through ``put_object``,
0.8 s through this). A small PutObject needs none of it: ``DirectPut`` signs the request with
botocore's own SigV4 signer (``S3SigV4Auth``, with the payload signed exactly where botocore
signs it) and the client's credentials (refreshed as they expire), and sends it through the
client's own HTTP session: its connection pool, proxies, CA bundle and timeouts.

The object's URL and the region it is signed for are the ones botocore's endpoint rules give for
the bucket (virtual-hosted or path style; a regional, FIPS, dual-stack or custom endpoint alike):
read once off a PutObject botocore builds and signs but does not send (``_stop_probe`` answers
it in place of the network, in the probing thread only). Anything but a 200 raises
``DirectPutFailed``; the store then sends the same PUT through botocore (its retries, redirects
and error messages) and keeps to botocore from then on (``S3Store._put_single``).
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

#: the key of the PutObject botocore builds to show its URL (never sent)
PROBE = "dqlctl-direct-put-probe"
_PROBING = threading.local()


class _Empty:
    """The body of the answer ``_stop_probe`` gives in place of S3's."""

    def stream(self) -> Any:
        return iter([b""])


def _stop_probe(request: Any, **_: Any) -> Any:
    """A ``before-send`` handler: in a thread probing (``DirectPut``), keep the request botocore
    is about to send and answer it here, so that it is never sent; elsewhere, nothing."""
    seen = getattr(_PROBING, "seen", None)
    if seen is None:
        return None
    from botocore.awsrequest import AWSResponse

    seen.append(request)
    return AWSResponse(request.url, 200, {}, _Empty())


class DirectPutFailed(Exception):
    """The PUT did not answer 200: send it again through botocore."""


class DirectPut:
    """PUTs into one bucket (see the module docstring). Thread-safe: it holds no state
    beyond the bucket's URL and region."""

    def __init__(self, client: Any, credentials: Any, bucket: str) -> None:
        """Raises ValueError where the PutObject botocore builds has an unexpected shape (or
        the client has no HTTP session to send through): the store then uses botocore."""
        session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        if session is None or credentials is None:
            raise ValueError("no HTTP session or no credentials to sign with")
        client.meta.events.register("before-send.s3.PutObject", _stop_probe, unique_id=PROBE)
        _PROBING.seen = seen = []
        try:
            client.put_object(Bucket=bucket, Key=PROBE, Body=b"")
        finally:
            _PROBING.seen = None
        url = seen[-1].url
        auth = seen[-1].headers.get("Authorization", b"")
        auth = auth.decode() if isinstance(auth, bytes) else str(auth)
        scope = auth.partition("Credential=")[2].split(",")[0].split("/")
        if not url.endswith("/" + PROBE) or len(scope) != 5 or scope[3] != "s3":
            raise ValueError(f"unexpected PutObject shape: {url.partition('?')[0]}")
        self.base = url[:-len(PROBE)]
        self.region = scope[2]
        self.session = session
        self.credentials = credentials

    def url(self, key: str) -> str:
        """The object's URL: the key percent-encoded as botocore encodes it ('/' and '~'
        kept)."""
        return self.base + urllib.parse.quote(key, safe="/~")

    def put(self, key: str, body: bytes, headers: dict[str, str]) -> Mapping[str, str]:
        """PUT ``body`` at ``key`` with ``headers`` (Content-MD5, metadata); the response's
        headers (a case-insensitive mapping). Raises DirectPutFailed on any status but 200; botocore's connection errors
        as they come."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest("PUT", self.url(key), data=body,
                             headers={**headers, "Content-Length": str(len(body))})
        request.context["has_streaming_input"] = True       # as botocore marks a PutObject
        S3SigV4Auth(self.credentials.get_frozen_credentials(), "s3",
                    self.region).add_auth(request)
        response = self.session.send(request.prepare())
        if response.status_code != 200:
            raise DirectPutFailed(f"HTTP {response.status_code}")
        headers_in: Mapping[str, str] = response.headers
        return headers_in
