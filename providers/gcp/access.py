"""Who may reach a run's GCE VM and what the VM may reach: the firewall rules for tcp:22 (the
operator's address allowed, everyone else denied above the default network's open rule) and the
run's own service account (every run has one), holding ``roles/storage.objectAdmin`` on the
run's bucket(s) only, granted through the bucket's IAM policy (google-cloud-storage; the service
accounts themselves through IAM's REST API), ``roles/artifactregistry.reader`` on the Artifact
Registry repository its engine image is pulled from (``--runtime docker``: through that
repository's IAM policy, providers/gcp/images.py), and on its own instance only the custom role
``SELF_DELETE_ROLE_ID`` (``compute.instances.delete``, nothing else), bound through the instance's
IAM policy, so that the VM can delete itself when its run is over (providers/selfdelete.py).
Firewall rules and service accounts are found again by the tags in their description (orphans)
and removed with 'not found' as done; the instance's binding goes with the instance, and the
custom role is the project's, made once and shared by every run. A mixin of ``GcpProvider``: it
uses the provider's clients, project and endpoints.

Why a custom role: of what instance-level IAM accepts, it is the narrowest grant that lets the
VM delete itself. ``roles/compute.instanceAdmin.v1`` on the instance would also let it change
its own metadata, labels (hiding it from ``gc``), machine type and disks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from providers.base import (
    ProviderError,
    Resource,
    cloud_labels,
    core_tags,
    install_hint,
    label_value,
)
from providers.gcp.api import compute_sdk, not_found
from providers.vm import has_tags

BUCKET_ROLE = "roles/storage.objectAdmin"
#: in a service account's description: the image repository it reads (removed with it)
IMAGE_WORD = "pulls"
#: the project's custom role that a run's service account holds on its own instance only
SELF_DELETE_ROLE_ID = "dqlctlSelfDelete"
SELF_DELETE_PERMISSIONS = ["compute.instances.delete"]
#: the per-run rule that lets the operator in, and the deny rule below it for everyone else
ALLOW_PRIORITY, DENY_PRIORITY = 1000, 1001
#: what the access half owns, as ``Resource.kind``
ACCESS_KINDS = ("firewall", "service-account")


def owner_words(tags: dict[str, str]) -> str:
    """dqlctl's tags as ``dqlctl-run=ID dqlctl-owner=ID ...`` for a description (firewalls and
    service accounts take no labels)."""
    return " ".join(f"{k}={label_value(v)}" for k, v in cloud_labels(tags).items())


def tags_in(description: str) -> dict[str, str]:
    """The labels ``owner_words`` wrote into a description."""
    import re

    return dict(re.findall(r"\b(dqlctl-[a-z]+)=([a-z0-9_-]+)", description or ""))


class GceAccess:
    """Firewall rules and the run's service account (see the module's docstring)."""

    name: str
    network: str
    project_id: str
    iam_endpoint: str
    storage_endpoint: str
    artifact_endpoint: str
    _clients: dict[str, Any]

    if TYPE_CHECKING:  # GcpProvider's, declared for the type checker only (never shadowed)
        def _client(self, kind: str) -> Any: ...
        def _wait(self, op: Any, zone: str | None = None) -> None: ...
        def _credentials(self) -> tuple[Any, str]: ...

    def _session(self) -> Any:
        """An authorised HTTP session for the IAM service-account calls (no SDK client for them
        is a dependency of dqlctl)."""
        if "session" not in self._clients:
            from google.auth.transport.requests import AuthorizedSession

            self._clients["session"] = AuthorizedSession(self._credentials()[0])
        return self._clients["session"]

    def _rest(self, method: str, url: str, ok_missing: bool = False,
              **kwargs: Any) -> dict[str, Any] | None:
        """One IAM REST call; ProviderError for an HTTP error (None for a 404 when
        ``ok_missing``)."""
        resp = self._session().request(method, url, timeout=60, **kwargs)
        if resp.status_code == 404 and ok_missing:
            return None
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:200]
            raise ProviderError(f"{method} {url.split('?')[0]}: HTTP {resp.status_code}: "
                                f"{message}")
        return resp.json() if resp.content else {}

    def _network(self) -> str:
        if self.network.startswith("projects/"):
            return self.network
        return f"projects/{self.project_id}/{self.network}"

    def _create_firewall(self, run_id: str, cidr: str, tags: dict[str, str]) -> None:
        """Two rules for the run's instance (its network tag): tcp:22 allowed from ``cidr``,
        and below it tcp:22 denied from anywhere, above the default network's
        ``default-allow-ssh`` (0.0.0.0/0, priority 65534), which would otherwise let everyone
        try."""
        compute_v1 = compute_sdk()
        project = self.project_id
        words = owner_words(tags)
        allow = compute_v1.Firewall(
            name=f"dqlctl-{run_id}", description=f"dqlctl run {run_id}: ssh from operator "
            f"({words})", network=self._network(), direction="INGRESS",
            priority=ALLOW_PRIORITY, source_ranges=[cidr], target_tags=[f"dqlctl-{run_id}"],
            allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])])
        deny = compute_v1.Firewall(
            name=f"dqlctl-{run_id}-deny-ssh", description=f"dqlctl run {run_id}: no ssh from "
            f"anyone else ({words})", network=self._network(), direction="INGRESS",
            priority=DENY_PRIORITY, source_ranges=["0.0.0.0/0"],
            target_tags=[f"dqlctl-{run_id}"],
            denied=[compute_v1.Denied(I_p_protocol="tcp", ports=["22"])])
        ops = [self._client("Firewalls").insert(project=project, firewall_resource=rule)
               for rule in (deny, allow)]
        for op in ops:
            self._wait(op)

    def _sa_email(self, run_id: str) -> str:
        return f"dqlctl-{run_id}@{self.project_id}.iam.gserviceaccount.com"

    def _create_service_account(self, run_id: str, buckets: list[str],
                                tags: dict[str, str], repository: str | None = None) -> str:
        """A service account for this run alone, allowed objects in the run's bucket(s) only
        (none: no storage at all; it may still delete its own instance, see
        ``_let_delete_itself``), and reading the Artifact Registry ``repository`` its engine
        image is pulled from (``projects/P/locations/L/repositories/R``), when there is one."""
        project = self.project_id
        reach = f"{', '.join(buckets)} only" if buckets else "no bucket"
        pulls = f" [{IMAGE_WORD} {repository}]" if repository else ""
        self._rest("POST", f"{self.iam_endpoint}/v1/projects/{project}/serviceAccounts",
                   json={"accountId": f"dqlctl-{run_id}", "serviceAccount": {
                       "displayName": f"dqlctl run {run_id}",
                       "description": f"dqlctl run {run_id}: {reach} ({owner_words(tags)})"
                                      f"{pulls}"}})
        email = self._sa_email(run_id)
        for bucket in buckets:
            self._edit_bucket_policy(bucket, email, grant=True)
        if repository:
            from providers.gcp.images import edit_reader

            edit_reader(self._rest, self.artifact_endpoint, repository, email, grant=True)
        return email

    def _self_delete_role(self) -> str:
        """The project's ``SELF_DELETE_ROLE_ID`` custom role, made (or undeleted) when missing;
        its name (``projects/P/roles/ID``)."""
        base = f"{self.iam_endpoint}/v1/projects/{self.project_id}/roles"
        role = self._rest("GET", f"{base}/{SELF_DELETE_ROLE_ID}", ok_missing=True)
        if role is None:
            role = self._rest("POST", base, json={"roleId": SELF_DELETE_ROLE_ID, "role": {
                "title": "dqlctl: a run's VM deletes itself",
                "description": "held by a dqlctl run's service account on its own instance "
                               "only", "includedPermissions": SELF_DELETE_PERMISSIONS,
                "stage": "GA"}})
        elif role.get("deleted"):
            role = self._rest("POST", f"{base}/{SELF_DELETE_ROLE_ID}:undelete", json={})
        return str((role or {}).get("name") or
                   f"projects/{self.project_id}/roles/{SELF_DELETE_ROLE_ID}")

    def _let_delete_itself(self, zone: str, name: str, email: str) -> None:
        """Bind ``SELF_DELETE_ROLE_ID`` for ``email`` on instance ``name`` alone (its IAM policy,
        empty on a new instance)."""
        compute_v1 = compute_sdk()
        policy = compute_v1.Policy(bindings=[compute_v1.Binding(
            role=self._self_delete_role(), members=[f"serviceAccount:{email}"])])
        self._client("Instances").set_iam_policy(
            project=self.project_id, zone=zone, resource=name,
            zone_set_policy_request_resource=compute_v1.ZoneSetPolicyRequest(policy=policy))

    def _storage(self) -> Any:
        """A google-cloud-storage client on ``storage_endpoint`` (bucket IAM policies)."""
        if "storage" not in self._clients:
            try:
                from google.cloud import storage
            except ImportError:
                raise ProviderError("the GCP provider needs google-cloud-storage: "
                                    f"{install_hint('gcp')}") from None
            from google.api_core.client_options import ClientOptions

            creds, project = self._credentials()
            from providers.gcp.storage import without_span_metadata

            self._clients["storage"] = without_span_metadata(storage.Client(
                project=project, credentials=creds,
                client_options=ClientOptions(api_endpoint=self.storage_endpoint)))
        return self._clients["storage"]

    def _edit_bucket_policy(self, bucket: str, email: str, grant: bool) -> None:
        """Add (or remove) ``email`` as BUCKET_ROLE on ``bucket``: a read-modify-write of the
        bucket's IAM policy (version 3, so conditional bindings of others survive), guarded
        by its etag."""
        from google.api_core import exceptions as gexc

        member = f"serviceAccount:{email}"
        handle = self._storage().bucket(bucket)
        for _ in range(5):
            try:
                policy = handle.get_iam_policy(requested_policy_version=3, timeout=60)
            except gexc.NotFound:
                if grant:
                    raise ProviderError(f"bucket {bucket} not found (granting the run's "
                                        "service account access to it)") from None
                return
            except gexc.GoogleAPICallError as exc:
                raise ProviderError(f"reading the IAM policy of bucket {bucket}: "
                                    f"{exc.message}") from None
            bindings = [b for b in policy.bindings if b.get("members")]
            target = next((b for b in bindings if b.get("role") == BUCKET_ROLE
                           and not b.get("condition")), None)
            if grant:
                if target is None:
                    target = {"role": BUCKET_ROLE, "members": set()}
                    bindings.append(target)
                if member in target["members"]:
                    return
                target["members"] = {*target["members"], member}
            else:
                if not any(member in b["members"] for b in bindings):
                    return
                for b in bindings:
                    b["members"] = {m for m in b["members"] if m != member}
            policy.bindings = [b for b in bindings if b["members"]]
            try:
                handle.set_iam_policy(policy, timeout=60)
            except gexc.PreconditionFailed:  # someone else changed it: read again
                continue
            except gexc.GoogleAPICallError as exc:
                raise ProviderError(f"setting the IAM policy of bucket {bucket}: "
                                    f"{exc.message}") from None
            return
        raise ProviderError(f"the IAM policy of bucket {bucket} kept changing; try again")

    def _delete_firewall(self, name: str) -> None:
        try:
            self._wait(self._client("Firewalls").delete(project=self.project_id, firewall=name))
        except Exception as exc:
            if not not_found(exc):
                raise

    def _delete_service_account(self, email: str, buckets: list[str],
                                repository: str | None = None) -> None:
        """Take ``email`` out of the buckets' and the image repository's policies, then delete
        it ('not found' is done)."""
        for bucket in buckets:
            self._edit_bucket_policy(bucket, email, grant=False)
        if repository:
            from providers.gcp.images import edit_reader

            edit_reader(self._rest, self.artifact_endpoint, repository, email, grant=False)
        self._rest("DELETE", f"{self.iam_endpoint}/v1/projects/{self.project_id}/"
                   f"serviceAccounts/{email}", ok_missing=True)

    # -- found again by their description's tags (orphans), removed -----------------------------

    def _access_resources(self, labels: dict[str, str | None]) -> list[Resource]:
        """The firewall rules and service accounts (global) whose description carries
        ``labels``."""
        out: list[Resource] = []
        for rule in self._client("Firewalls").list(project=self.project_id):
            have = tags_in(rule.description)
            if rule.name.startswith("dqlctl-") and has_tags(have, labels):
                out.append(Resource(self.name, "firewall", rule.name, None, core_tags(have)))
        url = f"{self.iam_endpoint}/v1/projects/{self.project_id}/serviceAccounts"
        token = None
        while True:
            page = self._rest("GET", url, params={"pageToken": token} if token else {}) or {}
            for account in page.get("accounts", []):
                have = tags_in(account.get("description", ""))
                if account.get("email", "").startswith("dqlctl-") and has_tags(have, labels):
                    out.append(Resource(self.name, "service-account", account["email"], None,
                                        core_tags(have),
                                        {"description": account.get("description", "")}))
            token = page.get("nextPageToken")
            if not token:
                return out

    def _delete_access(self, resource: Resource) -> None:
        """Remove one of ``ACCESS_KINDS`` that ``list_resources`` found; 'not found' is done. A
        service account leaves the buckets' policies first (where the bucket named it)."""
        if resource.kind == "firewall":
            self._delete_firewall(resource.resource_id)
        elif resource.kind == "service-account":
            import re

            description = resource.extra.get("description", "")
            found = re.search(r": (.+?) only \(", description)
            pulls = re.search(rf"\[{IMAGE_WORD} (projects/[^\]\s]+)\]", description)
            self._delete_service_account(resource.resource_id,
                                         found.group(1).split(", ") if found else [],
                                         pulls.group(1) if pulls else None)
        else:
            raise ProviderError(f"gcp: no such kind of resource: {resource.kind}")
