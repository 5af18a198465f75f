"""Google specifics every GCE module shares: the compute SDK, loaded on first use, and the shapes
of its errors (capacity and quota codes, 'not found')."""

from __future__ import annotations

from typing import Any

from providers.base import ProviderError, install_hint

CAPACITY_CODES = ("ZONE_RESOURCE_POOL_EXHAUSTED", "QUOTA_EXCEEDED", "quotaExceeded",
                  "RESOURCE_POOL_EXHAUSTED", "STOCKOUT")


def compute_sdk() -> Any:
    """google.cloud.compute_v1, imported on first use; ProviderError saying what to install."""
    try:
        from google.cloud import compute_v1
    except ImportError:
        raise ProviderError("the GCP provider needs google-cloud-compute: "
                            f"{install_hint('gcp')}") from None
    return compute_v1


class GceError(ProviderError):
    """A failed GCE operation; ``codes`` are the operation's error codes."""

    def __init__(self, message: str, codes: list[str]) -> None:
        super().__init__(message)
        self.codes = codes


def codes(exc: BaseException) -> list[str]:
    """Error codes/reasons of a GCE failure (an operation error or an HTTP error's reasons)."""
    if isinstance(exc, GceError):
        return exc.codes
    out = []
    for err in getattr(exc, "errors", None) or []:
        if isinstance(err, dict):
            out.append(str(err.get("reason") or err.get("code") or ""))
        else:
            out.append(str(getattr(err, "code", "") or getattr(err, "reason", "")))
    text = str(exc)
    out += [c for c in CAPACITY_CODES if c in text]
    return [c for c in out if c]


def is_capacity(exc: BaseException) -> bool:
    return any(c.startswith(CAPACITY_CODES) for c in codes(exc))


def not_found(exc: BaseException) -> bool:
    return type(exc).__name__ == "NotFound" or getattr(exc, "code", None) == 404
