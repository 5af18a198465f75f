"""The registry's sweep tables (``SweepRegistry``, a part of ``dqlctl.registry.Registry``).

A sweep is a row in ``sweeps``; each of its members a row in ``sweep_members`` with the run id it
will have, its launch request, and a queue state: ``QUEUED`` (waiting for a slot), ``STARTED``
(its run row exists: from then on the run's own lifecycle tells), ``CANCELLED`` (never started).
A started member's run is an ordinary run, linked back by ``runs.sweep_id``.

``claim`` is the one way a member starts: in one ``BEGIN IMMEDIATE`` transaction it checks that
the sweep is active, the member still queued and fewer than ``concurrency`` of the sweep's runs
unfinished, then creates the member's run row (PENDING, its controller lease held by this
process) and marks the member STARTED. So however many dqlctl processes pump a sweep at once,
no member starts twice and the sweep never has more than ``concurrency`` runs unfinished.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dqlctl.registry_schema import RegistryError
from dqlctl.states import TERMINAL, Run

SWEEP_ACTIVE, SWEEP_DONE, SWEEP_CANCELLED = "ACTIVE", "DONE", "CANCELLED"
QUEUED, STARTED, NOT_STARTED = "QUEUED", "STARTED", "CANCELLED"


@dataclass
class Sweep:
    """One sweep: its members are in ``sweep_members``, their runs in ``runs``."""

    id: str
    name: str
    provider: str
    state: str                       # ACTIVE, DONE (every member ended), CANCELLED (``down``)
    created_at: float
    concurrency: int                 # at most this many member runs unfinished at once
    ended_at: float | None = None
    max_cost: float | None = None    # USD: no member starts once the sweep has cost this much
    reason: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)   # the expanded spec, as launched

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Member:
    """One member of a sweep: its queue state and the run it is (or will be)."""

    sweep_id: str
    idx: int
    run_id: str
    name: str
    state: str                       # QUEUED, STARTED, CANCELLED (never started)
    request: dict[str, Any] = field(default_factory=dict)  # its LaunchRequest's fields
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_TERMINAL_SQL = ",".join(f"'{s}'" for s in sorted(TERMINAL))


def _sweep(row: sqlite3.Row) -> Sweep:
    data = dict(row)
    data["spec"] = json.loads(data["spec"] or "{}")
    return Sweep(**data)


def _member(row: sqlite3.Row) -> Member:
    data = dict(row)
    data["request"] = json.loads(data["request"] or "{}")
    return Member(**data)


class SweepRegistry:
    """Sweep rows and the member queue; mixed into ``Registry`` (its connection, clock,
    transactions and run rows)."""

    if TYPE_CHECKING:
        _conn: sqlite3.Connection
        clock: Any

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _insert_run(self, c: sqlite3.Connection, rid: str, **kw: Any) -> None: ...
        @staticmethod
        def _row_to_run(row: sqlite3.Row) -> Run: ...

    def create_sweep(self, *, sweep_id: str, name: str, provider: str, concurrency: int,
                     members: list[dict[str, Any]], max_cost: float | None = None,
                     spec: dict[str, Any] | None = None) -> Sweep:
        """The sweep and its queued members (``run_id``, ``name``, ``request`` each), in one
        transaction."""
        now = self.clock()
        with self._tx() as c:
            c.execute("INSERT INTO sweeps (id, name, provider, state, created_at, concurrency,"
                      " max_cost, spec) VALUES (?,?,?,?,?,?,?,?)",
                      (sweep_id, name, provider, SWEEP_ACTIVE, now, concurrency, max_cost,
                       json.dumps(spec or {})))
            c.executemany(
                "INSERT INTO sweep_members (sweep_id, idx, run_id, name, state, request)"
                " VALUES (?,?,?,?,?,?)",
                [(sweep_id, i, m["run_id"], m["name"], QUEUED, json.dumps(m["request"]))
                 for i, m in enumerate(members)])
        return self.get_sweep(sweep_id)

    def get_sweep(self, sweep_id: str) -> Sweep:
        row = self._conn.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            raise RegistryError(f"no sweep {sweep_id!r}")
        return _sweep(row)

    def list_sweeps(self, *, include_ended: bool = True) -> list[Sweep]:
        sql = "SELECT * FROM sweeps"
        if not include_ended:
            sql += f" WHERE state = '{SWEEP_ACTIVE}'"
        return [_sweep(r) for r in self._conn.execute(sql + " ORDER BY created_at DESC, id")]

    def resolve_sweep(self, ref: str) -> Sweep:
        """A sweep by id, unique id prefix, or name (the newest sweep of that name)."""
        rows = self._conn.execute("SELECT * FROM sweeps WHERE id = ? OR id LIKE ?"
                                  " ORDER BY id = ? DESC, created_at DESC",
                                  (ref, ref + "%", ref)).fetchall()
        if rows and (rows[0]["id"] == ref or len(rows) == 1):
            return _sweep(rows[0])
        if len(rows) > 1:
            ids = ", ".join(r["id"] for r in rows[:5])
            raise RegistryError(f"sweep id prefix {ref!r} is ambiguous ({ids}); give more "
                                "characters")
        row = self._conn.execute("SELECT * FROM sweeps WHERE name = ? ORDER BY created_at DESC"
                                 " LIMIT 1", (ref,)).fetchone()
        if row is not None:
            return _sweep(row)
        raise RegistryError(f"no sweep {ref!r} (see `dqlctl sweep ps` for sweep ids and names)")

    def members(self, sweep_id: str) -> list[Member]:
        return [_member(r) for r in self._conn.execute(
            "SELECT * FROM sweep_members WHERE sweep_id = ? ORDER BY idx", (sweep_id,))]

    def sweep_runs(self, sweep_id: str) -> list[Run]:
        """The runs of the sweep's started members, in member order."""
        return [self._row_to_run(r) for r in self._conn.execute(
            "SELECT runs.* FROM runs JOIN sweep_members m ON m.run_id = runs.id"
            " WHERE m.sweep_id = ? ORDER BY m.idx", (sweep_id,))]

    def live_count(self, sweep_id: str) -> int:
        """How many of the sweep's runs are unfinished (they hold its slots)."""
        return int(self._conn.execute(
            f"SELECT COUNT(*) FROM runs WHERE sweep_id = ? AND state NOT IN ({_TERMINAL_SQL})",
            (sweep_id,)).fetchone()[0])

    def claim(self, sweep_id: str, idx: int, *, name: str, provider: str,
              spec: dict[str, Any], results_uri: str | None = None,
              region: str | None = None, instance_type: str | None = None,
              spot: bool = False) -> bool:
        """Start member ``idx`` if the sweep is active, the member queued and a slot free: its
        run row created (PENDING, leased by this process), the member STARTED; whether it was.
        One transaction (see the module docstring)."""
        with self._tx() as c:
            sweep = c.execute("SELECT state, concurrency FROM sweeps WHERE id = ?",
                              (sweep_id,)).fetchone()
            member = c.execute("SELECT run_id, state FROM sweep_members WHERE sweep_id = ? AND"
                               " idx = ?", (sweep_id, idx)).fetchone()
            if sweep is None or member is None or sweep["state"] != SWEEP_ACTIVE \
                    or member["state"] != QUEUED:
                return False
            live = c.execute(f"SELECT COUNT(*) FROM runs WHERE sweep_id = ? AND state NOT IN"
                             f" ({_TERMINAL_SQL})", (sweep_id,)).fetchone()[0]
            if live >= sweep["concurrency"]:
                return False
            self._insert_run(c, member["run_id"], name=name, provider=provider, spec=spec,
                             region=region, instance_type=instance_type, spot=spot,
                             results_uri=results_uri, sweep_id=sweep_id)
            c.execute("UPDATE sweep_members SET state = ? WHERE sweep_id = ? AND idx = ?",
                      (STARTED, sweep_id, idx))
        return True

    def skip_member(self, sweep_id: str, idx: int, reason: str) -> bool:
        """A queued member that cannot start (its request is refused): CANCELLED with why."""
        with self._tx() as c:
            cur = c.execute("UPDATE sweep_members SET state = ?, reason = ? WHERE sweep_id = ?"
                            " AND idx = ? AND state = ?", (NOT_STARTED, reason, sweep_id, idx,
                                                           QUEUED))
        return cur.rowcount > 0

    def end_sweep(self, sweep_id: str, state: str, reason: str | None = None) -> bool:
        """ACTIVE -> ``state`` (DONE or CANCELLED); its queued members are CANCELLED with
        ``reason``. False when it had ended already."""
        now = self.clock()
        with self._tx() as c:
            cur = c.execute("UPDATE sweeps SET state = ?, ended_at = ?, reason = ? WHERE id = ?"
                            " AND state = ?", (state, now, reason, sweep_id, SWEEP_ACTIVE))
            if cur.rowcount == 0:
                return False
            c.execute("UPDATE sweep_members SET state = ?, reason = ? WHERE sweep_id = ? AND"
                      " state = ?", (NOT_STARTED, reason, sweep_id, QUEUED))
        return True

