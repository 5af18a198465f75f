"""The engine image on Amazon ECR: ``AwsProvider.push_image`` (capability ``IMAGE_REGISTRY``).

The repository is named after the image (``dqlctl-engine``) and created when missing; the
container engine logs in with a token from ``get_authorization_token``, passed on stdin (never
on a command line), then tags and pushes. The digest is read back from the engine when it has
one. The ECR client comes from the provider (boto3, imported lazily there).
"""

from __future__ import annotations

import base64
import subprocess
from typing import Any

from providers.base import ImagePush, ProviderError


class EngineFailed(ProviderError):
    """The local container engine failed (tag or push): the run's own exit code, not 3."""

    exit_code = 1


def push_to_ecr(ecr: Any, local_ref: str, engine: str, provider: str = "aws") -> ImagePush:
    """Push ``local_ref`` with ``engine`` to the ECR repository named after it."""
    repo_name, _, tag = local_ref.partition(":")
    tag = tag or "latest"
    try:
        repo = ecr.describe_repositories(repositoryNames=[repo_name])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        repo = ecr.create_repository(repositoryName=repo_name)["repository"]
    auth = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(auth["authorizationToken"]).decode().partition(":")
    registry = auth["proxyEndpoint"].removeprefix("https://")
    login = subprocess.run([engine, "login", "--username", user, "--password-stdin", registry],
                           input=password.encode(), capture_output=True)
    if login.returncode != 0:
        raise ProviderError(f"{engine} login to {registry} failed: "
                            f"{login.stderr.decode().strip()[:200]}")
    pushed = ImagePush(provider, repo["repositoryUri"], tag)
    # the engine's progress goes to stderr: stdout stays for the result (``--json``)
    for step in ([engine, "tag", local_ref, pushed.reference], [engine, "push", pushed.reference]):
        if subprocess.run(step, stdout=2).returncode != 0:
            raise EngineFailed(f"`{' '.join(step[:2])}` failed")
    return ImagePush(provider, pushed.repository, tag, repo_digest(engine, pushed.reference))


def repo_digest(engine: str, reference: str) -> str | None:
    """The pushed image's registry digest (``sha256:...``) as the engine records it; None."""
    try:
        proc = subprocess.run([engine, "image", "inspect", "--format",
                               "{{range .RepoDigests}}{{println .}}{{end}}", reference],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    repository = reference.rsplit(":", 1)[0]
    for line in proc.stdout.split() if proc.returncode == 0 else []:
        name, _, digest = line.partition("@")
        if name == repository and digest:
            return digest
    return None
