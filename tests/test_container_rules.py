"""The rules around the engine's container that need no container engine: image references,
the run's container command, the VM's identity for a registry login (SigV4 as botocore signs,
ECR's token from moto with the instance role of the fake IMDS), what an instance role may pull,
and the refusals that come before anything is created."""

from __future__ import annotations

import datetime
import io
from pathlib import Path
from typing import Any

import boto3
import pytest

from dqlctl.cli import main
from dqlctl.context import Context
from providers.base import JobSpec, LaunchSpec, ProviderError
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


def test_an_ecr_login_without_a_region_is_refused() -> None:
    from providers.vm_identity import registry_password

    with pytest.raises(IdentityError, match="needs the registry's region"):
        registry_password("aws", "123456789012.dkr.ecr.us-east-1.amazonaws.com", {}, None)


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


# -- Artifact Registry and ACR: which images, the VMs' logins, what the registry lets in --------

def test_which_images_are_in_artifact_registry_and_in_acr() -> None:
    from providers.azure.compute import AzureProvider
    from providers.gcp.compute import GcpProvider
    from providers.gcp.images import repository_of

    ar = "europe-west4-docker.pkg.dev/proj/dqlctl/dqlctl-engine@sha256:ab"
    assert repository_of(ar, None, "us-central1") == ("proj", "europe-west4", "dqlctl")
    assert repository_of("10.0.0.5:5000/p/r/e:1", "10.0.0.5:5000", "us-east1") == \
        ("p", "us-east1", "r")
    assert repository_of("docker.io/library/python:3.11", None, "us-east1") is None
    gcp = GcpProvider(registry="10.0.0.5:5000")
    assert gcp.registry_login(ar, "us-central1") == ("gcp", None)
    assert gcp.registry_login("ghcr.io/x/y:1", "us-central1") is None
    assert gcp._pulls_from(spec(ar)) == \
        "projects/proj/locations/europe-west4/repositories/dqlctl"
    assert gcp._pulls_from(spec(ar, runtime="native")) is None

    azure = AzureProvider(registry="DqlReg")
    assert azure.registry_login("dqlreg.azurecr.io/dqlctl-engine@sha256:ab", "eastus") == \
        ("azure", None)
    assert azure.registry_login("ghcr.io/x/y:1", "eastus") is None
    # AcrPull needs the registry's id: refused before anything is made
    with pytest.raises(ProviderError, match="registry_id"):
        azure._pull_scope(spec("dqlreg.azurecr.io/dqlctl-engine@sha256:ab"))
    reg_id = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ContainerRegistry/" \
             "registries/dqlreg"
    azure = AzureProvider(registry_id=reg_id)       # the name comes from the id
    assert azure._pull_scope(spec("dqlreg.azurecr.io/e@sha256:ab")) == reg_id
    with pytest.raises(ProviderError, match="registry_id"):   # another ACR: no grant there
        azure._pull_scope(spec("other.azurecr.io/e@sha256:ab"))
    assert azure._pull_scope(spec("dqlreg.azurecr.io/e:1", runtime="native")) is None


def test_a_gce_vm_logs_in_to_artifact_registry_with_its_service_account() -> None:
    from providers.vm_identity import registry_password
    from tests.fake_gce import FakeGce
    from tests.fake_metadata import FakeGceMetadata

    with FakeGce() as gce, FakeGceMetadata(gce) as metadata:
        gce.instances[("us-central1-a", "dqlctl-r1")] = {"status": "RUNNING", "serviceAccounts": [
            {"email": "dqlctl-r1@p.iam.gserviceaccount.com", "scopes": ["s"]}]}
        user, password = registry_password("gcp", "us-central1-docker.pkg.dev",
                                           {"DQLCTL_GCE_METADATA_URL": metadata.url})
    assert user == "oauth2accesstoken"
    assert gce.vm_tokens[password] == ("dqlctl-r1@p.iam.gserviceaccount.com", ["s"])


