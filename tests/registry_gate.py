"""A gate in front of the registry stand-in (tests/containers.py ``start_registry``: Debian's
docker-registry with one htpasswd user, the gate's) that admits only what the cloud's registry
would, and streams everything else through: image layers are hundreds of MB, so neither a
request body nor an answer is ever held in memory whole.

A request's ``Authorization: Basic USER:PASSWORD`` is checked by the cloud's policy; when it
passes, the gate forwards the request with its own credentials to the registry (the ``Host``
header kept, so that the upload URLs the registry answers point at the gate); otherwise it
answers 401 (with a Basic challenge, as the engine's login expects) or 403 in the registry API's
error shape, and nothing reaches the registry.

* ``artifact_policy(gce, location)``: Artifact Registry ``LOCATION-docker.pkg.dev``. User
  ``oauth2accesstoken``, the password an access token ``FakeGce`` issued: the operator's (from
  its token endpoint) may push and pull in an existing repository of the project; a VM's (from
  the metadata server) may pull only, with a read scope, its service account holding
  ``roles/artifactregistry.reader`` (or more) on the repository (``/v2/PROJECT/REPO/IMAGE/...``).
* ``acr_policy(arm, server, registry_id)``: Azure Container Registry. User
  ``00000000-0000-0000-0000-000000000000``, the password a refresh token ``FakeAzure``'s
  ``/oauth2/exchange`` issued for ``server``: the operator's may push and pull; a managed
  identity's may pull only, holding *AcrPull* (or more) at a scope that covers ``registry_id``.

``passed`` lists (who, method, repository) of what went through, ``refused`` (who or None,
method, path, why) of what did not.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fake_azure import FakeAzure
from tests.fake_gce import FakeGce

CHUNK = 1 << 20
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-connection", "authorization"}
READ_METHODS = {"GET", "HEAD"}
AR_READ_SCOPES = {"https://www.googleapis.com/auth/cloud-platform",
                  "https://www.googleapis.com/auth/cloud-platform.read-only",
                  "https://www.googleapis.com/auth/devstorage.read_only",
                  "https://www.googleapis.com/auth/devstorage.read_write",
                  "https://www.googleapis.com/auth/devstorage.full_control"}
AR_READERS = {"roles/artifactregistry.reader", "roles/artifactregistry.writer",
              "roles/artifactregistry.repoAdmin", "roles/artifactregistry.admin"}
#: AcrPull, AcrPush, Contributor, Owner
ACR_READERS = {"7f951dda-4ed3-4680-a7ca-43fe172d538d", "8311e382-0749-4cb8-b61a-f87cba2d98ea",
               "b24988ac-6180-42a0-ab88-20f7382dd24c", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"}
ACR_USER = "00000000-0000-0000-0000-000000000000"
NAME_RE = re.compile(r"^/v2/(?P<name>.+?)/(?:manifests|blobs|tags)/")


class Refused(Exception):
    def __init__(self, status: int, code: str, why: str, who: str | None = None) -> None:
        super().__init__(why)
        self.status, self.code, self.why, self.who = status, code, why, who


#: a policy: (method, path, user, password) -> (who, repository or "") when allowed
Policy = Callable[[str, str, str, str], tuple[str, str]]


def repository_of(path: str) -> str | None:
    """The repository a registry API path is about (``/v2/NAME/manifests/...``); "" for the
    version check ``/v2/``; None for anything else (``/v2/_catalog``...)."""
    if urllib.parse.urlsplit(path).path in ("/v2", "/v2/"):
        return ""
    found = NAME_RE.match(urllib.parse.urlsplit(path).path)
    return found.group("name") if found else None


def artifact_policy(gce: FakeGce, location: str) -> Policy:
    def check(method: str, path: str, user: str, password: str) -> tuple[str, str]:
        with gce.lock:
            operator = password in gce.tokens
            found = gce.vm_tokens.get(password)
            repositories = set(gce.repositories)
            policies = json.loads(json.dumps(gce.repository_policies))
        if user != "oauth2accesstoken" or not (operator or found):
            raise Refused(401, "UNAUTHORIZED", "authentication failed (not an access token "
                          "this project issued)")
        who = "operator" if operator else found[0]  # type: ignore[index]
        name = repository_of(path)
        if name is None:
            raise Refused(403, "DENIED", f"{path} is not served", who)
        if name == "":
            return who, ""
        project, _, rest = name.partition("/")
        repo = rest.partition("/")[0]
        full = f"projects/{project}/locations/{location}/repositories/{repo}"
        if project != gce.project or full not in repositories:
            raise Refused(404, "NAME_UNKNOWN", f"Repository {full} not found", who)
        if operator:
            return who, name
        email, scopes = found  # type: ignore[misc]
        if method not in READ_METHODS:
            raise Refused(403, "DENIED", f"Permission 'artifactregistry.repositories."
                          f"uploadArtifacts' denied on resource {full}", who)
        if not AR_READ_SCOPES & set(scopes):
            raise Refused(403, "DENIED", "Access token scope insufficient", who)
        member = f"serviceAccount:{email}"
        if not any(member in b.get("members", []) and b.get("role") in AR_READERS
                   for b in policies.get(full, {}).get("bindings", [])):
            raise Refused(403, "DENIED", f"Permission 'artifactregistry.repositories."
                          f"downloadArtifacts' denied on resource {full}", who)
        return who, name

    return check


def acr_policy(arm: FakeAzure, server: str, registry_id: str) -> Policy:
    def check(method: str, path: str, user: str, password: str) -> tuple[str, str]:
        with arm.lock:
            found = arm.acr_refresh_tokens.get(password)
            assignments = [dict(a["properties"]) for a in arm.role_assignments.values()]
        if user != ACR_USER or found is None or found[1] != server:
            raise Refused(401, "UNAUTHORIZED", "authentication required (not a refresh token "
                          f"of {server})")
        principal = found[0]
        who = principal or "operator"
        name = repository_of(path)
        if name is None:
            raise Refused(403, "DENIED", f"{path} is not served", who)
        if principal is None or name == "":
            return who, name
        if method not in READ_METHODS:
            raise Refused(403, "DENIED", "requested access to the resource is denied (pull "
                          "only)", who)
        target = registry_id.lower().rstrip("/") + "/"
        if not any(a["principalId"] == principal
                   and a["roleDefinitionId"].rsplit("/", 1)[-1] in ACR_READERS
                   and target.startswith(a["scope"].lower().rstrip("/") + "/")
                   for a in assignments):
            raise Refused(403, "DENIED", f"{principal} holds no pull role on {registry_id}",
                          who)
        return who, name

    return check


class RegistryGate:
    """See the module's docstring. ``target``: the registry's ``HOST:PORT``; ``upstream``: the
    (user, password) it lets in."""

    def __init__(self, target: str, upstream: tuple[str, str], policy: Policy) -> None:
        self.target = target
        self.policy = policy
        self._upstream_auth = "Basic " + base64.b64encode(":".join(upstream).encode()).decode()
        self.passed: list[tuple[str, str, str]] = []
        self.refused: list[tuple[str | None, str, str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RegistryGate:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def pulled_by(self, who: str) -> set[str]:
        """The repositories ``who`` read something of."""
        return {repo for w, method, repo in self.passed
                if w == who and method in READ_METHODS and repo}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

            def _credentials(self) -> tuple[str, str]:
                value = self.headers.get("Authorization", "")
                if not value.startswith("Basic "):
                    return "", ""
                try:
                    user, _, password = base64.b64decode(value[6:]).decode().partition(":")
                except ValueError:
                    return "", ""
                return user, password

            def _refuse(self, exc: Refused) -> None:
                gate.refused.append((exc.who, self.command, self.path, exc.why))
                self._drain()
                body = json.dumps({"errors": [{"code": exc.code, "message": exc.why}]})
                self.send_response(exc.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                if exc.status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="dqlctl-test"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body.encode())

            def _drain(self) -> None:
                """Read (and drop) a refused request's body, so the connection stays usable."""
                for _ in self._body():
                    pass

            def _body(self) -> Any:
                """The request's body in pieces (Content-Length or chunked), never whole."""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return
                        while size:
                            piece = self.rfile.read(min(size, CHUNK))
                            if not piece:
                                return
                            size -= len(piece)
                            yield piece
                        self.rfile.readline()
                    return
                left = int(self.headers.get("Content-Length") or 0)
                while left > 0:
                    piece = self.rfile.read(min(left, CHUNK))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece

            def _serve(self) -> None:
                user, password = self._credentials()
                try:
                    if not password:
                        raise Refused(401, "UNAUTHORIZED", "authentication required")
                    who, repo = gate.policy(self.command, self.path, user, password)
                except Refused as exc:
                    self._refuse(exc)
                    return
                gate.passed.append((who, self.command, repo))
                self._forward()

            def _forward(self) -> None:
                host, _, port = gate.target.rpartition(":")
                conn = http.client.HTTPConnection(host, int(port), timeout=300)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True,
                                    skip_accept_encoding=True)
                    chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
                    for key, value in self.headers.items():
                        if key.lower() not in HOP_HEADERS:
                            conn.putheader(key, value)
                    conn.putheader("Authorization", gate._upstream_auth)
                    if chunked:
                        conn.putheader("Transfer-Encoding", "chunked")
                    conn.endheaders()
                    for piece in self._body():
                        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    if chunked:
                        conn.send(b"0\r\n\r\n")
                    resp = conn.getresponse()
                    self.send_response(resp.status)
                    length = resp.getheader("Content-Length")
                    for key, value in resp.getheaders():
                        if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                            self.send_header(key, value)
                    streamed = length is None and self.command != "HEAD" and \
                        resp.status not in (204, 304)
                    if length is not None:
                        self.send_header("Content-Length", length)
                    elif streamed:
                        self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    while True:
                        piece = resp.read(CHUNK)
                        if not piece:
                            break
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if streamed
                                         else piece)
                    if streamed:
                        self.wfile.write(b"0\r\n\r\n")
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _serve

        return Handler
