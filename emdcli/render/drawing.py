"""Pixel work of the explain picture: fonts, wrapped captions, and the routing of flow lines so
that every drawn flow stays visible (fans across shared cells, arcs around earlier lines, label
boxes that do not overlap). Used by :mod:`emdcli.render.explain`; nothing here matches images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DrawnFlow:
    """One drawn entry of the transport plan.

    query_node: index into the query's n nodes; target_node: index into the target's m nodes.
    mass: the entry as a fraction of the plan's total mass (0..1).
    """

    query_node: int
    target_node: int
    mass: float


#: Font size (px) of the caption text.
CAPTION_FONT_SIZE = 14
#: The caption never grows past this many text lines; the last one is cut with '...' if needed.
MAX_CAPTION_LINES = 8


def cell_centre(node: int, grid: tuple[int, int], panel: int, x0: int) -> tuple[float, float]:
    h, w = grid
    row, col = divmod(node, w)
    return x0 + (col + 0.5) * panel / w, (row + 0.5) * panel / h


def load_font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def caption_font() -> Any:
    """The font the caption is drawn in (Pillow's default font at CAPTION_FONT_SIZE px)."""
    return load_font(CAPTION_FONT_SIZE)


def cut_text(text: str, draw: Any, font: Any, width: float) -> str:
    """``text``, cut and ended with '...' if it is wider than ``width`` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "..." if text else ""


def wrap_text(paragraphs: list[str], draw: Any, font: Any, width: float) -> list[str]:
    """The paragraphs broken into text lines no wider than ``width`` px (at spaces; a word
    wider than a whole line is broken anywhere), each paragraph on new lines, at most
    MAX_CAPTION_LINES lines (the last cut with '...' when there is more)."""
    out: list[str] = []
    for paragraph in paragraphs:
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}" if line else word
            if draw.textlength(trial, font=font) <= width:
                line = trial
                continue
            if line:
                out.append(line)
            while draw.textlength(word, font=font) > width and len(word) > 1:  # a word wider than a line
                cut = len(word) - 1
                while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                    cut -= 1
                out.append(word[:cut])
                word = word[cut:]
            line = word
        if line:
            out.append(line)
    if len(out) > MAX_CAPTION_LINES:
        out = out[: MAX_CAPTION_LINES - 1] + [cut_text(out[MAX_CAPTION_LINES - 1] + " ...", draw, font, width)]
    return out


def fan_points(
    flows: tuple[DrawnFlow, ...], side: int, attr: str, other: str, grids: tuple[Any, Any], x0s: Any
) -> list[Any]:
    """Where each flow meets its cell on one side: the cell centre when it is the cell's only
    drawn flow, else one of evenly spaced points on a vertical fan across the middle 60% of
    the cell, ordered by the height of each flow's other end (so lines sharing a cell spread
    out without crossing there)."""
    grid, other_grid = grids
    x0, other_x0 = x0s
    cell_h = side / grid[0]
    ends: list[Any] = [None] * len(flows)
    by_node: dict[int, list[int]] = {}
    for i, f in enumerate(flows):
        by_node.setdefault(getattr(f, attr), []).append(i)
    for node, members in by_node.items():
        cx, cy = cell_centre(node, grid, side, x0)
        members.sort(key=lambda i: cell_centre(getattr(flows[i], other), other_grid, side, other_x0)[::-1])
        k = len(members)
        span = 0.6 * cell_h
        for j, i in enumerate(members):
            ends[i] = (cx, cy if k == 1 else cy - span / 2 + span * j / (k - 1))
    return ends


def curve(a: tuple[float, float], b: tuple[float, float], bend: float, n: int) -> np.ndarray:
    """(n, 2) points of the quadratic Bezier from ``a`` to ``b`` whose middle lies ``bend`` px
    to the left of the chord (0: the straight line)."""
    pa, pb = np.asarray(a), np.asarray(b)
    chord = pb - pa
    length = float(np.hypot(*chord)) or 1.0
    normal = np.array([chord[1], -chord[0]]) / length
    control = (pa + pb) / 2 + 2.0 * bend * normal
    t = np.linspace(0.0, 1.0, n)[:, None]
    out: np.ndarray = (1 - t) ** 2 * pa + 2 * (1 - t) * t * control + t**2 * pb
    return out


class Occupancy:
    """Which canvas regions earlier lines (and all line ends) take up, on a grid of ``cell``-px
    squares, each line's squares widened by ``reach`` px: a fast way to ask whether a new
    path would run along an earlier one or over another line's end."""

    def __init__(self, bounds: tuple[int, int], reach: float, dots: np.ndarray, lines: int) -> None:
        self.cell = 3.0
        self.shape = (int(bounds[1] / self.cell) + 1, int(bounds[0] / self.cell) + 1)
        r = math.ceil(reach / self.cell)
        self.offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r]
        self.reach = reach
        self.lines = np.zeros((max(lines, 1), *self.shape), dtype=bool)
        self.count = 0
        self.dots = self._mask(dots)

    def _cells(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gy = np.clip((points[:, 1] / self.cell).astype(int), 0, self.shape[0] - 1)
        gx = np.clip((points[:, 0] / self.cell).astype(int), 0, self.shape[1] - 1)
        return gy, gx

    def _mask(self, points: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.shape, dtype=bool)
        gy, gx = self._cells(points.reshape(-1, 2))
        for dy, dx in self.offsets:
            mask[np.clip(gy + dy, 0, self.shape[0] - 1), np.clip(gx + dx, 0, self.shape[1] - 1)] = True
        return mask

    def cost(self, path: np.ndarray) -> float:
        """The largest fraction of ``path``'s inner points (away from its ends) lying on one
        earlier line (near 0 for lines that only cross, near 1 for one drawn along another),
        plus 1 when its middle (away from its own ends) passes over a line end."""
        inner = path[len(path) // 10 : len(path) - len(path) // 10]
        gy, gx = self._cells(inner)
        along = float(self.lines[: self.count, gy, gx].mean(axis=1).max()) if self.count and len(inner) else 0.0
        own = np.minimum(np.hypot(*(path - path[0]).T), np.hypot(*(path - path[-1]).T))
        my, mx = self._cells(path[own > 2 * self.reach + self.cell])
        return along + (1.0 if self.dots[my, mx].any() else 0.0)

    def add(self, path: np.ndarray) -> None:
        self.lines[self.count] = self._mask(path)
        self.count += 1


def route_lines(ends: list[tuple[Any, Any]], widest: int, bounds: tuple[int, int]) -> list[np.ndarray]:
    """A path for each (start, end), in order: straight when it neither runs along an earlier
    path nor passes over another line's end, else the first of arcs bent further and further
    either way that does neither and stays inside ``bounds`` (w, h) (or the one that comes closest)."""
    dots = np.asarray([p for pair in ends for p in pair], dtype=np.float64).reshape(-1, 2)
    room = Occupancy(bounds, widest / 2 + 3.0, dots, len(ends))
    placed: list[np.ndarray] = []
    limit = np.asarray(bounds) - widest
    for a, b in ends:
        length = math.dist(a, b)
        samples = max(16, int(length / 2))
        step = max(6.0, 0.07 * length)
        best, best_cost = curve(a, b, 0.0, samples), 9.0
        for k in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5):
            path = curve(a, b, k * step, samples)
            inside = k == 0 or bool((path >= widest).all() and (path < limit).all())
            cost = room.cost(path) + (0.0 if inside else 2.0)
            if cost < best_cost:
                best, best_cost = path, cost
            if cost < 0.15:
                break
        room.add(best)
        placed.append(best)
    return placed


def stroke_points(points: tuple[tuple[float, float], ...]) -> list[tuple[float, float]]:
    """``points`` thinned for drawing: the two ends of a straight line, else a point every 6 px
    or so (Pillow leaves specks between many short collinear wide segments)."""
    path = np.asarray(points)
    a, b = path[0], path[-1]
    chord = b - a
    length = float(np.hypot(*chord)) or 1.0
    off = np.abs(chord[0] * (path[:, 1] - a[1]) - chord[1] * (path[:, 0] - a[0])) / length
    if float(off.max()) < 0.5:
        return [points[0], points[-1]]
    every = max(1, len(points) // max(2, int(length / 6)))
    return list(points[::every]) + ([points[-1]] if (len(points) - 1) % every else [])


def boxes_meet(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_box(path: np.ndarray, size: tuple[int, int], taken: list[Any], bounds: tuple[int, int]) -> Any:
    """Where to put a rank number of ``size`` (w, h) on ``path``: the point nearest its middle
    whose box overlaps no box in ``taken`` and lies inside ``bounds`` (w, h), else the one
    overlapping the fewest."""
    n = len(path)
    best, fewest = None, None
    for t in (0.5, 0.42, 0.58, 0.34, 0.66, 0.26, 0.74, 0.18, 0.82, 0.12, 0.88):
        x, y = path[min(n - 1, round(t * (n - 1)))]
        left = int(min(max(round(x - size[0] / 2), 0), bounds[0] - size[0]))
        top = int(min(max(round(y - size[1] / 2), 0), bounds[1] - size[1]))
        box = (left, top, left + size[0], top + size[1])
        hits = sum(boxes_meet(box, other) for other in taken)
        if fewest is None or hits < fewest:
            best, fewest = box, hits
        if hits == 0:
            break
    return best
