"""A local server that answers Google Compute Engine's REST API (and the two IAM calls dqlctl makes).

No GCE emulator exists (LOCAL_CLOUD.md). This one is small but keeps the shapes the official
``google-cloud-compute`` REST client parses: instances insert/get/delete/list/aggregatedList,
firewalls, regions, and zone/global operations that run for a while (``PENDING`` -> ``DONE``,
polled with ``get`` or blocked on with ``wait``) and may end in an error (a zone whose pool is
exhausted, a quota). Errors carry Google's JSON error body and HTTP status (404 ``notFound``,
409 ``alreadyExists``, 400 ``invalid``, 401 without a bearer token). It also answers
``iam.googleapis.com`` service accounts and ``storage/v1/b/BUCKET/iam`` bucket policies
(fake-gcs-server has no IAM), and an OAuth token endpoint for a service-account key file whose
``token_uri`` points here.

Test hooks live under ``/_fake/`` (and as Python attributes, the server runs in the test's
process): ``GET /_fake/ssh-keys`` lists the public keys in the ``ssh-keys`` metadata of running
instances, which is what the VM stand-in's sshd trusts (``AuthorizedKeysCommand``), so a deleted
instance's key stops working as on a real VM. ``capacity[zone] = CODE`` makes inserts in a zone
fail (``ZONE_RESOURCE_POOL_EXHAUSTED`` and ``QUOTA_EXCEEDED`` in the operation, ``quotaExceeded``
as a synchronous 403).

The ``default`` network comes with GCE's auto-created firewall rules (``default-allow-ssh`` and
``default-allow-rdp`` from 0.0.0.0/0, ``default-allow-icmp``, ``default-allow-internal``, all at
priority 65534), and ``allowed(zone, name, address, port)`` decides whether a tcp connection from
``address`` would reach an instance as GCE's firewall would (the applicable rule of highest
priority wins, a deny over an allow at equal priority, the implied deny-all below everything).
``vm_host_keys`` (key lines, the VM stand-in's real host key) is what the guest agent of every
running instance with ``enable-guest-attributes`` publishes under ``hostkeys/``; None: nothing
is published (404, as before the agent has written).

A VM's own identity: ``mint_vm_token(zone, name)`` (what tests/fake_metadata.py hands the VM)
issues an access token of the instance's service account, limited to the scopes the instance
was given. Such a token may do only what IAM lets that account do: here, delete an instance
whose IAM policy (``instances.setIamPolicy``) binds the account to a role holding
``compute.instances.delete`` (a custom one from ``projects.roles``, or
``roles/compute.instanceAdmin.v1``), with the compute scope; anything else is a 403.
``deleted_by[(zone, name)]`` says who deleted an instance (``operator`` or the account).

Artifact Registry's API (``/v1/projects/P/locations/L/repositories``): a Docker repository
created by a long-running operation (``/v1/projects/P/locations/L/operations/ID``, ``done``
after ``op_seconds``), got, and its IAM policy read and set (``:getIamPolicy``,
``:setIamPolicy``, an etag guarding the write); ``repositories``, ``repository_policies``. The
registry itself (the image bytes) is Debian's docker-registry behind tests/registry_gate.py,
which lets in a token of this server for what its account's bindings here allow.

This module also holds the test helpers the GCE and Azure suites share: ``FakeHttpServer`` (the
threaded JSON server both fakes build on), ``write_adc_key`` (a service-account key file) and
``serving_adc`` (a fake GCE started, with credentials pointed at it).
The VM stand-in itself is ``tests.vm.vm_sshd``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

# -- a threaded JSON server ------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any                      # parsed JSON (or None, or raw text for forms)
    raw: bytes = b""


@dataclass
class Response:
    status: int = 200
    body: Any = None               # JSON-serialisable, or str for text
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class FakeHttpServer:
    """A ThreadingHTTPServer on 127.0.0.1 calling ``self.handle(request) -> Response``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.received: list[tuple[str, str, Any]] = []   # (method, path, body) in order
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""

    def handle(self, req: Request) -> Response:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self) -> str:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body: Any = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw.decode(errors="replace")
                query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
                req = Request(self.command, urllib.parse.unquote(parsed.path), query,
                              {k.lower(): v for k, v in self.headers.items()}, body, raw)
                try:
                    resp = app.dispatch(req)
                except HttpError as exc:
                    resp = exc.response
                except Exception as exc:  # noqa: BLE001 - a bug in the fake: say so
                    resp = Response(500, {"error": {"code": 500, "message": repr(exc)}})
                if isinstance(resp.body, str):
                    data = resp.body.encode()
                    ctype = "text/plain"
                elif resp.body is None:
                    data, ctype = b"", "application/json"
                else:
                    data, ctype = json.dumps(resp.body).encode(), "application/json"
                self.send_response(resp.status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for key, value in resp.headers.items():
                    self.send_header(key, value)
                try:
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass    # the client hung up first (a VM stand-in killed mid-poll), as any
                    #          server sees: not the fake's error, nothing to print

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True,
                         name=type(self).__name__).start()
        return self.url

    def dispatch(self, req: Request) -> Response:
        with self.lock:
            if not req.path.startswith("/_fake/"):
                self.received.append((req.method, req.path, req.body))
        return self.handle(req)

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_adc_key(path: Path, token_uri: str, project: str) -> Path:
    """A service-account key file (what GOOGLE_APPLICATION_CREDENTIALS names) whose token_uri
    is the fake server: google-auth signs a JWT with it and trades it there for a token."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": project, "private_key_id": "fake-key-1",
        "private_key": pem, "client_email": f"operator@{project}.iam.gserviceaccount.com",
        "client_id": "1234567890", "token_uri": token_uri,
        "auth_uri": "https://accounts.google.com/o/oauth2/auth"}))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def serving_adc(fake: FakeGce, tmp_path: Path, monkeypatch: Any) -> Iterator[FakeGce]:
    """``fake`` started, with Application Default Credentials pointed at it (a key file whose
    token endpoint it is, no gcloud login, the project only from the key file); stopped after."""
    with fake:
        key = write_adc_key(tmp_path / "adc.json", f"{fake.url}/token", fake.project)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud login
        monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
        yield fake


# -- GCE -----------------------------------------------------------------------------------------

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
SA_ID_RE = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")


def gerror(status: int, reason: str, message: str) -> HttpError:
    return HttpError(Response(status, {"error": {
        "code": status, "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}]}}))


def ierror(status: int, name: str, message: str) -> HttpError:
    """An error as IAM's REST API answers it (``status`` is a name: NOT_FOUND...)."""
    return HttpError(Response(status, {"error": {"code": status, "status": name,
                                                 "message": message}}))


