"""Object storage behind one interface: local paths / ``file://``, ``s3://``, ``gs://``, ``az://``.

    store, key = open_store("s3://bucket/some/prefix")
    for info in store.list(key + "/"): ...

``STORES`` maps a URI scheme to the import string of its backend (fsspec's
``known_implementations``): nothing is imported, and no SDK loaded, until a URI of that scheme
is opened. Endpoints and credentials come from each SDK's own chain and variables
(``AWS_ENDPOINT_URL``, ``STORAGE_EMULATOR_HOST``, ``AZURE_STORAGE_CONNECTION_STRING`` ...).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from providers.storage.base import (
    CRC32C,
    EXIT_BAD_INPUT,
    EXIT_PROVIDER,
    MD5,
    Cancelled,
    ObjectInfo,
    StorageError,
    Store,
)
from providers.storage.keys import UnsafeKey, check_key, local_path

__all__ = ["CRC32C", "EXIT_BAD_INPUT", "EXIT_PROVIDER", "MD5", "STORES", "Cancelled",
           "ObjectInfo", "Store", "StorageError", "UnsafeKey", "check_key", "local_path",
           "open_store", "parse_uri", "store_class"]

# scheme -> "module:Class"; loaded on first use.
STORES: dict[str, str] = {
    "file": "providers.storage.local:LocalStore",
    "s3": "providers.aws.storage:S3Store",
    "gs": "providers.gcp.storage:GcsStore",
    "az": "providers.azure.storage:AzureStore",
}
ALIASES = {"gcs": "gs", "azure": "az"}


def parse_uri(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key)``. A bare path is ``file``, its bucket the filesystem root "/"
    and its key the absolute path without the leading slash."""
    if not uri:
        raise StorageError("empty location: give a path or a URI such as s3://bucket/prefix")
    if "://" not in uri:
        path = os.path.abspath(os.path.expanduser(uri))
        return "file", "/", path.lstrip("/")
    scheme, _, rest = uri.partition("://")
    scheme = ALIASES.get(scheme.lower(), scheme.lower())
    if scheme not in STORES:
        known = ", ".join(f"{s}://" for s in sorted(STORES))
        raise StorageError(f"unknown storage scheme {scheme!r} in {uri!r} (known: {known}, "
                           "or a local path)")
    if scheme == "file":
        path = os.path.abspath(os.path.expanduser(rest or "/"))
        return "file", "/", path.lstrip("/")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} names no bucket: write {scheme}://BUCKET/PREFIX")
    return scheme, bucket, key


def store_class(scheme: str) -> type[Store]:
    module_name, _, attr = STORES[scheme].partition(":")
    cls: type[Store] = getattr(importlib.import_module(module_name), attr)
    return cls


def open_store(uri: str, **options: Any) -> tuple[Store, str]:
    """The store holding ``uri`` and the key (or prefix) inside it.

    Raises StorageError: code 2 for a malformed URI or unknown scheme, code 3 when the
    scheme's SDK is not installed or its credentials cannot be found.
    """
    scheme, bucket, key = parse_uri(uri)
    return store_class(scheme)(bucket, **options), key
