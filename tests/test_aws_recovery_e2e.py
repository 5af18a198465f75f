"""AWS spot recovery end to end, in the same flow as the GCE and Azure ones
(tests/spot_recovery.py), on the stand-ins of tests/test_aws_e2e.py: the VM's engine writes its
results and checkpoints to S3 itself with the instance role's credentials (from the metadata
service), so a spot instance taken back is relaunched and resumes from its bucket.

With an ``instance-action`` notice first (IMDSv2; two minutes' warning), the engine
checkpoints mid-episode and loses nothing; without one it loses what it did since its last
periodic checkpoint, at most one checkpoint interval. Both leave nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests import spot_recovery as flow
from tests import test_aws_e2e as aws
from tests.fake_imds import FakeImds

vm, imds, home = aws.vm, aws.imds, aws.home

BUCKET = "dqlctl-results"


def events_in(name: str) -> list[dict[str, Any]]:
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"runs/{name}/events.jsonl")["Body"]
    return [json.loads(x) for x in body.read().decode().splitlines()]


def cloud(imds: FakeImds) -> flow.Cloud:
    def take_back(run: Any) -> None:
        boto3.client("ec2").terminate_instances(InstanceIds=run.instance_ids)

    return flow.Cloud("aws", f"s3://{BUCKET}/runs", events_in,
                      lambda: imds.notice("terminate", in_s=120), take_back, imds.new_instance,
                      args=["--image-id", aws.ami()])


@pytest.mark.parametrize("notice", [True, False], ids=["notice", "no-notice"])
def test_an_aws_spot_instance_taken_back_resumes_from_its_bucket(
        notice: bool, home: Path, vm: dict[str, Any], imds: FakeImds) -> None:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    spot = cloud(imds)
    name = "warned" if notice else "unwarned"
    run, release = flow.held_run(home, spot, name)
    if notice:
        flow.noticed_within(run, spot, 120)   # the cloud's window
    flow.taken_back(vm, run, spot, release)
    final = flow.recovered(home, run)
    figures = flow.figures(home, final, spot, name, notice)
    flow.lost_no_more_than_allowed(figures, notice)
    # both machines wrote with the instance role's credentials, from the metadata service
    assert imds.credential_requests >= 2
    assert final.instance_ids != run.instance_ids        # a new instance took over
    assert aws.leftovers(run.id) == aws.NOTHING
