"""What the TUI shows, computed from the core (``dqlctl.runs``); no Textual here.

Screens render these records; workers compute them off the event loop. Keeping them free of
Textual lets the tests and the benchmark use them directly, and keeps "the core returns data, the
TUI renders it" (DESIGN.md, Style 1) honest: nothing here launches, stops or reconciles a run
except through ``dqlctl.runs``.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqlctl import registry as reg
from dqlctl import runs
from dqlctl.context import Context
from dqlctl.registry import Run

# The providers the launch form can start today. The others are listed, marked unavailable: the
# form has no region / instance-type / price fields yet (`dqlctl launch --provider aws` has).
TUI_PROVIDERS: tuple[str, ...] = ("local",)

STATE_STYLES: dict[str, str] = {
    reg.PENDING: "yellow",
    reg.PROVISIONING: "yellow",
    reg.BOOTSTRAPPING: "yellow",
    reg.RUNNING: "bold green",
    reg.COLLECTING: "cyan",
    reg.SUCCEEDED: "green",
    reg.FAILED: "bold red",
    reg.CANCELLED: "bright_black",
    reg.PREEMPTED: "magenta",
    reg.RECOVERING: "magenta",
}


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextmanager
def worker_context(base: Context) -> Iterator[Context]:
    """A Context for one worker thread: the same home, clock, config and provider table, its own
    SQLite connection (a connection may only be used by the thread that opened it)."""
    ctx = dataclasses.replace(base, _registry=None)
    try:
        yield ctx
    finally:
        ctx.close()


# -- the dashboard --------------------------------------------------------------------------------

# Most telling first: at 80 columns the table scrolls sideways for where the run is.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "NAME"), ("state", "STATE"), ("episode", "EPISODE"), ("sharpe", "VAL SHARPE"),
    ("elapsed", "ELAPSED"), ("cost", "COST"), ("where", "PROVIDER/REGION"),
    ("instance", "INSTANCE"), ("spot", "SPOT"),
)


@dataclass(frozen=True)
class RunRow:
    """One dashboard row: the run's fields as the table shows them."""

    id: str
    name: str
    where: str
    instance: str
    spot: str
    state: str
    episode: str
    sharpe: str
    elapsed: str
    cost: str
    terminal: bool
    reason: str | None = None

    def cells(self) -> tuple[str, ...]:
        return tuple(getattr(self, key) for key, _ in COLUMNS)

    def matches(self, needle: str) -> bool:
        """The ``/`` filter: a case-insensitive substring of the id or any shown field."""
        if not needle:
            return True
        hay = " ".join((self.id, *self.cells())).lower()
        return all(part in hay for part in needle.lower().split())


def elapsed_s(run: Run, now: float) -> float:
    start = run.started_at or run.created_at
    end = run.ended_at if run.ended_at is not None else now
    return max(0.0, end - start)


