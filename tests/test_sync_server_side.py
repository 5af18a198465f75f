"""Server-side copies between clouds: Azure pulls from a URL the source signs (Put Blob From
URL), and the JSON says which path each file took; what the destination cannot pull streams
through this host instead.

Azurite (3.35) implements neither Put Blob From URL nor Put Block From URL (it answers 501
APINotImplemented) and its Copy Blob reads only its own blobs: against it every copy streams,
which the first test checks. The pull itself is checked against a stand-in for the service
side of Put Blob From URL (it GETs the presigned URL, checks ``source_content_md5`` and
stores the blob, as Azure does), so the URL S3 signs and our verification of what Azure
stored are exercised for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from providers.sync import sync
from providers.sync_cli import main
from tests.test_sync import SMALL_TREE, location, read_tree, write_tree


def test_azurite_cannot_pull_so_every_copy_streams(tmp_path: Path,
                                                   request: pytest.FixtureRequest,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    s3 = location("s3", tmp_path, request)
    az = location("azure", tmp_path, request)
    assert sync(str(write_tree(tmp_path / "tree", SMALL_TREE)), s3).ok
    assert main([s3, az, "--json", "--transfers", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {f["via"] for f in out["files"]} == {"stream"}
    assert "501" in out["server_side_refused"]               # said once, not per file
    # tried by the transfers already in flight, then no more
    assert 1 <= out["requests"]["dst"]["put_from_url"] <= 2
    assert read_tree(az) == SMALL_TREE


@pytest.fixture()
def azure_pulls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Put Blob From URL as Azure serves it, for Azurite: the URLs pulled."""
    from azure.storage.blob import BlobClient

    pulled: list[str] = []

    def upload_blob_from_url(self: BlobClient, source_url: str, **kw: Any) -> dict[str, Any]:
        with urllib.request.urlopen(source_url, timeout=30) as resp:     # noqa: S310
            data = resp.read()
        if kw.get("source_content_md5") is not None and \
                bytes(kw["source_content_md5"]) != hashlib.md5(data).digest():
            raise AssertionError("Md5Mismatch")
        pulled.append(source_url)
        return self.upload_blob(data, overwrite=kw.get("overwrite", False),
                                metadata=kw.get("metadata"),
                                content_settings=kw.get("content_settings"))

    monkeypatch.setattr(BlobClient, "upload_blob_from_url", upload_blob_from_url)
    return pulled


def test_s3_to_azure_is_pulled_and_verified(tmp_path: Path, request: pytest.FixtureRequest,
                                            azure_pulls: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    files = {**SMALL_TREE, "big.bin": os.urandom(3 * 1024 * 1024)}
    s3 = location("s3", tmp_path, request)
    az = location("azure", tmp_path, request)
    assert sync(str(write_tree(tmp_path / "tree", files)), s3).ok
    assert main([s3, az, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {f["key"]: f["via"] for f in out["files"]} == {k: "server" for k in files}
    assert {f["verified"] for f in out["files"]} == {"md5"}
    assert out["server_side_refused"] is None
    assert out["requests"]["src"].get("read", 0) == 0        # no byte through this host
    assert len(azure_pulls) == len(files) and all("Signature=" in u for u in azure_pulls)
    assert read_tree(az) == files
    again = sync(s3, az)                    # the pulled blobs carry their md5: a no-op
    assert again.ok and again.copied == 0 and again.compare == {"md5": len(files)}


def test_gcs_without_signing_credentials_streams(tmp_path: Path, request: pytest.FixtureRequest,
                                                 azure_pulls: list[str]) -> None:
    """The emulator's anonymous credentials cannot sign a URL: every copy streams."""
    gs = location("gcs", tmp_path, request)
    az = location("azure", tmp_path, request)
    assert sync(str(write_tree(tmp_path / "tree", SMALL_TREE)), gs).ok
    result = sync(gs, az)
    assert result.ok and {f.via for f in result.files} == {"stream"}
    assert result.server_side_refused is None and azure_pulls == []
    assert read_tree(az) == SMALL_TREE
