"""How a look at a run brings its row up to date (dqlctl/runs/reconciling.py): a job that ended
is recorded (SUCCEEDED after collecting, FAILED with the engine's own reason or its last log
line, CANCELLED with where the checkpoint is when ``stop`` ended it), a machine gone is noticed
from the cloud first, and each state's exit acts at its deadline, not a second before.

The cloud is tests/test_lifecycle.py's in-memory ``FakeCloud``, here with the job's files (log,
events) and failures to order: these run in milliseconds (``make mutation`` runs them once per
mutant)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dqlctl import registry as reg
from dqlctl import runs
from dqlctl.context import Context
from dqlctl.runs import reconciling as rec
from providers.base import Capability, Instance, JobStatus, ProviderError, Resource
from tests.test_lifecycle import DEAD, Clock, FakeCloud, FakeJob, context, live, put_in


@dataclass
class Cloud(FakeCloud):
    """FakeCloud with each job's files and the failures a test asks for."""

    capabilities: frozenset[Capability] = frozenset({Capability.SSH, Capability.SPOT,
                                                     Capability.DIRECT_RESULTS})
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    status_error: bool = False
    read_error: bool = False
    describe_error: bool = False
    list_error: bool = False
    launch_error: bool = False
    described: int = 0
    opened: int = 0
    closed: int = 0
    specs: list[Any] = field(default_factory=list)      # the spec each job/collect was given

    def collect(self, instance: Instance, spec: dict[str, Any]) -> None:
        self.specs.append(spec)
        super().collect(instance, spec)

    def describe(self, instance: Instance) -> Instance:
        self.described += 1
        if self.describe_error:
            raise ProviderError("the cloud does not answer")
        return super().describe(instance)

    def list_resources(self, tag: dict[str, str | None]) -> list[Resource]:
        if self.list_error:
            raise ProviderError("cannot list")
        return super().list_resources(tag)

    def launch(self, spec: Any) -> Instance:
        if self.launch_error:
            raise ProviderError("no capacity")
        return super().launch(spec)

    def job(self, instance: Instance, spec: dict[str, Any]) -> Any:
        """FakeCloud's handle, reading the job's files, failing when told, counting closes."""
        cloud, iid, base = self, instance.instance_id, super().job(instance, spec)
        cloud.opened += 1
        cloud.specs.append(spec)

        class Handle:
            def read(self, name: str, offset: int) -> bytes:
                if cloud.read_error:
                    raise ProviderError("ssh: connection reset")
                return cloud.files.get(iid, {}).get(name, b"")[offset:]

            def status(self) -> JobStatus:
                if cloud.status_error:
                    raise ProviderError("ssh: no route to host")
                return base.status()

            def stop(self) -> bool:
                return base.stop()

            def close(self) -> None:
                cloud.closed += 1

        return Handle()


def setup(tmp_path: Path, **cloud_fields: Any) -> tuple[Context, Cloud, Clock]:
    cloud, clock = Cloud(**cloud_fields), Clock()
    return context(tmp_path, cloud, clock), cloud, clock


def running(ctx: Context, cloud: Cloud, *, exit_code: int | None = 0, done: bool = True,
            log: str = "", events: list[dict[str, Any]] | None = None, **extra: Any) -> reg.Run:
    """A RUNNING run (no controller: it belongs to its machine) whose job has ended (or not)."""
    run = put_in(ctx, cloud, reg.RUNNING, **extra)
    iid = run.instance_ids[0]
    cloud.jobs[iid] = FakeJob(running=not done, exit_code=exit_code)
    cloud.files[iid] = {"log": log.encode(),
                        "events": "".join(json.dumps(e) + "\n" for e in events or []).encode()}
    return run


def kinds(ctx: Context, run_id: str) -> list[str]:
    return [e["kind"] for e in ctx.registry.events(run_id)]


# -- a job that ended --------------------------------------------------------------------------

def test_a_job_still_running_is_left_running_with_its_progress_folded(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, done=False, events=[{"event": "episode", "episode": 3}])
    row = runs.reconcile(ctx, run)
    assert row.state == reg.RUNNING and row.progress["episode"] == 3
    assert live(cloud) == run.instance_ids
    assert cloud.opened == cloud.closed == 1


