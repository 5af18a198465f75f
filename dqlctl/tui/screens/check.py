"""The check screen: what each provider needs and whether it is there (``dqlctl check``).

Each provider's ``check()`` runs in a thread worker (``models.check.check_all``); a cloud whose
SDK is missing or whose API does not answer shows as a failed check with the reason."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from dqlctl.tui.messages import ChecksDone
from dqlctl.tui.models.check import check_all
from dqlctl.tui.models.common import worker_context

if TYPE_CHECKING:
    from dqlctl.tui.app import DqlApp


def check_text(results: list[Any]) -> Text:
    """Each provider, ✓ or ✗, then its items; a failing item's fix under it."""
    text = Text()
    for result in results:
        text.append(f"{'✓' if result.ok else '✗'} {result.provider}\n",
                    style="bold green" if result.ok else "bold red")
        for item in result.items:
            text.append(f"    {'ok ' if item.ok else 'no '} {item.name}: {item.detail}\n",
                        style="" if item.ok else "red")
            if item.fix and not item.ok:
                text.append(f"         fix: {item.fix}\n", style="yellow")
    return text


class CheckScreen(Screen[None]):
    SUB_TITLE = "check: what each provider needs"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("r", "recheck", "Check again"),
    ]

    @property
    def dql(self) -> DqlApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="check-scroll"):
            yield Static("", id="check-body")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#check-scroll").focus()
        self.action_recheck()

    def action_recheck(self) -> None:
        self.query_one("#check-body", Static).update(
            Text("asking each provider ...", style="dim"))
        self._check()

    @work(thread=True, exclusive=True, group="check", exit_on_error=False)
    def _check(self) -> None:
        with worker_context(self.dql.ctx) as ctx:
            self.post_message(ChecksDone(check_all(ctx)))

    def on_checks_done(self, message: ChecksDone) -> None:
        self.query_one("#check-body", Static).update(check_text(message.results))
