"""The sync screen's model, Textual- and Rich-free: what the confirmation before a sync with
``--delete`` says (it reads a dry run's ``SyncResult``, the plan, and names the files that will
go), and the lines and table the screen shows while and after a sync runs, as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from providers.sync import FileEntry, Progress, SyncResult, human_size

MAX_NAMED = 8       # files the confirmation names; the rest are counted


@dataclass(frozen=True)
class DeleteConfirmation:
    """The question, the files that will go (at most ``MAX_NAMED``) and how many more."""

    question: str
    detail: str
    deletes: int


def delete_confirmation(plan: Any, dst: str) -> DeleteConfirmation | None:
    """What to ask before a sync whose plan (a dry run) deletes files at ``dst``; None when it
    deletes nothing (no question to ask)."""
    going = [f for f in plan.files if f.action == "delete"]
    if not going:
        return None
    size = sum(f.size for f in going)
    names = [f"  − {f.key}" for f in going[:MAX_NAMED]]
    if len(going) > MAX_NAMED:
        names.append(f"  … and {len(going) - MAX_NAMED} more")
    copies = f"{plan.copied} to copy first; " if plan.copied else ""
    detail = (f"{len(going)} file{'s' if len(going) != 1 else ''} ({human_size(size)}) at {dst} "
              f"that the source lacks will be removed ({copies}deletes only after every copy "
              "succeeded, and no more than these):\n" + "\n".join(names))
    return DeleteConfirmation(f"Delete {len(going)} file{'s' if len(going) != 1 else ''} at "
                              "the destination?", detail, len(going))


# -- what the screen shows while and after a sync runs ---------------------------------------------

#: a line as (text, style) segments, the style a Rich style name ("" for none): the screen
#: assembles them (``Text.assemble``); no Rich or Textual here
Segments = list[tuple[str, str]]

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


def action_of(e: FileEntry) -> str:
    """A file entry's action as shown: a copy or delete that failed is "failed"."""
    return "failed" if e.error and e.action in ("copy", "delete") else e.action


def progress_line(p: Progress) -> Segments:
    """The overall line while copying: files, bytes, rate and ETA."""
    eta = f"ETA {duration(p.eta)}" if p.eta is not None else "ETA ?"
    return [("copying  ", "bold"), (f"{p.files_done}/{p.files_total} files  ·  ", ""),
            (f"{human_size(p.bytes_done)} of {human_size(p.bytes_total)}  ·  "
             f"{human_size(p.rate)}/s  ·  {eta}", "")]


def more_line(p: Progress, bars: int) -> str:
    """What the ``bars`` file bars leave out: copies in flight beyond them, files waiting."""
    extra = max(0, len(p.active) - bars)
    waiting = max(0, p.files_total - p.files_done - len(p.active))
    parts = ([f"+ {extra} more in flight"] if extra else []) + (
        [f"{waiting} waiting"] if waiting else [])
    return "  ·  ".join(parts)


def finished_line(r: SyncResult, p: Progress) -> Segments:
    """The overall line once a sync ``r`` is over, from its last progress ``p``."""
    rate = f"  ·  {human_size(p.rate)}/s" if p.bytes_done else ""
    return [("done  " if r.ok else "done, with errors  ", "bold green" if r.ok else "bold red"),
            (f"{p.files_done}/{p.files_total} files  ·  {human_size(p.bytes_done)}{rate}  ·  "
             f"{duration(r.seconds) if r.seconds >= 1 else f'{r.seconds:.2f}s'}", "")]


def result_summary(r: SyncResult) -> Segments:
    """The summary of a plan (a dry run) or of a sync: counts, how files were compared, errors
    (at most ``MAX_ERRORS``), kept deletes, a refusal, unfinished uploads."""
    out: Segments = []
    if r.dry_run:
        out += [("Plan  ", "bold"), (f"{r.copied} to copy", "bold green" if r.copied else ""),
                (f" ({human_size(r.bytes_copied)})  ·  {r.skipped} same  ·  ", ""),
                (f"{r.deleted} to delete", "bold red" if r.deleted else "")]
        notes = ["a dry run: nothing changed; Sync (^s) does it"]
    else:
        out += [("✓ synced  " if r.ok else "✗ synced with errors  ",
                 "bold green" if r.ok else "bold red"),
                (f"copied {r.copied} ({human_size(r.bytes_copied)})  ·  skipped {r.skipped}"
                 f"  ·  deleted {r.deleted}  ·  ", ""),
                (f"failed {r.failed}", "bold red" if r.failed else "")]
        notes = []
    compare = ", ".join(f"{k} {v}" for k, v in r.compare.items() if k != "none")
    if compare:
        notes.append(f"compared by {compare}")
    if notes:
        out.append(("\n" + "  ·  ".join(notes), "dim"))
    out += [(f"\n✗ {error}", "red") for error in r.errors[:MAX_ERRORS]]
    if len(r.errors) > MAX_ERRORS:
        out.append((f"\n  ... and {len(r.errors) - MAX_ERRORS} more errors", "red"))
    if r.delete_skipped:
        out.append((f"\n{r.delete_skipped}", "yellow"))
    if r.refused:
        out.append((f"\n✗ {r.refused}", "bold red"))
    if r.stale_uploads:
        verb = "would abort" if r.dry_run else "aborted"
        out.append((f"\n{verb} {len(r.stale_uploads)} unfinished upload(s) a killed sync "
                    "left at DST", "yellow"))
    return out


@dataclass(frozen=True)
class FileTable:
    """The file table of a result: column widths, rows (key, action, reason, compared by,
    size) with the action's style and the reason's (red for an error), and its title."""

    file_width: int
    size_width: int
    rows: list[tuple[str, str, str, str, str, str, str]]   # + action style, reason style
    title: str


def file_table(r: SyncResult, width: int) -> FileTable:
    """The rows of ``r.files``, failures first (at most ``MAX_ROWS``), for a table ``width``
    cells wide."""
    files = sorted(r.files, key=lambda e: ACTION_ORDER.get(action_of(e), 9))
    shown = files[:MAX_ROWS]
    fixed = 8 + 9 + 12 + 11 + 2 * 5 + 4    # the other columns, cell padding, scrollbar
    file_width = max(12, min(max((len(e.key) for e in shown), default=4), width - fixed - 4))
    sizes = [human_size(e.size) for e in shown]
    size_width = max((len(x) for x in sizes), default=4)
    rows = []
    for e, size in zip(shown, sizes, strict=True):
        action = action_of(e)
        rows.append((fit_left(e.key, file_width), action, e.error or e.reason, e.compare,
                     size.rjust(size_width), ACTION_STYLE.get(action, ""),
                     "red" if e.error else ""))
    title = (f"{len(files)} files" if len(files) <= MAX_ROWS
             else f"first {MAX_ROWS} of {len(files)} files")
    return FileTable(file_width, size_width, rows, title)
