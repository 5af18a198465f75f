"""The sweep view: one sweep's facts, its members (Enter opens a member's run view) and the
comparison of its finished members against buy-and-hold and the other baselines, refreshed by
a worker (each refresh is a look: finished members recorded, queued ones started)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import get_current_worker

from dqlctl.render import SWEEP_MARKET_COLUMNS, SWEEP_MEMBER_COLUMNS
from dqlctl.tui.messages import Notice, SweepRefreshed
from dqlctl.tui.models.common import STATE_STYLES, one_line, worker_context
from dqlctl.tui.models.sweep import SweepModel, SweepView
from dqlctl.tui.widgets import FitTable, cursor_key

if TYPE_CHECKING:
    from dqlctl.tui.app import DqlApp

_STATE = SWEEP_MEMBER_COLUMNS.index("STATE")


class SweepScreen(Screen[None]):
    SUB_TITLE = "sweep"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("enter", "open", "Open member", priority=False),
        Binding("o", "open_report", "Report"),
        Binding("d", "down", "Down sweep"),
        Binding("tab", "app.focus_next", "Next table", show=False),
        Binding("r", "refresh", "Refresh", show=False),
    ]

    def __init__(self, sweep_id: str) -> None:
        super().__init__()
        self.sweep_id = sweep_id
        self.model = SweepModel(sweep_id)
        self.view: SweepView | None = None
        self._wake = threading.Event()

    @property
    def dql(self) -> DqlApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text("reading the sweep ...", style="dim"), id="sweep-facts")
        members: DataTable[str | Text] = FitTable(id="members", cursor_type="row",
                                                   zebra_stripes=True)
        for heading in SWEEP_MEMBER_COLUMNS:
            members.add_column(heading, key=heading)
        yield members
        yield Static("", id="compare-title")
        yield FitTable(id="markets", cursor_type="row", zebra_stripes=True)
        yield Static("", id="verdict")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"sweep {self.sweep_id}"
        self.query_one("#members").focus()
        self._refresher()

    def on_unmount(self) -> None:
        self._wake.set()

    @work(thread=True, exclusive=True, group="sweep", exit_on_error=False)
    def _refresher(self) -> None:
        worker = get_current_worker()
        with worker_context(self.dql.ctx) as ctx:
            while not worker.is_cancelled:
                try:
                    message = SweepRefreshed(self.model.view(ctx))
                except Exception as exc:
                    message = SweepRefreshed(None, one_line(exc))
                if worker.is_cancelled:
                    return
                self.post_message(message)
                deadline = time.monotonic() + max(self.dql.refresh_s, 1.0)
                while not worker.is_cancelled and time.monotonic() < deadline:
                    if self._wake.wait(0.1):
                        self._wake.clear()
                        break

    def on_sweep_refreshed(self, message: SweepRefreshed) -> None:
        facts = self.query_one("#sweep-facts", Static)
        view = message.view
        if view is None:
            facts.update(Text(f"✗ {message.error}", style="bold red"))
            return
        self.view = view
        self.sub_title = f"sweep {view.name} ({view.id})"
        text = Text()
        for label, value in view.facts:
            text.append(f"{label:<12}", style="dim").append(f"{value}\n")
        for problem in view.problems[:2]:
            text.append(f"! {problem}\n", style="bold red")
        facts.update(text)
        self._fill_members(view)
        self._fill_comparison(view)

    def _fill_members(self, view: SweepView) -> None:
        table: DataTable[str | Text] = self.query_one("#members", DataTable)
        current = self.highlighted_run()
        table.clear()
        for cells in view.members:
            shown: list[str | Text] = list(cells)
            shown[_STATE] = Text(cells[_STATE], style=STATE_STYLES.get(cells[_STATE], ""))
            table.add_row(*shown, key=cells[0])
        ids = [cells[0] for cells in view.members]
        if current in ids:
            table.move_cursor(row=ids.index(current), animate=False)
        table.border_title = f"{len(ids)} members"

    def _fill_comparison(self, view: SweepView) -> None:
        title = self.query_one("#compare-title", Static)
        table: DataTable[str | Text] = self.query_one("#markets", DataTable)
        verdict = self.query_one("#verdict", Static)
        table.clear(columns=True)
        several = len(view.arms) > 1
        if not view.arms:
            title.update(Text.assemble(("Comparison ", "bold"),
                                       (" · no member has finished with test results yet",
                                        "dim")))
            table.display = False
            verdict.update("")
            return
        title.update(Text.assemble(("Comparison ", "bold"), (
            " · per market: the seeds' mean test Sharpe against buy-and-hold and the other "
            "baselines", "dim")))
        table.display = True
        for heading in (("ARM",) if several else ()) + SWEEP_MARKET_COLUMNS:
            table.add_column(heading, key=heading)
        lines = Text()
        for arm in view.arms:
            for row in arm.rows:
                table.add_row(*(([arm.label] if several else []) + row))
            if several:
                lines.append(f"{arm.label}\n", style="bold")
            for line in arm.lines:
                lines.append(f"{line}\n")
        if view.not_compared:
            lines.append(f"not compared: {', '.join(view.not_compared)}", style="dim")
        verdict.update(lines)

    def highlighted_run(self) -> str | None:
        return cursor_key(self.query_one("#members", DataTable))

    @on(DataTable.RowSelected, "#members")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.dql.open_run(event.row_key.value)

    def action_open(self) -> None:
        run_id = self.highlighted_run()
        if run_id:
            self.dql.open_run(run_id)

    def action_open_report(self) -> None:
        reports = [a.report for a in self.view.arms if a.report] if self.view else []
        if not reports:
            self.notify("no report yet: it is written once a member has finished",
                        severity="warning", timeout=4)
            return
        self.dql.open_path(reports[0])

    def action_refresh(self) -> None:
        self._wake.set()

    def action_down(self) -> None:
        from dqlctl.tui.screens.modals import ConfirmScreen

        name = self.view.name if self.view else self.sweep_id

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify(f"stopping sweep {self.sweep_id} ...", timeout=2)
                self._down()

        self.dql.push_screen(ConfirmScreen(
            f"Down sweep {name} ({self.sweep_id})?",
            "Its queued members are cancelled and every running member is stopped and its "
            "machine released.", yes="Down"), answered)

    @work(thread=True, group="sweep-down", exit_on_error=False)
    def _down(self) -> None:
        from dqlctl.sweeps import down

        try:
            with worker_context(self.dql.ctx) as ctx:
                sweep = down(ctx, ctx.registry.get_sweep(self.sweep_id))
        except Exception as exc:
            self.post_message(Notice(f"sweep down {self.sweep_id} failed: {one_line(exc)}",
                                     "error"))
            return
        self.post_message(Notice(f"sweep {sweep.id} {sweep.state}", refresh=True))
        self._wake.set()
