"""Container engines on this machine (docker, podman): which answer, which images they hold.

Shared by the local provider (``--runtime docker|podman``) and ``dqlctl image build|push``, so
neither reaches into the other. Standard library only.
"""

from __future__ import annotations

import shutil
import subprocess

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
