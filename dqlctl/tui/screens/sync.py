"""The sync screen: plan and run ``dqlctl sync SRC DST`` between local disk, s3://, gs://, az://.

It calls the core the headless verb calls (``providers.sync.sync``) in a thread worker: Plan is
``sync(..., dry_run=True)``, Sync the real one, whose progress callback (every 0.2 s: totals
and the copies in flight) and result come back as small dataclass messages. Cancel sets the
core's ``cancel`` event: uploads in flight are abandoned, nothing partial is left at DST.
Sync with --delete plans first and asks, naming the files that will go (``models/sync.py``);
the confirmed sync deletes no more than were shown (``max_delete``), else changes nothing.
"""

from __future__ import annotations

import threading

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import (
    Button,
    Checkbox,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    ProgressBar,
    Static,
)

from dqlctl.tui.messages import SyncDone, SyncProgressed
from dqlctl.tui.models.common import one_line
from dqlctl.tui.models.sync import (
    delete_confirmation,
    file_table,
    finished_line,
    fit_left,
    more_line,
    progress_line,
    result_summary,
)
from dqlctl.tui.screens.modals import ConfirmScreen
from providers.sync import Progress, SyncResult, human_size

FIELDS = {"src": "Source", "dst": "Destination"}
MAX_FILE_BARS = 8       # copies in flight shown with their own bar; the rest are counted


class FileBar(Horizontal):
    """One copy in flight: its key, a bar, bytes done of its size."""

    DEFAULT_CSS = """
    FileBar {
        height: 1;
    }
    FileBar > .file-name {
        width: 1fr;
        color: $text-muted;
    }
    FileBar > ProgressBar Bar {
        width: 24;
    }
    FileBar > .file-bytes {
        width: 22;
        content-align-horizontal: right;
    }
    """

    def compose(self) -> ComposeResult:
        yield Label("", classes="file-name")
        yield ProgressBar(show_eta=False)
        yield Label("", classes="file-bytes")

    def show(self, key: str, done: int, size: int) -> None:
        name = self.query_one(".file-name", Label)
        name.update(fit_left(key, max(8, name.size.width - 1)))
        self.query_one(ProgressBar).update(total=size, progress=done)
        self.query_one(".file-bytes", Label).update(f"{human_size(done)} / {human_size(size)}")


