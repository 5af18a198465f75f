"""The Textual control center, driven by Textual's pilot (and once through tmux, as a person would).

Runs here are real registry rows whose "instance" is a real process (``sleep``) and whose log and
events are real files, so the TUI reaches them through the same core code as ``dqlctl ps``/
``logs``/``down`` (``runs.reconcile``, ``runs.Follower``, ``runs.down``, the local provider).
One test launches the real engine from the form. Tests wait on what the app shows, never on time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytest.importorskip("textual", reason="the TUI is the `tui` extra: pip install 'dqlctl[tui]'")

from textual.pilot import Pilot  # noqa: E402
from textual.widgets import Button, DataTable, Input, Select, Static  # noqa: E402
from textual.widgets.data_table import ColumnKey  # noqa: E402

from dqlctl import registry as reg  # noqa: E402
from dqlctl.context import Context  # noqa: E402
from dqlctl.registry import Run  # noqa: E402
from dqlctl.tui.app import DqlApp  # noqa: E402
from dqlctl.tui.screens.cost import CostScreen  # noqa: E402
from dqlctl.tui.screens.dashboard import DashboardScreen  # noqa: E402
from dqlctl.tui.screens.launch import LaunchScreen  # noqa: E402
from dqlctl.tui.screens.modals import ConfirmScreen, InfoScreen  # noqa: E402
from dqlctl.tui.screens.run_view import RunScreen  # noqa: E402
from dqlctl.tui.widgets import CurvePanel, LogView  # noqa: E402
from providers.base import Instance  # noqa: E402
from providers.local.compute import _proc_start_ticks, pid_alive  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
S = TypeVar("S")
SIZE = (120, 40)


# -- fixtures: runs with real processes and real files ---------------------------------------------


@pytest.fixture
def sleepers() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start stand-in "instances" (a detached ``sleep``); all are killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def make_run(ctx: Context, name: str, state: str = reg.RUNNING, *,
             proc: subprocess.Popen[bytes] | None = None, progress: dict[str, Any] | None = None,
             metrics: dict[str, Any] | None = None, reason: str | None = None,
             log: list[str] = (), events: list[dict[str, Any]] = (),  # type: ignore[assignment]
             run_id: str | None = None) -> Run:
    """A run as the local provider would have left it: work dir, engine.log, events.jsonl."""
    rid = run_id or reg.new_run_id()
    workdir = ctx.run_dir(rid)
    results = workdir / "results"
    (results / name).mkdir(parents=True)
    (workdir / "engine.log").write_text("".join(line + "\n" for line in log))
    (results / name / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    spec = {"job": {"results_dir": str(results), "experiment": name}, "extra": {}}
    r = ctx.registry
    r.create(name=name, provider="local", spec=spec, region="local", instance_type="localhost",
             results_uri=str(results / name), run_id=rid)
    pid = proc.pid if proc else 2**22 + 1  # no such pid: the "instance" is gone
    inst = Instance("local", f"local-{pid}", "running", "local", "localhost",
                    extra={"pid": pid, "start_ticks": _proc_start_ticks(pid),
                           "workdir": str(workdir)})
    r.transition(rid, reg.PROVISIONING)
    r.update(rid, instance=inst.to_dict(), instance_ids=[inst.instance_id], price_per_hour=0.0)
    r.transition(rid, reg.BOOTSTRAPPING)
    r.transition(rid, reg.RUNNING)
    if progress:
        r.update(rid, progress=progress)
    if metrics:
        r.update(rid, metrics=metrics)
    if state == reg.SUCCEEDED:
        r.transition(rid, reg.COLLECTING)
        r.transition(rid, reg.SUCCEEDED)
    elif state in (reg.FAILED, reg.CANCELLED):
        r.transition(rid, state, reason=reason)
    return r.get(rid)


def episode(i: int, n: int = 50) -> dict[str, Any]:
    return {"v": 1, "ts": time.time(), "event": "episode", "episode": i, "episodes": n,
            "reward": float(i) * 1.5, "loss": 1.0 / i, "epsilon": 0.99 ** i,
            "val_sharpe": 0.1 * i}


@pytest.fixture
def home(tmp_path: Path, sleepers: Callable[[], subprocess.Popen[bytes]]) -> dict[str, Any]:
    """Three runs: one RUNNING (a live process, a log, 3 episodes), one SUCCEEDED, one FAILED."""
    ctx = Context(home=tmp_path)
    proc = sleepers()
    live = make_run(ctx, "googl-live", proc=proc,
                    progress={"episode": 3, "episodes": 50, "val_sharpe": 0.3},
                    log=[f"line {i}" for i in range(1, 31)], events=[episode(i) for i in (1, 2, 3)])
    done = make_run(ctx, "eurusd-done", reg.SUCCEEDED,
                    progress={"episode": 20, "episodes": 20, "val_sharpe": 1.234},
                    metrics={"test": {"total_return": 0.1234, "sharpe_ratio": 1.52}})
    failed = make_run(ctx, "bad-data", reg.FAILED, reason="engine exited with code 2: bad data")
    ctx.close()
    return {"path": tmp_path, "live": live, "done": done, "failed": failed, "proc": proc}


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test with asyncio.run: no pytest plugin needed."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


def app_for(path: Path) -> DqlApp:
    return DqlApp(Context(home=path), refresh_s=0.2, poll_s=0.02)


async def until(pilot: Pilot[Any], cond: Callable[[], Any], what: str,
                timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def screen_of(pilot: Pilot[Any], app: DqlApp, cls: type[S], timeout: float = 15.0) -> S:
    """The app's screen once it is a mounted ``cls``."""
    screen = await until(pilot, lambda: isinstance(app.screen, cls) and app.screen.is_mounted
                         and app.screen, f"the {cls.__name__}", timeout)
    await pilot.pause()
    return screen  # type: ignore[no-any-return]


