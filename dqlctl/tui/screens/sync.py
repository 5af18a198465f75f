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
from dqlctl.tui.models.sync import delete_confirmation
from dqlctl.tui.screens.modals import ConfirmScreen
from providers.sync import FileEntry, Progress, SyncResult, human_size

FIELDS = {"src": "Source", "dst": "Destination"}
MAX_FILE_BARS = 8       # copies in flight shown with their own bar; the rest are counted
MAX_ROWS = 5000         # rows of the file table; a bigger plan says how many it left out
MAX_ERRORS = 5          # error lines under the result; the rest are counted
ACTION_STYLE = {"copy": "bold green", "delete": "bold red", "keep": "yellow", "skip": "dim",
                "failed": "bold red"}
ACTION_ORDER = {"failed": 0, "copy": 1, "delete": 2, "keep": 3, "skip": 4}


def duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fit_left(text: str, width: int) -> str:
    """``text`` in ``width`` cells, cut at the start (the file name is at the end of a key)."""
    if width <= 1 or len(text) <= width:
        return text
    return "…" + text[-(width - 1):]


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
        eta = f"ETA {duration(p.eta)}" if p.eta is not None else "ETA ?"
        self.query_one("#overall-label", Static).update(Text.assemble(
            ("copying  ", "bold"), f"{p.files_done}/{p.files_total} files  ·  ",
            f"{human_size(p.bytes_done)} of {human_size(p.bytes_total)}  ·  {human_size(p.rate)}/s  ·  {eta}"))
        bars = list(self.query(FileBar))
        for bar, (key, done, size) in zip(bars, p.active, strict=False):
            bar.display = True
            bar.show(key, done, size)
        for bar in bars[len(p.active):]:
            bar.display = False
        more = self.query_one("#more", Static)
        extra = max(0, len(p.active) - MAX_FILE_BARS)
        waiting = max(0, p.files_total - p.files_done - len(p.active))
        parts = ([f"+ {extra} more in flight"] if extra else []) + (
            [f"{waiting} waiting"] if waiting else [])
        more.display = bool(parts)
        more.update("  ·  ".join(parts))

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
        rate = f"  ·  {human_size(p.rate)}/s" if p.bytes_done else ""
        self.query_one("#overall-label", Static).update(Text.assemble(
            ("done  " if r.ok else "done, with errors  ", "bold green" if r.ok else "bold red"),
            f"{p.files_done}/{p.files_total} files  ·  {human_size(p.bytes_done)}{rate}  ·  "
            f"{duration(r.seconds) if r.seconds >= 1 else f'{r.seconds:.2f}s'}"))

    def _show_result(self, r: SyncResult) -> None:
        text = Text()
        if r.dry_run:
            text.append("Plan  ", style="bold")
            text.append(f"{r.copied} to copy", style="bold green" if r.copied else "")
            text.append(f" ({human_size(r.bytes_copied)})  ·  {r.skipped} same  ·  ")
            text.append(f"{r.deleted} to delete", style="bold red" if r.deleted else "")
            notes = ["a dry run: nothing changed; Sync (^s) does it"]
        else:
            text.append("✓ synced  " if r.ok else "✗ synced with errors  ",
                        style="bold green" if r.ok else "bold red")
            text.append(f"copied {r.copied} ({human_size(r.bytes_copied)})  ·  skipped {r.skipped}"
                        f"  ·  deleted {r.deleted}  ·  ")
            text.append(f"failed {r.failed}", style="bold red" if r.failed else "")
            notes = []
        compare = ", ".join(f"{k} {v}" for k, v in r.compare.items() if k != "none")
        if compare:
            notes.append(f"compared by {compare}")
        if notes:
            text.append("\n" + "  ·  ".join(notes), style="dim")
        for error in r.errors[:MAX_ERRORS]:
            text.append(f"\n✗ {error}", style="red")
        if len(r.errors) > MAX_ERRORS:
            text.append(f"\n  ... and {len(r.errors) - MAX_ERRORS} more errors", style="red")
        if r.delete_skipped:
            text.append(f"\n{r.delete_skipped}", style="yellow")
        if r.refused:
            text.append(f"\n✗ {r.refused}", style="bold red")
        if r.stale_uploads:
            verb = "would abort" if r.dry_run else "aborted"
            text.append(f"\n{verb} {len(r.stale_uploads)} unfinished upload(s) a killed sync "
                        "left at DST", style="yellow")
        self._say(text)
        self._fill_table(r)

    def _fill_table(self, r: SyncResult) -> None:
        table: DataTable[str | Text] = self.query_one("#files", DataTable)
        table.clear(columns=True)
        table.display = True
        table.border_subtitle = ""
        files = sorted(r.files, key=lambda e: ACTION_ORDER.get(self._action(e), 9))
        shown = files[:MAX_ROWS]
        fixed = 8 + 9 + 12 + 11 + 2 * 5 + 4    # the other columns, cell padding, scrollbar
        width = max(12, min(max((len(e.key) for e in shown), default=4),
                            self.size.width - fixed - 4))
        table.add_column("file", width=width, key="file")
        table.add_column("action", key="action")
        table.add_column("reason", key="reason")
        table.add_column("compared by", key="compare")
        sizes = [human_size(e.size) for e in shown]
        size_width = max((len(x) for x in sizes), default=4)
        table.add_column("size".rjust(size_width), key="size")
        for e, size in zip(shown, sizes, strict=True):
            action = self._action(e)
            style = ACTION_STYLE.get(action, "")
            reason = Text(e.error, style="red") if e.error else Text(e.reason)
            table.add_row(fit_left(e.key, width), Text(action, style=style), reason,
                          Text(e.compare, style="dim"), size.rjust(size_width))
        table.border_title = (f"{len(files)} files" if len(files) <= MAX_ROWS
                              else f"first {MAX_ROWS} of {len(files)} files")
        if r.files:
            table.focus()

    @staticmethod
    def _action(e: FileEntry) -> str:
        return "failed" if e.error and e.action in ("copy", "delete") else e.action
