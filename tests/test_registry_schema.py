"""The registry's schema version, its privacy, and updates of its JSON fields under concurrency.

- a database written by a newer dqlctl is one line and exit 1 for every verb that reads it;
- a database made before versioning is migrated in order, its rows kept;
- registry.db (and its WAL/SHM files) is 0600 in a 0700 folder, looser ones are tightened;
- JSON fields changed by several processes at once lose no update.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from dqlctl import registry_schema
from dqlctl.cli import main
from dqlctl.context import Context
from dqlctl.registry import SCHEMA_VERSION, Registry


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_registry_is_versioned_and_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = Registry(home / "registry.db")
    r.create(name="a", provider="local", spec={})  # writes: the WAL and SHM files exist
    con = sqlite3.connect(home / "registry.db")
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert mode(home) == 0o700
    files = [home / n for n in ("registry.db", "registry.db-wal", "registry.db-shm")]
    assert all(f.exists() for f in files)
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}


def test_an_older_world_readable_registry_is_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Registry(home / "registry.db").create(name="a", provider="local", spec={})
    home.chmod(0o755)
    for f in home.iterdir():
        f.chmod(0o644)
    r = Registry(home / "registry.db")
    assert [x.name for x in r.list()] == ["a"]
    assert mode(home) == 0o700
    assert {f.name: mode(f) for f in home.iterdir()} == {f.name: 0o600 for f in home.iterdir()}


def newer(home: Path) -> None:
    Registry(home / "registry.db").close()
    con = sqlite3.connect(home / "registry.db")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.execute("ALTER TABLE runs ADD COLUMN from_the_future TEXT")
    con.commit()
    con.close()


@pytest.mark.parametrize("argv", [
    ["ps"], ["ps", "--all", "--json"], ["show", "x"], ["logs", "x"], ["down", "x", "--yes"],
    ["stop", "x"], ["ssh", "x"], ["launch", "--data", "test_small.csv"], ["tui"], [],
])
def test_a_registry_from_a_newer_dqlctl_is_one_line_and_exit_1(
        tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQLCTL_HOME", str(tmp_path))
    newer(tmp_path)
    assert main(argv, ctx=Context(home=tmp_path)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"dqlctl: error: registry.db was written by a newer dqlctl (schema {SCHEMA_VERSION + 1},"
        f" this one knows {SCHEMA_VERSION}): upgrade dqlctl"]
    assert list((tmp_path / "runs").glob("*")) == []  # nothing was started


def test_a_registry_from_before_versioning_is_migrated_in_order(tmp_path: Path) -> None:
    """A database the previous dqlctl wrote (every column but the lease, no user_version)."""
    path = tmp_path / "registry.db"
    con = sqlite3.connect(path)
    con.executescript(registry_schema._SCHEMA)
    con.execute("ALTER TABLE runs ADD COLUMN billed_s REAL NOT NULL DEFAULT 0")
    con.execute("ALTER TABLE runs ADD COLUMN billed_since REAL")
    con.execute("INSERT INTO runs (id, name, provider, state, created_at, updated_at, billed_s,"
                " billed_since) VALUES ('r1', 'old', 'local', 'BOOTSTRAPPING', 0, 0, 5, 10)")
    con.commit()
    con.close()
    run = Registry(path).get("r1")
    assert (run.billed_s, run.billed_since, run.lease_owner) == (5.0, 10.0, None)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def _bump(path: str, run_id: str, who: int, barrier: Any, n: int) -> None:
    r = Registry(path)
    barrier.wait()
    for i in range(n):
        r.merge(run_id, progress={f"p{who}-{i}": i})
        r.update_json(run_id, "metrics", lambda m: {**m, "count": m.get("count", 0) + 1})


def test_concurrent_json_updates_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    r = Registry(path)
    run = r.create(name="a", provider="local", spec={})
    r.merge(run.id, progress={"kept": True})
    spawn = mp.get_context("spawn")
    n, each = 4, 40
    barrier = spawn.Barrier(n)
    procs = [spawn.Process(target=_bump, args=(str(path), run.id, who, barrier, each))
             for who in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    row = r.get(run.id)
    assert row.metrics["count"] == n * each
    assert len(row.progress) == n * each + 1 and row.progress["kept"] is True