class SyncScreen(Screen[None]):
    SUB_TITLE = "sync: copy results and data between stores"
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("escape", "cancel", "Cancel sync"),
        Binding("ctrl+r", "plan", "Plan", priority=True),
        Binding("ctrl+s", "sync", "Sync", priority=True),
        # shown on the checkboxes themselves, to keep the footer short at 80 columns
        Binding("ctrl+t", "toggle('delete')", "--delete", priority=True, show=False),
        Binding("ctrl+g", "toggle('checksum')", "--checksum", priority=True, show=False),
    ]

    def __init__(self, src: str = "", dst: str = "") -> None:
        super().__init__()
        self.initial = {"src": src, "dst": dst}
        self.busy: str | None = None             # "plan" | "sync" while the worker runs
        self.gen = 0                             # messages of an older generation are stale
        self.cancel_event: threading.Event | None = None
        self.last_progress: Progress | None = None
        self.shown: tuple[str, str, bool, bool] | None = None   # what the summary is about
        self.result: SyncResult | None = None
        self.confirming = False         # the plan running is the one a Sync --delete asks on

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="sync-form"):
            for key, label in FIELDS.items():
                with Horizontal(classes="field", id=f"row-{key}"):
                    yield Label(label, classes="field-label")
                    yield Input(self.initial[key], id=key, compact=True,
                                placeholder="a folder, or s3://bucket/prefix, gs://..., "
                                "az://container/prefix")
                yield Static("", classes="field-error", id=f"err-{key}")
            with Horizontal(id="options"):
                yield Checkbox("--delete ^t", id="delete", compact=True,
                               tooltip="remove files at DST that SRC lacks (after every copy)")
                yield Checkbox("--checksum ^g", id="checksum", compact=True,
                               tooltip="compare by a hash both sides have, not size and time")
                yield Static("", classes="spacer")
                yield Button("Plan ^r", id="plan", compact=True)
                yield Button("Sync ^s", id="sync", variant="success", compact=True)
                yield Button("Back esc", id="back", compact=True)
        yield Static("", id="summary")
        with Vertical(id="progress"):
            yield Static("", id="overall-label")
            yield ProgressBar(id="overall", show_eta=False)
            for _ in range(MAX_FILE_BARS):
                yield FileBar(classes="file-bar")
            yield Static("", id="more")
        yield DataTable(id="files", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        for key in FIELDS:
            self.query_one(f"#err-{key}").display = False
        self.query_one("#progress").display = False
        self.query_one("#files").display = False
        self._say(Text("Plan (^r or Enter) lists what Sync (^s) would copy and delete; "
                       "nothing changes until Sync.", style="dim"))
        src, dst = self.initial["src"], self.initial["dst"]
        if not src:
            self.query_one("#src", Input).focus()
        elif not dst:
            self.query_one("#dst", Input).focus()
        else:
            self.query_one("#plan", Button).focus()

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.height < 32, "-short")

    def on_unmount(self) -> None:
        if self.cancel_event is not None:   # leaving (or quitting) mid-sync: stop it
            self.cancel_event.set()

    # -- the form ----------------------------------------------------------------------------

    def options(self) -> tuple[str, str, bool, bool]:
        return (self.query_one("#src", Input).value.strip(),
                self.query_one("#dst", Input).value.strip(),
                self.query_one("#delete", Checkbox).value,
                self.query_one("#checksum", Checkbox).value)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":
            return self.busy != "sync"
        if action == "cancel":
            return self.busy == "sync"
        if action in ("plan", "sync", "toggle"):
            return None if self.busy else True     # shown, dimmed while busy
        return True

    def _set_busy(self, busy: str | None) -> None:
        self.busy = busy
        for selector in ("#src", "#dst", "#delete", "#checksum", "#plan", "#sync"):
            self.query_one(selector).disabled = busy is not None
        back = self.query_one("#back", Button)
        running = busy == "sync"
        back.label = "Cancel esc" if running else "Back esc"
        back.variant = "error" if running else "default"
        self.refresh_bindings()

    def _say(self, text: Text | str) -> None:
        """The summary line(s) under the form; hidden when there is nothing to say."""
        summary = self.query_one("#summary", Static)
        summary.update(text)
        summary.display = bool(str(text))

    def _show_field_error(self, field: str | None, error: str | None) -> None:
        for key, label in FIELDS.items():
            bad = key == field and error is not None
            err = self.query_one(f"#err-{key}", Static)
            err.display = bad
            self.query_one(f"#row-{key}").set_class(bad, "-invalid")
            if bad and error is not None:
                line = error if error.lower().startswith(label.lower()) else f"{label}: {error}"
                err.update(Text(f"✗ {line}", style="bold red"))

    @on(Input.Changed)
    @on(Checkbox.Changed)
    def _changed(self, event: Input.Changed | Checkbox.Changed) -> None:
        if isinstance(event, Input.Changed) and event.input.id in FIELDS:
            if self.query_one(f"#row-{event.input.id}").has_class("-invalid"):
                self._show_field_error(None, None)
        self._mark_stale()

    def _mark_stale(self) -> None:
        if self.shown is not None and self.busy is None:
            self.query_one("#files", DataTable).border_subtitle = (
                "the inputs changed since: ^r plans again" if self.shown != self.options()
                else "")

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_plan()

    @on(Button.Pressed, "#plan")
    def _plan_pressed(self) -> None:
        self.action_plan()

    @on(Button.Pressed, "#sync")
    def _sync_pressed(self) -> None:
        self.action_sync()

    @on(Button.Pressed, "#back")
    def _back_pressed(self) -> None:
        self.action_cancel() if self.busy == "sync" else self.action_back()

    def action_toggle(self, name: str) -> None:
        if self.busy is None:
            self.query_one(f"#{name}", Checkbox).toggle()

    def action_back(self) -> None:
        if self.busy == "plan":     # a plan changes nothing: let its thread finish unseen
            self.gen += 1
        self.app.pop_screen()

    def action_cancel(self) -> None:
        if self.busy != "sync" or self.cancel_event is None:
            return
        if self.cancel_event.is_set():      # asked twice: leave; the sync stops on its own
            self.app.pop_screen()
            return
        self.cancel_event.set()
        self.query_one("#overall-label", Static).update(
            Text("cancelling: abandoning the uploads in flight ...", style="bold yellow"))

    # -- plan and sync -----------------------------------------------------------------------

    def _validated(self) -> tuple[str, str, bool, bool] | None:
        opts = self.options()
        for key, value in zip(FIELDS, opts[:2], strict=False):
            if not value:
                self._show_field_error(key, "required: a folder or a URI such as "
                                            "s3://bucket/prefix")
                self.query_one(f"#{key}", Input).focus()
                return None
        self._show_field_error(None, None)
        return opts

    def action_plan(self) -> None:
        if self.busy is None and (opts := self._validated()) is not None:
            self._start("plan", opts)

    def action_sync(self) -> None:
        if self.busy is not None or (opts := self._validated()) is None:
            return
        # with --delete: plan first, then ask, naming the files that will go
        self._start("confirm" if opts[2] else "sync", opts)

    def _confirm_deletes(self, plan: SyncResult, opts: tuple[str, str, bool, bool]) -> None:
        """After the plan of a Sync with --delete: ask, naming the files that will go; the sync
        then deletes no more than were shown (``max_delete``)."""
        ask = delete_confirmation(plan, opts[1])
        if ask is None:             # nothing to delete: nothing to ask
            self._start("sync", opts)
            return

        def answered(yes: bool | None) -> None:
            if yes and self.busy is None and self.options() == opts:
                self._start("sync", opts, max_delete=ask.deletes)

        self.app.push_screen(ConfirmScreen(ask.question, ask.detail, yes="Sync"), answered)

    def _start(self, kind: str, opts: tuple[str, str, bool, bool],
               max_delete: int | None = None) -> None:
        self.gen += 1
        self.shown = opts
        self.result = None
        self.last_progress = None
        self.cancel_event = threading.Event() if kind == "sync" else None
        self.confirming = kind == "confirm"
        kind = "plan" if kind == "confirm" else kind
        self._set_busy(kind)
        self.set_focus(None)
        table = self.query_one("#files", DataTable)
        progress = self.query_one("#progress")
        if kind == "plan":
            progress.display = False
            self._say(Text("planning: listing both sides and comparing ...",
                                style="bold yellow"))
        else:
            flags = [f for f, on in (("--delete", opts[2]), ("--checksum", opts[3])) if on]
            self._say(Text(f"syncing with {' '.join(flags)}" if flags else ""))
            table.display = False
            progress.display = True
            self.query_one("#overall", ProgressBar).update(total=None, progress=0)
            self.query_one("#overall-label", Static).update(
                Text("listing both sides and comparing ...", style="yellow"))
            for bar in self.query(FileBar):
                bar.display = False
            self.query_one("#more").display = False
        self._run(self.gen, kind == "plan", opts, self.cancel_event, max_delete)

    @work(thread=True, exclusive=True, group="sync", exit_on_error=False)
    def _run(self, gen: int, dry_run: bool, opts: tuple[str, str, bool, bool],
             cancel: threading.Event | None, max_delete: int | None = None) -> None:
        """``providers.sync.sync``, as `dqlctl sync` calls it; progress and result as messages."""
        from providers.storage import Cancelled, StorageError
        from providers.sync import sync

        src, dst, delete, checksum = opts
        try:
            result = sync(src, dst, dry_run=dry_run, delete=delete, checksum=checksum,
                          cancel=cancel, max_delete=max_delete,
                          progress=lambda p: self.post_message(SyncProgressed(gen, p)))
        except StorageError as exc:
            self.post_message(SyncDone(gen, None, one_line(exc), exc.side))
            return
        except Cancelled:
            self.post_message(SyncDone(gen, None, cancelled=True))
            return
        except Exception as exc:  # an SDK error no store mapped: say it, keep the screen
            self.post_message(SyncDone(gen, None, f"{type(exc).__name__}: {one_line(exc)}"))
            return
        self.post_message(SyncDone(gen, result))

    def on_sync_progressed(self, message: SyncProgressed) -> None:
        if message.gen != self.gen:
            return
        p = self.last_progress = message.progress
        self.query_one("#overall", ProgressBar).update(total=p.bytes_total, progress=p.bytes_done)
        if self.cancel_event is not None and self.cancel_event.is_set():
            return  # keep saying "cancelling"
        self.query_one("#overall-label", Static).update(Text.assemble(*progress_line(p)))
        bars = list(self.query(FileBar))
        for bar, (key, done, size) in zip(bars, p.active, strict=False):
            bar.display = True
            bar.show(key, done, size)
        for bar in bars[len(p.active):]:
            bar.display = False
        more = self.query_one("#more", Static)
        line = more_line(p, MAX_FILE_BARS)
        more.display = bool(line)
        more.update(line)

    def on_sync_done(self, message: SyncDone) -> None:
        if message.gen != self.gen:
            return
        kind = self.busy
        self._set_busy(None)
        self.cancel_event = None
        confirming, self.confirming = self.confirming, False
        if message.result is not None:
            self.result = message.result
            if kind == "sync":
                self._finish_progress(message.result)
            self._show_result(message.result)
            if confirming and self.shown is not None and message.result.ok:
                self._confirm_deletes(message.result, self.shown)
            return
        for bar in self.query(FileBar):
            bar.display = False
        self.query_one("#more").display = False
        if message.cancelled:
            p = self.last_progress
            done = f"{p.files_done} of {p.files_total} files were copied; " if p else ""
            self._say(Text(f"✗ sync cancelled: {done}nothing partial was left at DST",
                                style="bold yellow"))
            self.query_one("#overall-label", Static).update(Text("cancelled", style="yellow"))
            return
        self.query_one("#progress").display = False
        self.query_one("#files").display = False
        self._say("")
        error = message.error or "failed"
        if message.field is None:
            self._say(Text(f"✗ {error}", style="bold red"))
        else:
            self._show_field_error(message.field, error)
        self.query_one(f"#{message.field or 'src'}", Input).focus()

    def _finish_progress(self, r: SyncResult) -> None:
        for bar in self.query(FileBar):
            bar.display = False
        self.query_one("#more").display = False
        p = self.last_progress
        if p is None:
            return
        self.query_one("#overall-label", Static).update(Text.assemble(*finished_line(r, p)))

    def _show_result(self, r: SyncResult) -> None:
        self._say(Text.assemble(*result_summary(r)))
        self._fill_table(r)

    def _fill_table(self, r: SyncResult) -> None:
        table: DataTable[str | Text] = self.query_one("#files", DataTable)
        table.clear(columns=True)
        table.display = True
        table.border_subtitle = ""
        t = file_table(r, self.size.width)
        table.add_column("file", width=t.file_width, key="file")
        table.add_column("action", key="action")
        table.add_column("reason", key="reason")
        table.add_column("compared by", key="compare")
        table.add_column("size".rjust(t.size_width), key="size")
        for key, action, reason, compare, size, action_style, reason_style in t.rows:
            table.add_row(key, Text(action, style=action_style), Text(reason, style=reason_style),
                          Text(compare, style="dim"), size)
        table.border_title = t.title
        if r.files:
            table.focus()
