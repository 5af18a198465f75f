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

A VM-pool sweep (``dqlctl.sweeps.pool``) also has ``pool_vms``: one row per VM its members
share (BUSY with a member, IDLE between members, RETIRING, GONE). ``claim(vm=...)`` hands an IDLE
VM to the member in the same transaction, so one VM never takes two members.
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
#: a pool VM's states (``dqlctl.sweeps.pool``): a member runs on it; its member ended and it
#: waits for the next (or its end); being terminated; terminated
VM_BUSY, VM_IDLE, VM_RETIRING, VM_GONE = "BUSY", "IDLE", "RETIRING", "GONE"


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


@dataclass
class PoolVm:
    """One VM of a sweep's pool (``dqlctl.sweeps.pool``)."""

    instance_id: str
    sweep_id: str
    provider: str
    owner_run: str                   # the member it was launched for: its tags and access
    run_id: str | None               # the member on it now (BUSY), or the last one
    state: str                       # BUSY, IDLE, RETIRING, GONE
    instance: dict[str, Any]         # its record as the last member left it (workdir...)
    members: int                     # how many members it has taken
    created_at: float
    updated_at: float
    ended_at: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _vm(row: sqlite3.Row) -> PoolVm:
    data = dict(row)
    data["instance"] = json.loads(data["instance"] or "{}")
    return PoolVm(**data)


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
              spot: bool = False, vm: str | None = None) -> bool:
        """Start member ``idx`` if the sweep is active, the member queued and a slot free: its
        run row created (PENDING, leased by this process), the member STARTED; whether it was.
        With ``vm``: also only if that pool VM is IDLE, which becomes BUSY with the member.
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
            if vm is not None and c.execute(
                    "UPDATE pool_vms SET state = ?, run_id = ?, members = members + 1,"
                    " updated_at = ? WHERE instance_id = ? AND state = ?",
                    (VM_BUSY, member["run_id"], self.clock(), vm, VM_IDLE)).rowcount == 0:
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


    # -- the VM pool (dqlctl.sweeps.pool) --------------------------------------------------------

    def add_pool_vm(self, *, sweep_id: str, provider: str, run_id: str,
                    instance: dict[str, Any]) -> PoolVm:
        """A VM launched for member run ``run_id`` joins the sweep's pool, BUSY with it."""
        now = self.clock()
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO pool_vms (instance_id, sweep_id, provider,"
                      " owner_run, run_id, state, instance, created_at, updated_at)"
                      " VALUES (?,?,?,?,?,?,?,?,?)",
                      (instance["instance_id"], sweep_id, provider, run_id, run_id, VM_BUSY,
                       json.dumps(instance), now, now))
        vm = self.pool_vm(instance["instance_id"])
        assert vm is not None
        return vm

    def pool_vm(self, instance_id: str) -> PoolVm | None:
        row = self._conn.execute("SELECT * FROM pool_vms WHERE instance_id = ?",
                                 (instance_id,)).fetchone()
        return _vm(row) if row is not None else None

    def pool_vms(self, sweep_id: str, states: tuple[str, ...] | None = None) -> list[PoolVm]:
        """The sweep's pool VMs (in ``states``), oldest first."""
        rows = self._conn.execute("SELECT * FROM pool_vms WHERE sweep_id = ?"
                                  " ORDER BY created_at, instance_id", (sweep_id,))
        return [v for v in map(_vm, rows) if states is None or v.state in states]

    def pool_vm_idle(self, instance_id: str, run_id: str, instance: dict[str, Any]) -> bool:
        """Member ``run_id`` is done with the VM: BUSY -> IDLE, its record as the member left it
        kept (the next member's handover reads its folder there). False when the VM was not
        BUSY with that member."""
        with self._tx() as c:
            cur = c.execute("UPDATE pool_vms SET state = ?, instance = ?, updated_at = ?"
                            " WHERE instance_id = ? AND state = ? AND run_id = ?",
                            (VM_IDLE, json.dumps(instance), self.clock(), instance_id,
                             VM_BUSY, run_id))
        return cur.rowcount > 0

    def pool_vm_retiring(self, instance_id: str, reason: str, expect: str = VM_IDLE) -> bool:
        """``expect`` (IDLE) -> RETIRING: to be terminated; False when another process took it
        first."""
        with self._tx() as c:
            cur = c.execute("UPDATE pool_vms SET state = ?, reason = ?, updated_at = ?"
                            " WHERE instance_id = ? AND state = ?",
                            (VM_RETIRING, reason, self.clock(), instance_id, expect))
        return cur.rowcount > 0

    def pool_vm_gone(self, instance_id: str, reason: str) -> None:
        """The VM is terminated (or found gone): GONE with why (the first why is kept)."""
        now = self.clock()
        with self._tx() as c:
            c.execute("UPDATE pool_vms SET state = ?, reason = COALESCE(reason, ?),"
                      " ended_at = ?, updated_at = ? WHERE instance_id = ? AND state != ?",
                      (VM_GONE, reason, now, now, instance_id, VM_GONE))

    def pool_holds(self, run_id: str) -> bool:
        """Whether a pool VM not yet gone was launched for ``run_id`` (it carries that run's
        tags, key, group and role, which stay while another member uses the VM)."""
        return self._conn.execute("SELECT 1 FROM pool_vms WHERE owner_run = ? AND state != ?",
                                  (run_id, VM_GONE)).fetchone() is not None
