"""The engine image on Google Artifact Registry: ``GcpProvider.push_image`` (capability
``IMAGE_REGISTRY``) and what a run's VM needs to pull it.

The image goes to the Docker repository ``REPO`` (``[providers.gcp] registry_repository``,
default ``dqlctl``) in ``LOCATION`` (``--region``, else ``registry_location``, else the
provider's region): ``LOCATION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG``. The repository is
created when missing through Artifact Registry's REST API (``POST v1/projects/P/locations/L/
repositories?repositoryId=R``, a long-running operation awaited here) with the provider's
authorised session (google-auth; no Artifact Registry SDK). The container engine logs in as
``oauth2accesstoken`` with the credentials' access token on stdin, then tags and pushes
(providers/registry_push.py).

A run's VM pulls with its own service account (providers/image_pull.py ``--login gcp``), which
is granted ``roles/artifactregistry.reader`` on that repository alone for the run
(``grant_reader``; taken back when the run's access goes).

``registry`` (``[providers.gcp] registry``): the address the registry is reached at, when not
``LOCATION-docker.pkg.dev`` (a private endpoint's name; the tests' registry stand-in);
``artifact_endpoint``: Artifact Registry's API (``https://artifactregistry.googleapis.com``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from providers.base import ImagePush, ProviderError
from providers.registry_push import image_name, login, push
from providers.vm_identity import GCR_USER

#: ``LOCATION-docker.pkg.dev``: an Artifact Registry Docker host
AR_HOST = re.compile(r"^([a-z0-9-]+)-docker\.pkg\.dev$")
READER_ROLE = "roles/artifactregistry.reader"
DEFAULT_REPOSITORY = "dqlctl"

#: (method, url, json body or None, ok_missing) -> the answer (None: 404 and ok_missing)
Rest = Callable[..., "dict[str, Any] | None"]


def repository_of(image: str, registry: str | None,
                  default_location: str) -> tuple[str, str, str] | None:
    """(project, location, repository) of an image in Artifact Registry (its host names the
    location; the configured ``registry`` address is in ``default_location``); None when
    ``image`` is not there."""
    from providers.containers import split_reference

    host, path, _, _ = split_reference(image)
    if registry and host == registry:
        location = default_location
    else:
        found = AR_HOST.match(host)
        if found is None:
            return None
        location = found.group(1)
    parts = path.split("/")
    if len(parts) < 3:
        return None
    return parts[0], location, parts[1]


def repository_name(project: str, location: str, repository: str) -> str:
    return f"projects/{project}/locations/{location}/repositories/{repository}"


def ensure_repository(rest: Rest, api: str, name: str, description: str,
                      timeout: float = 300.0) -> None:
    """The Docker repository ``name`` (``projects/P/locations/L/repositories/R``), created
    when missing; waits for the creation's long-running operation."""
    if rest("GET", f"{api}/v1/{name}", ok_missing=True) is not None:
        return
    parent, _, repo_id = name.rpartition("/repositories/")
    op = rest("POST", f"{api}/v1/{parent}/repositories", params={"repositoryId": repo_id},
              json={"format": "DOCKER", "description": description}) or {}
    deadline = time.monotonic() + timeout
    while not op.get("done"):
        if time.monotonic() > deadline:
            raise ProviderError(f"creating the Artifact Registry repository {name}: not done "
                                f"after {timeout:.0f} s")
        time.sleep(0.5)
        op = rest("GET", f"{api}/v1/{op['name']}") or {}
    if op.get("error"):
        raise ProviderError(f"creating the Artifact Registry repository {name}: "
                            f"{op['error'].get('message', op['error'])}")


def push_to_artifact_registry(rest: Rest, api: str, token: str, local_ref: str, engine: str,
                              *, project: str, location: str, repository: str,
                              registry: str | None, provider: str = "gcp") -> ImagePush:
    """Push ``local_ref`` with ``engine`` to ``repository`` (created when missing)."""
    image, tag = image_name(local_ref)
    ensure_repository(rest, api, repository_name(project, location, repository),
                      "dqlctl: the engine's container images")
    host = registry or f"{location}-docker.pkg.dev"
    login(engine, host, GCR_USER, token)
    return push(engine, local_ref, f"{host}/{project}/{repository}/{image}", tag, provider)


def edit_reader(rest: Rest, api: str, name: str, email: str, grant: bool) -> None:
    """Add (or remove) ``serviceAccount:email`` as ``READER_ROLE`` on repository ``name``: a
    read-modify-write of its IAM policy, guarded by its etag (a conflict reads again)."""
    member = f"serviceAccount:{email}"
    for _ in range(5):
        policy = rest("GET", f"{api}/v1/{name}:getIamPolicy", ok_missing=not grant,
                      params={"options.requestedPolicyVersion": 3})
        if policy is None:          # the repository is gone: nothing to take back
            return
        bindings = [b for b in policy.get("bindings", []) if b.get("members")]
        target = next((b for b in bindings if b.get("role") == READER_ROLE
                       and not b.get("condition")), None)
        if grant:
            if target is None:
                target = {"role": READER_ROLE, "members": []}
                bindings.append(target)
            if member in target["members"]:
                return
            target["members"] = [*target["members"], member]
        else:
            if not any(member in b["members"] for b in bindings):
                return
            for b in bindings:
                b["members"] = [m for m in b["members"] if m != member]
        body = {**policy, "bindings": [b for b in bindings if b["members"]]}
        try:
            rest("POST", f"{api}/v1/{name}:setIamPolicy", json={"policy": body})
        except ProviderError as exc:
            if "HTTP 409" in str(exc) or "HTTP 412" in str(exc):   # changed meanwhile
                continue
            raise
        return
    raise ProviderError(f"the IAM policy of {name} kept changing; try again")
