"""The containerised engine for real: built here, pushed to a registry, pulled and run on a VM.

* The CPU image is built with ``dqlctl image build --cpu --base ... --wheels ...`` by podman,
  offline (a Debian base made here, wheels from a local folder: tests/containers.py).
* ``dqlctl image push --provider aws`` pushes it to "ECR": moto's ECR API for the repository and
  the token, Debian's registry v2 server for the bytes, which lets in only the user and password
  that moto's GetAuthorizationToken hands out (``[providers.aws] registry`` names its address,
  as one would name an ECR interface endpoint).
* ``launch --provider aws --runtime docker`` on the sshd VM stand-in, whose ``docker`` is podman
  with storage and logins of its own: the VM logs in with its instance role (IMDSv2 credentials,
  a SigV4-signed GetAuthorizationToken: tests/fake_imds.py and moto), pulls (into the image
  store the session's VM stand-ins share), and runs the engine
  by the digest it pulled; the engine in the container writes its checkpoints and results
  straight to the moto bucket with the same role.
* ``dqlctl stop`` reaches the engine inside the container (``--init``): it checkpoints and exits
  143. A relaunch with ``--resume`` takes the checkpoint from the bucket and finishes.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from dqlctl import registry as reg
from dqlctl import runs
from dqlctl.cli import main
from dqlctl.context import Context
from dqlctl.runs.request import spec_of
from tests import containers
from tests import test_aws_e2e as aws
from tests.fake_imds import FakeImds
from tests.test_aws_e2e import ami, kill_vm_processes, make_home
from tests.vm import AWS_KEYS, vm_sshd

ROOT = Path(__file__).resolve().parents[1]
TAG = containers.ENGINE_TAG
AWS_TAG = "dqlctl-engine:aws-e2e"
EPISODES = "150"   # the stop and the notice land by about episode 30, even on 2 busy cores
CIDR = "198.51.100.7/32"
pytestmark = pytest.mark.xdist_group(containers.IMAGE_GROUP)


@pytest.fixture(scope="session")
def ecr_login(moto_server: str) -> tuple[str, str]:
    """The user and password moto's GetAuthorizationToken gives (fixed per account)."""
    ecr = boto3.client("ecr", endpoint_url=moto_server, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    user, _, password = base64.b64decode(token).decode().partition(":")
    return user, password


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory,
             ecr_login: tuple[str, str]) -> Iterator[str]:
    missing = containers.tools_missing()
    assert not missing, f"missing {missing}: `make system-deps` installs them"
    server = containers.start_registry(tmp_path_factory.mktemp("registry"),
                                       {ecr_login[0]: ecr_login[1]})
    yield server.extra["address"]
    server.stop()


@pytest.fixture(scope="session")
def operator_podman(tmp_path_factory: pytest.TempPathFactory, registry: str) -> dict[str, str]:
    """The operator's podman: the image cache under .deps survives sessions (layers only)."""
    return containers.podman_env(tmp_path_factory.mktemp("podman"),
                                 containers.CACHE / "storage", registry)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``dqlctl image build`` of the CPU image, offline; its JSON (tests/containers.py: built
    once per test process, shared with tests/test_container_clouds_e2e.py)."""
    return containers.engine_image(tmp_path_factory.mktemp("podman-build"))


@pytest.fixture()
def podman_here(operator_podman: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in operator_podman.items():
        monkeypatch.setenv(key, value)


def podman_env_of() -> dict[str, str]:
    """The operator's podman settings (``podman_here`` put them in the environment)."""
    return {k: os.environ[k] for k in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF",
                                       "CONTAINERS_REGISTRIES_CONF", "REGISTRY_AUTH_FILE")}


