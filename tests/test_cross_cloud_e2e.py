"""A spot run preempted on AWS with no capacity left there resumes on GCE from its checkpoint.

The stand-ins of both clouds at once: AWS (moto server, EC2 behind tests/fault_proxy.py, an sshd
VM trusting EC2's key pairs, the instance role's credentials from tests/fake_imds.py) and GCE
(tests/fake_gce.py, an sshd VM trusting its keys, the metadata server's tokens, fake-gcs-server
behind the token gate). The run is launched with ``--provider auto`` (the
cheapest T4 is Azure's, whose credentials are missing here, so AWS's) and
``--failover-results gs://...``; its engine writes to S3 and holds mid-episode 5, after its
periodic checkpoint of episode 3. The cloud takes the machine back; from then on EC2 refuses
every RunInstances for capacity, in every region. A look at the run relaunches it: every AWS
region refuses, Azure is passed over (no credentials), and the run moves to GCE: its results
folder is copied from S3 to GCS by the sync core, the GCE VM's engine resumes from the copied
checkpoint and finishes there, writing to GCS with its own service account. Each episode is in
the GCS events.jsonl exactly once; the history says every move; nothing is left on either
cloud.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from dqlctl import registry as reg
from dqlctl import runs
from dqlctl.cli import main
from dqlctl.context import Context
from providers.storage import open_store
from tests import spot_recovery as flow
from tests import test_gcp_e2e as gcp
from tests.fake_gce import FakeGce
from tests.fake_imds import FakeImds
from tests.fault_proxy import FaultProxy
from tests.held_engine import write_python
from tests.host_keys import seed_ec2_console
from tests.test_aws_e2e import NOTHING as AWS_NOTHING
from tests.test_aws_e2e import ami, kill_vm_processes, leftovers
from tests.token_gate import TokenGate
from tests.vm import AWS_KEYS, vm_sshd

gce, metadata, gcs_gate, results_bucket = gcp.gce, gcp.metadata, gcp.gcs_gate, gcp.results_bucket
NAME = "crossing"


@pytest.fixture()
def gce_vm(gce: FakeGce, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with vm_sshd(tmp_path / "gce-disk", gce.keys_url()) as info:
        gce.vm_host_keys = [info["host_key"]]
        yield info


@pytest.fixture()
def aws_vm(aws_env: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with vm_sshd(tmp_path / "aws-disk", keys_command=AWS_KEYS.format(endpoint=aws_env)) as info:
        yield info


@pytest.fixture()
def proxy(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    fault = FaultProxy(aws_env).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", fault.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")     # botocore would retry each 500 4 times
    yield fault
    fault.stop()


@pytest.fixture()
def home(tmp_path: Path, aws_env: str, proxy: FaultProxy, aws_vm: dict[str, Any],
         gce: FakeGce, gce_vm: dict[str, Any], metadata: Any, gcs_gate: TokenGate,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """One dqlctl home with both clouds: AWS's VM runs the held engine, GCE's the real one."""
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_SUBSCRIPTION_ID", "AZURE_CLIENT_ID",
                 "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)      # Azure: no credentials, passed over
    home = tmp_path / "dqlctl-home"
    home.mkdir()
    held = write_python(home / "held-python", flow.HOLD_AFTER, home / "release")
    imds = FakeImds()
    imds.start()
    image = ami()
    (home / "config.toml").write_text(
        "[providers.gcp]\n"
        f'compute_endpoint = "{gce.url}"\n'
        f'iam_endpoint = "{gce.url}"\n'
        f'storage_endpoint = "{gce.url}"\n'
        f'ssh_host_override = "127.0.0.1:{gce_vm["port"]}"\n'
        'ssh_user = "root"\n'
        f'remote_root = "{gce_vm["root"]}"\n'
        f'remote_python = "{sys.executable}"\n'
        f'metadata_endpoint = "{metadata.url}"\n'
        "ready_timeout = 60\npoll_interval = 0.1\n"
        "[providers.gcp.vm_env]\n"
        f'API_ENDPOINT_OVERRIDE = "{gcs_gate.url}"\n'
        "[providers.aws]\n"
        f'image_id = "{image}"\n'        # the operator's own AMI (moto has no DLAMI parameter)
        f'ssh_host_override = "127.0.0.1:{aws_vm["port"]}"\n'
        'ssh_user = "root"\n'
        f'remote_root = "{aws_vm["root"]}"\n'
        f'remote_python = "{held}"\n'
        "ready_timeout = 60\n"
        "[providers.aws.vm_env]\n"
        f'AWS_ENDPOINT_URL = "{aws_env}"\n'
        f'AWS_EC2_METADATA_SERVICE_ENDPOINT = "{imds.url}"\n'
        'AWS_METADATA_SERVICE_TIMEOUT = "10"\nAWS_METADATA_SERVICE_NUM_ATTEMPTS = "3"\n')
    monkeypatch.setenv("DQLCTL_HOME", str(home))
    seed_ec2_console(monkeypatch, [aws_vm["host_key"]])
    yield home
    imds.stop()


def test_a_run_preempted_on_aws_with_no_capacity_left_resumes_on_gce(
        home: Path, proxy: FaultProxy, aws_vm: dict[str, Any], gce: FakeGce,
        gcs_gate: TokenGate, results_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    boto3.client("s3").create_bucket(Bucket="dqlctl-results")
    # auto: the cheapest T4 is Azure's, which has no credentials here: AWS is next
    assert main(["launch", "--provider", "auto", "--gpu", "T4:1", "--data", "test_small.csv",
                 "--agent-type", "dql", "--command", "train", "--ssh-cidr", "198.51.100.7/32",
                 "--episodes", str(flow.EPISODES), "--name", NAME,
                 "--results-dir", "s3://dqlctl-results/runs",
                 "--failover-results", results_bucket, "--",
                 "--n_envs", "4", "--checkpoint_every", str(flow.CHECKPOINT_EVERY)],
                ctx=Context(home=home)) == 0
    (run,) = Context(home=home).registry.list()
    assert (run.provider, run.state) == ("aws", reg.RUNNING), run.reason
    flow.wait_for("the engine did not reach its hold", (home / "release.held").exists)

    # the cloud takes the machine back, and has no room left for it anywhere
    boto3.client("ec2").terminate_instances(InstanceIds=run.instance_ids)
    os.kill(aws_vm["pid"], signal.SIGKILL)
    kill_vm_processes(run.id)
    proxy.refuse("RunInstances", "InsufficientInstanceCapacity")
    (home / "release").touch()

    ctx = Context(home=home)
    (row,) = runs.reconcile_all(ctx)
    assert (row.provider, row.state) == ("gcp", reg.RUNNING), row.reason
    assert row.results_uri == f"{results_bucket}/{NAME}"
    # should it have to move again, AWS's bucket is where it can go back to
    assert row.spec["extra"]["failover_results"] == {"aws": "s3://dqlctl-results/runs",
                                                     "gcp": results_bucket}
    events = ctx.registry.events(run.id)
    refused = {e["data"]["region"] for e in events if e["kind"] == "capacity"}
    assert refused == {"us-east-1", "us-west-2", "eu-west-1"}     # every AWS region it offers
    skipped = [e["data"]["cloud"] for e in events if e["kind"] == "failover_skipped"]
    assert skipped == ["azure", "azure"]        # at launch, and again at the move
    (moved,) = [e["data"] for e in events if e["kind"] == "failover" and "to_cloud" in e["data"]]
    # the checkpoint and the events so far went from S3 to GCS before the GCE VM started
    assert (moved["from_cloud"], moved["to_cloud"]) == ("aws", "gcp") and moved["copied"] >= 2

    final = runs.follow(Context(home=home), row)
    assert final.state == reg.SUCCEEDED, final.reason
    log = (Path(final.instance["extra"]["workdir"]) / "engine.log").read_text()
    assert "resumed from ckpt-" in log and "episode 3/" in log
    store, prefix = open_store(f"{results_bucket}/{NAME}")
    lines = store.get_bytes(f"{prefix}/events.jsonl").decode().splitlines()
    episodes = [json.loads(x)["episode"] for x in lines if json.loads(x)["event"] == "episode"]
    assert episodes == list(range(1, flow.EPISODES + 1))   # each once, in order, across clouds
    # the GCE VM wrote with its run's service account, to the failover bucket only
    email = f"dqlctl-{run.id}@{gce.project}.iam.gserviceaccount.com"
    assert {(who, bucket) for who, _, bucket in gcs_gate.passed} == {(email, gcp.BUCKET)}
    capsys.readouterr()
    assert main(["show", run.id], ctx=Context(home=home)) == 0
    shown = capsys.readouterr().out
    assert "failover  (no capacity on aws: moving to gcp" in shown
    assert "failover_skipped  (azure" in shown
    for region in ("us-east-1", "us-west-2", "eu-west-1"):
        assert leftovers(run.id, region) == AWS_NOTHING
    assert gce.leftovers() == gcp.NOTHING
