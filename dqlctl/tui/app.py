"""The dqlctl Textual app: dashboard, run view, launch form; the verbs in the command palette.

Everything that touches the registry or a provider runs in a thread worker with its own
``Context`` (``model.worker_context``) and posts small dataclass messages back, so the event loop
never waits on SQLite, a process, the network or SSH (DESIGN.md, Style 8). The app is given a
``Context`` (Style 9): tests pass one whose home is a temporary folder.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from dqlctl import runs
from dqlctl.context import Context
from dqlctl.registry import TERMINAL
from dqlctl.tui import model
from dqlctl.tui.messages import Notice
from dqlctl.tui.screens.dashboard import DashboardScreen
from dqlctl.tui.screens.launch import LaunchScreen
from dqlctl.tui.screens.modals import ConfirmScreen, InfoScreen, help_screen
from dqlctl.tui.screens.run_view import RunScreen
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
                 poll_s: float = 0.05, freeze_gc: bool = False) -> None:
        super().__init__()
        self.ctx = ctx or Context()
        self.refresh_s = refresh_s   # dashboard and run-state refresh period
        self.poll_s = poll_s         # how often a followed log is read
        self.freeze_gc = freeze_gc   # run_tui: True (the process is the app's alone)

    def on_mount(self) -> None:
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
            with model.worker_context(self.ctx) as ctx:
                run = getattr(runs, verb)(ctx, ctx.registry.get(run_id))
        except Exception as exc:
            self.post_message(Notice(f"{verb} {run_id} failed: {model.one_line(exc)}", "error"))
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
            self.notify(model.one_line(exc), severity="warning", timeout=5)
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

    # -- check and report ------------------------------------------------------------------------

    def action_check(self) -> None:
        screen = InfoScreen("dqlctl check", Text("asking each provider ...", style="dim"))
        self.push_screen(screen)
        self._check(screen)

    @work(thread=True, group="check", exit_on_error=False)
    def _check(self, screen: InfoScreen) -> None:
        from providers import COMPUTE_PROVIDERS

        text = Text()
        with model.worker_context(self.ctx) as ctx:
            for name in sorted(COMPUTE_PROVIDERS):
                try:
                    result = ctx.provider(name).check()
                except Exception as exc:
                    text.append(f"✗ {name}: {model.one_line(exc)}\n", style="red")
                    continue
                text.append(f"{'✓' if result.ok else '✗'} {name}\n",
                            style="bold green" if result.ok else "bold red")
                for item in result.items:
                    text.append(f"    {'ok ' if item.ok else 'no '} {item.name}: {item.detail}\n",
                                style="" if item.ok else "red")
                    if item.fix and not item.ok:
                        text.append(f"         fix: {item.fix}\n", style="yellow")
        self.call_from_thread(screen.set_body, text)

    def action_cost(self) -> None:
        screen = InfoScreen("dqlctl cost", Text("reading prices ...", style="dim"))
        self.push_screen(screen)
        self._cost(screen)

    @work(thread=True, group="cost", exit_on_error=False)
    def _cost(self, screen: InfoScreen) -> None:
        """The same figures as `dqlctl cost --hours 10` and `dqlctl cost --runs`."""
        from rich.console import Group
        from rich.table import Table

        from dqlctl.runs import spend_by_month
        from providers.prices.estimate import PriceRequest, quote

        with model.worker_context(self.ctx) as ctx:
            try:
                q = quote(PriceRequest(hours=10.0, spot=True), home=ctx.home)
                spend = spend_by_month(ctx, ctx.clock())
            except Exception as exc:
                self.call_from_thread(screen.set_body, Text(model.one_line(exc), style="red"))
                return
        offers = Table(title="GPU offers, spot, 10 h of work, cheapest first", expand=True)
        for col in ("cloud", "region", "instance type", "GPUs"):
            offers.add_column(col, no_wrap=True, overflow="ellipsis" if col == "region" else None)
        for col in ("od $/h", "spot $/h", "save", "10 h"):
            offers.add_column(col, justify="right", no_wrap=True)
        for o in [o for o in q.offers if o.price_per_hour is not None][:25]:
            x = o.extra
            saving = f"{x['saving_pct']:.0f}%" if x.get("saving_pct") is not None else "-"
            est = (x.get("estimate") or {}).get("total_usd")
            offers.add_row(o.provider, o.region, o.instance_type, f"{o.gpu} x{o.gpu_count}",
                           f"{x['on_demand']:.3f}" if x.get("on_demand") else "-",
                           f"{o.price_per_hour:.3f}", saving,
                           f"${est:.2f}" if est is not None else "-")
        runs_table = Table(title="What runs cost", expand=True)
        for col in ("month", "provider", "runs", "instance-hours", "cost"):
            runs_table.add_column(col)
        for row in spend:
            runs_table.add_row(row["month"], row["provider"], str(row["runs"]),
                               f"{row['instance_hours']:.2f}", f"${row['cost_usd']:.2f}")
        notes = Text("\n".join(q.warnings), style="yellow") if q.warnings else Text("")
        self.call_from_thread(screen.set_body, Group(offers, notes, runs_table))

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
        yield SystemCommand("cost", "GPU offers across clouds, cheapest first, and what runs "
                            "cost", self.action_cost)
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
