"""The engine image on Amazon ECR: ``AwsProvider.push_image`` (capability ``IMAGE_REGISTRY``).

The repository is named after the image (``dqlctl-engine``) and created when missing; the
container engine logs in with a token from ``get_authorization_token`` and pushes
(providers/registry_push.py: the login, push and digest every cloud shares). The ECR client
comes from the provider (boto3, imported lazily there).

``registry`` (``[providers.aws] registry`` in dqlctl's config): the address the registry is
reached at, when not the account's ``ACCOUNT.dkr.ecr.REGION.amazonaws.com`` (an ECR interface
endpoint's or pull-through mirror's name; the tests' registry stand-in). A VM logs in to pull
with its instance role (providers/image_pull.py); ``ecr_region`` says which images those are.
"""

from __future__ import annotations

import re
from typing import Any

from providers.base import ImagePush, ProviderError
from providers.registry_push import image_name, login, push
from providers.vm_identity import IdentityError, ecr_login

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
    repo_name, tag = image_name(local_ref)
    try:
        repo = ecr.describe_repositories(repositoryNames=[repo_name])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        repo = ecr.create_repository(repositoryName=repo_name)["repository"]
    try:
        user, password, endpoint = ecr_login(ecr.get_authorization_token())
    except IdentityError as exc:
        raise ProviderError(str(exc)) from None
    uri = repo["repositoryUri"]
    if registry:       # the same repository, at the address configured for the registry
        uri = f"{registry}/{uri.split('/', 1)[1]}"
    else:
        registry = endpoint
    login(engine, registry, user, password)
    return push(engine, local_ref, uri, tag, provider)
