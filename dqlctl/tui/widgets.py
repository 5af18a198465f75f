"""Widgets of the run view: the followed log and the training curves. Each owns its CSS."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.cache import LRUCache
from textual.containers import Vertical
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import DataTable, Label, Sparkline
from textual.widgets.data_table import CellType

from dqlctl.tui.models.run_view import Curves, Equity

LOG_MAX_LINES = 200_000
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def cursor_key(table: DataTable[object]) -> str | None:
    """The key of the row under a table's cursor; None for an empty table."""
    if not table.row_count:
        return None
    try:
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    except Exception:
        return None


class FitTable(DataTable[CellType]):
    """A DataTable whose auto height is its header and rows, known the moment they are added
    (CSS ``max-height`` caps it, then it scrolls).

    DataTable's own auto height is read from its measurement, made when it is next idle: on a
    loaded machine the screen could be laid out before that and keep the table 0 lines high
    (the cost screen's runs-cost table did, in CI). The horizontal scrollbar's line is still
    Textual's to add, once the columns are measured."""

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        header = self.header_height if self.show_header else 0
        return header + sum(row.height for row in self.rows.values())


def _clean(line: str) -> str:
    """A log line as it is drawn: tabs expanded, control characters (ANSI escapes, \\r) shown
    as a replacement character instead of moving the cursor."""
    return _CONTROL.sub("\ufffd", line.expandtabs())


def _widest(lines: list[str], width: int) -> int:
    """The widest of ``lines`` as drawn (cells), or ``width`` if none is wider. A line of plain
    ASCII without tabs is as wide as it is long (control characters are drawn one for one), so
    only lines that could be wider are measured: most of a fast log costs a ``len``."""
    for line in lines:
        n = len(line)
        if line.isascii() and "\t" not in line:
            if n > width:
                width = n
        elif n * 2 > width or "\t" in line:  # wide characters take two cells; tabs expand
            width = max(width, cell_len(_clean(line)))
    return width


