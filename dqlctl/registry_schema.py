"""The registry's SQLite schema and its migrations (``PRAGMA user_version``), and the file modes
that keep the database private. ``dqlctl.registry`` applies them."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from dqlctl.states import bill


class RegistryError(Exception):
    """A registry row that is not there, or a change it refuses (``dqlctl.registry``)."""

# The first version of the schema; every change since is a migration (``_MIGRATIONS``).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    provider      TEXT NOT NULL,
    region        TEXT,
    instance_type TEXT,
    spot          INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    started_at    REAL,
    ended_at      REAL,
    instance_ids  TEXT NOT NULL DEFAULT '[]',
    instance      TEXT,
    results_uri   TEXT,
    price_per_hour REAL,
    cost_usd      REAL NOT NULL DEFAULT 0,
    exit_code     INTEGER,
    reason        TEXT,
    spec          TEXT NOT NULL DEFAULT '{}',
    progress      TEXT NOT NULL DEFAULT '{}',
    metrics       TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state);
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL REFERENCES runs(id),
    ts         REAL NOT NULL,
    kind       TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT,
    data       TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);
"""


def _add_columns(c: sqlite3.Connection, columns: dict[str, str]) -> bool:
    """Add the ``runs`` columns that are missing; whether any was."""
    have = {r["name"] for r in c.execute("PRAGMA table_info(runs)")}
    missing = {k: v for k, v in columns.items() if k not in have}
    for name, decl in missing.items():
        c.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
    return bool(missing)


def _v1_tables(c: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            c.execute(statement)


def _v2_billing(c: sqlite3.Connection) -> None:
    """The billing columns, filled once from each run's state events (what was computed on
    every look before)."""
    if not _add_columns(c, {"billed_s": "REAL NOT NULL DEFAULT 0", "billed_since": "REAL"}):
        return
    rows = c.execute("SELECT run_id, ts, to_state FROM events WHERE to_state IS NOT NULL"
                     " ORDER BY run_id, id")
    billing: dict[str, tuple[float, float | None]] = {}
    for r in rows:
        closed, since = billing.get(r["run_id"], (0.0, None))
        billing[r["run_id"]] = bill(closed, since, r["to_state"], float(r["ts"]))
    for run_id, (closed, since) in billing.items():
        c.execute("UPDATE runs SET billed_s = ?, billed_since = ? WHERE id = ?",
                  (closed, since, run_id))


def _v3_lease(c: sqlite3.Connection) -> None:
    """The controller lease (a run made before it has none: the next look may adopt it)."""
    _add_columns(c, {"lease_owner": "TEXT", "lease_expires": "REAL"})


def _v4_sweeps(c: sqlite3.Connection) -> None:
    """Sweeps (``dqlctl.sweeps``): a ``sweeps`` row per sweep, its members' queue in
    ``sweep_members`` (one row per member, its run id reserved, the run row made when the member
    starts), and ``runs.sweep_id`` linking a member's run to its sweep."""
    c.execute("""CREATE TABLE IF NOT EXISTS sweeps (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        provider    TEXT NOT NULL,
        state       TEXT NOT NULL,
        created_at  REAL NOT NULL,
        ended_at    REAL,
        concurrency INTEGER NOT NULL,
        max_cost    REAL,
        reason      TEXT,
        spec        TEXT NOT NULL DEFAULT '{}')""")
    c.execute("""CREATE TABLE IF NOT EXISTS sweep_members (
        sweep_id   TEXT NOT NULL REFERENCES sweeps(id),
        idx        INTEGER NOT NULL,
        run_id     TEXT NOT NULL UNIQUE,
        name       TEXT NOT NULL,
        state      TEXT NOT NULL,
        request    TEXT NOT NULL DEFAULT '{}',
        reason     TEXT,
        PRIMARY KEY (sweep_id, idx))""")
    _add_columns(c, {"sweep_id": "TEXT"})
    c.execute("CREATE INDEX IF NOT EXISTS runs_sweep ON runs(sweep_id)")


def _v5_prices(c: sqlite3.Connection) -> None:
    """What a run's earlier machines cost at their own $/h (a recovery or a failover may land
    on a dearer or cheaper one): ``cost_closed`` USD for the first ``priced_s`` billed seconds."""
    _add_columns(c, {"cost_closed": "REAL NOT NULL DEFAULT 0",
                     "priced_s": "REAL NOT NULL DEFAULT 0"})


def _v6_pool_vms(c: sqlite3.Connection) -> None:
    """A sweep's VM pool (``dqlctl.sweeps.pool``): one ``pool_vms`` row per VM its members
    share, with the member on it now (or last), its state (BUSY, IDLE, RETIRING, GONE) and the
    instance record as the last member left it. A member's run row keeps the VM's record in
    ``runs.instance`` as every run does."""
    c.execute("""CREATE TABLE IF NOT EXISTS pool_vms (
        instance_id TEXT PRIMARY KEY,
        sweep_id    TEXT NOT NULL REFERENCES sweeps(id),
        provider    TEXT NOT NULL,
        owner_run   TEXT NOT NULL,
        run_id      TEXT,
        state       TEXT NOT NULL,
        instance    TEXT NOT NULL DEFAULT '{}',
        members     INTEGER NOT NULL DEFAULT 1,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        ended_at    REAL,
        reason      TEXT)""")
    c.execute("CREATE INDEX IF NOT EXISTS pool_vms_sweep ON pool_vms(sweep_id, state)")


#: ``(version, step)`` in order: a database at version N gets every step above N. A database
#: from before versioning (user_version 0) gets them all; each step tolerates what is there.
_MIGRATIONS: tuple[tuple[int, Any], ...] = ((1, _v1_tables), (2, _v2_billing), (3, _v3_lease),
                                           (4, _v4_sweeps), (5, _v5_prices),
                                           (6, _v6_pool_vms))
SCHEMA_VERSION = _MIGRATIONS[-1][0]


def private(path: Path) -> None:
    """The database folder 0700 and the database 0600, created so (or tightened when not)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path.parent, 0o700)
    except PermissionError:  # a folder someone else owns: the file modes still hold
        pass
    try:  # never open (and close) an existing database: closing any descriptor of it drops
        # the POSIX locks SQLite holds on it in this process (another connection's included)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    except FileExistsError:
        os.chmod(path, 0o600)
