"""A local server that answers Azure Resource Manager's REST API for what dqlctl creates.

No Azure compute emulator exists (LOCAL_CLOUD.md). This one keeps the shapes the official
``azure-mgmt-*`` clients send and parse: resource groups (delete is a long-running operation
that takes every resource in the group along), and under them network security groups, virtual
networks with subnets, public IPs, NICs, VMs and their OS disks; role assignments at any scope
(listed by ``principalId``). PUT and DELETE of compute/network resources are long-running:
``201``/``202`` with ``Azure-AsyncOperation`` (and ``Location`` for deletes), the operation
answering ``InProgress`` before ``Succeeded`` or ``Failed`` with an ARM error. Errors carry ARM's
``{"error": {"code", "message"}}`` (``ResourceNotFound``, ``ResourceGroupNotFound``,
``InvalidParameter``, ``AuthenticationFailed`` without the bearer token).

Network security groups as Azure keeps them: its default rules (``defaultSecurityRules``:
AllowVnetInBound 65000, AllowAzureLoadBalancerInBound 65001, DenyAllInBound 65500 and the three
outbound ones), user rules of priority 100-4096 only (else ``SecurityRuleInvalidPriority``), one
per priority and direction (``SecurityRulesConflictingPriority``). ``allowed(group, vm, address,
port)`` says whether the VM's NSGs let a connection from ``address`` in.

Capacity, as Azure reports it: ``sku_not_available[zone]`` rejects a VM PUT at once (409
``SkuNotAvailable``); ``allocation_failures[zone] = "AllocationFailed" | "ZonalAllocationFailed"``
fails its operation and leaves the VM behind in state ``Failed``, as Azure does.

A VM's own identity: ``mint_identity_token(principal, resource)`` (what tests/fake_metadata.py
hands the VM from IMDS) issues a token of a VM's managed identity, which may do only what its role
assignments allow: here, delete a VM under a scope where it holds *Virtual Machine Contributor*
(or Contributor, Owner); anything else is a 403 ``AuthorizationFailed``. Azure goes on with such
a delete without anyone polling it; ``deleted_by_identity[vm id]`` names the principal.

Test hooks: ``public_address`` (when set, the address every public IP gets: where a VM stand-in
listens), ``GET /_fake/ssh-keys`` lists the ``osProfile.linuxConfiguration.ssh.publicKeys`` of
running VMs (the VM stand-in's sshd trusts those), ``evict(group, name)`` takes a Spot VM away
(eviction policy Delete), ``leftovers()`` lists what exists. The server runs in the test's process.

Azure Container Registry's token exchange (``POST /oauth2/exchange``, form ``grant_type=
access_token&service=REGISTRY&access_token=AAD``; on Azure it is the registry's own host): the
operator's token or a managed identity's token for Azure Resource Manager is traded for a
refresh token (``acr_refresh_tokens``), which tests/registry_gate.py checks as the password of
``00000000-0000-0000-0000-000000000000``, with the identity's *AcrPull* role assignments here.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import itertools
import json
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fake_gce import FakeHttpServer, HttpError, Request, Response

TOKEN = "fake-azure-arm-token"
TENANT = "72f988bf-0000-0000-0000-00000000d0c7"      # the tenant the fake's identities live in
#: the built-in roles that may delete a VM: Virtual Machine Contributor, Contributor, Owner
VM_DELETERS = ("9980e02c-c2be-4d73-94e8-173b1dc7cf3c", "b24988ac-6180-42a0-ab88-20f7382dd24c",
               "8e3af657-a8ff-443c-a75c-2fe8c4bcb635")
VM_SIZES = {"Standard_NC4as_T4_v3", "Standard_NC64as_T4_v3", "Standard_NC6s_v3",
            "Standard_NC12s_v3", "Standard_NC24s_v3", "Standard_NC24ads_A100_v4",
            "Standard_NV36ads_A10_v5", "Standard_D2s_v5"}
ALLOCATION_MESSAGES = {
    "AllocationFailed": "Allocation failed. We do not have sufficient capacity for the requested "
                        "VM size in this region.",
    "ZonalAllocationFailed": "Allocation failed. We do not have sufficient capacity for the "
                             "requested VM size in this zone.",
}


# every NSG has these, below the user's rules (priorities 100-4096), as Azure creates them
DEFAULT_NSG_RULES = [  # name, priority, direction, source, destination, access
    ("AllowVnetInBound", 65000, "Inbound", "VirtualNetwork", "VirtualNetwork", "Allow"),
    ("AllowAzureLoadBalancerInBound", 65001, "Inbound", "AzureLoadBalancer", "*", "Allow"),
    ("DenyAllInBound", 65500, "Inbound", "*", "*", "Deny"),
    ("AllowVnetOutBound", 65000, "Outbound", "VirtualNetwork", "VirtualNetwork", "Allow"),
    ("AllowInternetOutBound", 65001, "Outbound", "*", "Internet", "Allow"),
    ("DenyAllOutBound", 65500, "Outbound", "*", "*", "Deny"),
]
AZURE_LOAD_BALANCER = "168.63.129.16"       # the AzureLoadBalancer service tag (the host's probe)


def write_fake_az(bin_dir: Path) -> Path:
    """An ``az`` on PATH that hands out the fake server's token, as ``az login`` would: what
    DefaultAzureCredential's AzureCliCredential runs (``az account get-access-token``)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    az = bin_dir / "az"
    az.write_text("#!/bin/sh\n"
                  'case "$*" in *get-access-token*) ;; *) echo "az: not faked: $*" >&2; '
                  "exit 2;; esac\n"
                  f"echo '{{\"accessToken\": \"{TOKEN}\", \"expires_on\": '$(($(date +%s)+3600))'"
                  ', \"tokenType\": \"Bearer\", \"subscription\": \"x\"}'"'"'\n')
    az.chmod(0o755)
    return az


