"""The SSH half every cloud provider shares: a run's key, SSH target, readiness, job start,
follow and results collection (AWS, GCE and Azure differ only in how the VM is made), and the
small helpers their SDK code shares (``quiet_logger``). No cloud package imports another: what
two clouds need lives here or in ``providers.base``."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from providers.base import (
    Capability,
    CheckItem,
    CheckResult,
    Instance,
    LaunchSpec,
    ProviderError,
    SshTarget,
    install_hint,
)

DEFAULT_GPU = "T4:1"
CHECKIP_URL = "https://checkip.amazonaws.com"


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Silence an SDK's logger while it probes for credentials: a failed probe logs warnings
    (to stderr, through logging's last-resort handler) that the one-line error already says."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def parse_gpu(gpu: str | None) -> tuple[str, int]:
    """``--gpu NAME[:COUNT]`` as (NAME in capitals, COUNT); one T4 when not given."""
    name, _, count = (gpu or DEFAULT_GPU).partition(":")
    return name.upper(), int(count or 1)


def smallest_for_gpu(tables: dict[str, dict[int, Any]], gpu: str | None, cloud: str,
                     what: str) -> tuple[int, Any]:
    """(GPU count, machine) of the smallest machine in ``tables[NAME]`` (count -> machine)
    with at least the GPUs ``--gpu`` asks for; ProviderError naming what there is."""
    name, n = parse_gpu(gpu)
    table = tables.get(name)
    if table is None:
        raise ProviderError(f"unknown GPU {name!r} on {cloud} (known: {', '.join(tables)})")
    fits = [c for c in sorted(table) if c >= n]
    if not fits:
        raise ProviderError(f"no {cloud} {what} has {n} x {name} (at most {max(table)})")
    return fits[0], table[fits[0]]


def catalog_regions(provider: str) -> list[str]:
    """The regions the price catalog knows for ``provider``: where dqlctl may create things."""
    from providers.prices.catalog import load_catalog

    return sorted({row.region for row in load_catalog() if row.provider == provider})


def has_tags(have: dict[str, str], tag: dict[str, str | None]) -> bool:
    """Whether ``have`` carries every tag of ``tag`` (a None value matches any value)."""
    return all(k in have and (v is None or have[k] == v) for k, v in tag.items())


class SshVm:
    """Key, SSH target, readiness, job start/follow/collect for a VM reached over SSH.

    A cloud provider subclasses it, sets the attributes below and implements ``describe``; the
    cloud-specific half (machines, firewalls, identities) is the subclass's own.
    """

    home: Path
    ssh_host_override: str | None
    ssh_user: str
    remote_root: str
    remote_python: str
    ssh_cidr: str | None
    ready_timeout: float
    poll_interval: float
    #: how long to wait for the cloud to publish the VM's host keys before trusting the first
    #: key the VM presents (with a warning); a provider setting (``host_key_wait``)
    host_key_wait: float = 120.0
    #: the cloud the VM asks to delete it once its run is over (``providers.selfdelete``), where
    #: a guest shutdown would not end the billing (GCE, Azure); None: the shutdown does (AWS)
    self_delete: str | None = None
    #: the storage scheme the VM's own identity writes (``Capability.DIRECT_RESULTS``): results
    #: under it go straight to the bucket from the VM; any other scheme is collected over SSH
    direct_scheme: str | None = None

    _ready_sessions: dict[str, Any]
    capabilities: frozenset[Capability]

    def describe(self, instance: Instance) -> Instance:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, sdk: str, load_sdk: Any, probe: Any, fix: str, extra: str) -> CheckResult:
        """``check()`` as every cloud does it: its SDK (``load_sdk()`` raises ProviderError
        when missing), then ``probe()`` proves the credentials (returns what they are, e.g.
        "account 123"), and paramiko is there for SSH."""
        name = getattr(self, "name", extra)
        try:
            load_sdk()
        except ProviderError as exc:
            return CheckResult(name, False, [CheckItem(sdk, False, str(exc),
                                                       install_hint(extra))])
        items = [CheckItem(sdk, True, "installed")]
        try:
            items.append(CheckItem("credentials", True, probe()))
        except ProviderError as exc:
            items.append(CheckItem("credentials", False, str(exc), fix))
        except Exception as exc:  # noqa: BLE001 - any SDK failure is a failed check
            items.append(CheckItem("credentials", False, f"{type(exc).__name__}: {exc}", fix))
        try:
            import paramiko  # noqa: F401

            items.append(CheckItem("paramiko", True, "installed"))
        except ImportError:
            items.append(CheckItem("paramiko", False, "missing",
                                   install_hint(extra)))
        return CheckResult(name, all(i.ok for i in items), items)

    def _key_path(self, run_id: str) -> Path:
        return self.home / "keys" / f"dqlctl-{run_id}.pem"

    def _new_key(self, run_id: str) -> str:
        """A fresh ed25519 key for the run: private key 0600 here, the OpenSSH public line back."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        path = self._key_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()

    def _forget_key(self, run_id: str) -> None:
        key = self._key_path(run_id)
        if key.exists():
            key.unlink()

    def _operator_cidr(self, requested: str | None = None) -> str:
        """Who may reach port 22: ``--ssh-cidr``, the provider's ``ssh_cidr`` setting, or this
        machine's public address as a checkip service answers it (checked to be an address:
        anything else, an error page, a captive portal, is refused, never put in a rule)."""
        if requested or self.ssh_cidr:
            return requested or self.ssh_cidr  # type: ignore[return-value]
        import ipaddress
        import urllib.request

        try:
            with urllib.request.urlopen(CHECKIP_URL, timeout=5) as resp:
                answer = resp.read(100).decode(errors="replace").strip()
        except OSError as exc:
            raise ProviderError(f"could not find this machine's public address ({exc}); "
                                "pass --ssh-cidr ADDRESS/32") from None
        try:
            address = ipaddress.ip_address(answer)
        except ValueError:
            raise ProviderError(f"{CHECKIP_URL} answered {answer[:40]!r}, not an IP address; "
                                "pass --ssh-cidr ADDRESS/32") from None
        return f"{address}/{address.max_prefixlen}"

    def cloud_host_keys(self, instance: Instance) -> list[str]:
        """What the cloud says the VM's SSH host keys are (OpenSSH key lines or ``SHA256:``
        fingerprints), read before the first connection; [] while it says nothing (yet).
        None by default: a cloud that can tell overrides it."""
        return []

    def _expected_host_keys(self, instance: Instance, deadline: float) -> list[str]:
        """The cloud's host keys for the instance, waiting up to ``host_key_wait`` for them to
        be published; [] when the cloud offers none in that time."""
        until = min(deadline, time.monotonic() + self.host_key_wait)
        while True:
            keys = self.cloud_host_keys(instance)
            if keys or time.monotonic() >= until:
                return keys
            time.sleep(min(2.0, max(0.2, self.poll_interval)))

    def wait_ready(self, instance: Instance) -> Instance:
        from providers.ssh import wait_for_ssh

        deadline = time.monotonic() + self.ready_timeout
        interval = min(self.poll_interval, 0.25)
        while True:
            instance = self.describe(instance)
            if instance.state == "running" and instance.public_ip:
                break
            if instance.state in ("terminated", "stopped", "stopping"):
                raise ProviderError(f"instance {instance.instance_id} is {instance.state} "
                                    "before it was ready (spot capacity taken back?)")
            if time.monotonic() > deadline:
                raise ProviderError(f"instance {instance.instance_id} not running after "
                                    f"{self.ready_timeout:.0f} s")
            time.sleep(interval)
            interval = min(interval * 2, max(self.poll_interval, 0.25))
        if not instance.extra.get("host_key"):  # none injected at create time: ask the cloud
            keys = self._expected_host_keys(instance, deadline)
            instance.extra["host_keys"] = keys
            if not keys:
                instance.extra.setdefault("warnings", []).append(
                    f"{self.name} published no SSH host key for {instance.instance_id}: the "
                    "first key the VM presented was trusted unverified (trust on first use)")
        session = wait_for_ssh(self.ssh_target(instance),
                               timeout=max(10.0, deadline - time.monotonic()),
                               interval=min(2.0, max(0.2, self.poll_interval)))
        instance.extra["host_key"] = session.host_key  # pinned from here on
        if not hasattr(self, "_ready_sessions"):
            self._ready_sessions = {}
        self._ready_sessions[instance.instance_id] = session  # start_job goes on with it
        return instance

    def ssh_target(self, instance: Instance) -> SshTarget:
        host, port = instance.public_ip or "", 22
        if self.ssh_host_override:
            host, _, p = self.ssh_host_override.rpartition(":")
            port = int(p)
        if not host:
            raise ProviderError(f"instance {instance.instance_id} has no address yet")
        return SshTarget(host, port, self.ssh_user, instance.extra["key_path"],
                         instance.extra.get("host_key"),
                         tuple(instance.extra.get("host_keys") or ()))

    def start_job(self, instance: Instance, spec: LaunchSpec,
                  secrets: dict[str, str] | None = None) -> Instance:
        from providers.remote_job import start_remote_job
        from providers.ssh import SshSession

        runtime = "native" if spec.runtime in ("auto", "native") else spec.runtime
        session = getattr(self, "_ready_sessions", {}).pop(instance.instance_id, None)
        if session is None or not session.connected:
            session = SshSession(self.ssh_target(instance)).connect()
        with session:
            info = start_remote_job(session, spec, root=self.remote_root,
                                    python=self.remote_python, runtime=runtime,
                                    secrets=secrets, image=spec.image,
                                    env=self.vm_env(instance),
                                    direct=self.writes_directly(spec.job.results_dir),
                                    selfcare=self.selfcare(spec),
                                    notices=self.notices(spec),
                                    registry_login=self.registry_login(spec.image,
                                                                       instance.region)
                                    if runtime == "docker" and spec.image else None)
        instance.extra.update(info)
        return instance

    def hand_over(self, instance: Instance, run_id: str) -> bool:
        """A sweep pool's VM whose last engine has ended (its folder is ``extra["workdir"]``):
        hand it to run ``run_id``; False when its supervisor is shutting it down already
        (``providers.remote_job.hand_over``)."""
        from providers.remote_job import hand_over
        from providers.ssh import SshSession

        with SshSession(self.ssh_target(instance)).connect() as session:
            return hand_over(session, instance.extra["workdir"], run_id)

    def registry_login(self, image: str, region: str) -> tuple[str, str | None] | None:
        """(cloud, region) whose identity the VM logs in with to pull ``image``; None: pulled
        as it is (no registry of this provider's, or none built for it yet)."""
        return None

    def writes_directly(self, results_dir: str) -> bool:
        """Whether the VM's engine writes ``results_dir`` itself, with the VM's identity (a
        bucket of this cloud's ``direct_scheme``; the identity was granted that bucket alone)."""
        return Capability.DIRECT_RESULTS in self.capabilities and bool(self.direct_scheme) \
            and results_dir.startswith(f"{self.direct_scheme}://")

    def selfcare(self, spec: LaunchSpec) -> Any:
        """When the VM shuts itself down (``providers.remote_job.SelfCare``): the run's
        ``--keep``/``--idle-minutes``, and this provider's shutdown command and collect grace
        (the ``shutdown_command`` / ``collect_grace_s`` attributes, when a subclass sets them),
        and whether the VM deletes itself (``self_delete``, with ``self_delete_env()``).
        """
        from providers.remote_job import SelfCare

        settings = {k: getattr(self, k) for k in ("shutdown_command", "collect_grace_s")
                    if getattr(self, k, None) is not None}
        if self.self_delete:
            settings.update(self_delete=self.self_delete, env=self.self_delete_env())
        return SelfCare.from_extra(spec.extra, **settings)

    def notices(self, spec: LaunchSpec) -> str | None:
        """The cloud whose preemption notices the VM watches (providers/notices.py): this one,
        for a spot VM on a cloud that gives notices; None otherwise."""
        from providers.notices import CLOUDS

        return self.name if spec.spot and self.name in CLOUDS else None

    def self_delete_env(self) -> dict[str, str]:
        """The endpoints the VM's self-delete reaches (``providers.selfdelete``'s variables);
        none by default: the cloud's own."""
        return {}

    def job(self, instance: Instance, spec: dict[str, Any]) -> Any:
        from providers.jobs import RemoteJobHandle

        return RemoteJobHandle(self.ssh_target(instance), instance.extra["workdir"],
                               instance.extra["events_path"])

    def price_per_hour(self, instance: Instance) -> float | None:
        """The instance's $/h from the price catalog (the live cache first); None if unknown."""
        if not instance.instance_type or not instance.region:
            return None
        from providers.prices.estimate import lookup

        offer = lookup(instance.provider, instance.instance_type, instance.region,
                       spot=instance.spot, home=self.home)
        return offer.price_per_hour if offer is not None else None

    def vm_env(self, instance: Instance) -> dict[str, str]:
        """Settings for the engine's environment on the VM (none by default)."""
        return dict(getattr(self, "extra_vm_env", None) or {})

    def collect(self, instance: Instance, spec: dict[str, Any]) -> None:
        """Copy the VM's results to the run's results place (a local folder or a storage URI);
        nothing to do when the engine wrote to the bucket itself (``direct``)."""
        from providers.ssh import SshSession

        if instance.extra.get("direct"):
            return

        job = spec["job"]
        source = f"{instance.extra['results_dir']}/{job['experiment']}"
        dest = job["results_dir"].rstrip("/") + "/" + job["experiment"]
        from providers.storage import check_key, local_path  # type: ignore[import-not-found]

        with SshSession(self.ssh_target(instance)).connect() as session:
            files = session.list_tree(source)
            for rel, _ in files:    # names from the VM are data: all checked before any write
                if "://" in dest:
                    check_key(rel)
                else:
                    local_path(dest, rel)
            if "://" in dest:  # streamed into the store (atomic from a reader's view)
                from providers.storage import open_store  # type: ignore[import-not-found]

                store, prefix = open_store(dest)
                for rel, size in files:
                    with session.open_reader(f"{source}/{rel}", size) as reader:
                        store.put(f"{prefix.rstrip('/')}/{rel}", reader, size=size)
            else:
                for rel, size in files:  # streamed to a temp name, renamed when complete
                    path = local_path(dest, rel)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    part = path.with_name(f"{path.name}.part")
                    with session.open_reader(f"{source}/{rel}", size) as reader, \
                            open(part, "wb") as out:
                        shutil.copyfileobj(reader, out, 2**20)
                    os.replace(part, path)
            # the results are safe: the VM's supervisor may shut down now rather than after its
            # collect grace (should the terminate that follows fail, the VM still goes); not a
            # sweep pool's VM, which may take the next member (``hand_over``)
            if instance.extra.get("workdir") and not (spec.get("extra") or {}).get("pool"):
                from providers.jobs import mark_collected

                mark_collected(session, instance.extra["workdir"])
