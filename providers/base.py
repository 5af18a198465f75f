"""Provider verbs and the typed records they exchange (DESIGN.md, "Provider verbs").

Every compute provider implements the same small, fixed set of verbs::

    check() -> CheckResult
    offers(spec) -> list[Offer]
    launch(spec) -> Instance
    wait_ready(instance) -> Instance
    describe(instance) -> Instance
    list_instances(tag) -> list[Instance]
    list_resources(tag) -> list[Resource]   # every kind it creates, every region (orphans)
    delete_resource(resource)      # idempotent
    terminate(instance)            # idempotent
    ssh_target(instance) -> SshTarget

plus the job verbs ``start_job(instance, spec)`` (bootstrap the machine and start the engine
detached; a no-op where ``launch`` already started it) and ``job(instance, spec) -> JobHandle``
(read the engine's log and events from an offset, ask whether it has ended), and the run verbs
``plan(spec) -> dict`` (what ``launch`` would create, for ``--dry-run``),
``price_per_hour(instance) -> float | None`` (what the instance costs) and
``collect(instance, spec)`` (bring the run's results to its results place; a no-op where they
are already there). A provider with the ``IMAGE_REGISTRY`` capability is also an
``ImageRegistry``: ``push_image(local_ref, engine) -> ImagePush`` (``dqlctl image push``).
Provider-specific fields go in
``extra``. What a provider cannot do is declared in ``capabilities``, not discovered by try/except.
Standard library only: this module is on the CLI's fast path.
"""

from __future__ import annotations

