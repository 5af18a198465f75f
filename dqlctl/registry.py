"""The run registry: one SQLite database (WAL) that never forgets a run or an instance.

One row per run in ``runs`` and an append-only ``events`` table. Every state change is a single
``BEGIN IMMEDIATE`` transaction that checks the current state, writes the new one and appends an
event, so several dqlctl processes (a TUI, a ``logs -f``, a ``ps``) can share the file: the first
to see that a run ended records it; the others find the transition already made and move on.

State is written *before* it is acted on: a run is PROVISIONING before the cloud is asked for a
machine, so a controller that dies mid-call leaves a row that ``reconcile`` can finish.

Billing is kept on the row where it changes: the transition that enters or leaves a billed state
(``BILLED``) also updates ``billed_s`` (seconds of closed billed intervals) and ``billed_since``
(when the open one began, NULL when none), and ``cost_usd`` when the run has a $/h. So what a run
has cost at any moment is arithmetic on its row (``Run.cost_at``), never a scan of its events.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The lifecycle (DESIGN.md). Terminal states never change again.
PENDING = "PENDING"
PROVISIONING = "PROVISIONING"
BOOTSTRAPPING = "BOOTSTRAPPING"
RUNNING = "RUNNING"
COLLECTING = "COLLECTING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
PREEMPTED = "PREEMPTED"
RECOVERING = "RECOVERING"

TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({PENDING, PROVISIONING, BOOTSTRAPPING, RUNNING, COLLECTING, PREEMPTED,
                    RECOVERING})
_ANY_END = {FAILED, CANCELLED}
# States in which a run holds a machine (billed): from BOOTSTRAPPING until it ends or is
# preempted; RECOVERING waits for a new machine. (``providers.prices.estimate.BILLED_STATES`` is
# the same set, for the month-by-month report made from the events.)
BILLED = frozenset({BOOTSTRAPPING, RUNNING, COLLECTING})
TRANSITIONS: dict[str, set[str]] = {
    PENDING: {PROVISIONING} | _ANY_END,
    PROVISIONING: {BOOTSTRAPPING} | _ANY_END,
    BOOTSTRAPPING: {RUNNING} | _ANY_END,
    RUNNING: {COLLECTING, PREEMPTED} | _ANY_END,
    COLLECTING: {SUCCEEDED} | _ANY_END,
    PREEMPTED: {RECOVERING} | _ANY_END,
    RECOVERING: {RUNNING, BOOTSTRAPPING} | _ANY_END,
}

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
    metrics       TEXT NOT NULL DEFAULT '{}',
    billed_s      REAL NOT NULL DEFAULT 0,
    billed_since  REAL
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

_JSON_FIELDS = ("instance_ids", "instance", "spec", "progress", "metrics")
_UPDATABLE = frozenset({"region", "instance_type", "spot", "started_at", "ended_at",
                        "instance_ids", "instance", "results_uri", "price_per_hour", "cost_usd",
                        "exit_code", "reason", "spec", "progress", "metrics", "billed_s",
                        "billed_since"})


class RegistryError(Exception):
    pass


class IllegalTransition(RegistryError):
    pass


@dataclass
class Run:
    id: str
    name: str
    provider: str
    state: str
    created_at: float
    updated_at: float
    region: str | None = None
    instance_type: str | None = None
    spot: bool = False
    started_at: float | None = None
    ended_at: float | None = None
    instance_ids: list[str] = field(default_factory=list)
    instance: dict[str, Any] | None = None
    results_uri: str | None = None
    price_per_hour: float | None = None
    cost_usd: float = 0.0
    exit_code: int | None = None
    reason: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    billed_s: float = 0.0              # seconds in closed billed intervals
    billed_since: float | None = None  # start of the billed interval still open

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def billed_seconds(self, now: float) -> float:
        """Seconds the run has held a machine up to ``now``."""
        open_s = max(0.0, now - self.billed_since) if self.billed_since is not None else 0.0
        return self.billed_s + open_s

    def cost_at(self, now: float) -> float:
        """USD the run has cost up to ``now``: its billed time at its $/h, else the cost
        recorded on it (a provider with no $/h)."""
        if not self.price_per_hour:
            return self.cost_usd
        return round(self.price_per_hour * self.billed_seconds(now) / 3600.0, 4)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _bill(closed_s: float, since: float | None, to_state: str,
          now: float) -> tuple[float, float | None]:
    """``(billed_s, billed_since)`` after a move to ``to_state`` at ``now``: entering a billed
    state opens an interval, leaving one closes it."""
    if to_state in BILLED:
        return closed_s, since if since is not None else now
    if since is not None:
        return closed_s + max(0.0, now - since), None
    return closed_s, None


def default_home() -> Path:
    env = os.environ.get("DQLCTL_HOME")
    return Path(env) if env else data_home()


def data_home() -> Path:
    """dqlctl's home when ``$DQLCTL_HOME`` names none: ``$XDG_DATA_HOME/dqlctl``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dqlctl"


