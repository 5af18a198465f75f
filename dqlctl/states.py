"""The run lifecycle (DESIGN.md): its states, the legal moves between them, which states bill
and which are worked on by one controller, and the ``Run`` record the registry keeps.

Standard library only (it is on every verb's path)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
# States in which one dqlctl process works on the run (its controller): entering one takes the
# controller lease for the process making the move; any other state clears it.
LEASED = frozenset({PENDING, PROVISIONING, BOOTSTRAPPING, COLLECTING, RECOVERING})
#: seconds a controller lease lasts without renewal (a worker renews it every LEASE_S / 4)
LEASE_S = 60.0


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
    cost_closed: float = 0.0           # USD of the first ``priced_s`` billed seconds, at the
    priced_s: float = 0.0              # $/h of the machines before this one (``reprice``)
    lease_owner: str | None = None     # the controller working on the run (``LEASED`` states)
    lease_expires: float | None = None
    sweep_id: str | None = None        # the sweep the run is a member of (``dqlctl.sweeps``)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def billed_seconds(self, now: float) -> float:
        """Seconds the run has held a machine up to ``now``."""
        open_s = max(0.0, now - self.billed_since) if self.billed_since is not None else 0.0
        return self.billed_s + open_s

    def cost_at(self, now: float) -> float:
        """USD the run has cost up to ``now``: its earlier machines at their $/h, then its
        billed time since at this one's, else the cost recorded on it (no $/h)."""
        if not self.price_per_hour:
            return self.cost_usd
        return priced(self.cost_closed, self.priced_s, self.price_per_hour,
                      self.billed_seconds(now))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def priced(cost_closed: float, priced_s: float, price_per_hour: float,
           billed_s: float) -> float:
    """USD of ``billed_s`` seconds: the first ``priced_s`` cost ``cost_closed``, the rest at
    ``price_per_hour``."""
    return round(cost_closed + price_per_hour * max(0.0, billed_s - priced_s) / 3600.0, 4)


def bill(closed_s: float, since: float | None, to_state: str,
          now: float) -> tuple[float, float | None]:
    """``(billed_s, billed_since)`` after a move to ``to_state`` at ``now``: entering a billed
    state opens an interval, leaving one closes it."""
    if to_state in BILLED:
        return closed_s, since if since is not None else now
    if since is not None:
        return closed_s + max(0.0, now - since), None
    return closed_s, None
