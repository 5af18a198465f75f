"""Snapshot tests of the TUI's screens at fixed sizes (pytest-textual-snapshot).

Each test drives the app to a state with the pilot, waits for what the screen should show, and
compares the SVG screenshot with the one accepted in ``tests/__snapshots__/``. The runs are
real registry rows (``tests.test_tui.make_run``) with fixed ids, a fixed clock and UTC, so a
screen only changes when its rendering does. After an intended change of a screen, look at the
new screenshots (``pytest tests/test_tui_snapshots.py --snapshot-report``) and accept them with
``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("textual")
pytest.importorskip("pytest_textual_snapshot")

from textual.pilot import Pilot  # noqa: E402
from textual.widgets import DataTable, Input  # noqa: E402

from dqlctl import registry as reg  # noqa: E402
from dqlctl.context import Context  # noqa: E402
from dqlctl.tui.app import DqlApp  # noqa: E402
from dqlctl.tui.models.launch import FormValues  # noqa: E402
from dqlctl.tui.screens.cost import CostScreen  # noqa: E402
from dqlctl.tui.screens.dashboard import DashboardScreen  # noqa: E402
from dqlctl.tui.screens.launch import LaunchScreen  # noqa: E402
from dqlctl.tui.screens.modals import InfoScreen  # noqa: E402
from dqlctl.tui.screens.run_view import RunScreen  # noqa: E402
from dqlctl.tui.screens.sync import SyncScreen  # noqa: E402
from dqlctl.tui.widgets import EquityPlot, LogView  # noqa: E402
from tests.test_tui import make_run, until  # noqa: E402
from tests.test_tui_launch import no_clouds, settled  # noqa: E402, F401 (a fixture)

T0 = 1_790_000_000.0  # a fixed "now": elapsed times and "updated" stamps never move


def fixed_clock() -> float:
    return T0


def episode(i: int, n: int = 40) -> dict[str, Any]:
    return {"v": 1, "ts": T0, "event": "episode", "episode": i, "episodes": n,
            "reward": 10 * math.log(i + 1) + (i % 3), "loss": 0.5 / i + 0.01 * (i % 2),
            "epsilon": 0.97 ** i, "val_sharpe": 1.5 * (1 - math.exp(-i / 5)) - 0.2}


def equity(split: str, ep: int | None) -> dict[str, Any]:
    agent = [math.exp(0.0012 * i + 0.03 * math.sin(i / 17)) for i in range(200)]
    bh = [math.exp(0.0008 * i + 0.05 * math.sin(i / 29)) for i in range(200)]
    return {"v": 1, "ts": T0, "event": "equity", "split": split, "episode": ep,
            "agent": [round(x, 6) for x in agent], "buy_and_hold": [round(x, 6) for x in bh]}


LOG = [f"episode {i:>3}/40  reward {10 * math.log(i + 1):8.3f}  loss {0.5 / i:.4f}  "
       f"eps {0.97 ** i:.3f}  val_sharpe {1.5 * (1 - math.exp(-i / 5)) - 0.2:+.3f}"
       for i in range(1, 31)]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A live run (a real process), a finished one with metrics and equity, a failed one."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    ctx = Context(home=tmp_path, clock=fixed_clock)
    make_run(ctx, "googl-custom", proc=proc, run_id="a1b2c3d4",
             progress={"episode": 30, "episodes": 40, "val_sharpe": 1.118},
             log=LOG, events=[episode(i) for i in range(1, 31)] + [equity("val", 27)])
    make_run(ctx, "eurusd-dueling", reg.SUCCEEDED, run_id="e5f6a7b8",
             progress={"episode": 20, "episodes": 20, "val_sharpe": 0.912},
             metrics={"test": {"total_return": 0.1834, "sharpe_ratio": 1.52,
                               "max_drawdown": 0.0712, "n_trades": 31, "win_rate": 0.5806}},
             log=LOG[:20] + ["test: return +18.3%, Sharpe 1.52, max drawdown 7.1%, 31 trades"],
             events=[episode(i, 20) for i in range(1, 21)] + [equity("test", None)])
    make_run(ctx, "bad-data", reg.FAILED, run_id="c9d0e1f2",
             reason="engine exited with code 2: data/bad.csv line 14: Close is not a number")
    ctx.close()
    try:
        yield tmp_path
    finally:
        proc.kill()
        proc.wait()
        monkeypatch.delenv("TZ")
        time.tzset()


def app_for(home: Path) -> DqlApp:
    return DqlApp(Context(home=home, clock=fixed_clock), refresh_s=0.2, poll_s=0.02)


def tables_pending(pilot: Pilot[Any]) -> bool:
    """A DataTable of the screen has rows whose column widths it has not measured yet: it
    does so when it is next idle, so until then its pictures repeat with the old widths however
    many are taken. Textual keeps the flag private; textual is pinned (pyproject)."""
    return any(table._require_update_dimensions for table in pilot.app.screen.query(DataTable))


async def steady(pilot: Pilot[Any], deadline_s: float = 20.0) -> None:
    """No blinking cursor (a picture taken mid-blink would differ), then frames until the screen
    stops changing: three pictures in a row the same (a loaded machine can take several frames to
    settle a layout, e.g. a table's widths and scrollbars after its rows arrive), with no table
    waiting to measure its columns (``tables_pending``)."""
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False
    deadline = time.monotonic() + deadline_s
    last, same = None, 0
    while same < 2 or tables_pending(pilot):
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()
        picture = pilot.app.export_screenshot()
        same = same + 1 if picture == last else 0
        last = picture
        assert time.monotonic() < deadline, "the screen never settled"


async def dashboard_loaded(pilot: Pilot[Any]) -> DashboardScreen:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, DashboardScreen)
                and len(app.screen.rows) == 3 and app.screen.refreshed_at is not None,
                "the dashboard's three runs")
    await pilot.pause()
    return app.screen  # type: ignore[return-value]


def open_run(run_id: str, lines: int, plot: bool) -> Callable[[Pilot[Any]], Any]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await dashboard_loaded(pilot)
        app: DqlApp = pilot.app  # type: ignore[assignment]
        app.open_run(run_id)
        await until(pilot, lambda: isinstance(app.screen, RunScreen)
                    and app.screen.info is not None
                    and app.screen.query_one(LogView).line_count == lines
                    and (not plot or app.screen.query_one(EquityPlot).equity.agent),
                    f"run {run_id} with its log and curves")
        await steady(pilot)
    return run_before


SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


@pytest.mark.parametrize("size", SIZES)
def test_dashboard(snap_compare: Any, home: Path, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(home), terminal_size=size, run_before=dashboard_loaded)


@pytest.mark.parametrize("size", SIZES)
def test_run_view_live(snap_compare: Any, home: Path, size: tuple[int, int]) -> None:
    """Log, reward/loss/val-Sharpe curves and the validation equity against buy-and-hold."""
    assert snap_compare(app_for(home), terminal_size=size,
                        run_before=open_run("a1b2c3d4", len(LOG), plot=True))


@pytest.mark.parametrize("size", SIZES)
def test_run_view_finished(snap_compare: Any, home: Path, size: tuple[int, int]) -> None:
    """The test metrics table and the test split's equity."""
    assert snap_compare(app_for(home), terminal_size=size,
                        run_before=open_run("e5f6a7b8", 21, plot=True))


def test_help(snap_compare: Any, home: Path) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await dashboard_loaded(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(pilot.app.screen, InfoScreen), "the help")
        await pilot.pause()

    assert snap_compare(app_for(home), terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_sync_plan(snap_compare: Any, home: Path, tmp_path: Path, size: tuple[int, int],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync screen's dry-run plan of a run's results to a local folder."""
    monkeypatch.chdir(tmp_path)  # relative paths: the same screen wherever the test runs
    src, dst = Path("results/googl"), Path("copy")
    for name, size_ in (("model.pth", 52_431), ("events.jsonl", 8_190), ("report.html", 120_000),
                        ("plots/equity_curve.png", 40_960), ("test_metrics.json", 512)):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"x" * size_)

    async def run_before(pilot: Pilot[Any]) -> None:
        await dashboard_loaded(pilot)
        pilot.app.push_screen(SyncScreen(str(src), str(dst)))
        await until(pilot, lambda: isinstance(pilot.app.screen, SyncScreen), "the sync screen")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "5 to copy" in str(
            pilot.app.screen.query_one("#summary").render()), "the plan")
        await steady(pilot)

    assert snap_compare(app_for(home), terminal_size=size, run_before=run_before)


@pytest.mark.usefixtures("no_clouds")
@pytest.mark.parametrize("size", SIZES)
def test_launch_form_for_a_cloud(snap_compare: Any, home: Path, size: tuple[int, int]) -> None:
    """AWS with no credentials: the error on the provider row, the priced instance type, the
    cost estimate and the plan (the data is a URI: no path of this machine in the picture)."""
    values = FormValues(provider="aws", data="s3://dqlctl-data/STOCKS_GOOGL.csv",
                        region="us-east-1", instance_type="g4dn.xlarge", max_cost="5")

    async def run_before(pilot: Pilot[Any]) -> None:
        await dashboard_loaded(pilot)
        pilot.app.push_screen(LaunchScreen(values))
        await until(pilot, lambda: isinstance(pilot.app.screen, LaunchScreen)
                    and settled(pilot.app.screen) is not None, "the checked form")
        await steady(pilot)

    assert snap_compare(app_for(home), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_cost(snap_compare: Any, home: Path, size: tuple[int, int]) -> None:
    """The catalog's offers with every value in full (the table scrolls sideways at 80 columns,
    nothing is cut) and what the runs cost."""
    async def run_before(pilot: Pilot[Any]) -> None:
        await dashboard_loaded(pilot)
        pilot.app.action_cost()
        await until(pilot, lambda: isinstance(pilot.app.screen, CostScreen)
                    and bool(pilot.app.screen.query("#offers"))
                    and pilot.app.screen.query_one("#offers", DataTable).row_count > 0
                    and pilot.app.screen.query_one("#spend", DataTable).row_count > 0,
                    "the offers and what runs cost")
        await steady(pilot)

    assert snap_compare(app_for(home), terminal_size=size, run_before=run_before)