@dataclass
class Operation:
    name: str
    kind: str                      # insert | delete
    target: str                    # selfLink of the resource
    zone: str | None
    done_at: float
    effect: Callable[[Operation], None]
    status: str = "RUNNING"
    error: dict[str, Any] | None = None
    http_code: int | None = None
    http_message: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4().int >> 70))
    insert_time: float = field(default_factory=time.time)


CAPACITY_ERRORS = {
    "ZONE_RESOURCE_POOL_EXHAUSTED": (
        503, "SERVICE UNAVAILABLE",
        "The zone '{zone}' does not have enough resources available to fulfill the request. "
        " Try a different zone, or try again later."),
    "QUOTA_EXCEEDED": (403, "FORBIDDEN", "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 0.0 in "
                       "region {region}."),
}


DEFAULT_NETWORK_RULES: dict[str, dict[str, Any]] = {
    "default-allow-internal": {"sourceRanges": ["10.128.0.0/9"], "allowed": [
        {"IPProtocol": "tcp", "ports": ["0-65535"]}, {"IPProtocol": "udp", "ports": ["0-65535"]},
        {"IPProtocol": "icmp"}]},
    "default-allow-ssh": {"sourceRanges": ["0.0.0.0/0"],
                          "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]},
    "default-allow-rdp": {"sourceRanges": ["0.0.0.0/0"],
                          "allowed": [{"IPProtocol": "tcp", "ports": ["3389"]}]},
    "default-allow-icmp": {"sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "icmp"}]},
}


def _covers(entries: list[dict[str, Any]], protocol: str, port: int) -> bool:
    """Whether firewall ``allowed``/``denied`` entries cover ``protocol`` on ``port``."""
    for entry in entries:
        proto = entry.get("IPProtocol", "")
        if proto not in (protocol, "all"):
            continue
        ports = entry.get("ports") or []
        if not ports:
            return True
        for spec in ports:
            low, _, high = str(spec).partition("-")
            if int(low) <= port <= int(high or low):
                return True
    return False


class FakeGce(FakeHttpServer):
    def __init__(self, project: str = "dqlctl-test",
                 regions: dict[str, list[str]] | None = None, op_seconds: float = 0.15,
                 boot_seconds: float = 0.3) -> None:
        super().__init__()
        self.project = project
        self.regions = regions or {"us-central1": ["us-central1-a", "us-central1-b",
                                                   "us-central1-c"],
                                   "europe-west4": ["europe-west4-a", "europe-west4-b"]}
        self.op_seconds = op_seconds
        self.boot_seconds = boot_seconds
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}   # (zone, name) -> resource
        self.firewalls: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, Operation] = {}
        self.service_accounts: dict[str, dict[str, Any]] = {}        # email -> account
        self.bucket_policies: dict[str, dict[str, Any]] = {}
        self.capacity: dict[str, str] = {}                           # zone -> error code
        self.vm_host_keys: list[str] | None = None                   # what guest agents publish
        self.tokens: set[str] = set()
        self.vm_tokens: dict[str, tuple[str, list[str]]] = {}       # token -> (email, scopes)
        self.instance_policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.roles: dict[str, dict[str, Any]] = {}                   # custom roles by name
        self.deleted_by: dict[tuple[str, str], str] = {}
        #: Artifact Registry: repositories by name (``projects/P/locations/L/repositories/R``),
        #: their IAM policies, and the creations' long-running operations (name -> done at)
        self.repositories: dict[str, dict[str, Any]] = {}
        self.repository_policies: dict[str, dict[str, Any]] = {}
        self.ar_operations: dict[str, tuple[float, dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._ips = itertools.count(10)

    def start(self) -> str:
        """Serve; the project's ``default`` network comes with GCE's auto-created rules."""
        url = super().start()
        with self.lock:
            for name, rule in DEFAULT_NETWORK_RULES.items():
                self.firewalls.setdefault(name, {
                    **rule, "name": name, "kind": "compute#firewall", "direction": "INGRESS",
                    "priority": 65534, "network": f"{self.base}/global/networks/default",
                    "description": f"Allow {name.split('-')[-1]} on the default network",
                    "id": str(8_000_000_000 + next(self._ids)),
                    "selfLink": f"{self.base}/global/firewalls/{name}"})
        return url

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"{self.url}/compute/v1/projects/{self.project}"

    def _link(self, ref: str) -> str:
        """A full URL for a partial resource reference, as GCE stores them."""
        if ref.startswith("http"):
            return ref
        if ref.startswith("projects/"):
            return f"{self.url}/compute/v1/{ref}"
        return f"{self.base}/{ref}"

    def _zone_of(self, zone: str) -> str:
        for region, zones in self.regions.items():
            if zone in zones:
                return region
        raise gerror(404, "notFound", f"The resource 'projects/{self.project}/zones/{zone}' "
                     "was not found")

    def _auth(self, req: Request) -> str | None:
        """Who is calling: None for the operator, a service account's email for a VM's token;
        401 without a token this server issued."""
        header = req.headers.get("authorization", "")
        token = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        if token in self.vm_tokens:
            return self.vm_tokens[token][0]
        if not token or not (token in self.tokens or token.count(".") == 2):
            raise HttpError(Response(401, {"error": {
                "code": 401, "status": "UNAUTHENTICATED",
                "message": "Request is missing required authentication credential. Expected "
                           "OAuth 2 access token, login cookie or other valid authentication "
                           "credential."}}))

    def _advance(self) -> None:
        """Finish the operations whose time has come, and boot instances that are due."""
        now = time.time()
        for op in self.operations.values():
            if op.status != "DONE" and now >= op.done_at:
                op.effect(op)
                op.status = "DONE"
        for inst in self.instances.values():
            if inst["status"] == "STAGING" and now >= inst["_running_at"]:
                inst["status"] = "RUNNING"

    def _operation(self, kind: str, target: str, zone: str | None,
                   effect: Callable[[Operation], None]) -> dict[str, Any]:
        name = f"operation-{int(time.time() * 1000)}-{uuid.uuid4().hex[:12]}"
        op = Operation(name, kind, target, zone, time.time() + self.op_seconds, effect)
        self.operations[name] = op
        return self._op_json(op)

    def _op_json(self, op: Operation) -> dict[str, Any]:
        where = f"zones/{op.zone}" if op.zone else "global"
        out: dict[str, Any] = {
            "kind": "compute#operation", "id": op.id, "name": op.name,
            "operationType": op.kind, "targetLink": op.target, "status": op.status,
            "progress": 100 if op.status == "DONE" else 0, "user": "operator",
            "insertTime": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00",
                                        time.gmtime(op.insert_time)),
            "selfLink": f"{self.base}/{where}/operations/{op.name}"}
        if op.zone:
            out["zone"] = f"{self.base}/zones/{op.zone}"
        if op.error:
            out["error"] = op.error
            out["httpErrorStatusCode"] = op.http_code
            out["httpErrorMessage"] = op.http_message
        return out

    def keys_url(self) -> str:
        return f"{self.url}/_fake/ssh-keys"

    def live_instances(self) -> list[dict[str, Any]]:
        with self.lock:
            self._advance()
            return list(self.instances.values())

    def preempt(self, zone: str, name: str) -> None:
        """Spot capacity taken back; termination action DELETE: the instance is gone."""
        with self.lock:
            self.instances.pop((zone, name), None)

    # -- routing -------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        with self.lock:
            self._advance()
            if req.path == "/token":
                token = f"ya29.fake-{uuid.uuid4().hex}"
                self.tokens.add(token)
                return Response(200, {"access_token": token, "expires_in": 3600,
                                      "token_type": "Bearer"})
            if req.path == "/_fake/ssh-keys":
                return Response(200, self.ssh_keys())
            req.headers.pop("x-fake-caller", None)   # set by _authorize only
            caller = self._auth(req)
            for pattern, method, fn in self._routes():
                m = re.fullmatch(pattern, req.path)
                if m and req.method == method:
                    if caller is not None:
                        self._authorize(req, caller, fn, m.groupdict())
                    return fn(req, **m.groupdict())
            raise gerror(404, "notFound", f"no such API: {req.method} {req.path}")

    def _routes(self) -> list[tuple[str, str, Callable[..., Response]]]:
        p = r"/compute/v1/projects/(?P<project>[^/]+)"
        z = p + r"/zones/(?P<zone>[^/]+)"
        sa = r"/v1/projects/(?P<project>[^/]+)/serviceAccounts"
        ar = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
        return [
            (p + r"/regions/(?P<region>[^/]+)", "GET", self.region_get),
            (z + r"/instances", "POST", self.instance_insert),
            (z + r"/instances", "GET", self.instance_list),
            (z + r"/instances/(?P<name>[^/]+)", "GET", self.instance_get),
            (z + r"/instances/(?P<name>[^/]+)", "DELETE", self.instance_delete),
            (z + r"/instances/(?P<name>[^/]+)/getGuestAttributes", "GET", self.guest_attributes),
            (z + r"/instances/(?P<name>[^/]+)/setIamPolicy", "POST", self.instance_iam_set),
            (z + r"/instances/(?P<name>[^/]+)/getIamPolicy", "GET", self.instance_iam_get),
            (p + r"/aggregated/instances", "GET", self.instance_aggregated),
            (z + r"/operations/(?P<name>[^/]+)", "GET", self.operation_get),
            (z + r"/operations/(?P<name>[^/]+)/wait", "POST", self.operation_wait),
            (p + r"/global/operations/(?P<name>[^/]+)", "GET", self.operation_get),
            (p + r"/global/operations/(?P<name>[^/]+)/wait", "POST", self.operation_wait),
            (p + r"/global/firewalls", "POST", self.firewall_insert),
            (p + r"/global/firewalls", "GET", self.firewall_list),
            (p + r"/global/firewalls/(?P<name>[^/]+)", "GET", self.firewall_get),
            (p + r"/global/firewalls/(?P<name>[^/]+)", "DELETE", self.firewall_delete),
            (sa, "POST", self.sa_create),
            (sa, "GET", self.sa_list),
            (sa + r"/(?P<email>[^/]+)", "GET", self.sa_get),
            (sa + r"/(?P<email>[^/]+)", "DELETE", self.sa_delete),
            (r"/v1/projects/(?P<project>[^/]+)/roles", "POST", self.role_create),
            (r"/v1/projects/(?P<project>[^/]+)/roles/(?P<role>[^/:]+)", "GET", self.role_get),
            (r"/v1/projects/(?P<project>[^/]+)/roles/(?P<role>[^/:]+):undelete", "POST",
             self.role_undelete),
            (ar + r"/repositories", "POST", self.repo_create),
            (ar + r"/repositories/(?P<repo>[^/:]+)", "GET", self.repo_get),
            (ar + r"/repositories/(?P<repo>[^/:]+):getIamPolicy", "GET", self.repo_iam_get),
            (ar + r"/repositories/(?P<repo>[^/:]+):setIamPolicy", "POST", self.repo_iam_set),
            (ar + r"/operations/(?P<op>[^/]+)", "GET", self.ar_operation_get),
            (r"/storage/v1/b/(?P<bucket>[^/]+)/iam", "GET", self.bucket_iam_get),
            (r"/storage/v1/b/(?P<bucket>[^/]+)/iam", "PUT", self.bucket_iam_set),
        ]

    def _project(self, project: str) -> None:
        if project != self.project:
            raise gerror(404, "notFound", f"The resource 'projects/{project}' was not found")

    # -- regions, operations ---------------------------------------------------------------------

    def region_get(self, req: Request, project: str, region: str) -> Response:
        self._project(project)
        if region not in self.regions:
            raise gerror(404, "notFound", f"The resource 'projects/{project}/regions/{region}' "
                         "was not found")
        return Response(200, {"kind": "compute#region", "name": region, "status": "UP",
                              "zones": [f"{self.base}/zones/{z}" for z in self.regions[region]],
                              "selfLink": f"{self.base}/regions/{region}"})

    def _op(self, project: str, name: str, zone: str | None) -> Operation:
        self._project(project)
        op = self.operations.get(name)
        if op is None or op.zone != zone:
            where = f"zones/{zone}" if zone else "global"
            raise gerror(404, "notFound", f"The resource 'projects/{project}/{where}/operations/"
                         f"{name}' was not found")
        return op

    def operation_get(self, req: Request, project: str, name: str,
                      zone: str | None = None) -> Response:
        return Response(200, self._op_json(self._op(project, name, zone)))

    def operation_wait(self, req: Request, project: str, name: str,
                       zone: str | None = None) -> Response:
        """Blocks until the operation is DONE or about 2 s have passed (GCE: 2 minutes)."""
        op = self._op(project, name, zone)
        deadline = time.time() + 2.0
        while op.status != "DONE" and time.time() < deadline:
            self.lock.release()
            try:
                time.sleep(0.02)
            finally:
                self.lock.acquire()
            self._advance()
        return Response(200, self._op_json(op))

    # -- instances -----------------------------------------------------------------------------

    def _validate_instance(self, body: dict[str, Any], zone: str) -> None:
        def bad(field_: str, why: str) -> HttpError:
            return gerror(400, "invalid", f"Invalid value for field 'resource.{field_}': {why}")

        name = body.get("name", "")
        if not NAME_RE.match(name):
            raise bad("name", f"'{name}'. Must be a match of regex '{NAME_RE.pattern}'")
        mtype = body.get("machineType", "")
        if not re.fullmatch(rf"(.*/)?zones/{re.escape(zone)}/machineTypes/[a-z0-9-]+", mtype):
            raise bad("machineType", f"'{mtype}'. Machine type must be in zone {zone}.")
        boot = [d for d in body.get("disks", []) if d.get("boot")]
        if len(boot) != 1 or not boot[0].get("initializeParams", {}).get("sourceImage"):
            raise bad("disks", "exactly one boot disk with initializeParams.sourceImage")
        sched = body.get("scheduling", {})
        if body.get("guestAccelerators") and sched.get("onHostMaintenance") != "TERMINATE":
            raise bad("scheduling.onHostMaintenance",
                      "Instances with guest accelerators do not support live migration.")
        if sched.get("provisioningModel") == "SPOT":
            if sched.get("automaticRestart", True) or \
                    sched.get("onHostMaintenance") != "TERMINATE":
                raise bad("scheduling", "Spot VMs need automaticRestart false and "
                          "onHostMaintenance TERMINATE.")
            if sched.get("instanceTerminationAction") not in ("STOP", "DELETE"):
                raise bad("scheduling.instanceTerminationAction", "STOP or DELETE")
        for key, value in body.get("labels", {}).items():
            if not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(value):
                raise bad(f"labels.{key}", f"'{value}': label keys and values are lowercase "
                          "letters, digits, '_' and '-'")
        for acc in body.get("guestAccelerators", []):
            if not re.fullmatch(rf"(.*/)?zones/{re.escape(zone)}/acceleratorTypes/[a-z0-9-]+",
                                acc.get("acceleratorType", "")):
                raise bad("guestAccelerators", "accelerator type must be in the zone")
        for sa in body.get("serviceAccounts", []):
            if sa.get("email") not in self.service_accounts:
                raise gerror(400, "invalid", f"The resource 'projects/{self.project}/"
                             f"serviceAccounts/{sa.get('email')}' was not found")
        nics = body.get("networkInterfaces", [])
        if not nics:
            raise bad("networkInterfaces", "at least one network interface")
        for nic in nics:
            if not nic.get("network", "").endswith("global/networks/default"):
                raise gerror(404, "notFound", f"The resource '{nic.get('network')}' was not "
                             "found")

    def instance_insert(self, req: Request, project: str, zone: str) -> Response:
        self._project(project)
        region = self._zone_of(zone)
        body = dict(req.body or {})
        self._validate_instance(body, zone)
        name = body["name"]
        if (zone, name) in self.instances:
            raise gerror(409, "alreadyExists", f"The resource 'projects/{project}/zones/{zone}/"
                         f"instances/{name}' already exists")
        code = self.capacity.get(zone)
        if code == "quotaExceeded":  # synchronous, as some quota checks are
            raise gerror(403, "quotaExceeded", "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 "
                         "globally.")
        link = f"{self.base}/zones/{zone}/instances/{name}"

        def create(op: Operation) -> None:
            if code in CAPACITY_ERRORS:
                status, text, message = CAPACITY_ERRORS[code]
                op.error = {"errors": [{"code": code, "message": message.format(
                    zone=f"projects/{project}/zones/{zone}", region=region)}]}
                op.http_code, op.http_message = status, text
                return
            inst = json.loads(json.dumps(body))
            n = next(self._ids)
            inst.update({
                "kind": "compute#instance", "id": str(7_000_000_000 + n), "status": "STAGING",
                "zone": f"{self.base}/zones/{zone}", "selfLink": link,
                "machineType": self._link(body["machineType"]),
                "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000-07:00"),
                "cpuPlatform": "Intel Broadwell", "fingerprint": uuid.uuid4().hex[:12],
                "_running_at": time.time() + self.boot_seconds})
            ip = next(self._ips)
            for i, nic in enumerate(inst.get("networkInterfaces", [])):
                nic["name"] = f"nic{i}"
                nic["networkIP"] = f"10.128.0.{ip}"
                for ac in nic.get("accessConfigs", []):
                    ac["natIP"] = f"34.{ip}.{n % 250}.{i + 2}"
                    ac.setdefault("kind", "compute#accessConfig")
            for disk in inst.get("disks", []):
                disk["source"] = f"{self.base}/zones/{zone}/disks/{name}"
                disk["deviceName"] = "persistent-disk-0"
            self.instances[(zone, name)] = inst

        return Response(200, self._operation("insert", link, zone, create))

    def _public(self, inst: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in inst.items() if not k.startswith("_")}

    def _instance(self, project: str, zone: str, name: str) -> dict[str, Any]:
        self._project(project)
        self._zone_of(zone)
        inst = self.instances.get((zone, name))
        if inst is None:
            raise gerror(404, "notFound", f"The resource 'projects/{project}/zones/{zone}/"
                         f"instances/{name}' was not found")
        return inst

    def instance_get(self, req: Request, project: str, zone: str, name: str) -> Response:
        return Response(200, self._public(self._instance(project, zone, name)))

    def instance_delete(self, req: Request, project: str, zone: str, name: str) -> Response:
        inst = self._instance(project, zone, name)
        inst["status"] = "STOPPING"

        def delete(op: Operation) -> None:
            self.instances.pop((zone, name), None)
            self.instance_policies.pop((zone, name), None)

        self.deleted_by[(zone, name)] = req.headers.get("x-fake-caller", "operator")
        return Response(200, self._operation("delete", inst["selfLink"], zone, delete))

    def guest_attributes(self, req: Request, project: str, zone: str, name: str) -> Response:
        """``hostkeys/``: the host keys the guest agent wrote (``vm_host_keys``), once the
        instance runs and has ``enable-guest-attributes``; 404 otherwise, as GCE answers."""
        inst = self._instance(project, zone, name)
        path = req.query.get("queryPath", "")
        meta = {i.get("key"): str(i.get("value", ""))
                for i in inst.get("metadata", {}).get("items", [])}
        if (meta.get("enable-guest-attributes", "").upper() != "TRUE"
                or inst["status"] != "RUNNING" or not self.vm_host_keys
                or not path.startswith("hostkeys/")):
            raise gerror(404, "notFound", f"The resource 'projects/{project}/zones/{zone}/"
                         f"instances/{name}/guestAttributes/{path}' was not found")
        items = [{"namespace": "hostkeys", "key": line.split()[0], "value": line.split()[1]}
                 for line in self.vm_host_keys]
        return Response(200, {"kind": "compute#guestAttributes", "queryPath": path,
                              "selfLink": f"{inst['selfLink']}/getGuestAttributes",
                              "queryValue": {"items": items}})

    def allowed(self, zone: str, name: str, address: str, port: int = 22,
                protocol: str = "tcp") -> bool:
        """Whether GCE's firewall lets ``protocol:port`` from ``address`` in to the instance:
        of the ingress rules on its network that target it (no target tags: every instance)
        and whose source ranges hold ``address`` and cover the port, the one of highest
        priority (lowest number) decides, a deny winning a tie; none: the implied deny."""
        with self.lock:
            self._advance()
            inst = self.instances[(zone, name)]
            tags = set(inst.get("tags", {}).get("items", []))
            networks = {self._link(n.get("network", "")) for n in
                        inst.get("networkInterfaces", [])}
            ip = ipaddress.ip_address(address)
            best: tuple[int, int] | None = None          # (priority, 0 deny / 1 allow)
            for rule in self.firewalls.values():
                if rule.get("direction", "INGRESS") != "INGRESS" or rule.get("disabled"):
                    continue
                if self._link(rule.get("network", "global/networks/default")) not in networks:
                    continue
                if rule.get("targetTags") and not tags & set(rule["targetTags"]):
                    continue
                if not any(ip.version == ipaddress.ip_network(r, strict=False).version
                           and ip in ipaddress.ip_network(r, strict=False)
                           for r in rule.get("sourceRanges", [])):
                    continue
                for verdict, key in ((0, "denied"), (1, "allowed")):
                    if _covers(rule.get(key, []), protocol, port):
                        candidate = (int(rule.get("priority", 1000)), verdict)
                        best = candidate if best is None else min(best, candidate)
            return best is not None and best[1] == 1

    def _matches(self, inst: dict[str, Any], expr: str) -> bool:
        """GCE list filters, the forms dqlctl sends: ``labels.K:*``, ``labels.K = "V"``,
        joined with AND."""
        if not expr.strip():
            return True
        labels = inst.get("labels", {})
        for term in re.split(r"\s+AND\s+", expr.strip()):
            term = term.strip().strip("()")
            m = re.fullmatch(r'labels\.([\w-]+)\s*:\s*\*', term)
            if m:
                if m.group(1) not in labels:
                    return False
                continue
            m = re.fullmatch(r'labels\.([\w-]+)\s*=\s*"?([^"]*)"?', term)
            if m:
                if labels.get(m.group(1)) != m.group(2):
                    return False
                continue
            raise gerror(400, "invalid", f"Invalid list filter expression '{expr}'.")
        return True

    def instance_list(self, req: Request, project: str, zone: str) -> Response:
        self._project(project)
        self._zone_of(zone)
        found = [self._public(i) for (z, _), i in sorted(self.instances.items())
                 if z == zone and self._matches(i, req.query.get("filter", ""))]
        size = int(req.query.get("maxResults") or 500)
        start = int(req.query.get("pageToken") or 0)
        out: dict[str, Any] = {"kind": "compute#instanceList", "items": found[start:start + size],
                               "selfLink": f"{self.base}/zones/{zone}/instances"}
        if start + size < len(found):
            out["nextPageToken"] = str(start + size)
        return Response(200, out)

    def instance_aggregated(self, req: Request, project: str) -> Response:
        self._project(project)
        items: dict[str, Any] = {}
        for zones in self.regions.values():
            for zone in zones:
                found = [self._public(i) for (z, _), i in sorted(self.instances.items())
                         if z == zone and self._matches(i, req.query.get("filter", ""))]
                items[f"zones/{zone}"] = {"instances": found} if found else {"warning": {
                    "code": "NO_RESULTS_ON_PAGE",
                    "message": f"There are no results for scope 'zones/{zone}' on this page.",
                    "data": [{"key": "scope", "value": f"zones/{zone}"}]}}
        return Response(200, {"kind": "compute#instanceAggregatedList", "items": items,
                              "selfLink": f"{self.base}/aggregated/instances"})

    # -- firewalls -----------------------------------------------------------------------------

    def firewall_insert(self, req: Request, project: str) -> Response:
        self._project(project)
        body = dict(req.body or {})
        name = body.get("name", "")
        if not NAME_RE.match(name):
            raise gerror(400, "invalid", f"Invalid value for field 'resource.name': '{name}'")
        if not body.get("allowed") and not body.get("denied"):
            raise gerror(400, "invalid", "Invalid value for field 'resource.allowed': one of "
                         "allowed or denied is required")
        if body.get("direction", "INGRESS") == "INGRESS" and not (
                body.get("sourceRanges") or body.get("sourceTags")):
            body["sourceRanges"] = ["0.0.0.0/0"]  # GCE's default: be loud about it in tests
        if name in self.firewalls:
            raise gerror(409, "alreadyExists", f"The resource 'projects/{project}/global/"
                         f"firewalls/{name}' already exists")
        link = f"{self.base}/global/firewalls/{name}"

        def create(op: Operation) -> None:
            self.firewalls[name] = {**body, "kind": "compute#firewall", "selfLink": link,
                                    "id": str(8_000_000_000 + next(self._ids)),
                                    "direction": body.get("direction", "INGRESS"),
                                    "priority": body.get("priority", 1000)}

        return Response(200, self._operation("insert", link, None, create))

    def _firewall(self, project: str, name: str) -> dict[str, Any]:
        self._project(project)
        if name not in self.firewalls:
            raise gerror(404, "notFound", f"The resource 'projects/{project}/global/firewalls/"
                         f"{name}' was not found")
        return self.firewalls[name]

    def firewall_get(self, req: Request, project: str, name: str) -> Response:
        return Response(200, self._firewall(project, name))

    def firewall_list(self, req: Request, project: str) -> Response:
        self._project(project)
        return Response(200, {"kind": "compute#firewallList",
                              "items": [self.firewalls[n] for n in sorted(self.firewalls)]})

    def firewall_delete(self, req: Request, project: str, name: str) -> Response:
        rule = self._firewall(project, name)

        def delete(op: Operation) -> None:
            self.firewalls.pop(name, None)

        return Response(200, self._operation("delete", rule["selfLink"], None, delete))

    # -- IAM: service accounts and bucket policies --------------------------------------------

    def sa_create(self, req: Request, project: str) -> Response:
        self._project(project)
        account_id = (req.body or {}).get("accountId", "")
        if not SA_ID_RE.match(account_id):
            raise ierror(400, "INVALID_ARGUMENT", f"Invalid account ID: {account_id}")
        email = f"{account_id}@{project}.iam.gserviceaccount.com"
        if email in self.service_accounts:
            raise ierror(409, "ALREADY_EXISTS", f"Service account {account_id} already exists "
                         f"within project projects/{project}.")
        extra = (req.body or {}).get("serviceAccount", {})
        account = {"name": f"projects/{project}/serviceAccounts/{email}", "projectId": project,
                   "uniqueId": str(100_000_000_000 + next(self._ids)), "email": email,
                   "displayName": extra.get("displayName", ""),
                   "description": extra.get("description", ""),
                   "etag": "MDEwMjE5MjA=", "oauth2ClientId": "1"}
        self.service_accounts[email] = account
        return Response(200, account)

    def _sa(self, project: str, email: str) -> dict[str, Any]:
        self._project(project)
        if email not in self.service_accounts:
            raise ierror(404, "NOT_FOUND", f"Unknown service account: {email}")
        return self.service_accounts[email]

    def sa_get(self, req: Request, project: str, email: str) -> Response:
        return Response(200, self._sa(project, email))

    def sa_list(self, req: Request, project: str) -> Response:
        self._project(project)
        return Response(200, {"accounts": list(self.service_accounts.values())})

    def sa_delete(self, req: Request, project: str, email: str) -> Response:
        self._sa(project, email)
        del self.service_accounts[email]
        return Response(200, {})

    def bucket_iam_get(self, req: Request, bucket: str) -> Response:
        policy = self.bucket_policies.setdefault(bucket, {
            "kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}",
            "version": 1, "etag": "CAE=", "bindings": [
                {"role": "roles/storage.legacyBucketOwner",
                 "members": [f"projectOwner:{self.project}"]}]})
        return Response(200, json.loads(json.dumps(policy)))

    def bucket_iam_set(self, req: Request, bucket: str) -> Response:
        current = json.loads(json.dumps(self.bucket_iam_get(req, bucket).body))
        body = dict(req.body or {})
        if body.get("etag") and body["etag"] != current["etag"]:
            raise gerror(412, "conditionNotMet", "Precondition Failed")
        for binding in body.get("bindings", []):
            for member in binding.get("members", []):
                if member.startswith("serviceAccount:") and \
                        member.split(":", 1)[1].endswith(".iam.gserviceaccount.com") and \
                        member.split(":", 1)[1] not in self.service_accounts:
                    raise gerror(400, "invalid", f"Invalid argument: {member} does not exist.")
        policy = {**current, "bindings": body.get("bindings", []),
                  "etag": f"CA{next(self._ids)}="}
        self.bucket_policies[bucket] = policy
        return Response(200, policy)

    # -- Artifact Registry (artifactregistry.googleapis.com v1) ---------------------------------

    def repo_create(self, req: Request, project: str, location: str) -> Response:
        """A Docker repository, made by a long-running operation (``done`` after
        ``op_seconds``); 409 when it exists, 400 for a bad id or format."""
        self._project(project)
        repo_id = req.query.get("repositoryId", "")
        if not re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", repo_id):
            raise ierror(400, "INVALID_ARGUMENT", f"invalid repository id {repo_id!r}")
        if (req.body or {}).get("format") != "DOCKER":
            raise ierror(400, "INVALID_ARGUMENT", "format must be DOCKER here")
        name = f"projects/{project}/locations/{location}/repositories/{repo_id}"
        if name in self.repositories or any(r["name"] == name
                                            for _, r in self.ar_operations.values()):
            raise ierror(409, "ALREADY_EXISTS", f"the repository already exists: {name}")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        repo = {"name": name, "format": "DOCKER", "mode": "STANDARD_REPOSITORY",
                "description": (req.body or {}).get("description", ""), "createTime": now,
                "updateTime": now}
        op = f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}"
        self.ar_operations[op] = (time.time() + self.op_seconds, repo)
        return Response(200, {"name": op, "metadata": {
            "@type": "type.googleapis.com/google.devtools.artifactregistry.v1"
                     ".OperationMetadata"}})

    def ar_operation_get(self, req: Request, project: str, location: str,
                         op: str) -> Response:
        name = f"projects/{project}/locations/{location}/operations/{op}"
        if name not in self.ar_operations:
            raise ierror(404, "NOT_FOUND", f"operation {name} not found")
        done_at, repo = self.ar_operations[name]
        if time.time() < done_at:
            return Response(200, {"name": name, "done": False})
        self.repositories.setdefault(repo["name"], repo)
        return Response(200, {"name": name, "done": True, "response": {
            "@type": "type.googleapis.com/google.devtools.artifactregistry.v1.Repository",
            **repo}})

    def _repo(self, project: str, location: str, repo: str) -> str:
        self._project(project)
        name = f"projects/{project}/locations/{location}/repositories/{repo}"
        if name not in self.repositories:
            raise ierror(404, "NOT_FOUND", f"Requested entity was not found: {name}")
        return name

    def repo_get(self, req: Request, project: str, location: str, repo: str) -> Response:
        return Response(200, self.repositories[self._repo(project, location, repo)])

    def repo_iam_get(self, req: Request, project: str, location: str, repo: str) -> Response:
        name = self._repo(project, location, repo)
        return Response(200, json.loads(json.dumps(
            self.repository_policies.get(name, {"version": 1, "etag": "ACAB"}))))

    def repo_iam_set(self, req: Request, project: str, location: str, repo: str) -> Response:
        """An etag that is not the policy's own: 409 ABORTED (concurrent changes)."""
        name = self._repo(project, location, repo)
        policy = dict((req.body or {}).get("policy") or {})
        current = self.repository_policies.get(name, {"etag": "ACAB"})
        if policy.get("etag") and policy["etag"] != current["etag"]:
            raise ierror(409, "ABORTED", "There were concurrent policy changes. Please retry "
                         "the whole read-modify-write with exponential backoff.")
        for binding in policy.get("bindings", []):
            for member in binding.get("members", []):
                email = member.split(":", 1)[-1]
                if email.startswith("dqlctl-") and email not in self.service_accounts:
                    raise ierror(400, "INVALID_ARGUMENT", f"Invalid member {member}")
        self.repository_policies[name] = {"version": 1, "bindings": policy.get("bindings", []),
                                          "etag": f"BwY{next(self._ids)}="}
        return Response(200, self.repository_policies[name])

    def repository_readers(self, name: str) -> list[str]:
        """The members holding ``roles/artifactregistry.reader`` on repository ``name``."""
        with self.lock:
            return sorted(m for b in self.repository_policies.get(name, {}).get("bindings", [])
                          if b.get("role") == "roles/artifactregistry.reader"
                          for m in b.get("members", []))

    # -- a VM's own identity: instance IAM policies, custom roles, its tokens -----------------

    def mint_vm_token(self, zone: str, name: str) -> str:
        """An access token of instance ``name``'s service account, as its metadata server
        hands out (404 when it has none, as the metadata server answers)."""
        with self.lock:
            self._advance()
            inst = self.instances.get((zone, name))
            accounts = (inst or {}).get("serviceAccounts") or []
            if not accounts:
                raise gerror(404, "notFound", "no service account on this instance")
            token = f"ya29.vm-{uuid.uuid4().hex}"
            self.vm_tokens[token] = (accounts[0]["email"], list(accounts[0].get("scopes", [])))
            return token

    def _permissions(self, role: str) -> list[str]:
        if role == "roles/compute.instanceAdmin.v1":
            return ["compute.instances.delete", "compute.instances.get"]
        found = self.roles.get(role)
        return [] if found is None or found.get("deleted") else found["includedPermissions"]

    def _authorize(self, req: Request, email: str, fn: Callable[..., Response],
                   args: dict[str, str]) -> None:
        """A VM's token: only a delete of an instance that lets its account delete it."""
        scopes = dict(self.vm_tokens.values()).get(email, [])
        key = (args.get("zone", ""), args.get("name", ""))
        member = f"serviceAccount:{email}"
        bindings = self.instance_policies.get(key, {}).get("bindings", [])
        allowed = fn == self.instance_delete and any(
            member in b.get("members", []) and
            "compute.instances.delete" in self._permissions(b.get("role", ""))
            for b in bindings)
        if not allowed or not {"https://www.googleapis.com/auth/compute",
                               "https://www.googleapis.com/auth/cloud-platform"} & set(scopes):
            raise gerror(403, "forbidden", f"Required permission for '{req.path}' is missing "
                         f"for {email}")
        req.headers["x-fake-caller"] = email

    def instance_iam_set(self, req: Request, project: str, zone: str, name: str) -> Response:
        self._instance(project, zone, name)
        policy = dict((req.body or {}).get("policy") or {})
        for binding in policy.get("bindings", []):
            role = binding.get("role", "")
            if not (role.startswith("roles/") or role in self.roles):
                raise gerror(400, "badRequest", f"Role {role} is not supported for this "
                             "resource.")
            for member in binding.get("members", []):
                if member.split(":", 1)[-1] not in self.service_accounts:
                    raise gerror(400, "badRequest", f"Invalid member {member}")
        self.instance_policies[(zone, name)] = {**policy, "etag": f"BwX{next(self._ids)}="}
        return Response(200, self.instance_policies[(zone, name)])

    def instance_iam_get(self, req: Request, project: str, zone: str, name: str) -> Response:
        self._instance(project, zone, name)
        return Response(200, self.instance_policies.get((zone, name), {"etag": "ACAB"}))

    def role_create(self, req: Request, project: str) -> Response:
        self._project(project)
        body = req.body or {}
        name = f"projects/{project}/roles/{body.get('roleId', '')}"
        if name in self.roles:
            raise ierror(409, "ALREADY_EXISTS",
                         f"A role named {body.get('roleId')} in {project} already exists.")
        self.roles[name] = {**body.get("role", {}), "name": name, "etag": "BwWKmjvelug="}
        return Response(200, self.roles[name])

    def _role(self, project: str, role: str) -> dict[str, Any]:
        self._project(project)
        name = f"projects/{project}/roles/{role}"
        if name not in self.roles:
            raise ierror(404, "NOT_FOUND", f"The role named {name} was not found.")
        return self.roles[name]

    def role_get(self, req: Request, project: str, role: str) -> Response:
        return Response(200, self._role(project, role))

    def role_undelete(self, req: Request, project: str, role: str) -> Response:
        found = self._role(project, role)
        found.pop("deleted", None)
        return Response(200, found)

    # -- test hooks ----------------------------------------------------------------------------

    def ssh_keys(self) -> str:
        lines = []
        for inst in self.instances.values():
            if inst["status"] != "RUNNING":
                continue
            for item in inst.get("metadata", {}).get("items", []):
                if item.get("key") == "ssh-keys":
                    for entry in item.get("value", "").splitlines():
                        user, _, key = entry.partition(":")
                        if key:
                            lines.append(key.strip())
        return "".join(f"{line}\n" for line in lines)

    def leftovers(self) -> dict[str, list[str]]:
        """Everything dqlctl may have created (empty lists: nothing is left)."""
        with self.lock:
            self._advance()
            members = sorted({m for p in self.bucket_policies.values()
                              for b in p.get("bindings", []) for m in b.get("members", [])
                              if m.startswith("serviceAccount:dqlctl-")})
            return {"instances": sorted(n for _, n in self.instances),
                    "firewalls": sorted(n for n in self.firewalls
                                        if n not in DEFAULT_NETWORK_RULES),
                    "service_accounts": sorted(e for e in self.service_accounts
                                               if e.startswith("dqlctl-")),
                    "bucket_members": members}
