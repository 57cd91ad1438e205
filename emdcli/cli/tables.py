"""Tables for people, drawn by Rich: cells fold at path separators and word breaks instead of being cut, and
optional columns give way first when the terminal is narrow (the result sink's table format). A class name
(:data:`CLASS` cells) stays whole while paths and other cells fold; only where nothing else is left does it
fold at its separators."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rich import box as boxes
from rich.cells import cell_len, chop_cells
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ..io.files import display_path
from ..io.records import Record

PATH, NAME, NUMBER, PROSE, CLASS = "path", "name", "number", "prose", "class"
_SEP = "/" + (os.sep if os.sep != "/" else "")
#: Where each kind of cell breaks, the first that makes it fit; a word is cut only when nothing else fits.
BREAKS = {PATH: (_SEP, " _-"), NAME: (" ", "_-"), PROSE: (" ", _SEP, "_-"), NUMBER: (), CLASS: (" ", "_-")}
_ANY_WIDTH = 10**6


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


def _pieces(text: str, breaks: str) -> list[str]:
    """``text`` cut after each run of the characters of ``breaks``."""
    chars = re.escape(breaks)
    return (re.findall(f"[^{chars}]*[{chars}]+|[^{chars}]+", text) if breaks else []) or [text]


def _fold(text: str, width: int, breaks: Sequence[str]) -> list[str]:
    """Lines at most ``width`` wide, broken after ``breaks[0]``, a piece still too wide after ``breaks[1]``..."""
    if cell_len(text.rstrip()) <= width or width < 1:
        return [text]
    if not breaks:
        return chop_cells(text, width)
    lines: list[str] = []
    for piece in _pieces(text, breaks[0]):
        if lines and cell_len((lines[-1] + piece).rstrip()) <= width:
            lines[-1] += piece
        else:  # on a line of its own, its last part going on with what follows
            lines += _fold(piece, width, breaks[1:])
    return lines


@dataclass(frozen=True)
class Folded:
    """Text wrapped at ``breaks`` (Rich wraps at spaces only). Its narrowest, for Rich's Table, is its longest
    unbreakable piece; ``widens=False`` keeps it from widening a column."""

    text: Text
    breaks: Sequence[str]
    widens: bool = True
    #: Its narrowest is its longest piece between ``breaks[0]`` (a class name: whole between spaces).
    whole: bool = False

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        breaks = self.breaks[0] if self.whole else "".join(self.breaks)
        least = max(cell_len(p.rstrip()) for p in _pieces(self.text.plain, breaks))
        return Measurement(least, cell_len(self.text.plain) if self.widens else least).with_maximum(options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = _fold(self.text.plain, options.max_width, self.breaks)
        parts = self.text.divide(itertools.accumulate(len(line) for line in lines[:-1]))
        for part in parts:
            part.rstrip()
        yield Text("\n", no_wrap=True, overflow="crop").join(parts)


class Prose(Text):
    """A cell's text that wraps as prose in whatever width its column gets, never widening it."""


@dataclass(frozen=True)
class Col:
    """A column of a :class:`FitTable`, its cells breaking as ``kind`` allows. give_way 1, 2...: the order in
    which it gives way when the table is too wide, showing ``shorter`` cells or, without those, left out.
    later: it is narrowed to its narrowest before the others are."""

    header: str
    cells: list[Text]
    kind: str = NAME
    justify: JustifyMethod = "left"
    style: str = ""
    give_way: int = 0
    shorter: list[Text] | None = None
    later: bool = False

    def renderables(self) -> list[Folded]:
        return [Folded(c, BREAKS[PROSE], False) if isinstance(c, Prose) else
                Folded(c, BREAKS[self.kind], whole=self.kind == CLASS) for c in self.cells]  # fmt: skip

    def folded_least(self) -> int:
        """The narrowest its cells get when they fold at every break (a class name too)."""
        pieces = (p for c in self.cells for p in _pieces(c.plain, "".join(BREAKS[self.kind])))
        return max((cell_len(p.rstrip()) for p in pieces), default=1)


