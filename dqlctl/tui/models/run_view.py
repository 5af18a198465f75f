"""The run view's model: training curves and equity from engine events, the header line, the
test metrics and where the report is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqlctl.context import Context
from dqlctl.registry import Run
from dqlctl.tui.models.dashboard import RunRow, run_row


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