class LogView(ScrollView, can_focus=True):
    """A log that follows its end while the reader is there and stays put when they scroll up.

    Built for fast writers (toolong-style): lines arrive in batches (at most one per frame, see
    ``RunScreen._post``); a batch costs a list extend, a scrollbar update and one repaint of this
    widget, with no screen layout (Textual's ``Log`` sets ``virtual_size``, which lays out the
    whole screen on every write). Only visible lines are drawn, and a line is plain text, so its
    strip is a single segment (its cleaned text is cached by absolute line number, a few screens'
    worth). ``find`` moves to the next line that contains a term and marks it.
    """

    DEFAULT_CSS = """
    LogView {
        height: 1fr;
        background: $surface;
        color: $text;
        border: round $panel;
        overflow: auto auto;
        scrollbar-size-vertical: 1;
        scrollbar-size-horizontal: 1;
    }
    LogView:focus {
        border: round $accent;
    }
    """

    def __init__(self, *, max_lines: int = LOG_MAX_LINES, id: str | None = None) -> None:
        super().__init__(id=id)
        self.max_lines = max_lines
        self.received = 0          # lines given to the widget since it was mounted
        self.search_term = ""
        self.match_line: int | None = None
        self._lines: list[str] = []
        self._width = 0
        self._dropped = 0          # lines pruned from the top so far (the number of line 0)
        self._follow = True
        # cleaned text of recently drawn lines (a few screens' worth: kept small, since every
        # cached object is one more for the garbage collector to walk)
        self._texts: LRUCache[int, tuple[str, bool]] = LRUCache(512)
        self._match_style = Style(bgcolor="yellow", color="black", bold=True)

    @property
    def lines(self) -> Sequence[str]:
        return self._lines

    @property
    def line_count(self) -> int:
        return len(self._lines)

    @property
    def following(self) -> bool:
        return self._follow

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        # the reader moved: follow again once they are back at the end, pause otherwise
        self._follow = new_value >= self.max_scroll_y

    def on_resize(self) -> None:
        # a smaller log (a plot appeared above it) has a new end: a follower stays on it
        if self._follow:
            self.call_after_refresh(self.follow)

    def _set_virtual_size(self, size: Size) -> None:
        """The scrollable size, without the screen layout that assigning ``virtual_size`` asks
        for (this widget's own size never depends on its content)."""
        if size == self.virtual_size:
            return
        update = getattr(self, "_scroll_update", None)
        if update is None:  # a Textual without it: the public way, with a layout
            self.virtual_size = size
            return
        self.set_reactive(ScrollView.virtual_size, size)
        update(size)

    def write_batch(self, lines: list[str]) -> None:
        if not lines:
            return
        self.received += len(lines)
        self._lines.extend(lines)
        self._width = _widest(lines, self._width)
        dropped = len(self._lines) - self.max_lines
        if dropped > 0:
            del self._lines[:dropped]
            self._dropped += dropped
            if self.match_line is not None:
                self.match_line = self.match_line - dropped if self.match_line >= dropped \
                    else None
        self._set_virtual_size(Size(self._width, len(self._lines)))
        if self._follow:
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True)
        elif dropped > 0:
            # keep the reader's lines where they were
            self.scroll_to(y=max(0, self.scroll_offset.y - dropped), animate=False,
                           immediate=True)
        self.refresh()

    def clear(self) -> None:
        self._lines.clear()
        self._texts.clear()
        self._width = self._dropped = 0
        self.match_line = None
        self._set_virtual_size(Size(0, 0))
        self.refresh()

    def follow(self) -> None:
        """Jump to the end and follow new lines again."""
        self._follow = True
        self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        style = self.rich_style
        width = self.size.width
        if index >= len(self._lines):
            return Strip.blank(width, style)
        key = index + self._dropped
        cached = self._texts.get(key)
        if cached is None:
            text = _clean(self._lines[index])
            cached = (text, cell_len(text) == len(text))
            self._texts[key] = cached
        text, narrow = cached
        if index == self.match_line:
            style = style + self._match_style
        if narrow:  # one cell per character: cut by index, no intermediate strips
            visible = text[scroll_x:scroll_x + width]
            return Strip([Segment(visible.ljust(width), style)], width)
        return Strip([Segment(text, style)], cell_len(text)).crop_extend(
            scroll_x, scroll_x + width, style)

    def find(self, term: str, forward: bool = True) -> int | None:
        """Move to the next (or previous) line containing ``term`` (case-insensitive)."""
        self.search_term = term
        needle = term.lower()
        lines = self._lines
        if not needle or not lines:
            self.match_line = None
            self.refresh()
            return None
        count = len(lines)
        if self.match_line is not None:
            start = self.match_line + (1 if forward else -1)
        else:
            start = self.scroll_offset.y if forward else self.scroll_offset.y + self.size.height
        order: Iterable[int] = (
            (start + i) % count for i in range(count)) if forward else (
            (start - i) % count for i in range(count))
        for y in order:
            if needle in lines[y].lower():
                self.match_line = y
                top = max(0, y - max(1, self.size.height // 3))
                self.scroll_to(y=top, animate=False, immediate=True)
                self.refresh()
                return y
        self.match_line = None
        self.refresh()
        return None

    def clear_search(self) -> None:
        self.search_term = ""
        self.match_line = None
        self.refresh()

def _fmt(value: float) -> str:
    return f"{value:.4g}"


class CurveView(Vertical):
    """One curve: its name, last/min/max, and a sparkline of every point so far."""

    DEFAULT_CSS = """
    CurveView {
        height: auto;
        padding: 0 1;
    }
    CurveView > Label {
        width: 100%;
        color: $text-muted;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    CurveView > Sparkline {
        height: 2;
        margin-bottom: 1;
    }
    """

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.values: list[float] = []

    def compose(self) -> ComposeResult:
        yield Label(self._label())
        yield Sparkline([])

    def _label(self) -> Text:
        text = Text.assemble((self.title, "bold"))
        if self.values:
            text.append(f"  {_fmt(self.values[-1])}", style="bold")
            text.append(f"  [{_fmt(min(self.values))} .. {_fmt(max(self.values))}]",
                        style="dim")
        else:
            text.append("  -", style="dim")
        return text

    def set_values(self, values: list[float]) -> None:
        self.values = list(values)
        self.query_one(Label).update(self._label(), layout=False)
        self.query_one(Sparkline).data = self.values


class CurvePanel(Vertical):
    """Episode reward, loss and validation Sharpe, updated as ``episode`` events arrive."""

    DEFAULT_CSS = """
    CurvePanel {
        height: auto;
    }
    """

    CURVES = (("reward", "episode reward"), ("loss", "loss"), ("val_sharpe", "val Sharpe"))

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.curves = Curves()

    def compose(self) -> ComposeResult:
        for key, title in self.CURVES:
            yield CurveView(title, id=f"curve-{key}")

    def add_events(self, events: list[dict[str, object]]) -> bool:
        changed = False
        for event in events:
            changed |= self.curves.add(event)
        if changed:
            for key, _ in self.CURVES:
                self.query_one(f"#curve-{key}", CurveView).set_values(getattr(self.curves, key))
        return changed


# -- the equity plot --------------------------------------------------------------------------

# Braille dots of one cell, by (x, y) in its 2x4 grid of pixels.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


def braille_plot(series: Sequence[tuple[Sequence[float], str]], width: int, height: int,
                 lo: float | None = None, hi: float | None = None) -> list[Text]:
    """Line plot of several series in ``width`` x ``height`` cells of braille (2x4 pixels per
    cell), each resampled to the pixel columns and drawn with joined vertical runs so a steep
    move stays a line. Series later in the list are drawn over earlier ones (their colour wins
    a shared cell). The y range is ``lo .. hi`` (default: all the values)."""
    values = [v for vs, _ in series for v in vs]
    if width < 1 or height < 1 or not values:
        return [Text(" " * max(width, 0)) for _ in range(max(height, 0))]
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    span = (hi - lo) or 1.0
    pw, ph = width * 2, height * 4
    bits = [[0] * width for _ in range(height)]
    owner: list[list[str]] = [[""] * width for _ in range(height)]

    def dot(px: int, py: int, style: str) -> None:
        cy, cx = py // 4, px // 2
        bits[cy][cx] |= _DOTS[px % 2][py % 4]
        owner[cy][cx] = style

    for vs, style in series:
        n = len(vs)
        if n == 0:
            continue
        prev: int | None = None
        for px in range(pw):
            pos = px * (n - 1) / (pw - 1) if pw > 1 else 0.0
            i = int(pos)
            frac = pos - i
            v = vs[i] if i + 1 >= n else vs[i] * (1 - frac) + vs[i + 1] * frac
            py = ph - 1 - round((v - lo) / span * (ph - 1))
            py = min(ph - 1, max(0, py))
            a, b = (py, py) if prev is None else (min(prev, py), max(prev, py))
            for y in range(a, b + 1):
                dot(px, y, style)
            prev = py
    lines = []
    for cy in range(height):
        line = Text()
        for cx in range(width):
            b = bits[cy][cx]
            line.append(chr(0x2800 + b) if b else " ", style=owner[cy][cx] if b else "")
        lines.append(line)
    return lines


def _pct(x: float) -> str:
    return f"{(x - 1) * 100:+.1f}%"


class EquityPlot(Widget):
    """The agent's equity against buy-and-hold's, from ``equity`` events (``models.run_view.Equity``):
    the validation split's for the best model so far, then the test split's."""

    DEFAULT_CSS = """
    EquityPlot {
        height: 9;
        padding: 0 1;
    }
    """
    AGENT, BH = "bold green", "yellow"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.equity = Equity()

    def set_equity(self, equity: Equity) -> None:
        self.equity = equity
        self.refresh()

    def render(self) -> Text:
        eq = self.equity
        width, height = self.content_size.width, self.content_size.height
        out = Text(eq.title(), style="bold", no_wrap=True, overflow="ellipsis")
        if not eq.agent:
            out.append("\nwaiting for the first validation", style="dim")
            return out
        gutter = 7
        rows = max(1, height - 2)
        values = eq.agent + eq.buy_and_hold
        lo, hi = min(values), max(values)
        plot = braille_plot([(eq.buy_and_hold, self.BH), (eq.agent, self.AGENT)],
                            max(1, width - gutter), rows, lo, hi)
        for i, line in enumerate(plot):
            label = _pct(hi) if i == 0 else _pct(lo) if i == rows - 1 else ""
            out.append("\n")
            out.append(f"{label:>{gutter - 1}} ", style="dim")
            out.append_text(line)
        out.append("\n")
        out.append("━ agent ", style=self.AGENT)
        out.append(_pct(eq.agent[-1]))
        if eq.buy_and_hold:
            out.append("   ━ buy & hold ", style=self.BH)
            out.append(_pct(eq.buy_and_hold[-1]))
        return out
