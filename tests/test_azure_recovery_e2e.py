"""Azure spot recovery end to end, on the stand-ins of tests/test_azure_e2e.py: the VM's engine
writes its results and checkpoints to Blob itself with its managed identity (Azurite in OAuth
mode over HTTPS behind a gate that admits only the identity's storage token, from IMDS, on the
container its role is scoped to: tests/token_gate.py), so a Spot VM evicted is relaunched and
resumes from its container (tests/spot_recovery.py has the flow).

With a Scheduled Events ``Preempt`` first (acknowledged once the checkpoint is uploaded), the
engine checkpoints mid-episode and loses nothing; without one it loses what it did since its
last periodic checkpoint, at most one checkpoint interval. Both leave nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from providers.storage import open_store
from tests import spot_recovery as flow
from tests import test_azure_e2e as azure
from tests.fake_azure import FakeAzure
from tests.fake_metadata import FakeAzureImds

arm, vm, imds, home = azure.arm, azure.vm, azure.imds, azure.home

CONTAINER = "results"


def events_in(name: str) -> list[dict[str, Any]]:
    store, prefix = open_store(f"az://{CONTAINER}/runs/{name}")
    return [json.loads(x) for x in store.get_bytes(f"{prefix}/events.jsonl").decode()
            .splitlines()]


def cloud(arm: FakeAzure, imds: FakeAzureImds) -> flow.Cloud:
    def take_back(run: Any) -> None:
        group = f"dqlctl-{run.id}"
        arm.evict(group, group)          # eviction policy Delete: the VM is gone

    return flow.Cloud("azure", f"az://{CONTAINER}/runs", events_in,
                      lambda: imds.preempt(in_s=30), take_back, imds.scheduled.clear)


@pytest.mark.parametrize("notice", [True, False], ids=["notice", "no-notice"])
def test_an_azure_spot_vm_evicted_resumes_from_its_container(
        notice: bool, home: Path, arm: FakeAzure, vm: dict[str, Any], imds: FakeAzureImds,
        azurite_oauth: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.storage.blob import BlobServiceClient

    spot = cloud(arm, imds)
    name = "warned" if notice else "unwarned"
    with azure.blob_gate(arm, home, azurite_oauth, monkeypatch) as gate:
        blobs = BlobServiceClient.from_connection_string(
            azurite_oauth.extra["connection_string"])
        if not blobs.get_container_client(CONTAINER).exists():
            blobs.create_container(CONTAINER)
        run, release = flow.held_run(home, spot, name)
        group = f"dqlctl-{run.id}"
        principals = [arm.vm(group, group)["identity"]["principalId"]]
        if notice:
            flow.noticed_within(run, spot, 30)   # the cloud's window
            assert len(imds.acknowledged) == 1      # told Azure to go on, once uploaded
        flow.taken_back(vm, run, spot, release)
        final = flow.recovered(home, run)
        figures = flow.figures(home, final, spot, name, notice)
        # both machines wrote with their own identity's token from IMDS (a new VM, a new
        # identity), to the container only; nothing was refused
        assert {c for _, _, c in gate.passed} == {CONTAINER}
        who = {w for w, _, _ in gate.passed}
        assert len(who) == 2 and principals[0] in who, who
        assert gate.refused == [] and imds.token_requests >= 2
    flow.lost_no_more_than_allowed(figures, notice)
    assert arm.leftovers() == azure.NOTHING