def table_names(app: DqlApp) -> list[str]:
    table = app.screen.query_one("#runs", DataTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


def registry_state(path: Path, run_id: str) -> str:
    ctx = Context(home=path)
    try:
        return ctx.registry.get(run_id).state
    finally:
        ctx.close()


# -- the dashboard ---------------------------------------------------------------------------------


@run_async
async def test_dashboard_lists_runs_filters_and_hides_finished(home: dict[str, Any]) -> None:
    app = app_for(home["path"])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(table_names(app)) == 3, "three runs in the table")
        assert table_names(app) == ["bad-data", "eurusd-done", "googl-live"]  # newest first
        table = app.screen.query_one("#runs", DataTable)
        live_row = table.get_row(home["live"].id)
        assert "RUNNING" in str(live_row[1]) and live_row[2] == "3/50" and live_row[3] == "0.300"
        assert "SUCCEEDED" in str(table.get_row(home["done"].id)[1])

        await pilot.press("slash", *"eurusd")
        await until(pilot, lambda: table_names(app) == ["eurusd-done"], "the filter to apply")
        await pilot.press("escape")
        await until(pilot, lambda: len(table_names(app)) == 3, "the filter to clear")

        await pilot.press("a")  # hide finished runs
        await until(pilot, lambda: table_names(app) == ["googl-live"], "finished runs hidden")
        await pilot.press("a")
        await until(pilot, lambda: len(table_names(app)) == 3, "finished runs shown again")


@run_async
async def test_quit_leaves_runs_alone_and_palette_has_the_verbs(home: dict[str, Any]) -> None:
    app = app_for(home["path"])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(table_names(app)) == 3, "the runs")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, InfoScreen), "the help")
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await until(pilot, lambda: type(app.screen).__name__ == "CommandPalette", "the palette")
        await pilot.press(*"launch")

        def matches() -> bool:
            from textual.widgets import OptionList

            found = app.screen.query(OptionList)
            return bool(found) and found.first().option_count > 0

        await until(pilot, matches, "the palette's matches")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, LaunchScreen), "the launch form")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen), "the dashboard")
        await pilot.press("q")
    assert app.return_code in (0, None)
    assert pid_alive(home["proc"].pid) and registry_state(home["path"], home["live"].id) == \
        reg.RUNNING


