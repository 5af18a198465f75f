"""The dqlctl Textual app: it routes between the screens (dashboard, run view, sweep view, launch
form, sync, check, cost; ``screens/``) and holds the verbs of the command palette and the confirmations.

Everything that touches the registry or a provider runs in a thread worker with its own
``Context`` (``models.common.worker_context``) and posts small dataclass messages back, so the
event loop never waits on SQLite, a process, the network or SSH (DESIGN.md, Style 8). The app is
given a ``Context`` (Style 9): tests pass one whose home is a temporary folder.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from dqlctl import runs
from dqlctl.context import Context
from dqlctl.registry import TERMINAL
from dqlctl.tui.messages import Notice
from dqlctl.tui.models.common import one_line, worker_context
from dqlctl.tui.screens.check import CheckScreen
from dqlctl.tui.screens.cost import CostScreen
from dqlctl.tui.screens.dashboard import DashboardScreen
from dqlctl.tui.screens.launch import LaunchScreen
from dqlctl.tui.screens.modals import ConfirmScreen, InfoScreen, help_screen
from dqlctl.tui.screens.run_view import RunScreen
from dqlctl.tui.screens.sweep import SweepScreen
from dqlctl.tui.screens.sync import SyncScreen


class DqlApp(App[int]):
    TITLE = "dqlctl"
    SUB_TITLE = "deep-Q-learning runs"
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("ctrl+p", "command_palette", "Commands", show=False),
    ]

    def __init__(self, ctx: Context | None = None, *, refresh_s: float = 1.0,
                 poll_s: float = 0.05, freeze_gc: bool = False,
                 open_run: str | None = None) -> None:
        super().__init__()
        self.ctx = ctx or Context()
        self.refresh_s = refresh_s   # dashboard and run-state refresh period
        self.poll_s = poll_s         # how often a followed log is read
        self.freeze_gc = freeze_gc   # run_tui: True (the process is the app's alone)
        self.first_run = open_run    # a run id to open on start (`dqlctl tui RUN`)

    def on_mount(self) -> None:
        if self.first_run is not None:  # its view on top, the dashboard under it
            self.open_run(self.first_run)
        if self.freeze_gc:
            # What is alive once the app is up (Textual, its CSS, the widgets) lives as long as
            # the app: keep it out of the full collections that a fast log sets off, which walk
            # it all; measured with bench/tui_log_follow.py, gen-2 pauses drop from ~100 ms
            # to ~30 ms on a busy 2-core machine.
            self.call_after_refresh(gc.freeze)

    def get_default_screen(self) -> Screen[None]:
        return DashboardScreen()

    @property
    def dashboard(self) -> DashboardScreen:
        return next(s for s in self.screen_stack if isinstance(s, DashboardScreen))

    # -- navigation -------------------------------------------------------------------------------

    def open_run(self, run_id: str) -> None:
        self.push_screen(RunScreen(run_id))

    def open_sweep(self, sweep_id: str) -> None:
        self.push_screen(SweepScreen(sweep_id))

    def action_launch(self) -> None:
        if not isinstance(self.screen, LaunchScreen):
            self.push_screen(LaunchScreen())

    def launched(self, run_id: str) -> None:
        """A launch from the form succeeded: show its run, the dashboard underneath."""
        if isinstance(self.screen, LaunchScreen):
            self.pop_screen()
        self.dashboard.refresh_now()
        self.notify(f"launched run {run_id}")
        self.open_run(run_id)

    def action_help(self) -> None:
        if not isinstance(self.screen, InfoScreen):
            self.push_screen(help_screen())

    def action_dashboard(self) -> None:
        while not isinstance(self.screen, DashboardScreen):
            self.pop_screen()

    def action_sync(self, src: str = "", dst: str = "") -> None:
        if not isinstance(self.screen, SyncScreen):
            self.push_screen(SyncScreen(src, dst))

    # -- down ---------------------------------------------------------------------------------------

    def confirm_down(self, run_id: str, name: str, state: str) -> None:
        """Ask, then stop the run and release its machine (``runs.down``) in a worker."""
        question = f"Down run {name} ({run_id})?"
        detail = (f"It is {state}: it will be stopped and its machine released."
                  if state not in TERMINAL
                  else f"It is {state}; this releases anything it still holds.")

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify(f"stopping run {run_id} ...", timeout=2)
                self._end_run("down", run_id)

        self.push_screen(ConfirmScreen(question, detail, yes="Down"), answered)

    @work(thread=True, group="end", exit_on_error=False)
    def _end_run(self, verb: str, run_id: str) -> None:
        """``runs.down`` or ``runs.stop`` in a worker; a toast says how it went."""
        try:
            with worker_context(self.ctx) as ctx:
                run = getattr(runs, verb)(ctx, ctx.registry.get(run_id))
        except Exception as exc:
            self.post_message(Notice(f"{verb} {run_id} failed: {one_line(exc)}", "error"))
            return
        said = f": {run.reason}" if verb == "stop" and run.reason else "; instance released"
        self.post_message(Notice(f"run {run.id} {run.state}{said}", refresh=True))

    # -- stop and shell ---------------------------------------------------------------------------

    def confirm_stop(self, run_id: str, name: str, state: str) -> None:
        """Ask, then ``runs.stop`` in a worker: checkpoint, collect the results, release."""
        if state != "RUNNING":
            self.notify(f"run {run_id} is {state}: only a RUNNING run can be stopped "
                        "(d releases anything it holds)", severity="warning", timeout=4)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify(f"stopping run {run_id}: the engine writes a checkpoint ...",
                            timeout=4)
                self._end_run("stop", run_id)

        self.push_screen(ConfirmScreen(
            f"Stop run {name} ({run_id})?",
            "The engine gets SIGTERM and writes a checkpoint; its results are collected, then "
            "the machine is released.", yes="Stop"), answered)


    def open_shell(self, run_id: str) -> None:
        """Suspend the app and open a shell on the run's machine (``dqlctl ssh RUN``)."""
        from textual.app import SuspendNotSupported

        try:
            shell = runs.shell_command(self.ctx, self.ctx.registry.get(run_id))
        except Exception as exc:
            self.notify(one_line(exc), severity="warning", timeout=5)
            return
        try:
            with self.suspend():
                print(f"dqlctl: run {run_id}: {' '.join(shell.argv)}  (exit to come back)",
                      flush=True)
                code = subprocess.call(shell.argv, cwd=shell.cwd)  # noqa: S603
        except SuspendNotSupported:
            self.notify(f"this terminal cannot be suspended: run `dqlctl ssh {run_id}`",
                        severity="warning", timeout=6)
            return
        except FileNotFoundError:
            self.notify(f"{shell.argv[0]} is not installed", severity="error", timeout=6)
            return
        self.notify(f"back from run {run_id}'s shell (exit {code})", timeout=3)

    def on_notice(self, message: Notice) -> None:
        self.notify(message.text, severity=message.severity,  # type: ignore[arg-type]
                    timeout=6 if message.severity == "error" else 3)
        if message.refresh:
            self.dashboard.refresh_now()

    # -- check, cost and report ------------------------------------------------------------------

    def action_check(self) -> None:
        if not isinstance(self.screen, CheckScreen):
            self.push_screen(CheckScreen())

    def action_cost(self) -> None:
        """The cost screen; from the launch form, priced for the form's run."""
        if not isinstance(self.screen, CostScreen):
            self.push_screen(CostScreen(self._form_request()))

    def _form_request(self) -> runs.LaunchRequest | None:
        """The launch form's request when the launch form is showing and reads; else None."""
        from dqlctl.tui.models.launch import FormError, build_request

        if not isinstance(self.screen, LaunchScreen):
            return None
        try:
            return build_request(self.screen.values())
        except FormError:
            return None

    def open_path(self, path: str) -> None:
        """Show where a file is, and open it with the desktop's viewer when there is one."""
        opener = shutil.which("xdg-open") or shutil.which("open")
        graphical = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        if "://" in path or not Path(path).exists():
            self.notify(f"report: {path} (not on this machine: `dqlctl sync` it first)",
                        timeout=8)
            return
        if opener and graphical:
            subprocess.Popen([opener, path], stdin=subprocess.DEVNULL,  # noqa: S603
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
            self.notify(f"opening {path}", timeout=4)
        else:
            self.notify(f"report: {path}", timeout=10)

    # -- the command palette --------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield SystemCommand("launch", "Start a training run (the launch form)", self.action_launch)
        yield SystemCommand("ps", "The dashboard: every run", self.action_dashboard)
        yield SystemCommand("check", "What each provider needs and whether it is there",
                            self.action_check)
        yield SystemCommand("sync", "Copy datasets and results between stores (local, s3://, "
                            "gs://, az://)", self.action_sync)
        yield SystemCommand("cost", "Offers across clouds (GPU and CPU), cheapest first (from "
                            "the launch form: for its run), and what runs cost",
                            self.action_cost)
        yield SystemCommand("help", "Keys and screens", self.action_help)
        try:
            rows = self.dashboard.rows
        except StopIteration:
            rows = []
        for row in rows[:50]:
            yield SystemCommand(f"logs {row.name} ({row.id})", f"Open run {row.id}: {row.state}",
                                lambda rid=row.id: self.open_run(rid), discover=False)
            yield SystemCommand(f"show {row.name} ({row.id})", f"Open run {row.id}: {row.state}",
                                lambda rid=row.id: self.open_run(rid), discover=False)
            if row.state == "RUNNING":
                yield SystemCommand(
                    f"stop {row.name} ({row.id})", f"Checkpoint, collect and release {row.id}",
                    lambda r=row: self.confirm_stop(r.id, r.name, r.state), discover=False)
                yield SystemCommand(
                    f"ssh {row.name} ({row.id})", f"A shell on run {row.id}'s machine",
                    lambda r=row: self.open_shell(r.id), discover=False)
            if not row.terminal:
                yield SystemCommand(
                    f"down {row.name} ({row.id})", f"Stop run {row.id} and release its machine",
                    lambda r=row: self.confirm_down(r.id, r.name, r.state), discover=False)
        yield from super().get_system_commands(screen)