def test_the_image_builds_offline_and_runs_a_local_run(built: dict[str, Any], podman_here: None,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The build says what it made; the local provider runs a training in it: files in the
    results folder belong to the user who launched it, and the engine saw the data by path."""
    assert built["offline"] and built["cpu"] and built["engine"] == "podman"
    assert built["id"].startswith("sha256:") and built["size_bytes"] > 100_000_000
    home = tmp_path / "home"
    monkeypatch.setenv("DQLCTL_HOME", str(home))
    code = main(["launch", "--provider", "local", "--runtime", "podman", "--image", TAG,
                 "--data", "test_small.csv", "--agent-type", "dql", "--command", "train",
                 "--episodes", "2", "--name", "boxed", "--follow"], ctx=Context(home=home))
    (run,) = Context(home=home).registry.list()
    assert code == 0 and run.state == reg.SUCCEEDED, run.reason
    assert run.instance["extra"]["command"][:4] == ["podman", "run", "--rm", "--init"]
    results = Path(run.results_uri)
    assert (results / "model.pth").stat().st_uid == os.getuid()
    events = [json.loads(x)["event"] for x in (results / "events.jsonl").read_text().split("\n")
              if x]
    assert events.count("episode") == 2 and events[-1] == "finished"


@pytest.fixture()
def vm(aws_env: str, tmp_path: Path, registry: str) -> Iterator[dict[str, Any]]:
    """The VM stand-in whose ``docker`` is podman with logins of its own (and the VMs' shared
    image store, tests/containers.py ``vm_store``)."""
    vm_podman = containers.podman_env(tmp_path / "vm-podman", containers.vm_store(), registry)
    with vm_sshd(tmp_path / "vm-disk", keys_command=AWS_KEYS.format(endpoint=aws_env),
                 tools={"docker": containers.docker_shim()}, env=vm_podman) as info:
        info["podman"] = vm_podman
        yield info
    containers.podman(vm_podman, "rm", "--force", "--all", check=False)


imds = aws.imds      # the instance metadata service the VM's role credentials come from


@pytest.fixture()
def home(tmp_path: Path, vm: dict[str, Any], aws_env: str, registry: str, imds: FakeImds,
         monkeypatch: pytest.MonkeyPatch) -> Path:
    """The AWS e2e's home (tests/test_aws_e2e.py), with ECR's address and notices polled every
    0.1 s on the VM."""
    home = make_home(tmp_path / "dqlctl-home", vm, imds, aws_env, monkeypatch)
    config = home / "config.toml"
    config.write_text(config.read_text().replace(
        "[providers.aws]\n", f'[providers.aws]\nregistry = "{registry}"\n', 1)
        + 'DQLCTL_NOTICE_POLL_S = "0.1"\n')
    return home


def launch(*extra: str) -> list[str]:
    return ["launch", "--provider", "aws", "--gpu", "T4:1", "--data", "test_small.csv",
            "--agent-type", "dql", "--command", "train", "--ssh-cidr", CIDR, "--image-id", ami(),
            "--runtime", "docker", "--results-dir", "s3://engine-results/runs", "--name", "boxed",
            *extra]


def bucket_keys(prefix: str) -> set[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket="engine-results", Prefix=prefix)
    return {o["Key"] for o in listing.get("Contents", [])}


def wait_for_episode(events: Path, after: int = 0) -> None:
    """Until the engine on the VM has written an episode event beyond the first ``after``."""
    deadline = time.monotonic() + 180
    while (events.read_text() if events.exists() else "").count('"episode"') <= after:
        assert time.monotonic() < deadline, "no episode on the VM"
        time.sleep(0.05)


def test_push_pull_run_stop_resume_and_recover_on_an_aws_vm(
        built: dict[str, Any], podman_here: None, home: Path, vm: dict[str, Any],
        imds: FakeImds, registry: str, capsys: Any) -> None:
    boto3.client("s3").create_bucket(Bucket="engine-results")
    # push: the repository in "ECR", the bytes in the registry, the digest remembered
    # a tag of this test's own: its later move touches no other test's image
    containers.podman(podman_env_of(), "tag", built["id"], AWS_TAG)
    assert main(["image", "push", "--provider", "aws", "--engine", "podman", "--tag", AWS_TAG,
                 "--region", "us-east-1", "--json"], ctx=Context(home=home)) == 0
    pushed = json.loads(capsys.readouterr().out)
    assert pushed["repository"] == f"{registry}/dqlctl-engine"
    assert pushed["digest"].startswith("sha256:")
    assert pushed["pinned"] == f"{registry}/dqlctl-engine@{pushed['digest']}"
    assert boto3.client("ecr").describe_repositories()["repositories"][0][
        "repositoryName"] == "dqlctl-engine"

    # launch without --image: the image just pushed, by its digest
    assert main(launch("--episodes", EPISODES), ctx=Context(home=home)) == 0
    (run,) = Context(home=home).registry.list()
    assert run.state == reg.RUNNING, run.reason
    assert run.spec["image"] == pushed["pinned"]
    policy = boto3.client("iam").get_role_policy(RoleName=f"dqlctl-{run.id}",
                                                  PolicyName="run-bucket")["PolicyDocument"]
    ecr = [st for st in policy["Statement"] if "ecr:BatchGetImage" in st["Action"]]
    assert [st["Resource"] for st in ecr] == ["arn:aws:ecr:us-east-1:*:repository/dqlctl-engine"]
    raw = boto3.client("ec2").describe_instances(InstanceIds=run.instance_ids)
    options = raw["Reservations"][0]["Instances"][0]["MetadataOptions"]
    assert options["HttpTokens"] == "required" and options["HttpPutResponseHopLimit"] == 2
    # the VM logged in itself (its own logins: the registry admits only ECR's token, which
    # its role got), pulled the pushed digest, and left no registry token on its disk
    assert imds.credential_requests >= 1
    auth = json.loads(Path(vm["podman"]["REGISTRY_AUTH_FILE"]).read_text())
    assert registry not in auth.get("auths", {})
    pulled = containers.podman(vm["podman"], "image", "inspect", "--format",
                               "{{json .RepoDigests}}", pushed["pinned"])
    assert pushed["pinned"] in json.loads(pulled.stdout)

    # stop while it trains: the engine inside the container checkpoints and exits 143
    wait_for_episode(Path(run.instance["extra"]["events_path"]))
    assert main(["stop", run.id, "--wait", "120"], ctx=Context(home=home)) == 0
    stopped = Context(home=home).registry.get(run.id)
    assert stopped.state == reg.CANCELLED, stopped.reason
    exit_record = json.loads((Path(run.instance["extra"]["workdir"]) / "exit.json").read_text())
    assert exit_record["exit_code"] == 143 and exit_record["requested_stop"]
    checkpoints = {k for k in bucket_keys("runs/boxed/checkpoints/") if k.endswith(".pt")}
    assert checkpoints, "no checkpoint reached the bucket"

    # a relaunch by tag resumes from the bucket's checkpoint; the run records the digest the
    # VM pulled
    assert main(launch("--episodes", EPISODES, "--image", f"{registry}/dqlctl-engine:aws-e2e",
                       "--", "--resume"), ctx=Context(home=home)) == 0
    second = next(r for r in Context(home=home).registry.list() if r.id != run.id)
    assert second.state == reg.RUNNING, second.reason
    assert spec_of(second).image == pushed["pinned"]

    # the tag moves to another image (the run is pinned by digest already); then, while it
    # trains, the cloud announces the VM's end: the engine in the container checkpoints and
    # exits 143; the VM goes; the recovery pulls the run's digest, not the tag's new image
    containers.podman(podman_env_of(), "tag", containers.BASE_IMAGE, AWS_TAG)
    capsys.readouterr()
    assert main(["image", "push", "--provider", "aws", "--engine", "podman", "--tag", AWS_TAG,
                 "--region", "us-east-1", "--json"], ctx=Context(home=home)) == 0
    moved = json.loads(capsys.readouterr().out)
    assert moved["digest"] != pushed["digest"]
    workdir = Path(second.instance["extra"]["workdir"])
    wait_for_episode(Path(second.instance["extra"]["events_path"]))
    imds.notice("terminate", in_s=120)
    deadline = time.monotonic() + 120
    while not (workdir / "exit.json").exists():
        assert time.monotonic() < deadline, "the engine did not end on the notice"
        time.sleep(0.05)
    ended = json.loads((workdir / "exit.json").read_text())
    assert ended["exit_code"] == 143 and ended["notice"]["cloud"] == "aws", ended
    boto3.client("ec2").terminate_instances(InstanceIds=second.instance_ids)
    kill_vm_processes(second.id)
    shutil.rmtree(workdir)           # the next machine has a disk of its own
    imds.new_instance()
    (row,) = runs.reconcile_all(Context(home=home))
    assert row.state == reg.RUNNING and row.spec["extra"]["recoveries"] == 1, row.reason
    assert row.instance["extra"]["engine_image"] == pushed["pinned"]
    final = runs.follow(Context(home=home), row)
    assert final.state == reg.SUCCEEDED, final.reason
    log = (Path(final.instance["extra"]["workdir"]) / "engine.log").read_text()
    assert "resumed from ckpt-" in log
    assert {"runs/boxed/model.pth", "runs/boxed/events.jsonl"} <= bucket_keys("runs/boxed/")
    capsys.readouterr()
    assert main(["show", second.id], ctx=Context(home=home)) == 0
    assert f"image          {pushed['pinned']}" in capsys.readouterr().out


def test_an_image_the_vm_cannot_pull_fails_the_run_in_one_line_and_leaves_nothing(
        home: Path, vm: dict[str, Any], registry: str) -> None:
    """A mistyped image: the VM logs in (its role), the registry has no such image; the run
    is FAILED with why, and its instance, role, key and group are gone."""
    from tests.test_aws_e2e import NOTHING, leftovers

    boto3.client("s3").create_bucket(Bucket="engine-results")
    assert main(launch("--episodes", "2", "--image", f"{registry}/dqlctl-engin:test"),
                ctx=Context(home=home)) == 3        # a provider's error
    (run,) = Context(home=home).registry.list()
    assert run.state == reg.FAILED
    assert (f"the VM could not pull the engine image {registry}/dqlctl-engin:test: image pull: "
            "`docker pull` failed") in run.reason, run.reason
    assert "\n" not in run.reason
    assert leftovers(run.id) == NOTHING
