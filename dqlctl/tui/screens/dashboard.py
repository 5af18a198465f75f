"""The dashboard: every run, live, from the registry; reconciled by a worker once a second."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.worker import get_current_worker

from dqlctl.tui.messages import RunsRefreshed
from dqlctl.tui.models.common import STATE_STYLES, one_line, worker_context
from dqlctl.tui.models.dashboard import COLUMNS, RunRow, dashboard_rows
from dqlctl.tui.widgets import cursor_key

if TYPE_CHECKING:
    from dqlctl.tui.app import DqlApp


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


class DashboardScreen(Screen[None]):
    BINDINGS = [
        Binding("enter", "open", "Open", show=True, priority=False),
        Binding("slash", "filter", "Filter"),
        Binding("a", "toggle_finished", "Finished"),
        Binding("l", "app.launch", "Launch"),
        Binding("d", "down", "Down"),
        Binding("w", "sweep", "Sweep"),
        Binding("r", "refresh", "Refresh", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[RunRow] = []
        self.show_finished = True
        self.filter_text = ""
        self.problems: list[str] = []
        self.refreshed_at: float | None = None
        self._shown: dict[str, RunRow] = {}
        self._wake = threading.Event()

    @property
    def dql(self) -> DqlApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="filter: name, state, provider ...  (Enter: done, Esc: clear)",
                    id="filter", compact=True)
        table: DataTable[str | Text] = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        yield table
        yield Static("loading runs ...", id="empty")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter").display = False
        self.query_one("#runs").focus()
        self._refresher()

    def on_unmount(self) -> None:
        self._wake.set()

    # -- the worker -------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="dashboard", exit_on_error=False)
    def _refresher(self) -> None:
        worker = get_current_worker()
        period = self.dql.refresh_s
        with worker_context(self.dql.ctx) as ctx:
            while not worker.is_cancelled:
                try:
                    rows, problems = dashboard_rows(ctx)
                except Exception as exc:  # the registry itself failed: say so, keep trying
                    rows, problems = self.rows, [one_line(exc)]
                if worker.is_cancelled:
                    return
                self.post_message(RunsRefreshed(rows, problems))
                deadline = time.monotonic() + period
                while not worker.is_cancelled and time.monotonic() < deadline:
                    if self._wake.wait(0.1):
                        self._wake.clear()
                        break

    def refresh_now(self) -> None:
        self._wake.set()

    # -- rendering --------------------------------------------------------------------------------

    def on_runs_refreshed(self, message: RunsRefreshed) -> None:
        self.rows = message.rows
        self.problems = message.problems
        self.refreshed_at = self.dql.ctx.clock()
        if self.is_current:  # under another screen: drawn when it comes back
            self.render_rows()

    def on_screen_resume(self) -> None:
        if self.refreshed_at is not None:
            self.render_rows()

    def visible_rows(self) -> list[RunRow]:
        return [r for r in self.rows
                if (self.show_finished or not r.terminal) and r.matches(self.filter_text)]

    def render_rows(self) -> None:
        table: DataTable[str | Text] = self.query_one("#runs", DataTable)
        rows = self.visible_rows()
        keys = [r.id for r in rows]
        if keys != list(self._shown):
            current = self.highlighted_id()
            table.clear()
            for row in rows:
                table.add_row(*self._cells(row), key=row.id)
            if current in keys:
                table.move_cursor(row=keys.index(current), animate=False)
        else:
            for row in rows:
                old = self._shown[row.id]
                if old == row:
                    continue
                for (key, _), new, was in zip(COLUMNS, self._cells(row), self._cells(old),
                                              strict=True):
                    if new != was:
                        table.update_cell(row.id, key, new)
        self._shown = {r.id: r for r in rows}
        self._render_status(rows)

    @staticmethod
    def _cells(row: RunRow) -> list[str | Text]:
        return [state_text(c) if key == "state" else c
                for (key, _), c in zip(COLUMNS, row.cells(), strict=True)]

    def _render_status(self, rows: list[RunRow]) -> None:
        empty = self.query_one("#empty", Static)
        if not self.rows:
            empty.update("No runs yet. Press [b]l[/b] to launch one "
                         "(or run `dqlctl launch ...` in another terminal).")
        elif not rows:
            hidden = "finished runs are hidden (a)" if not self.show_finished else ""
            empty.update(f"No run matches. {hidden}".strip())
        empty.display = not rows
        active = sum(1 for r in self.rows if not r.terminal)
        parts = [f"{len(self.rows)} runs", f"{active} active",
                 "finished shown" if self.show_finished else "finished hidden"]
        if self.filter_text:
            parts.append(f"filter {self.filter_text!r}: {len(rows)} shown")
        if self.refreshed_at:
            parts.append("updated " + time.strftime("%H:%M:%S", time.localtime(self.refreshed_at)))
        status = Text("  ·  ".join(parts), style="dim")
        for problem in self.problems[:2]:
            status.append(f"\n! {problem}", style="bold red")
        self.query_one("#status", Static).update(status)

    def highlighted_id(self) -> str | None:
        return cursor_key(self.query_one("#runs", DataTable))

    def highlighted_row(self) -> RunRow | None:
        rid = self.highlighted_id()
        return self._shown.get(rid) if rid else None

    # -- actions ----------------------------------------------------------------------------------

    @on(DataTable.RowSelected, "#runs")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.dql.open_run(event.row_key.value)

    def action_open(self) -> None:
        rid = self.highlighted_id()
        if rid:
            self.dql.open_run(rid)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.value or box.display:
            box.value = ""
            box.display = False
            self.filter_text = ""
            self.render_rows()
            self.query_one("#runs").focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.render_rows()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            event.input.display = False
        self.query_one("#runs").focus()

    def action_toggle_finished(self) -> None:
        self.show_finished = not self.show_finished
        self.render_rows()
        self.notify("finished runs shown" if self.show_finished else "finished runs hidden",
                    timeout=2)

    def action_down(self) -> None:
        row = self.highlighted_row()
        if row is None:
            self.notify("no run selected", severity="warning")
            return
        self.dql.confirm_down(row.id, row.name, row.state)

    def action_sweep(self) -> None:
        row = self.highlighted_row()
        if row is None or row.sweep_id is None:
            self.notify("the selected run is not a sweep member (`dqlctl sweep launch` starts "
                        "one)", severity="warning", timeout=4)
            return
        self.dql.open_sweep(row.sweep_id)

    def action_refresh(self) -> None:
        self.refresh_now()
