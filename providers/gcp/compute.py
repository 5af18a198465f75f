"""Google Compute Engine: Spot (default) or on-demand GPU VMs through google-cloud-compute, over SSH.

Everything a run creates is its own and named ``dqlctl-<run id>``: an ed25519 key (private key
0600 in dqlctl's data dir, public key in the instance's ``ssh-keys`` metadata, project-wide keys
blocked), a firewall rule that opens tcp:22 to the operator's address only and only for the
instance's network tag (with a deny rule for tcp:22 from anywhere just below it, so the default
network's ``default-allow-ssh`` 0.0.0.0/0 rule, priority 65534, never applies), a service account that is granted ``roles/storage.objectAdmin`` on the
run's bucket(s) and nothing else (no service account at all when the run names no bucket), and the
instance, labelled ``dqlctl-run=<id>``, ``dqlctl-owner=<registry id>``, ``dqlctl-user=<user>``
(firewalls and service accounts take no labels: the same words are in their description).
``terminate`` removes all of it (idempotent). The VM's SSH host keys are read from its guest
attributes (``hostkeys/``, written by the guest agent) before the first connection.

Capacity: zones of the region are tried in turn; ``ZONE_RESOURCE_POOL_EXHAUSTED`` and quota
errors (from the insert call or from its long-running operation) fall through to the next zone.
Operations are awaited with ``zoneOperations.wait`` / ``globalOperations.wait`` (server-side
blocking, as Google recommends), not with client-side sleeps.

Credentials are Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS`` or
``gcloud auth application-default login``). The SDK is imported lazily. Endpoints can be set in
``[providers.gcp]`` (``compute_endpoint``, ``iam_endpoint``, ``storage_endpoint``): the tests point
them at a local server that answers the real REST shapes. The SSH half shared with
the other VM clouds (key, wait for sshd, pin its host key, start/follow/collect the job) is
``SshVm`` in providers/vm.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from providers.base import (
    RUN_LABEL,
    RUN_TAG,
    Capability,
    CheckResult,
    Instance,
    LaunchSpec,
    Offer,
    ProviderError,
    Resource,
    cloud_labels,
    core_tags,
    install_hint,
    instance_resource,
    label_value,
)
from providers.vm import DEFAULT_GPU, SshVm, has_tags, parse_gpu, quiet_logger, smallest_for_gpu

TAG = RUN_TAG                # the run's tag as dqlctl's core knows it (Instance.tags)
LABEL = RUN_LABEL            # the same on the cloud (GCE label keys allow no ':')

# --gpu NAME:COUNT -> (machine type, accelerator type or None when the machine type has it built in)
GPU_MACHINES: dict[str, dict[int, tuple[str, str | None]]] = {
    "T4": {1: ("n1-standard-4", "nvidia-tesla-t4"), 2: ("n1-standard-8", "nvidia-tesla-t4"),
           4: ("n1-standard-16", "nvidia-tesla-t4")},
    "V100": {1: ("n1-standard-8", "nvidia-tesla-v100"), 2: ("n1-standard-16", "nvidia-tesla-v100"),
             4: ("n1-standard-32", "nvidia-tesla-v100"), 8: ("n1-standard-64", "nvidia-tesla-v100")},
    "P100": {1: ("n1-standard-8", "nvidia-tesla-p100"), 2: ("n1-standard-16", "nvidia-tesla-p100"),
             4: ("n1-standard-32", "nvidia-tesla-p100")},
    "L4": {1: ("g2-standard-4", None), 2: ("g2-standard-24", None), 4: ("g2-standard-48", None),
           8: ("g2-standard-96", None)},
    "A100": {1: ("a2-highgpu-1g", None), 2: ("a2-highgpu-2g", None), 4: ("a2-highgpu-4g", None),
             8: ("a2-highgpu-8g", None)},
    "H100": {8: ("a3-highgpu-8g", None)},
}
# a Deep Learning VM image with PyTorch and the NVIDIA driver (``--runtime native`` needs torch)
DEFAULT_IMAGE = ("projects/deeplearning-platform-release/global/images/family/"
                 "pytorch-2-7-cu128-ubuntu-2204-nvidia-570")
CAPACITY_CODES = ("ZONE_RESOURCE_POOL_EXHAUSTED", "QUOTA_EXCEEDED", "quotaExceeded",
                  "RESOURCE_POOL_EXHAUSTED", "STOCKOUT")
STORAGE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
BUCKET_ROLE = "roles/storage.objectAdmin"
#: the per-run rule that lets the operator in, and the deny rule below it for everyone else
ALLOW_PRIORITY, DENY_PRIORITY = 1000, 1001
NO_CREDENTIALS = ("no Google Cloud credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a "
                  "service-account key file or run `gcloud auth application-default login`")


# -- Google specifics -------------------------------------------------------------------------------


def _compute() -> Any:
    try:
        from google.cloud import compute_v1
    except ImportError:
        raise ProviderError("the GCP provider needs google-cloud-compute: "
                            f"{install_hint('gcp')}") from None
    return compute_v1


def machine_for(gpu: str | None, instance_type: str | None) -> tuple[str, str | None, int]:
    """(machine type, accelerator type or None, accelerator count) for ``--gpu``/``--instance-type``."""
    if instance_type:  # an explicit machine type; attach the GPUs where the type takes them
        name, n = parse_gpu(gpu)
        if name not in GPU_MACHINES:
            smallest_for_gpu(GPU_MACHINES, gpu, "GCE", "machine")  # says which GPUs there are
        table = GPU_MACHINES[name]
        accel = table[min(table)][1] if instance_type.startswith("n1-") and gpu else None
        return instance_type, accel, n if accel else 0
    count, (machine, accel) = smallest_for_gpu(GPU_MACHINES, gpu, "GCE", "machine")
    return machine, accel, count if accel else 0


def buckets_of(*uris: str | None) -> list[str]:
    return sorted({u[len("gs://"):].split("/", 1)[0] for u in uris
                   if u and u.startswith("gs://")})


class GceError(ProviderError):
    """A failed GCE operation; ``codes`` are the operation's error codes."""

    def __init__(self, message: str, codes: list[str]) -> None:
        super().__init__(message)
        self.codes = codes


