"""The cost screen: offers across clouds, cheapest first, and what the runs have cost.

Opened from the launch form (its request known, its data a local file), the offers are priced
for that run: duration and run cost next to the $/h, ranked by the run's cost
(``models.cost.cost_view(ctx, request)``).

Both are tables that show every value in full (``DataTable`` sizes each column to its widest
cell) and scroll sideways on a narrow terminal instead of cutting; the figures come from
``models.cost.cost_view`` in a thread worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from dqlctl.tui.messages import CostReady
from dqlctl.tui.models.common import one_line, worker_context
from dqlctl.tui.models.cost import HOURS, SPEND_COLUMNS, cost_view
from dqlctl.tui.widgets import FitTable

if TYPE_CHECKING:
    from dqlctl.tui.app import DqlApp


def _fill(table: DataTable[str | Text], columns: tuple[tuple[str, str, bool], ...],
          rows: list[tuple[str, ...]]) -> None:
    for key, heading, right in columns:
        table.add_column(Text(heading, justify="right" if right else "left"), key=key)
    for row in rows:
        table.add_row(*(Text(cell, justify="right") if right else cell
                        for cell, (_, _, right) in zip(row, columns, strict=True)))


class CostScreen(Screen[None]):
    SUB_TITLE = "cost: offers and what runs cost"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("tab", "app.focus_next", "Next table", show=False),
    ]

    def __init__(self, request: Any = None) -> None:
        super().__init__()
        self.request = request      # a runs.LaunchRequest: price its run

    @property
    def dql(self) -> DqlApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        work = "the launch form's run" if self.request is not None else f"{HOURS:g} h of work"
        yield Static(Text.assemble(
            ("Offers", "bold"),
            (f"  spot, {work}, cheapest first  ·  ← → scroll  ·  tab: runs",
             "dim")), id="offers-title", classes="cost-title")
        yield DataTable(id="offers", cursor_type="row", zebra_stripes=True)
        yield Static("", id="cost-notes")
        yield Static(Text.assemble(("What runs cost", "bold"), ("  by month and provider",
                                                                 "dim")),
                     id="spend-title", classes="cost-title")
        yield FitTable(id="spend", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#cost-notes", Static).update(Text("reading prices ...", style="dim"))
        self.query_one("#spend").display = False
        self.query_one("#offers").focus()
        self._load()

    @work(thread=True, exclusive=True, group="cost", exit_on_error=False)
    def _load(self) -> None:
        try:
            with worker_context(self.dql.ctx) as ctx:
                view = cost_view(ctx, self.request)
        except Exception as exc:
            self.post_message(CostReady(None, one_line(exc)))
            return
        self.post_message(CostReady(view))

    def on_cost_ready(self, message: CostReady) -> None:
        notes = self.query_one("#cost-notes", Static)
        view = message.view
        if view is None:
            notes.update(Text(f"✗ {message.error}", style="bold red"))
            return
        offers: DataTable[str | Text] = self.query_one("#offers", DataTable)
        _fill(offers, view.columns, view.offers)
        offers.border_title = f"{len(view.offers)} offers"
        if view.run is not None:
            self.query_one("#offers-title", Static).update(Text.assemble(
                ("Offers", "bold"), (f"  spot, run: {view.run}, cheapest run first  ·  ← → "
                                     "scroll  ·  tab: runs", "dim")))
        text = Text("\n".join(view.warnings), style="yellow")
        if view.notes:
            text.append(("\n" if view.warnings else "") + "\n".join(view.notes), style="dim")
        notes.update(text)
        notes.display = bool(view.warnings or view.notes)
        spend: DataTable[str | Text] = self.query_one("#spend", DataTable)
        spend.display = True
        if view.spend:
            _fill(spend, SPEND_COLUMNS, view.spend)
        else:
            spend.display = False
            self.query_one("#spend-title", Static).update(Text.assemble(
                ("What runs cost", "bold"), ("  nothing yet: no run has been billed", "dim")))
