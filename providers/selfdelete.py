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
``GCE_COMPUTE``, ``AZURE_IMDS``, ``AZURE_ARM`` name the variables. The calls and the identity's
tokens are providers/vm_identity.py's. Standard library only: it is shipped to the VM with the
supervisor and runs under whatever Python the VM has.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections.abc import Callable

from providers.vm_identity import (
    AZURE_IMDS,
    GCE_METADATA,
    IdentityError,
    azure_token,
    call,
    call_json,
    gce_token,
)

GCE_COMPUTE = "DQLCTL_GCE_COMPUTE_URL"      # default https://compute.googleapis.com
AZURE_ARM = "DQLCTL_AZURE_ARM_URL"          # default https://management.azure.com
ENDPOINT_VARIABLES = (GCE_METADATA, GCE_COMPUTE, AZURE_IMDS, AZURE_ARM)
ARM_VM_API = "2024-07-01"
#: the delete could not be asked for (no identity, no permission, no endpoint)
SelfDeleteError = IdentityError


def _endpoint(variable: str, default: str) -> str:
    return (os.environ.get(variable) or default).rstrip("/")


def delete_gce() -> str:
    """Ask GCE to delete this instance; returns its path (projects/P/zones/Z/instances/N)."""
    meta = _endpoint(GCE_METADATA, "http://metadata.google.internal") + "/computeMetadata/v1"
    flavor = {"Metadata-Flavor": "Google"}

    def text(path: str) -> str:
        return call("GET", f"{meta}/{path}", flavor).decode().strip()

    token = gce_token()
    project = text("project/project-id")
    zone = text("instance/zone").rsplit("/", 1)[-1]       # projects/NUMBER/zones/ZONE
    name = text("instance/name")
    path = f"projects/{project}/zones/{zone}/instances/{name}"
    compute = _endpoint(GCE_COMPUTE, "https://compute.googleapis.com")
    call("DELETE", f"{compute}/compute/v1/{urllib.parse.quote(path)}",
         {"Authorization": f"Bearer {token}"})
    return path


def delete_azure() -> str:
    """Ask ARM to delete this VM; returns its resource id."""
    imds = _endpoint(AZURE_IMDS, "http://169.254.169.254") + "/metadata"
    arm = _endpoint(AZURE_ARM, "https://management.azure.com")
    token = azure_token(arm + "/")
    instance = call_json("GET", f"{imds}/instance?api-version=2021-02-01", {"Metadata": "true"})
    resource_id = (instance.get("compute") or {}).get("resourceId") or ""
    if "/providers/Microsoft.Compute/virtualMachines/" not in resource_id:
        raise SelfDeleteError(f"IMDS gave no VM resource id ({resource_id!r})")
    call("DELETE", f"{arm}{urllib.parse.quote(resource_id)}?api-version={ARM_VM_API}",
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
