"""One suite, every compute provider (local, aws, gcp, azure), through the same verbs (rclone's
``fstests.Run``): check; launch -> wait_ready -> start_job -> the job's events to ``finished``
-> results in the run's results folder; list_instances by tag; terminate twice; describe after.

Each cloud runs against its local stand-in (moto server; the GCE and ARM servers of
``tests/fake_gce.py`` and ``tests/fake_azure.py``) with a real sshd as the VM; the engine is the
real one, one short episode.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from providers import COMPUTE_PROVIDERS, get_provider
from providers.base import (
    Capability,
    CheckResult,
    ComputeProvider,
    Instance,
    JobSpec,
    LaunchSpec,
    SshTarget,
)
from providers.layout import resolve_data_path
from tests.fake_azure import FakeAzure, write_fake_az
from tests.fake_gce import FakeGce, write_adc_key
from tests.host_keys import seed_ec2_console
from tests.test_aws_e2e import ami
from tests.vm import AWS_KEYS, vm_sshd

CIDR = "198.51.100.7/32"


@dataclass
class World:
    """A provider wired to its stand-in, and what its launch spec needs."""

    provider: ComputeProvider
    extra: dict[str, Any] = field(default_factory=dict)   # LaunchSpec.extra
    gone: Callable[[str], bool] = lambda run_id: True     # the cloud holds nothing of the run


def _vm_settings(vm: dict[str, Any]) -> dict[str, Any]:
    return {"ssh_host_override": f"127.0.0.1:{vm['port']}", "ssh_user": "root",
            "remote_root": str(vm["root"]), "remote_python": sys.executable,
            "ready_timeout": 60}


@pytest.fixture(params=["local", "aws", "gcp", "azure"])
def world(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    name: str = request.param
    home = tmp_path / "home"
    if name == "local":
        yield World(get_provider("local", home=str(home)))
        return
    if name == "aws":
        import boto3

        endpoint = request.getfixturevalue("aws_env")
        command = AWS_KEYS.format(endpoint=endpoint)
        with vm_sshd(tmp_path / "vm", keys_command=command) as vm:
            seed_ec2_console(monkeypatch, [vm["host_key"]])
            image = ami()

            def aws_gone(run_id: str) -> bool:
                ec2 = boto3.client("ec2")
                live = [i for r in ec2.describe_instances(Filters=[
                    {"Name": "tag:dqlctl:run", "Values": [run_id]}])["Reservations"]
                    for i in r["Instances"] if i["State"]["Name"] != "terminated"]
                groups = ec2.describe_security_groups(Filters=[
                    {"Name": "tag:dqlctl:run", "Values": [run_id]}])["SecurityGroups"]
                return not live and not groups

            yield World(get_provider("aws", home=str(home), **_vm_settings(vm)),
                        {"ssh_cidr": CIDR, "image_id": image}, aws_gone)
        return
    if name == "gcp":
        with FakeGce() as gce:
            key = write_adc_key(tmp_path / "adc.json", f"{gce.url}/token", gce.project)
            monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
            monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
            with vm_sshd(tmp_path / "vm", gce.keys_url()) as vm:
                gce.vm_host_keys = [vm["host_key"]]
                yield World(get_provider(
                    "gcp", home=str(home), compute_endpoint=gce.url, iam_endpoint=gce.url,
                    storage_endpoint=gce.url, poll_interval=0.1, **_vm_settings(vm)),
                    {"ssh_cidr": CIDR},
                    lambda run_id: not any(gce.leftovers().values()))
        return
    with FakeAzure() as arm:
        write_fake_az(tmp_path / "bin")
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
        monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", arm.subscription)
        with vm_sshd(tmp_path / "vm", arm.keys_url()) as vm:
            arm.vm_host_keys = [vm["host_key"]]
            yield World(get_provider("azure", home=str(home), arm_endpoint=arm.url,
                                     poll_interval=0.05, **_vm_settings(vm)),
                        {"ssh_cidr": CIDR}, lambda run_id: not any(arm.leftovers().values()))


def spec_for(world: World, tmp_path: Path, run_id: str) -> LaunchSpec:
    workdir = tmp_path / "runs" / run_id
    experiment = "conformance"
    job = JobSpec(engine_args=["train", "--agent_type", "dql", "--episodes", "1",
                               "--experiment_name", experiment, "--n_envs", "4"],
                  data_file=resolve_data_path("test_small.csv"),
                  results_dir=str(workdir / "results"), experiment=experiment)
    return LaunchSpec(run_id=run_id, name=experiment, job=job, gpu="T4:1", runtime="native",
                      tags={"dqlctl:run": run_id}, workdir=str(workdir), extra=world.extra)


def test_every_provider_is_registered() -> None:
    assert {"local", "aws", "gcp", "azure"} <= set(COMPUTE_PROVIDERS)


def test_check(world: World) -> None:
    result = world.provider.check()
    assert isinstance(result, CheckResult) and result.provider == world.provider.name
    assert result.ok, [i for i in result.items if not i.ok]
    assert isinstance(world.provider, ComputeProvider)


def test_lifecycle(world: World, tmp_path: Path) -> None:
    provider = world.provider
    run_id = f"c0{os.getpid() % 1000:03d}{int(time.time() * 1000) % 1000:03d}"
    spec = spec_for(world, tmp_path, run_id)
    inst = provider.launch(spec)
    try:
        assert isinstance(inst, Instance) and inst.provider == provider.name
        assert inst.tags.get("dqlctl:run") == run_id
        inst = provider.wait_ready(inst)
        assert provider.describe(inst).state == "running"
        if Capability.SSH in provider.capabilities:
            target = provider.ssh_target(inst)
            assert isinstance(target, SshTarget) and target.host_key  # pinned at first contact
        inst = provider.start_job(inst, spec)
        # list by tag, exact and any-value, while it lives
        assert run_id in ids(provider.list_instances({"dqlctl:run": run_id}))
        assert run_id in ids(provider.list_instances({"dqlctl:run": None}))
        assert provider.list_instances({"dqlctl:run": "not-a-run"}) == []

        handle = provider.job(inst, asdict(spec))
        try:
            deadline = time.monotonic() + 180
            while handle.status().running:
                assert time.monotonic() < deadline, "the job did not end"
                time.sleep(0.2)
            status = handle.status()
            events = [json.loads(x) for x in read_all(handle, "events").splitlines() if x]
        finally:
            handle.close()
        assert status.exit_code == 0, (status, read_all(provider.job(inst, asdict(spec)), "log"))
        assert [e["event"] for e in events].count("episode") == 1
        assert events[-1]["event"] == "finished"
        collect = getattr(provider, "collect", None)
        if collect is not None:
            collect(inst, asdict(spec))
        results = Path(spec.job.results_dir) / spec.job.experiment / "events.jsonl"
        collected = [json.loads(x) for x in results.read_text().splitlines() if x]
        assert collected == events            # every event came home, as it was streamed
    finally:
        provider.terminate(inst)
    provider.terminate(inst)                                  # idempotent
    assert provider.describe(inst).state == "terminated"
    assert run_id not in ids(provider.list_instances({"dqlctl:run": None}))
    assert world.gone(run_id)


def ids(instances: list[Instance]) -> list[str | None]:
    return [i.tags.get("dqlctl:run") for i in instances]


def read_all(handle: Any, name: str) -> str:
    data, offset = b"", 0
    while chunk := handle.read(name, offset):
        data += chunk
        offset += len(chunk)
    return data.decode()
