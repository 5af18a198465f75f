"""Container engines (docker, podman): which answer here, what they hold, how the engine's
container is run, and how its image is built.

Shared by the local provider (``--runtime docker|podman``), the VMs' ``--runtime docker``
(providers/remote_job.py, providers/image_pull.py) and ``dqlctl image build|push``, so none
reaches into another. Standard library only (it also runs on the VMs).

How the engine's container runs (``run_argv``), the same on this machine and on a VM:

* ``--init``: a tiny init is PID 1 and passes SIGTERM/SIGINT/SIGUSR1 on to the engine, which
  checkpoints and exits 143 (without it the engine would be PID 1, which the kernel spares the
  default action of every signal it has no handler for). The engine's own stop still comes from
  the supervisor's signal to ``<engine> run``, which proxies it into the container.
* The run's folders are mounted at *the same absolute paths* inside: the data file, the results
  folder (when local) and the work folder on a VM, so every path the engine is given, writes into
  or that dqlctl reads back (events, checkpoints, the staging folder of direct uploads) means the
  same file on both sides.
* ``--user UID:GID`` of whoever starts it (the supervisor adds it): files it writes belong to the
  run's owner, not to the image's user.
* The network: ``host`` on a VM (the instance's identity comes from its metadata service, and a
  run whose results go to a bucket writes there itself), ``none`` here unless the results go to
  a bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from providers.base import CheckItem

CONTAINER_ENGINES = ("docker", "podman")


def container_engine_available(name: str) -> bool:
    """``name`` is installed and its daemon (or service) answers ``info``."""
    if shutil.which(name) is None:
        return False
    try:
        proc = subprocess.run([name, "info"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def image_present(engine: str, image: str) -> bool:
    """The image ``image`` is in ``engine``'s local store."""
    try:
        proc = subprocess.run([engine, "image", "inspect", image], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def container_engine_item() -> CheckItem:
    """``check``'s line about container engines: usable only when a daemon answers ``info``
    (a client binary alone cannot run anything). Optional, so never a failed check."""
    found = [e for e in CONTAINER_ENGINES if shutil.which(e)]
    if not found:
        return CheckItem("container engine (optional)", True, "none; runs use --runtime native")
    answering = [e for e in found if container_engine_available(e)]
    silent = [f"{e}: client found, daemon not answering" for e in found if e not in answering]
    detail = "; ".join([*(f"{e}: daemon answers" for e in answering), *silent])
    if not answering:
        detail += " (start it, or use --runtime native)"
    return CheckItem("container engine (optional)", True, detail)


#: the environment the engine reads (notifications, the clouds' endpoints and credentials): what
#: a container run on this machine is given, by name; a variable naming a file of this machine
#: (``*_FILE``, ``*_BUNDLE``, ``*_PATH``, ``GOOGLE_APPLICATION_CREDENTIALS``) is not: the path
#: means nothing inside the container
ENGINE_ENV_PREFIXES = ("TELEGRAM_", "AWS_", "AZURE_", "GOOGLE_", "STORAGE_EMULATOR_HOST")
HOST_PATH_SUFFIXES = ("_FILE", "_BUNDLE", "_PATH", "_CREDENTIALS", "_DIR")


def container_env(env: dict[str, str]) -> list[str]:
    """The names in ``env`` a container run of the engine is given (``ENGINE_ENV_PREFIXES``)."""
    return sorted(k for k in env
                  if k.startswith(ENGINE_ENV_PREFIXES) and not k.endswith(HOST_PATH_SUFFIXES))


def split_reference(ref: str) -> tuple[str, str, str | None, str | None]:
    """``(registry, repository, tag, digest)`` of an image reference
    (``[REGISTRY/]PATH[:TAG][@sha256:...]``); registry is "" when the first part is not a host
    (no ``.`` or ``:``, and not ``localhost``: Docker's rule)."""
    name, _, digest = ref.partition("@")
    head, slash, rest = name.partition("/")
    registry = head if slash and ("." in head or ":" in head or head == "localhost") else ""
    path = rest if registry else name
    repo, colon, tag = path.rpartition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
    return registry, repo, (tag if colon else None), (digest or None)


def pinned(ref: str, digest: str) -> str:
    """``ref`` pinned to ``digest``: ``REGISTRY/REPO@sha256:...`` (any tag dropped)."""
    registry, repo, _, _ = split_reference(ref)
    return f"{registry + '/' if registry else ''}{repo}@{digest}"


def recorded_digest(engine: str, image: str) -> str | None:
    """The registry digest (``sha256:...``) ``engine`` recorded for ``image``'s repository after
    pushing or pulling it (its RepoDigests); the reference's own digest when it has one; None
    when the engine recorded none."""
    registry, repo, _, digest = split_reference(image)
    if digest:
        return digest
    try:
        proc = subprocess.run([engine, "image", "inspect", "--format", "{{json .RepoDigests}}",
                               image], capture_output=True, text=True, timeout=60)
        entries = json.loads(proc.stdout or "null") if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    want = f"{registry + '/' if registry else ''}{repo}"
    for entry in entries if isinstance(entries, list) else []:
        name, _, found = str(entry).partition("@")
        if name == want and found:
            return found
    return None


def run_argv(engine: str, *, name: str, image: str, engine_args: list[str], data_file: str,
             results_dir: str, mounts: list[str], network: str,
             labels: dict[str, str] | None = None) -> list[str]:
    """``<engine> run ...`` for the engine's container (see the module docstring). ``mounts``:
    host folders mounted at the same path (read-write); the data file's folder is mounted
    read-only. ``--data_file=``/``--results_dir=`` are joined to their values so that a value
    starting with ``-`` is still a value."""
    if image.startswith("-"):
        raise ValueError(f"engine image {image!r} is not an image name")
    argv = [engine, "run", "--rm", "--init", f"--name={name}", f"--network={network}"]
    argv += [f"--label={k}={v}" for k, v in sorted((labels or {}).items())]
    if "://" not in data_file:
        folder = os.path.dirname(os.path.abspath(data_file))
        argv.append(f"--volume={folder}:{folder}:ro")
    for path in dict.fromkeys(mounts):
        argv.append(f"--volume={path}:{path}")
    return [*argv, image, *engine_args, f"--data_file={data_file}",
            f"--results_dir={results_dir}"]


#: what ``dqlctl image build`` puts in the build context (the Dockerfile's COPY lines)
BUILD_CONTEXT = ("Dockerfile", "pyproject.toml", "README.md", "LICENSE", "dql_trading.py",
                 "engine", "providers", "dqlctl", "data")


def build_context(root: Path, dest: Path, wheels: Path | None = None) -> Path:
    """A build context for the Dockerfile at ``dest``: the project's files (no caches), and
    ``wheels/`` holding the ``*.whl`` of ``wheels`` (hard links where the file system allows),
    which makes the build install from them alone (no index: offline)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir(parents=True, exist_ok=True)
    for item in BUILD_CONTEXT:
        src = root / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=ignore)
        else:
            shutil.copy2(src, dest / item)
    out = dest / "wheels"
    out.mkdir()
    for wheel in sorted(wheels.glob("*.whl")) if wheels else []:
        try:
            os.link(wheel, out / wheel.name)
        except OSError:
            shutil.copy2(wheel, out / wheel.name)
    return dest


def image_facts(engine: str, ref: str) -> dict[str, object]:
    """The local image's id (``sha256:...``) and size in bytes, as the engine reports them."""
    proc = subprocess.run([engine, "image", "inspect", "--format", "{{.Id}} {{.Size}}", ref],
                          capture_output=True, text=True, timeout=60)
    image_id, _, size = proc.stdout.strip().partition(" ")
    if proc.returncode != 0 or not image_id:
        return {}
    return {"id": image_id if image_id.startswith("sha256:") else f"sha256:{image_id}",
            "size_bytes": int(size) if size.isdigit() else None}
