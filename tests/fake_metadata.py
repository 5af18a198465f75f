"""Local servers that answer a VM's own metadata service on GCE and Azure, for the VM stand-in
(tests/vm.py), in the style of tests/fake_imds.py (EC2's).

``FakeGceMetadata`` answers ``/computeMetadata/v1/...`` as GCE's metadata server does (only
with ``Metadata-Flavor: Google``, echoed in the answer): the default service account's access
token (JSON) and its ``email``/``scopes`` (``service-accounts/default/?recursive=true``),
``project/project-id``, ``instance/zone`` (``projects/NUMBER/zones/ZONE``), ``instance/name``
and ``universe/universe-domain`` (text), and ``/`` with the flavor header, which is how
google-auth tells it runs on GCE (``GCE_METADATA_HOST``/``GCE_METADATA_IP`` point it here). ``FakeAzureImds`` answers Azure IMDS (only with ``Metadata: true``):
``/metadata/identity/oauth2/token`` (the managed identity's token JSON, for the ``resource``
asked) and ``/metadata/instance`` (``compute.resourceId`` and the rest of the shape).

Preemption notices, switched on by the test: ``FakeGceMetadata.preempt()`` (or ``POST
/_fake/preempt``) turns ``instance/preempted`` from ``FALSE`` to ``TRUE``; a look with
``wait_for_change=true`` blocks until the value differs from ``last_etag``'s (or
``timeout_sec`` passes), and every answer has the value's ``ETag``, as GCE's server does.
``FakeAzureImds.preempt()`` (or ``POST /_fake/preempt``) puts a ``Preempt`` event in
``/metadata/scheduledevents`` (``DocumentIncarnation`` goes up), which a ``POST`` of
``{"StartRequests": [{"EventId": ...}]}`` acknowledges (``acknowledged`` lists the ids; the event
then leaves the document, as on Azure once it has started).

One stand-in serves every VM a test makes, so "this VM" is the one instance the fake cloud has
(a 404 while there is none, as on a machine without an identity). The tokens come from the fake
cloud (``FakeGce.mint_vm_token``, ``FakeAzure.mint_identity_token``), which lets them do only
what that identity's roles allow; ``token_requests`` counts them.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from email.utils import formatdate
from typing import Any

from tests.fake_azure import FakeAzure
from tests.fake_gce import FakeGce, FakeHttpServer, HttpError, Request, Response

PROJECT_NUMBER = "123456789012"


class VmMetadata(FakeHttpServer):
    """A metadata service in front of a fake cloud (``cloud``), counting the tokens it gave."""

    def __init__(self, cloud: Any) -> None:
        super().__init__()
        self.cloud = cloud
        self.token_requests = 0


class FakeGceMetadata(VmMetadata):
    def __init__(self, gce: FakeGce) -> None:
        super().__init__(gce)
        self.gce = gce
        self.preempted = False
        self.changed = threading.Condition()

    def preempt(self) -> None:
        """The instance is being preempted: ``instance/preempted`` turns ``TRUE``."""
        with self.changed:
            self.preempted = True
            self.changed.notify_all()

    def new_instance(self) -> None:
        """Another instance stands here now: not preempted (yet)."""
        with self.changed:
            self.preempted = False
            self.changed.notify_all()

    def _preempted(self, req: Request, flavor: dict[str, str]) -> Response:
        def value() -> str:
            return "TRUE" if self.preempted else "FALSE"

        def etag(text: str) -> str:
            return hashlib.sha1(text.encode()).hexdigest()[:16]

        if req.query.get("wait_for_change") == "true":
            timeout = float(req.query.get("timeout_sec") or 60)
            last = req.query.get("last_etag")
            with self.changed:
                self.changed.wait_for(lambda: etag(value()) != last if last else False,
                                      timeout=timeout)
        text = value()
        return Response(200, text, {**flavor, "ETag": etag(text)})

    def _this_vm(self) -> tuple[str, str]:
        live = [key for key, inst in self.gce.instances.items()
                if inst.get("status") == "RUNNING"]
        if len(live) != 1:
            raise HttpError(Response(404, "no instance (or more than one) stands here"))
        return live[0]

    def handle(self, req: Request) -> Response:
        flavor = {"Metadata-Flavor": "Google"}
        if req.method == "POST" and req.path == "/_fake/preempt":
            self.preempt()
            return Response(200, "ok")
        if req.headers.get("metadata-flavor") != "Google":
            return Response(403, "Missing required header: Metadata-Flavor", flavor)
        if req.path == "/":     # google-auth's "am I on GCE?" look
            return Response(200, "computeMetadata/\n", flavor)
        path = req.path.removeprefix("/computeMetadata/v1/")
        if path == "universe/universe-domain":
            return Response(200, "googleapis.com", flavor)
        if path == "instance/preempted":
            return self._preempted(req, flavor)
        if path == "project/project-id":
            return Response(200, self.gce.project, flavor)
        if path == "project/numeric-project-id":
            return Response(200, PROJECT_NUMBER, flavor)
        with self.gce.lock:
            self.gce._advance()
            zone, name = self._this_vm()
        if path == "instance/zone":
            return Response(200, f"projects/{PROJECT_NUMBER}/zones/{zone}", flavor)
        if path == "instance/name":
            return Response(200, name, flavor)
        accounts = (self.gce.instances.get((zone, name)) or {}).get("serviceAccounts") or []
        if path in ("instance/service-accounts/default/",
                    "instance/service-accounts/default") and accounts:
            return Response(200, {"aliases": ["default"], "email": accounts[0]["email"],
                                  "scopes": list(accounts[0].get("scopes", []))}, flavor)
        if path == "instance/service-accounts/default/token":
            try:
                token = self.gce.mint_vm_token(zone, name)
            except HttpError:
                return Response(404, "Not Found", flavor)
            self.token_requests += 1
            return Response(200, {"access_token": token, "expires_in": 3599,
                                  "token_type": "Bearer"}, flavor)
        return Response(404, "Not Found", flavor)


class FakeAzureImds(VmMetadata):
    def __init__(self, arm: FakeAzure) -> None:
        super().__init__(arm)
        self.arm = arm
        self.scheduled: list[dict[str, Any]] = []
        self.incarnation = 1
        self.acknowledged: list[str] = []

    def preempt(self, in_s: float = 30.0, resource: str = "vm") -> dict[str, Any]:
        """Azure schedules the eviction of this Spot VM ``in_s`` seconds from now."""
        event = {"EventId": str(uuid.uuid4()).upper(), "EventStatus": "Scheduled",
                 "EventType": "Preempt", "ResourceType": "VirtualMachine",
                 "Resources": [resource], "NotBefore": formatdate(time.time() + in_s,
                                                                  usegmt=True),
                 "Description": "", "EventSource": "Platform", "DurationInSeconds": -1}
        with self.lock:
            self.scheduled.append(event)
            self.incarnation += 1
        return event

    def _scheduled_events(self, req: Request) -> Response:
        with self.lock:
            if req.method == "POST":
                body = req.body if isinstance(req.body, dict) else {}
                ids = [str(r.get("EventId")) for r in body.get("StartRequests") or []
                       if isinstance(r, dict)]
                known = {e["EventId"] for e in self.scheduled}
                if not ids or not set(ids) <= known:
                    return Response(400, {"error": "invalid_request",
                                          "error_description": "unknown EventId"})
                self.acknowledged += ids
                self.scheduled = [e for e in self.scheduled if e["EventId"] not in ids]
                self.incarnation += 1
                return Response(200, None)
            return Response(200, {"DocumentIncarnation": self.incarnation,
                                  "Events": [dict(e) for e in self.scheduled]})

    def _this_vm(self) -> dict[str, Any]:
        vms = [r for r in self.arm.resources.values()
               if r["type"] == "Microsoft.Compute/virtualMachines"
               and r["properties"].get("provisioningState") == "Succeeded"]
        if len(vms) != 1:
            raise HttpError(Response(404, {"error": "not_found",
                                           "error_description": "no VM stands here"}))
        return vms[0]

    def handle(self, req: Request) -> Response:
        if req.method == "POST" and req.path == "/_fake/preempt":
            return Response(200, self.preempt())
        if req.headers.get("metadata") != "true":
            return Response(400, {"error": "invalid_request",
                                  "error_description": "Required metadata header not "
                                                       "specified"})
        if "api-version" not in req.query:
            return Response(400, {"error": "Bad request. api-version was not specified in "
                                           "the request"})
        if req.path == "/metadata/scheduledevents":
            return self._scheduled_events(req)
        with self.arm.lock:
            vm = self._this_vm()
            if req.path == "/metadata/identity/oauth2/token":
                resource = req.query.get("resource", "")
                principal = (vm.get("identity") or {}).get("principalId")
                if not principal:
                    return Response(400, {"error": "invalid_request", "error_description":
                                          "Identity not found"})
                token = self.arm.mint_identity_token(principal, resource)
                self.token_requests += 1
                now = int(time.time())
                return Response(200, {
                    "access_token": token, "client_id": principal, "expires_in": "86399",
                    "expires_on": str(now + 86399), "ext_expires_in": "86399",
                    "not_before": str(now), "resource": resource, "token_type": "Bearer"})
            if req.path == "/metadata/instance":
                rid = vm["id"]
                return Response(200, {"compute": {
                    "azEnvironment": "AzurePublicCloud", "location": vm["location"],
                    "name": vm["name"], "resourceGroupName": rid.split("/")[4],
                    "resourceId": rid, "subscriptionId": rid.split("/")[2],
                    "vmId": vm["properties"].get("vmId", ""),
                    "vmSize": vm["properties"]["hardwareProfile"]["vmSize"],
                    "zone": (vm.get("zones") or [""])[0], "osType": "Linux"},
                    "network": {"interface": []}})
        return Response(404, {"error": "not_found"})