# -- the run view ----------------------------------------------------------------------------------


@run_async
async def test_run_view_follows_the_log_pauses_searches_and_plots(home: dict[str, Any]) -> None:
    live = home["live"]
    log_path = home["path"] / "runs" / live.id / "engine.log"
    events_path = Path(live.results_uri) / "events.jsonl"
    app = app_for(home["path"])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "googl-live" in table_names(app), "the runs")
        table = app.screen.query_one("#runs", DataTable)
        table.move_cursor(row=table.get_row_index(live.id))
        await pilot.press("enter")
        screen = await screen_of(pilot, app, RunScreen)
        log = screen.query_one("#log", LogView)
        curves = screen.query_one("#curves", CurvePanel)
        await until(pilot, lambda: log.line_count == 30, "the existing log")
        await until(pilot, lambda: len(curves.curves.reward) == 3, "the first three episodes")

        # new lines and episodes appear as the engine writes them
        with open(log_path, "a") as fh:
            fh.writelines(f"line {i}\n" for i in range(31, 201))
        with open(events_path, "a") as fh:
            fh.writelines(json.dumps(episode(i)) + "\n" for i in (4, 5))
        await until(pilot, lambda: log.line_count == 200, "the new lines")
        await until(pilot, lambda: len(curves.curves.val_sharpe) == 5, "episodes 4 and 5")
        assert "0.5" in str(screen.query_one("#curve-val_sharpe Static", Static).render())
        await until(pilot, lambda: log.is_vertical_scroll_end, "the log to follow its end")

        # scrolling up pauses following; End resumes it
        await pilot.press("home")
        await until(pilot, lambda: not log.following and log.scroll_offset.y == 0, "a pause")
        with open(log_path, "a") as fh:
            fh.writelines(f"line {i}\n" for i in range(201, 211))
        await until(pilot, lambda: log.line_count == 210, "lines while paused")
        assert log.scroll_offset.y == 0 and "paused" in str(
            screen.query_one("#log-status", Static).render())
        await pilot.press("end")
        await until(pilot, lambda: log.following and log.is_vertical_scroll_end, "following")

        # search moves to the matching line and marks it
        await pilot.press("slash", *"line 150", "enter")
        await until(pilot, lambda: log.match_line == 149, "the match")
        assert not log.following
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen), "back")


@run_async
async def test_finished_run_shows_metrics(home: dict[str, Any]) -> None:
    app = app_for(home["path"])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(table_names(app)) == 3, "the runs")
        app.open_run(home["done"].id)
        screen = await screen_of(pilot, app, RunScreen)
        metrics = screen.query_one("#metrics", Static)
        await until(pilot, lambda: metrics.display and "sharpe_ratio" in str(metrics.render()),
                    "the test metrics")
        assert "1.52" in str(metrics.render())


@run_async
async def test_down_asks_first_then_stops_the_run(home: dict[str, Any]) -> None:
    live, proc = home["live"], home["proc"]
    app = app_for(home["path"])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "googl-live" in table_names(app), "the runs")
        table = app.screen.query_one("#runs", DataTable)
        table.move_cursor(row=table.get_row_index(live.id))
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen), "no")
        assert proc.poll() is None and registry_state(home["path"], live.id) == reg.RUNNING

        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question again")
        await pilot.click("#yes")
        await until(pilot, lambda: proc.poll() is not None, "the instance to be terminated")
        await until(pilot, lambda: "CANCELLED" in str(table.get_row(live.id)[1]),
                    "the dashboard to show CANCELLED")
    assert registry_state(home["path"], live.id) == reg.CANCELLED


# -- the launch form -------------------------------------------------------------------------------


