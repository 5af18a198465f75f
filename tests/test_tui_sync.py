"""The TUI's sync screen, driven by Textual's pilot on real folders (and once on S3, on moto).

The screen calls the core of `dqlctl sync` (``providers.sync.sync``); these tests check what it
shows and what it does to the files: the plan changes nothing, Sync copies byte for byte, a
second plan finds everything the same, a bad source is one red line, --delete acts only on Sync,
Cancel stops a sync mid-transfer and leaves nothing partial. Tests wait on what the app shows,
never on time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import IO, Any

import pytest

pytest.importorskip("textual", reason="the TUI is the `tui` extra: pip install 'dqlctl[tui]'")

from rich.text import Text  # noqa: E402
from textual.pilot import Pilot  # noqa: E402
from textual.widgets import Button, Checkbox, DataTable, Input, ProgressBar, Static  # noqa: E402

from dqlctl.tui.app import DqlApp  # noqa: E402
from dqlctl.tui.screens.modals import ConfirmScreen  # noqa: E402
from dqlctl.tui.screens.sync import FileBar, SyncScreen  # noqa: E402
from providers.storage import StorageError  # noqa: E402
from providers.storage.local import LocalStore  # noqa: E402
from tests.test_sync import write_tree  # noqa: E402
from tests.test_tui import app_for, run_async, screen_of, until  # noqa: E402

SIZE = (120, 40)
TREE = {
    "model.pth": os.urandom(300_000),
    "events.jsonl": b'{"event": "episode"}\n' * 500,
    "report.html": b"<html></html>\n",
    "empty.txt": b"",
    "plots/equity curve.png": os.urandom(20_000),
    "checkpoints/ep_0010/state.bin": os.urandom(50_000),
    "ünï/日本/metrics.json": b'{"sharpe": 1.5}',
}


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def text_of(screen: SyncScreen, selector: str) -> str:
    widget = screen.query_one(selector, Static)
    return str(widget.render()) if widget.display else ""


def rows(screen: SyncScreen) -> dict[str, tuple[str, ...]]:
    """The file table, by file: (action, reason, compared by, size)."""
    table = screen.query_one("#files", DataTable)
    if not table.display:
        return {}
    out = {}
    for i in range(table.row_count):
        cells = [str(c) for c in table.get_row_at(i)]
        out[cells[0]] = tuple(cells[1:])
    return out


def idle(screen: SyncScreen) -> bool:
    return screen.busy is None and screen.result is not None


async def open_sync(pilot: Pilot[Any], app: DqlApp, src: Path | str,
                    dst: Path | str) -> SyncScreen:
    app.push_screen(SyncScreen(str(src), str(dst)))
    return await screen_of(pilot, app, SyncScreen)


async def plan(pilot: Pilot[Any], screen: SyncScreen) -> None:
    screen.result = None
    await pilot.press("ctrl+r")
    await until(pilot, lambda: idle(screen) and screen.result.dry_run, "the plan")


async def run_sync(pilot: Pilot[Any], screen: SyncScreen) -> None:
    screen.result = None
    await pilot.press("ctrl+s")
    if screen.query_one("#delete", Checkbox).value:
        await until(pilot, lambda: isinstance(screen.app.screen, ConfirmScreen), "the confirm")
        await pilot.press("y")
    await until(pilot, lambda: idle(screen) and not screen.result.dry_run, "the sync")


# -- plan, sync, plan again ----------------------------------------------------------------


@run_async
async def test_plan_lists_every_file_and_changes_nothing(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "results", TREE)
    dst = tmp_path / "local"
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sync(pilot, app, src, dst)
        assert screen.query_one("#src", Input).value == str(src)
        assert screen.query_one("#dst", Input).value == str(dst)
        screen.query_one("#src", Input).focus()
        await pilot.press("enter")  # Enter in an input plans
        await until(pilot, lambda: idle(screen) and screen.result.dry_run, "the plan")
        table = rows(screen)
        assert sorted(table) == sorted(TREE)
        assert all(cells[:2] == ("copy", "missing") for cells in table.values()), table
        summary = text_of(screen, "#summary")
        total = sum(len(v) for v in TREE.values())
        assert f"{len(TREE)} to copy" in summary and "0 same" in summary
        assert "0 to delete" in summary and f"{total / 1024:.1f} KiB" in summary
    assert not dst.exists()


@run_async
async def test_sync_copies_byte_for_byte_then_plan_finds_all_same(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "results", TREE)
    dst = tmp_path / "local"
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sync(pilot, app, src, dst)
        await run_sync(pilot, screen)
        assert read_tree(dst) == TREE
        summary = text_of(screen, "#summary")
        assert f"copied {len(TREE)}" in summary and "failed 0" in summary, summary
        assert screen.query_one("#overall", ProgressBar).percentage == 1.0
        assert f"{len(TREE)}/{len(TREE)} files" in text_of(screen, "#overall-label")
        assert all(cells[0] == "copy" for cells in rows(screen).values())
        assert not any(bar.display for bar in screen.query(FileBar))

        await plan(pilot, screen)
        table = rows(screen)
        assert sorted(table) == sorted(TREE)
        assert all(cells[:2] == ("skip", "same") for cells in table.values()), table
        summary = text_of(screen, "#summary")
        assert "0 to copy" in summary and f"{len(TREE)} same" in summary
        assert not screen.query_one("#progress").display


@run_async
async def test_a_missing_source_is_one_red_line_and_creates_nothing(tmp_path: Path) -> None:
    missing, dst = tmp_path / "no-such-run", tmp_path / "local"
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sync(pilot, app, missing, dst)
        for key in ("ctrl+r", "ctrl+s"):  # Plan, then Sync
            gen = screen.gen
            await pilot.press(key)
            await until(pilot, lambda: screen.gen > gen and screen.busy is None  # noqa: B023
                        and text_of(screen, "#err-src"), "the source's error")
            err = screen.query_one("#err-src", Static)
            line = str(err.render())
            assert line.startswith("✗ source") and str(missing) in line
            assert line.endswith("does not exist") and "\n" not in line
            assert isinstance(err.content, Text) and "red" in str(err.content.style)
            assert screen.query_one("#row-src").has_class("-invalid")
            assert text_of(screen, "#err-dst") == "" and text_of(screen, "#summary") == ""
        assert not dst.exists()

        # an unknown scheme names the destination; typing clears the error
        screen.query_one("#dst", Input).value = "ftp://host/x"
        await pilot.press("ctrl+r")
        await until(pilot, lambda: text_of(screen, "#err-dst"), "the destination's error")
        assert "Destination: unknown storage scheme 'ftp'" in text_of(screen, "#err-dst")
        screen.query_one("#dst", Input).value = str(dst)
        await until(pilot, lambda: not text_of(screen, "#err-dst"), "the error to clear")


@run_async
async def test_delete_removes_extras_only_on_sync(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "results", TREE)
    dst = write_tree(tmp_path / "local", {"stale/old.bin": b"old", **TREE})
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sync(pilot, app, src, dst)
        await pilot.press("ctrl+t")
        assert screen.query_one("#delete", Checkbox).value
        await plan(pilot, screen)
        assert rows(screen)["stale/old.bin"][:2] == ("delete", "extra")
        assert "1 to delete" in text_of(screen, "#summary")
        assert (dst / "stale/old.bin").read_bytes() == b"old"

        # the confirm names what will go; it says no: nothing happens
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirm")
        assert "Delete 1 file" in app.screen.question
        assert "stale/old.bin" in app.screen.detail and str(dst) in app.screen.detail
        await pilot.press("n")
        await until(pilot, lambda: app.screen is screen, "back on the sync screen")
        assert (dst / "stale/old.bin").exists() and screen.result.dry_run

        await run_sync(pilot, screen)
        assert read_tree(dst) == TREE
        assert "deleted 1" in text_of(screen, "#summary")
        assert rows(screen)["stale/old.bin"][0] == "delete"


@run_async
async def test_the_delete_confirmation_lists_what_goes_and_guards_the_count(
        tmp_path: Path) -> None:
    """Sync with --delete plans first and asks, naming the files (a few, then a count); with
    nothing to delete it asks nothing. The confirmed sync deletes no more than were shown."""
    src = write_tree(tmp_path / "results", TREE)
    extras = {f"old/{i:02d}.bin": b"o" for i in range(12)}
    dst = write_tree(tmp_path / "local", {**extras, **TREE})
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sync(pilot, app, src, dst)
        await pilot.press("ctrl+t")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirm")
        detail = app.screen.detail
        assert "Delete 12 files" in app.screen.question and "old/00.bin" in detail
        assert "and 4 more" in detail and "old/11.bin" not in detail
        # a 13th extra appears before the answer: the sync refuses rather than delete it
        (dst / "old" / "late.bin").write_bytes(b"late")
        screen.result = None
        await pilot.press("y")
        await until(pilot, lambda: "more than --max-delete 12" in text_of(screen, "#err-dst"),
                    "the refused sync")
        assert len(list((dst / "old").iterdir())) == 13
        # nothing to delete: no question
        for extra in (dst / "old").iterdir():
            extra.unlink()
        screen.result = None
        await pilot.press("ctrl+s")
        await until(pilot, lambda: idle(screen) and not screen.result.dry_run, "the sync")
        assert not isinstance(app.screen, ConfirmScreen) and screen.result.ok


@run_async
async def test_cancel_stops_a_sync_in_flight_and_leaves_nothing_partial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each source file gives its first 64 KiB, then waits for the gate: the sync is in flight
    until the test opens it, so the per-file bars and the cancel are seen deterministically."""
    files = {f"ep_{i:02d}.pth": os.urandom(256 * 1024) for i in range(12)}
    src = write_tree(tmp_path / "results", files)
    dst = tmp_path / "local"
    gate = threading.Event()
    real_open = LocalStore.open_read

    class Gated:
        def __init__(self, inner: IO[bytes]) -> None:
            self.inner, self.sent = inner, 0

        def read(self, n: int = -1) -> bytes:
            if self.sent >= 64 * 1024:
                assert gate.wait(30), "the test never opened the gate"
            data = self.inner.read(min(n if n >= 0 else 1 << 30, 64 * 1024))
            self.sent += len(data)
            return data

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def __enter__(self) -> Gated:
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

    monkeypatch.setattr(LocalStore, "open_read", lambda self, key: Gated(real_open(self, key)))
    app = app_for(tmp_path)
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_sync(pilot, app, src, dst)
            await pilot.press("ctrl+s")
            bars = list(screen.query(FileBar))

            def held() -> list[FileBar]:
                """The 4 copies in flight, each held at its first 64 KiB (a progress report
                may come between two of them opening: wait for one that shows all four)."""
                shown = [b for b in bars if b.display]
                done = [b for b in shown if b.query_one(ProgressBar).percentage == 0.25]
                return done if len(shown) == len(done) == 4 else []

            shown = await until(pilot, held, "4 copies in flight, each at 25%")
            assert "64.0 KiB / 256.0 KiB" in str(shown[0].query_one(".file-bytes").render())
            assert "8 waiting" in text_of(screen, "#more")
            assert "0/12 files" in text_of(screen, "#overall-label")
            assert screen.query_one("#back", Button).label.plain.startswith("Cancel")

            await pilot.press("escape")
            await until(pilot, lambda: "cancelling" in text_of(screen, "#overall-label"),
                        "the cancel")
            gate.set()
            await until(pilot, lambda: "cancelled" in text_of(screen, "#summary"), "cancelled")
            assert app.screen is screen and screen.busy is None
            left = read_tree(dst) if dst.exists() else {}
            assert left == {}, "a cancelled copy left something at DST"
            await pilot.press("escape")  # idle again: Escape goes back
            await until(pilot, lambda: app.screen is not screen, "the screen to close")
    finally:
        gate.set()


