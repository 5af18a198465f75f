"""Modal screens: confirm before destroying, and plain information (the help)."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no; dismisses with True only on an explicit yes (y, or the button)."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, detail: str = "", yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(self.question, style="bold"), classes="dialog-title")
            if self.detail:
                yield Static(Text(self.detail, style="dim"))
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="error", compact=True)
                yield Button("No (n)", id="no", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class InfoScreen(ModalScreen[None]):
    """A title and some text; any of Esc, q, Enter closes it."""

    BINDINGS = [Binding("escape,enter,q,question_mark", "app.pop_screen", "Close")]

    def __init__(self, title: str, body: RenderableType) -> None:
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(Text(self.title_text, style="bold"), classes="dialog-title")
            with VerticalScroll(classes="dialog-body"):
                yield Static(self.body, id="info-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close (esc)", id="close", compact=True)

    @on(Button.Pressed, "#close")
    def _close(self) -> None:
        self.app.pop_screen()

    def set_body(self, body: RenderableType) -> None:
        self.body = body
        self.query_one("#info-body", Static).update(body)


HELP: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Everywhere", (
        ("?", "this help"),
        ("ctrl+p", "command palette: launch, ps, logs/show/stop/ssh/down RUN, check, cost, sync"),
        ("q", "quit (runs keep going; nothing is stopped)"),
    )),
    ("Dashboard (refreshed every second)", (
        ("↑ ↓ enter", "move, open the run (or click it)"),
        ("/", "filter by name, state, provider (esc clears)"),
        ("a", "show / hide finished runs"),
        ("l", "launch a run"),
        ("d", "down: stop the run and release its machine (asks first)"),
        ("w", "open the selected member's sweep: members, comparison"),
    )),
    ("Sweep view", (
        ("↑ ↓ enter", "move among the members, open one's run view"),
        ("tab", "to the comparison table (per market: seeds' mean Sharpe vs the baselines)"),
        ("o", "open the sweep's report"),
        ("d", "down the sweep: cancel queued members, stop running ones (asks first)"),
        ("esc", "back to the dashboard"),
    )),
    ("Run view", (
        ("esc", "back to the dashboard"),
        ("↑ PgUp wheel", "scroll the log (pauses following)"),
        ("end G", "follow the end of the log again"),
        ("/  n  N", "search the log; next / previous match"),
        ("x", "stop: checkpoint, collect the results, release the machine (asks first)"),
        ("d", "down: release the machine now (asks first)"),
        ("s", "shell on the run's machine (ssh, host key pinned); exit to come back"),
        ("c", "sync the run's results here (the sync screen)"),
        ("o", "open the report (once the run has finished)"),
        ("p", "hide / show the curves and the equity plot"),
        ("h", "history: states, capacity refusals, region moves, notices, recoveries"),
    )),
    ("Sync screen (ctrl+p sync)", (
        ("enter ctrl+r", "plan: what would be copied or deleted (a dry run)"),
        ("ctrl+s", "sync, with a bar per file and overall"),
        ("ctrl+t ctrl+g", "--delete / --checksum"),
        ("esc", "cancel a running sync, or go back"),
    )),
    ("Launch form", (
        ("tab", "next field; each change is checked as `dqlctl launch` checks it"),
        ("ctrl+l", "launch (once the plan shows)"),
        ("esc", "cancel"),
    )),
)


def help_text() -> Group:
    parts: list[RenderableType] = []
    for title, keys in HELP:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True, min_width=8)
        grid.add_column()
        for key, what in keys:
            grid.add_row(Text(key, style="bold yellow"), what)
        parts += [Text(title, style="bold underline"), grid, Text("")]
    parts.append(Text("The same verbs work headless: dqlctl launch | ps | logs -f | show | stop "
                      "| ssh | down | sync | cost | check.", style="dim"))
    return Group(*parts)


def help_screen() -> InfoScreen:
    return InfoScreen("dqlctl keys", help_text())