def plan_now(screen: LaunchScreen) -> dict[str, Any] | None:
    """The plan for what the form holds now (None while a check is on its way or failed)."""
    checked = screen.checked
    if checked is None or checked.values != screen.values():
        return None
    return checked.plan


def _error(screen: LaunchScreen, key: str) -> str:
    err = screen.query_one(f"#err-{key}", Static)
    return str(err.render()) if err.display else ""


@run_async
async def test_launch_form_checks_as_you_type(tmp_path: Path) -> None:
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("l")
        screen = await screen_of(pilot, app, LaunchScreen)
        launch = screen.query_one("#launch", Button)
        await until(pilot, lambda: plan_now(screen), "a plan")
        assert not launch.disabled and plan_now(screen)["data"].endswith("STOCKS_GOOGL.csv")

        screen.query_one("#data", Input).value = "no-such-file.csv"
        await until(pilot, lambda: "not found" in _error(screen, "data"), "the data error")
        assert launch.disabled

        screen.query_one("#data", Input).value = "test_small.csv"
        screen.query_one("#episodes", Input).value = "0"
        await until(pilot, lambda: "positive" in _error(screen, "episodes"), "episodes error")
        assert not _error(screen, "data")

        screen.query_one("#episodes", Input).value = "3"
        screen.query_one("#name", Input).value = "bad name!"
        await until(pilot, lambda: "not valid" in _error(screen, "name"), "the name error")

        screen.query_one("#name", Input).value = ""
        screen.query_one("#engine_flags", Input).value = "--n_envs 'unclosed"
        await until(pilot, lambda: "quotation" in _error(screen, "engine_flags"), "flags error")

        screen.query_one("#engine_flags", Input).value = "--n_envs 4"
        screen.query_one("#provider", Select).value = "local"
        await until(pilot, lambda: plan_now(screen), "the plan")
        assert plan_now(screen)["engine"].endswith("--n_envs 4")
        assert not launch.disabled
    # checking created nothing
    ctx = Context(home=tmp_path)
    try:
        assert ctx.registry.list() == []
    finally:
        ctx.close()


@run_async
async def test_launch_a_real_local_run_and_watch_it_finish(tmp_path: Path) -> None:
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("l")
        screen = await screen_of(pilot, app, LaunchScreen)
        screen.query_one("#data", Input).value = "test_small.csv"
        screen.query_one("#agent_type", Select).value = "dql"
        screen.query_one("#command", Select).value = "train"
        screen.query_one("#episodes", Input).value = "2"
        screen.query_one("#name", Input).value = "from-the-tui"
        screen.query_one("#engine_flags", Input).value = "--n_envs 4 --seed 3"
        await until(pilot, lambda: plan_now(screen), "the plan")
        assert "--episodes 2 " in plan_now(screen)["engine"]
        await pilot.press("ctrl+l")
        view = await screen_of(pilot, app, RunScreen, 60)
        curves = view.query_one("#curves", CurvePanel)
        log = view.query_one("#log", LogView)
        await until(pilot, lambda: view.info is not None and view.info.row.state == reg.SUCCEEDED,
                    "the run to succeed", timeout=240)
        await until(pilot, lambda: len(curves.curves.reward) == 2, "both episodes plotted")
        assert log.line_count > 0
        await pilot.press("escape")
        await until(pilot, lambda: "from-the-tui" in table_names(app), "the run in the table")
    ctx = Context(home=tmp_path)
    try:
        (run,) = ctx.registry.list()
        assert run.name == "from-the-tui" and run.state == reg.SUCCEEDED
    finally:
        ctx.close()


