"""AWS Batch for real: moto server runs each job's container through podman's Docker-compatible
socket (LOCAL_CLOUD.md, "AWS Batch that really runs its jobs"), with the real engine image
(tests/containers.py ``engine_image``, built once per test process).

* A 2 x 2 sweep (two tiny markets x two seeds) on ``--provider aws-batch``: the reusable
  compute environment, queue and ``DQL-Training`` job definition are made on first use; one job
  per member with its own parameters; each container runs the engine, which writes straight to
  the moto bucket; dqlctl follows the jobs through ``describe_jobs`` and CloudWatch Logs, copies
  the results home and compares the members.
* A run whose data is broken fails: FAILED with the container's exit code and its log's last
  line.
* ``sweep down`` of a sweep whose job runs leaves nothing running; ``gc`` removes the reusable
  infrastructure once nothing uses it.

The stand-in, as real Batch: the job's credentials come from a credentials endpoint
(``AWS_CONTAINER_CREDENTIALS_FULL_URI`` on 127.0.0.1, a tiny server here handing out moto's
test keys) and its endpoint from ``AWS_ENDPOINT_URL`` (``[providers.aws-batch] job_env``);
nothing is pulled (the image is in the store podman's socket serves). Two fixes to moto 5.2.5
are made where it is started: its ``describe_jobs`` drops the container's exit code (real Batch
returns ``container.exitCode``), and AWS's managed policies are loaded (real IAM has them).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dqlctl import registry as reg
from dqlctl.cli import main
from dqlctl.context import Context
from providers.aws.batch import GUIDE_COMMAND, JOB_DEFINITION, RUN_FLAGS
from providers.layout import resolve_data_path
from tests import containers, servers
from tests.fake_gce import FakeHttpServer, Request, Response

pytestmark = [pytest.mark.xdist_group(containers.IMAGE_GROUP), pytest.mark.skipif(
    bool(containers.tools_missing()),
    reason=f"AWS Batch stand-in needs {', '.join(containers.tools_missing())} "
           "(`make system-deps` installs them)")]

TOKEN = "123456:telegram-token-that-must-not-leak"
BUCKET = "batch-results"
ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")

#: moto's server, with Batch's exit code where real Batch has it
MOTO = """
import sys
from moto.batch import models

_details = models.Job._container_details

def _with_exit_code(self):
    out = _details(self)
    if self.exit_code is not None:
        out["exitCode"] = self.exit_code
    return out

models.Job._container_details = _with_exit_code
from moto.server import main
main(sys.argv[1:])
"""


class ContainerCredentials(FakeHttpServer):
    """The container credentials endpoint: moto's test keys, as the job role's would be."""

    def handle(self, req: Request) -> Response:
        expires = datetime.now(UTC) + timedelta(hours=1)
        return Response(200, {"AccessKeyId": "testing", "SecretAccessKey": "testing",
                              "Token": "testing",
                              "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")})


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The engine image, under a tag of this process's own (another test may move ``test``)."""
    built = containers.engine_image(tmp_path_factory.mktemp("podman-build"))
    env = containers.podman_env(tmp_path_factory.mktemp("podman-tag"),
                                containers.CACHE / "storage")
    tag = f"localhost/dqlctl-engine:batch-{os.getpid()}"
    containers.podman(env, "tag", built["id"], tag)
    yield tag
    containers.podman(env, "untag", built["id"], tag, check=False)


