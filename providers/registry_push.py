"""Pushing the engine image to a cloud's registry, the part every cloud shares: the local
image's repository name and tag, the container engine's login (the password on stdin, never on
a command line), the tag and push, and the digest the registry answered (podman's
``--digestfile``; docker's RepoDigests). Each cloud's module finds the repository and the
password (providers/aws/images.py: ECR, providers/gcp/images.py: Artifact Registry,
providers/azure/images.py: ACR) and calls ``login`` and ``push`` here.

Standard library only; runs on the operator's machine.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from providers.base import ImagePush, ProviderError
from providers.containers import recorded_digest


class EngineFailed(ProviderError):
    """The local container engine failed (tag or push): the run's own exit code, not 3."""

    exit_code = 1


def image_name(local_ref: str) -> tuple[str, str]:
    """(repository name, tag) of the local image ``local_ref`` (``[localhost/]NAME[:TAG]``): the
    name the image keeps in the cloud's registry, the tag ``latest`` when none is given."""
    from providers.containers import split_reference

    _, name, tag, _ = split_reference(local_ref)
    return name.removeprefix("localhost/"), tag or "latest"


def login(engine: str, registry: str, user: str, password: str) -> None:
    """``<engine> login`` to ``registry``, the password on stdin; ProviderError when refused."""
    proc = subprocess.run([engine, "login", "--username", user, "--password-stdin", registry],
                          input=password.encode(), capture_output=True)
    if proc.returncode != 0:
        raise ProviderError(f"{engine} login to {registry} failed: "
                            f"{proc.stderr.decode(errors='replace').strip()[:200]}")


def push(engine: str, local_ref: str, repository: str, tag: str, provider: str) -> ImagePush:
    """Tag ``local_ref`` as ``repository:tag`` and push it (logged in already); what was pushed,
    with the registry's digest. EngineFailed when the engine fails."""
    pushed = ImagePush(provider, repository, tag)
    with tempfile.TemporaryDirectory(prefix="dqlctl-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        argv = [engine, "push", pushed.reference]
        if engine == "podman":      # the registry's answer itself, not a guess from the store
            argv[2:2] = [f"--digestfile={digest_file}"]
        # the engine's progress goes to stderr: stdout stays for the result (``--json``)
        for step in ([engine, "tag", local_ref, pushed.reference], argv):
            if subprocess.run(step, stdout=2).returncode != 0:
                raise EngineFailed(f"`{' '.join(step[:2])}` failed")
        digest = digest_file.read_text().strip() if digest_file.exists() else None
    return ImagePush(provider, repository, tag,
                     digest or recorded_digest(engine, pushed.reference))