#: what DefaultAzureCredential would find before ``az``: cleared while a fake ARM serves
AZURE_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME",
             "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE",
             "AZURE_TOKEN_CREDENTIALS", "IDENTITY_ENDPOINT", "MSI_ENDPOINT")


@contextlib.contextmanager
def serving_arm(tmp_path: Path, monkeypatch: Any) -> Iterator[FakeAzure]:
    """A ``FakeAzure`` started, with the operator's credentials pointed at it as ``az login``
    would (a fake ``az`` on PATH, no other credential in the environment, the subscription set);
    stopped after."""
    fake = FakeAzure()
    fake.start()
    for key in AZURE_ENV:
        monkeypatch.delenv(key, raising=False)
    write_fake_az(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", fake.subscription)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "azure-cli"))
    try:
        yield fake
    finally:
        fake.stop()


def aerror(status: int, code: str, message: str) -> HttpError:
    return HttpError(Response(status, {"error": {"code": code, "message": message}},
                              {"x-ms-error-code": code}))


@dataclass
class AsyncOp:
    id: str
    polls_left: int
    effect: Callable[[AsyncOp], None]
    status: str = "InProgress"
    error: dict[str, Any] | None = None


class FakeAzure(FakeHttpServer):
    def __init__(self, subscription: str = "00000000-0000-0000-0000-0000000d0c71",
                 polls: int = 1, boot_seconds: float = 0.3) -> None:
        super().__init__()
        self.subscription = subscription
        self.polls = polls                  # InProgress answers before an operation ends
        self.boot_seconds = boot_seconds
        self.groups: dict[str, dict[str, Any]] = {}          # lower name -> group
        self.resources: dict[str, dict[str, Any]] = {}       # lower id -> resource
        self.role_assignments: dict[str, dict[str, Any]] = {}  # lower id -> assignment
        self.operations: dict[str, AsyncOp] = {}
        self.sku_not_available: set[str] = set()             # zones
        self.allocation_failures: dict[str, str] = {}        # zone -> code
        #: the host keys (key lines) cloud-init prints to a running VM's serial console, read
        #: through boot diagnostics; None: the log has no fingerprint block
        self.vm_host_keys: list[str] | None = None
        self.identity_tokens: dict[str, str] = {}            # token -> principal id
        self.token_audience: dict[str, str] = {}             # token -> its aud claim
        self.deleted_by_identity: dict[str, str] = {}        # lower VM id -> principal id
        self.public_address: str | None = None              # else 20.n.n.n, one per IP
        #: ACR refresh tokens from ``/oauth2/exchange``: token -> (principal id, or None for
        #: the operator, and the registry it is for)
        self.acr_refresh_tokens: dict[str, tuple[str | None, str]] = {}
        self._n = itertools.count(1)

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def sub_id(self) -> str:
        return f"/subscriptions/{self.subscription}"

    def keys_url(self) -> str:
        return f"{self.url}/_fake/ssh-keys"

    def handle(self, req: Request) -> Response:
        with self.lock:
            if req.path == "/_fake/ssh-keys":
                return Response(200, self.ssh_keys())
            if req.path.startswith("/_fake/serial/"):  # a SAS URL: no bearer token
                return Response(200, self.serial_log(req.path.split("/", 3)[3]))
            if req.path == "/oauth2/exchange" and req.method == "POST":
                return self._acr_exchange(req)
            bearer = req.headers.get("authorization", "").removeprefix("Bearer ")
            if bearer in self.identity_tokens:
                if self.token_audience.get(bearer, "").startswith("https://storage."):
                    raise aerror(401, "InvalidAuthenticationTokenAudience",
                                 "The access token has been obtained for wrong audience or "
                                 "resource 'https://storage.azure.com'.")
                return self._as_identity(req, self.identity_tokens[bearer])
            if req.headers.get("authorization") != f"Bearer {TOKEN}":
                raise aerror(401, "AuthenticationFailed", "Authentication failed. The "
                             "'Authorization' header is missing or has an invalid token.")
            path = re.sub(r"/+", "/", req.path).rstrip("/")
            if "/providers/microsoft.authorization/roleassignments" in path.lower():
                return self._role_assignments(req, path)
            m = re.fullmatch(r"/subscriptions/([^/]+)(/.*)?", path, re.I)
            if not m or m.group(1) != self.subscription:
                raise aerror(404, "SubscriptionNotFound", f"The subscription '{path}' could "
                             "not be found.")
            rest = m.group(2) or ""
            op = re.fullmatch(r"/providers/[^/]+/locations/[^/]+/(operations|operationResults)"
                              r"/([^/]+)", rest, re.I)
            if op:
                return self._poll(op.group(2), op.group(1).lower() == "operationresults")
            if re.fullmatch(r"/operationresults/([^/]+)", rest, re.I):
                return self._poll(rest.rsplit("/", 1)[1], True)
            if re.fullmatch(r"/providers/Microsoft\.Compute/virtualMachines", rest, re.I):
                return self._list(lambda r: r["type"] == "Microsoft.Compute/virtualMachines")
            if re.fullmatch(r"/resourcegroups", rest, re.I) and req.method == "GET":
                return Response(200, {"value": list(self.groups.values())})
            diag = re.fullmatch(r"/resourcegroups/([^/]+)/providers/Microsoft\.Compute/"
                                r"virtualMachines/([^/]+)/retrieveBootDiagnosticsData", rest,
                                re.I)
            if diag and req.method == "POST":
                return self._boot_diagnostics(*diag.groups())
            g = re.fullmatch(r"/resourcegroups/([^/]+)(/.*)?", rest, re.I)
            if not g:
                raise aerror(404, "InvalidResourceType", f"no such API: {req.method} {path}")
            group, under = g.group(1), g.group(2) or ""
            if not under:
                return self._group(req, group)
            if group.lower() not in self.groups:
                raise aerror(404, "ResourceGroupNotFound",
                             f"Resource group '{group}' could not be found.")
            lst = re.fullmatch(r"/providers/([^/]+)/([^/]+)", under, re.I)
            if lst and req.method == "GET":
                kind = f"{lst.group(1)}/{lst.group(2)}".lower()
                return self._list(lambda r: r["type"].lower() == kind and
                                  r["id"].lower().startswith(self._gid(group).lower() + "/"))
            r = re.fullmatch(r"/providers/([^/]+)/([^/]+)/([^/]+)(/([^/]+)/([^/]+))?", under,
                             re.I)
            if not r:
                raise aerror(404, "InvalidResourceType", f"no such API: {req.method} {path}")
            rid = f"{self._gid(group)}{under}"
            return self._resource(req, rid, f"{r.group(1)}/{r.group(2)}", r.group(3))

    def _boot_diagnostics(self, group: str, name: str) -> Response:
        vm = self.resources.get(f"{self._gid(group)}/providers/Microsoft.Compute/"
                                f"virtualMachines/{name}".lower())
        if vm is None:
            raise aerror(404, "ResourceNotFound", f"The Resource 'Microsoft.Compute/"
                         f"virtualMachines/{name}' under resource group '{group}' was not found.")
        diag = vm["properties"].get("diagnosticsProfile", {}).get("bootDiagnostics", {})
        if not diag.get("enabled"):
            raise aerror(409, "BootDiagnosticsDisabled", "Boot diagnostics is not enabled.")
        return Response(200, {"consoleScreenshotBlobUri": f"{self.url}/_fake/screen/{vm['id']}",
                              "serialConsoleLogBlobUri":
                                  f"{self.url}/_fake/serial/{group}/{name}?sv=2021&sig=x"})

    def serial_log(self, where: str) -> str:
        """A VM's serial console as cloud-init writes it, with the fingerprints of
        ``vm_host_keys`` once the VM runs."""
        import base64
        import hashlib

        group, _, name = where.partition("/")
        vm = self.resources.get(f"{self._gid(group)}/providers/Microsoft.Compute/"
                                f"virtualMachines/{name}".lower())
        lines = ["[    0.000000] Linux version 6.5.0-1025-azure", "Cloud-init v. 24.1 running"]
        if vm is not None and time.time() >= vm.get("_running_at", float("inf")) \
                and self.vm_host_keys:
            lines.append("ci-info: no authorized SSH keys fingerprints found for user root.")
            lines.append("<14>Nov 30 cloud-init: -----BEGIN SSH HOST KEY FINGERPRINTS-----")
            for key in self.vm_host_keys:
                digest = hashlib.sha256(base64.b64decode(key.split()[1])).digest()
                fp = base64.b64encode(digest).decode().rstrip("=")
                lines.append(f"<14>Nov 30 cloud-init: 256 SHA256:{fp} root@{name} "
                             f"({key.split()[0].split('-')[-1].upper()})")
            lines.append("<14>Nov 30 cloud-init: -----END SSH HOST KEY FINGERPRINTS-----")
        return "\n".join(lines) + "\n"

    def _gid(self, group: str) -> str:
        return f"{self.sub_id}/resourceGroups/{group}"

    def _list(self, pred: Callable[[dict[str, Any]], bool]) -> Response:
        now = time.time()
        return Response(200, {"value": [self._view(r, now) for r in self.resources.values()
                                        if pred(r)]})

    def _start(self, effect: Callable[[AsyncOp], None], location: str = "eastus",
               namespace: str = "Microsoft.Compute") -> tuple[AsyncOp, dict[str, str]]:
        op = AsyncOp(str(uuid.uuid4()), self.polls, effect)
        self.operations[op.id] = op
        base = f"{self.url}{self.sub_id}/providers/{namespace}/locations/{location}"
        return op, {"Azure-AsyncOperation": f"{base}/operations/{op.id}?api-version=2024-07-01",
                    "Location": f"{base}/operationResults/{op.id}?api-version=2024-07-01"}

    def _poll(self, op_id: str, result_style: bool) -> Response:
        op = self.operations.get(op_id)
        if op is None:
            raise aerror(404, "NotFound", f"operation {op_id} not found")
        if op.status == "InProgress":
            if op.polls_left > 0:
                op.polls_left -= 1
            else:
                op.effect(op)
                op.status = "Failed" if op.error else "Succeeded"
        if result_style:  # a Location URL: 202 while running, then 200 (or the error)
            if op.status == "InProgress":
                return Response(202, None, {"Location": f"{self.url}{self.sub_id}/"
                                            f"operationresults/{op.id}"})
            if op.error:
                return Response(409 if op.error["code"] != "NotFound" else 404,
                                {"error": op.error})
            return Response(200, None)
        body: dict[str, Any] = {"name": op.id, "status": op.status,
                                "startTime": "2025-01-01T00:00:00Z"}
        if op.error:
            body["error"] = op.error
        return Response(200, body)

    # -- resource groups -----------------------------------------------------------------------

    def _group(self, req: Request, group: str) -> Response:
        key = group.lower()
        if req.method == "PUT":
            body = req.body or {}
            if not body.get("location"):
                raise aerror(400, "LocationRequired", "The location property is required.")
            existed = key in self.groups
            self.groups[key] = {"id": self._gid(group), "name": group,
                                "type": "Microsoft.Resources/resourceGroups",
                                "location": body["location"], "tags": body.get("tags") or {},
                                "properties": {"provisioningState": "Succeeded"}}
            return Response(200 if existed else 201, self.groups[key])
        if key not in self.groups:
            if req.method == "HEAD":
                return Response(404, None)
            raise aerror(404, "ResourceGroupNotFound",
                         f"Resource group '{group}' could not be found.")
        if req.method in ("GET", "HEAD"):
            return Response(200 if req.method == "GET" else 204,
                            self.groups[key] if req.method == "GET" else None)
        if req.method == "DELETE":
            self.groups[key]["properties"]["provisioningState"] = "Deleting"
            prefix = self._gid(group).lower() + "/"

            def delete(op: AsyncOp) -> None:
                for rid in [r for r in self.resources if r.startswith(prefix)]:
                    del self.resources[rid]
                for rid in [r for r in self.role_assignments if r.startswith(prefix)]:
                    del self.role_assignments[rid]
                self.groups.pop(key, None)

            _, headers = self._start(delete, namespace="Microsoft.Resources")
            return Response(202, None, {"Location": headers["Location"]})
        raise aerror(405, "MethodNotAllowed", req.method)

    # -- resources -----------------------------------------------------------------------------

    def _view(self, res: dict[str, Any], now: float, expand: bool = False) -> dict[str, Any]:
        out = json.loads(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}))
        if res["type"] == "Microsoft.Compute/virtualMachines" and expand:
            state = out["properties"].get("provisioningState", "Creating")
            power = "running" if state == "Succeeded" and now >= res.get("_running_at", 0) \
                else "starting" if state == "Succeeded" else None
            statuses = [{"code": f"ProvisioningState/{state.lower()}", "level": "Info",
                         "displayStatus": f"Provisioning {state.lower()}"}]
            if power:
                statuses.append({"code": f"PowerState/{power}", "level": "Info",
                                 "displayStatus": f"VM {power}"})
            out["properties"]["instanceView"] = {"statuses": statuses}
        return out

    def _get(self, rid: str, kind: str = "") -> dict[str, Any]:
        res = self.resources.get(rid.lower())
        if res is None:
            name = rid.rsplit("/", 1)[-1]
            raise aerror(404, "ResourceNotFound", f"The Resource '{kind or 'resource'}/{name}' "
                         f"under resource group '{rid.split('/')[4]}' was not found.")
        return res

    def _ref(self, ref: dict[str, Any] | None, what: str) -> dict[str, Any]:
        if not ref or not ref.get("id"):
            raise aerror(400, "InvalidParameter", f"{what}: a resource id is required")
        if ref["id"].lower() not in self.resources:
            raise aerror(400, "InvalidResourceReference", f"Resource {ref['id']} referenced "
                         f"by {what} was not found.")
        return self.resources[ref["id"].lower()]

    def _resource(self, req: Request, rid: str, kind: str, name: str) -> Response:
        key = rid.lower()
        if req.method == "GET":
            return Response(200, self._view(self._get(rid, kind), time.time(),
                                            expand=req.query.get("$expand") == "instanceView"))
        if req.method == "DELETE":
            if key not in self.resources:
                return Response(204, None)
            res = self.resources[key]
            res["properties"]["provisioningState"] = "Deleting"

            def delete(op: AsyncOp) -> None:
                gone = self.resources.pop(key, None)
                if gone and gone["type"] == "Microsoft.Compute/virtualMachines":
                    self._vm_deleted(gone)

            _, headers = self._start(delete, res.get("location", "eastus"), kind.split("/")[0])
            return Response(202, None, headers)
        if req.method != "PUT":
            raise aerror(405, "MethodNotAllowed", req.method)
        body = json.loads(json.dumps(req.body or {}))
        if "/" in rid.split("/providers/", 1)[1].split("/", 3)[-1]:  # a child (subnet)
            raise aerror(400, "InvalidParameter", "child resources are created with their parent")
        if not body.get("location"):
            raise aerror(400, "LocationRequired", "The location property is required.")
        existed = key in self.resources
        res = {**body, "id": rid, "name": name, "type": kind,
               "properties": {**body.get("properties", {}), "provisioningState":
                              "Updating" if existed else "Creating"}}
        builder = {"Microsoft.Network/networkSecurityGroups": self._nsg,
                   "Microsoft.Network/virtualNetworks": self._vnet,
                   "Microsoft.Network/publicIPAddresses": self._public_ip,
                   "Microsoft.Network/networkInterfaces": self._nic,
                   "Microsoft.Compute/virtualMachines": self._vm}.get(kind)
        if builder is None:
            raise aerror(400, "InvalidResourceType", f"{kind} is not served here")
        finish = builder(res)
        self.resources[key] = res

        def done(op: AsyncOp) -> None:
            failure = finish() if finish else None
            if failure:
                res["properties"]["provisioningState"] = "Failed"
                op.error = failure
            else:
                res["properties"]["provisioningState"] = "Succeeded"

        _, headers = self._start(done, body["location"], kind.split("/")[0])
        return Response(200 if existed else 201, self._view(res, time.time()),
                        {"Azure-AsyncOperation": headers["Azure-AsyncOperation"]})

    # each builder validates, fills what Azure fills, and may return a completion step that
    # returns an ARM error (the operation then fails)

    def _nsg(self, res: dict[str, Any]) -> None:
        props = res["properties"]
        seen: dict[tuple[str, int], str] = {}
        for rule in props.get("securityRules", []):
            rp = rule.get("properties", {})
            for field in ("protocol", "access", "direction", "priority"):
                if field not in rp:
                    raise aerror(400, "InvalidRequestFormat", f"securityRules/{field} missing")
            priority = rp["priority"]
            if not isinstance(priority, int) or not 100 <= priority <= 4096:
                raise aerror(400, "SecurityRuleInvalidPriority",
                             f"Security rule {rule.get('name')} has invalid priority "
                             f"{priority}. Value provided: {priority} Allowed range 100-4096.")
            other = seen.setdefault((rp["direction"], priority), rule.get("name", ""))
            if other != rule.get("name", ""):
                raise aerror(400, "SecurityRulesConflictingPriority",
                             f"Security rule {rule.get('name')} conflicts with rule {other}. "
                             f"Rules cannot have the same Priority and Direction.")
            rule["id"] = f"{res['id']}/securityRules/{rule['name']}"
            rp["provisioningState"] = "Succeeded"
        props["defaultSecurityRules"] = [
            {"name": name, "id": f"{res['id']}/defaultSecurityRules/{name}",
             "properties": {"protocol": "*", "sourcePortRange": "*",
                            "destinationPortRange": "*", "sourceAddressPrefix": source,
                            "destinationAddressPrefix": dest, "access": access,
                            "priority": priority, "direction": direction,
                            "provisioningState": "Succeeded"}}
            for name, priority, direction, source, dest, access in DEFAULT_NSG_RULES]
        props["resourceGuid"] = str(uuid.uuid4())

    def _vnet(self, res: dict[str, Any]) -> None:
        props = res["properties"]
        if not props.get("addressSpace", {}).get("addressPrefixes"):
            raise aerror(400, "InvalidAddressPrefix", "addressSpace.addressPrefixes is required")
        for subnet in props.get("subnets", []):
            subnet["id"] = f"{res['id']}/subnets/{subnet['name']}"
            subnet.setdefault("properties", {})["provisioningState"] = "Succeeded"
            nsg = subnet["properties"].get("networkSecurityGroup")
            if nsg:
                self._ref(nsg, f"subnet {subnet['name']}")
            # a subnet is also addressable on its own
            self.resources[subnet["id"].lower()] = {
                **subnet, "type": "Microsoft.Network/virtualNetworks/subnets",
                "_parent": res["id"]}

    def _public_ip(self, res: dict[str, Any]) -> Callable[[], None]:
        n = next(self._n)

        def finish() -> None:
            res["properties"]["ipAddress"] = self.public_address or \
                f"20.{n}.{n % 250}.{7 + n % 200}"

        return finish

    def _nic(self, res: dict[str, Any]) -> None:
        props = res["properties"]
        if props.get("networkSecurityGroup"):
            self._ref(props["networkSecurityGroup"], "networkInterface")
        for i, cfg in enumerate(props.get("ipConfigurations", [])):
            cp = cfg.setdefault("properties", {})
            self._ref(cp.get("subnet"), f"ipConfiguration {cfg.get('name')}")
            if cp.get("publicIPAddress"):
                self._ref(cp["publicIPAddress"], f"ipConfiguration {cfg.get('name')}")
            cfg["id"] = f"{res['id']}/ipConfigurations/{cfg['name']}"
            cp["privateIPAddress"] = f"10.42.0.{4 + i}"
            cp["provisioningState"] = "Succeeded"

    def _vm(self, res: dict[str, Any]) -> Callable[[], dict[str, Any] | None]:
        props = res["properties"]
        size = props.get("hardwareProfile", {}).get("vmSize")
        zone = (res.get("zones") or [None])[0]
        if size not in VM_SIZES or zone in self.sku_not_available:
            raise aerror(409, "SkuNotAvailable", f"The requested VM size '{size}' is currently "
                         f"not available in location '{res['location']}' zones '{zone}' for "
                         f"subscription '{self.subscription}'. Please try another size or "
                         "deploy to a different location or zones.")
        linux = props.get("osProfile", {}).get("linuxConfiguration", {})
        keys = linux.get("ssh", {}).get("publicKeys", [])
        if linux.get("disablePasswordAuthentication") and not keys:
            raise aerror(400, "InvalidParameter", "Required parameter 'publicKeys' is missing.")
        if props.get("priority") == "Spot":
            if props.get("evictionPolicy") not in ("Deallocate", "Delete"):
                raise aerror(400, "InvalidParameter", "evictionPolicy must be Deallocate or "
                             "Delete for a Spot VM.")
            price = props.get("billingProfile", {}).get("maxPrice")
            if price is None or not (price == -1 or price > 0):
                raise aerror(400, "InvalidParameter", "billingProfile.maxPrice must be -1 or "
                             "greater than 0 for a Spot VM.")
        nics = props.get("networkProfile", {}).get("networkInterfaces", [])
        if not nics:
            raise aerror(400, "InvalidParameter", "networkProfile.networkInterfaces is required")
        for nic in nics:
            self._ref(nic, "virtualMachine")
        if not props.get("storageProfile", {}).get("imageReference"):
            raise aerror(400, "InvalidParameter", "storageProfile.imageReference is required")
        failure = self.allocation_failures.get(zone or "")

        def finish() -> dict[str, Any] | None:
            if failure:
                return {"code": failure, "message": ALLOCATION_MESSAGES.get(failure, failure)}
            props["vmId"] = str(uuid.uuid4())
            res["_running_at"] = time.time() + self.boot_seconds
            if (res.get("identity") or {}).get("type") == "SystemAssigned":
                res["identity"]["principalId"] = str(uuid.uuid4())
                res["identity"]["tenantId"] = "72f988bf-0000-0000-0000-00000000cafe"
            os_disk = props["storageProfile"].setdefault("osDisk", {})
            disk_id = f"{res['id'].rsplit('/providers/', 1)[0]}/providers/Microsoft.Compute/" \
                      f"disks/{res['name']}_OsDisk_1_{uuid.uuid4().hex[:12]}"
            os_disk["name"] = disk_id.rsplit("/", 1)[-1]
            os_disk.setdefault("managedDisk", {})["id"] = disk_id
            self.resources[disk_id.lower()] = {
                "id": disk_id, "name": os_disk["name"], "type": "Microsoft.Compute/disks",
                "location": res["location"], "tags": {}, "managedBy": res["id"],
                "properties": {"provisioningState": "Succeeded",
                               "diskSizeGB": os_disk.get("diskSizeGB", 30)}}
            for nic in nics:
                self.resources[nic["id"].lower()]["properties"]["virtualMachine"] = \
                    {"id": res["id"]}
            return None

        return finish

    def _vm_deleted(self, vm: dict[str, Any]) -> None:
        """What Azure deletes along with a VM: resources whose deleteOption is Delete."""
        props = vm["properties"]
        for nic in props.get("networkProfile", {}).get("networkInterfaces", []):
            if nic.get("properties", {}).get("deleteOption") == "Delete":
                self.resources.pop(nic["id"].lower(), None)
            elif nic["id"].lower() in self.resources:
                self.resources[nic["id"].lower()]["properties"].pop("virtualMachine", None)
        os_disk = props.get("storageProfile", {}).get("osDisk", {})
        disk_id = os_disk.get("managedDisk", {}).get("id")
        if disk_id and os_disk.get("deleteOption") == "Delete":
            self.resources.pop(disk_id.lower(), None)

    # -- role assignments ----------------------------------------------------------------------

    def _role_assignments(self, req: Request, path: str) -> Response:
        scope, _, tail = path.partition("/providers/Microsoft.Authorization/roleAssignments")
        if not tail:  # case differs: find it case-insensitively
            i = path.lower().index("/providers/microsoft.authorization/roleassignments")
            scope, tail = path[:i], path[i + len("/providers/microsoft.authorization/"
                                                 "roleassignments"):]
        name = tail.strip("/")
        if not name:
            if req.method != "GET":
                raise aerror(405, "MethodNotAllowed", req.method)
            found = list(self.role_assignments.values())
            m = re.search(r"principalId\s+eq\s+'([^']+)'", req.query.get("$filter", ""))
            if m:
                found = [a for a in found if a["properties"]["principalId"] == m.group(1)]
            found = [a for a in found if a["properties"]["scope"].lower().startswith(
                scope.lower())]
            return Response(200, {"value": found})
        rid = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
        key = rid.lower()
        if req.method == "GET":
            if key not in self.role_assignments:
                raise aerror(404, "RoleAssignmentNotFound", f"{rid} not found")
            return Response(200, self.role_assignments[key])
        if req.method == "DELETE":
            gone = self.role_assignments.pop(key, None)
            return Response(200, gone) if gone else Response(204, None)
        if req.method != "PUT":
            raise aerror(405, "MethodNotAllowed", req.method)
        props = (req.body or {}).get("properties", {})
        if not re.fullmatch(r"/subscriptions/[^/]+/providers/Microsoft\.Authorization/"
                            r"roleDefinitions/[0-9a-f-]{36}", props.get("roleDefinitionId", "")):
            raise aerror(400, "InvalidRoleDefinitionId", "The role definition ID is invalid.")
        principals = {(r.get("identity") or {}).get("principalId")
                      for r in self.resources.values()}
        if props.get("principalId") not in principals:
            raise aerror(400, "PrincipalNotFound", f"Principal {props.get('principalId')} does "
                         "not exist in the directory.")
        if key in self.role_assignments:
            raise aerror(409, "RoleAssignmentExists", "The role assignment already exists.")
        self.role_assignments[key] = {
            "id": rid, "name": name, "type": "Microsoft.Authorization/roleAssignments",
            "properties": {"roleDefinitionId": props["roleDefinitionId"],
                           "principalId": props["principalId"],
                           "principalType": props.get("principalType", "ServicePrincipal"),
                           "scope": scope}}
        return Response(201, self.role_assignments[key])

    # -- Azure Container Registry's token exchange --------------------------------------------

    def _acr_exchange(self, req: Request) -> Response:
        """``POST /oauth2/exchange`` as ACR answers it (the registry's own host there): an
        Azure AD token for Azure Resource Manager (the operator's, or a managed identity's)
        in, an ACR refresh token for ``service`` out; 401 in ACR's error shape otherwise."""
        form = dict(urllib.parse.parse_qsl(req.raw.decode(errors="replace")))
        token, service = form.get("access_token", ""), form.get("service", "")
        if form.get("grant_type") != "access_token" or not service:
            return Response(400, {"errors": [{"code": "UNSUPPORTED", "message":
                                              "grant_type access_token and service needed"}]})
        if token == TOKEN:
            who: str | None = None
        elif token in self.identity_tokens and \
                self.token_audience.get(token, "").rstrip("/") == "https://management.azure.com":
            who = self.identity_tokens[token]
        else:
            return Response(401, {"errors": [{"code": "UNAUTHORIZED", "message":
                                              "the access token is not valid for ACR"}]})
        refresh = f"acr-refresh-{uuid.uuid4().hex}"
        self.acr_refresh_tokens[refresh] = (who, service)
        return Response(200, {"refresh_token": refresh})

    # -- a VM's managed identity -------------------------------------------------------------

    def mint_identity_token(self, principal: str, resource: str) -> str:
        """A token of the managed identity ``principal`` for ``resource`` (what IMDS hands its
        VM): a JWT with Entra ID's claims (``aud`` the resource, ``iss`` the tenant's STS,
        ``oid`` the principal, ``iat``/``nbf``/``exp``), which Azurite in OAuth mode checks; its
        signature is a stand-in (no one here verifies one). ``token_audience`` says whom it
        was for."""
        now = int(time.time())
        claims = {"aud": resource.rstrip("/"), "iss": f"https://sts.windows.net/{TENANT}/",
                  "iat": now, "nbf": now, "exp": now + 86399, "oid": principal,
                  "sub": principal, "tid": TENANT, "appid": principal, "idtyp": "app",
                  "jti": uuid.uuid4().hex}

        def part(value: dict[str, Any]) -> str:
            raw = json.dumps(value, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        token = f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.ZmFrZQ"
        with self.lock:
            self.identity_tokens[token] = principal
            self.token_audience[token] = claims["aud"]
            return token

    def _as_identity(self, req: Request, principal: str) -> Response:
        """A call with a VM's identity token: only the delete of a VM under a scope where
        ``principal`` holds a role in ``VM_DELETERS``; Azure goes on with it unpolled."""
        path = re.sub(r"/+", "/", req.path).rstrip("/")
        m = re.fullmatch(r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/"
                         r"Microsoft\.Compute/virtualMachines/([^/]+)", path, re.I)
        vm_id = f"{self._gid(m.group(2))}/providers/Microsoft.Compute/virtualMachines/" \
                f"{m.group(3)}" if m else path
        allowed = req.method == "DELETE" and m is not None and any(
            a["properties"]["principalId"] == principal
            and a["properties"]["roleDefinitionId"].rsplit("/", 1)[-1] in VM_DELETERS
            and vm_id.lower().startswith(a["properties"]["scope"].lower())
            for a in self.role_assignments.values())
        if not allowed:
            raise aerror(403, "AuthorizationFailed", f"The client '{principal}' with object id "
                         f"'{principal}' does not have authorization to perform action "
                         f"'{req.method} {path}' over scope '{path}' or the scope is invalid.")
        resp = self._resource(req, vm_id, "Microsoft.Compute/virtualMachines", m.group(3))
        op_url = resp.headers.get("Azure-AsyncOperation", "")
        op = self.operations.get(op_url.split("/operations/")[-1].split("?")[0])
        if op is not None:
            op.effect(op)
            op.status = "Succeeded"
        self.deleted_by_identity[vm_id.lower()] = principal
        return resp

    # -- test hooks ----------------------------------------------------------------------------

    def ssh_keys(self) -> str:
        lines = []
        now = time.time()
        for res in self.resources.values():
            if res["type"] != "Microsoft.Compute/virtualMachines":
                continue
            if res["properties"].get("provisioningState") != "Succeeded" or \
                    now < res.get("_running_at", 0):
                continue
            ssh = res["properties"].get("osProfile", {}).get("linuxConfiguration", {}).get(
                "ssh", {})
            lines += [k["keyData"].strip() for k in ssh.get("publicKeys", [])]
        return "".join(f"{line}\n" for line in lines)

    def evict(self, group: str, name: str) -> None:
        """A Spot eviction with policy Delete: the VM (and what is deleted with it) is gone."""
        with self.lock:
            vm = self.resources.pop(f"{self._gid(group)}/providers/Microsoft.Compute/"
                                    f"virtualMachines/{name}".lower(), None)
            if vm:
                self._vm_deleted(vm)

    def allowed(self, group: str, name: str, address: str, port: int = 22,
                protocol: str = "Tcp") -> bool:
        """Whether Azure lets ``protocol:port`` from ``address`` in to the VM: the inbound rules
        of the NSGs on its NIC and on the NIC's subnet (both must allow), the user's and the
        default ones, are tried by priority (lowest number first) and the first that matches
        decides; ``DenyAllInBound`` ends every list. Service tags: ``VirtualNetwork`` (the
        VNet's address space), ``AzureLoadBalancer``, ``Internet`` (not the VNet), ``*``."""
        with self.lock:
            vm = self.resources[f"{self._gid(group)}/providers/Microsoft.Compute/"
                                f"virtualMachines/{name}".lower()]
            ip = ipaddress.ip_address(address)
            for ref in vm["properties"]["networkProfile"]["networkInterfaces"]:
                nic = self.resources[ref["id"].lower()]["properties"]
                nsgs = [nic.get("networkSecurityGroup")]
                vnets: list[str] = []
                for cfg in nic.get("ipConfigurations", []):
                    subnet = self.resources[cfg["properties"]["subnet"]["id"].lower()]
                    nsgs.append(subnet.get("properties", {}).get("networkSecurityGroup"))
                    vnet = self.resources[subnet["_parent"].lower()]["properties"]
                    vnets += vnet["addressSpace"]["addressPrefixes"]
                for nsg in (self.resources[n["id"].lower()] for n in nsgs if n):
                    if not self._nsg_allows(nsg["properties"], ip, vnets, port, protocol):
                        return False
            return True

    @staticmethod
    def _nsg_allows(props: dict[str, Any], ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                    vnets: list[str], port: int, protocol: str) -> bool:
        def in_prefix(prefix: str) -> bool:
            in_vnet = any(ip in ipaddress.ip_network(v, strict=False) for v in vnets)
            if prefix == "*":
                return True
            if prefix == "VirtualNetwork":
                return in_vnet
            if prefix == "Internet":
                return not in_vnet
            if prefix == "AzureLoadBalancer":
                return str(ip) == AZURE_LOAD_BALANCER
            net = ipaddress.ip_network(prefix, strict=False)
            return ip.version == net.version and ip in net

        def in_ports(spec: str) -> bool:
            if spec == "*":
                return True
            low, _, high = spec.partition("-")
            return int(low) <= port <= int(high or low)

        rules = [r["properties"] for r in props.get("securityRules", []) +
                 props.get("defaultSecurityRules", [])]
        for rule in sorted((r for r in rules if r["direction"] == "Inbound"),
                           key=lambda r: r["priority"]):
            sources = rule.get("sourceAddressPrefixes") or [rule.get("sourceAddressPrefix", "")]
            ports = rule.get("destinationPortRanges") or [rule.get("destinationPortRange", "")]
            if rule["protocol"] not in ("*", protocol) or not any(map(in_prefix, sources)) \
                    or not any(map(in_ports, ports)):
                continue
            return bool(rule["access"] == "Allow")
        return False

    def vm(self, group: str, name: str) -> dict[str, Any]:
        with self.lock:
            return self.resources[f"{self._gid(group)}/providers/Microsoft.Compute/"
                                  f"virtualMachines/{name}".lower()]

    def leftovers(self) -> dict[str, list[str]]:
        with self.lock:
            return {"groups": sorted(g["name"] for g in self.groups.values()),
                    "resources": sorted(r["id"] for r in self.resources.values()),
                    "role_assignments": sorted(self.role_assignments)}