def test_a_job_that_exited_0_is_collected_released_and_succeeds(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, exit_code=0)
    row = runs.reconcile(ctx, run)
    assert row.state == reg.SUCCEEDED and row.exit_code == 0
    assert cloud.collected == run.instance_ids and live(cloud) == []
    assert row.lease_owner is None and cloud.opened == cloud.closed == 1
    assert cloud.specs == [run.spec, run.spec]             # the job's handle, the collect


def test_a_failed_job_says_its_exit_code_and_last_log_line(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    log = "episode 1\nTraceback (most recent call last):\n  ValueError: bad prices  \n\n"
    run = running(ctx, cloud, exit_code=3, log=log)
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED and row.exit_code == 3
    assert row.reason == "engine exited with code 3: ValueError: bad prices"
    assert live(cloud) == [] and cloud.collected == []


def test_a_job_that_ended_without_a_code_or_a_log_says_so(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, exit_code=None)
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED and row.reason == "engine ended"
    assert row.exit_code is None and live(cloud) == []


def test_the_engines_own_reason_wins_even_when_it_landed_after_the_last_poll(
        tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, exit_code=1, log="last words\n",
                  events=[{"event": "episode", "episode": 2},
                          {"event": "failed", "reason": "loss diverged at episode 2"}])
    handle = cloud.job(Instance.from_dict(run.instance or {}), run.spec)
    row = rec.finish_if_ended(ctx, run, handle)
    assert row.state == reg.FAILED and row.reason == "loss diverged at episode 2"
    assert cloud.closed == 0                     # the caller's handle: the caller closes it


def test_a_job_whose_status_reports_why_it_vanished(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud)
    del cloud.jobs[run.instance_ids[0]]
    row = rec.finish_if_ended(ctx, run)
    assert row.state == reg.FAILED and row.reason == "vanished" and cloud.closed == 1


def test_a_stopped_job_is_collected_and_cancelled_with_where_its_checkpoint_is(
        tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, exit_code=143, events=[{"event": "episode", "episode": 4}])
    ctx.registry.update(run.id, results_uri="s3://b/r/n",
                        spec={**run.spec, "stop_requested": True})
    row = runs.reconcile(ctx, ctx.registry.get(run.id))
    assert row.state == reg.CANCELLED
    assert row.reason == "stopped at episode 4; checkpoint and results in s3://b/r/n"
    assert cloud.collected == run.instance_ids and live(cloud) == []


def test_a_stopped_job_whose_results_cannot_be_collected_says_so(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path, collect_error="bucket gone")
    run = running(ctx, cloud, exit_code=143)
    ctx.registry.update(run.id, spec={**run.spec, "stop_requested": True})
    row = runs.reconcile(ctx, ctx.registry.get(run.id))
    assert row.state == reg.CANCELLED
    assert row.reason == "stopped at episode 0; results not collected: ProviderError: bucket gone"
    assert live(cloud) == []


def test_a_stopped_run_another_process_finishes_is_left_to_it(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, exit_code=143)
    ctx.registry.update(run.id, spec={**run.spec, "stop_requested": True})
    ctx.registry.transition(run.id, reg.COLLECTING)        # someone else got there first
    row = rec._finish_stopped(ctx, ctx.registry.get(run.id), Instance.from_dict(run.instance),
                              cloud)
    assert row.state == reg.COLLECTING and cloud.collected == []


def test_keep_leaves_the_machine_of_a_finished_run(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, exit_code=0, keep=True)
    assert runs.reconcile(ctx, run).state == reg.SUCCEEDED
    assert live(cloud) == run.instance_ids


def test_keep_does_not_keep_the_machine_of_a_run_that_failed(tmp_path: Path) -> None:
    ctx, cloud, clock = setup(tmp_path, collect_error="bucket gone")
    run = put_in(ctx, cloud, reg.COLLECTING, keep=True)
    clock.t += rec.COLLECT_DEADLINE_S
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED and live(cloud) == []


def test_only_a_running_or_collecting_run_with_a_machine_is_finished(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    for state in (reg.PENDING, reg.BOOTSTRAPPING, reg.PREEMPTED):
        run = put_in(ctx, cloud, state)
        assert rec.finish_if_ended(ctx, run) is run
    done = running(ctx, cloud)
    ctx.registry.transition(done.id, reg.FAILED, reason="x")
    failed = ctx.registry.get(done.id)
    assert rec.finish_if_ended(ctx, failed) is failed
    bare = put_in(ctx, cloud, reg.RUNNING, machine=None)
    assert rec.finish_if_ended(ctx, bare) is bare
    assert cloud.opened == 0


# -- a machine that does not answer ----------------------------------------------------------

def test_a_job_that_does_not_answer_on_a_machine_still_there_is_left(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, done=False)
    cloud.status_error = True
    assert rec.finish_if_ended(ctx, run).state == reg.RUNNING
    assert cloud.closed == 1


def test_a_job_that_does_not_answer_on_a_machine_gone_fails_with_why(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, done=False)
    cloud.status_error = True
    cloud.instances[run.instance_ids[0]].state = "terminated"
    row = rec.finish_if_ended(ctx, run)
    assert row.state == reg.FAILED
    assert row.reason == f"instance {run.instance_ids[0]} is terminated: ssh: no route to host"


def test_the_cloud_is_asked_first_and_a_machine_taken_back_is_lost(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, done=False)
    cloud.instances[run.instance_ids[0]].state = "stopping"
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED
    assert row.reason == f"instance {run.instance_ids[0]} is stopping: no answer"
    assert cloud.opened == 0                     # no SSH tried on a machine that is gone


def test_a_cloud_that_does_not_answer_leaves_it_to_the_job(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, done=False)
    cloud.describe_error = True
    assert runs.reconcile(ctx, run).state == reg.RUNNING
    assert cloud.opened == cloud.closed == 1


def test_a_pending_machine_is_still_there(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, done=False)
    cloud.instances[run.instance_ids[0]].state = "pending"
    assert runs.reconcile(ctx, run).state == reg.RUNNING
    assert cloud.opened == 1                     # its job was looked at


def test_a_pending_machine_of_an_adopted_bring_up_is_brought_up(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = put_in(ctx, cloud, reg.BOOTSTRAPPING, machine="pending")
    assert runs.reconcile(ctx, run).state == reg.RUNNING


def test_a_job_stopped_with_exit_code_1_is_still_a_stop(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, exit_code=1)
    ctx.registry.update(run.id, spec={**run.spec, "stop_requested": True})
    assert runs.reconcile(ctx, ctx.registry.get(run.id)).state == reg.CANCELLED


def test_a_local_job_is_not_described(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path, capabilities=frozenset({Capability.LOCAL_JOB}))
    run = running(ctx, cloud, done=False)
    cloud.instances[run.instance_ids[0]].state = "stopping"
    assert runs.reconcile(ctx, run).state == reg.RUNNING and cloud.described == 0


def test_events_that_cannot_be_read_on_a_machine_gone_lose_it(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path, capabilities=frozenset({Capability.LOCAL_JOB}))
    run = running(ctx, cloud, done=False)
    cloud.read_error = True
    assert runs.reconcile(ctx, run).state == reg.RUNNING          # still there: a hiccup
    cloud.instances[run.instance_ids[0]].state = "terminated"
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED and row.reason.endswith("ssh: connection reset")
    assert cloud.opened == cloud.closed == 2


def test_a_running_run_without_a_machine_is_left(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = put_in(ctx, cloud, reg.RUNNING, machine=None)
    assert runs.reconcile(ctx, run) is run and cloud.described == 0


# -- each state's exit at its deadline -------------------------------------------------------

def test_collect_is_retried_until_its_deadline_to_the_second(tmp_path: Path) -> None:
    ctx, cloud, clock = setup(tmp_path, collect_error="bucket unreachable")
    run = put_in(ctx, cloud, reg.COLLECTING)
    clock.t += rec.COLLECT_DEADLINE_S - 1
    row = runs.reconcile(ctx, run)
    assert row.state == reg.COLLECTING
    failures = [e for e in ctx.registry.events(run.id) if e["kind"] == "collect_failed"]
    assert [e["data"] for e in failures] == [{"reason": "ProviderError: bucket unreachable"}]
    clock.t += 1
    row = runs.reconcile(ctx, row)
    assert row.state == reg.FAILED
    assert row.reason == "results not collected within 30 min: ProviderError: bucket unreachable"


def test_entering_a_state_is_its_last_state_event(tmp_path: Path) -> None:
    ctx, cloud, clock = setup(tmp_path)
    run = put_in(ctx, cloud, reg.RUNNING)
    clock.t += 50
    ctx.registry.transition(run.id, reg.COLLECTING)
    entered = clock.t
    ctx.registry.add_event(run.id, "note", {})
    clock.t += 30
    ctx.registry.update(run.id, progress={"x": 0})
    assert rec.entered_at(ctx, ctx.registry.get(run.id)) == entered
    clock.t += 70
    ctx.registry.update(run.id, progress={"x": 1})
    row = ctx.registry.get(run.id)
    ctx.registry._conn.execute("DELETE FROM events WHERE to_state = 'COLLECTING'")
    assert rec.entered_at(ctx, row) == row.updated_at == clock.t


def test_bootstrapping_is_adopted_up_to_its_deadline(tmp_path: Path) -> None:
    ctx, cloud, clock = setup(tmp_path)
    run = put_in(ctx, cloud, reg.BOOTSTRAPPING)
    clock.t += rec.BOOTSTRAP_DEADLINE_S
    row = runs.reconcile(ctx, run)
    assert row.state == reg.RUNNING, row.reason
    assert [e["data"] for e in ctx.registry.events(run.id)
            if e["kind"] == "adopted_bring_up"] == [{"instance": run.instance_ids[0]}]


def test_bootstrapping_past_its_deadline_fails_saying_so(tmp_path: Path) -> None:
    ctx, cloud, clock = setup(tmp_path)
    run = put_in(ctx, cloud, reg.BOOTSTRAPPING)
    clock.t += rec.BOOTSTRAP_DEADLINE_S + 1
    row = runs.reconcile(ctx, run)
    assert row.reason == ("not running within 20 min of BOOTSTRAPPING (its dqlctl process "
                          "ended); released")
    assert live(cloud) == []


def test_bootstrapping_with_its_machine_gone_fails_naming_it(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = put_in(ctx, cloud, reg.BOOTSTRAPPING, machine="terminated")
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED
    assert row.reason == (f"machine {run.instance_ids[0]} is terminated: bring-up interrupted "
                          "(its dqlctl process ended)")


def test_bootstrapping_without_a_machine_is_an_interrupted_launch(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = put_in(ctx, cloud, reg.BOOTSTRAPPING, machine=None)
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED
    assert row.reason == ("launch interrupted in BOOTSTRAPPING (its dqlctl process ended); "
                          "cleaned up")


def test_bootstrapping_whose_cloud_does_not_answer_waits(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path, describe_error=True)
    run = put_in(ctx, cloud, reg.BOOTSTRAPPING)
    row = runs.reconcile(ctx, run)
    assert row.state == reg.BOOTSTRAPPING and live(cloud) == run.instance_ids
    assert ctx.registry.get(run.id).lease_owner is None   # the next look tries again


def test_a_run_is_never_failed_with_its_machine_unaccounted(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path, list_error=True)
    run = put_in(ctx, cloud, reg.PROVISIONING)
    row = runs.reconcile(ctx, run)
    assert row.state == reg.PROVISIONING
    assert [e["data"] for e in ctx.registry.events(run.id)
            if e["kind"] == "cleanup_failed"] == [{"reason": "ProviderError: cannot list"}]


def test_collecting_without_a_machine_fails_saying_so(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = put_in(ctx, cloud, reg.COLLECTING, machine=None)
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED and row.reason == "COLLECTING without a machine"


def test_a_preempted_run_that_can_be_relaunched_is(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = put_in(ctx, cloud, reg.PREEMPTED, spot=True, max_recoveries=1)
    cloud.terminate(Instance.from_dict(run.instance))
    row = runs.reconcile(ctx, run)
    assert row.state == reg.RUNNING, row.reason
    assert row.instance_ids != run.instance_ids and live(cloud) == row.instance_ids


def test_a_preempted_run_without_a_reason_fails_with_the_default_one(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = put_in(ctx, cloud, reg.PREEMPTED, spot=True)
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED
    assert row.reason == "spot instance taken back; not relaunched"


def test_recovering_is_relaunched_up_to_its_deadline(tmp_path: Path) -> None:
    ctx, cloud, clock = setup(tmp_path)
    run = put_in(ctx, cloud, reg.RECOVERING, spot=True)
    clock.t += rec.RECOVER_DEADLINE_S
    row = runs.reconcile(ctx, run)
    assert row.state == reg.RUNNING, row.reason
    assert "adopted_recovery" in kinds(ctx, run.id)
    assert row.reason == ("recovered from a spot preemption; resumed from its last "
                          "checkpoint")


def test_recovering_past_its_deadline_fails_saying_so(tmp_path: Path) -> None:
    ctx, cloud, clock = setup(tmp_path)
    run = put_in(ctx, cloud, reg.RECOVERING, spot=True)
    clock.t += rec.RECOVER_DEADLINE_S + 1
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED
    assert row.reason == "not relaunched within 30 min (its dqlctl process ended)"
    assert live(cloud) == []


def test_recovering_whose_cloud_cannot_list_waits(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path, list_error=True)
    run = put_in(ctx, cloud, reg.RECOVERING, spot=True)
    assert runs.reconcile(ctx, run).state == reg.RECOVERING
    assert "adopted_recovery" not in kinds(ctx, run.id)


def test_a_relaunch_that_fails_is_recorded_not_raised(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path, launch_error=True)
    run = put_in(ctx, cloud, reg.RECOVERING, spot=True)
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED and "no capacity" in row.reason


def test_a_live_controller_of_a_leased_state_is_left_at_work(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    run = put_in(ctx, cloud, reg.COLLECTING, owner="other-host:1:2")
    row = runs.reconcile(ctx, run)
    assert row.state == reg.COLLECTING and cloud.collected == []


def test_reconcile_all_looks_at_the_live_runs_only(tmp_path: Path) -> None:
    ctx, cloud, _ = setup(tmp_path)
    done = put_in(ctx, cloud, reg.PENDING, owner=DEAD)
    ctx.registry.transition(done.id, reg.CANCELLED, reason="by hand")
    live_run = put_in(ctx, cloud, reg.PENDING, owner=DEAD)
    rows = runs.reconcile_all(ctx)
    assert [(r.id, r.state) for r in rows] == [(live_run.id, reg.FAILED)]
    assert ctx.registry.get(done.id).reason == "by hand"


def test_the_exits_table_says_each_deadline_in_minutes() -> None:
    assert "within 20 min of entering the state" in rec.EXITS[reg.BOOTSTRAPPING].deadline
    assert "collect failing for 30 min -> FAILED" in rec.EXITS[reg.COLLECTING].deadline
    assert "RUNNING within 30 min of entering the state" in rec.EXITS[reg.RECOVERING].deadline
    lease = f"its controller lease has expired ({reg.LEASE_S:.0f} s unrenewed"
    assert all(rec.EXITS[s].deadline.startswith(lease) for s in (
        reg.PENDING, reg.PROVISIONING, reg.BOOTSTRAPPING, reg.COLLECTING, reg.RECOVERING))
    assert rec.EXITS[reg.PREEMPTED].deadline == "at once: RECOVERING, else FAILED with why"
    assert (rec.BOOTSTRAP_DEADLINE_S, rec.COLLECT_DEADLINE_S, rec.RECOVER_DEADLINE_S) == (
        1200, 1800, 1800)


@pytest.mark.parametrize("state", [reg.PENDING, reg.PROVISIONING])
def test_an_interrupted_launch_says_in_which_state(tmp_path: Path, state: str) -> None:
    ctx, cloud, _ = setup(tmp_path)
    row = runs.reconcile(ctx, put_in(ctx, cloud, state))
    assert row.reason == f"launch interrupted in {state} (its dqlctl process ended); cleaned up"


# -- a look with a stale row: another process moved the run first ------------------------------

@pytest.mark.parametrize("exit_code", [0, 3])
def test_a_job_that_ended_on_a_run_another_process_preempted_is_left_preempted(
        tmp_path: Path, exit_code: int) -> None:
    """This look read RUNNING; meanwhile another dqlctl found the machine taken back and made
    the run PREEMPTED (to relaunch it). The job's end seen here must neither collect nor fail
    the run: the move is refused quietly, the other process's story stands."""
    ctx, cloud, _ = setup(tmp_path)
    run = running(ctx, cloud, exit_code=exit_code, log="episode 1\n")
    ctx.registry.transition(run.id, reg.PREEMPTED, reason="taken back (the other look)")
    row = rec.finish_if_ended(ctx, run)          # the stale RUNNING row
    now = ctx.registry.get(run.id)
    assert (now.state, now.reason) == (reg.PREEMPTED, "taken back (the other look)")
    assert row.state == reg.PREEMPTED and cloud.collected == []