def _num(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def run_row(ctx: Context, run: Run, now: float) -> RunRow:
    sharpe = (run.progress or {}).get("val_sharpe")
    try:
        cost = runs.run_cost(ctx, run, now)
    except Exception:  # a price lookup that fails must not hide the run
        cost = run.cost_usd
    return RunRow(
        id=run.id, name=run.name,
        where=(f"{run.provider}/{run.region}" if run.region and run.region != run.provider
               else run.provider),
        instance=run.instance_type or (run.instance_ids[0] if run.instance_ids else "-"),
        spot="spot" if run.spot else "-", state=run.state, episode=runs.progress_text(run),
        sharpe=_num(sharpe, ".3f"), elapsed=runs.fmt_duration(elapsed_s(run, now)),
        cost=f"${cost:.2f}", terminal=run.terminal, reason=run.reason)


def dashboard_rows(ctx: Context, reconcile: bool = True) -> tuple[list[RunRow], list[str]]:
    """Every run, newest first, after bringing the live ones up to date; and what went wrong.

    Each live run is reconciled on its own (``runs.reconcile``, what ``dqlctl ps`` does through
    ``reconcile_all``) so that one provider that cannot be reached does not hide the others.
    """
    problems: list[str] = []
    if reconcile:
        for run in ctx.registry.list(include_terminal=False):
            try:
                runs.reconcile(ctx, run)
            except Exception as exc:
                problems.append(f"{run.name} ({run.id}): {one_line(exc)}")
    now = ctx.clock()
    return [run_row(ctx, run, now) for run in ctx.registry.list()], problems


# -- the run view ---------------------------------------------------------------------------------


@dataclass
class Equity:
    """The latest equity curves from ``equity`` events: the agent against buy-and-hold over the
    validation split (the best model so far) until the test split's arrive, which then stay."""

    split: str | None = None
    episode: int | None = None
    agent: list[float] = field(default_factory=list)
    buy_and_hold: list[float] = field(default_factory=list)

    def add(self, event: dict[str, Any]) -> bool:
        split = event.get("split")
        agent, bh = event.get("agent"), event.get("buy_and_hold")
        if split not in ("val", "test") or not isinstance(agent, list) or not agent:
            return False
        if self.split == "test" and split == "val":  # a resumed run's replay: keep the test
            return False
        self.split, self.episode = split, event.get("episode")
        self.agent = [float(x) for x in agent if isinstance(x, int | float)]
        self.buy_and_hold = ([float(x) for x in bh if isinstance(x, int | float)]
                             if isinstance(bh, list) else [])
        return True

    def title(self) -> str:
        if self.split is None:
            return "equity vs buy & hold"
        if self.split == "test":
            return "equity, test split"
        return f"equity, val split (episode {self.episode})" if self.episode else \
            "equity, val split"


@dataclass
class Curves:
    """Training curves from ``episode`` events, one point per episode."""

    reward: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_sharpe: list[float] = field(default_factory=list)
    episodes: int = 0
    last_episode: int = 0
    equity: Equity = field(default_factory=Equity)

    def add(self, event: dict[str, Any]) -> bool:
        if event.get("event") == "equity":
            return self.equity.add(event)
        if event.get("event") != "episode":
            return False
        episode = event.get("episode")
        if isinstance(episode, int):
            if episode <= self.last_episode:  # a resumed run replays nothing twice
                return False
            self.last_episode = episode
        if isinstance(event.get("episodes"), int):
            self.episodes = event["episodes"]
        for name in ("reward", "loss", "val_sharpe"):
            value = event.get(name)
            if isinstance(value, int | float):
                getattr(self, name).append(float(value))
        return True


def metrics_rows(run: Run) -> list[tuple[str, str]]:
    """The test metrics of a finished run, as (name, value) text."""
    test = (run.metrics or {}).get("test") or {}
    rows = []
    for key, value in test.items():
        if isinstance(value, float):
            rows.append((key, format(value, ".4g")))
        elif isinstance(value, int | str) or value is None:
            rows.append((key, "-" if value is None else str(value)))
    return rows


def report_path(run: Run) -> str | None:
    """Where the run's report.html is (a local path, or a URI to sync first); None before."""
    if not run.results_uri:
        return None
    uri = run.results_uri.rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        return f"{uri}/report.html"
    path = Path(uri.removeprefix("file://")) / "report.html"
    return str(path) if path.is_file() else None


@dataclass(frozen=True)
class RunInfo:
    """The run view's header line."""

    row: RunRow
    provider: str
    results_uri: str | None
    metrics: list[tuple[str, str]]
    report: str | None
    stage: str | None


def run_info(ctx: Context, run: Run) -> RunInfo:
    return RunInfo(row=run_row(ctx, run, ctx.clock()), provider=run.provider,
                   results_uri=run.results_uri, metrics=metrics_rows(run),
                   report=report_path(run) if run.terminal else None,
                   stage=(run.progress or {}).get("stage"))


# -- the launch form ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormValues:
    """The launch form's fields as typed (text), before anything is checked."""

    provider: str = "local"
    data: str = runs.LaunchRequest.data
    agent_type: str = runs.LaunchRequest.agent_type
    command: str = runs.LaunchRequest.command
    episodes: str = str(runs.LaunchRequest.episodes)
    name: str = ""
    engine_flags: str = ""


class FormError(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


def build_request(values: FormValues) -> runs.LaunchRequest:
    """A launch request from the form; FormError names the field at fault."""
    if values.provider not in TUI_PROVIDERS:
        raise FormError("provider", f"{values.provider}: not available from the TUI yet; use "
                        f"`dqlctl launch --provider {values.provider} ...`")
    try:
        episodes = int(values.episodes.strip())
    except ValueError:
        raise FormError("episodes", f"episodes must be a whole number, got "
                        f"{values.episodes.strip()!r}") from None
    try:
        flags = shlex.split(values.engine_flags)
    except ValueError as exc:
        raise FormError("engine_flags", f"engine flags: {exc}") from None
    if not values.data.strip():
        raise FormError("data", "data: give a CSV or Parquet file (a path, a bare name under "
                        "data/, or a URI)")
    return runs.LaunchRequest(provider=values.provider, data=values.data.strip(),
                              agent_type=values.agent_type, command=values.command,
                              episodes=episodes, name=values.name.strip() or None,
                              engine_args=flags)


def error_field(message: str) -> str:
    """Which form field a ``runs.validate_request`` error is about."""
    text = message.lower()
    for needle, name in (("provider", "provider"), ("agent type", "agent_type"),
                         ("engine command", "command"), ("episodes", "episodes"),
                         ("run name", "name"), ("data file", "data")):
        if needle in text:
            return name
    return "data"


@dataclass(frozen=True)
class Checked:
    """The form checked through the core: the plan to show, or the field and error."""

    values: FormValues
    plan: dict[str, Any] | None = None
    field: str | None = None
    error: str | None = None


def check_form(ctx: Context, values: FormValues) -> Checked:
    """``runs.validate_request`` then ``runs.plan``: exactly what ``launch --dry-run`` does."""
    from dqlctl.errors import DqlctlError

    try:
        req = build_request(values)
        runs.validate_request(ctx, req)
        plan = runs.plan(ctx, req)
    except FormError as exc:
        return Checked(values, field=exc.field, error=exc.message)
    except DqlctlError as exc:
        return Checked(values, field=error_field(str(exc)), error=str(exc))
    return Checked(values, plan=plan)