import enum
import functools
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class ProviderError(Exception):
    """A provider or credential problem: one line for the operator; exit code 3.

    ``field`` names the launch-request field it is about when there is one (``"provider"`` for
    missing credentials, ``"instance_type"``, ``"region"``, ``"data"``), so a form can show it on
    that row."""

    exit_code = 3

    def __init__(self, message: str = "", field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NoCapacity(ProviderError):
    """Every zone tried refused the machine for capacity or quota (``InsufficientInstanceCapacity``,
    ``ZONE_RESOURCE_POOL_EXHAUSTED``, ``SkuNotAvailable`` ...): another region or cloud may have
    it. ``attempts``: one dict per refusal (provider, region, zone, instance_type, code), in the
    order tried. A launch that succeeds after refusals lists them in ``extra["attempts"]``."""

    def __init__(self, message: str, attempts: list[dict[str, Any]]) -> None:
        super().__init__(message, field="region")
        self.attempts = attempts


def capacity_attempt(provider: str, region: str | None, zone: str | None,
                     instance_type: str, code: str) -> dict[str, Any]:
    """One refusal, as ``NoCapacity.attempts`` and the run's history record it."""
    return {"provider": provider, "region": region, "zone": zone,
            "instance_type": instance_type, "code": code}


def refusals(attempts: list[dict[str, Any]]) -> str:
    """``us-east-1a: InsufficientInstanceCapacity; zone 2: SkuNotAvailable`` for a message."""
    def where(a: dict[str, Any]) -> str:
        zone = str(a.get("zone") or "")
        return f"zone {zone}" if zone.isdigit() else zone or str(a.get("region"))   # Azure: 1-3

    return "; ".join(f"{where(a)}: {a.get('code')}" for a in attempts)


class Capability(enum.StrEnum):
    SPOT = "spot"              # can launch preemptible capacity
    GPU = "gpu"                # has GPU offers
    SSH = "ssh"                # instances are reached over SSH
    LOCAL_JOB = "local_job"    # the job runs on this machine: its files are local paths
    CONTAINER = "container"    # can run the engine's container image
    PRICES = "prices"          # its instance types are in the price catalog (plan quotes them)
    #: the engine on the machine writes results and checkpoints to the run's bucket itself, with
    #: the machine's own identity, so they survive the machine (spot recovery can resume them)
    DIRECT_RESULTS = "direct_results"
    #: has a container registry the engine image can be pushed to (it is an ``ImageRegistry``)
    IMAGE_REGISTRY = "image_registry"


#: the tag every resource dqlctl creates carries: the run id it belongs to
RUN_TAG = "dqlctl:run"
#: the same tag where a cloud's label keys allow no ':' (GCE labels, Azure resource tags)
RUN_LABEL = "dqlctl-run"
#: the id of the registry (the dqlctl home) that created the resource: who owns it
OWNER_TAG = "dqlctl:owner"
#: the OS user who launched it (for a person reading the cloud console)
USER_TAG = "dqlctl:user"
#: every tag dqlctl puts on what it creates
DQLCTL_TAGS = (RUN_TAG, OWNER_TAG, USER_TAG)


def cloud_labels(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` as GCE labels / Azure tags: ':' in keys becomes '-'."""
    return {k.replace(":", "-"): v for k, v in tags.items()}


def core_tags(labels: dict[str, str]) -> dict[str, str]:
    """dqlctl's own tags out of a cloud's labels or tags (either spelling of the keys)."""
    return {key: labels.get(key, labels.get(key.replace(":", "-")))  # type: ignore[misc]
            for key in DQLCTL_TAGS if key in labels or key.replace(":", "-") in labels}


def label_value(text: str) -> str:
    """``text`` as a GCE label value (lowercase letters, digits, '_' and '-', 63 at most)."""
    import re

    return re.sub(r"[^a-z0-9_-]", "_", text.lower())[:63]


@dataclass(frozen=True)
class JobSpec:
    """What to run: the engine's command and flags, where its data is and where it writes.

    ``engine_args`` are the engine's own arguments without ``--data_file`` and ``--results_dir``
    (e.g. ``["full-workflow", "--agent_type", "custom", "--episodes", "20", ...]``); each provider
    adds those two for its machine (a local path, a path mounted into a container, a URI).
    """

    engine_args: list[str]
    data_file: str                          # path or storage URI of the market data
    results_dir: str                        # path or storage URI where the engine writes
    experiment: str                         # results_dir/<experiment>/ holds events.jsonl
    env: dict[str, str] = field(default_factory=dict)   # never secrets: those go in files


@dataclass(frozen=True)
class LaunchSpec:
    run_id: str
    name: str
    job: JobSpec
    region: str | None = None
    instance_type: str | None = None
    gpu: str | None = None                  # e.g. "T4:1"
    spot: bool = True
    max_price: float | None = None
    image: str | None = None
    runtime: str = "native"                 # native | docker | podman
    tags: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None              # where the provider keeps this run's files
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Instance:
    provider: str
    instance_id: str
    state: str                              # pending | running | stopped | terminated | unknown
    region: str | None = None
    instance_type: str | None = None
    spot: bool = False
    public_ip: str | None = None
    launched_at: float | None = None
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instance:
        return cls(**data)


@dataclass(frozen=True)
class Offer:
    provider: str
    region: str
    instance_type: str
    gpu: str | None
    gpu_count: int
    vcpus: int
    memory_gib: float
    spot: bool
    price_per_hour: float | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    username: str
    key_path: str
    host_key: str | None = None            # "ssh-ed25519 AAAA..." once pinned
    #: what the cloud says the VM's host keys are, before the first connection: OpenSSH key
    #: lines ("ssh-ed25519 AAAA...") or fingerprints ("SHA256:..."); the first connection must
    #: present one of them. Empty: the cloud offers none (first use is trusted, with a warning)
    host_keys: tuple[str, ...] = ()


@dataclass
class Resource:
    """Something dqlctl created in a cloud and tagged (an instance, a security group, a key pair,
    a role, a firewall, a service account, a resource group), as ``list_resources`` finds it.

    ``tags`` are dqlctl's own (``RUN_TAG``, ``OWNER_TAG``, ``USER_TAG``), whatever the cloud
    calls them; ``extra`` is what ``delete_resource`` needs (the instance record, a zone...)."""

    provider: str
    kind: str                               # instance | security-group | key-pair | role ...
    resource_id: str
    region: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str | None:
        return self.tags.get(RUN_TAG)

    @property
    def owner(self) -> str | None:
        return self.tags.get(OWNER_TAG)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def instance_resource(instance: Instance) -> Resource:
    """An instance as a ``Resource`` (kind ``instance``; ``delete_resource`` terminates it)."""
    return Resource(instance.provider, "instance", instance.instance_id, instance.region,
                    {k: v for k, v in instance.tags.items() if k in DQLCTL_TAGS},
                    {"instance": instance.to_dict()})


@dataclass(frozen=True)
class CheckItem:
    name: str
    ok: bool
    detail: str
    fix: str | None = None                 # what to do when not ok


@dataclass(frozen=True)
class CheckResult:
    provider: str
    ok: bool
    items: list[CheckItem]


@dataclass(frozen=True)
class ImagePush:
    """Where ``push_image`` put the engine image: ``repository:tag`` is what a VM pulls."""

    provider: str
    repository: str                         # the registry repository's URI, without a tag
    tag: str
    digest: str | None = None               # "sha256:..." when the container engine reports it

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def pinned(self) -> str:
        """``repository@digest``: what a run records and pulls (the tag may move later)."""
        return f"{self.repository}@{self.digest}" if self.digest else self.reference

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reference": self.reference, "pinned": self.pinned}


@dataclass(frozen=True)
class JobStatus:
    """The state of the job on an instance, as the provider sees it."""

    running: bool
    exit_code: int | None = None            # None while running or when unknown
    reason: str | None = None               # why it ended, when it did not end by itself
    #: the cloud's preemption notice the job stopped on (providers/notices.py ``Notice.fields``)
    notice: dict[str, Any] | None = None


class JobHandle(Protocol):
    """A view of a run's job on its instance: its files read from a byte offset, its state.

    ``name`` is ``"log"`` (the engine's stdout/stderr) or ``"events"`` (events.jsonl). Reads are
    resumable: a follower keeps the offset, so a dropped connection loses and doubles nothing.
    """

    def read(self, name: str, offset: int) -> bytes: ...
    def status(self) -> JobStatus: ...
    def stop(self) -> bool: ...
    def close(self) -> None: ...


@runtime_checkable
class ComputeProvider(Protocol):
    name: str
    capabilities: frozenset[Capability]

    def check(self) -> CheckResult: ...
    def offers(self, spec: LaunchSpec) -> list[Offer]: ...
    def launch(self, spec: LaunchSpec) -> Instance: ...
    def wait_ready(self, instance: Instance) -> Instance: ...
    def describe(self, instance: Instance) -> Instance: ...
    def list_instances(self, tag: dict[str, str]) -> list[Instance]: ...
    def terminate(self, instance: Instance) -> None: ...
    def ssh_target(self, instance: Instance) -> SshTarget: ...
    def start_job(self, instance: Instance, spec: LaunchSpec,
                  secrets: dict[str, str] | None = None) -> Instance: ...
    def job(self, instance: Instance, spec: dict[str, Any]) -> JobHandle: ...
    def plan(self, spec: LaunchSpec) -> dict[str, Any]: ...
    def price_per_hour(self, instance: Instance) -> float | None: ...
    def collect(self, instance: Instance, spec: dict[str, Any]) -> None: ...
    #: everything carrying ``tag`` that dqlctl creates (every kind, every region it may use):
    #: what ``ps --orphans`` / ``gc`` look at; a None value matches any value
    def list_resources(self, tag: dict[str, str | None]) -> list[Resource]: ...
    #: remove one resource ``list_resources`` found; idempotent (gone already is fine)
    def delete_resource(self, resource: Resource) -> None: ...


@runtime_checkable
class ImageRegistry(Protocol):
    """A provider that can hold the engine's container image (capability ``IMAGE_REGISTRY``).

    ``push_image`` pushes the local image ``local_ref`` (``name:tag``) with the container engine
    ``engine`` (``docker`` or ``podman``) to the provider's registry, creating the repository
    when missing and logging the engine in without putting a secret on a command line.
    ProviderError when the registry refuses; its ``exit_code`` is 1 when the container engine
    itself failed.
    """

    def push_image(self, local_ref: str, engine: str,
                   region: str | None = None) -> ImagePush: ...

    def registry_login(self, image: str, region: str) -> tuple[str, str | None] | None:
        """(cloud, region) whose identity a VM in ``region`` logs in with to pull ``image``
        (providers/image_pull.py); None when ``image`` is not in this provider's registry."""
        ...


# -- what to run to install a missing extra ---------------------------------------------------------


@functools.cache
def source_checkout() -> Path | None:
    """The source checkout this code runs from (the folder whose pyproject.toml names the project
    dqlctl, beside the ``providers`` package), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[1]
    try:
        import tomllib

        with open(root / "pyproject.toml", "rb") as fh:
            name = tomllib.load(fh).get("project", {}).get("name")
    except (OSError, ValueError):
        return None
    return root if name == "dqlctl" else None


def install_hint(extra: str) -> str:
    """The command that installs dqlctl's ``extra`` into the Python running dqlctl.

    From a source checkout: an editable install of that checkout with the running environment's
    pip (``<checkout>/.venv/bin/pip install -e '<checkout>[aws]'``), which needs no package
    index to find dqlctl itself. A pipx install (its venv holds ``pipx_metadata.json``): ``pipx install --force 'dqlctl[aws]'`` (pipx
    reinstalls the app's venv with the extra). Otherwise pip of the running environment.
    """
    in_venv = sys.prefix != sys.base_prefix
    pip = shlex.quote(str(Path(sys.prefix) / "bin" / "pip")) if in_venv else "pip"
    checkout = source_checkout()
    if checkout is not None:
        return f"{pip} install -e {shlex.quote(f'{checkout}[{extra}]')}"
    if in_venv and (Path(sys.prefix) / "pipx_metadata.json").exists():  # a pipx-made venv
        return f"pipx install --force 'dqlctl[{extra}]'"
    return f"{pip} install 'dqlctl[{extra}]'"
