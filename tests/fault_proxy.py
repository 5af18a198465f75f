"""A fault-injecting reverse proxy in front of a real stand-in (moto server).

The SDK under test talks to the proxy as its endpoint (``AWS_ENDPOINT_URL_EC2``); every request
is forwarded unchanged unless a rule matches, and then the proxy answers for the cloud, in the
cloud's own error shape: the client code that handles it is the real one, never patched.

    proxy = FaultProxy(moto_url)
    proxy.refuse(action="RunInstances", region="us-east-1", code="InsufficientInstanceCapacity")
    proxy.start(); ...; proxy.stop()

``region`` is read from the request's SigV4 credential scope, ``zone`` from the EC2 query's
``Placement.AvailabilityZone``: the same things EC2 itself decides capacity by. ``seen`` lists
(action, region, zone, refused) for every EC2 call, so a test can tell what was tried.
"""

from __future__ import annotations

import http.client
import re
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# EC2's messages for the codes a launch may meet (as the API words them)
MESSAGES = {
    "InsufficientInstanceCapacity": "We currently do not have sufficient {itype} capacity in "
    "the Availability Zone you requested ({zone}). Our system will be working on provisioning "
    "additional capacity.",
    "MaxSpotInstanceCountExceeded": "Max spot instance count exceeded",
    "SpotMaxPriceTooLow": "Your Spot request price is lower than the minimum required Spot "
    "request fulfillment price.",
    "UnauthorizedOperation": "You are not authorized to perform this operation.",
}
#: EC2 answers capacity shortages as server errors (500), the rest as client errors (400)
STATUS = {"InsufficientInstanceCapacity": 500}
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/")


@dataclass
class Rule:
    action: str
    code: str
    region: str | None = None
    zone: str | None = None

    def matches(self, action: str, region: str | None, zone: str | None) -> bool:
        return action == self.action and self.region in (None, region) and \
            self.zone in (None, zone)


def answer(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str],
           data: bytes) -> None:
    """Send one whole response and close the connection (what both test proxies do)."""
    handler.send_response(status)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(data)
    handler.close_connection = True


class FaultProxy:
    """See the module docstring."""

    def __init__(self, target: str) -> None:
        self.target = urllib.parse.urlsplit(target)
        self.rules: list[Rule] = []
        self.seen: list[tuple[str, str | None, str | None, bool]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def refuse(self, action: str, code: str, region: str | None = None,
               zone: str | None = None) -> None:
        self.rules.append(Rule(action, code, region, zone))

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _verdict(self, headers: dict[str, str], body: bytes) -> tuple[str, str] | None:
        """(code, message) when a rule refuses this request, else None; records it."""
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        action = (form.get("Action") or [""])[0]
        if not action:
            return None
        scope = _SCOPE.search(headers.get("authorization", ""))
        region = scope.group(1) if scope else None
        zone = (form.get("Placement.AvailabilityZone") or [None])[0]
        rule = next((r for r in self.rules if r.matches(action, region, zone)), None)
        with self._lock:
            self.seen.append((action, region, zone, rule is not None))
        if rule is None:
            return None
        itype = (form.get("InstanceType") or ["the requested"])[0]
        message = MESSAGES.get(rule.code, rule.code).format(itype=itype, zone=zone or region)
        return rule.code, message

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                verdict = proxy._verdict(headers, body)
                if verdict is not None:
                    code, message = verdict
                    self._answer(STATUS.get(code, 400), {"Content-Type": "text/xml"}, (
                        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
                        f"<RequestID>{uuid.uuid4()}</RequestID></Response>").encode())
                    return
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port,
                                                  timeout=60)
                try:
                    forward = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("connection", "expect")}
                    conn.request(self.command, self.path, body=body or None, headers=forward)
                    resp = conn.getresponse()
                    data = resp.read()
                    kept = {k: v for k, v in resp.getheaders() if k.lower() not in (
                        "connection", "transfer-encoding", "content-length")}
                    self._answer(resp.status, kept, data)
                finally:
                    conn.close()

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                answer(self, status, headers, data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

            def log_message(self, *args: object) -> None:
                pass

        return Handler
