"""Azure specifics every Azure compute module shares: the management SDKs, loaded on first use,
the shape of their errors (the ARM error code, capacity codes) and the bearer policy for a
plain-http stand-in of ARM."""

from __future__ import annotations

from typing import Any

from providers.base import ProviderError, install_hint

ARM_SCOPE = "https://management.azure.com/.default"
CAPACITY_CODES = frozenset({"SkuNotAvailable", "AllocationFailed", "ZonalAllocationFailed",
                            "OverconstrainedAllocationRequest",
                            "OverconstrainedZonalAllocationRequest", "QuotaExceeded",
                            "OperationNotAllowed", "SpotMaxPriceTooLow"})


def sdk() -> dict[str, Any]:
    """The management clients and error types by name, imported on first use; ProviderError
    saying what to install."""
    try:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.mgmt.authorization import AuthorizationManagementClient
        from azure.mgmt.compute import ComputeManagementClient
        from azure.mgmt.network import NetworkManagementClient
        from azure.mgmt.resource.resources import ResourceManagementClient
    except ImportError:
        raise ProviderError("the Azure provider needs the Azure SDK: "
                            f"{install_hint('azure')}") from None
    return {"compute": ComputeManagementClient, "network": NetworkManagementClient,
            "resource": ResourceManagementClient, "authorization": AuthorizationManagementClient,
            "HttpResponseError": HttpResponseError, "NotFound": ResourceNotFoundError}


def code(exc: BaseException) -> str:
    """The ARM error code of a failed call or long-running operation."""
    error = getattr(exc, "error", None)
    found = getattr(error, "code", None)
    if found:
        return str(found)
    text = str(exc)
    for candidate in CAPACITY_CODES:
        if candidate in text:
            return candidate
    return ""


def plain_bearer(credential: Any) -> Any:
    """An auth policy that sends the bearer token over plain http (a local stand-in only)."""
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class PlainBearer(SansIOHTTPPolicy):  # type: ignore[type-arg]
        def on_request(self, request: Any) -> None:
            token = credential.get_token(ARM_SCOPE).token
            request.http_request.headers["Authorization"] = f"Bearer {token}"

    return PlainBearer()
