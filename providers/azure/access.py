"""Who may reach a run's Azure VM and what the VM may reach: the run's resource group (tagged
with the run, owner and user; it holds all the rest), its network (a security group that lets
tcp:22 in from the operator's address only, a VNet/subnet, a static public IP, a NIC), and the
VM's system-assigned managed identity's role assignments: *Storage Blob Data Contributor* scoped
to each of the run's containers, and *Virtual Machine Contributor* scoped to its own VM only, so
that the VM deletes itself when its run is over (providers/selfdelete.py; a powered-off VM stays
allocated and bills). A built-in role at the VM's own scope: a custom role with the delete alone
would be narrower, but would be one more subscription-wide object to make and keep. Role
assignments live outside the group: they are removed by principal before the group goes. A mixin of ``AzureProvider``: it uses the
provider's clients, subscription and storage account."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from providers.azure.api import code, sdk
from providers.base import RUN_LABEL, LaunchSpec, ProviderError, Resource, core_tags
from providers.vm import has_tags

BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
VM_CONTRIBUTOR = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"    # the VM deletes itself


def containers_of(*uris: str | None) -> list[str]:
    return sorted({u[len("az://"):].split("/", 1)[0] for u in uris
                   if u and u.startswith("az://")})


class AzureAccess:
    """The run's group, network and role assignments (see the module's docstring)."""

    name: str
    storage_account_id: str | None
    poll_interval: float

    if TYPE_CHECKING:  # AzureProvider's, declared for the type checker only (never shadowed)
        @property
        def subscription(self) -> str: ...
        def _client(self, kind: str) -> Any: ...

    def _scopes(self, spec: LaunchSpec) -> list[str]:
        containers = containers_of(spec.job.results_dir, spec.job.data_file)
        if containers and not self.storage_account_id:
            raise ProviderError(
                "the run uses az:// storage: set storage_account_id under [providers.azure] in "
                "config.toml (/subscriptions/.../storageAccounts/NAME) so that the VM's "
                "identity can be limited to the run's container")
        return [f"{self.storage_account_id}/blobServices/default/containers/{c}"
                for c in containers]

    def _create_network(self, name: str, location: str, tags: dict[str, str],
                        cidr: str) -> str:
        """The run's resource group and, in it, its network; returns the NIC's id."""
        from azure.mgmt.network import models as nm
        from azure.mgmt.resource.resources import models as rm

        network = self._client("network")
        self._client("resource").resource_groups.create_or_update(
            name, rm.ResourceGroup(location=location, tags=tags))
        nsg_job = network.network_security_groups.begin_create_or_update(
            name, f"{name}-nsg", nm.NetworkSecurityGroup(
                location=location, tags=tags, security_rules=[nm.SecurityRule(
                    name="ssh-from-operator", protocol="Tcp", access="Allow",
                    direction="Inbound", priority=100, source_address_prefix=cidr,
                    source_port_range="*", destination_address_prefix="*",
                    destination_port_range="22")]))
        ip_job = network.public_ip_addresses.begin_create_or_update(
            name, f"{name}-ip", nm.PublicIPAddress(
                location=location, tags=tags, sku=nm.PublicIPAddressSku(name="Standard"),
                public_ip_allocation_method="Static"))
        nsg = nsg_job.result()
        vnet = network.virtual_networks.begin_create_or_update(
            name, f"{name}-vnet", nm.VirtualNetwork(
                location=location, tags=tags,
                address_space=nm.AddressSpace(address_prefixes=["10.42.0.0/16"]),
                subnets=[nm.Subnet(name="default", address_prefix="10.42.0.0/24",
                                   network_security_group=nm.NetworkSecurityGroup(
                                       id=nsg.id))])).result()
        ip = ip_job.result()
        nic = network.network_interfaces.begin_create_or_update(
            name, f"{name}-nic", nm.NetworkInterface(
                location=location, tags=tags,
                network_security_group=nm.NetworkSecurityGroup(id=nsg.id),
                ip_configurations=[nm.NetworkInterfaceIPConfiguration(
                    name="ipconfig1", subnet=nm.Subnet(id=vnet.subnets[0].id),
                    public_ip_address=nm.PublicIPAddress(id=ip.id))])).result()
        return str(nic.id)

    def _grant(self, run_id: str, principal_id: str, scopes: list[str],
               role_id: str = BLOB_DATA_CONTRIBUTOR) -> None:
        """A built-in role (Storage Blob Data Contributor unless told) for the VM's identity,
        on each of ``scopes`` (the run's containers; its own VM)."""
        from azure.mgmt.authorization import models as am

        auth = self._client("authorization")
        role = (f"/subscriptions/{self.subscription}/providers/Microsoft.Authorization/"
                f"roleDefinitions/{role_id}")
        for scope in scopes:
            name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"dqlctl:{run_id}:{scope}"))
            for attempt in range(20):  # a new identity takes a moment to replicate
                try:
                    auth.role_assignments.create(scope, name, am.RoleAssignmentCreateParameters(
                        role_definition_id=role, principal_id=principal_id,
                        principal_type="ServicePrincipal"))
                    break
                except sdk()["HttpResponseError"] as exc:
                    if code(exc) != "PrincipalNotFound" or attempt == 19:
                        raise ProviderError(f"granting {scope}: {code(exc) or exc}") from None
                    time.sleep(self.poll_interval)

    def _groups(self, labels: dict[str, str | None]) -> list[Resource]:
        """The resource groups dqlctl made that carry ``labels`` (a group left by a launch
        killed before its VM existed too)."""
        out = []
        for group in self._client("resource").resource_groups.list():
            have = dict(group.tags or {})
            if group.name.startswith("dqlctl-") and has_tags(have, labels):
                out.append(Resource(self.name, "resource-group", group.name, group.location,
                                    core_tags(have)))
        return out

    def _remove_access(self, run_id: str, rg: str, principal: str | None) -> None:
        """Remove the role assignments of ``principal`` (the VM's identity, when the VM is
        gone: read from it when ``None``), then the run's group ``rg`` and all in it; refuses a
        group not tagged as this run's; 'not found' is done."""
        found = sdk()["NotFound"]
        if not principal:
            try:
                vm = self._client("compute").virtual_machines.get(rg, f"dqlctl-{run_id}")
                principal = vm.identity.principal_id if vm.identity else None
            except found:
                principal = None
        if principal:  # assignments outlive the identity: remove them by principal
            auth = self._client("authorization")
            for assignment in auth.role_assignments.list_for_subscription(
                    filter=f"principalId eq '{principal}'"):
                try:
                    auth.role_assignments.delete_by_id(assignment.id)
                except found:
                    pass
        groups = self._client("resource").resource_groups
        try:
            group = groups.get(rg)
        except found:
            group = None
        if group is not None:
            if (group.tags or {}).get(RUN_LABEL) != run_id:
                raise ProviderError(f"resource group {rg} is not tagged {RUN_LABEL}={run_id}; "
                                    "left alone")
            try:
                groups.begin_delete(rg).result()
            except found:
                pass