@pytest.fixture(scope="module")
def batch_moto(tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[str]:
    """A podman service on a socket and a moto server of its own that runs Batch jobs there."""
    work = tmp_path_factory.mktemp("batch-moto")
    env = containers.podman_env(work / "podman", containers.CACHE / "storage")
    sock = work / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                               env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=(work / "podman.log").open("wb"), start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert service.poll() is None and time.monotonic() < deadline, \
                (work / "podman.log").read_text()[-2000:]
            time.sleep(0.05)
        moto = servers._launch(
            "moto-batch", lambda port: [sys.executable, "-c", MOTO, "-H", "127.0.0.1", "-p",
                                        str(port)], "/moto-api/", work,
            env={"DOCKER_HOST": f"unix://{sock}", "MOTO_DOCKER_NETWORK_MODE": "host",
                 "MOTO_IAM_LOAD_MANAGED_POLICIES": "true", **env})
        try:
            yield moto.url
        finally:
            moto.stop()
            containers.podman(env, "rm", "--force", "--all", check=False)
    finally:
        os.killpg(service.pid, 15)
        service.wait(timeout=10)


@pytest.fixture(scope="module")
def credentials_url() -> Iterator[str]:
    with ContainerCredentials() as server:
        yield f"{server.url}/role-credentials"


@pytest.fixture()
def home(tmp_path: Path, batch_moto: str, credentials_url: str, image: str,
         monkeypatch: pytest.MonkeyPatch) -> Path:
    servers.point_aws(monkeypatch, batch_moto)
    servers.moto_reset(batch_moto)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[providers.aws-batch]\nbucket = "s3://{BUCKET}/runs"\nimage = "{image}"\n'
        f"poll_interval = 0.1\n"
        f'job_env = {{ AWS_ENDPOINT_URL = "{batch_moto}", '
        f'AWS_CONTAINER_CREDENTIALS_FULL_URI = "{credentials_url}" }}\n')
    monkeypatch.setenv("DQLCTL_HOME", str(home))
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return home