def new_run_id() -> str:
    return secrets.token_hex(4)


class Registry:
    """The SQLite registry at ``<home>/registry.db``."""

    def __init__(self, path: str | os.PathLike[str], clock: Any = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA busy_timeout = 30000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        with self._tx() as c:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            self._migrate(c)

    def close(self) -> None:
        self._conn.close()

    @staticmethod
    def _migrate(c: sqlite3.Connection) -> None:
        """Bring a database made by an older dqlctl up to this schema: the billing columns,
        filled once from each run's state events (what was computed on every look before)."""
        columns = {r["name"] for r in c.execute("PRAGMA table_info(runs)")}
        if "billed_s" in columns:
            return
        c.execute("ALTER TABLE runs ADD COLUMN billed_s REAL NOT NULL DEFAULT 0")
        c.execute("ALTER TABLE runs ADD COLUMN billed_since REAL")
        rows = c.execute("SELECT run_id, ts, to_state FROM events WHERE to_state IS NOT NULL"
                         " ORDER BY run_id, id")
        billing: dict[str, tuple[float, float | None]] = {}
        for r in rows:
            closed, since = billing.get(r["run_id"], (0.0, None))
            billing[r["run_id"]] = _bill(closed, since, r["to_state"], float(r["ts"]))
        for run_id, (closed, since) in billing.items():
            c.execute("UPDATE runs SET billed_s = ?, billed_since = ? WHERE id = ?",
                      (closed, since, run_id))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    # -- reading ---------------------------------------------------------------------------------

    @staticmethod
    def _row_to_run(row: sqlite3.Row) -> Run:
        data = dict(row)
        for key in _JSON_FIELDS:
            raw = data.get(key)
            data[key] = json.loads(raw) if raw else ({} if key != "instance_ids" else [])
        if data["instance"] == {}:
            data["instance"] = None
        data["spot"] = bool(data["spot"])
        return Run(**data)

    def get(self, run_id: str) -> Run:
        row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RegistryError(f"no run {run_id!r}")
        return self._row_to_run(row)

    def list(self, *, include_terminal: bool = True, states: Iterable[str] | None = None) -> list[Run]:
        sql = "SELECT * FROM runs"
        args: list[Any] = []
        wanted = set(states) if states is not None else None
        if not include_terminal:
            wanted = (wanted or set(ACTIVE)) - TERMINAL
        if wanted is not None:
            sql += f" WHERE state IN ({','.join('?' * len(wanted))})"
            args.extend(sorted(wanted))
        sql += " ORDER BY created_at DESC, id"
        return [self._row_to_run(r) for r in self._conn.execute(sql, args)]

    def resolve(self, ref: str) -> Run:
        """A run by id, unique id prefix, or name (the newest run of that name)."""
        row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (ref,)).fetchone()
        if row is not None:
            return self._row_to_run(row)
        rows = self._conn.execute(
            "SELECT * FROM runs WHERE id LIKE ? ORDER BY created_at DESC", (ref + "%",)).fetchall()
        if len(rows) == 1:
            return self._row_to_run(rows[0])
        if len(rows) > 1:
            ids = ", ".join(r["id"] for r in rows[:5])
            raise RegistryError(f"run id prefix {ref!r} is ambiguous ({ids}); give more characters")
        row = self._conn.execute(
            "SELECT * FROM runs WHERE name = ? ORDER BY created_at DESC LIMIT 1", (ref,)).fetchone()
        if row is not None:
            return self._row_to_run(row)
        raise RegistryError(f"no run {ref!r} (see `dqlctl ps --all` for run ids and names)")

    def events(self, run_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT * FROM events WHERE run_id = ? AND id > ? ORDER BY id", (run_id, after_id))
        out = []
        for r in rows:
            item = dict(r)
            item["data"] = json.loads(item["data"])
            out.append(item)
        return out

    # -- writing ---------------------------------------------------------------------------------

    def create(self, *, name: str, provider: str, spec: dict[str, Any], region: str | None = None,
               instance_type: str | None = None, spot: bool = False,
               results_uri: str | None = None, run_id: str | None = None) -> Run:
        now = self.clock()
        rid = run_id or new_run_id()
        with self._tx() as c:
            c.execute(
                "INSERT INTO runs (id, name, provider, region, instance_type, spot, state,"
                " created_at, updated_at, results_uri, spec) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (rid, name, provider, region, instance_type, int(spot), PENDING, now, now,
                 results_uri, json.dumps(spec)))
            c.execute("INSERT INTO events (run_id, ts, kind, to_state, data) VALUES (?,?,?,?,?)",
                      (rid, now, "created", PENDING, json.dumps({"name": name})))
        return self.get(rid)

    def _set_fields(self, c: sqlite3.Connection, run_id: str, now: float,
                    fields: dict[str, Any]) -> None:
        bad = set(fields) - _UPDATABLE
        if bad:
            raise RegistryError(f"cannot update {sorted(bad)}")
        cols = ["updated_at = ?"]
        args: list[Any] = [now]
        for key, value in fields.items():
            if key in _JSON_FIELDS:
                value = json.dumps(value)
            elif key == "spot":
                value = int(bool(value))
            cols.append(f"{key} = ?")
            args.append(value)
        args.append(run_id)
        c.execute(f"UPDATE runs SET {', '.join(cols)} WHERE id = ?", args)

    def transition(self, run_id: str, to_state: str, *, expect: Iterable[str] | None = None,
                   reason: str | None = None, data: dict[str, Any] | None = None,
                   **fields: Any) -> bool:
        """Move a run to ``to_state``; False when it is not in an expected state (no change).

        ``expect`` defaults to every state that may legally lead to ``to_state``. Another
        process having made the same move first is the common, harmless reason for False.
        """
        now = self.clock()
        with self._tx() as c:
            row = c.execute("SELECT state, billed_s, billed_since, price_per_hour FROM runs"
                            " WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RegistryError(f"no run {run_id!r}")
            current = row["state"]
            allowed = to_state in TRANSITIONS.get(current, set())
            if expect is not None and current not in set(expect):
                return False
            if not allowed:
                if current in TERMINAL or expect is not None:
                    return False
                raise IllegalTransition(f"run {run_id}: {current} -> {to_state} is not allowed")
            if reason is not None:
                fields["reason"] = reason
            if to_state == RUNNING and "started_at" not in fields:
                fields["started_at"] = now
            if to_state in TERMINAL:
                fields.setdefault("ended_at", now)
            billed_s, since = _bill(row["billed_s"], row["billed_since"], to_state, now)
            if (billed_s, since) != (row["billed_s"], row["billed_since"]):
                fields.update(billed_s=billed_s, billed_since=since)
                price = fields.get("price_per_hour", row["price_per_hour"])
                if price and "cost_usd" not in fields:
                    fields["cost_usd"] = round(price * billed_s / 3600.0, 4)
            self._set_fields(c, run_id, now, fields)
            c.execute("UPDATE runs SET state = ? WHERE id = ?", (to_state, run_id))
            payload = dict(data or {})
            if reason:
                payload["reason"] = reason
            c.execute(
                "INSERT INTO events (run_id, ts, kind, from_state, to_state, data)"
                " VALUES (?,?,?,?,?,?)",
                (run_id, now, "state", current, to_state, json.dumps(payload)))
        return True

    def update(self, run_id: str, **fields: Any) -> None:
        """Change fields other than the state (progress, metrics, instance, cost ...)."""
        with self._tx() as c:
            self._set_fields(c, run_id, self.clock(), fields)

    def add_event(self, run_id: str, kind: str, data: dict[str, Any] | None = None) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO events (run_id, ts, kind, data) VALUES (?,?,?,?)",
                      (run_id, self.clock(), kind, json.dumps(data or {})))
