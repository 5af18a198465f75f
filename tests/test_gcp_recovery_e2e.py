"""GCE spot recovery end to end, on the stand-ins of tests/test_gcp_e2e.py: the VM's engine
writes its results and checkpoints to GCS itself (fake-gcs-server behind a gate that admits only
the run's service account's token, from the metadata server: tests/token_gate.py), so a Spot VM
taken back is relaunched and resumes from its bucket (tests/spot_recovery.py has the flow).

With a preemption notice first (``instance/preempted`` turns TRUE), the engine checkpoints
mid-episode and loses nothing; without one it loses what it did since its last periodic
checkpoint, at most one checkpoint interval. Both leave nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from providers.storage import open_store
from tests import spot_recovery as flow
from tests import test_gcp_e2e as gcp
from tests.fake_gce import FakeGce
from tests.fake_metadata import FakeGceMetadata
from tests.token_gate import TokenGate

gce, vm, metadata, gcs_gate, home, results_bucket = (
    gcp.gce, gcp.vm, gcp.metadata, gcp.gcs_gate, gcp.home, gcp.results_bucket)


def events_in(name: str) -> list[dict[str, Any]]:
    store, prefix = open_store(f"gs://{gcp.BUCKET}/runs/{name}")
    return [json.loads(x) for x in store.get_bytes(f"{prefix}/events.jsonl").decode()
            .splitlines()]


def cloud(gce: FakeGce, metadata: FakeGceMetadata, results: str) -> flow.Cloud:
    def take_back(run: Any) -> None:
        ((zone, name),) = list(gce.instances)
        gce.preempt(zone, name)          # termination action DELETE: the instance is gone

    return flow.Cloud("gcp", results, events_in, metadata.preempt, take_back,
                      metadata.new_instance)


@pytest.mark.parametrize("notice", [True, False], ids=["notice", "no-notice"])
def test_a_gce_spot_vm_taken_back_resumes_from_its_bucket(
        notice: bool, home: Path, gce: FakeGce, vm: dict[str, Any],
        metadata: FakeGceMetadata, gcs_gate: TokenGate, results_bucket: str) -> None:
    spot = cloud(gce, metadata, results_bucket)
    name = "warned" if notice else "unwarned"
    run, release = flow.held_run(home, spot, name)
    email = f"dqlctl-{run.id}@{gce.project}.iam.gserviceaccount.com"
    if notice:
        flow.noticed_within(run, spot, 30)   # the cloud's window
    flow.taken_back(vm, run, spot, release)
    final = flow.recovered(home, run)
    figures = flow.figures(home, final, spot, name, notice)
    flow.lost_no_more_than_allowed(figures, notice)
    # both machines wrote with the run's service account's tokens from the metadata server,
    # to the run's bucket only
    assert metadata.token_requests >= 2
    assert {(who, bucket) for who, _, bucket in gcs_gate.passed} == {(email, gcp.BUCKET)}
    assert gce.leftovers() == gcp.NOTHING