def run_cli(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), Context(home=home, stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def markets(folder: Path) -> list[str]:
    """Two tiny markets (the bundled sample, twice) and one whose rows are broken."""
    folder.mkdir()
    sample = Path(resolve_data_path("test_small.csv"))
    for name in ("EURA", "EURB"):
        shutil.copy(sample, folder / f"{name}.csv")
    (folder / "BROKEN.csv").write_text("date,open\nnot a date,abc\n")
    return [str(folder / "EURA.csv"), str(folder / "EURB.csv"), str(folder / "BROKEN.csv")]


def active_jobs() -> list[str]:
    import boto3

    batch = boto3.client("batch")
    return [j["jobId"] for q in batch.describe_job_queues()["jobQueues"] for s in ACTIVE
            for j in batch.list_jobs(jobQueue=q["jobQueueName"], jobStatus=s)["jobSummaryList"]]


def test_a_sweep_of_batch_jobs_runs_fails_comes_down_and_is_collected(
        home: Path, tmp_path: Path) -> None:
    import boto3

    good_a, good_b, broken = markets(tmp_path / "data")
    engine = ["--", "--n_envs", "2", "--torch_threads", "1"]
    # a run whose data is broken, submitted first: it fails while the sweep runs
    code, _, err = run_cli(home, "launch", "--provider", "aws-batch", "--data", broken,
                           "--agent-type", "dql", "--episodes", "2", "--name", "broken",
                           "--", "--n_envs", "2")
    assert code == 0, err
    code, out, err = run_cli(home, "sweep", "launch", "--provider", "aws", "--backend", "batch",
                             "--data", good_a, "--data", good_b, "--seeds", "2",
                             "--agent-type", "dql", "--episodes", "2", "--name", "grid",
                             "--follow", "--json", *engine)
    assert code == 0, err
    sweep = json.loads(out)
    assert sweep["provider"] == "aws-batch" and sweep["counts"] == {"SUCCEEDED": 4}, sweep

    ctx = Context(home=home)
    members = [r for r in ctx.registry.list() if r.name != "broken"]
    batch = boto3.client("batch")
    jobs = batch.describe_jobs(jobs=[r.instance["instance_id"] for r in members])["jobs"]
    # one job per member, with the member's own parameters; the guide's job definition
    assert sorted(j["parameters"]["experiment_name"] for j in jobs) == sorted(
        r.name for r in members)
    assert {j["parameters"]["data_file"].rsplit("/", 1)[-1] for j in jobs} == \
        {"EURA.csv", "EURB.csv"}
    assert all(j["parameters"]["data_file"].startswith(f"s3://{BUCKET}/runs/") for j in jobs)
    (definition,) = batch.describe_job_definitions(jobDefinitionName=JOB_DEFINITION,
                                                   status="ACTIVE")["jobDefinitions"]
    container = definition["containerProperties"]
    assert container["command"] == [*GUIDE_COMMAND, *RUN_FLAGS]
    retry = definition["retryStrategy"]["evaluateOnExit"][0]    # moto lowercases the action
    assert (retry["onStatusReason"], retry["action"].upper()) == ("Host EC2*", "RETRY")
    # no secret in the job definition: the token is an SSM SecureString it names
    assert TOKEN not in json.dumps(definition)
    (secret,) = container["secrets"]
    assert secret["name"] == "TELEGRAM_BOT_TOKEN" and ":parameter/dqlctl/" in secret["valueFrom"]
    param = boto3.client("ssm").get_parameter(Name=secret["valueFrom"].split(":parameter")[1],
                                              WithDecryption=True)["Parameter"]
    assert param["Type"] == "SecureString" and param["Value"] == TOKEN
    role = container["jobRoleArn"].rsplit("/", 1)[1]
    policy = json.dumps(boto3.client("iam").get_role_policy(
        RoleName=role, PolicyName="run-bucket")["PolicyDocument"])
    assert f"arn:aws:s3:::{BUCKET}" in policy and "ssm:GetParameters" in policy

    # results straight to the bucket, copied home for the comparison
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket=BUCKET, Prefix="runs/")["Contents"]}
    for run in members:
        assert f"runs/{run.id}/{run.name}/test_metrics.json" in keys
        assert (Path(run.results_uri) / "test_metrics.json").exists()
    arm = sweep["comparison"]["arms"][0]
    assert "error" not in arm and arm["summary"]["n_markets"] == 2, arm
    # logs from CloudWatch: the engine's lines without its events
    code, out, _ = run_cli(home, "logs", members[0].id)
    assert code == 0 and "@dql-event" not in out and members[0].name in out, out[-2000:]

    # the broken run: FAILED with the container's exit code and its log's last line
    deadline = time.monotonic() + 60
    while not (failed := ctx.registry.get(
            next(r.id for r in ctx.registry.list() if r.name == "broken"))).terminal:
        assert time.monotonic() < deadline, failed.state
        run_cli(home, "ps")
        time.sleep(0.5)
    assert failed.state == reg.FAILED and failed.exit_code not in (None, 0), failed
    assert failed.reason.startswith(f"engine exited with code {failed.exit_code}: "), \
        failed.reason
    code, out, _ = run_cli(home, "show", failed.id)
    assert code == 0 and f"engine exited with code {failed.exit_code}" in out

    # a sweep brought down while its job runs: nothing left running
    code, out, err = run_cli(home, "sweep", "launch", "--provider", "aws-batch", "--data",
                             good_a, "--agent-type", "dql", "--episodes", "500",
                             "--name", "long", "--json", *engine)
    assert code == 0, err
    long_sweep = json.loads(out)
    assert active_jobs(), "the long sweep's job is not on the queue"
    code, _, err = run_cli(home, "sweep", "down", long_sweep["id"], "--yes")
    assert code == 0, err
    assert active_jobs() == []
    (long_run,) = ctx.registry.sweep_runs(long_sweep["id"])
    assert ctx.registry.get(long_run.id).state == reg.CANCELLED
    # gc: the reusable queue, environment, definition, secret, roles and group go
    code, out, err = run_cli(home, "gc", "--yes", "--json")
    assert code == 0, err
    assert batch.describe_job_queues()["jobQueues"] == []
    assert batch.describe_compute_environments()["computeEnvironments"] == []
    assert batch.describe_job_definitions(status="ACTIVE")["jobDefinitions"] == []
    assert not [r for r in boto3.client("iam").list_roles()["Roles"]
                if r["RoleName"].startswith("dqlctl-batch-")]
    ctx.close()