@run_async
async def test_a_failed_copy_is_shown_in_red_and_the_rest_is_copied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_tree(tmp_path / "results", TREE)
    dst = tmp_path / "local"
    real_put = LocalStore.put

    def put(self: LocalStore, key: str, source: Any, **kw: Any) -> Any:
        if key.endswith("model.pth"):
            raise StorageError(f"{key}: no space left on device", code=3)
        return real_put(self, key, source, **kw)

    monkeypatch.setattr(LocalStore, "put", put)
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sync(pilot, app, src, dst)
        await run_sync(pilot, screen)
        summary = screen.query_one("#summary", Static)
        assert "with errors" in text_of(screen, "#summary")
        assert f"copied {len(TREE) - 1}" in text_of(screen, "#summary")
        assert "failed 1" in text_of(screen, "#summary")
        content = summary.content
        assert isinstance(content, Text)
        error_line = next(line for line in content.split("\n") if "no space left" in line.plain)
        assert error_line.plain.startswith("✗ model.pth:")
        assert any("red" in str(span.style) for span in error_line.spans) or "red" in str(
            error_line.style)
        table = rows(screen)
        assert table["model.pth"][0] == "failed" and "no space left" in table["model.pth"][1]
        assert list(table)[0] == "model.pth"  # failures first
        assert screen.query_one("#overall", ProgressBar).percentage < 1.0
    assert "model.pth" not in read_tree(dst) and len(read_tree(dst)) == len(TREE) - 1


