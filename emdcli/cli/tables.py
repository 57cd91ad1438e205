"""Tables for people: columns that fold at path separators and word breaks instead of cutting, and
give way in a set order when the terminal is narrow (used through the result sink's table format)."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from rich import box as boxes
from rich.box import Box
from rich.cells import cell_len, chop_cells
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ..io.files import display_path

Record = dict[str, Any]


def common_folder(paths: Sequence[str]) -> Path | None:
    """The deepest folder holding every path, written as the paths are (relative when they all are),
    or None when they share none but the root (or, relative, the current folder)."""
    folders = [os.path.dirname(p) for p in paths]
    try:
        base = Path(os.path.commonpath(folders))
    except ValueError:  # relative and absolute paths mixed
        try:
            base = Path(os.path.commonpath([os.path.abspath(f) for f in folders]))
        except ValueError:
            return None
    return None if base == Path(base.anchor) else base


PATH, NAME, NUMBER, PROSE = "path", "name", "number", "prose"
_SEPARATORS = "/" + (os.sep if os.sep != "/" else "")
#: Where the text of each kind of cell may break, the first that makes it fit: a path after its
#: separators, then within a file or folder name after ``_``, ``-`` or a space; a name after a space,
#: then after ``_`` or ``-``; prose (and a title) after a space, then as a path. A word is cut only
#: when it alone is wider than its column. Numbers never wrap.
BREAKS: dict[str, tuple[str, ...]] = {
    PATH: (_SEPARATORS, " _-"), NAME: (" ", "_-"), PROSE: (" ", _SEPARATORS, "_-"), NUMBER: ()
}  # fmt: skip
#: The order in which wrapping columns get room beyond their narrowest (no word cut): paths room to
#: break at separators only, names their whole width, the headers of numbers, paths their whole
#: width, prose. (kind, 1: the room to break at the first kind of break only / 2: the whole width.)
_ROOM_ORDER = ((PATH, 1), (NAME, 2), (NUMBER, 2), (PATH, 2), (PROSE, 2))


def _pieces(text: str, breaks: str) -> list[str]:
    """``text`` cut after each run of the characters of ``breaks``."""
    if not breaks:
        return [text]
    chars = re.escape(breaks)
    return re.findall(f"[^{chars}]*[{chars}]+|[^{chars}]+", text) or [text]


def _longest(text: str, breaks: str) -> int:
    return max(cell_len(piece.rstrip()) for piece in _pieces(text, breaks))


def _fold(text: str, width: int, breaks: Sequence[str]) -> list[str]:
    """The lines of ``text`` at most ``width`` cells wide (trailing spaces aside), broken after the
    characters of ``breaks[0]``; a piece still too wide after those of ``breaks[1]``, and so on; a
    word still too wide is cut."""
    if cell_len(text.rstrip()) <= width or width < 1:
        return [text]
    if not breaks:
        return chop_cells(text, width)
    lines: list[str] = []
    for piece in _pieces(text, breaks[0]):
        if lines and cell_len((lines[-1] + piece).rstrip()) <= width:
            lines[-1] += piece
        else:  # on a line of its own, the last part of it going on with what follows
            lines += _fold(piece, width, breaks[1:])
    return lines


class Folded:
    """Text that wraps at the given breaks (see :data:`BREAKS`); Rich itself wraps at spaces only."""

    def __init__(self, text: Text, breaks: Sequence[str]) -> None:
        self.text, self.breaks = text, breaks

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        plain = self.text.plain
        narrowest = _longest(plain, "".join(self.breaks)) if plain else 0
        return Measurement(narrowest, cell_len(plain)).with_maximum(options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = _fold(self.text.plain, options.max_width, self.breaks)
        parts = self.text.divide(itertools.accumulate(len(line) for line in lines[:-1]))
        for part in parts:
            part.rstrip()
        yield Text("\n", no_wrap=True, overflow="crop").join(parts)


class Prose(Text):
    """A cell's text that wraps (as prose) within whatever width its column gets and never widens
    it: e.g. why a row was skipped, in a column of class names."""


@dataclass(frozen=True)
class Col:
    """One column of a :class:`FitTable`.

    kind: PATH, NAME, NUMBER or PROSE, how its cells may break (see :data:`BREAKS`).
    give_way: 0 for a column always shown; 1, 2, ...: the order in which columns give way when the
    table is too wide, by showing ``shorter`` cells instead, or, without those, by being left out.
    later: when wrapping columns share the room, this one gets it after others of its kind.
    """

    header: str
    cells: list[Text]
    kind: str = NAME
    justify: JustifyMethod = "left"
    style: str = ""
    give_way: int = 0
    shorter: list[Text] | None = None
    later: bool = False

    @cached_property
    def sizes(self) -> tuple[int, int, int]:
        """Widths: the narrowest with no word cut (nor a number wrapped), the narrowest with a path
        broken at separators only, and the whole width of the widest cell."""
        least = max((cell_len(word) for word in self.header.split()), default=0)
        some = whole = cell_len(self.header)
        breaks = BREAKS[self.kind]
        for cell in self.cells:
            plain = cell.plain
            if isinstance(cell, Prose):
                least = max(least, _longest(plain, "".join(BREAKS[PROSE])) if plain else 0)
                continue
            least = max(least, _longest(plain, "".join(breaks)) if plain else 0)
            some = max(some, _longest(plain, breaks[0]) if self.kind == PATH and plain else cell_len(plain))
            whole = max(whole, cell_len(plain))
        return least, max(least, some), max(least, whole)

    def render(self, cell: Text) -> RenderableType:
        if isinstance(cell, Prose):
            return Folded(cell, BREAKS[PROSE])
        return cell if self.kind == NUMBER else Folded(cell, BREAKS[self.kind])


def _share(columns: Sequence[Col], sizes: Sequence[tuple[int, int, int]], room: int) -> list[int]:
    """Widths of ``columns`` that fill ``room``: each column its narrowest, then more in _ROOM_ORDER."""
    widths = [least for least, _, _ in sizes]
    wrapping = [i for i, c in enumerate(columns) if c.kind != NUMBER]
    while sum(widths) > room and wrapping and max(widths[i] for i in wrapping) > 1:  # words get cut
        widths[max(wrapping, key=lambda i: widths[i])] -= 1
    spare = room - sum(widths)
    in_turn = sorted(range(len(columns)), key=lambda i: columns[i].later)
    for kind, level in _ROOM_ORDER:
        for i in in_turn:
            if columns[i].kind == kind and spare > 0:
                more = max(0, min(sizes[i][level] - widths[i], spare))
                widths[i] += more
                spare -= more
    return widths


class FitTable:
    """A table laid out for the width it is drawn at, with its title above and, when columns were
    left out, a line saying which below.

    Every column is as wide as its widest cell when that fits. Otherwise columns give way, in the
    order of their ``give_way``; when even the columns left do not fit, the wrapping ones share the
    room (see _ROOM_ORDER), each breaking its cells where its kind allows (see :data:`BREAKS`).
    """

    def __init__(self, title: str, columns: Sequence[Col], *, box: Box = boxes.SIMPLE_HEAVY, pad_edge: bool = True):
        self.title, self.columns, self.box, self.pad_edge = title, list(columns), box, pad_edge

    def _stages(self) -> list[tuple[list[Col], list[str]]]:
        """The columns shown at each stage of giving way, and the headers of those left out."""
        stages = []
        for level in [0, *sorted({c.give_way for c in self.columns if c.give_way})]:
            shown, left_out = [], []
            for c in self.columns:
                if c.give_way and c.give_way <= level:
                    if c.shorter is None:
                        left_out.append(c.header)
                        continue
                    c = replace(c, cells=c.shorter, shorter=None, give_way=0)
                shown.append(c)
            stages.append((shown, left_out))
        return stages

    def _table(self, columns: Sequence[Col], widths: Sequence[int]) -> Table:
        table = Table(box=self.box, pad_edge=self.pad_edge)
        for c, width in zip(columns, widths, strict=True):
            table.add_column(Text(c.header, no_wrap=False), justify=c.justify, style=c.style, width=width,
                             no_wrap=c.kind == NUMBER)  # fmt: skip
        for row in zip(*(c.cells for c in columns), strict=True):
            table.add_row(*(c.render(cell) for c, cell in zip(columns, row, strict=True)))
        return table

    def _frame(self, console: Console, options: ConsoleOptions, columns: int) -> int:
        """The width of the borders and padding of a table of this many columns."""
        probe = self._table([Col("", [])] * columns, [1] * columns)
        return Measurement.get(console, options.update_width(10**6), probe).maximum - columns

    def layout(self, console: Console, options: ConsoleOptions) -> tuple[Table, list[str]]:
        """The table drawn at ``options.max_width`` and the headers of the columns left out."""
        for shown, left_out in self._stages():
            sizes = [c.sizes for c in shown]
            room = options.max_width - self._frame(console, options, len(shown))
            if sum(whole for _, _, whole in sizes) <= room:
                return self._table(shown, [whole for _, _, whole in sizes]), left_out
        return self._table(shown, _share(shown, sizes, room)), left_out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table, left_out = self.layout(console, options)
        yield Folded(Text(self.title, style="table.title"), BREAKS[PROSE])
        yield table
        if left_out:
            note = f"left out at this width: {', '.join(left_out)} (--format csv has every column)"
            yield Folded(Text(note, style="dim"), BREAKS[PROSE])

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        stages = self._stages()
        (first, _), (last, _) = stages[0], stages[-1]
        widest = sum(c.sizes[2] for c in first) + self._frame(console, options, len(first))
        narrowest = sum(c.sizes[0] for c in last) + self._frame(console, options, len(last))
        return Measurement(narrowest, max(widest, cell_len(self.title))).with_maximum(options.max_width)


def simple_table(title: str, columns: Sequence[str]) -> Callable[[list[Record]], RenderableType]:
    """A table of the given record keys (columns empty in every row are left out), laid out as a
    :class:`FitTable`: ``query`` and ``path`` are paths, shown relative to their common folder
    (named in the title); ``error`` is prose; numbers never wrap; a column other than a path with
    the same value in every row says least and gives way first; the paths found get room to wrap in
    before the queries."""

    def render(records: list[Record]) -> RenderableType:

        notes: list[str] = []
        cols: list[Col] = []
        for key in (c for c in columns if any(r.get(c) is not None for r in records)):
            values = [r.get(key) for r in records]
            texts = ["" if v is None else str(v) for v in values]
            kind = PATH if key in ("query", "path") else PROSE if key == "error" else NAME
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values if v is not None):
                kind = NUMBER
            if kind == PATH and (base := common_folder([t for t in texts if t])) is not None:
                texts = [t and os.path.relpath(os.path.abspath(t), base) for t in texts]
                notes.append(f"{key} in {display_path(base)}")
            same = kind != PATH and len(records) > 1 and len(set(texts)) == 1
            cols.append(Col(key, [Text(t) for t in texts], kind, justify="right" if kind == NUMBER else "left",
                            give_way=len(cols) + 1 if same else 0, later=key == "query"))  # fmt: skip
        return FitTable("; ".join([title, *notes]), cols)

    return render
