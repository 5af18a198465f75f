"""Containers for real, on this machine (LOCAL_CLOUD.md, "Containers without a Docker engine"):
podman with its own configuration, a Debian base image made here, the wheels an offline build
installs from, and a registry v2 server (Debian's ``docker-registry``: distribution 2.8) that
lets in only the credentials ECR's GetAuthorizationToken hands out.

Nothing here is pulled from the internet: the base comes from ``debootstrap`` (Debian's mirror,
as apt uses) and ``podman import``; the wheels from ``pip download`` (the package index pip is
configured with). Both are cached in ``.deps/containers`` so a second session does not redo
them; CI starts from nothing and makes them (about 40 s and 5 s).

* ``podman_env(folder, storage)``: the variables that point podman at its configuration:
  ``CONTAINERS_CONF`` (host network, runc, cgroupfs, file events), ``CONTAINERS_STORAGE_CONF``
  (the kernel's overlay where a test mount shows it works, else vfs), ``CONTAINERS_REGISTRIES_CONF``
  (the local registry is plain HTTP: ``insecure``) and ``REGISTRY_AUTH_FILE`` (whose logins).
  The controller and each VM stand-in get their own storage and auth file, so a VM really
  pulls, with its own login.
* ``docker_shim()``: the VM's ``docker``: podman, as Debian's podman-docker package makes it.
* ``start_registry(folder, users)``: the registry, with bcrypt htpasswd entries for ``users``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from tests import servers

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".deps" / "containers"
BASE_IMAGE = "localhost/debian-py:bookworm"
#: what the engine image installs (the Dockerfile's list), downloaded for the offline build
ENGINE_WHEELS = ["torch==2.13.*", "numpy>=1.26", "pandas>=2.1", "pyarrow>=15", "gymnasium>=1.0",
                 "matplotlib>=3.8", "pyyaml>=6", "boto3>=1.34", "google-cloud-storage>=2.16",
                 "azure-storage-blob>=12.20", "azure-identity>=1.16", "setuptools>=77"]

CONTAINERS_CONF = """[containers]
netns="host"
default_ulimits=["nofile=1024:1024","nproc=4096:4096"]
[engine]
runtime="runc"
cgroup_manager="cgroupfs"
events_logger="file"
"""


def tools_missing() -> list[str]:
    return [t for t in ("podman", "runc", "debootstrap", "docker-registry") if not shutil.which(t)]


def overlay_works(scratch: Path) -> bool:
    """The kernel mounts overlayfs here (vfs copies whole layers: several times slower)."""
    parts = {name: scratch / name for name in ("lower", "upper", "work", "merged")}
    for path in parts.values():
        path.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={parts['lower']},upperdir={parts['upper']},workdir={parts['work']}"
    ok = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(parts["merged"])],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(parts["merged"])], check=False)
    shutil.rmtree(scratch, ignore_errors=True)
    return ok


def podman_env(folder: Path, storage: Path, registry: str | list[str] | None = None,
               volumes: list[str] | None = None) -> dict[str, str]:
    """Configuration files in ``folder`` (see the module docstring); the env pointing at them.
    ``registry``: the plain-HTTP registries (addresses) it may use; ``volumes``: host folders
    every container gets at the same path, read-only (a VM image's own files: a CA bundle)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounts = [f"{v}:{v}:ro" for v in volumes or []]
    (folder / "containers.conf").write_text(CONTAINERS_CONF.replace(
        "[engine]", f"volumes={json.dumps(mounts)}\n[engine]") if mounts else CONTAINERS_CONF)
    driver = "overlay" if overlay_works(folder / "overlay-probe") else "vfs"
    (folder / "storage.conf").write_text(
        f'[storage]\ndriver = "{driver}"\ngraphroot = "{storage}/root"\n'
        f'runroot = "{storage}/run"\n')
    plain = [registry] if isinstance(registry, str) else registry or []
    (folder / "registries.conf").write_text(
        "".join(f'[[registry]]\nlocation = "{r}"\ninsecure = true\n' for r in plain))
    auth = folder / "auth.json"
    auth.write_text("{}")
    auth.chmod(0o600)
    return {"CONTAINERS_CONF": str(folder / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(folder / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(folder / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(auth), "BUILDAH_ISOLATION": "chroot"}


#: the variables ``podman_env`` sets
PODMAN_VARS = ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF",
               "REGISTRY_AUTH_FILE", "BUILDAH_ISOLATION")


def podman(env: dict[str, str], *args: str, check: bool = True,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")
    return proc


def base_image(env: dict[str, str]) -> str:
    """``BASE_IMAGE`` in ``env``'s store: Debian bookworm (minbase) with python3 and venv,
    from debootstrap, imported once (the root file system's tarball is cached)."""
    if podman(env, "image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    tarball = CACHE / "debian-py-bookworm.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        rootfs = CACHE / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase",
                        "--include=python3,python3-venv,ca-certificates", "bookworm",
                        str(rootfs)], check=True, capture_output=True, timeout=900)
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt",
                     "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        partial = tarball.with_suffix(".part")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.replace(tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
    podman(env, "import", "-q", str(tarball), BASE_IMAGE)
    return BASE_IMAGE


def engine_wheels() -> Path:
    """A folder of every wheel the engine image needs (cached)."""
    folder = CACHE / "wheels"
    if not any(folder.glob("torch-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(folder),
                        "--only-binary=:all:", *ENGINE_WHEELS], check=True, timeout=900)
    return folder


_VM_STORE: list[Path] = []


def vm_store() -> Path:
    """The image store every VM stand-in of this test process shares, as VMs started from one
    machine image would: the first VM to pull the engine image fetches every layer, later ones
    only the manifest (still with their own login: the registry checks it). Not the operator's
    store, so a VM never finds an image it did not pull. Removed at the end of the session
    (``remove_vm_store``, from conftest: a pytest-xdist worker runs no ``atexit``)."""
    if not _VM_STORE:
        import tempfile

        _VM_STORE.append(Path(tempfile.mkdtemp(prefix="dqlctl-vm-store-")))
    return _VM_STORE[0]


def remove_vm_store() -> None:
    """Remove this process's VM image store (hundreds of MB of layers), if it made one."""
    while _VM_STORE:
        shutil.rmtree(_VM_STORE.pop(), ignore_errors=True)


def docker_shim() -> str:
    """The VM's ``docker``: podman under that name (Debian's podman-docker does the same)."""
    return '#!/bin/sh\nexec podman "$@"\n'


def htpasswd_line(user: str, password: str) -> str:
    with warnings.catch_warnings():      # crypt is deprecated (3.13 drops it); bcrypt is in libc
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}"


def start_registry(workdir: Path, users: dict[str, str]) -> servers.Server:
    """distribution's registry on 127.0.0.1, on a free port, HTTP, htpasswd auth for
    ``users`` only (``Server.extra["address"]`` is ``127.0.0.1:PORT``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in users.items()))

    def argv(port: int) -> list[str]:
        config = workdir / f"config-{port}.yml"
        config.write_text(json.dumps({   # YAML is a superset of JSON
            "version": 0.1, "log": {"level": "error"},
            "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}},
            "http": {"addr": f"127.0.0.1:{port}"},
            "auth": {"htpasswd": {"realm": "dqlctl-test", "path": str(htpasswd)}}}))
        return ["docker-registry", "serve", str(config)]

    server = servers._launch("registry", argv, "/v2/", workdir)
    server.extra["address"] = f"127.0.0.1:{server.port}"
    return server


#: the tag the e2e tests build the CPU engine image as
ENGINE_TAG = "dqlctl-engine:test"
#: the pytest-xdist group of every file that runs the image (``pytestmark``): one worker runs
#: them all, so the image is built once per session (tests/conftest.py groups the rest by file)
IMAGE_GROUP = "engine-image"
_built: dict[str, Any] = {}


def engine_image(folder: Path) -> dict[str, Any]:
    """``dqlctl image build --cpu`` of the engine image, offline, into the operator's store
    (``CACHE/storage``, whose layers survive sessions), once per test process (every e2e file
    that runs the engine in a container shares it); the build's JSON. ``folder``: where the
    build's podman configuration goes (the first caller's). Two test processes (pytest-xdist's
    workers) build one after the other, under a lock on the cache: the second build finds every
    layer cached, and neither prunes what the other is building."""
    if not _built:
        missing = tools_missing()
        assert not missing, f"missing {missing}: `make system-deps` installs them"
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(CACHE / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _built.update(_build(folder))
    return dict(_built)


def _build(folder: Path) -> dict[str, Any]:
    """The build itself (the base image and the wheels first, cached); its JSON."""
    env = podman_env(folder, CACHE / "storage")
    base = base_image(env)
    wheels = engine_wheels()
    proc = subprocess.run([sys.executable, "-m", "dqlctl", "image", "build", "--cpu",
                           "--engine", "podman", "--base", base, "--wheels", str(wheels),
                           "--tag", ENGINE_TAG, "--json"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the layers earlier builds left untagged go: the cache under .deps keeps one image
    podman(env, "image", "prune", "--force", check=False)
    return json.loads(proc.stdout)
