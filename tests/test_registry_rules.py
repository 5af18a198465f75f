"""The registry's rules as an operator relies on them: which moves the lifecycle allows (every
pair of states), a stale look never overriding a newer state, what each move writes on the row,
the controller lease, and the helpers around the row. Pure SQLite in tmp_path: fast enough for
``make mutation`` to run once per mutant of dqlctl/registry.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dqlctl import controllers, states
from dqlctl import registry as reg
from dqlctl.registry import IllegalTransition, Registry, RegistryError, Run

ALL_STATES = (reg.PENDING, reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING, reg.COLLECTING,
              reg.SUCCEEDED, reg.FAILED, reg.CANCELLED, reg.PREEMPTED, reg.RECOVERING)

#: The lifecycle as the README states it, edge by edge: PENDING -> PROVISIONING ->
#: BOOTSTRAPPING -> RUNNING -> COLLECTING -> SUCCEEDED; spot RUNNING -> PREEMPTED ->
#: RECOVERING -> BOOTSTRAPPING (or RUNNING) ; and any unfinished state may fail or be cancelled.
ALLOWED = {
    (reg.PENDING, reg.PROVISIONING), (reg.PROVISIONING, reg.BOOTSTRAPPING),
    (reg.BOOTSTRAPPING, reg.RUNNING), (reg.RUNNING, reg.COLLECTING),
    (reg.COLLECTING, reg.SUCCEEDED), (reg.RUNNING, reg.PREEMPTED),
    (reg.PREEMPTED, reg.RECOVERING), (reg.RECOVERING, reg.BOOTSTRAPPING),
    (reg.RECOVERING, reg.RUNNING),
} | {(s, end) for s in reg.ACTIVE for end in (reg.FAILED, reg.CANCELLED)}

#: A legal way to bring a new run to each state.
PATH = {
    reg.PENDING: [],
    reg.PROVISIONING: [reg.PROVISIONING],
    reg.BOOTSTRAPPING: [reg.PROVISIONING, reg.BOOTSTRAPPING],
    reg.RUNNING: [reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING],
    reg.COLLECTING: [reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING, reg.COLLECTING],
    reg.PREEMPTED: [reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING, reg.PREEMPTED],
    reg.RECOVERING: [reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING, reg.PREEMPTED,
                     reg.RECOVERING],
    reg.SUCCEEDED: [reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING, reg.COLLECTING,
                    reg.SUCCEEDED],
    reg.FAILED: [reg.FAILED],
    reg.CANCELLED: [reg.CANCELLED],
}


class Clock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _at(r: Registry, state: str, **create: object) -> Run:
    run = r.create(name="r", provider="local", spec={}, **create)  # type: ignore[arg-type]
    for step in PATH[state]:
        assert r.transition(run.id, step), (state, step)
    return r.get(run.id)


def test_the_state_sets_are_the_documented_ones() -> None:
    assert reg.TERMINAL == {reg.SUCCEEDED, reg.FAILED, reg.CANCELLED}
    assert reg.ACTIVE == set(ALL_STATES) - reg.TERMINAL
    assert reg.BILLED == {reg.BOOTSTRAPPING, reg.RUNNING, reg.COLLECTING}
    assert reg.LEASED == {reg.PENDING, reg.PROVISIONING, reg.BOOTSTRAPPING, reg.COLLECTING,
                          reg.RECOVERING}


@pytest.mark.parametrize("current", ALL_STATES)
def test_every_pair_of_states_is_allowed_exactly_as_documented(tmp_path: Path,
                                                               current: str) -> None:
    """PREEMPTED -> RUNNING (a preempted run pretending to run, with no machine) and every
    other move the lifecycle does not have are refused; the allowed ones are made."""
    r = Registry(tmp_path / "registry.db")
    for to in ALL_STATES:
        run = _at(r, current)
        if (current, to) in ALLOWED:
            assert r.transition(run.id, to), f"{current} -> {to} must be allowed"
            assert r.get(run.id).state == to
        elif current in reg.TERMINAL:  # a late arrival at an ended run: no change, no error
            assert r.transition(run.id, to) is False, f"{current} -> {to}"
            assert r.get(run.id).state == current
        else:
            with pytest.raises(IllegalTransition, match=f"{current} -> {to} is not allowed"):
                r.transition(run.id, to)
            assert r.get(run.id).state == current
        # with `expect` naming the current state, a refused move is False, never an error
        again = _at(r, current)
        assert r.transition(again.id, to, expect={current}) is ((current, to) in ALLOWED)


def test_a_stale_look_never_overrides_a_newer_state(tmp_path: Path) -> None:
    """A process that saw the run RUNNING decides it failed; meanwhile another moved it to
    COLLECTING. Its move, made with expect={RUNNING}, changes nothing and says so."""
    r = Registry(tmp_path / "registry.db")
    run = _at(r, reg.COLLECTING)
    assert r.transition(run.id, reg.FAILED, expect={reg.RUNNING}, reason="stale") is False
    row = r.get(run.id)
    assert (row.state, row.reason, row.ended_at) == (reg.COLLECTING, None, None)
    assert [e["to_state"] for e in r.events(run.id)][-1] == reg.COLLECTING
    # the same move expecting what is there is made
    assert r.transition(run.id, reg.FAILED, expect=[reg.RUNNING, reg.COLLECTING], reason="x")
    assert r.get(run.id).state == reg.FAILED
    with pytest.raises(RegistryError, match="no run 'nope'"):
        r.transition("nope", reg.FAILED)


def test_each_move_writes_its_times_reason_and_event(tmp_path: Path) -> None:
    clock = Clock(100.0)
    r = Registry(tmp_path / "registry.db", clock=clock)
    run = r.create(name="a", provider="aws", spec={"k": 1}, region="us-east-1",
                   instance_type="g4dn.xlarge", spot=True, results_uri="s3://b/p", run_id="r1")
    assert (run.id, run.name, run.provider, run.region, run.instance_type, run.spot,
            run.results_uri, run.spec) == ("r1", "a", "aws", "us-east-1", "g4dn.xlarge", True,
                                           "s3://b/p", {"k": 1})
    assert (run.created_at, run.updated_at, run.started_at, run.ended_at) == (100.0, 100.0,
                                                                               None, None)
    assert r.events("r1") == [{"id": 1, "run_id": "r1", "ts": 100.0, "kind": "created",
                               "from_state": None, "to_state": reg.PENDING,
                               "data": {"name": "a"}}]
    for t, state in ((110.0, reg.PROVISIONING), (120.0, reg.BOOTSTRAPPING)):
        clock.t = t
        assert r.transition("r1", state)
    assert r.get("r1").started_at is None            # started means RUNNING
    clock.t = 130.0
    assert r.transition("r1", reg.RUNNING, data={"ip": "10.0.0.1"})
    row = r.get("r1")
    assert (row.started_at, row.updated_at, row.ended_at) == (130.0, 130.0, None)
    clock.t = 140.0
    assert r.transition("r1", reg.PREEMPTED, reason="spot reclaimed")
    assert r.transition("r1", reg.RECOVERING)
    assert r.transition("r1", reg.RUNNING, started_at=5.0)   # a given start time is kept
    assert r.get("r1").started_at == 5.0
    clock.t = 150.0
    assert r.transition("r1", reg.FAILED, reason="boom", exit_code=3)
    row = r.get("r1")
    assert (row.state, row.reason, row.exit_code, row.ended_at) == (reg.FAILED, "boom", 3, 150.0)
    events = r.events("r1")
    assert [(e["from_state"], e["to_state"]) for e in events[1:]] == [
        (reg.PENDING, reg.PROVISIONING), (reg.PROVISIONING, reg.BOOTSTRAPPING),
        (reg.BOOTSTRAPPING, reg.RUNNING), (reg.RUNNING, reg.PREEMPTED),
        (reg.PREEMPTED, reg.RECOVERING), (reg.RECOVERING, reg.RUNNING),
        (reg.RUNNING, reg.FAILED)]
    assert {e["kind"] for e in events[1:]} == {"state"}
    assert events[3]["data"] == {"ip": "10.0.0.1"}
    assert events[4]["data"] == {"reason": "spot reclaimed"}
    assert events[-1]["data"] == {"reason": "boom"} and events[-1]["ts"] == 150.0
    assert r.events("r1", after_id=events[-2]["id"]) == [events[-1]]
    # an ended_at given with the move wins over the clock
    other = _at(r, reg.RUNNING)
    assert r.transition(other.id, reg.CANCELLED, ended_at=42.0)
    assert r.get(other.id).ended_at == 42.0


def test_a_price_given_with_the_move_prices_the_interval_it_closes(tmp_path: Path) -> None:
    clock = Clock(0.0)
    r = Registry(tmp_path / "registry.db", clock=clock)
    run = _at(r, reg.RUNNING)                       # billed since 0
    clock.t = 36.0
    assert r.transition(run.id, reg.FAILED, price_per_hour=100.0)
    row = r.get(run.id)
    assert (row.billed_s, row.billed_since, row.cost_usd) == (36.0, None, 1.0)
    # a cost given with the move is kept as given
    run = _at(r, reg.RUNNING)
    r.update(run.id, price_per_hour=100.0)
    clock.t = 72.0
    assert r.transition(run.id, reg.FAILED, cost_usd=9.0)
    assert r.get(run.id).cost_usd == 9.0
    # a move that neither opens nor closes an interval leaves the cost alone
    run = r.create(name="p", provider="aws", spec={})
    r.update(run.id, price_per_hour=100.0, cost_usd=2.5)
    assert r.transition(run.id, reg.PROVISIONING)
    assert r.get(run.id).cost_usd == 2.5


def test_billing_arithmetic_on_the_row() -> None:
    run = Run(id="x", name="x", provider="aws", state=reg.RUNNING, created_at=0.0,
              updated_at=0.0, billed_s=60.0, billed_since=100.0, price_per_hour=36.0)
    assert run.billed_seconds(160.0) == 120.0
    assert run.billed_seconds(50.0) == 60.0          # a clock behind the interval: none open
    assert run.cost_at(160.0) == 1.2
    assert run.cost_at(160.1234) == round(36.0 * 120.1234 / 3600, 4)
    closed = Run(id="y", name="y", provider="aws", state=reg.FAILED, created_at=0.0,
                 updated_at=0.0, billed_s=7.0, cost_usd=3.0)
    assert closed.billed_seconds(10**9) == 7.0
    assert closed.cost_at(10**9) == 3.0              # no $/h: the cost recorded on it
    assert closed.terminal and not run.terminal
    assert closed.to_dict()["billed_s"] == 7.0 and closed.to_dict()["id"] == "y"
    assert states.bill(10.0, None, reg.RUNNING, 50.0) == (10.0, 50.0)      # opens
    assert states.bill(10.0, 40.0, reg.COLLECTING, 50.0) == (10.0, 40.0)   # stays open
    assert states.bill(10.0, 40.0, reg.PREEMPTED, 50.0) == (20.0, None)    # closes
    assert states.bill(10.0, 60.0, reg.FAILED, 50.0) == (10.0, None)       # never negative
    assert states.bill(10.0, None, reg.FAILED, 50.0) == (10.0, None)


def test_fields_updates_json_and_merges(tmp_path: Path) -> None:
    clock = Clock(10.0)
    r = Registry(tmp_path / "registry.db", clock=clock)
    run = r.create(name="a", provider="local", spec={"a": 1, "b": 2})
    clock.t = 20.0
    r.update(run.id, spot=1, instance_ids=["i-1", "i-2"], instance={"host": "h"},
             progress={"episode": 3}, region="eu")
    row = r.get(run.id)
    assert row.spot is True and row.instance_ids == ["i-1", "i-2"]
    assert row.instance == {"host": "h"} and row.progress == {"episode": 3}
    assert (row.region, row.updated_at) == ("eu", 20.0)
    raw = sqlite3.connect(tmp_path / "registry.db").execute(
        "SELECT spot, instance_ids FROM runs WHERE id = ?", (run.id,)).fetchone()
    assert raw == (1, '["i-1", "i-2"]')
    r.update(run.id, spot=False, instance=None)
    assert r.get(run.id).spot is False and r.get(run.id).instance is None
    with pytest.raises(RegistryError, match=r"cannot update \['name', 'state'\]"):
        r.update(run.id, state=reg.FAILED, name="b")
    assert r.update_json(run.id, "progress", lambda cur: {**cur, "loss": 0.5}) == {
        "episode": 3, "loss": 0.5}
    assert r.get(run.id).progress == {"episode": 3, "loss": 0.5}
    with pytest.raises(RegistryError, match="reason is not a JSON field"):
        r.update_json(run.id, "reason", lambda cur: cur)
    with pytest.raises(RegistryError, match="no run 'zz'"):
        r.update_json("zz", "progress", lambda cur: cur)
    merged = r.merge(run.id, spec={"b": 3, "c": 4}, progress={"episode": 4})
    assert merged.spec == {"a": 1, "b": 3, "c": 4}
    assert merged.progress == {"episode": 4, "loss": 0.5}
    with pytest.raises(RegistryError, match=r"cannot merge into \['instance_ids'\]"):
        r.merge(run.id, instance_ids={"x": 1})
    with pytest.raises(RegistryError, match=r"cannot merge into \['reason'\]"):
        r.merge(run.id, reason={"x": 1})
    with pytest.raises(RegistryError, match="no run 'zz'"):
        r.merge("zz", spec={})
    r.add_event(run.id, "note", {"n": 1})
    r.add_event(run.id, "bare")
    notes = r.events(run.id)[-2:]
    assert [(e["kind"], e["data"], e["to_state"]) for e in notes] == [
        ("note", {"n": 1}, None), ("bare", {}, None)]


def test_list_and_resolve(tmp_path: Path) -> None:
    clock = Clock(1.0)
    r = Registry(tmp_path / "registry.db", clock=clock)
    old = r.create(name="same", provider="local", spec={}, run_id="b001")
    clock.t = 2.0
    new = r.create(name="same", provider="local", spec={}, run_id="b002")
    clock.t = 3.0
    done = _at(r, reg.SUCCEEDED)
    assert [x.id for x in r.list()] == [done.id, new.id, old.id]       # newest first
    assert [x.id for x in r.list(include_terminal=False)] == [new.id, old.id]
    r.transition(old.id, reg.PROVISIONING)
    assert [x.id for x in r.list(states=[reg.PROVISIONING])] == [old.id]
    assert [x.id for x in r.list(states=[reg.SUCCEEDED, reg.PENDING])] == [done.id, new.id]
    assert r.list(states=[reg.SUCCEEDED], include_terminal=False) == []
    assert r.resolve("same").id == new.id                               # the newest of a name
    assert r.resolve("b001").id == old.id and r.resolve(done.id[:8]).id == done.id
    with pytest.raises(RegistryError, match=r"run id prefix 'b00' is ambiguous \(b002, b001\)"):
        r.resolve("b00")
    with pytest.raises(RegistryError, match="no run 'zz'"):
        r.get("zz")
    assert r.get(old.id).instance is None and r.get(old.id).instance_ids == []


def test_the_controller_lease(tmp_path: Path) -> None:
    clock = Clock(1_000.0)
    path = tmp_path / "registry.db"
    me = Registry(path, clock=clock)
    other = Registry(path, clock=clock)
    other.owner = "elsewhere:1:1"                   # a controller on another host
    run = me.create(name="a", provider="aws", spec={})
    row = me.get(run.id)
    assert (row.lease_owner, row.lease_expires) == (me.owner, 1_000.0 + reg.LEASE_S)
    assert me.lease_free(row) and not other.lease_free(row)
    assert not other.acquire(run.id, [reg.PENDING])       # a live lease: nobody else
    assert other.renew(run.id) is False
    assert me.renew(run.id) and me.get(run.id).lease_expires == 1_000.0 + reg.LEASE_S
    clock.t = 1_010.0
    assert me.renew(run.id) and me.get(run.id).lease_expires == 1_010.0 + reg.LEASE_S
    other.release(run.id)                                  # not its lease: no-op
    assert me.get(run.id).lease_owner == me.owner
    assert me.transition(run.id, reg.PROVISIONING)         # LEASED: taken by the mover
    clock.t = 1_010.0 + reg.LEASE_S                        # expired exactly now
    assert other.lease_free(me.get(run.id))
    assert not other.acquire(run.id, [reg.RUNNING])        # not in the states asked
    assert other.acquire(run.id, [reg.PROVISIONING])
    row = me.get(run.id)
    assert (row.lease_owner, row.lease_expires) == ("elsewhere:1:1", clock.t + reg.LEASE_S)
    adopted = [e for e in me.events(run.id) if e["kind"] == "adopted"]
    assert [e["data"] for e in adopted] == [{"state": reg.PROVISIONING, "from": me.owner,
                                             "by": "elsewhere:1:1"}]
    assert other.acquire(run.id, [reg.PROVISIONING])       # its own again: no new event
    assert len([e for e in me.events(run.id) if e["kind"] == "adopted"]) == 1
    other.release(run.id)
    assert me.get(run.id).lease_owner is None and me.get(run.id).lease_expires is None
    assert me.acquire(run.id, {reg.PROVISIONING})
    assert [e["kind"] for e in me.events(run.id)].count("adopted") == 1  # a free lease
    assert me.transition(run.id, reg.BOOTSTRAPPING) and me.transition(run.id, reg.RUNNING)
    row = me.get(run.id)                                  # RUNNING is not LEASED: cleared
    assert (row.lease_owner, row.lease_expires) == (None, None)
    with pytest.raises(RegistryError, match="no run 'zz'"):
        me.acquire("zz", [reg.RUNNING])


def test_a_lease_whose_owner_process_is_gone_is_free(tmp_path: Path) -> None:
    clock = Clock(1_000.0)
    r = Registry(tmp_path / "registry.db", clock=clock)
    run = r.create(name="a", provider="aws", spec={})
    host = socket.gethostname()
    gone = f"{host}:{2**22 + 12345}:77"                   # no such pid
    r.update(run.id, lease_owner=gone, lease_expires=10**9)
    assert r.lease_free(r.get(run.id))
    init = f"{host}:1:{controllers._proc_start_ticks(1)}"         # pid 1 is alive: its lease holds
    r.update(run.id, lease_owner=init, lease_expires=1_000.5)
    assert not r.lease_free(r.get(run.id))
    assert r.lease_free(r.get(run.id), now=1_000.5)        # until it expires


def test_owner_gone() -> None:
    host = socket.gethostname()
    me = reg.process_owner()
    pid = os.getpid()
    ticks = controllers._proc_start_ticks(pid)
    assert ticks is not None and ticks.isdigit() and me == f"{host}:{pid}:{ticks}"
    assert reg.owner_gone(me) is False
    assert reg.owner_gone(f"{host}:{pid}:-") is False          # start time unknown: pid alive
    assert reg.owner_gone(f"{host}:{pid}:{int(ticks) + 1}") is True  # a recycled pid
    assert reg.owner_gone(f"{host}:{2**22 + 12345}:1") is True  # no such process
    assert reg.owner_gone(f"other-{host}:{2**22 + 12345}:1") is False  # another host: expire
    assert reg.owner_gone("garbage") is False
    assert reg.owner_gone(f"{host}:notapid:1") is False
    assert controllers._proc_start_ticks(2**22 + 12345) is None


def test_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQLCTL_HOME", str(tmp_path / "h"))
    assert reg.default_home() == tmp_path / "h"
    monkeypatch.delenv("DQLCTL_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "x"))
    assert reg.default_home() == tmp_path / "x" / "dqlctl" == reg.data_home()
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert reg.data_home() == tmp_path / "home" / ".local" / "share" / "dqlctl"
    ids = {reg.new_run_id() for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 8 and int(i, 16) >= 0 for i in ids)


def test_the_database_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "registry.db"
    r = Registry(path)
    r.create(name="a", provider="local", spec={})
    assert (path.parent.stat().st_mode & 0o777, path.stat().st_mode & 0o777) == (0o700, 0o600)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        assert side.exists()
    r.close()
    Registry(path).close()                              # reopened: the side files tightened
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            assert side.stat().st_mode & 0o777 == 0o600
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == reg.SCHEMA_VERSION
    cols = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
    assert {"billed_s", "billed_since", "lease_owner", "lease_expires"} <= cols
    assert json.loads(con.execute("SELECT spec FROM runs").fetchone()[0]) == {}


# -- what make mutation found unchecked ------------------------------------------------------------

def test_a_move_into_a_leased_state_takes_the_lease_for_the_mover(tmp_path: Path) -> None:
    clock = Clock(500.0)
    r = Registry(tmp_path / "registry.db", clock=clock)
    run = r.create(name="a", provider="aws", spec={})
    assert r.get(run.id).spot is False                   # on-demand unless asked
    r.update(run.id, lease_owner=None, lease_expires=None)
    clock.t = 510.0
    assert r.transition(run.id, reg.PROVISIONING)
    row = r.get(run.id)
    assert (row.lease_owner, row.lease_expires) == (r.owner, 510.0 + reg.LEASE_S)
    other = Registry(tmp_path / "registry.db", clock=clock)
    other.owner = "elsewhere:1:1"
    assert not other.lease_free(row)
    # an owner with no expiry recorded: free from time 0 on (an old row), not before
    r.update(run.id, lease_owner="elsewhere:2:2", lease_expires=None)
    assert r.lease_free(r.get(run.id), now=0.0) and not r.lease_free(r.get(run.id), now=-0.5)


def test_resolve_prefers_an_exact_id_and_lists_at_most_five(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry.db")
    exact = r.create(name="x", provider="local", spec={}, run_id="ab")
    for i in range(6):
        r.create(name=f"n{i}", provider="local", spec={}, run_id=f"ab{i}")
    r.create(name="y", provider="local", spec={}, run_id="cd01")
    assert r.resolve("ab").id == exact.id                 # also a prefix of six others
    assert r.resolve("cd").id == "cd01"                  # a unique prefix
    with pytest.raises(RegistryError) as info:
        r.resolve("a")
    listed = str(info.value).split("(")[1].split(")")[0].split(", ")
    assert len(listed) == 5 and set(listed) <= {"ab", *(f"ab{i}" for i in range(6))}


def test_json_fields_that_are_null_can_be_merged_and_updated(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry.db")
    run = r.create(name="a", provider="local", spec={})
    assert r.merge(run.id, instance={"host": "h"}).instance == {"host": "h"}
    other = r.create(name="b", provider="local", spec={})
    assert r.update_json(other.id, "instance", lambda cur: {"was": cur}) == {"was": None}
    r.update(other.id, spot="yes")                        # any truthy value is stored as 1
    raw = sqlite3.connect(tmp_path / "registry.db").execute(
        "SELECT spot FROM runs WHERE id = ?", (other.id,)).fetchone()
    assert raw == (1,)


def test_the_cost_is_kept_to_four_decimals(tmp_path: Path) -> None:
    clock = Clock(0.0)
    r = Registry(tmp_path / "registry.db", clock=clock)
    run = _at(r, reg.RUNNING)
    r.update(run.id, price_per_hour=1.0)
    clock.t = 1.0                                         # $1/h for 1 s = $0.000277...
    assert r.transition(run.id, reg.FAILED)
    assert r.get(run.id).cost_usd == 0.0003


def test_the_fault_hook_kills_the_process_right_after_the_commit(tmp_path: Path) -> None:
    """The chaos suite's hook: SIGKILL right after the transition named in the variable was
    committed (and never for another one)."""
    code = ("import sys\nfrom dqlctl.registry import Registry\n"
            f"r = Registry({str(tmp_path / 'registry.db')!r})\n"
            "run = r.create(name='a', provider='local', spec={}, run_id='k1')\n"
            "r.transition('k1', 'PROVISIONING')\nprint('survived', flush=True)\n"
            "r.transition('k1', 'BOOTSTRAPPING')\nprint('not reached', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
           reg.FAULT_KILL_AFTER: reg.BOOTSTRAPPING}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout == "survived\n"
    assert Registry(tmp_path / "registry.db").get("k1").state == reg.BOOTSTRAPPING


def _ticks_of(pid: int) -> str:
    """The 22nd field of /proc/PID/stat, read independently of the registry's parser."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 1:].split()[19]