# -- layout ----------------------------------------------------------------------------------


@run_async
async def test_80x24_shows_the_form_and_the_result(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "results", TREE)
    dst = tmp_path / "local"
    app = app_for(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_sync(pilot, app, src, dst)
        full = screen.region
        for selector in ("#src", "#dst", "#delete", "#checksum", "#plan", "#sync", "#back"):
            region = screen.query_one(selector).region
            assert region.area > 0 and full.contains_region(region), (selector, region)
        await run_sync(pilot, screen)
        for selector in ("#summary", "#overall", "#files"):
            region = screen.query_one(selector).region
            assert region.height >= 1 and full.contains_region(region), (selector, region)
        assert screen.query_one("#files", DataTable).region.height >= 5


# -- S3 (moto) -------------------------------------------------------------------------------


@run_async
async def test_s3_results_to_a_local_folder(tmp_path: Path, aws_env: str) -> None:
    import boto3

    from providers.sync import sync

    boto3.client("s3").create_bucket(Bucket="dql-results")
    assert sync(str(write_tree(tmp_path / "tree", TREE)), "s3://dql-results/run-1").ok
    dst = tmp_path / "local"
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sync(pilot, app, "s3://dql-results/run-1", dst)
        await plan(pilot, screen)
        assert sorted(rows(screen)) == sorted(TREE)
        await run_sync(pilot, screen)
        assert read_tree(dst) == TREE
        await plan(pilot, screen)
        # S3 -> local: S3's listing time is its upload time (to the second), no witness of
        # equality: the small local files are hashed against the listed ETag instead
        assert {cells[1:3] for cells in rows(screen).values()} == {("same", "md5")}
        await pilot.press("ctrl+g")
        await plan(pilot, screen)
        assert {cells[1:3] for cells in rows(screen).values()} == {("same", "md5")}
