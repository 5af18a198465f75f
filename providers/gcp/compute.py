"""Google Compute Engine: Spot (default) or on-demand GPU VMs through google-cloud-compute, over SSH.

Everything a run creates is its own and named ``dqlctl-<run id>``: an ed25519 key (private key
0600 in dqlctl's data dir, public key in the instance's ``ssh-keys`` metadata, project-wide keys
blocked), a firewall rule that opens tcp:22 to the operator's address only and only for the
instance's network tag (with a deny rule for tcp:22 from anywhere just below it, so the default
network's ``default-allow-ssh`` 0.0.0.0/0 rule, priority 65534, never applies), a service
account that is granted ``roles/storage.objectAdmin`` on the run's bucket(s) (none when the run
names no bucket) and, on its own instance only, a custom role with ``compute.instances.delete``
alone, so that the VM deletes itself when its run is over (a guest shutdown would only stop it,
and its boot disk would go on billing; see providers/selfdelete.py), and the instance, labelled ``dqlctl-run=<id>``, ``dqlctl-owner=<registry id>``, ``dqlctl-user=<user>``
(firewalls and service accounts take no labels: the same words are in their description).
``terminate`` removes all of it (idempotent). The VM's SSH host keys are read from its guest
attributes (``hostkeys/``, written by the guest agent) before the first connection.

Results: a run whose ``--results-dir`` is a ``gs://`` bucket has its engine on the VM write
there itself (``Capability.DIRECT_RESULTS``): each checkpoint is uploaded as it is written, so a
preempted Spot VM's run is relaunched from it (dqlctl/runs/recovery.py). The storage SDK's
credentials are the instance's service account, its tokens from the metadata server; no key
leaves the operator's machine. Any other results place is collected over SSH at the end.

Capacity: zones of the region are tried in turn; ``ZONE_RESOURCE_POOL_EXHAUSTED`` and quota
errors (from the insert call or from its long-running operation) fall through to the next zone.
Operations are awaited with ``zoneOperations.wait`` / ``globalOperations.wait`` (server-side
blocking, as Google recommends), not with client-side sleeps.

Credentials are Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS`` or
``gcloud auth application-default login``). The SDK is imported lazily. Endpoints can be set in
``[providers.gcp]`` (``compute_endpoint``, ``iam_endpoint``, ``storage_endpoint``): the tests point
them at a local server that answers the real REST shapes. The SSH half shared with
the other VM clouds (key, wait for sshd, pin its host key, start/follow/collect the job) is
``SshVm`` in providers/vm.py. ``metadata_endpoint`` (a test hook) is where the VM's
self-delete, notice watcher and google-auth find the metadata server; the self-delete reaches
compute at ``compute_endpoint``. ``vm_env`` (a test hook) adds settings to the engine's
environment on the VM (the tests: ``API_ENDPOINT_OVERRIDE``, the storage stand-in).
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
    label_value,
    refusals,
)
from providers.gcp.access import (
    ACCESS_KINDS,
    ALLOW_PRIORITY,
    BUCKET_ROLE,
    DENY_PRIORITY,
    GceAccess,
    owner_words,
)
from providers.gcp.api import GceError, codes, compute_sdk, is_capacity, not_found
from providers.gcp.images import (
    DEFAULT_REPOSITORY,
    READER_ROLE,
    repository_name,
    repository_of,
)
from providers.vm import DEFAULT_GPU, SshVm, parse_gpu, quiet_logger, smallest_for_gpu

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
STORAGE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
#: reading Artifact Registry (a run that pulls its image and names no bucket)
READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"   # the VM deletes itself
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
NO_CREDENTIALS = ("no Google Cloud credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a "
                  "service-account key file or run `gcloud auth application-default login`")


# -- Google specifics -------------------------------------------------------------------------------


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


class GcpProvider(GceAccess, SshVm):
    name = "gcp"
    capabilities = frozenset({Capability.SPOT, Capability.GPU, Capability.SSH,
                              Capability.CONTAINER, Capability.PRICES,
                              Capability.DIRECT_RESULTS,  # its service account: the bucket
                              Capability.IMAGE_REGISTRY})  # Artifact Registry (gcp/images.py)
    direct_scheme = "gs"
    self_delete = "gcp"

    def __init__(self, home: str | os.PathLike[str] | None = None, project: str | None = None,
                 region: str = "us-central1", zones: list[str] | None = None,
                 image: str | None = None, network: str = "global/networks/default",
                 compute_endpoint: str | None = None, iam_endpoint: str | None = None,
                 storage_endpoint: str | None = None, ssh_host_override: str | None = None,
                 ssh_user: str = "dqlctl", remote_root: str = "dqlctl",
                 remote_python: str = "python3", ssh_cidr: str | None = None,
                 ready_timeout: float = 600.0, poll_interval: float = 2.0,
                 boot_disk_gb: int = 100, operation_timeout: float = 600.0,
                 host_key_wait: float = 120.0, metadata_endpoint: str | None = None,
                 vm_env: dict[str, str] | None = None, registry: str | None = None,
                 registry_location: str | None = None,
                 registry_repository: str = DEFAULT_REPOSITORY,
                 artifact_endpoint: str | None = None) -> None:
        self.home = Path(home) if home else Path.home() / ".local/share/dqlctl"
        self.extra_vm_env = dict(vm_env or {})  # test hook: the VM's storage endpoint
        # Artifact Registry (providers/gcp/images.py): the address when not
        # LOCATION-docker.pkg.dev, the location (default: the region), the repository, the API
        self.registry = registry
        self.registry_location = registry_location
        self.registry_repository = registry_repository
        self.artifact_endpoint = (artifact_endpoint
                                  or "https://artifactregistry.googleapis.com").rstrip("/")
        self.project = project
        self.metadata_endpoint = metadata_endpoint
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
            compute_sdk()
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
            compute_v1 = compute_sdk()
            creds, _ = self._credentials()
            options = None
            if self.compute_endpoint:
                from google.api_core.client_options import ClientOptions

                options = ClientOptions(api_endpoint=self.compute_endpoint)
            self._clients[kind] = getattr(compute_v1, f"{kind}Client")(
                credentials=creds, transport="rest", client_options=options)
        return self._clients[kind]

    # -- operations -----------------------------------------------------------------------------------

    def _wait(self, op: Any, zone: str | None = None) -> None:
        """Block until a zone (or global) operation is DONE; GceError if it failed."""
        compute_v1 = compute_sdk()
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

    def push_image(self, local_ref: str, engine: str, region: str | None = None) -> ImagePush:
        """Push the engine image to Artifact Registry (``ImageRegistry``; see
        providers/gcp/images.py)."""
        from google.auth.transport.requests import Request

        from providers.gcp.images import push_to_artifact_registry

        creds, project = self._credentials()
        if not creds.valid:
            creds.refresh(Request())
        return push_to_artifact_registry(
            self._rest, self.artifact_endpoint, str(creds.token), local_ref, engine,
            project=project, location=region or self.registry_location or self.region,
            repository=self.registry_repository, registry=self.registry, provider=self.name)

    def registry_login(self, image: str, region: str) -> tuple[str, str | None] | None:
        """An image in Artifact Registry is pulled with the VM's service account's token
        (providers/image_pull.py)."""
        return ("gcp", None) if self._image_repository(image, region) else None

    def _image_repository(self, image: str | None, region: str) -> str | None:
        """The Artifact Registry repository (``projects/P/locations/L/repositories/R``) a VM
        in ``region`` pulls ``image`` from; None when it is not in Artifact Registry."""
        found = repository_of(image, self.registry, self.registry_location or region) \
            if image else None
        return repository_name(*found) if found else None

    def _pulls_from(self, spec: LaunchSpec) -> str | None:
        """The repository the run's VM pulls its engine image from (``--runtime docker``)."""
        if spec.runtime != "docker":
            return None
        return self._image_repository(spec.image, spec.region or self.region)

    def check(self) -> CheckResult:
        def probe() -> str:
            creds, project = self._credentials()
            from google.auth.transport.requests import Request

            creds.refresh(Request())
            return f"project {project}"

        return self._check("google-cloud-compute", compute_sdk, probe,
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
        pulls = self._pulls_from(spec)
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
            "service_account": f"dqlctl-{spec.run_id}: "
                               + (f"{BUCKET_ROLE} on {', '.join(buckets)}; " if buckets else "")
                               + (f"{READER_ROLE} on {pulls}; " if pulls else "")
                               + "may delete its own instance (nothing else)",
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
            created["image_repository"] = self._pulls_from(spec)
            created["service_account"] = self._create_service_account(
                run_id, created["buckets"], {**spec.tags, TAG: run_id},
                created["image_repository"])
            tried: list[dict[str, Any]] = []
            for zone in self._zones(region):  # capacity errors fall through to the next zone
                created["zone"] = zone
                body = self._instance_body(spec, zone, machine, accel, count, public_key,
                                           created)
                try:
                    op = self._client("Instances").insert(project=self.project_id, zone=zone,
                                                          instance_resource=body)
                    self._wait(op, zone)
                except Exception as exc:
                    if not is_capacity(exc):
                        raise
                    tried.append(capacity_attempt(self.name, zone.rsplit("-", 1)[0], zone,
                                                  machine, codes(exc)[0]))
                    continue
                self._let_delete_itself(zone, body.name, created["service_account"])
                return Instance(
                    provider=self.name, instance_id=f"dqlctl-{run_id}", state="pending",
                    region=zone.rsplit("-", 1)[0], instance_type=machine, spot=spec.spot,
                    launched_at=time.time(), tags=core_tags({**spec.tags, TAG: run_id}),
                    extra={**created, "image": body.disks[0].initialize_params.source_image,
                           "accelerators": f"{count} x {accel}" if accel else None,
                           "key_path": str(self._key_path(run_id)), "attempts": tried})
            raise NoCapacity(f"no capacity for {machine} in {region} ({refusals(tried)})",
                             tried)
        except BaseException:
            self._cleanup(run_id, created, instance_zone=created.get("zone"))
            raise

    def _instance_body(self, spec: LaunchSpec, zone: str, machine: str, accel: str | None,
                       count: int, public_key: str, created: dict[str, Any]) -> Any:
        compute_v1 = compute_sdk()
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
            service_accounts=[compute_v1.ServiceAccount(
                email=created["service_account"],
                scopes=[STORAGE_SCOPE, COMPUTE_SCOPE] if created["buckets"]
                else [READ_SCOPE, COMPUTE_SCOPE] if created.get("image_repository")
                else [COMPUTE_SCOPE])])
        if accel:
            body.guest_accelerators = [compute_v1.AcceleratorConfig(
                accelerator_type=f"zones/{zone}/acceleratorTypes/{accel}",
                accelerator_count=count)]
        return body

    def vm_env(self, instance: Instance) -> dict[str, str]:
        """The engine's settings on the VM: the project for the storage SDK, whose credentials
        are the instance's service account, its tokens from the metadata server (google-auth
        finds it by itself; ``metadata_endpoint``, a test hook, points google-auth there through
        its own ``GCE_METADATA_HOST``/``GCE_METADATA_IP``)."""
        env = {"GOOGLE_CLOUD_PROJECT": str(instance.extra.get("project") or self.project_id)}
        if self.metadata_endpoint:
            from providers.vm_identity import GCE_METADATA

            host = self.metadata_endpoint.split("://", 1)[-1].rstrip("/")
            env.update(GCE_METADATA_HOST=host, GCE_METADATA_IP=host)
            env[GCE_METADATA] = self.metadata_endpoint  # the image pull's token (vm_identity)
        return {**env, **self.extra_vm_env}

    def self_delete_env(self) -> dict[str, str]:
        """Where the VM's self-delete finds the metadata server and compute (when not Google's
        own: the tests' stand-ins)."""
        from providers.selfdelete import GCE_COMPUTE, GCE_METADATA

        found = {GCE_COMPUTE: self.compute_endpoint, GCE_METADATA: self.metadata_endpoint}
        return {k: v for k, v in found.items() if v}

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
            if not_found(exc):
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
            if not_found(exc):
                return []
            raise
        return [f"{item.key} {item.value}" for item in raw.query_value.items
                if item.namespace == "hostkeys" and item.value]

    def list_resources(self, tag: dict[str, str | None]) -> list[Resource]:
        """Everything dqlctl creates that carries ``tag``: instances (every zone), firewall
        rules and service accounts (global; their tags are in their description)."""
        labels = {k.replace(":", "-"): v for k, v in tag.items()}
        out = [instance_resource(i) for i in self.list_instances(tag)]
        return out + self._access_resources(labels)

    def delete_resource(self, resource: Resource) -> None:
        """Remove one thing ``list_resources`` found; 'not found' is done already. A service
        account leaves the buckets' policies first (where the bucket named it)."""
        if resource.kind == "instance":
            self.terminate(Instance.from_dict(resource.extra["instance"]))
        elif resource.kind in ACCESS_KINDS:
            self._delete_access(resource)
        else:
            raise ProviderError(f"gcp: no such kind of resource: {resource.kind}")

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
            if not (not_found(exc) or "notFound" in codes(exc)
                    or "RESOURCE_NOT_FOUND" in codes(exc)):
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
        # every run has a service account (before the VMs deleted themselves, only runs that
        # named a bucket did: 'not found' is done)
        self._delete_service_account(self._sa_email(run_id), extra.get("buckets") or [],
                                     extra.get("image_repository"))
        self._forget_key(run_id)
