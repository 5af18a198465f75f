"""Small dataclass messages that workers post to screens (``post_message`` is thread-safe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from dqlctl.tui.models.cost import CostView
    from dqlctl.tui.models.dashboard import RunRow
    from dqlctl.tui.models.launch import Checked
    from dqlctl.tui.models.offers import FormOptions
    from dqlctl.tui.models.run_view import RunInfo
    from dqlctl.tui.models.sweep import SweepView
    from providers.sync import Progress, SyncResult


# (provider, region the instance types are priced in, spot): what the launch form's options are for
OptionsKey = tuple[str, str, bool]


class _Msg(Message):
    """Textual's Message initialises itself in ``__post_init__``: dataclasses need nothing more.
    ``eq=False`` keeps identity hashing."""


@dataclass(eq=False)
class RunsRefreshed(_Msg):
    """The dashboard's rows, newest first, and what could not be reconciled."""

    rows: list[RunRow]
    problems: list[str]


@dataclass(eq=False)
class LogLines(_Msg):
    """New lines of a run's engine log, in order."""

    lines: list[str]

    def extend(self, more: LogLines) -> None:
        self.lines.extend(more.lines)


@dataclass(eq=False)
class EngineEvents(_Msg):
    """New engine events (``episode``, ``stage``, ``evaluation``, ``finished`` ...)."""

    events: list[dict[str, Any]]

    def extend(self, more: EngineEvents) -> None:
        self.events.extend(more.events)


@dataclass(eq=False)
class RunChanged(_Msg):
    info: RunInfo


@dataclass(eq=False)
class FormChecked(_Msg):
    checked: Checked


@dataclass(eq=False)
class LaunchProgress(_Msg):
    run_id: str
    state: str


@dataclass(eq=False)
class LaunchDone(_Msg):
    run_id: str | None
    error: str | None = None


@dataclass(eq=False)
class Notice(_Msg):
    """Something to tell the operator (a toast)."""

    text: str
    severity: str = "information"
    refresh: bool = False  # the registry changed: refresh the dashboard now


@dataclass(eq=False)
class SyncProgressed(_Msg):
    """The sync core's progress callback: totals and the copies in flight."""

    gen: int
    progress: Progress


@dataclass(eq=False)
class SyncDone(_Msg):
    """A plan or a sync ended: its result, or why there is none."""

    gen: int
    result: SyncResult | None
    error: str | None = None
    field: str | None = None    # "src" | "dst": the input a bad-input error is about
    cancelled: bool = False


@dataclass(eq=False)
class ChecksDone(_Msg):
    """Every provider's ``check()`` answer (``CheckResult``), by name."""

    results: list[Any]


@dataclass(eq=False)
class CostReady(_Msg):
    """The cost screen's tables, or why there are none."""

    view: CostView | None
    error: str | None = None


@dataclass(eq=False)
class OptionsReady(_Msg):
    """The launch form's Region / Instance type choices for ``key``, and how long they took."""

    key: OptionsKey
    options: FormOptions
    elapsed_s: float


@dataclass(eq=False)
class SweepRefreshed(_Msg):
    """The sweep screen's figures, or why there are none."""

    view: SweepView | None
    error: str | None = None
