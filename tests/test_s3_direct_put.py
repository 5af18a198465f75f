"""Small S3 uploads as one signed PUT (providers/aws/direct_put.py), against a moto server that
checks every signature and policy as AWS does (``iam_moto``): the objects it writes are the
ones botocore writes, under long-lived and temporary keys and for keys that need encoding; a
PUT it cannot get through is sent again by botocore, which then sends the store's later ones.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.credentials import Credentials

from providers.aws.direct_put import DirectPut
from providers.storage import MD5, open_store

KEYS = ["plain.bin", "ünï/日本/a b+c~(1)&=?.bin", "deep/./x/../y//z%20.txt"]


def put_small(uri: str, key: str, data: bytes, mtime: float) -> Any:
    store, prefix = open_store(uri)
    store.put(prefix + key, io.BytesIO(data), size=len(data), mtime=mtime)
    return store


def test_small_puts_are_signed_as_aws_checks_them(iam_moto: dict[str, str]) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="direct")
    for i, key in enumerate(KEYS):
        data = f"model {i}".encode() * (i + 1)
        store = put_small("s3://direct/runs/", key, data, 1_000.5 + i)
        assert isinstance(store._direct, DirectPut) and not store._direct_off, key
        # what botocore reads back: the bytes, the ETag and the metadata a sync compares
        head = s3.head_object(Bucket="direct", Key="runs/" + key)
        assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()
        assert head["Metadata"] == {"md5": hashlib.md5(data).hexdigest(),
                                    "mtime": f"{1_000.5 + i:.6f}"}
        assert s3.get_object(Bucket="direct", Key="runs/" + key)["Body"].read() == data
        info = store.stat("runs/" + key)
        assert (info.mtime, info.hashes[MD5], info.upload_time) == (
            1_000.5 + i, hashlib.md5(data).hexdigest(), False)
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="direct")["Contents"])
    assert listed == sorted("runs/" + k for k in KEYS)


def test_temporary_keys_sign_with_their_session_token(
        iam_moto: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    boto3.client("s3").create_bucket(Bucket="direct")
    iam = boto3.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": iam_moto["arn"]}, "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName="writer", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    iam.put_role_policy(RoleName="writer", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    creds = boto3.client("sts").assume_role(RoleArn=role["Arn"],
                                            RoleSessionName="vm")["Credentials"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", creds["SessionToken"])
    store = put_small("s3://direct/", "checkpoint.pt", b"weights", 5.0)
    assert isinstance(store._direct, DirectPut) and not store._direct_off
    assert store.get_bytes("checkpoint.pt") == b"weights"
    # the token is what lets it in: without it the same keys are refused, and botocore
    # (sent the PUT again, with the token) writes it
    store._direct.credentials = Credentials(creds["AccessKeyId"], creds["SecretAccessKey"])
    store.put("again.pt", io.BytesIO(b"more"), size=4, mtime=6.0)
    assert store._direct_off and store.get_bytes("again.pt") == b"more"


def test_a_refused_direct_put_is_sent_by_botocore_which_sends_the_rest(
        iam_moto: dict[str, str], tmp_path: Path) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="direct")
    store, _ = open_store("s3://direct/")
    attempts: list[str] = []
    direct = DirectPut(store.client, Credentials(iam_moto["key"], "not-the-secret"), "direct")
    put = direct.put

    def counted(key: str, body: bytes, headers: dict[str, str]) -> Any:
        attempts.append(key)
        return put(key, body, headers)

    direct.put = counted  # type: ignore[method-assign]
    store._direct = direct
    for name in ("a.bin", "b.bin"):
        store.put(name, io.BytesIO(name.encode()), size=5, mtime=1.0)
    assert attempts == ["a.bin"] and store._direct_off      # one refusal turns it off
    assert {o["Key"]: s3.get_object(Bucket="direct", Key=o["Key"])["Body"].read()
            for o in s3.list_objects_v2(Bucket="direct")["Contents"]} == {
        "a.bin": b"a.bin", "b.bin": b"b.bin"}
    # a body of 1 MiB or more goes through botocore from the start (its 100-continue)
    fresh, _ = open_store("s3://direct/")
    fresh.put("big.bin", io.BytesIO(b"x" * (1 << 20)), size=1 << 20, mtime=1.0)
    assert fresh._direct is None and not fresh._direct_off
    # and a bucket that does not exist is botocore's error, said as before
    missing, _ = open_store("s3://no-such-bucket-here/")
    with pytest.raises(Exception, match="does not exist"):
        missing.put("k", io.BytesIO(b"1"), size=1, mtime=1.0)


class _Raw:
    """The body of a short-circuited response: empty."""

    def stream(self) -> Any:
        return iter([b""])


@pytest.mark.parametrize(("region", "config"), [
    ("us-east-1", {}), ("eu-west-3", {}), ("eu-west-3", {"addressing_style": "path"}),
    ("us-west-2", {"use_dualstack_endpoint": True}), ("ap-southeast-2", {"endpoint": "custom"})])
def test_the_url_and_region_are_those_botocore_sends_a_put_object_to(
        region: str, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # no request leaves: botocore's PutObject is stopped just before it would be sent, and
    # what it would have sent is compared with what DirectPut makes of the presigned URL
    import botocore.session
    from botocore.awsrequest import AWSResponse
    from botocore.config import Config

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    endpoint = "https://storage.example.net:9000" if config.pop("endpoint", None) else None
    session = botocore.session.get_session()
    session.set_credentials("AKIDEXAMPLE", "secret")
    client = session.create_client("s3", region_name=region, endpoint_url=endpoint,
                                   config=Config(s3=config))
    sent: list[Any] = []

    def stop(request: Any, **_: Any) -> AWSResponse:
        sent.append(request)
        return AWSResponse(request.url, 200, {"ETag": '"x"'}, _Raw())

    client.meta.events.register("before-send.s3.PutObject", stop)
    direct = DirectPut(client, session.get_credentials(), "my-bucket")
    for key in KEYS:
        client.put_object(Bucket="my-bucket", Key=key, Body=b"1")
        assert direct.url(key) == sent[-1].url
        scope = sent[-1].headers["Authorization"].decode().split("Credential=")[1].split("/")
        assert direct.region == scope[2] == region
