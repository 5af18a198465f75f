"""One run: its log following live, its training curves, its metrics when done; down, report."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static
from textual.worker import get_current_worker

from dqlctl import runs
from dqlctl.tui.messages import EngineEvents, LogLines, RunChanged
from dqlctl.tui.models.common import STATE_STYLES, one_line, worker_context
from dqlctl.tui.models.run_view import RunInfo, run_info
from dqlctl.tui.widgets import CurvePanel, EquityPlot, LogView
from engine.events import parse_event_line
from providers.base import ProviderError

if TYPE_CHECKING:
    from dqlctl.tui.app import DqlApp

NARROW = 110  # below this width the curves go above the log instead of beside it


class RunScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "search", "Search"),
        Binding("n", "find_next", "Next", show=False),
        Binding("N", "find_prev", "Prev", show=False),
        Binding("end,G", "follow", "Follow", key_display="End", show=False),
        Binding("x", "stop", "Stop"),
        Binding("d", "down", "Down"),
        Binding("s", "shell", "Shell"),
        Binding("c", "sync_results", "Sync"),
        Binding("o", "open_report", "Report"),
        Binding("p", "toggle_plots", "Plots", show=False),
        Binding("h", "history", "History", show=False),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.info: RunInfo | None = None
        self.events_seen = 0
        # Coalescing: while a LogLines/EngineEvents message waits in the queue, the worker adds
        # to it instead of posting another, so a busy screen gets one big batch per frame.
        self._lock = threading.Lock()
        self._queued: dict[type, LogLines | EngineEvents] = {}
        self._status = ""
        self._metrics_shown = ""

    @property
    def dql(self) -> DqlApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"run {self.run_id}", id="run-info")
        with Container(id="body"):
            with Vertical(id="side"):
                yield CurvePanel(id="curves")
                yield EquityPlot(id="equity")
                yield Static("", id="metrics")
            yield LogView(id="log")
        yield Input(placeholder="search the log (Enter: find, n/N: next/previous, Esc: close)",
                    id="search", compact=True)
        yield Static("", id="log-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#search").display = False
        self.query_one("#metrics").display = False
        self.query_one("#log").focus()
        self.watch(self.query_one("#log", LogView), "scroll_y", self._log_scrolled, init=False)
        self._update_log_status()
        self.set_interval(0.25, self._update_log_status)
        self._follow()

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.width < NARROW, "-narrow")
        self._render_metrics()

    def _render_metrics(self) -> None:
        box = self.query_one("#metrics", Static)
        metrics = self.info.metrics if self.info else []
        box.display = bool(metrics)
        if not metrics:
            return
        text = Text("test metrics", style="bold")
        if self.has_class("-narrow"):
            text.append("  ")
            for i, (key, value) in enumerate(metrics):
                text.append(" · " if i else "", style="dim")
                text.append(f"{key} ", style="dim")
                text.append(value)
        else:
            width = max(len(k) for k, _ in metrics)
            for key, value in metrics:
                text.append(f"\n  {key:<{width}}  ", style="dim")
                text.append(value)
        if text.plain != self._metrics_shown:  # a layout only when they change
            self._metrics_shown = text.plain
            box.update(text)

    # -- the worker: log lines and engine events through the core's Follower ------------------

    @work(thread=True, exclusive=True, group="follow", exit_on_error=False)
    def _follow(self) -> None:
        """Tail the run's log and events (``runs.Follower`` on ``runs.job_handle``) and keep the
        run's row current with ``runs.reconcile``, until the run has ended and all is read."""
        worker = get_current_worker()
        poll_s = self.dql.poll_s
        with worker_context(self.dql.ctx) as ctx:
            run = ctx.registry.get(self.run_id)
            handle: Any = None
            log = events = None
            next_check = 0.0
            try:
                while not worker.is_cancelled:
                    if handle is None:
                        handle = runs.job_handle(ctx, run)
                        if handle is not None:
                            log = runs.Follower(handle, "log")
                            events = runs.Follower(handle, "events")
                    ended = run.terminal
                    if log is not None and events is not None:
                        try:
                            self._pump(log, events, final=ended)
                        except ProviderError:
                            if ended:
                                break
                            next_check = 0.0  # its machine does not answer: ask the cloud now
                    if ended:
                        break
                    if time.monotonic() >= next_check:
                        before = run.instance_ids
                        run = runs.reconcile(ctx, ctx.registry.get(self.run_id))
                        if run.instance_ids != before and handle is not None:
                            # recovered on a new machine: its log and events start there
                            handle.close()
                            handle = log = events = None
                            self._post(LogLines([f"[dqlctl] {run.reason or 'a new machine'}; "
                                                 "following it on "
                                                 f"{', '.join(run.instance_ids)}"]))
                        self.post_message(RunChanged(run_info(ctx, run)))
                        next_check = time.monotonic() + self.dql.refresh_s
                        if run.terminal:
                            continue  # one last read of everything left
                    time.sleep(poll_s)
                self.post_message(RunChanged(run_info(ctx, ctx.registry.get(self.run_id))))
            except Exception as exc:
                self.post_message(LogLines([f"[dqlctl] could not follow this run: "
                                            f"{one_line(exc)}"]))
                self.post_message(RunChanged(run_info(ctx, ctx.registry.get(self.run_id))))
            finally:
                if handle is not None:
                    handle.close()

    def _pump(self, log: runs.Follower, events: runs.Follower, final: bool) -> None:
        lines = log.rest() if final else log.read_lines()
        if lines:
            self._post(LogLines(lines))
        new = [e for e in map(parse_event_line, events.rest() if final else events.read_lines())
               if e]
        if new:
            self._post(EngineEvents(new))

    def _post(self, message: LogLines | EngineEvents) -> None:
        """Post, or add to the same kind of message if one is still waiting to be handled."""
        with self._lock:
            queued = self._queued.get(type(message))
            if queued is not None:
                queued.extend(message)
                return
            self._queued[type(message)] = message
        self.post_message(message)

    def _take(self, message: LogLines | EngineEvents) -> None:
        with self._lock:
            if self._queued.get(type(message)) is message:
                del self._queued[type(message)]

    # -- rendering ----------------------------------------------------------------------------

    def on_log_lines(self, message: LogLines) -> None:
        self._take(message)
        self.query_one("#log", LogView).write_batch(message.lines)
        self._update_log_status()  # the count changed: say so now, not at the next tick

    def on_engine_events(self, message: EngineEvents) -> None:
        self._take(message)
        self.events_seen += len(message.events)
        curves = self.query_one("#curves", CurvePanel)
        if curves.add_events(message.events) and any(
                e.get("event") == "equity" for e in message.events):
            self.query_one("#equity", EquityPlot).set_equity(curves.curves.equity)

    def on_run_changed(self, message: RunChanged) -> None:
        self.info = info = message.info
        row = info.row
        text = Text.assemble((row.name, "bold"), f"  {row.id}  ",
                             (row.state, STATE_STYLES.get(row.state, "")))
        text.append(f"   {row.where} · {row.instance}"
                    + (" · spot" if row.spot == "spot" else "")
                    + f" · episode {row.episode} · best val Sharpe {row.sharpe}"
                    + f" · {row.elapsed} · {row.cost}")
        if info.stage and not row.terminal:
            text.append(f" · stage {info.stage}", style="dim")
        if row.reason:
            text.append(f"\n{row.reason}", style="red" if row.state == "FAILED" else "dim")
        elif row.terminal and info.report:
            text.append(f"\nreport: {info.report}  (o opens it)", style="dim")
        self.query_one("#run-info", Static).update(text, layout=False)  # fixed height (tcss)
        self.sub_title = f"{row.name} {row.state}"
        self._render_metrics()

    def _log_scrolled(self) -> None:
        self._update_log_status()

    def _update_log_status(self) -> None:
        """The line under the log: at once when lines arrive or after a key, and 4 times a
        second (a scroll that follows the end)."""
        log = self.query_one("#log", LogView)
        state = (Text("● following", style="green") if log.following
                 else Text("⏸ paused: End or G to follow", style="yellow"))
        state.append(f"   {log.received:,} lines", style="dim")
        if log.search_term:
            where = f"line {log.match_line + 1}" if log.match_line is not None else "no match"
            state.append(f"   search {log.search_term!r}: {where}", style="dim")
        if state.plain != self._status:
            self._status = state.plain
            self.query_one("#log-status", Static).update(state, layout=False)

    # -- actions ------------------------------------------------------------------------------

    def action_back(self) -> None:
        box = self.query_one("#search", Input)
        if box.display:
            self._close_search()
            return
        self.app.pop_screen()

    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.display = True
        box.focus()

    def _close_search(self) -> None:
        box = self.query_one("#search", Input)
        box.display = False
        self.query_one("#log", LogView).focus()

    @on(Input.Submitted, "#search")
    def _search(self, event: Input.Submitted) -> None:
        log = self.query_one("#log", LogView)
        term = event.value.strip()
        if not term:
            log.clear_search()
        elif log.find(term) is None:
            self.notify(f"{term!r} is not in the log", severity="warning", timeout=2)
        self._close_search()
        self._update_log_status()

    def action_find_next(self) -> None:
        self._find(True)

    def action_find_prev(self) -> None:
        self._find(False)

    def _find(self, forward: bool) -> None:
        log = self.query_one("#log", LogView)
        if log.search_term:
            log.find(log.search_term, forward)
            self._update_log_status()

    def action_follow(self) -> None:
        log = self.query_one("#log", LogView)
        log.follow()
        self._update_log_status()

    def action_down(self) -> None:
        row = self.info.row if self.info else None
        self.dql.confirm_down(self.run_id, row.name if row else self.run_id,
                              row.state if row else "?")

    def action_stop(self) -> None:
        row = self.info.row if self.info else None
        self.dql.confirm_stop(self.run_id, row.name if row else self.run_id,
                              row.state if row else "?")

    def action_shell(self) -> None:
        self.dql.open_shell(self.run_id)

    def action_sync_results(self) -> None:
        """The sync screen, from the run's results to ``./results/<name>`` here."""
        info = self.info
        if info is None or not info.results_uri:
            self.notify("this run has no results place yet", severity="warning")
            return
        self.dql.action_sync(info.results_uri, str(Path.cwd() / "results" / info.row.name))

    def action_toggle_plots(self) -> None:
        """Hide the curves and the equity plot (the log gets the width), or show them."""
        side = self.query_one("#side")
        side.display = not side.display

    def action_history(self) -> None:
        """The run's history as ``dqlctl show`` prints it: states, capacity refusals and
        region moves, preemption notices, recoveries."""
        from dqlctl.render import history_lines
        from dqlctl.tui.screens.modals import InfoScreen

        events = self.dql.ctx.registry.events(self.run_id)
        lines = [line.strip() for line in history_lines(events)]
        self.app.push_screen(InfoScreen(f"history of run {self.run_id}",
                                        Text("\n".join(lines) or "no events yet")))

    def action_open_report(self) -> None:
        info = self.info
        if info is None or not info.row.terminal:
            self.notify("the report is written when the run has finished", severity="warning")
            return
        if info.report is None:
            self.notify(f"no report.html in {info.results_uri or 'the results'} "
                        "(a train-only run writes none)", severity="warning")
            return
        self.dql.open_path(info.report)