@run_async
async def test_stop_from_the_run_view_keeps_the_checkpoint(tmp_path: Path) -> None:
    """x on a real run: asked first, then the engine checkpoints, the run ends CANCELLED."""
    from dqlctl import runs

    ctx = Context(home=tmp_path)
    run = runs.launch(ctx, runs.LaunchRequest(
        data="test_small.csv", agent_type="dql", command="train", episodes=100000,
        name="to-stop", engine_args=["--n_envs", "4"]))
    ctx.close()
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(run.id)
        view = await screen_of(pilot, app, RunScreen)
        curves = view.query_one("#curves", CurvePanel)
        await until(pilot, lambda: curves.curves.reward, "the first episode", timeout=120)
        await pilot.press("x")
        confirm = await screen_of(pilot, app, ConfirmScreen)
        assert "Stop run to-stop" in confirm.question
        await pilot.click("#yes")
        await until(pilot, lambda: view.info is not None
                    and view.info.row.state == reg.CANCELLED, "the run to stop", timeout=120)
        assert view.info.row.reason.startswith("stopped at episode")
    assert list((Path(run.results_uri) / "checkpoints").glob("ckpt-*.pt"))


@run_async
async def test_run_view_moves_to_the_machine_a_recovery_brings_up(
        home: dict[str, Any], sleepers: Callable[[], subprocess.Popen[bytes]]) -> None:
    """Another dqlctl process recovers the run on a new machine (``runs.recover`` records the
    new instance): the run view says so and follows the new machine's log and events."""
    live = home["live"]
    app = app_for(home["path"])
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(live.id)
        screen = await screen_of(pilot, app, RunScreen)
        log = screen.query_one("#log", LogView)
        curves = screen.query_one("#curves", CurvePanel)
        await until(pilot, lambda: log.line_count == 30, "the first machine's log")

        proc = sleepers()
        workdir = home["path"] / "second-machine"
        workdir.mkdir()
        (workdir / "engine.log").write_text("resumed from ckpt-000003.pt: episode 3/50\n")
        with open(Path(live.results_uri) / "events.jsonl", "a") as fh:
            fh.write(json.dumps(episode(4)) + "\n")
        inst = Instance("local", f"local-{proc.pid}", "running", "local", "localhost",
                        extra={"pid": proc.pid, "start_ticks": _proc_start_ticks(proc.pid),
                               "workdir": str(workdir)})
        ctx = Context(home=home["path"])
        ctx.registry.update(live.id, instance=inst.to_dict(), instance_ids=[inst.instance_id],
                            reason="recovered from a spot preemption (1 of at most 3)")
        ctx.close()
        await until(pilot, lambda: log.lines[-1:] == ["resumed from ckpt-000003.pt: "
                                                      "episode 3/50"], "the new machine's log")
        assert any(line.startswith("[dqlctl] recovered from a spot preemption")
                   and inst.instance_id in line for line in log.lines)
        await until(pilot, lambda: len(curves.curves.reward) == 4, "episode 4, once")


# -- as a person runs it: a real terminal (tmux) ----------------------------------------------------


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout


class Tmux:
    """A detached tmux session running one command in a 100x30 window (its own server)."""

    def __init__(self, command: str) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("tmux is not installed: run `make system-deps` (apt-get install tmux)",
                        pytrace=False)
        self.name = f"dqlctl-test-{os.getpid()}-{time.monotonic_ns()}"
        self("new-session", "-d", "-s", self.name, "-x", "100", "-y", "30", command)

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def screen(self, styled: bool = False) -> str:
        """The window's text; ``styled``: with its colours and weights (escape sequences)."""
        return self("capture-pane", "-p", *(["-e"] if styled else []), "-t", self.name)

    @staticmethod
    def focused(styled: str) -> str | None:
        """The launch form's focused field, by its label: the one drawn bold (the form lights
        it up once the field has taken the focus)."""
        for line in styled.splitlines():
            m = FOCUSED_LABEL.match(line)
            if m:
                return m.group(1).strip()
        return None

    def keys(self, *keys: str) -> None:
        """Named keys (Tab, Enter, C-l) or plain text without dashes."""
        self("send-keys", "-t", self.name, *keys)

    def type(self, text: str) -> None:
        """Text as typed, taken literally."""
        self("send-keys", "-t", self.name, "-l", "--", text)

    def step(self, *keys: str, to: str) -> None:
        """Keys that move the focus, then wait until the field ``to`` shows it has it, as a
        person looks before typing on (keys typed sooner would land in the field before)."""
        self.keys(*keys)
        self.wait_for(f"the focus on {to}", lambda s: self.focused(s) == to, styled=True)

    def wait_for(self, what: str, cond: Callable[[str], bool], timeout: float = 30,
                 styled: bool = False) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen(styled)
            if cond(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, timeout=30)


