"""Cloud adapters. Provider modules load by name, lazily (no SDK is imported until used)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry stays free of imports: `dqlctl --help` passes through here
    from providers.base import Capability

# name -> "module:Class". Nothing here is imported until a provider is asked for.
COMPUTE_PROVIDERS: dict[str, str] = {
    "local": "providers.local.compute:LocalProvider",
    "aws": "providers.aws.compute:AwsProvider",
    "aws-batch": "providers.aws.batch:AwsBatchProvider",
    "gcp": "providers.gcp.compute:GcpProvider",
    "azure": "providers.azure.compute:AzureProvider",
}
# Named by the CLI before their adapters land, so the error can say so plainly.
PLANNED_PROVIDERS: tuple[str, ...] = ()
#: what runs use when none is named: this machine
DEFAULT_PROVIDER = "local"
#: not a provider: ``--provider auto`` lets the price catalog pick the cloud
AUTO = "auto"


def provider_names() -> list[str]:
    return sorted(COMPUTE_PROVIDERS)


def provider_class(name: str) -> Any:
    """The class of the compute provider called ``name`` (its module imports no SDK); KeyError
    if there is none."""
    module_name, _, attr = COMPUTE_PROVIDERS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def capabilities_of(name: str) -> frozenset[Capability]:
    """What the provider called ``name`` can do, without constructing it; none for ``auto``
    (which resolves to a cloud) or an unknown name."""
    if name not in COMPUTE_PROVIDERS:
        return frozenset()
    return frozenset(provider_class(name).capabilities)


def get_provider(name: str, **kwargs: Any) -> Any:
    """The compute provider called ``name``; KeyError if there is none."""
    return provider_class(name)(**kwargs)
