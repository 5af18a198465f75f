"""The engine image on Azure Container Registry: ``AzureProvider.push_image`` (capability
``IMAGE_REGISTRY``) and what a run's VM needs to pull it.

The registry is one that exists already: ``[providers.azure] registry`` (its name, ``NAME``, or
login server, ``NAME.azurecr.io``) and ``registry_id`` (its ARM id, ``/subscriptions/S/
resourceGroups/G/providers/Microsoft.ContainerRegistry/registries/NAME``; either one names it,
the id is what a run's identity is granted *AcrPull* on). dqlctl does not create a registry
(an ACR is a billed, named, subscription-wide resource with a SKU to choose: that is the
operator's decision, made once with ``az acr create``). The image goes to
``NAME.azurecr.io/IMAGE:TAG``; ACR makes the repository on the first push.

Login: the operator's Azure AD token (azure-identity, for Azure Resource Manager) is exchanged
at ``https://NAME.azurecr.io/oauth2/exchange`` for an ACR refresh token, the password of user
``00000000-0000-0000-0000-000000000000`` on the container engine's stdin
(providers/vm_identity.py ``acr_refresh_token``, which the VM uses too); then tag and push
(providers/registry_push.py). A run's VM pulls with its managed identity the same way
(providers/image_pull.py ``--login azure``), granted *AcrPull* on the registry for the run.

``acr_exchange_endpoint`` (a test hook): the exchange's base URL when not the registry's own;
``registry`` may also be an address (``HOST:PORT``, the tests' registry stand-in).
"""

from __future__ import annotations

from typing import Any

from providers.base import ImagePush, ProviderError
from providers.registry_push import image_name, login, push

ACR_SUFFIX = ".azurecr.io"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"    # the built-in AcrPull role


def login_server(registry: str | None, registry_id: str | None) -> str | None:
    """The registry's address: ``registry`` as given when it is one (has a dot or a port),
    ``NAME.azurecr.io`` for a bare name (``registry``'s, else the last part of
    ``registry_id``); None when neither is set."""
    name = registry or (registry_id.rstrip("/").rsplit("/", 1)[-1] if registry_id else None)
    if not name:
        return None
    return name if ("." in name or ":" in name) else f"{name.lower()}{ACR_SUFFIX}"


def in_registry(image: str | None, server: str | None) -> bool:
    """``image`` lives in an ACR: the configured ``server`` or any ``*.azurecr.io``."""
    from providers.containers import split_reference

    if not image:
        return False
    host = split_reference(image)[0]
    return bool(host) and (host == server or host.endswith(ACR_SUFFIX))


def push_to_acr(aad_token: str, local_ref: str, engine: str, server: str,
                env: dict[str, str] | None = None, provider: str = "azure") -> ImagePush:
    """Push ``local_ref`` with ``engine`` to ``server``'s repository named after the image,
    logged in with the ACR refresh token ``aad_token`` is exchanged for."""
    from providers.vm_identity import ACR_USER, IdentityError, acr_refresh_token

    image, tag = image_name(local_ref)
    try:
        password = acr_refresh_token(server, aad_token, env or {})
    except IdentityError as exc:
        raise ProviderError(f"ACR login to {server}: {exc}") from None
    login(engine, server, ACR_USER, password)
    return push(engine, local_ref, f"{server}/{image}", tag, provider)


def exchange_env(endpoint: str | None) -> dict[str, Any]:
    """The environment ``acr_refresh_token`` reads for a stand-in's exchange (``endpoint``)."""
    from providers.vm_identity import ACR_EXCHANGE

    return {ACR_EXCHANGE: endpoint} if endpoint else {}
