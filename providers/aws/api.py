"""AWS specifics every EC2 module shares: boto3, loaded on first use, the shape of its errors
(the error code, 'not found' as done already) and of its tags and tag filters."""

from __future__ import annotations

from typing import Any

from providers.base import ProviderError, install_hint


def boto3_sdk() -> Any:
    """boto3, imported on first use; ProviderError saying what to install."""
    try:
        import boto3
    except ImportError:
        raise ProviderError(f"the AWS provider needs boto3: {install_hint('aws')}") from None
    return boto3


def code(exc: Exception) -> str:
    """The AWS error code of a failed call ('' when it has none)."""
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def tags_of(raw: dict[str, Any]) -> dict[str, str]:
    """A described resource's ``Tags`` as a dict."""
    return {t["Key"]: t["Value"] for t in raw.get("Tags") or []}


def tag_filters(tag: dict[str, str | None]) -> list[dict[str, Any]]:
    """EC2 ``Filters`` for resources carrying every tag of ``tag`` (a None value: any)."""
    return [{"Name": f"tag:{k}", "Values": [v]} if v is not None
            else {"Name": "tag-key", "Values": [k]} for k, v in tag.items()]


def quietly(fn: Any, **kwargs: Any) -> None:
    """Call ``fn``; a 'not found' answer means it is gone already."""
    try:
        fn(**kwargs)
    except Exception as exc:
        found = code(exc)
        if not (found.endswith("NotFound") or found in ("NoSuchEntity",
                                                        "InvalidKeyPair.NotFound")):
            raise