def _codes(exc: BaseException) -> list[str]:
    """Error codes/reasons of a GCE failure (an operation error or an HTTP error's reasons)."""
    if isinstance(exc, GceError):
        return exc.codes
    out = []
    for err in getattr(exc, "errors", None) or []:
        if isinstance(err, dict):
            out.append(str(err.get("reason") or err.get("code") or ""))
        else:
            out.append(str(getattr(err, "code", "") or getattr(err, "reason", "")))
    text = str(exc)
    out += [c for c in CAPACITY_CODES if c in text]
    return [c for c in out if c]


def _is_capacity(exc: BaseException) -> bool:
    return any(c.startswith(CAPACITY_CODES) for c in _codes(exc))


def _not_found(exc: BaseException) -> bool:
    return type(exc).__name__ == "NotFound" or getattr(exc, "code", None) == 404


def owner_words(tags: dict[str, str]) -> str:
    """dqlctl's tags as ``dqlctl-run=ID dqlctl-owner=ID ...`` for a description (firewalls and
    service accounts take no labels)."""
    return " ".join(f"{k}={label_value(v)}" for k, v in cloud_labels(tags).items())


def tags_in(description: str) -> dict[str, str]:
    """The labels ``owner_words`` wrote into a description."""
    import re

    return dict(re.findall(r"\b(dqlctl-[a-z]+)=([a-z0-9_-]+)", description or ""))