def test_start_ticks_of_a_process_whose_name_has_a_parenthesis(tmp_path: Path) -> None:
    sleeper = tmp_path / "a) b c"
    sleeper.symlink_to(shutil.which("sleep") or "/bin/sleep")
    proc = subprocess.Popen([str(sleeper), "30"])
    try:
        wait = time.monotonic() + 10
        while "a) b c" not in Path(f"/proc/{proc.pid}/stat").read_text():
            assert time.monotonic() < wait
            time.sleep(0.01)
        assert controllers._proc_start_ticks(proc.pid) == _ticks_of(proc.pid)
        assert controllers._proc_start_ticks(os.getpid()) == _ticks_of(os.getpid())
    finally:
        proc.kill()
        proc.wait()


def test_a_zombie_is_gone(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait = time.monotonic() + 30
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < wait, "the child never became a zombie"
            time.sleep(0.01)
        ticks = _ticks_of(proc.pid)
        assert controllers._proc_start_ticks(proc.pid) is None
        assert reg.owner_gone(f"{socket.gethostname()}:{proc.pid}:{ticks}") is True
    finally:
        proc.wait()


def test_the_folder_is_made_however_deep(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "registry.db"
    Registry(path).close()
    assert path.exists() and path.parent.stat().st_mode & 0o777 == 0o700


def test_pid_exists_where_there_is_no_proc() -> None:
    """The check used on systems without /proc (callable here too)."""
    from providers.procs import pid_exists

    assert pid_exists(os.getpid()) is True
    assert pid_exists(2**22 + 12345) is False


def test_the_fault_hook_signals_this_process(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The same hook seen from inside: os.kill(this pid, SIGKILL) once the move is written."""
    killed: list[tuple[object, object]] = []
    r = Registry(tmp_path / "registry.db")
    run = r.create(name="a", provider="local", spec={})
    monkeypatch.setenv(reg.FAULT_KILL_AFTER, reg.BOOTSTRAPPING)
    monkeypatch.setattr(os, "kill", lambda *args: killed.append(args))
    assert r.transition(run.id, reg.PROVISIONING) and killed == []
    assert r.transition(run.id, reg.BOOTSTRAPPING)
    assert killed == [(os.getpid(), signal.SIGKILL)]
    assert r.get(run.id).state == reg.BOOTSTRAPPING       # committed before the kill


def test_a_run_on_several_machines_pays_each_at_its_own_price(tmp_path: Path) -> None:
    """A spot run preempted after an hour at $1/h, relaunched (a failover) at $3/h for half an
    hour: it cost $2.50, not 1.5 h at the last price ($4.50) nor at the first ($1.50)."""
    clock = Clock(0.0)
    r = Registry(tmp_path / "registry.db", clock=clock)
    run = r.create(name="moved", provider="aws", spec={})
    r.transition(run.id, reg.PROVISIONING)
    r.reprice(run.id, 1.0)
    r.transition(run.id, reg.BOOTSTRAPPING)
    r.transition(run.id, reg.RUNNING)
    clock.t = 3600.0
    assert r.get(run.id).cost_at(clock.t) == 1.0
    r.transition(run.id, reg.PREEMPTED)
    r.transition(run.id, reg.RECOVERING)
    clock.t = 4000.0                                  # not billed while waiting
    r.reprice(run.id, 3.0)
    assert r.get(run.id).cost_at(clock.t) == 1.0      # the price changed, nothing more billed
    r.transition(run.id, reg.BOOTSTRAPPING)
    r.transition(run.id, reg.RUNNING)
    clock.t = 4000.0 + 1800.0
    live = r.get(run.id)
    assert live.cost_at(clock.t) == 2.5 and live.billed_seconds(clock.t) == 5400.0
    r.transition(run.id, reg.COLLECTING)
    r.transition(run.id, reg.SUCCEEDED)
    done = r.get(run.id)
    assert done.cost_usd == 2.5 and done.cost_at(10**9) == 2.5
    # repricing in the middle of a billed interval closes what ran so far at the old price
    other = r.create(name="mid", provider="aws", spec={})
    for state in (reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING):
        r.transition(other.id, state)
    r.reprice(other.id, 2.0)
    clock.t += 1800.0
    r.reprice(other.id, 4.0)
    clock.t += 900.0
    assert r.get(other.id).cost_at(clock.t) == 2.0    # 0.5 h at 2 + 0.25 h at 4


def test_a_run_is_on_demand_unless_said_and_reprice_names_an_unknown_run(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry.db")
    assert r.create(name="plain", provider="aws", spec={}).spot is False
    with pytest.raises(RegistryError, match="no run 'nope'"):
        r.reprice("nope", 1.0)


def test_pid_exists_sends_no_signal(tmp_path: Path) -> None:
    """It asks the kernel with signal 0: the process gets nothing (a child that blocks every
    signal would have one pending otherwise)."""
    from providers.procs import pid_exists

    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, "
         "set(signal.Signals)); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert pid_exists(child.pid)
        status = Path(f"/proc/{child.pid}/status").read_text()
        pending = {k: v for k, v in (line.split(":\t") for line in status.splitlines()
                                     if line.startswith(("SigPnd", "ShdPnd")))}
        assert pending == {"SigPnd": "0" * 16, "ShdPnd": "0" * 16}, pending
    finally:
        child.kill()
        child.wait()
