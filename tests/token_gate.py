"""A gate in front of a storage stand-in that checks a VM's bearer token the way the cloud's
storage would: who the token is (a token the fake cloud minted for a VM's identity) and whether
that identity holds a role on the bucket or container asked for. Every request is forwarded
unchanged (the ``Authorization`` header too) when the token passes; otherwise the gate answers
401/403 in the storage's own error shape and the request never reaches the stand-in.

Why: neither fake-gcs-server nor Azurite knows the fake clouds' identities. fake-gcs-server
accepts any request; Azurite in OAuth mode (``--oauth basic``, HTTPS only) checks a token's
issuer, audience and lifetime but not who holds which role. The gate adds what they lack, so
the direct-results e2e tests prove the engine on the VM reached its bucket with its identity's
token, and that the token would not open anything else.

* ``gcs_policy(gce)``: ``Bearer <token>`` must be a VM token of ``FakeGce`` (from the metadata
  server) with the storage scope, its service account a member of a binding of
  ``OBJECT_ROLES`` in the bucket's IAM policy (``FakeGce.bucket_policies``, set through
  ``storage/v1/b/B/iam`` as GCS's is); objects only (``/b/B/o...``): bucket metadata needs
  ``storage.buckets.get``, which an object role does not hold.
* ``blob_policy(arm, account_id)``: the token must be a managed identity token of ``FakeAzure``
  for storage (``aud`` ``https://storage.azure.com``), its principal holding ``BLOB_ROLES`` at a
  scope that covers ``<account_id>/blobServices/default/containers/<container>``.

``passed`` lists (identity, method, bucket) of what went through, ``refused`` (identity or
None, method, path, why) of what did not. ``tls`` serves HTTPS (Azure's SDK sends a bearer
token over TLS only); ``upstream_ca`` verifies an HTTPS stand-in behind it.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import re
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.fake_azure import FakeAzure
from tests.fake_gce import FakeGce

STORAGE_SCOPES = {"https://www.googleapis.com/auth/devstorage.read_write",
                  "https://www.googleapis.com/auth/devstorage.full_control",
                  "https://www.googleapis.com/auth/cloud-platform"}
OBJECT_ROLES = {"roles/storage.objectAdmin", "roles/storage.objectUser", "roles/storage.admin"}
#: Storage Blob Data Contributor, Storage Blob Data Owner
BLOB_ROLES = {"ba92f5b4-2d11-453d-a403-e96b0029c9fe", "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"}
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-connection", "host", "content-length"}

#: a policy: (method, path, headers) -> (identity, bucket) when allowed; raises Refused
Policy = Callable[[str, str, dict[str, str]], tuple[str, str]]


class Refused(Exception):
    def __init__(self, status: int, body: bytes, headers: dict[str, str], why: str,
                 who: str | None = None) -> None:
        super().__init__(why)
        self.status, self.body, self.headers, self.why, self.who = \
            status, body, headers, why, who


def _bearer(headers: dict[str, str]) -> str:
    value = headers.get("authorization", "")
    return value[len("Bearer "):] if value.startswith("Bearer ") else ""


def gcs_policy(gce: FakeGce) -> Policy:
    def refuse(status: int, message: str, who: str | None = None) -> Refused:
        body = json.dumps({"error": {"code": status, "message": message, "errors": [
            {"message": message, "domain": "global",
             "reason": "required" if status == 401 else "forbidden"}]}}).encode()
        return Refused(status, body, {"Content-Type": "application/json"}, message, who)

    def check(method: str, path: str, headers: dict[str, str]) -> tuple[str, str]:
        with gce.lock:
            found = gce.vm_tokens.get(_bearer(headers))
            policies = json.loads(json.dumps(gce.bucket_policies))
        if found is None:
            raise refuse(401, "Anonymous caller does not have storage.objects access (no "
                              "valid OAuth 2 access token).")
        email, scopes = found
        m = re.match(r"/(?:upload/|download/)?storage/v1/b/([^/?]+)/o(?:[/?]|$)", path)
        if m is None:
            raise refuse(403, f"{email} does not have storage.buckets access to {path}.", email)
        bucket = urllib.parse.unquote(m.group(1))
        if not STORAGE_SCOPES & set(scopes):
            raise refuse(403, "Access token scope insufficient (no storage scope).", email)
        member = f"serviceAccount:{email}"
        if not any(member in b.get("members", []) and b.get("role") in OBJECT_ROLES
                   for b in policies.get(bucket, {}).get("bindings", [])):
            raise refuse(403, f"{email} does not have storage.objects access to the Google "
                              f"Cloud Storage bucket {bucket}.", email)
        return email, bucket

    return check


def blob_policy(arm: FakeAzure, account_id: str) -> Policy:
    def refuse(status: int, code: str, message: str, who: str | None = None) -> Refused:
        body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error>").encode()
        return Refused(status, body, {"Content-Type": "application/xml",
                                      "x-ms-error-code": code}, f"{code}: {message}", who)

    def check(method: str, path: str, headers: dict[str, str]) -> tuple[str, str]:
        token = _bearer(headers)
        with arm.lock:
            principal = arm.identity_tokens.get(token)
            audience = arm.token_audience.get(token, "")
            assignments = [dict(a["properties"]) for a in arm.role_assignments.values()]
        if principal is None:
            raise refuse(401, "NoAuthenticationInformation", "Server failed to authenticate "
                         "the request: no managed identity token.")
        if not re.fullmatch(r"https://storage\.azure\.com/?", audience):
            raise refuse(401, "InvalidAuthenticationInfo", f"Audience {audience} is not "
                         "valid for storage.", principal)
        parts = urllib.parse.urlsplit(path).path.strip("/").split("/")
        if len(parts) < 2 or not parts[1]:
            raise refuse(403, "AuthorizationPermissionMismatch", "This request is not "
                         "authorized to perform this operation using this permission.",
                         principal)
        container = parts[1]
        target = f"{account_id}/blobServices/default/containers/{container}".lower()
        if not any(a["principalId"] == principal
                   and a["roleDefinitionId"].rsplit("/", 1)[-1] in BLOB_ROLES
                   and (target + "/").startswith(a["scope"].lower().rstrip("/") + "/")
                   for a in assignments):
            raise refuse(403, "AuthorizationPermissionMismatch", "This request is not "
                         f"authorized to perform this operation using this permission "
                         f"({container}).", principal)
        return principal, container

    return check


class _QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive, as the SDKs use it), no access log."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        return None


class TokenGate:
    """See the module's docstring. ``target``: the stand-in's base URL."""

    def __init__(self, target: str, policy: Policy, tls: tuple[Path, Path] | None = None,
                 upstream_ca: Path | None = None) -> None:
        self.target = urllib.parse.urlsplit(target)
        self.policy = policy
        self.passed: list[tuple[str, str, str]] = []
        self.refused: list[tuple[str | None, str, str, str]] = []
        self._upstream_tls = ssl.create_default_context(cafile=str(upstream_ca)) \
            if upstream_ca else None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TokenGate:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _upstream(self) -> http.client.HTTPConnection:
        host, port = self.target.hostname or "127.0.0.1", self.target.port
        if self.target.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=120,
                                               context=self._upstream_tls)
        return http.client.HTTPConnection(host, port, timeout=120)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gate = self

        class Handler(_QuietHandler):
            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes,
                        head: bool = False) -> None:
                self.send_response(status)
                length = None
                for key, value in headers:
                    if key.lower() == "content-length":
                        length = value
                    elif key.lower() not in HOP_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", length if head and length else
                                 str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _serve(self) -> None:
                body = self._body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    who, bucket = gate.policy(self.command, self.path, headers)
                except Refused as exc:
                    gate.refused.append((exc.who, self.command, self.path, exc.why))
                    self._answer(exc.status, list(exc.headers.items()), exc.body)
                    return
                gate.passed.append((who, self.command, bucket))
                forward = {k: v for k, v in self.headers.items()
                           if k.lower() not in HOP_HEADERS}
                forward["Host"] = gate.target.netloc
                if body or self.command in ("PUT", "POST", "PATCH"):
                    forward["Content-Length"] = str(len(body))
                conn = gate._upstream()
                try:
                    conn.request(self.command, self.path, body=body or None, headers=forward)
                    resp = conn.getresponse()
                    data = resp.read()
                    self._answer(resp.status, resp.getheaders(), data,
                                 head=self.command == "HEAD")
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _serve

        return Handler


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and localhost), its own CA: (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
