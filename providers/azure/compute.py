"""Azure: Spot (default) or regular GPU VMs through azure-mgmt-compute/-network, reached over SSH.

Each run gets its own resource group ``dqlctl-<run id>`` (tagged ``dqlctl-run=<id>``,
``dqlctl-owner=<registry id>``, ``dqlctl-user=<user>``) holding
everything the run creates: a network security group that lets tcp:22 in from the operator's
address only, a VNet/subnet, a static public IP, a NIC and the VM (``priority=Spot``,
``evictionPolicy=Delete``, ``maxPrice`` -1 = never evicted for price, or ``--max-price``; its
NIC and OS disk are deleted with it). The VM logs in with a per-run ed25519 key only (password
login off). The VM gets a system-assigned managed identity that holds *Virtual Machine
Contributor* on that VM only, with which the VM deletes itself when its run is over
(providers/selfdelete.py: a powered-off Azure VM stays allocated and bills), and, when the run
names an ``az://container/...`` URI, *Storage Blob Data Contributor* scoped to that container
(the storage account is ``[providers.azure] storage_account_id``), and *AcrPull* on the
configured registry when its engine image is pulled from there (``--runtime docker``:
providers/azure/images.py); nothing else.

Results: a run whose ``--results-dir`` is an ``az://`` container has its engine on the VM write
there itself (``Capability.DIRECT_RESULTS``), with the managed identity alone (its token from
IMDS; no account key or connection string goes to the VM), so an evicted Spot VM's run is
relaunched from its last checkpoint (dqlctl/runs/recovery.py). Any other results place is
collected over SSH at the end.

The VM's serial console goes to boot diagnostics (managed storage); its SSH host keys are read
there (cloud-init's ``SSH HOST KEY FINGERPRINTS`` block) before the first connection.

``terminate`` removes the role assignments (they live outside the group), then the group, which
takes every resource in it along; it is idempotent, and it refuses to delete a group that is not
tagged as this run's. Capacity errors (``SkuNotAvailable``, ``AllocationFailed``,
``ZonalAllocationFailed``, quota) fall through to the next availability zone.

Credentials come from ``DefaultAzureCredential`` (``az login``, a service principal in
``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_CLIENT_SECRET``, a managed identity) and the
subscription from ``AZURE_SUBSCRIPTION_ID``. SDKs are imported lazily. ``arm_endpoint`` points
the clients elsewhere (the tests' local ARM server); over plain http the token is attached by a
small policy, since the SDK's own refuses to send one without TLS. ``imds_endpoint`` (a test
hook) is where the VM's self-delete, notice watcher and azure-identity find IMDS; the
self-delete reaches ARM at ``arm_endpoint``. ``vm_env`` (a test hook) adds settings to the
engine's environment on the VM (the tests: the blob stand-in's URL and certificate).

This module is the VM's lifecycle (launch across zones, describe, list, terminate); the run's
group, network and role assignments are ``providers/azure/access.py``, the SDKs and their error
shapes ``providers/azure/api.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from providers.azure.access import VM_CONTRIBUTOR, AzureAccess
from providers.azure.api import ARM_SCOPE, CAPACITY_CODES, code, plain_bearer, sdk
from providers.azure.images import ACR_PULL
from providers.base import (
    RUN_LABEL,
    RUN_TAG,
    Capability,
    CheckResult,
    ImagePush,
    Instance,
    LaunchSpec,
    NoCapacity,
    Offer,
    ProviderError,
    Resource,
    capacity_attempt,
    cloud_labels,
    core_tags,
    instance_resource,
    refusals,
)
from providers.vm import DEFAULT_GPU, SshVm, parse_gpu, quiet_logger, smallest_for_gpu

TAG = RUN_TAG                # the run's tag as dqlctl's core knows it (Instance.tags)
LABEL = RUN_LABEL            # the same on Azure resources (a tag key, kept ':'-free like GCE's)

# --gpu NAME:COUNT -> VM size (the smallest size with that many of that GPU)
GPU_SIZES: dict[str, dict[int, str]] = {
    "T4": {1: "Standard_NC4as_T4_v3", 4: "Standard_NC64as_T4_v3"},
    "V100": {1: "Standard_NC6s_v3", 2: "Standard_NC12s_v3", 4: "Standard_NC24s_v3"},
    "A10": {1: "Standard_NV36ads_A10_v5", 2: "Standard_NV72ads_A10_v5"},
    "A100": {1: "Standard_NC24ads_A100_v4", 2: "Standard_NC48ads_A100_v4",
             4: "Standard_NC96ads_A100_v4", 8: "Standard_ND96asr_v4"},
    "H100": {1: "Standard_NC40ads_H100_v5", 2: "Standard_NC80adis_H100_v5",
             8: "Standard_ND96isr_H100_v5"},
}
DEFAULT_IMAGE = "microsoft-dsvm:ubuntu-2204:2204-gen2:latest"   # Data Science VM (CUDA, PyTorch)
NO_CREDENTIALS = ("no Azure credentials found: run `az login` or set AZURE_CLIENT_ID, "
                  "AZURE_TENANT_ID and AZURE_CLIENT_SECRET")


def vm_size_for(gpu: str | None, instance_type: str | None) -> str:
    if instance_type:
        return instance_type
    return smallest_for_gpu(GPU_SIZES, gpu, "Azure", "VM size")[1]


class AzureProvider(AzureAccess, SshVm):
    name = "azure"
    capabilities = frozenset({Capability.SPOT, Capability.GPU, Capability.SSH,
                              Capability.CONTAINER, Capability.PRICES,
                              Capability.DIRECT_RESULTS,  # its identity: the container
                              Capability.IMAGE_REGISTRY})  # an existing ACR (azure/images.py)
    direct_scheme = "az"
    self_delete = "azure"

    def __init__(self, home: str | os.PathLike[str] | None = None,
                 subscription_id: str | None = None, location: str = "eastus",
                 zones: list[str] | None = None, image: str | None = None,
                 storage_account_id: str | None = None, arm_endpoint: str | None = None,
                 ssh_host_override: str | None = None, ssh_user: str = "azureuser",
                 remote_root: str = "dqlctl", remote_python: str = "python3",
                 ssh_cidr: str | None = None, ready_timeout: float = 600.0,
                 poll_interval: float = 2.0, os_disk_gb: int = 128,
                 host_key_wait: float = 180.0, imds_endpoint: str | None = None,
                 vm_env: dict[str, str] | None = None, registry: str | None = None,
                 registry_id: str | None = None,
                 acr_exchange_endpoint: str | None = None) -> None:
        self.home = Path(home) if home else Path.home() / ".local/share/dqlctl"
        self.extra_vm_env = dict(vm_env or {})  # test hook: the VM's blob endpoint and CA
        # the ACR images go to (providers/azure/images.py): its name or address, its ARM id
        # (what a run's identity is granted AcrPull on), and a stand-in's token exchange
        self.registry = registry
        self.registry_id = registry_id
        self.acr_exchange_endpoint = acr_exchange_endpoint
        self.subscription_id = subscription_id
        self.imds_endpoint = imds_endpoint
        self.location = location
        self.zones = list(zones) if zones is not None else ["1", "2", "3"]
        self.image = image
        self.storage_account_id = storage_account_id
        self.arm_endpoint = arm_endpoint.rstrip("/") if arm_endpoint else None
        self.ssh_host_override = ssh_host_override
        self.ssh_user = ssh_user
        self.remote_root = remote_root
        self.remote_python = remote_python
        self.ssh_cidr = ssh_cidr
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self.os_disk_gb = os_disk_gb
        self.host_key_wait = host_key_wait
        self._credential: Any = None
        self._clients: dict[str, Any] = {}

    # -- credentials and clients -------------------------------------------------------------------

    @property
    def subscription(self) -> str:
        sub = self.subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID")
        if not sub:
            raise ProviderError("no Azure subscription: set AZURE_SUBSCRIPTION_ID (or "
                                "`subscription_id` under [providers.azure] in config.toml)")
        return sub

    def _cred(self) -> Any:
        if self._credential is None:
            sdk()
            from azure.core.exceptions import ClientAuthenticationError
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
            # the chain logs every credential it tried: the one line below says it all
            with quiet_logger("azure.identity"):
                try:
                    credential.get_token(ARM_SCOPE)
                except ClientAuthenticationError:
                    raise ProviderError(NO_CREDENTIALS) from None
            self._credential = credential
        return self._credential

    def _client(self, kind: str) -> Any:
        if kind not in self._clients:
            classes = sdk()
            sub = self.subscription
            cred = self._cred()
            kwargs: dict[str, Any] = {"polling_interval": self.poll_interval}
            if self.arm_endpoint:
                kwargs["base_url"] = self.arm_endpoint
                if self.arm_endpoint.startswith("http://"):
                    kwargs["authentication_policy"] = plain_bearer(cred)
            self._clients[kind] = classes[kind](cred, sub, **kwargs)
        return self._clients[kind]

    # -- verbs -------------------------------------------------------------------------------------

    def push_image(self, local_ref: str, engine: str, region: str | None = None) -> ImagePush:
        """Push the engine image to the configured ACR (``ImageRegistry``; see
        providers/azure/images.py)."""
        from providers.azure.images import exchange_env, login_server, push_to_acr

        server = login_server(self.registry, self.registry_id)
        if not server:
            raise ProviderError("no Azure Container Registry configured: set registry (its "
                                "name) or registry_id under [providers.azure] in config.toml "
                                "(dqlctl does not create one: `az acr create`)",
                                field="registry")
        return push_to_acr(self._cred().get_token(ARM_SCOPE).token, local_ref, engine, server,
                           exchange_env(self.acr_exchange_endpoint), self.name)

    def registry_login(self, image: str, region: str) -> tuple[str, str | None] | None:
        """An image in ACR is pulled with the VM's managed identity (providers/image_pull.py)."""
        from providers.azure.images import in_registry, login_server

        return ("azure", None) if in_registry(
            image, login_server(self.registry, self.registry_id)) else None

    def _pull_scope(self, spec: LaunchSpec) -> str | None:
        """The registry (ARM id) the run's identity is granted AcrPull on: the configured one,
        when the run's engine image is in it (``--runtime docker``). ProviderError, before
        anything is made, for an ACR image the identity could not be let to pull."""
        from providers.azure.images import in_registry, login_server

        server = login_server(self.registry, self.registry_id)
        if spec.runtime != "docker" or not in_registry(spec.image, server):
            return None
        if not self.registry_id or not spec.image or not spec.image.startswith(f"{server}/"):
            raise ProviderError(
                f"the engine image {spec.image} is in an Azure Container Registry: set "
                "registry_id under [providers.azure] in config.toml (/subscriptions/.../"
                "registries/NAME) to that registry's id, so that the VM's identity can be "
                "granted AcrPull on it", field="image")
        return self.registry_id

    def check(self) -> CheckResult:
        def probe() -> str:
            sub = self.subscription
            self._cred()
            return f"subscription {sub}"

        return self._check("azure sdk", sdk, probe, "az login", "azure")

    def offers(self, spec: LaunchSpec) -> list[Offer]:
        size = vm_size_for(spec.gpu, spec.instance_type)
        gpu, count = parse_gpu(spec.gpu)
        return [Offer(self.name, spec.region or self.location, size, gpu, count, 0, 0.0,
                      spec.spot, None)]

    def plan(self, spec: LaunchSpec) -> dict[str, Any]:
        """What launch would create, without creating anything (``--dry-run``)."""
        cidr = spec.extra.get("ssh_cidr") or self.ssh_cidr or "your address/32"
        scopes = self._scopes(spec)
        pulls = self._pull_scope(spec)
        return {
            "provider": self.name, "region": spec.region or self.location,
            "instance_type": vm_size_for(spec.gpu, spec.instance_type),
            "gpu": spec.gpu or DEFAULT_GPU,
            "market": "spot (eviction: Delete)" if spec.spot else "regular",
            "max_price": (spec.max_price or -1) if spec.spot else None,
            "image": spec.extra.get("image_id") or self.image or DEFAULT_IMAGE,
            "resource_group": f"dqlctl-{spec.run_id}: vnet, nsg, public ip, nic, vm",
            "network_security_group": f"tcp 22 from {cidr}",
            "identity": "system-assigned; Virtual Machine Contributor on its own VM (it "
                        "deletes itself)" + (f"; Storage Blob Data Contributor on "
                                             f"{', '.join(s.rsplit('/', 1)[-1] for s in scopes)}"
                                             if scopes else "")
                        + (f"; AcrPull on {pulls.rsplit('/', 1)[-1]}" if pulls else ""),
            "ssh_key": f"dqlctl-{spec.run_id} (ed25519, private key kept here, 0600)",
            "tags": " ".join(f"{k}={v}" for k, v in
                             cloud_labels({**spec.tags, TAG: spec.run_id}).items()),
            "runtime": "native" if spec.runtime in ("auto", "native") else spec.runtime,
        }

    def launch(self, spec: LaunchSpec) -> Instance:
        from azure.mgmt.compute import models as cm

        run_id = spec.run_id
        location = spec.region or self.location
        size = vm_size_for(spec.gpu, spec.instance_type)
        scopes = self._scopes(spec)
        pulls = self._pull_scope(spec)
        compute = self._client("compute")
        name = f"dqlctl-{run_id}"
        tags = cloud_labels({**spec.tags, TAG: run_id})  # run, owner (registry id), user
        created: dict[str, Any] = {"run_id": run_id, "resource_group": name,
                                   "location": location, "subscription": self.subscription}
        try:
            public_key = self._new_key(run_id)
            cidr = self._operator_cidr(spec.extra.get("ssh_cidr"))
            nic_id = self._create_network(name, location, tags, cidr)
            vm_body = self._vm_body(cm, spec, location, size, nic_id, public_key, tags)
            tried: list[dict[str, Any]] = []
            vm = None
            for zone in self.zones or [None]:  # capacity errors fall through to the next zone
                vm_body.zones = [zone] if zone else None
                try:
                    vm = compute.virtual_machines.begin_create_or_update(name, name,
                                                                         vm_body).result()
                    created["zone"] = zone
                    break
                except sdk()["HttpResponseError"] as exc:
                    err = code(exc)
                    if err not in CAPACITY_CODES:
                        raise ProviderError(f"creating VM {name}: {err or exc}") from None
                    tried.append(capacity_attempt(self.name, location, zone, size, err))
                    # a VM whose allocation failed stays behind in state Failed: remove it
                    compute.virtual_machines.begin_delete(name, name).result()
            if vm is None:
                raise NoCapacity(f"no capacity for {size} in {location} ({refusals(tried)})",
                                 tried)
            created["principal_id"] = vm.identity.principal_id
            self._grant(run_id, vm.identity.principal_id, [vm.id], VM_CONTRIBUTOR)
            if scopes:
                self._grant(run_id, vm.identity.principal_id, scopes)
                created["role_scopes"] = scopes
            if pulls:
                self._grant(run_id, vm.identity.principal_id, [pulls], ACR_PULL)
                created["registry_id"] = pulls
            return Instance(
                provider=self.name, instance_id=name, state="pending", region=location,
                instance_type=size, spot=spec.spot, launched_at=time.time(),
                tags=core_tags(tags),
                extra={**created, "key_path": str(self._key_path(run_id)), "attempts": tried,
                       "image": spec.extra.get("image_id") or self.image or DEFAULT_IMAGE})
        except BaseException:
            self._cleanup(run_id, created)
            raise

    def _vm_body(self, cm: Any, spec: LaunchSpec, location: str, size: str, nic_id: str,
                 public_key: str, tags: dict[str, str]) -> Any:
        image = spec.extra.get("image_id") or self.image or DEFAULT_IMAGE
        if image.startswith("/"):
            image_ref = cm.ImageReference(id=image)
        else:
            publisher, offer, sku, version = image.split(":")
            image_ref = cm.ImageReference(publisher=publisher, offer=offer, sku=sku,
                                          version=version)
        user = self.ssh_user
        body = cm.VirtualMachine(
            location=location, tags=tags,
            hardware_profile=cm.HardwareProfile(vm_size=size),
            storage_profile=cm.StorageProfile(
                image_reference=image_ref,
                os_disk=cm.OSDisk(create_option="FromImage", delete_option="Delete",
                                  disk_size_gb=self.os_disk_gb,
                                  managed_disk=cm.ManagedDiskParameters(
                                      storage_account_type="Premium_LRS"))),
            os_profile=cm.OSProfile(
                computer_name=f"dqlctl-{spec.run_id}", admin_username=user,
                linux_configuration=cm.LinuxConfiguration(
                    disable_password_authentication=True,
                    ssh=cm.SshConfiguration(public_keys=[cm.SshPublicKey(
                        path=f"/home/{user}/.ssh/authorized_keys", key_data=public_key)]))),
            # the serial console log, where cloud-init prints the host keys' fingerprints
            diagnostics_profile=cm.DiagnosticsProfile(
                boot_diagnostics=cm.BootDiagnostics(enabled=True)),
            network_profile=cm.NetworkProfile(network_interfaces=[
                # Detach: a VM whose allocation failed is deleted and the next zone reuses the
                # NIC; the run's group takes it away at the end
                cm.NetworkInterfaceReference(id=nic_id, primary=True, delete_option="Detach")]))
        if spec.spot:
            body.priority = "Spot"
            body.eviction_policy = "Delete"
            body.billing_profile = cm.BillingProfile(max_price=spec.max_price or -1)
        body.identity = cm.VirtualMachineIdentity(type="SystemAssigned")
        return body

    def vm_env(self, instance: Instance) -> dict[str, str]:
        """The engine's settings on the VM: the storage account (``storage_account_id``'s name)
        and its credential, the VM's managed identity alone (``AZURE_TOKEN_CREDENTIALS``:
        azure-identity's DefaultAzureCredential then asks IMDS for the token and tries nothing
        else); no key or connection string. ``imds_endpoint`` (a test hook) points
        azure-identity's IMDS client there (its ``AZURE_POD_IDENTITY_AUTHORITY_HOST``)."""
        env = {"AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential"}
        if self.storage_account_id:
            env["AZURE_STORAGE_ACCOUNT"] = self.storage_account_id.rstrip("/").rsplit("/", 1)[-1]
        if self.imds_endpoint:
            from providers.vm_identity import AZURE_IMDS

            env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = self.imds_endpoint
            env[AZURE_IMDS] = self.imds_endpoint      # the image pull's token (vm_identity)
        if self.acr_exchange_endpoint:
            from providers.vm_identity import ACR_EXCHANGE

            env[ACR_EXCHANGE] = self.acr_exchange_endpoint
        return {**env, **self.extra_vm_env}

    def self_delete_env(self) -> dict[str, str]:
        """Where the VM's self-delete finds IMDS and ARM (when not Azure's own: the tests'
        stand-ins)."""
        from providers.selfdelete import AZURE_ARM, AZURE_IMDS

        found = {AZURE_ARM: self.arm_endpoint, AZURE_IMDS: self.imds_endpoint}
        return {k: v for k, v in found.items() if v}

    # -- reading instances ----------------------------------------------------------------------------

    def _state(self, vm: Any) -> str:
        statuses = vm.instance_view.statuses if vm.instance_view else []
        power = next((s.code.split("/", 1)[1] for s in statuses or []
                      if (s.code or "").startswith("PowerState/")), None)
        if power:
            return {"running": "running", "starting": "pending", "stopping": "stopping",
                    "stopped": "stopped", "deallocating": "stopping",
                    "deallocated": "stopped"}.get(power, "unknown")
        return {"Succeeded": "running", "Creating": "pending", "Updating": "pending",
                "Deleting": "terminated", "Failed": "unknown"}.get(
                    vm.provisioning_state or "", "unknown")

    def describe(self, instance: Instance) -> Instance:
        rg = instance.extra.get("resource_group") or instance.instance_id
        try:
            vm = self._client("compute").virtual_machines.get(rg, instance.instance_id,
                                                              expand="instanceView")
        except sdk()["NotFound"]:
            instance.state = "terminated"
            return instance
        instance.state = self._state(vm)
        if instance.state == "running" and not instance.public_ip:
            try:
                ip = self._client("network").public_ip_addresses.get(
                    rg, f"{instance.instance_id}-ip")
                instance.public_ip = ip.ip_address
            except sdk()["NotFound"]:
                pass
        return instance

    def list_instances(self, tag: dict[str, str]) -> list[Instance]:
        """VMs carrying every tag of ``tag`` (a None value matches any value)."""
        wanted = {k.replace(":", "-"): v for k, v in tag.items()}
        out = []
        for vm in self._client("compute").virtual_machines.list_all():
            have = dict(vm.tags or {})
            if not all(k in have and (v is None or have[k] == v) for k, v in wanted.items()):
                continue
            rg = vm.id.split("/")[4]
            out.append(Instance(
                self.name, vm.name, self._state(vm), vm.location, vm.hardware_profile.vm_size,
                vm.priority == "Spot", tags=core_tags(have),
                extra={"resource_group": rg, "run_id": have.get(LABEL),
                       "principal_id": vm.identity.principal_id if vm.identity else None}))
        return out

    def cloud_host_keys(self, instance: Instance) -> list[str]:
        """The host keys cloud-init printed to the VM's serial console, read from boot
        diagnostics; [] until they are there."""
        import urllib.request

        from providers.ssh import host_keys_in_console

        rg = instance.extra.get("resource_group") or instance.instance_id
        try:
            data = self._client("compute").virtual_machines.retrieve_boot_diagnostics_data(
                rg, instance.instance_id, sas_uri_expiration_time_in_minutes=5)
        except sdk()["HttpResponseError"]:
            return []  # not there yet (or boot diagnostics off)
        if not data.serial_console_log_blob_uri:
            return []
        try:
            with urllib.request.urlopen(data.serial_console_log_blob_uri, timeout=30) as resp:
                return host_keys_in_console(resp.read().decode(errors="replace"))
        except OSError:
            return []

    def list_resources(self, tag: dict[str, str | None]) -> list[Resource]:
        """Everything dqlctl creates that carries ``tag``: its VMs and the resource groups
        that hold each run's all (a group left by a launch killed before its VM existed too)."""
        labels = {k.replace(":", "-"): v for k, v in tag.items()}
        return [instance_resource(i) for i in self.list_instances(tag)] + self._groups(labels)

    def delete_resource(self, resource: Resource) -> None:
        """Remove one thing ``list_resources`` found (a VM: its run's group and role
        assignments; a group: it and all in it); 'not found' is done already."""
        if resource.kind == "instance":
            self.terminate(Instance.from_dict(resource.extra["instance"]))
        elif resource.kind == "resource-group":
            self._cleanup(resource.run_id, {"resource_group": resource.resource_id})
        else:
            raise ProviderError(f"azure: no such kind of resource: {resource.kind}")

    # -- teardown -------------------------------------------------------------------------------------

    def terminate(self, instance: Instance) -> None:
        run_id = instance.tags.get(TAG) or instance.extra.get("run_id")
        self._cleanup(run_id, instance.extra)
        instance.state = "terminated"

    def _cleanup(self, run_id: str | None, extra: dict[str, Any]) -> None:
        """Remove the run's role assignments, then its resource group; tolerates 'not found'."""
        if not run_id:
            return
        rg = extra.get("resource_group") or f"dqlctl-{run_id}"
        self._remove_access(run_id, rg, extra.get("principal_id"))
        self._forget_key(run_id)

