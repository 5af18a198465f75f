"""The rules around the engine's container that need no container engine: image references,
the run's container command, the VM's identity for a registry login (SigV4 as botocore signs,
ECR's token from moto with the instance role of the fake IMDS), what an instance role may pull,
and the refusals that come before anything is created."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import boto3
import pytest

from dqlctl.cli import main
from dqlctl.context import Context
from providers.base import JobSpec, LaunchSpec
from providers.containers import container_env, pinned, run_argv, split_reference
from providers.vm_identity import AwsCredentials, IdentityError, aws_credentials, sigv4
from tests.fake_imds import FakeImds


@pytest.mark.parametrize("ref, parts", [
    ("dqlctl-engine", ("", "dqlctl-engine", None, None)),
    ("dqlctl-engine:cpu", ("", "dqlctl-engine", "cpu", None)),
    ("localhost/x:1", ("localhost", "x", "1", None)),
    ("127.0.0.1:5000/a/b:t", ("127.0.0.1:5000", "a/b", "t", None)),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/e@sha256:ab",
     ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "e", None, "sha256:ab")),
    ("library/ubuntu:22.04", ("", "library/ubuntu", "22.04", None)),
])
def test_image_references_split_like_docker(ref: str, parts: tuple[str, ...]) -> None:
    assert split_reference(ref) == parts


def test_a_pinned_reference_drops_the_tag() -> None:
    assert pinned("127.0.0.1:5000/a/b:t", "sha256:ff") == "127.0.0.1:5000/a/b@sha256:ff"
    assert pinned("e:latest", "sha256:ff") == "e@sha256:ff"


def test_the_container_command_keeps_paths_and_passes_signals() -> None:
    argv = run_argv("podman", name="dqlctl-r1", image="img@sha256:1", engine_args=["train"],
                    data_file="/runs/r1/data/x.csv", results_dir="/runs/r1/results",
                    mounts=["/runs/r1", "/runs/r1"], network="host", labels={"dqlctl.run": "r1"})
    assert argv == ["podman", "run", "--rm", "--init", "--name=dqlctl-r1", "--network=host",
                    "--label=dqlctl.run=r1", "--volume=/runs/r1/data:/runs/r1/data:ro",
                    "--volume=/runs/r1:/runs/r1", "img@sha256:1", "train",
                    "--data_file=/runs/r1/data/x.csv", "--results_dir=/runs/r1/results"]
    with pytest.raises(ValueError, match="not an image name"):
        run_argv("docker", name="n", image="--privileged", engine_args=[], data_file="s3://b/d",
                 results_dir="s3://b/r", mounts=[], network="none")


def test_a_local_container_gets_the_engines_settings_not_this_machines_paths() -> None:
    env = {"TELEGRAM_BOT_TOKEN": "1", "AWS_ENDPOINT_URL": "http://x", "AWS_CA_BUNDLE": "/etc/c",
           "GOOGLE_APPLICATION_CREDENTIALS": "/k.json", "AWS_SHARED_CREDENTIALS_FILE": "/c",
           "HOME": "/root", "PATH": "/bin", "DQLCTL_HOME": "/h"}
    assert container_env(env) == ["AWS_ENDPOINT_URL", "TELEGRAM_BOT_TOKEN"]


def test_sigv4_signs_as_botocore_does() -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    now = datetime.datetime(2026, 11, 30, 15, 0, 0)
    headers = {"Content-Type": "application/x-amz-json-1.1",
               "X-Amz-Target": "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"}
    for url, token in (("https://api.ecr.eu-west-1.amazonaws.com/", "TOKEN"),
                       ("http://127.0.0.1:5000/", None)):
        ours = sigv4("POST", url, dict(headers), b"{}", service="ecr", region="eu-west-1",
                     creds=AwsCredentials("AKIDEXAMPLE", "secret/key+x", token),
                     now=now.replace(tzinfo=datetime.UTC))
        req = AWSRequest(method="POST", url=url, data=b"{}", headers=dict(headers))
        signer = SigV4Auth(Credentials("AKIDEXAMPLE", "secret/key+x", token), "ecr", "eu-west-1")
        req.context["timestamp"] = now.strftime("%Y%m%dT%H%M%SZ")
        req.headers["X-Amz-Date"] = req.context["timestamp"]
        if token:
            req.headers["X-Amz-Security-Token"] = token
        expected = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)),
                                    req)
        assert ours["Authorization"].endswith(f"Signature={expected}")
        assert "secret/key+x" not in repr(AwsCredentials("AKIDEXAMPLE", "secret/key+x"))


def test_the_vm_gets_ecr_credentials_with_its_instance_role(aws_env: str) -> None:
    """IMDSv2 gives the role's credentials; ECR's token (moto) comes back with them."""
    from providers.vm_identity import ecr_authorization

    imds = FakeImds()
    imds.start()
    try:
        env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "AWS_ENDPOINT_URL": aws_env}
        creds = aws_credentials(env)
        assert creds.access_key and creds.token and imds.credential_requests == 1
        user, password, endpoint = ecr_authorization("us-east-1", env)
        token = boto3.client("ecr").get_authorization_token()["authorizationData"][0]
        assert (user, endpoint) == ("AWS", token["proxyEndpoint"].removeprefix("https://"))
        import base64

        assert f"{user}:{password}" == base64.b64decode(token["authorizationToken"]).decode()
    finally:
        imds.stop()


def test_a_vm_without_a_role_says_so_in_one_line(tmp_path: Path) -> None:
    """No metadata service: one line naming the call, no traceback."""
    import subprocess
    import sys

    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "providers.image_pull", "--engine", "false",
                           "--login", "aws", "--region", "us-east-1",
                           "123456789012.dkr.ecr.us-east-1.amazonaws.com/e:latest"],
                          capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("image pull: PUT http://127.0.0.1:9/latest/api/token: ")
    from providers.vm_identity import call_json

    with pytest.raises(IdentityError) as failed:   # a query may hold a token: never shown
        call_json("GET", "http://127.0.0.1:9/x?token=secret", {})
    assert str(failed.value).startswith("GET http://127.0.0.1:9/x: ")
    assert "secret" not in str(failed.value)


def spec(image: str | None, runtime: str = "docker") -> LaunchSpec:
    return LaunchSpec(run_id="r1", name="n", job=JobSpec(["train"], "d.csv", "s3://b/r", "e"),
                      image=image, runtime=runtime, region="eu-west-1")


def test_an_instance_role_may_pull_its_own_image_and_nothing_else() -> None:
    from providers.aws.access import image_pull_statements

    ecr = "123456789012.dkr.ecr.eu-central-1.amazonaws.com/dqlctl-engine@sha256:ab"
    assert image_pull_statements(spec(ecr), None, "eu-west-1") == [
        {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        {"Effect": "Allow", "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                                       "ecr:BatchCheckLayerAvailability"],
         "Resource": "arn:aws:ecr:eu-central-1:123456789012:repository/dqlctl-engine"}]
    # an image of the configured registry address: the instance's region, any account
    (_, pull) = image_pull_statements(spec("10.0.0.5:5000/e:1"), "10.0.0.5:5000", "eu-west-1")
    assert pull["Resource"] == "arn:aws:ecr:eu-west-1:*:repository/e"
    assert image_pull_statements(spec("docker.io/library/python:3.11"), None, "eu-west-1") == []
    assert image_pull_statements(spec(ecr, runtime="native"), None, "eu-west-1") == []


def test_docker_on_a_cloud_without_a_pushed_image_is_refused_before_anything(
        tmp_path: Path, aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQLCTL_HOME", str(tmp_path))
    out, err = io.StringIO(), io.StringIO()
    code = main(["launch", "--provider", "aws", "--runtime", "docker", "--data", "test_small.csv"],
                Context(home=tmp_path, stdout=out, stderr=err))
    assert code == 2
    assert err.getvalue() == ("dqlctl: error: --runtime docker on aws: no engine image; push one "
                              "with `dqlctl image push --provider aws` or give --image\n")
    assert Context(home=tmp_path).registry.list() == []
    assert boto3.client("ec2").describe_instances()["Reservations"] == []
