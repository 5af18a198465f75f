"""The AWS Batch provider's own rules, without containers (tests/test_batch_e2e.py runs them):
the member's command and parameters, how a job's state reads, its log split from its events
across attempts, and the sweep's ``--dry-run`` and ``--backend`` flag."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from dqlctl.cli import main
from dqlctl.context import Context
from engine.events import STDOUT_PREFIX
from providers import get_provider
from providers.aws.batch import GUIDE_COMMAND, RUN_FLAGS, job_command, split_engine_args
from providers.aws.batch_jobs import EVENT_PREFIX, BatchJobHandle, job_status
from providers.base import JobSpec, LaunchSpec, ProviderError
from providers.layout import resolve_data_path


def test_the_event_prefix_is_the_engines() -> None:
    assert EVENT_PREFIX == STDOUT_PREFIX


def test_a_member_gets_the_guides_command_and_its_own_flags_after() -> None:
    guide = ["full-workflow", "--agent_type", "dql", "--episodes", "5",
             "--experiment_name", "m1"]
    assert job_command(guide) is None
    assert split_engine_args(guide)[1] == {"agent_type": "dql", "episodes": "5",
                                          "experiment_name": "m1"}
    own = job_command([*guide, "--skip_tuning", "--seed", "2", "--resume"])
    assert own == [*GUIDE_COMMAND, *RUN_FLAGS, "--skip_tuning", "--seed", "2"]
    assert job_command(["train", "--agent_type", "dql"])[0] == "train"  # type: ignore[index]


def test_how_a_job_reads() -> None:
    assert job_status({"status": "RUNNABLE"}).running
    assert job_status({"status": "SUCCEEDED", "container": {"exitCode": 0}}).exit_code == 0
    failed = job_status({"status": "FAILED", "statusReason": "Essential container in task "
                         "exited", "attempts": [{"container": {"exitCode": 2}}]})
    assert (failed.running, failed.exit_code, failed.reason) == (False, 2, None)
    gone = job_status({"status": "FAILED", "statusReason": "Host EC2 (instance i-1) "
                       "terminated."})
    assert gone.exit_code is None and gone.reason.startswith("Host EC2")  # type: ignore[union-attr]
    assert gone.notice and gone.notice["cloud"] == "aws"


class FakeBatch:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job

    def describe_jobs(self, jobs: list[str]) -> dict[str, Any]:
        return {"jobs": [self.job]}


class FakeLogs:
    """Streams of messages, served two per page with forward tokens, as CloudWatch does."""

    def __init__(self, streams: dict[str, list[str]]) -> None:
        self.streams = streams

    def get_log_events(self, logGroupName: str, logStreamName: str,  # noqa: N803
                       startFromHead: bool, nextToken: str | None = None) -> dict[str, Any]:
        lines = self.streams[logStreamName]
        start = int(nextToken or 0)
        end = min(start + 2, len(lines))
        return {"events": [{"message": m} for m in lines[start:end]],
                "nextForwardToken": str(end)}


def test_the_log_and_the_events_come_from_every_attempts_stream_in_order() -> None:
    event = EVENT_PREFIX + json.dumps({"event": "episode", "episode": 1})
    logs = FakeLogs({"a/1": ["first", event, "killed"], "a/2": ["resumed"]})
    job = {"status": "RUNNING", "attempts": [{"container": {"logStreamName": "a/1"}}],
           "container": {"logStreamName": "a/2"}}
    handle = BatchJobHandle(FakeBatch(job), logs, "job-1")
    log = handle.read("log", 0)
    assert log == b"first\nkilled\nresumed\n"
    assert handle.read("events", 0) == (event + "\n").encode()
    logs.streams["a/2"].append("finished")
    assert handle.read("log", len(log)) == b"finished\n"      # fetched from the last token
    assert handle.read("log", len(log) + 9) == b""


def spec(results_dir: str) -> LaunchSpec:
    job = JobSpec(["full-workflow"], resolve_data_path("test_small.csv"), results_dir, "x")
    return LaunchSpec(run_id="r1", name="x", job=job)


def test_results_go_to_a_bucket() -> None:
    bare = get_provider("aws-batch")
    with pytest.raises(ProviderError) as exc:
        bare.results_place(spec("/tmp/here"))
    assert exc.value.field == "results_dir"
    assert bare.results_place(spec("s3://b/p/")) == "s3://b/p"
    assert get_provider("aws-batch", bucket="s3://b/runs/").results_place(
        spec("/tmp/here")) == "s3://b/runs/r1"


def run(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), Context(home=home, stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def test_a_sweeps_dry_run_says_where_its_members_go(tmp_path: Path, aws_env: str) -> None:
    (tmp_path / "config.toml").write_text('[providers.aws-batch]\nbucket = "s3://b/runs"\n')
    code, out, err = run(tmp_path, "sweep", "launch", "--provider", "aws", "--backend", "batch",
                         "--data", "test_small.csv", "--seeds", "2", "--dry-run")
    assert code == 0, err
    assert "queue dqlctl-spot-g4dn-xlarge" in out and "SPOT, g4dn.xlarge" in out
    assert "DQL-Training" in out and "concurrency  100" in out
    assert "/h per running member (g4dn.xlarge spot, catalog)" in out
    code, _, err = run(tmp_path, "sweep", "launch", "--provider", "gcp", "--backend", "batch",
                       "--data", "test_small.csv", "--dry-run")
    assert code == 2 and "only AWS Batch is built" in err