class GcpProvider(SshVm):
    name = "gcp"
    capabilities = frozenset({Capability.SPOT, Capability.GPU, Capability.SSH,
                              Capability.CONTAINER, Capability.PRICES})

    def __init__(self, home: str | os.PathLike[str] | None = None, project: str | None = None,
                 region: str = "us-central1", zones: list[str] | None = None,
                 image: str | None = None, network: str = "global/networks/default",
                 compute_endpoint: str | None = None, iam_endpoint: str | None = None,
                 storage_endpoint: str | None = None, ssh_host_override: str | None = None,
                 ssh_user: str = "dqlctl", remote_root: str = "dqlctl",
                 remote_python: str = "python3", ssh_cidr: str | None = None,
                 ready_timeout: float = 600.0, poll_interval: float = 2.0,
                 boot_disk_gb: int = 100, operation_timeout: float = 600.0,
                 host_key_wait: float = 120.0) -> None:
        self.home = Path(home) if home else Path.home() / ".local/share/dqlctl"
        self.project = project
        self.region = region
        self.zones = list(zones) if zones else None
        self.image = image
        self.network = network
        self.compute_endpoint = compute_endpoint
        self.iam_endpoint = (iam_endpoint or "https://iam.googleapis.com").rstrip("/")
        self.storage_endpoint = (storage_endpoint or "https://storage.googleapis.com").rstrip("/")
        self.ssh_host_override = ssh_host_override
        self.ssh_user = ssh_user
        self.remote_root = remote_root
        self.remote_python = remote_python
        self.ssh_cidr = ssh_cidr
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self.boot_disk_gb = boot_disk_gb
        self.operation_timeout = operation_timeout
        self.host_key_wait = host_key_wait
        self._auth: tuple[Any, str] | None = None
        self._clients: dict[str, Any] = {}

    # -- credentials and clients -------------------------------------------------------------------

    def _credentials(self) -> tuple[Any, str]:
        """Application Default Credentials and the project; ProviderError naming what to set."""
        if self._auth is None:
            _compute()
            import google.auth
            from google.auth.exceptions import DefaultCredentialsError

            try:
                with quiet_logger("google.auth"):
                    creds, project = google.auth.default(scopes=[CLOUD_PLATFORM])
            except DefaultCredentialsError:
                raise ProviderError(NO_CREDENTIALS) from None
            project = self.project or os.environ.get("GOOGLE_CLOUD_PROJECT") or project
            if not project:
                raise ProviderError("no Google Cloud project: set GOOGLE_CLOUD_PROJECT "
                                    "(or `project` under [providers.gcp] in config.toml)")
            self._auth = (creds, project)
        return self._auth

    @property
    def project_id(self) -> str:
        return self._credentials()[1]

    def _client(self, kind: str) -> Any:
        """A compute REST client (``Instances``, ``ZoneOperations``, ...), built once."""
        if kind not in self._clients:
            compute_v1 = _compute()
            creds, _ = self._credentials()
            options = None
            if self.compute_endpoint:
                from google.api_core.client_options import ClientOptions

                options = ClientOptions(api_endpoint=self.compute_endpoint)
            self._clients[kind] = getattr(compute_v1, f"{kind}Client")(
                credentials=creds, transport="rest", client_options=options)
        return self._clients[kind]

    def _session(self) -> Any:
        """An authorised HTTP session for the IAM service-account calls (no SDK client for them
        is a dependency of dqlctl)."""
        if "session" not in self._clients:
            from google.auth.transport.requests import AuthorizedSession

            self._clients["session"] = AuthorizedSession(self._credentials()[0])
        return self._clients["session"]

    def _rest(self, method: str, url: str, ok_missing: bool = False,
              **kwargs: Any) -> dict[str, Any] | None:
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

    # -- operations -----------------------------------------------------------------------------------

    def _wait(self, op: Any, zone: str | None = None) -> None:
        """Block until a zone (or global) operation is DONE; GceError if it failed."""
        compute_v1 = _compute()
        done = compute_v1.Operation.Status.DONE
        deadline = time.monotonic() + self.operation_timeout
        name = op.name
        while op.status != done:
            if time.monotonic() > deadline:
                raise ProviderError(f"GCE operation {name} not done after "
                                    f"{self.operation_timeout:.0f} s")
            if zone:
                op = self._client("ZoneOperations").wait(project=self.project_id, zone=zone,
                                                         operation=name)
            else:
                op = self._client("GlobalOperations").wait(project=self.project_id,
                                                           operation=name)
        errors = list(op.error.errors) if op.error else []
        if errors:
            codes = [e.code for e in errors]
            raise GceError(f"{codes[0]}: {errors[0].message}", codes)

    def _zones(self, region: str) -> list[str]:
        if self.zones:
            return list(self.zones)
        if region.count("-") == 2:  # a zone was named: only that one
            return [region]
        raw = self._client("Regions").get(project=self.project_id, region=region)
        return sorted(z.rsplit("/", 1)[-1] for z in raw.zones)

    # -- verbs -------------------------------------------------------------------------------------

    def check(self) -> CheckResult:
        def probe() -> str:
            creds, project = self._credentials()
            from google.auth.transport.requests import Request

            creds.refresh(Request())
            return f"project {project}"

        return self._check("google-cloud-compute", _compute, probe,
                           "gcloud auth application-default login", "gcp")

    def offers(self, spec: LaunchSpec) -> list[Offer]:
        machine, _, count = machine_for(spec.gpu, spec.instance_type)
        gpu, asked = parse_gpu(spec.gpu)
        return [Offer(self.name, spec.region or self.region, machine, gpu, count or asked, 0,
                      0.0, spec.spot, None)]

    @staticmethod
    def _no_price_cap(spec: LaunchSpec) -> None:
        if spec.max_price is not None:
            raise ProviderError("GCE Spot VMs have no price cap (Google sets the Spot price); "
                                "drop --max-price, or use --on-demand")

    def plan(self, spec: LaunchSpec) -> dict[str, Any]:
        """What launch would create, without creating anything (``--dry-run``)."""
        self._no_price_cap(spec)
        machine, accel, count = machine_for(spec.gpu, spec.instance_type)
        buckets = buckets_of(spec.job.results_dir, spec.job.data_file)
        cidr = spec.extra.get("ssh_cidr") or self.ssh_cidr or "your address/32"
        return {
            "provider": self.name, "region": spec.region or self.region,
            "instance_type": machine, "accelerators": f"{count} x {accel}" if accel else None,
            "gpu": spec.gpu or DEFAULT_GPU,
            "market": "spot (terminate action DELETE)" if spec.spot else "on-demand",
            "image": spec.extra.get("image_id") or self.image or DEFAULT_IMAGE,
            "firewall": f"dqlctl-{spec.run_id}: tcp 22 from {cidr} (priority "
                        f"{ALLOW_PRIORITY}); dqlctl-{spec.run_id}-deny-ssh: tcp 22 from anywhere "
                        f"else denied (priority {DENY_PRIORITY})",
            "service_account": (f"dqlctl-{spec.run_id}: {BUCKET_ROLE} on {', '.join(buckets)}"
                                if buckets else "none (the run names no bucket)"),
            "ssh_key": f"dqlctl-{spec.run_id} (ed25519, private key kept here, 0600)",
            "labels": owner_words({**spec.tags, TAG: spec.run_id}),
            "runtime": "native" if spec.runtime in ("auto", "native") else spec.runtime,
        }

    def launch(self, spec: LaunchSpec) -> Instance:
        run_id = spec.run_id
        region = spec.region or self.region
        self._no_price_cap(spec)
        machine, accel, count = machine_for(spec.gpu, spec.instance_type)
        created: dict[str, Any] = {"run_id": run_id, "project": self.project_id,
                                   "buckets": buckets_of(spec.job.results_dir,
                                                         spec.job.data_file)}
        try:
            public_key = self._new_key(run_id)
            self._create_firewall(run_id, self._operator_cidr(spec.extra.get("ssh_cidr")),
                                  {**spec.tags, TAG: run_id})
            created["firewall"] = f"dqlctl-{run_id}"
            if created["buckets"]:
                created["service_account"] = self._create_service_account(
                    run_id, created["buckets"], {**spec.tags, TAG: run_id})
            tried: list[str] = []
            for zone in self._zones(region):  # capacity errors fall through to the next zone
                created["zone"] = zone
                body = self._instance_body(spec, zone, machine, accel, count, public_key,
                                           created)
                try:
                    op = self._client("Instances").insert(project=self.project_id, zone=zone,
                                                          instance_resource=body)
                    self._wait(op, zone)
                except Exception as exc:
                    if not _is_capacity(exc):
                        raise
                    tried.append(f"{zone}: {_codes(exc)[0]}")
                    continue
                return Instance(
                    provider=self.name, instance_id=f"dqlctl-{run_id}", state="pending",
                    region=zone.rsplit("-", 1)[0], instance_type=machine, spot=spec.spot,
                    launched_at=time.time(), tags=core_tags({**spec.tags, TAG: run_id}),
                    extra={**created, "image": body.disks[0].initialize_params.source_image,
                           "accelerators": f"{count} x {accel}" if accel else None,
                           "key_path": str(self._key_path(run_id))})
            raise ProviderError(f"no capacity for {machine} in {region} ({'; '.join(tried)}); "
                                "try another --region or --on-demand")
        except BaseException:
            self._cleanup(run_id, created, instance_zone=created.get("zone"))
            raise

    def _instance_body(self, spec: LaunchSpec, zone: str, machine: str, accel: str | None,
                       count: int, public_key: str, created: dict[str, Any]) -> Any:
        compute_v1 = _compute()
        user = self.ssh_user
        image = spec.extra.get("image_id") or self.image or DEFAULT_IMAGE
        labels = {k: label_value(v) for k, v in cloud_labels({**spec.tags,
                                                              TAG: spec.run_id}).items()}
        if spec.spot:  # preempted means deleted: nothing stopped is left to bill for its disk
            scheduling = compute_v1.Scheduling(
                provisioning_model="SPOT", instance_termination_action="DELETE",
                on_host_maintenance="TERMINATE", automatic_restart=False)
        else:
            scheduling = compute_v1.Scheduling(provisioning_model="STANDARD",
                                               on_host_maintenance="TERMINATE",
                                               automatic_restart=True)
        metadata = [compute_v1.Items(key="ssh-keys", value=f"{user}:{public_key} {user}"),
                    compute_v1.Items(key="block-project-ssh-keys", value="true"),
                    compute_v1.Items(key="install-nvidia-driver", value="True"),
                    # the guest agent publishes the host keys there (``hostkeys/``)
                    compute_v1.Items(key="enable-guest-attributes", value="TRUE"),
                    compute_v1.Items(key="dqlctl-buckets", value=",".join(created["buckets"]))]
        body = compute_v1.Instance(
            name=f"dqlctl-{spec.run_id}", description=f"dqlctl run {spec.run_id}",
            machine_type=f"zones/{zone}/machineTypes/{machine}", labels=labels,
            tags=compute_v1.Tags(items=[f"dqlctl-{spec.run_id}"]),
            metadata=compute_v1.Metadata(items=metadata),
            disks=[compute_v1.AttachedDisk(
                boot=True, auto_delete=True, type_="PERSISTENT",
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    source_image=image, disk_size_gb=self.boot_disk_gb, labels=labels))],
            network_interfaces=[compute_v1.NetworkInterface(
                network=self._network(), access_configs=[compute_v1.AccessConfig(
                    name="External NAT", type_="ONE_TO_ONE_NAT")])],
            scheduling=scheduling,
            service_accounts=[compute_v1.ServiceAccount(email=created["service_account"],
                                                        scopes=[STORAGE_SCOPE])]
            if created.get("service_account") else [])
        if accel:
            body.guest_accelerators = [compute_v1.AcceleratorConfig(
                accelerator_type=f"zones/{zone}/acceleratorTypes/{accel}",
                accelerator_count=count)]
        return body

    def _network(self) -> str:
        if self.network.startswith("projects/"):
            return self.network
        return f"projects/{self.project_id}/{self.network}"

    def _create_firewall(self, run_id: str, cidr: str, tags: dict[str, str]) -> None:
        """Two rules for the run's instance (its network tag): tcp:22 allowed from ``cidr``,
        and below it tcp:22 denied from anywhere, above the default network's
        ``default-allow-ssh`` (0.0.0.0/0, priority 65534), which would otherwise let everyone
        try."""
        compute_v1 = _compute()
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
                                tags: dict[str, str]) -> str:
        """A service account for this run alone, allowed objects in the run's bucket(s) only."""
        project = self.project_id
        self._rest("POST", f"{self.iam_endpoint}/v1/projects/{project}/serviceAccounts",
                   json={"accountId": f"dqlctl-{run_id}", "serviceAccount": {
                       "displayName": f"dqlctl run {run_id}",
                       "description": f"dqlctl run {run_id}: {', '.join(buckets)} only "
                                      f"({owner_words(tags)})"}})
        email = self._sa_email(run_id)
        for bucket in buckets:
            self._edit_bucket_policy(bucket, email, grant=True)
        return email

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
            self._clients["storage"] = storage.Client(
                project=project, credentials=creds,
                client_options=ClientOptions(api_endpoint=self.storage_endpoint))
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

    # -- reading instances ----------------------------------------------------------------------------

    def _to_instance(self, raw: Any, zone: str) -> Instance:
        status = {"PROVISIONING": "pending", "STAGING": "pending", "RUNNING": "running",
                  "STOPPING": "stopping", "SUSPENDING": "stopping", "SUSPENDED": "stopped",
                  "STOPPED": "stopped", "TERMINATED": "stopped",
                  "REPAIRING": "pending"}.get(raw.status, "unknown")
        labels = dict(raw.labels)
        tags = core_tags(labels)
        meta = {i.key: i.value for i in raw.metadata.items} if raw.metadata else {}
        nat = next((ac.nat_i_p for nic in raw.network_interfaces
                    for ac in nic.access_configs if ac.nat_i_p), None)
        return Instance(
            self.name, raw.name, status, zone.rsplit("-", 1)[0], raw.machine_type.rsplit("/", 1)[-1],
            raw.scheduling.provisioning_model == "SPOT", nat, tags=tags,
            extra={"zone": zone, "project": self.project_id, "run_id": labels.get(LABEL),
                   "buckets": [b for b in meta.get("dqlctl-buckets", "").split(",") if b]})

    def describe(self, instance: Instance) -> Instance:
        zone = instance.extra.get("zone")
        try:
            raw = self._client("Instances").get(project=self.project_id, zone=zone,
                                                instance=instance.instance_id)
        except Exception as exc:
            if _not_found(exc):
                instance.state = "terminated"
                return instance
            raise
        fresh = self._to_instance(raw, zone)
        instance.state, instance.public_ip = fresh.state, fresh.public_ip
        return instance

    def cloud_host_keys(self, instance: Instance) -> list[str]:
        """The host keys the guest agent published in the instance's guest attributes
        (``hostkeys/``); [] until it has."""
        try:
            raw = self._client("Instances").get_guest_attributes(request={
                "project": self.project_id, "zone": instance.extra.get("zone"),
                "instance": instance.instance_id, "query_path": "hostkeys/"})
        except Exception as exc:
            if _not_found(exc):
                return []
            raise
        return [f"{item.key} {item.value}" for item in raw.query_value.items
                if item.namespace == "hostkeys" and item.value]

    def list_resources(self, tag: dict[str, str | None]) -> list[Resource]:
        """Everything dqlctl creates that carries ``tag``: instances (every zone), firewall
        rules and service accounts (global; their tags are in their description)."""
        labels = {k.replace(":", "-"): v for k, v in tag.items()}
        out = [instance_resource(i) for i in self.list_instances(tag)]
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

    def delete_resource(self, resource: Resource) -> None:
        """Remove one thing ``list_resources`` found; 'not found' is done already. A service
        account leaves the buckets' policies first (where the bucket named it)."""
        if resource.kind == "instance":
            self.terminate(Instance.from_dict(resource.extra["instance"]))
        elif resource.kind == "firewall":
            self._delete_firewall(resource.resource_id)
        elif resource.kind == "service-account":
            import re

            found = re.search(r": (.+?) only \(", resource.extra.get("description", ""))
            for bucket in found.group(1).split(", ") if found else []:
                self._edit_bucket_policy(bucket, resource.resource_id, grant=False)
            self._rest("DELETE", f"{self.iam_endpoint}/v1/projects/{self.project_id}/"
                       f"serviceAccounts/{resource.resource_id}", ok_missing=True)
        else:
            raise ProviderError(f"gcp: no such kind of resource: {resource.kind}")

    def _delete_firewall(self, name: str) -> None:
        try:
            self._wait(self._client("Firewalls").delete(project=self.project_id, firewall=name))
        except Exception as exc:
            if not _not_found(exc):
                raise

    def list_instances(self, tag: dict[str, str]) -> list[Instance]:
        """Instances carrying every label of ``tag`` (a None value matches any value)."""
        labels = {k.replace(":", "-"): v for k, v in tag.items()}
        terms = [f'labels.{k}:*' if v is None else f'labels.{k} = "{v}"'
                 for k, v in labels.items()]
        pager = self._client("Instances").aggregated_list(
            request={"project": self.project_id, "filter": " AND ".join(terms)})
        out = []
        for scope, scoped in pager:
            zone = scope.rsplit("/", 1)[-1]
            for raw in scoped.instances:
                have = dict(raw.labels)
                if all(k in have and (v is None or have[k] == v) for k, v in labels.items()):
                    out.append(self._to_instance(raw, zone))
        return out

    # -- teardown -------------------------------------------------------------------------------------

    def terminate(self, instance: Instance) -> None:
        run_id = instance.tags.get(TAG) or instance.extra.get("run_id")
        zone = instance.extra.get("zone")
        self._delete_instance(instance.instance_id, zone)
        instance.state = "terminated"
        self._cleanup(run_id, instance.extra)

    def _delete_instance(self, name: str, zone: str | None) -> None:
        if not zone:
            return
        try:
            op = self._client("Instances").delete(project=self.project_id, zone=zone,
                                                  instance=name)
            self._wait(op, zone)
        except Exception as exc:
            if not (_not_found(exc) or "notFound" in _codes(exc)
                    or "RESOURCE_NOT_FOUND" in _codes(exc)):
                raise

    def _cleanup(self, run_id: str | None, extra: dict[str, Any],
                 instance_zone: str | None = None) -> None:
        """Delete what the run created besides its instance; each step tolerates 'not found'."""
        if not run_id:
            return
        if instance_zone:  # a launch that failed part-way: the instance may exist
            self._delete_instance(f"dqlctl-{run_id}", instance_zone)
        for name in (f"dqlctl-{run_id}", f"dqlctl-{run_id}-deny-ssh"):
            self._delete_firewall(name)
        buckets = extra.get("buckets") or []
        if buckets:  # a service account exists only for a run that names a bucket
            email = self._sa_email(run_id)
            for bucket in buckets:
                self._edit_bucket_policy(bucket, email, grant=False)
            self._rest("DELETE", f"{self.iam_endpoint}/v1/projects/{self.project_id}/"
                       f"serviceAccounts/{email}", ok_missing=True)
        self._forget_key(run_id)
