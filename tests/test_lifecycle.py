"""Every non-terminal state has an exit: a run whose controlling dqlctl process died is adopted
by the next look and taken to a terminal state (or back to RUNNING), never left billing; a run
whose controller is alive is left to it; two processes never both act.

The cloud here is ``FakeCloud``, an in-memory provider (instances, a job per instance); runs are
put in each state directly in the registry, their controller lease owned by a process that is
gone (``DEAD``) or alive on another host (``ELSEWHERE``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dqlctl import registry as reg
from dqlctl import runs
from dqlctl.context import Context
from dqlctl.errors import ProviderFailure
from dqlctl.runs.lifecycle import finish_bring_up
from dqlctl.runs.reconciling import BOOTSTRAP_DEADLINE_S, COLLECT_DEADLINE_S, EXITS
from providers.base import (
    RUN_TAG,
    Capability,
    CheckItem,
    CheckResult,
    Instance,
    JobSpec,
    JobStatus,
    LaunchSpec,
    ProviderError,
    Resource,
    instance_resource,
)
from tests.test_local_runs import wait_for

# this host, this pid, another start time: a process that has ended
DEAD = f"{socket.gethostname()}:{os.getpid()}:1"
ELSEWHERE = "other-host:4242:77"


@dataclass
class FakeJob:
    running: bool = True
    exit_code: int | None = None


@dataclass
class FakeCloud:
    """A cloud in memory: what was launched, started, collected and terminated."""

    name: str = "fake"
    capabilities: frozenset[Capability] = frozenset({Capability.SSH, Capability.SPOT})
    instances: dict[str, Instance] = field(default_factory=dict)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    collected: list[str] = field(default_factory=list)
    collect_error: str | None = None
    credentials_ok: bool = True
    ready_gate: threading.Event | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self) -> CheckResult:
        item = CheckItem("credentials", self.credentials_ok,
                         "account 1" if self.credentials_ok else "no fake credentials found",
                         None if self.credentials_ok else "fake login")
        return CheckResult(self.name, self.credentials_ok, [item])

    def plan(self, spec: LaunchSpec) -> dict[str, Any]:
        return {"provider": self.name}

    def add(self, run_id: str, state: str = "running") -> Instance:
        inst = Instance(self.name, f"i-{len(self.instances) + 1}", state, "r1", "big",
                        tags={RUN_TAG: run_id})
        self.instances[inst.instance_id] = inst
        return inst

    def launch(self, spec: LaunchSpec) -> Instance:
        return self.add(spec.run_id, "pending")

    def wait_ready(self, instance: Instance) -> Instance:
        if self.ready_gate is not None:
            assert self.ready_gate.wait(30)
        self.instances[instance.instance_id].state = "running"
        return self.describe(instance)

    def describe(self, instance: Instance) -> Instance:
        known = self.instances.get(instance.instance_id)
        state = known.state if known else "terminated"
        return Instance(**{**asdict(instance), "state": state})

    def list_instances(self, tag: dict[str, str | None]) -> list[Instance]:
        (key, value), = tag.items()
        return [i for i in self.instances.values() if i.state in ("pending", "running")
                and key in i.tags and value in (None, i.tags[key])]

    def terminate(self, instance: Instance) -> None:
        if instance.instance_id in self.instances:
            self.instances[instance.instance_id].state = "terminated"

    def list_resources(self, tag: dict[str, str | None]) -> list[Resource]:
        return [instance_resource(i) for i in self.list_instances(tag)]

    def delete_resource(self, resource: Resource) -> None:
        self.terminate(Instance.from_dict(resource.extra["instance"]))

    def start_job(self, instance: Instance, spec: LaunchSpec,
                  secrets: dict[str, str] | None = None) -> Instance:
        with self.lock:
            self.started.append(instance.instance_id)
            self.jobs[instance.instance_id] = FakeJob()
        return instance

    def job(self, instance: Instance, spec: dict[str, Any]) -> Any:
        cloud, iid = self, instance.instance_id

        class Handle:
            def read(self, name: str, offset: int) -> bytes:
                return b""

            def status(self) -> JobStatus:
                job = cloud.jobs.get(iid)
                if job is None:
                    return JobStatus(False, None, "vanished")
                return JobStatus(job.running, job.exit_code)

            def stop(self) -> bool:
                return False

            def close(self) -> None:
                pass

        return Handle()

    def price_per_hour(self, instance: Instance) -> float | None:
        return 3.6

    def collect(self, instance: Instance, spec: dict[str, Any]) -> None:
        if self.collect_error:
            raise ProviderError(self.collect_error)
        self.collected.append(instance.instance_id)


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def context(home: Path, cloud: FakeCloud, clock: Clock) -> Context:
    return Context(home=home, providers={"fake": cloud}, clock=clock)


def spec_for(run_id: str, **extra: Any) -> dict[str, Any]:
    return asdict(LaunchSpec(run_id=run_id, name="n", job=JobSpec(
        engine_args=["train"], data_file="d.csv", results_dir="s3://b/r", experiment="n"),
        tags={RUN_TAG: run_id}, extra={"max_recoveries": 0, **extra}))


def put_in(ctx: Context, cloud: FakeCloud, state: str, owner: str = DEAD,
           machine: str | None = "running", spot: bool = False, **extra: Any) -> reg.Run:
    """A run driven to ``state`` by a controller ``owner`` (the lease's expiry a minute on)."""
    registry = ctx.registry
    run = registry.create(name="n", provider="fake", spec={}, spot=spot)
    registry.update(run.id, spec=spec_for(run.id, **extra))
    path = {reg.PENDING: [], reg.PROVISIONING: [reg.PROVISIONING],
            reg.BOOTSTRAPPING: [reg.PROVISIONING, reg.BOOTSTRAPPING],
            reg.RUNNING: [reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING],
            reg.COLLECTING: [reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING, reg.COLLECTING],
            reg.PREEMPTED: [reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING, reg.PREEMPTED],
            reg.RECOVERING: [reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING, reg.PREEMPTED,
                             reg.RECOVERING]}[state]
    for i, step in enumerate(path):
        if step == reg.BOOTSTRAPPING and machine is not None:
            inst = cloud.add(run.id, machine)
            registry.update(run.id, instance=inst.to_dict(), instance_ids=[inst.instance_id],
                            price_per_hour=3.6)
        if step == reg.RUNNING and machine is not None:
            cloud.jobs[inst.instance_id] = FakeJob(running=i + 1 < len(path), exit_code=0)
        registry.transition(run.id, step)
    registry.update(run.id, lease_owner=owner if state in reg.LEASED else None,
                    lease_expires=ctx.clock() + reg.LEASE_S if state in reg.LEASED else None)
    return registry.get(run.id)


def states(ctx: Context, run_id: str) -> list[str]:
    return [e["to_state"] for e in ctx.registry.events(run_id) if e["to_state"]]


def assert_valid_path(ctx: Context, run_id: str) -> None:
    """The run's state events are a path through the lifecycle, each move a legal one."""
    events = [e for e in ctx.registry.events(run_id) if e["to_state"]]
    assert events[0]["to_state"] == reg.PENDING and events[0]["from_state"] is None
    for before, after in zip(events, events[1:], strict=False):
        assert after["from_state"] == before["to_state"]
        assert after["to_state"] in reg.TRANSITIONS[before["to_state"]]


def live(cloud: FakeCloud) -> list[str]:
    return [i.instance_id for i in cloud.instances.values() if i.state in ("pending", "running")]


@pytest.fixture(autouse=True)
def fake_is_a_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--provider fake`` passes validation (its object is given to each Context)."""
    import providers

    monkeypatch.setitem(providers.COMPUTE_PROVIDERS, "fake", "tests.test_lifecycle:FakeCloud")


def test_every_non_terminal_state_has_an_exit() -> None:
    assert set(EXITS) == set(reg.ACTIVE)
    assert all(e.checks and e.deadline for e in EXITS.values())


@pytest.mark.parametrize("state", [reg.PENDING, reg.PROVISIONING])
def test_a_launch_whose_controller_died_fails_and_its_tagged_machines_go(
        tmp_path: Path, state: str) -> None:
    cloud, clock = FakeCloud(), Clock()
    ctx = context(tmp_path, cloud, clock)
    run = put_in(ctx, cloud, state)
    stray = cloud.add(run.id)  # launched by the dead controller, never recorded
    row = runs.reconcile(ctx, run)
    assert row.state == reg.FAILED and f"interrupted in {state}" in row.reason
    assert live(cloud) == [] and cloud.instances[stray.instance_id].state == "terminated"
    assert [e["data"]["from"] for e in ctx.registry.events(run.id)
            if e["kind"] == "adopted"] == [DEAD]
    assert row.lease_owner is None
    assert_valid_path(ctx, run.id)


def test_a_live_controller_elsewhere_is_left_alone_until_its_lease_expires(
        tmp_path: Path) -> None:
    cloud, clock = FakeCloud(), Clock()
    ctx = context(tmp_path, cloud, clock)
    run = put_in(ctx, cloud, reg.PROVISIONING, owner=ELSEWHERE)
    assert runs.reconcile(ctx, run).state == reg.PROVISIONING
    clock.t += reg.LEASE_S - 1
    assert runs.reconcile_all(ctx)[0].state == reg.PROVISIONING
    clock.t += 2  # no renewal for a whole lease: the controller is gone
    assert runs.reconcile_all(ctx)[0].state == reg.FAILED


def test_bootstrapping_with_its_machine_alive_is_adopted_and_brought_up(tmp_path: Path) -> None:
    cloud, clock = FakeCloud(), Clock()
    ctx = context(tmp_path, cloud, clock)
    run = put_in(ctx, cloud, reg.BOOTSTRAPPING, machine="pending")
    row = runs.reconcile(ctx, run)
    assert row.state == reg.RUNNING, row.reason
    assert cloud.started == run.instance_ids and row.lease_owner is None
    assert any(e["kind"] == "adopted_bring_up" for e in ctx.registry.events(run.id))
    assert_valid_path(ctx, run.id)


def test_an_adopted_bring_up_does_not_start_the_engine_twice(tmp_path: Path) -> None:
    cloud, clock = FakeCloud(), Clock()
    ctx = context(tmp_path, cloud, clock)
    run = put_in(ctx, cloud, reg.BOOTSTRAPPING)
    cloud.jobs[run.instance_ids[0]] = FakeJob()  # the dead controller had started it
    assert runs.reconcile(ctx, run).state == reg.RUNNING
    assert cloud.started == []


def test_bootstrapping_past_its_deadline_or_without_a_machine_fails_released(
        tmp_path: Path) -> None:
    cloud, clock = FakeCloud(), Clock()
    ctx = context(tmp_path, cloud, clock)
    late = put_in(ctx, cloud, reg.BOOTSTRAPPING)
    gone = put_in(ctx, cloud, reg.BOOTSTRAPPING, machine="terminated")
    clock.t += BOOTSTRAP_DEADLINE_S + 1
    row = runs.reconcile(ctx, late)
    assert row.state == reg.FAILED and "not running within" in row.reason
    row = runs.reconcile(ctx, ctx.registry.get(gone.id))
    assert row.state == reg.FAILED and "terminated" in row.reason
    assert live(cloud) == [] and cloud.started == []


def test_collecting_whose_controller_died_is_collected_again_and_finished(
        tmp_path: Path) -> None:
    cloud, clock = FakeCloud(), Clock()
    ctx = context(tmp_path, cloud, clock)
    run = put_in(ctx, cloud, reg.COLLECTING)
    row = runs.reconcile(ctx, run)
    assert row.state == reg.SUCCEEDED and cloud.collected == run.instance_ids
    assert live(cloud) == [] and row.billed_since is None
    assert_valid_path(ctx, run.id)


def test_collect_that_keeps_failing_is_retried_then_fails_at_its_deadline(
        tmp_path: Path) -> None:
    cloud, clock = FakeCloud(collect_error="bucket unreachable"), Clock()
    ctx = context(tmp_path, cloud, clock)
    run = put_in(ctx, cloud, reg.COLLECTING)
    row = runs.reconcile(ctx, run)
    assert row.state == reg.COLLECTING  # and the lease is given up: the next look retries
    assert ctx.registry.get(run.id).lease_owner is None
    assert live(cloud) == run.instance_ids
    clock.t += COLLECT_DEADLINE_S + 1
    row = runs.reconcile(ctx, row)
    assert row.state == reg.FAILED and "bucket unreachable" in row.reason
    assert live(cloud) == []


def test_a_preempted_run_that_cannot_be_relaunched_fails_with_why(tmp_path: Path) -> None:
    cloud, clock = FakeCloud(), Clock()
    ctx = context(tmp_path, cloud, clock)
    run = put_in(ctx, cloud, reg.PREEMPTED, spot=True)
    ctx.registry.update(run.id, reason="spot instance taken back; not relaunched: no bucket")
    row = runs.reconcile(ctx, ctx.registry.get(run.id))
    assert row.state == reg.FAILED and "not relaunched" in row.reason
    assert live(cloud) == []


def test_recovering_whose_controller_died_releases_the_half_relaunch_and_relaunches(
        tmp_path: Path) -> None:
    cloud, clock = FakeCloud(), Clock()
    ctx = context(tmp_path, cloud, clock)
    run = put_in(ctx, cloud, reg.RECOVERING, spot=True)
    cloud.terminate(Instance.from_dict(run.instance))  # the preempted machine
    half = cloud.add(run.id)  # launched by the dead controller's relaunch, never recorded
    row = runs.reconcile(ctx, run)
    assert row.state == reg.RUNNING, row.reason
    assert cloud.instances[half.instance_id].state == "terminated"
    assert live(cloud) == row.instance_ids and row.instance_ids != run.instance_ids
    assert_valid_path(ctx, run.id)


@pytest.mark.parametrize("state", [reg.BOOTSTRAPPING, reg.COLLECTING])
def test_the_budget_is_enforced_in_every_billed_state(tmp_path: Path, state: str) -> None:
    cloud, clock = FakeCloud(), Clock()
    ctx = context(tmp_path, cloud, clock)
    run = put_in(ctx, cloud, state, owner=ELSEWHERE, max_cost=1.0)
    clock.t += 1001  # $3.60/h: a dollar is spent after 1000 s
    ctx.registry.update(run.id, lease_expires=clock.t + 30)  # renewed: its controller lives
    # its controller is alive (elsewhere): it checks the budget itself
    assert runs.reconcile(ctx, ctx.registry.get(run.id)).state == state
    ctx.registry.update(run.id, lease_owner=DEAD)
    row = runs.reconcile(ctx, ctx.registry.get(run.id))
    assert row.state == reg.CANCELLED and "budget reached" in row.reason
    assert live(cloud) == []


def test_a_bring_up_stops_at_its_budget(tmp_path: Path) -> None:
    cloud, clock = FakeCloud(), Clock()
    ctx = context(tmp_path, cloud, clock)
    run = put_in(ctx, cloud, reg.BOOTSTRAPPING, max_cost=1.0)
    clock.t += 2000
    row = finish_bring_up(ctx, run)
    assert row.state == reg.CANCELLED and "budget reached" in row.reason
    assert live(cloud) == [] and cloud.started == []


def test_launch_without_credentials_records_nothing(tmp_path: Path) -> None:
    cloud = FakeCloud(credentials_ok=False)
    ctx = context(tmp_path, cloud, Clock())
    with pytest.raises(ProviderFailure) as exc:
        runs.launch(ctx, runs.LaunchRequest(provider="fake", data="test_small.csv"))
    assert "no fake credentials" in str(exc.value) and exc.value.field == "provider"
    assert ctx.registry.list() == [] and cloud.instances == {}


def test_a_controller_renews_its_lease_and_a_thread_of_it_is_not_adopted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While ``launch`` waits for the machine, its heartbeat keeps the lease alive (another
    process sees it held), and a second thread of the same process leaves the run alone."""
    monkeypatch.setattr(reg, "LEASE_S", 0.4)
    gate = threading.Event()
    cloud = FakeCloud(ready_gate=gate)
    ctx = Context(home=tmp_path, providers={"fake": cloud})
    done: list[reg.Run] = []
    worker = threading.Thread(target=lambda: done.append(runs.launch(
        ctx, runs.LaunchRequest(provider="fake", data="test_small.csv"))))
    worker.start()
    try:
        other = Context(home=tmp_path, providers={"fake": cloud})
        run = wait_for(lambda: next(iter(other.registry.list()), None), "the run's row")
        first = run.lease_expires
        renewed = wait_for(lambda: (r := other.registry.get(run.id)).lease_expires > first + 0.2
                       and r, "a renewal")
        assert renewed.state == reg.BOOTSTRAPPING
        elsewhere = reg.Registry(tmp_path / "registry.db")
        elsewhere.owner = ELSEWHERE
        assert not elsewhere.lease_free(renewed)  # another process would leave it alone
        assert runs.reconcile(other, renewed).state == reg.BOOTSTRAPPING  # and so does a thread
    finally:
        gate.set()
        worker.join(30)
    assert done and done[0].state == reg.RUNNING and cloud.started == done[0].instance_ids


def test_two_threads_adopting_one_run_bring_it_up_once(tmp_path: Path) -> None:
    cloud, clock = FakeCloud(), Clock()
    run = put_in(context(tmp_path, cloud, clock), cloud, reg.BOOTSTRAPPING)
    barrier = threading.Barrier(4)
    seen: list[str] = []

    def look() -> None:
        ctx = context(tmp_path, cloud, clock)
        barrier.wait()
        seen.append(runs.reconcile(ctx, ctx.registry.get(run.id)).state)
        ctx.close()

    threads = [threading.Thread(target=look) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert cloud.started == run.instance_ids  # one adopter started the engine, once
    assert reg.RUNNING in seen and set(seen) <= {reg.BOOTSTRAPPING, reg.RUNNING}


def _adopt(path: str, run_id: str, barrier: Any, out: Any) -> None:
    r = reg.Registry(path)
    barrier.wait()
    out.put(r.acquire(run_id, {reg.BOOTSTRAPPING}))


def test_two_processes_adopting_one_run_one_wins(tmp_path: Path) -> None:
    cloud = FakeCloud()
    ctx = context(tmp_path, cloud, Clock(time.time()))
    run = put_in(ctx, cloud, reg.BOOTSTRAPPING)
    spawn = mp.get_context("spawn")
    n = 4
    barrier, out = spawn.Barrier(n), spawn.Queue()
    procs = [spawn.Process(target=_adopt, args=(str(tmp_path / "registry.db"), run.id, barrier,
                                                 out)) for _ in range(n)]
    for p in procs:
        p.start()
    won = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert sorted(won) == [False] * (n - 1) + [True]
    adopted = [e for e in ctx.registry.events(run.id) if e["kind"] == "adopted"]
    assert len(adopted) == 1 and adopted[0]["data"]["from"] == DEAD


def test_the_cost_report_bills_the_states_the_registry_bills() -> None:
    """Two copies of one set (the registry's is kept light for start-up): they must agree, or
    `dqlctl cost`'s months and `show`'s cost would price different hours."""
    from dqlctl.states import BILLED
    from providers.prices.estimate import BILLED_STATES

    assert BILLED == BILLED_STATES
