"""Container engines on this machine (docker, podman): which answer, which images they hold.

Shared by the local provider (``--runtime docker|podman``) and ``dqlctl image build|push``, so
neither reaches into the other. Standard library only.
"""

from __future__ import annotations

import shutil
import subprocess

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
