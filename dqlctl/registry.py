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

A run in a state where one process works on it (``LEASED``: bring-up, collecting, recovering)
has a *controller lease* on its row: the owner (``host:pid:start-time``) and when the lease
expires. The transition into such a state takes the lease for the process making it, in the same
transaction; the worker renews it (``renew``); a later process may take it over (``acquire``)
only once it has expired or its owner's process is gone from this host. So two processes never
both act on a run, and none is left without an actor.

The schema is versioned (``PRAGMA user_version``): a database from an older dqlctl is migrated in
order (``dqlctl.registry_schema``), one from a newer dqlctl is refused with one line (``SchemaTooNew``).
The database (and its WAL/SHM files) is private: 0600, in a 0700 folder.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dqlctl.controllers import owner_gone, process_owner
from dqlctl.errors import EXIT_RUN_FAILED, DqlctlError
from dqlctl.registry_schema import _MIGRATIONS, SCHEMA_VERSION, RegistryError, private
from dqlctl.registry_sweeps import SweepRegistry
from dqlctl.states import (
    ACTIVE,
    BILLED,
    BOOTSTRAPPING,
    CANCELLED,
    COLLECTING,
    FAILED,
    LEASE_S,
    LEASED,
    PENDING,
    PREEMPTED,
    PROVISIONING,
    RECOVERING,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    TRANSITIONS,
    Run,
    bill,
    priced,
)

# The lifecycle lives in dqlctl.states; it is read as ``registry.RUNNING`` etc. everywhere.
__all__ = [
    "ACTIVE", "BILLED", "BOOTSTRAPPING", "CANCELLED", "COLLECTING", "FAILED", "LEASED",
    "LEASE_S", "PENDING", "PREEMPTED", "PROVISIONING", "RECOVERING", "RUNNING", "SCHEMA_VERSION",
    "SUCCEEDED", "TERMINAL", "TRANSITIONS", "FAULT_KILL_AFTER", "IllegalTransition", "Registry",
    "RegistryError", "Run", "SchemaTooNew", "data_home", "default_home", "new_run_id",
    "owner_gone", "process_owner",
]

#: Test-only fault injection: a process with this environment variable set to a state SIGKILLs
#: itself right after committing a transition into that state (the chaos suite,
#: tests/test_chaos.py, kills dqlctl at every transition of a launch this way). Never set it
#: otherwise.
FAULT_KILL_AFTER = "DQLCTL_FAULT_KILL_AFTER"

_JSON_FIELDS = ("instance_ids", "instance", "spec", "progress", "metrics")
_UPDATABLE = frozenset({"region", "instance_type", "spot", "started_at", "ended_at",
                        "instance_ids", "instance", "results_uri", "price_per_hour", "cost_usd",
                        "exit_code", "reason", "spec", "progress", "metrics", "billed_s",
                        "billed_since", "lease_owner", "lease_expires", "cost_closed",
                        "priced_s", "provider"})


class IllegalTransition(RegistryError):
    pass


class SchemaTooNew(DqlctlError):
    """The database was written by a newer dqlctl: one line, exit 1, for every verb."""

    exit_code = EXIT_RUN_FAILED


_RUN_FIELDS = frozenset(Run.__dataclass_fields__)


def default_home() -> Path:
    env = os.environ.get("DQLCTL_HOME")
    return Path(env) if env else data_home()


