"""The run registry: lifecycle rules, and several processes sharing one database file."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from dqlctl import registry as reg
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
