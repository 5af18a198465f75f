"""Cloud adapters. Provider modules load by name, lazily (no SDK is imported until used)."""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:Class". Nothing here is imported until a provider is asked for.
COMPUTE_PROVIDERS: dict[str, str] = {
    "local": "providers.local:LocalProvider",
    "aws": "providers.aws:AwsProvider",
    "gcp": "providers.gcp:GcpProvider",
    "azure": "providers.azure:AzureProvider",
}
# Named by the CLI before their adapters land, so the error can say so plainly.
PLANNED_PROVIDERS: tuple[str, ...] = ()


def provider_names() -> list[str]:
    return sorted(COMPUTE_PROVIDERS)


def get_provider(name: str, **kwargs: Any) -> Any:
    """The compute provider called ``name``; KeyError if there is none."""
    target = COMPUTE_PROVIDERS[name]
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(**kwargs)
