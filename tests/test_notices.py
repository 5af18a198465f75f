"""The preemption notice watchers (providers/notices.py) against the metadata stand-ins
(tests/fake_imds.py, tests/fake_metadata.py), with their real HTTP code, and the VM's supervisor
acting on a notice (providers/local/supervisor.py ``--notices``) with a small stand-in engine:
the notice event, SIGTERM (checkpoint and stop) or SIGUSR1 (checkpoint and go on), exit.json
carrying the notice, Azure's acknowledgement after the engine ended. Then dqlctl's fold of those
events into the run's history (dqlctl/runs/jobs.py) and its rendering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.render import history_lines
from dqlctl.runs.jobs import apply_engine_events
from providers.notices import (
    PREEMPT,
    REBALANCE,
    AwsWatcher,
    AzureWatcher,
    GceWatcher,
    Notice,
    NoticeError,
    watch,
    watcher_for,
)
from tests.fake_azure import FakeAzure
from tests.fake_gce import FakeGce
from tests.fake_imds import FakeImds
from tests.fake_metadata import FakeAzureImds, FakeGceMetadata

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def imds() -> Iterator[FakeImds]:
    with FakeImds() as server:
        yield server


@pytest.fixture()
def gce_meta() -> Iterator[FakeGceMetadata]:
    with FakeGceMetadata(FakeGce()) as server:
        yield server


@pytest.fixture()
def azure_imds() -> Iterator[FakeAzureImds]:
    with FakeAzureImds(FakeAzure()) as server:
        yield server


def test_aws_nothing_then_a_termination_notice_then_a_rebalance(imds: FakeImds) -> None:
    watcher = watcher_for("aws", {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url})
    assert isinstance(watcher, AwsWatcher) and watcher.poll() == []
    assert imds.notice_reads == 2 and len(imds.tokens) == 1     # one token, reused
    imds.notice("terminate", in_s=120)
    (notice,) = watcher.poll()
    assert (notice.cloud, notice.kind, notice.action) == ("aws", PREEMPT, "terminate")
    assert notice.deadline is not None and 100 < notice.deadline - time.time() <= 121
    imds.rebalance()
    assert [n.kind for n in watcher.poll()] == [PREEMPT, REBALANCE]
    imds.tokens.clear()             # the token expired: a new one, and the look goes on
    assert len(watcher.poll()) == 2 and len(imds.tokens) == 1


def test_aws_a_metadata_service_that_is_not_there_is_an_error_not_a_notice() -> None:
    watcher = AwsWatcher("http://127.0.0.1:9")
    with pytest.raises(NoticeError):
        watcher.poll()


def test_gce_waits_for_the_change_and_sees_the_preemption(gce_meta: FakeGceMetadata) -> None:
    watcher = watcher_for("gcp", {"DQLCTL_GCE_METADATA_URL": gce_meta.url,
                                  "DQLCTL_NOTICE_POLL_S": "30"})
    assert isinstance(watcher, GceWatcher) and watcher.poll() == []   # FALSE, and its ETag
    found: list[list[Notice]] = []
    waiting = threading.Thread(target=lambda: found.append(watcher.poll()))
    waiting.start()
    wait_for(lambda: any("wait_for_change" in p for _, p, _ in gce_meta.received) or
             len(gce_meta.received) >= 2)
    gce_meta.preempt()              # the blocked look returns at once, not after 30 s
    waiting.join(timeout=10)
    assert not waiting.is_alive()
    (notice,) = found[0]
    assert (notice.cloud, notice.kind) == ("gcp", PREEMPT)
    assert notice.deadline is not None and notice.deadline - time.time() <= 30


def test_gce_without_the_flavor_header_is_refused(gce_meta: FakeGceMetadata) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{gce_meta.url}/computeMetadata/v1/instance/preempted")
    assert refused.value.code == 403


def test_azure_a_preempt_event_is_seen_and_acknowledged(azure_imds: FakeAzureImds) -> None:
    watcher = watcher_for("azure", {"DQLCTL_AZURE_IMDS_URL": azure_imds.url})
    assert isinstance(watcher, AzureWatcher) and watcher.poll() == []
    event = azure_imds.preempt(in_s=30)
    (notice,) = watcher.poll()
    assert (notice.kind, notice.action, notice.event_id) == (PREEMPT, "Preempt",
                                                             event["EventId"])
    assert notice.deadline is not None and 25 < notice.deadline - time.time() <= 31
    assert watcher.acknowledge(notice)
    assert azure_imds.acknowledged == [event["EventId"]] and watcher.poll() == []
    with pytest.raises(NoticeError):  # an id Azure never gave
        watcher.acknowledge(Notice("azure", PREEMPT, "Preempt", None, "NOT-AN-EVENT"))


def test_watch_reports_each_notice_once_and_survives_a_failing_service(
        imds: FakeImds) -> None:
    watcher = AwsWatcher(imds.url, poll_s=0.01)
    seen: list[Notice] = []
    errors: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(watcher, seen.append, stop),
                              kwargs={"on_error": errors.append})
    thread.start()
    try:
        imds.notice()
        wait_for(lambda: bool(seen))
        reads = imds.notice_reads
        wait_for(lambda: imds.notice_reads >= reads + 6)    # it keeps looking, says it once
    finally:
        stop.set()
        thread.join(timeout=5)
    assert [n.kind for n in seen] == [PREEMPT] and errors == []

    class Counted(AwsWatcher):
        looks = 0

        def poll(self) -> list[Notice]:
            Counted.looks += 1
            return super().poll()

    broken = Counted("http://127.0.0.1:9", poll_s=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(broken, seen.append, stop),
                              kwargs={"on_error": errors.append})
    thread.start()
    try:
        wait_for(lambda: Counted.looks >= 10)   # ten failed looks, one error said
    finally:
        stop.set()
        thread.join(timeout=5)
    assert len(errors) == 1 and "cannot read aws preemption notices" in errors[0]


def wait_for(condition: Any, timeout: float = 60) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` s (a hang, not a slow box)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# -- the supervisor on a notice --------------------------------------------------------------

ENGINE = r'''
import json, os, signal, sys, time
events = sys.argv[1]
state = {"stop": False, "ckpt": False}
def emit(kind, **fields):
    with open(events, "a") as fh:
        fh.write(json.dumps({"v": 1, "ts": round(time.time(), 3), "event": kind, **fields}) + "\n")
signal.signal(signal.SIGTERM, lambda *a: state.update(stop=True))
signal.signal(signal.SIGUSR1, lambda *a: state.update(ckpt=True))
emit("run_started")
open(sys.argv[2], "w").close()      # ready: handlers installed
episode = 0
while True:
    time.sleep(0.01)
    if state["ckpt"]:
        state["ckpt"] = False
        emit("checkpoint", episode=episode, path="ckpt")
    if state["stop"]:
        emit("checkpoint", episode=episode, path="ckpt")
        emit("failed", reason="stopped by SIGTERM")
        sys.exit(143)
    if os.path.exists(sys.argv[3]):
        sys.exit(0)
    episode += 1
'''


def start_supervisor(tmp_path: Path, cloud: str, env: dict[str, str]) -> dict[str, Any]:
    work = tmp_path / "work"
    work.mkdir()
    engine = tmp_path / "engine.py"
    engine.write_text(ENGINE)
    events, ready, done = work / "events.jsonl", tmp_path / "ready", tmp_path / "done"
    proc = subprocess.Popen(
        [sys.executable, "-m", "providers.local.supervisor", f"--workdir={work}",
         "--tag=dqlctl:run=notice-test", f"--notices={cloud}", f"--events={events}", "--",
         sys.executable, str(engine), str(events), str(ready), str(done)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "DQLCTL_NOTICE_POLL_S": "0.05", **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout
        time.sleep(0.01)
    return {"proc": proc, "work": work, "events": events, "done": done}


def kinds(events: Path) -> list[str]:
    return [json.loads(x)["event"] for x in events.read_text().splitlines()]


def test_the_supervisor_stops_the_engine_on_a_notice_and_says_so_in_exit_json(
        tmp_path: Path, imds: FakeImds) -> None:
    job = start_supervisor(tmp_path, "aws", {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url})
    imds.notice("terminate", in_s=120)
    assert job["proc"].wait(timeout=60) == 0
    out = job["proc"].stdout.read()
    assert "aws preempt notice (terminate)" in out
    assert kinds(job["events"]) == ["run_started", "notice", "checkpoint", "failed"]
    notice = json.loads(job["events"].read_text().splitlines()[1])
    assert notice["notice"] == PREEMPT and notice["action"] == "terminate"
    assert notice["window_s"] == 120 and notice["deadline"] > notice["ts"]
    ended = json.loads((job["work"] / "exit.json").read_text())
    assert ended["exit_code"] == 143 and not ended["requested_stop"]
    assert ended["notice"]["cloud"] == "aws" and ended["reason"].startswith("preempted")
    assert ended["acknowledged"] is False     # nothing to acknowledge on AWS

    from providers.jobs import status_from
    status = status_from(ended, lambda: False, lambda: None)
    assert status.notice == ended["notice"] and status.exit_code == 143


def test_a_rebalance_recommendation_checkpoints_and_the_run_goes_on(
        tmp_path: Path, imds: FakeImds) -> None:
    job = start_supervisor(tmp_path, "aws", {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url})
    imds.rebalance()
    deadline = time.monotonic() + 60
    while "checkpoint" not in kinds(job["events"]):
        assert time.monotonic() < deadline and job["proc"].poll() is None
        time.sleep(0.01)
    job["done"].touch()                 # the run ends by itself
    assert job["proc"].wait(timeout=60) == 0
    assert kinds(job["events"]) == ["run_started", "notice", "checkpoint"]
    ended = json.loads((job["work"] / "exit.json").read_text())
    assert ended["exit_code"] == 0 and "notice" not in ended


def test_azure_the_event_is_acknowledged_once_the_engine_has_ended(
        tmp_path: Path, azure_imds: FakeAzureImds) -> None:
    job = start_supervisor(tmp_path, "azure", {"DQLCTL_AZURE_IMDS_URL": azure_imds.url})
    event = azure_imds.preempt(in_s=30)
    assert job["proc"].wait(timeout=60) == 0
    assert kinds(job["events"]) == ["run_started", "notice", "checkpoint", "failed",
                                    "notice_acknowledged"]
    ended = json.loads((job["work"] / "exit.json").read_text())
    assert ended["acknowledged"] and ended["notice"]["event_id"] == event["EventId"]
    assert azure_imds.acknowledged == [event["EventId"]]


def test_gce_the_engine_stops_on_the_preemption(tmp_path: Path,
                                                gce_meta: FakeGceMetadata) -> None:
    job = start_supervisor(tmp_path, "gcp", {"DQLCTL_GCE_METADATA_URL": gce_meta.url})
    gce_meta.preempt()
    assert job["proc"].wait(timeout=60) == 0
    ended = json.loads((job["work"] / "exit.json").read_text())
    assert ended["notice"]["cloud"] == "gcp" and ended["exit_code"] == 143


# -- dqlctl: the run's history ---------------------------------------------------------------

def test_notice_and_its_checkpoint_reach_the_history_once(tmp_path: Path) -> None:
    ctx = Context(home=tmp_path / "home")
    run = ctx.registry.create(name="n", provider="aws", spec={}, spot=True)
    for state in (reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING):
        ctx.registry.transition(run.id, state)
    t = time.time() - 20        # on the machine, before dqlctl reads it
    events = [
        {"event": "checkpoint", "ts": t, "episode": 3, "path": "s3://b/c1"},    # before: no
        {"event": "notice", "ts": t + 1, "cloud": "aws", "notice": "preempt",
         "action": "terminate", "deadline": t + 121, "window_s": 120},
        {"event": "episode", "ts": t + 1.5, "episode": 4},
        {"event": "checkpoint", "ts": t + 2.5, "episode": 4, "path": "s3://b/c2"},
        {"event": "checkpoint", "ts": t + 9, "episode": 5, "path": "s3://b/c3"},  # later: no
    ]
    apply_engine_events(ctx, ctx.registry.get(run.id), events[:2])     # in two reads ...
    apply_engine_events(ctx, ctx.registry.get(run.id), events[2:])
    apply_engine_events(ctx, ctx.registry.get(run.id), events)         # ... then all again
    ctx.registry.transition(run.id, reg.PREEMPTED, reason="spot notice")
    history = [e for e in ctx.registry.events(run.id) if e["kind"] in ("notice",
                                                                      "checkpoint")]
    assert [(e["kind"], e["ts"]) for e in history] == [("notice", t + 1),
                                                        ("checkpoint", t + 2.5)]
    assert history[1]["data"]["after_notice_s"] == 1.5
    lines = history_lines(ctx.registry.events(run.id))
    order = [next(i for i, x in enumerate(lines) if word in x)
             for word in ("  notice  (aws preempt: terminate, due ",
                          "  checkpoint  (episode 4, uploaded 1.5 s after the notice",
                          "  PREEMPTED  (spot notice)")]
    assert order == sorted(order)