SPARK = set("▁▂▃▄▅▆▇█")
FOCUSED_LABEL = re.compile(r" \x1b\[1m(?:\x1b\[[0-9;]*m)*([^\x1b]+)")  # a bold label


def test_in_tmux_launch_from_the_form_watch_it_and_quit(home: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """As an operator: open dqlctl in a terminal, launch a short local run from the form, see
    its log and its curves move, go back to the dashboard, quit with q (runs left alone)."""
    dqlctl = Path(sys.executable).with_name("dqlctl")
    exit_file = tmp_path / "exit.txt"
    shell_saw = tmp_path / "shell.txt"
    fake_shell = tmp_path / "shell.sh"  # the operator's $SHELL: notes where it ran, exits
    fake_shell.write_text(f"#!/bin/sh\npwd > {shell_saw}\n")
    fake_shell.chmod(0o755)
    tmux = Tmux(f"cd {ROOT} && env DQLCTL_HOME={home['path']} TERM=xterm-256color "
                f"SHELL={fake_shell} OMP_NUM_THREADS=1 {dqlctl}; echo EXITED=$? > {exit_file}; "
                "sleep 60")
    try:
        tmux.wait_for("the dashboard", lambda s: "googl-live" in s and "RUNNING" in s
                      and "Launch" in s)
        tmux.keys("l")
        tmux.wait_for("the launch form", lambda s: "Launch a run" in s and "Plan" in s)
        tmux.wait_for("the focus on Data", lambda s: tmux.focused(s) == "Data", styled=True)
        # as a person types: after moving the focus, look that it moved, then type on
        tmux.type("test_small.csv")                     # data (its text is selected on focus)
        tmux.wait_for("the data file", lambda s: "test-small-custom" in s)  # in the plan
        tmux.step("Tab", to="Agent type")
        tmux.keys("Enter")                              # agent type: open the list
        tmux.wait_for("the agent list", lambda s: "▲" in s)
        tmux.keys("Up", "Enter")                        # custom -> dql
        tmux.wait_for("agent dql", lambda s: "test-small-dql" in s and "▲" not in s)
        tmux.step("Tab", to="Command")
        tmux.keys("Enter")                              # command: open the list
        tmux.wait_for("the command list", lambda s: "▲" in s)
        tmux.keys("Down", "Enter")                      # full-workflow -> train
        tmux.wait_for("command train", lambda s: "train --agent_type dql" in s and "▲" not in s)
        tmux.step("Tab", to="Episodes")
        tmux.keys("12")                                 # episodes (selected on focus)
        tmux.wait_for("12 episodes", lambda s: "--episodes 12" in s)
        tmux.step("Tab", to="Name")
        tmux.type("from-tmux")
        tmux.wait_for("the name", lambda s: "--experiment_name from-tmux" in s)
        tmux.step("Tab", to="Engine flags")
        tmux.type("--n_envs 4")
        tmux.wait_for("the flags", lambda s: "--n_envs 4" in s)
        tmux.keys("C-l")                                # at once: it launches once checked
        seen: set[str] = set()
        sparks: set[str] = set()
        plots: set[str] = set()

        def moving(screen: str) -> bool:
            for line in screen.splitlines():
                if "episode " in line and "/12" in line:
                    seen.add(line.split("episode ", 1)[1].split()[0])
                if SPARK & set(line):
                    sparks.add(line)
                if any(0x2800 < ord(c) <= 0x28FF for c in line):  # the equity plot's braille
                    plots.add(line)
            return "SUCCEEDED" in screen

        screen = tmux.wait_for("the run to finish in the run view", moving, timeout=180)
        assert "from-tmux" in screen and "12/12" in screen
        assert len(seen) >= 2, f"the episode count never moved: {seen}"
        assert len(sparks) >= 2, "the curves never moved"
        assert plots and "equity" in screen and "buy & hold" in screen, "no equity plot"
        assert "episode 12/12" in screen or "trained:" in screen  # the engine's own log lines
        tmux.keys("Escape")
        tmux.wait_for("the run on the dashboard", lambda s: "from-tmux" in s and "SUCCEEDED" in s
                      and "googl-live" in s)
        # a shell on the live run's machine (here, its folder): the app steps aside, comes back
        tmux.keys("C-p")
        tmux.wait_for("the palette", lambda s: "Search for commands" in s)
        tmux.type("ssh googl-live")
        tmux.wait_for("the ssh command", lambda s: "ssh googl-live" in s)
        tmux.keys("Enter")
        tmux.wait_for("back from the shell", lambda s: "back from run" in s)
        assert shell_saw.read_text().strip() == str(
            Context(home=home["path"]).run_dir(home["live"].id))
        tmux.keys("q")
        deadline = time.monotonic() + 15
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert exit_file.exists(), "dqlctl did not quit on q"
        assert exit_file.read_text().strip() == "EXITED=0"
    finally:
        tmux.close()
    # quitting touched no run
    assert home["proc"].poll() is None
    assert registry_state(home["path"], home["live"].id) == reg.RUNNING


def test_importing_the_tui_package_does_not_load_textual() -> None:
    probe = "import sys, dqlctl.tui; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@run_async
async def test_cost_screen_lists_the_cheapest_offers_in_full_and_the_runs_spend(
        home: dict[str, Any]) -> None:
    from providers.prices.estimate import PriceRequest, quote

    priced = [o for o in quote(PriceRequest(hours=10.0), home=home["path"]).offers
              if o.price_per_hour is not None]
    cheapest = priced[0]
    app = app_for(home["path"])
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: len(table_names(app)) == 3, "the runs")
        app.action_cost()
        screen = await screen_of(pilot, app, CostScreen)
        offers = screen.query_one("#offers", DataTable)
        await until(pilot, lambda: offers.row_count == len(priced), "every priced offer")
        first = [str(cell) for cell in offers.get_row_at(0)]
        assert first[:3] == [cheapest.provider, cheapest.region, cheapest.instance_type]
        assert f"${cheapest.price_per_hour:.3f}" in first
        # every column as wide as its widest value: nothing is cut, the table scrolls sideways
        widest = max(len(o.instance_type) for o in priced)
        assert offers.columns[ColumnKey("instance_type")].content_width >= widest
        assert offers.virtual_size.width > offers.size.width
        await pilot.press("right", "right")
        await until(pilot, lambda: offers.scroll_x > 0, "the table scrolled sideways")
        spend = screen.query_one("#spend", DataTable)
        assert spend.display and "local" in [str(c) for c in spend.get_row_at(0)]
        await pilot.press("escape")
        await screen_of(pilot, app, DashboardScreen)


def test_log_width_is_measured_as_drawn() -> None:
    """The log's horizontal scroll range: its fast path (ASCII by length) agrees with measuring
    every line as drawn (tabs expanded, wide characters two cells, controls one)."""
    from rich.cells import cell_len

    from dqlctl.tui.widgets import _clean, _widest

    lines = ["episode 1/20  reward 1.5", "日本語のログ行", "a\tb\tc", "\x1b[31mred\x1b[0m",
             "é" * 30, "x" * 80, "混ざった mixed 行\t!", ""]
    for start in (0, 10, 200):
        for i in range(len(lines)):
            batch = lines[i:] + lines[:i]
            expected = max([start, *(cell_len(_clean(line)) for line in batch)])
            assert _widest(batch, start) == expected, batch
