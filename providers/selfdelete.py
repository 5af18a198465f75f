"""The VM's last act on GCE and Azure: delete its own instance with its own identity, so that a
run whose controller is gone still stops billing (a guest shutdown only stops a GCE VM, whose
boot disk keeps billing, and leaves an Azure VM allocated, which keeps billing).

``python -m providers.selfdelete gcp|azure`` (run by the supervisor, see
providers/local/supervisor.py ``--self-delete``): exit 0 once the cloud accepted the delete,
1 with one line saying why not (the supervisor then falls back to its shutdown command).

* GCE: an access token of the VM's service account from the metadata server
  (``instance/service-accounts/default/token``, header ``Metadata-Flavor: Google``), the
  project, zone and name from the metadata server too, then ``DELETE
  /compute/v1/projects/P/zones/Z/instances/N``. The service account may do that on this instance
  only (an instance-level IAM binding, providers/gcp/access.py).
* Azure: a token of the VM's managed identity for ARM from IMDS
  (``/metadata/identity/oauth2/token``, header ``Metadata: true``), the VM's resource id from
  IMDS ``/metadata/instance`` (``compute.resourceId``), then ARM ``DELETE {resourceId}``. The
  identity holds *Virtual Machine Contributor* on this VM only (providers/azure/access.py).

Endpoints come from the environment (the tests point them at local stand-ins): ``GCE_METADATA``,
``GCE_COMPUTE``, ``AZURE_IMDS``, ``AZURE_ARM`` name the variables. Standard library only: it is
shipped to the VM with the supervisor and runs under whatever Python the VM has.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

GCE_METADATA = "DQLCTL_GCE_METADATA_URL"    # default http://metadata.google.internal
GCE_COMPUTE = "DQLCTL_GCE_COMPUTE_URL"      # default https://compute.googleapis.com
AZURE_IMDS = "DQLCTL_AZURE_IMDS_URL"        # default http://169.254.169.254
AZURE_ARM = "DQLCTL_AZURE_ARM_URL"          # default https://management.azure.com
ENDPOINT_VARIABLES = (GCE_METADATA, GCE_COMPUTE, AZURE_IMDS, AZURE_ARM)
ARM_VM_API = "2024-07-01"
TIMEOUT_S = 30.0


class SelfDeleteError(Exception):
    """The delete could not be asked for (no identity, no permission, no endpoint)."""


def _endpoint(variable: str, default: str) -> str:
    return (os.environ.get(variable) or default).rstrip("/")


def _call(method: str, url: str, headers: dict[str, str]) -> bytes:
    """One HTTP call; SelfDeleteError with the status and the start of the answer."""
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode(errors="replace").strip()
        raise SelfDeleteError(f"{method} {url.split('?')[0]}: HTTP {exc.code}: {body}") from None
    except OSError as exc:
        raise SelfDeleteError(f"{method} {url.split('?')[0]}: {exc}") from None


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise SelfDeleteError(f"{what}: not JSON: {data[:80]!r}") from None


def delete_gce() -> str:
    """Ask GCE to delete this instance; returns its path (projects/P/zones/Z/instances/N)."""
    meta = _endpoint(GCE_METADATA, "http://metadata.google.internal") + "/computeMetadata/v1"
    flavor = {"Metadata-Flavor": "Google"}

    def text(path: str) -> str:
        return _call("GET", f"{meta}/{path}", flavor).decode().strip()

    token = _json(_call("GET", f"{meta}/instance/service-accounts/default/token", flavor),
                  "the metadata server's token").get("access_token")
    if not token:
        raise SelfDeleteError("the metadata server gave no access token")
    project = text("project/project-id")
    zone = text("instance/zone").rsplit("/", 1)[-1]       # projects/NUMBER/zones/ZONE
    name = text("instance/name")
    path = f"projects/{project}/zones/{zone}/instances/{name}"
    compute = _endpoint(GCE_COMPUTE, "https://compute.googleapis.com")
    _call("DELETE", f"{compute}/compute/v1/{urllib.parse.quote(path)}",
          {"Authorization": f"Bearer {token}"})
    return path


def delete_azure() -> str:
    """Ask ARM to delete this VM; returns its resource id."""
    imds = _endpoint(AZURE_IMDS, "http://169.254.169.254") + "/metadata"
    arm = _endpoint(AZURE_ARM, "https://management.azure.com")
    header = {"Metadata": "true"}
    query = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": arm + "/"})
    token = _json(_call("GET", f"{imds}/identity/oauth2/token?{query}", header),
                  "IMDS's token").get("access_token")
    if not token:
        raise SelfDeleteError("IMDS gave no access token (no managed identity?)")
    instance = _json(_call("GET", f"{imds}/instance?api-version=2021-02-01", header),
                     "IMDS's instance metadata")
    resource_id = (instance.get("compute") or {}).get("resourceId") or ""
    if "/providers/Microsoft.Compute/virtualMachines/" not in resource_id:
        raise SelfDeleteError(f"IMDS gave no VM resource id ({resource_id!r})")
    _call("DELETE", f"{arm}{urllib.parse.quote(resource_id)}?api-version={ARM_VM_API}",
          {"Authorization": f"Bearer {token}"})
    return resource_id


CLOUDS: dict[str, Callable[[], str]] = {"gcp": delete_gce, "azure": delete_azure}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in CLOUDS:
        print(f"usage: python -m providers.selfdelete {'|'.join(CLOUDS)}", file=sys.stderr)
        return 2
    try:
        deleted = CLOUDS[args[0]]()
    except SelfDeleteError as exc:
        print(f"dqlctl: this VM could not delete itself: {exc}", flush=True)
        return 1
    print(f"dqlctl: this VM asked {args[0]} to delete it: {deleted}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