def data_home() -> Path:
    """dqlctl's home when ``$DQLCTL_HOME`` names none: ``$XDG_DATA_HOME/dqlctl``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dqlctl"


def new_run_id() -> str:
    return secrets.token_hex(4)


class Registry(SweepRegistry):
    """The SQLite registry at ``<home>/registry.db`` (its sweep tables: ``SweepRegistry``)."""

    def __init__(self, path: str | os.PathLike[str], clock: Any = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.owner = process_owner()
        private(self.path)
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA busy_timeout = 30000")
        try:
            self._check_version(self._version())
            self._use_wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            if self._version() < SCHEMA_VERSION:
                with self._tx() as c:
                    self._migrate(c)
        except SchemaTooNew:
            self._conn.close()
            raise
        for suffix in ("-wal", "-shm"):  # SQLite gives them the database's mode; older ones
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)

    def close(self) -> None:
        self._conn.close()

    def _use_wal(self) -> None:
        """Put the database in WAL mode, once: SQLite answers "database is locked" without
        calling the busy handler when two processes switch a new database's journal mode at
        the same moment, so that one statement is retried here (bounded, with backoff)."""
        deadline, delay = time.monotonic() + 30.0, 0.002
        while True:
            try:
                if self._conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path.name} was written by a newer dqlctl (schema "
                               f"{version}, this one knows {SCHEMA_VERSION}): upgrade dqlctl")

    def _migrate(self, c: sqlite3.Connection) -> None:
        """Bring a database made by an older dqlctl up to this schema, in one transaction."""
        version = self._version()  # again, inside the transaction: another process may have
        self._check_version(version)
        for step_version, step in _MIGRATIONS:
            if step_version > version:
                step(c)
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
        return Run(**{k: v for k, v in data.items() if k in _RUN_FIELDS})

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
        rid = run_id or new_run_id()
        with self._tx() as c:
            self._insert_run(c, rid, name=name, provider=provider, spec=spec, region=region,
                             instance_type=instance_type, spot=spot, results_uri=results_uri)
        return self.get(rid)

    def _insert_run(self, c: sqlite3.Connection, rid: str, *, name: str, provider: str,
                    spec: dict[str, Any], region: str | None, instance_type: str | None,
                    spot: bool, results_uri: str | None, sweep_id: str | None = None) -> None:
        """A new PENDING row (and its ``created`` event) inside the caller's transaction, its
        controller lease held by this process."""
        now = self.clock()
        c.execute(
            "INSERT INTO runs (id, name, provider, region, instance_type, spot, state,"
            " created_at, updated_at, results_uri, spec, lease_owner, lease_expires, sweep_id)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rid, name, provider, region, instance_type, int(spot), PENDING, now, now,
             results_uri, json.dumps(spec), self.owner, now + LEASE_S, sweep_id))
        c.execute("INSERT INTO events (run_id, ts, kind, to_state, data) VALUES (?,?,?,?,?)",
                  (rid, now, "created", PENDING, json.dumps({"name": name})))

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
        A move into a ``LEASED`` state takes the controller lease for this process; any other
        move clears it.
        """
        now = self.clock()
        with self._tx() as c:
            row = c.execute("SELECT state, billed_s, billed_since, price_per_hour, "
                            "cost_closed, priced_s FROM runs WHERE id = ?", (run_id,)).fetchone()
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
            if to_state in LEASED:
                fields.update(lease_owner=self.owner, lease_expires=now + LEASE_S)
            else:
                fields.update(lease_owner=None, lease_expires=None)
            billed_s, since = bill(row["billed_s"], row["billed_since"], to_state, now)
            if (billed_s, since) != (row["billed_s"], row["billed_since"]):
                fields.update(billed_s=billed_s, billed_since=since)
                price = fields.get("price_per_hour", row["price_per_hour"])
                if price and "cost_usd" not in fields:
                    fields["cost_usd"] = priced(row["cost_closed"], row["priced_s"], price,
                                                billed_s)
            self._set_fields(c, run_id, now, fields)
            c.execute("UPDATE runs SET state = ? WHERE id = ?", (to_state, run_id))
            payload = dict(data or {})
            if reason:
                payload["reason"] = reason
            c.execute(
                "INSERT INTO events (run_id, ts, kind, from_state, to_state, data)"
                " VALUES (?,?,?,?,?,?)",
                (run_id, now, "state", current, to_state, json.dumps(payload)))
        if os.environ.get(FAULT_KILL_AFTER) == to_state:  # tests only: see FAULT_KILL_AFTER
            os.kill(os.getpid(), signal.SIGKILL)
        return True

    def update(self, run_id: str, **fields: Any) -> None:
        """Change fields other than the state (instance, cost ...). A JSON field written here
        replaces the stored one: to change part of one, use ``update_json`` or ``merge``."""
        with self._tx() as c:
            self._set_fields(c, run_id, self.clock(), fields)

    def reprice(self, run_id: str, price_per_hour: float | None) -> None:
        """The run is on a new machine at ``price_per_hour``: what it has been billed so far
        stays at the old $/h (``cost_closed`` for ``priced_s`` seconds), what follows is billed
        at the new one. So a run's cost adds up every machine it used, each at its own price."""
        now = self.clock()
        with self._tx() as c:
            row = c.execute("SELECT billed_s, billed_since, price_per_hour, cost_closed, "
                            "priced_s, cost_usd FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RegistryError(f"no run {run_id!r}")
            open_s = max(0.0, now - row["billed_since"]) if row["billed_since"] is not None \
                else 0.0
            billed = row["billed_s"] + open_s
            old = row["price_per_hour"]
            closed = priced(row["cost_closed"], row["priced_s"], old, billed) if old \
                else max(row["cost_closed"], row["cost_usd"])
            self._set_fields(c, run_id, now, {"price_per_hour": price_per_hour,
                                              "cost_closed": closed, "priced_s": billed})

    def update_json(self, run_id: str, field_name: str, fn: Any) -> Any:
        """Read-modify-write of one JSON field inside one ``BEGIN IMMEDIATE`` transaction:
        ``fn(current value) -> new value``; the new value. No concurrent update is lost."""
        if field_name not in _JSON_FIELDS:
            raise RegistryError(f"{field_name} is not a JSON field")
        with self._tx() as c:
            row = c.execute(f"SELECT {field_name} FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RegistryError(f"no run {run_id!r}")
            current = json.loads(row[0]) if row[0] else None
            value = fn(current)
            self._set_fields(c, run_id, self.clock(), {field_name: value})
        return value

    def merge(self, run_id: str, **patches: dict[str, Any]) -> Run:
        """Merge ``patches`` into JSON object fields (``progress={...}``, ``spec={...}``), all
        in one transaction (keys given replace those keys, others are kept); the row after."""
        with self._tx() as c:
            names = list(patches)
            bad = [n for n in names if n not in _JSON_FIELDS or n == "instance_ids"]
            if bad:
                raise RegistryError(f"cannot merge into {bad}")
            row = c.execute(f"SELECT {', '.join(names)} FROM runs WHERE id = ?",
                            (run_id,)).fetchone()
            if row is None:
                raise RegistryError(f"no run {run_id!r}")
            merged = {n: {**(json.loads(row[n]) if row[n] else {}), **patches[n]} for n in names}
            self._set_fields(c, run_id, self.clock(), merged)
        return self.get(run_id)

    # -- the controller lease ----------------------------------------------------------------------

    def lease_free(self, run: Run, now: float | None = None) -> bool:
        """True when nobody else controls ``run``: no lease, ours, expired, or its owner's
        process gone from this host."""
        if run.lease_owner is None or run.lease_owner == self.owner:
            return True
        now = self.clock() if now is None else now
        return (run.lease_expires or 0.0) <= now or owner_gone(run.lease_owner)

    def acquire(self, run_id: str, states: Iterable[str]) -> bool:
        """Take the run's controller lease if it is in one of ``states`` and nobody else holds a
        live lease; one process wins. Taking over another owner's lease is an ``adopted``
        event."""
        now = self.clock()
        with self._tx() as c:
            row = c.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RegistryError(f"no run {run_id!r}")
            run = self._row_to_run(row)
            if run.state not in set(states) or not self.lease_free(run, now):
                return False
            c.execute("UPDATE runs SET lease_owner = ?, lease_expires = ? WHERE id = ?",
                      (self.owner, now + LEASE_S, run_id))
            if run.lease_owner not in (None, self.owner):
                c.execute("INSERT INTO events (run_id, ts, kind, data) VALUES (?,?,?,?)",
                          (run_id, now, "adopted", json.dumps(
                              {"state": run.state, "from": run.lease_owner, "by": self.owner})))
        return True

    def renew(self, run_id: str) -> bool:
        """Extend this process's lease on the run; False when it holds none (any more)."""
        cur = self._conn.execute(
            "UPDATE runs SET lease_expires = ? WHERE id = ? AND lease_owner = ?",
            (self.clock() + LEASE_S, run_id, self.owner))
        return cur.rowcount > 0

    def release(self, run_id: str) -> None:
        """Give up this process's lease on the run (a no-op when it holds none)."""
        self._conn.execute("UPDATE runs SET lease_owner = NULL, lease_expires = NULL"
                           " WHERE id = ? AND lease_owner = ?", (run_id, self.owner))

    def add_event(self, run_id: str, kind: str, data: dict[str, Any] | None = None) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO events (run_id, ts, kind, data) VALUES (?,?,?,?)",
                      (run_id, self.clock(), kind, json.dumps(data or {})))

    def add_event_once(self, run_id: str, kind: str, ts: float,
                       data: dict[str, Any] | None = None) -> bool:
        """An event that happened at ``ts`` elsewhere (on the run's machine), recorded once
        however many processes read it; whether this call recorded it."""
        with self._tx() as c:
            if c.execute("SELECT 1 FROM events WHERE run_id = ? AND kind = ? AND ts = ?",
                         (run_id, kind, ts)).fetchone() is not None:
                return False
            c.execute("INSERT INTO events (run_id, ts, kind, data) VALUES (?,?,?,?)",
                      (run_id, ts, kind, json.dumps(data or {})))
        return True