def test_an_azure_vm_trades_its_identity_token_at_acr() -> None:
    from providers.vm_identity import acr_refresh_token, registry_password
    from tests.fake_azure import FakeAzure
    from tests.fake_metadata import FakeAzureImds

    with FakeAzure() as arm, FakeAzureImds(arm) as imds:
        arm.resources["vm"] = {"type": "Microsoft.Compute/virtualMachines", "id": "/x/vm",
                               "name": "vm", "location": "eastus",
                               "properties": {"provisioningState": "Succeeded"},
                               "identity": {"principalId": "p1"}}
        env = {"DQLCTL_AZURE_IMDS_URL": imds.url, "DQLCTL_ACR_EXCHANGE_URL": arm.url}
        user, password = registry_password("azure", "reg.azurecr.io", env)
        assert user == "00000000-0000-0000-0000-000000000000"
        assert arm.acr_refresh_tokens[password] == ("p1", "reg.azurecr.io")
        storage = arm.mint_identity_token("p1", "https://storage.azure.com/")
        with pytest.raises(IdentityError, match="HTTP 401"):   # ARM's audience only
            acr_refresh_token("reg.azurecr.io", storage, env)


def test_the_registry_gates_let_a_vm_pull_only_what_it_was_granted() -> None:
    from tests.fake_azure import FakeAzure
    from tests.fake_gce import FakeGce
    from tests.registry_gate import Refused, acr_policy, artifact_policy

    gce = FakeGce()
    repo = "projects/dqlctl-test/locations/us-central1/repositories/dqlctl"
    gce.repositories[repo] = {"name": repo}
    gce.tokens.add("op")
    gce.vm_tokens.update({"vm": ("sa@x", ["https://www.googleapis.com/auth/devstorage.read_only"]),
                          "bare": ("sa@x", ["https://www.googleapis.com/auth/compute"])})
    check = artifact_policy(gce, "us-central1")
    path = "/v2/dqlctl-test/dqlctl/dqlctl-engine/manifests/sha256:ab"

    def refused(policy: Any, method: str, where: str, user: str, password: str) -> int:
        with pytest.raises(Refused) as exc:
            policy(method, where, user, password)
        return exc.value.status

    assert check("PUT", path, "oauth2accesstoken", "op") == ("operator", path[4:].split(
        "/manifests")[0])
    assert refused(check, "GET", path, "oauth2accesstoken", "vm") == 403     # no binding yet
    gce.repository_policies[repo] = {"bindings": [
        {"role": "roles/artifactregistry.reader", "members": ["serviceAccount:sa@x"]}]}
    assert check("GET", path, "oauth2accesstoken", "vm")[0] == "sa@x"
    assert refused(check, "PUT", path, "oauth2accesstoken", "vm") == 403      # pull only
    assert refused(check, "GET", path, "oauth2accesstoken", "bare") == 403    # no read scope
    assert refused(check, "GET", path, "oauth2accesstoken", "forged") == 401
    assert refused(check, "GET", path.replace("/dqlctl/", "/other/"), "oauth2accesstoken",
                   "op") == 404

    arm = FakeAzure()
    reg_id = f"{arm.sub_id}/resourceGroups/img/providers/Microsoft.ContainerRegistry/" \
             "registries/r"
    arm.acr_refresh_tokens.update({"op": (None, "r.azurecr.io"), "mi": ("p1", "r.azurecr.io"),
                                   "elsewhere": ("p1", "other.azurecr.io")})
    acr = acr_policy(arm, "r.azurecr.io", reg_id)
    user = "00000000-0000-0000-0000-000000000000"
    path = "/v2/dqlctl-engine/blobs/sha256:ab"
    assert acr("PUT", path, user, "op") == ("operator", "dqlctl-engine")
    assert refused(acr, "GET", path, user, "mi") == 403                        # no AcrPull
    arm.role_assignments["a"] = {"properties": {
        "principalId": "p1", "scope": f"{arm.sub_id}/resourceGroups/img",
        "roleDefinitionId": "/x/roleDefinitions/7f951dda-4ed3-4680-a7ca-43fe172d538d"}}
    assert acr("GET", path, user, "mi") == ("p1", "dqlctl-engine")
    assert refused(acr, "PATCH", path, user, "mi") == 403
    assert refused(acr, "GET", path, user, "elsewhere") == 401