def _narrowed(widths: list[int], floors: Sequence[list[int]], room: int) -> list[int]:
    """``widths`` narrowed toward each of ``floors`` in turn until they fit ``room``, each column by its
    share of what all can spare. (Rich narrows the widest columns, however narrow they may get.)"""
    for floor in floors:
        spare = [w - f for w, f in zip(widths, floor, strict=True)]
        if (cut := min(sum(widths) - room, sum(spare))) > 0:
            done = [0, *(cut * s // sum(spare) for s in itertools.accumulate(spare))]
            widths = [w - (b - a) for w, a, b in zip(widths, done, done[1:], strict=False)]
    return widths


class FitTable:
    """A Rich table with its title above and, below, which columns gave way to fit the width."""

    def __init__(
        self, title: str, columns: Sequence[Col], *, box: boxes.Box = boxes.SIMPLE_HEAVY, pad_edge: bool = True
    ):
        self.title, self.columns, self.box, self.pad_edge = title, list(columns), box, pad_edge

    def _stages(self) -> list[tuple[list[Col], list[str]]]:
        """The columns shown at each stage of giving way, and the headers of those left out."""
        stages = []
        for level in [0, *sorted({c.give_way for c in self.columns if c.give_way})]:
            shown, left_out = [], []
            for c in self.columns:
                if 0 < c.give_way <= level:
                    if c.shorter is None:
                        left_out.append(c.header)
                        continue
                    c = replace(c, cells=c.shorter)
                shown.append(c)
            stages.append((shown, left_out))
        return stages

    def _table(self, columns: Sequence[Col], widths: Sequence[int | None] | None = None) -> Table:
        table = Table(box=self.box, pad_edge=self.pad_edge)
        for c, width in zip(columns, widths or [None] * len(columns), strict=True):
            table.add_column(Text(c.header), justify=c.justify, style=c.style, width=width, overflow="fold")
        for row in zip(*(c.renderables() for c in columns), strict=True):
            table.add_row(*row)
        return table

    def _layout(self, console: Console, options: ConsoleOptions) -> tuple[Table, list[str]]:
        """The table for ``options.max_width`` and the headers of the columns left out: the first stage
        of giving way that fits whole, else the last with its columns narrowed: headers wrap first, then
        ``later`` columns, then all; then words are cut, numbers only when nothing else is left."""
        any_width = options.update_width(_ANY_WIDTH)
        for shown, left_out in self._stages():
            table = self._table(shown)
            excess = Measurement.get(console, any_width, table).maximum - options.max_width
            if excess <= 0:
                return table, left_out
        heads = [Measurement.get(console, any_width, Text(c.header)) for c in shown]
        cells = [[Measurement.get(console, any_width, r) for r in c.renderables()] for c in shown]
        least = [max([h.minimum, *(m.minimum for m in ms)]) for h, ms in zip(heads, cells, strict=True)]
        body = [max([n, *(m.maximum for m in ms)]) for n, ms in zip(least, cells, strict=True)]
        widths = [max(b, h.maximum) for b, h in zip(body, heads, strict=True)]
        room = sum(widths) - excess
        later = [n if c.later else b for n, b, c in zip(least, body, shown, strict=True)]
        # then prose and names narrow, class names whole and paths folded at their separators; then class
        # names fold at theirs; then words are cut, numbers only when nothing else is left
        whole_classes = [n if c.kind in (NUMBER, CLASS, PATH) else 1 for n, c in zip(least, shown, strict=True)]
        folded = [n if c.kind in (NUMBER, PATH) else c.folded_least() if c.kind == CLASS else 1
                  for n, c in zip(least, shown, strict=True)]  # fmt: skip
        cut = [n if c.kind == NUMBER else 1 for n, c in zip(least, shown, strict=True)]
        widths = _narrowed(widths, (body, later, least, whole_classes, folded, cut), room)
        return (self._table(shown, widths) if sum(widths) <= room else table), left_out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table, left_out = self._layout(console, options)
        yield Folded(Text(self.title, style="table.title"), BREAKS[PROSE])
        yield table
        if left_out:
            note = f"left out at this width: {', '.join(left_out)} (--format csv has every column)"
            yield Folded(Text(note, style="dim"), BREAKS[PROSE])

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        stages, any_width = self._stages(), options.update_width(_ANY_WIDTH)
        widest = Measurement.get(console, any_width, self._table(stages[0][0])).maximum
        narrowest = Measurement.get(console, any_width, self._table(stages[-1][0])).minimum
        return Measurement(narrowest, max(widest, cell_len(self.title))).with_maximum(options.max_width)


def simple_table(title: str, columns: Sequence[str]) -> Callable[[list[Record]], RenderableType]:
    """A :class:`FitTable` of these record keys (empty columns left out): ``query`` and ``path`` are paths
    relative to their common folder (named in the title), the paths found narrowed after the queries;
    ``error`` is prose; a column other than a path with one value in every row gives way."""

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
