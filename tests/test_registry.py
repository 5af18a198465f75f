"""The run registry: lifecycle rules, and several processes sharing one database file."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from dqlctl import registry as reg
from dqlctl import registry_schema
from dqlctl.registry import IllegalTransition, Registry, RegistryError


def test_lifecycle_is_recorded_in_order(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry.db")
    run = r.create(name="a", provider="local", spec={"x": 1})
    assert run.state == reg.PENDING
    for state in (reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING, reg.COLLECTING,
                  reg.SUCCEEDED):
        assert r.transition(run.id, state)
    done = r.get(run.id)
    assert done.state == reg.SUCCEEDED and done.started_at and done.ended_at
    states = [e["to_state"] for e in r.events(run.id)]
    assert states == [reg.PENDING, reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING,
                      reg.COLLECTING, reg.SUCCEEDED]


def test_illegal_and_late_transitions(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry.db")
    run = r.create(name="a", provider="local", spec={})
    with pytest.raises(IllegalTransition):
        r.transition(run.id, reg.SUCCEEDED)
    assert r.transition(run.id, reg.FAILED, reason="boom")
    # terminal is final: a second process arriving late changes nothing
    assert not r.transition(run.id, reg.CANCELLED)
    assert r.get(run.id).reason == "boom"


def test_resolve_by_id_prefix_and_name(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry.db")
    a = r.create(name="alpha", provider="local", spec={}, run_id="aa11")
    r.create(name="beta", provider="local", spec={}, run_id="aa22")
    assert r.resolve("aa11").id == a.id
    assert r.resolve("alpha").id == a.id
    with pytest.raises(RegistryError, match="ambiguous"):
        r.resolve("aa")
    with pytest.raises(RegistryError, match="no run"):
        r.resolve("zz")


def _race(path: str, run_id: str, barrier: mp.synchronize.Barrier, out: mp.Queue) -> None:
    r = Registry(path)
    barrier.wait()
    won = r.transition(run_id, reg.FAILED, expect={reg.RUNNING}, reason="seen by a process")
    for i in range(50):
        r.add_event(run_id, "note", {"i": i})
    out.put(won)


def test_concurrent_processes_one_winner_no_corruption(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    r = Registry(path)
    run = r.create(name="a", provider="local", spec={})
    for state in (reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING):
        r.transition(run.id, state)
    ctx = mp.get_context("spawn")
    n = 4
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(path), run.id, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(results) == [False] * (n - 1) + [True]
    events = r.events(run.id)
    assert sum(1 for e in events if e["to_state"] == reg.FAILED) == 1
    assert sum(1 for e in events if e["kind"] == "note") == n * 50
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _open_fresh(root: str, n: int, barrier: mp.synchronize.Barrier, out: mp.Queue) -> None:
    errors = []
    for i in range(n):
        barrier.wait()
        try:
            Registry(Path(root) / f"{i}.db").close()
        except sqlite3.OperationalError as e:
            errors.append(f"{i}.db: {e}")
    out.put(errors)


def test_processes_opening_a_new_registry_at_once_all_get_it(tmp_path: Path) -> None:
    """The first commands on a machine race to create the database: SQLite answers "database is
    locked" to a journal-mode switch without waiting, so each of these used to fail about one
    race in ten (a flaky CI run showed it); every process must open the registry."""
    ctx = mp.get_context("spawn")
    k, n = 6, 100
    barrier = ctx.Barrier(k)
    out = ctx.Queue()
    procs = [ctx.Process(target=_open_fresh, args=(str(tmp_path), n, barrier, out))
             for _ in range(k)]
    for p in procs:
        p.start()
    errors = [e for _ in procs for e in out.get(timeout=300)]
    for p in procs:
        p.join(timeout=60)
    assert errors == []
    con = sqlite3.connect(tmp_path / f"{n - 1}.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == registry_schema.SCHEMA_VERSION


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_billed_time_is_kept_on_the_row_by_the_transitions(tmp_path: Path) -> None:
    """Entering a billed state opens an interval, leaving one closes it, in the same transaction;
    the cost at any moment is arithmetic on the row and agrees with the events."""
    from providers.prices.estimate import accrued_cost, billable_intervals

    clock = _Clock(1_000.0)
    r = Registry(tmp_path / "registry.db", clock=clock)
    run = r.create(name="a", provider="aws", spec={})
    r.update(run.id, price_per_hour=3.6)  # one cent a ten seconds
    steps = [(1_010.0, reg.PROVISIONING), (1_020.0, reg.BOOTSTRAPPING), (1_030.0, reg.RUNNING),
             (1_120.0, reg.PREEMPTED), (1_200.0, reg.RECOVERING), (1_210.0, reg.BOOTSTRAPPING),
             (1_260.0, reg.RUNNING)]
    for t, state in steps:
        clock.t = t
        assert r.transition(run.id, state)
    row = r.get(run.id)
    assert row.billed_s == 100.0 and row.billed_since == 1_210.0
    assert row.cost_usd == 0.1                  # priced when the first interval closed
    assert row.cost_at(1_310.0) == 0.2          # 100 s closed + 100 s open at $3.60/h
    clock.t = 1_400.0
    assert r.transition(run.id, reg.CANCELLED)
    done = r.get(run.id)
    assert (done.billed_s, done.billed_since, done.cost_usd) == (290.0, None, 0.29)
    assert done.cost_at(99_999.0) == 0.29       # an ended run costs no more
    intervals = billable_intervals(r.events(run.id), 99_999.0)
    assert round(accrued_cost(intervals, 3.6), 4) == done.cost_at(99_999.0)


def test_a_run_without_a_price_keeps_its_recorded_cost(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry.db")
    run = r.create(name="a", provider="local", spec={})
    r.update(run.id, cost_usd=1.25)
    for state in (reg.PROVISIONING, reg.BOOTSTRAPPING, reg.RUNNING, reg.FAILED):
        r.transition(run.id, state)
    assert r.get(run.id).cost_at(10**10) == 1.25


_OLD_SCHEMA = registry_schema._SCHEMA.replace(
    ",\n    billed_s      REAL NOT NULL DEFAULT 0,\n    billed_since  REAL", "")


def test_an_older_database_gets_the_billing_columns_from_its_events(tmp_path: Path) -> None:
    """A registry made before the billing columns: they are added and filled once from each
    run's state events; later looks read the row."""
    assert "billed_s" not in _OLD_SCHEMA
    path = tmp_path / "registry.db"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA)
    conn.execute("INSERT INTO runs (id, name, provider, state, created_at, updated_at,"
                 " price_per_hour) VALUES ('r1', 'old', 'aws', 'RUNNING', 0, 0, 36.0)")
    for ts, frm, to in [(0, None, "PENDING"), (10, "PENDING", "PROVISIONING"),
                        (20, "PROVISIONING", "BOOTSTRAPPING"), (30, "BOOTSTRAPPING", "RUNNING"),
                        (50, "RUNNING", "PREEMPTED"), (60, "PREEMPTED", "RECOVERING"),
                        (70, "RECOVERING", "BOOTSTRAPPING"), (80, "BOOTSTRAPPING", "RUNNING")]:
        conn.execute("INSERT INTO events (run_id, ts, kind, from_state, to_state) VALUES"
                     " ('r1', ?, 'state', ?, ?)", (ts, frm, to))
    conn.commit()
    conn.close()
    r = Registry(path)
    run = r.get("r1")
    assert (run.billed_s, run.billed_since) == (30.0, 70.0)
    assert run.cost_at(100.0) == round(36.0 * 60 / 3600, 4)
    r.close()
    assert Registry(path).get("r1").billed_s == 30.0  # migrated once, not again
