"""The launch form: checked through the core as the operator types; shows the plan; launches."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static
from textual.worker import get_current_worker

from dqlctl import runs
from dqlctl.tui import model
from dqlctl.tui.messages import FormChecked, LaunchDone, LaunchProgress
from dqlctl.tui.model import Checked, FormValues

if TYPE_CHECKING:
    from dqlctl.tui.app import DqlApp

FIELDS = ("provider", "data", "agent_type", "command", "episodes", "name", "engine_flags")
DEBOUNCE_S = 0.15


def _provider_options() -> list[tuple[str, str]]:
    from providers import COMPUTE_PROVIDERS, PLANNED_PROVIDERS

    names = list(model.TUI_PROVIDERS) + sorted(
        (set(COMPUTE_PROVIDERS) | set(PLANNED_PROVIDERS)) - set(model.TUI_PROVIDERS))
    return [(n if n in model.TUI_PROVIDERS else f"{n} (CLI only for now)", n) for n in names]


class LaunchScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Cancel"),
        Binding("ctrl+l", "launch", "Launch", priority=True),
    ]

    def __init__(self, values: FormValues | None = None) -> None:
        super().__init__()
        self.initial = values or FormValues()
        self.checked: Checked | None = None
        self.launching = False
        self.launch_when_checked = False

    @property
    def dql(self) -> DqlApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        v = self.initial
        yield Header()
        with VerticalScroll(id="form"):
            yield Static(Text("Launch a run", style="bold"), id="form-title")
            yield from self._row("provider", "Provider",
                                 Select(_provider_options(), value=v.provider, allow_blank=False,
                                        id="provider", compact=True))
            yield from self._row("data", "Data", Input(
                v.data, placeholder="a CSV/Parquet path, a name under data/, or s3:// gs:// az://",
                id="data", compact=True))
            yield from self._row("agent_type", "Agent type", Select(
                [(a, a) for a in runs.AGENT_TYPES], value=v.agent_type, allow_blank=False,
                id="agent_type", compact=True))
            yield from self._row("command", "Command", Select(
                [(c, c) for c in runs.ENGINE_COMMANDS], value=v.command, allow_blank=False,
                id="command", compact=True))
            yield from self._row("episodes", "Episodes", Input(
                v.episodes, type="integer", id="episodes", compact=True))
            yield from self._row("name", "Name", Input(
                v.name, placeholder="(from the data and the agent)", id="name", compact=True))
            yield from self._row("engine_flags", "Engine flags", Input(
                v.engine_flags, placeholder="e.g. --n_envs 4 --seed 3", id="engine_flags",
                compact=True))
            yield Static("", id="plan")
            with Horizontal(id="buttons"):
                yield Button("Launch  ^l", id="launch", variant="success", disabled=True,
                             compact=True)
                yield Button("Cancel  esc", id="cancel", compact=True)
        yield Footer()

    @staticmethod
    def _row(key: str, label: str, widget: Input | Select[str]) -> ComposeResult:
        with Horizontal(classes="field", id=f"row-{key}"):
            yield Label(label, classes="field-label")
            yield widget
        yield Static("", classes="field-error", id=f"err-{key}")

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.height < 32, "-short")

    def on_mount(self) -> None:
        for key in FIELDS:
            self.query_one(f"#err-{key}").display = False
        self.query_one("#data", Input).focus()
        self._check(self.values())

    # -- checking as the operator types ----------------------------------------------------------

    def values(self) -> FormValues:
        def text(key: str) -> str:
            return self.query_one(f"#{key}", Input).value

        def choice(key: str) -> str:
            value = self.query_one(f"#{key}", Select).value
            return value if isinstance(value, str) else ""

        return FormValues(provider=choice("provider"), data=text("data"),
                          agent_type=choice("agent_type"), command=choice("command"),
                          episodes=text("episodes"), name=text("name"),
                          engine_flags=text("engine_flags"))

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self) -> None:
        if self.is_mounted:
            self._check(self.values())

    @work(thread=True, exclusive=True, group="check", exit_on_error=False)
    def _check(self, values: FormValues) -> None:
        worker = get_current_worker()
        time.sleep(DEBOUNCE_S)  # a newer keystroke cancels this one before it runs
        if worker.is_cancelled:
            return
        with model.worker_context(self.dql.ctx) as ctx:
            checked = model.check_form(ctx, values)
        if not worker.is_cancelled:
            self.post_message(FormChecked(checked))

    def on_form_checked(self, message: FormChecked) -> None:
        checked = message.checked
        if checked.values != self.values() or self.launching:
            return  # the form changed since (a newer check is on its way), or it is launching
        self.checked = checked
        for key in FIELDS:
            err = self.query_one(f"#err-{key}", Static)
            row = self.query_one(f"#row-{key}")
            bad = checked.field == key
            err.display = bad
            row.set_class(bad, "-invalid")
            if bad:
                err.update(Text(f"✗ {checked.error}", style="bold red"))
        plan = self.query_one("#plan", Static)
        if checked.plan is not None:
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="dim", no_wrap=True)
            grid.add_column()
            grid.add_row(Text("Plan", style="bold"), Text("what launch will do", style="dim"))
            for key, value in checked.plan.items():
                if value is not None:
                    grid.add_row(key.replace("_", " "), str(value))
            plan.update(grid)
        else:
            plan.update(Text("Fix the field marked above to see the plan.", style="dim"))
        self.query_one("#launch", Button).disabled = checked.plan is None or self.launching
        if self.launch_when_checked:
            self.launch_when_checked = False
            if checked.plan is not None:
                self.action_launch()

    # -- launching --------------------------------------------------------------------------------

    @on(Button.Pressed, "#launch")
    def _launch_pressed(self) -> None:
        self.action_launch()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.app.pop_screen()

    def action_launch(self) -> None:
        checked = self.checked
        if self.launching:
            return
        if checked is None or checked.values != self.values():
            # typed faster than the check: launch once it says the form is good
            self.launch_when_checked = True
            self.query_one("#plan", Static).update(Text("checking ...", style="bold yellow"))
            return
        if checked.plan is None:
            self.notify(f"fix the form first: {checked.error}", severity="warning", timeout=4)
            return
        self.launch_when_checked = False
        self.launching = True
        self.query_one("#launch", Button).disabled = True
        self.query_one("#plan", Static).update(Text("launching ...", style="bold yellow"))
        self._launch(checked.values)

    @work(thread=True, exclusive=True, group="launch", exit_on_error=False)
    def _launch(self, values: FormValues) -> None:
        """``runs.launch``, as `dqlctl launch` calls it. Teardown on failure is the core's."""
        try:
            req = model.build_request(values)
            with model.worker_context(self.dql.ctx) as ctx:
                run = runs.launch(ctx, req, on_state=lambda r: self.post_message(
                    LaunchProgress(r.id, r.state)))
        except Exception as exc:
            self.post_message(LaunchDone(None, model.one_line(exc)))
            return
        self.post_message(LaunchDone(run.id))

    def on_launch_progress(self, message: LaunchProgress) -> None:
        self.query_one("#plan", Static).update(
            Text(f"launching run {message.run_id}: {message.state}", style="bold yellow"))

    def on_launch_done(self, message: LaunchDone) -> None:
        self.launching = False
        if message.run_id is None:
            self.query_one("#plan", Static).update(
                Text(f"✗ launch failed: {message.error}", style="bold red"))
            self.query_one("#launch", Button).disabled = False
            return
        self.dql.launched(message.run_id)
