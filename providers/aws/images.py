"""The engine image on Amazon ECR: ``AwsProvider.push_image`` (capability ``IMAGE_REGISTRY``).

The repository is named after the image (``dqlctl-engine``) and created when missing; the
container engine logs in with a token from ``get_authorization_token``, passed on stdin (never
on a command line), then tags and pushes. The digest is the one the registry answered (podman's
``--digestfile``; docker's RepoDigests). The ECR client comes from the provider (boto3, imported
lazily there).

``registry`` (``[providers.aws] registry`` in dqlctl's config): the address the registry is
reached at, when not the account's ``ACCOUNT.dkr.ecr.REGION.amazonaws.com`` (an ECR interface
endpoint's or pull-through mirror's name; the tests' registry stand-in). A VM logs in to pull
with its instance role (providers/image_pull.py); ``ecr_region`` says which images those are.
"""

from __future__ import annotations

import base64
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from providers.base import ImagePush, ProviderError


class EngineFailed(ProviderError):
    """The local container engine failed (tag or push): the run's own exit code, not 3."""

    exit_code = 1


ECR_HOST = re.compile(r"^\d{12}\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


def ecr_region(image: str, registry: str | None, default: str) -> str | None:
    """The ECR region ``image`` lives in (its host names it; the configured ``registry`` is in
    ``default``); None when ``image`` is not in ECR."""
    from providers.containers import split_reference

    host = split_reference(image)[0]
    if registry and host == registry:
        return default
    found = ECR_HOST.match(host)
    return found.group(1) if found else None


def push_to_ecr(ecr: Any, local_ref: str, engine: str, provider: str = "aws",
                registry: str | None = None) -> ImagePush:
    """Push ``local_ref`` with ``engine`` to the ECR repository named after it."""
    from providers.containers import split_reference

    _, repo_name, tag, _ = split_reference(local_ref)
    repo_name = repo_name.removeprefix("localhost/")
    tag = tag or "latest"
    try:
        repo = ecr.describe_repositories(repositoryNames=[repo_name])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        repo = ecr.create_repository(repositoryName=repo_name)["repository"]
    auth = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(auth["authorizationToken"]).decode().partition(":")
    uri = repo["repositoryUri"]
    if registry:       # the same repository, at the address configured for the registry
        uri = f"{registry}/{uri.split('/', 1)[1]}"
    else:
        registry = auth["proxyEndpoint"].removeprefix("https://")
    login = subprocess.run([engine, "login", "--username", user, "--password-stdin", registry],
                           input=password.encode(), capture_output=True)
    if login.returncode != 0:
        raise ProviderError(f"{engine} login to {registry} failed: "
                            f"{login.stderr.decode().strip()[:200]}")
    pushed = ImagePush(provider, uri, tag)
    with tempfile.TemporaryDirectory(prefix="dqlctl-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        push = [engine, "push", pushed.reference]
        if engine == "podman":      # the registry's answer itself, not a guess from the store
            push[2:2] = [f"--digestfile={digest_file}"]
        # the engine's progress goes to stderr: stdout stays for the result (``--json``)
        for step in ([engine, "tag", local_ref, pushed.reference], push):
            if subprocess.run(step, stdout=2).returncode != 0:
                raise EngineFailed(f"`{' '.join(step[:2])}` failed")
        digest = digest_file.read_text().strip() if digest_file.exists() else None
    return ImagePush(provider, pushed.repository, tag,
                     digest or repo_digest(engine, pushed.reference))


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
