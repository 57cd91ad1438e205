"""A picture of one DeepEMD match: where the weight lies and where the mass flows.

:func:`render_match` draws the query and the target side by side, as the backbone
saw them (upscaled by a whole factor to at least :data:`MIN_PANEL` px by default), with
their low-weight regions dimmed (bright = heavy cross-reference node weight), the
strongest flows of the optimal plan drawn as numbered, coloured lines from query cell
to target cell, and a caption strip below that says what the score is and what the
lines mean::

    +-----------+ gap +-----------+
    |  query    |     |  target   |   panel x panel px each
    |  dimmed   |--1--|  dimmed   |   lines: query cell -> target cell, rank number on each
    +-----------+     +-----------+
    | EMD score 0.734 between ...   |   caption: wrapped to the width, as many text lines
    | Lines: the 12 strongest ...   |   as it needs (at most MAX_CAPTION_LINES)
    +-------------------------------+

Node i of a (C, H, W) feature map is the cell (row i // W, col i % W) of an H x W grid
laid over the panel. Several drawn flows that share a cell start (or end) at distinct
points of a short fan across that cell, and a line that would run along an earlier one
is bent into an arc, so every drawn flow stays visible. Pure library code: nothing is
printed and nothing is written except by :func:`save_picture` / :func:`save_png`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io.files import atomic_write
from ..matching.nodes import Metric, Nodes, Weighting, match
from .drawing import (
    CAPTION_FONT_SIZE,
    DrawnFlow,
    caption_font,
    fan_points,
    label_box,
    load_font,
    route_lines,
    stroke_points,
    wrap_text,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: White space in pixels between the query panel and the target panel.
GAP = 8
#: The default panel is the images' side times the smallest whole factor reaching this (224 px -> 448 px, 2x).
MIN_PANEL = 320
#: Blank pixels around the caption text and between its lines.
CAPTION_MARGIN = 6
CAPTION_LINE_SPACING = 3
#: The legend (what the lines and the shading mean) is left out of narrower pictures (small --panel).
LEGEND_MIN_WIDTH = 400
#: Font size (px) of the rank numbers on the lines.
LABEL_FONT_SIZE = 12
#: Canvas and caption-strip colour.
BACKGROUND = (255, 255, 255)
#: Caption text colour.
TEXT_COLOUR = (30, 30, 30)
#: How much a region of zero weight would be darkened (0..1); the heaviest node's is left as it is.
DIM = 0.5
#: Line colours, by rank (1 = the first colour), repeating after ten; each line has a white halo.
PALETTE = (
    (230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180),
    (0, 150, 150), (240, 50, 230), (128, 128, 0), (170, 110, 40), (0, 0, 128),
)  # fmt: skip
HALO = (255, 255, 255)
#: Picture formats by file suffix (lower case). JPEG has no alpha: the picture is RGB anyway.
PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


@dataclass(frozen=True)
class DrawnLine:
    """Where one flow was drawn, in canvas pixels.

    rank: 1 for the strongest flow. start: the line's end in the query panel; end: in the
    target panel. points: points every 2 px or so along the line (straight, or an arc where a
    straight line would have run along an earlier line or over another line's end).
    label_box: (left, top, right, bottom) of the rank number. colour: the line's RGB colour. width: its width in px.
    """

    flow: DrawnFlow
    rank: int
    start: tuple[float, float]
    end: tuple[float, float]
    points: tuple[tuple[float, float], ...]
    label_box: tuple[int, int, int, int]
    colour: tuple[int, int, int]
    width: int


@dataclass(frozen=True)
class Explanation:
    """A rendered match.

    image: the RGB picture: width 2 * panel + GAP, height panel + the caption strip.
    score: the EMD score in [-1, 1] between these two images, higher is closer.
    flows: the flows drawn as lines, strongest first.
    query_weights: (n,) and target_weights: (m,) float64 cross-reference node weights (each sums to 1).
    panel: side in px of each of the two image panels.
    lines: where each flow of ``flows`` was drawn, in the same order.
    caption: the caption's text lines as drawn, top to bottom.
    """

    image: PILImage
    score: float
    flows: tuple[DrawnFlow, ...]
    query_weights: np.ndarray
    target_weights: np.ndarray
    panel: int
    lines: tuple[DrawnLine, ...] = ()
    caption: tuple[str, ...] = ()


def strongest_flows(flow: np.ndarray, count: int) -> tuple[DrawnFlow, ...]:
    """The ``count`` largest entries of an (n, m) plan, strongest first.

    Ties are broken by flat (row-major) index, smaller first. Entries that are not
    positive are never returned, so fewer than ``count`` may come back.
    """
    plan = np.asarray(flow, dtype=np.float64)
    if plan.ndim != 2:
        raise ValueError(f"expected an (n, m) plan, got shape {plan.shape}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    flat = plan.ravel()
    total = float(flat[flat > 0].sum())
    if count == 0 or total <= 0.0:
        return ()
    order = np.argsort(-flat, kind="stable")[:count]  # stable: equal masses keep index order
    m = plan.shape[1]
    return tuple(
        DrawnFlow(query_node=int(k // m), target_node=int(k % m), mass=float(flat[k] / total))
        for k in order
        if flat[k] > 0
    )


def default_panel(side: int) -> int:
    """The panel drawn for images of ``side`` px: ``side`` times the smallest whole factor
    that reaches :data:`MIN_PANEL` (224 -> 448, 32 -> 320; 320 and more stay as they are)."""
    return side * max(1, math.ceil(MIN_PANEL / max(side, 1)))


def _grid(fmap: np.ndarray, name: str) -> tuple[int, int]:
    if fmap.ndim != 3 or 0 in fmap.shape:
        raise ValueError(f"{name} feature map must have shape (C, H, W), got {fmap.shape}")
    return int(fmap.shape[1]), int(fmap.shape[2])


def _shade(img: PILImage, weights: np.ndarray, grid: tuple[int, int]) -> PILImage:
    """``img`` (RGB, panel x panel) with its low-weight regions darkened.

    The (H*W,) node weights are scaled by their maximum and upsampled bilinearly; a pixel
    at relative weight ``r`` keeps ``1 - DIM * (1 - r) ** 2`` of its brightness: the heaviest
    node's region is untouched, half-weight regions lose an eighth, and no colour is laid
    over the picture (its hues stay as they are).
    """
    from PIL import Image

    h, w = grid
    top = float(weights.max())
    rel = (weights / top if top > 0 else np.ones_like(weights)).reshape(h, w).astype(np.float32)
    smooth = Image.fromarray(rel).resize(img.size, Image.Resampling.BILINEAR)
    level = np.clip(np.asarray(smooth, dtype=np.float32), 0.0, 1.0)[..., None]  # (S, S, 1)
    out = np.asarray(img, dtype=np.float32) * (1.0 - DIM * (1.0 - level) ** 2)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _describe(
    score: float,
    class_score: float | None,
    caption: str | None,
    asked: int,
    flows: tuple[DrawnFlow, ...],
    side: int,
    shown: int,
    legend: bool,
) -> list[str]:
    """The caption's paragraphs: what the score is, the caller's text and, with ``legend``,
    what the lines and the shading mean."""
    if class_score is None:
        first = f"EMD score {score:.3f} between the query (left) and this image (right)."
    else:
        first = (
            f"EMD score {score:.3f} between the query (left) and this one example (right); "
            f"classify's class score {class_score:.3f} matches the query against the class's fitted node set."
        )
    paragraphs = [first] + ([caption] if caption else [])
    if not legend:
        return paragraphs
    if asked:
        n, pct = len(flows), 100.0 * sum(f.mass for f in flows)
        what = f"the {n} strongest flows" if n == asked else f"all {n} flows ({asked} asked for)"
        paragraphs.append(
            f"Lines: {what} of the optimal plan, {n} distinct cell pairs carrying {pct:.0f}% of the mass; "
            "numbered 1 = strongest, wider = more mass."
            if n
            else "Lines: the plan has no flow to draw."
        )
    shading = "Bright = heavy node weight, dimmed = light."
    if side != shown:
        factor = side / shown
        how = f"upscaled {factor:g}x" if factor == int(factor) else "resized"
        shading += f" Images {how} from {shown} to {side} px."
    paragraphs.append(shading)
    return paragraphs


def render_match(
    query_img: PILImage,
    target_img: PILImage,
    query_fmap: np.ndarray,
    target_fmap: np.ndarray,
    *,
    lines: int = 12,
    caption: str | None = None,
    panel: int | None = None,
    metric: Metric = "cosine",
    weighting: Weighting = "cross",
    class_score: float | None = None,
) -> Explanation:
    """Match two images' feature maps and draw the match.

    query_img, target_img: the images as the model saw them (:func:`emdcli.images.model_view`).
    query_fmap: (C, H, W) and target_fmap: (C, H', W') feature maps of those images.
    lines: how many of the strongest flows to draw (0 for none).
    caption: extra text (file names, predicted class, ...) after the score's sentence; wrapped.
    panel: side in px of each image panel; default :func:`default_panel` of the larger side
    of the two images (224 px images are drawn 2x, at 448 px).
    metric, weighting: as for :func:`emdcli.matching.match`.
    class_score: when the target is the closest example of a class, classify's score for
    that class; the caption then says how the two numbers differ.

    The caption says what the score is and (in pictures at least LEGEND_MIN_WIDTH px wide,
    as every default-size one is) what the lines and the shading mean; it is wrapped to the
    picture's width, and the strip is as tall as the text needs. Each line has its own
    colour and its rank number; width grows with a flow's mass relative to the strongest.
    Raises ValueError for malformed input.
    """
    from PIL import Image, ImageDraw

    q_fmap = np.asarray(query_fmap, dtype=np.float32)
    t_fmap = np.asarray(target_fmap, dtype=np.float32)
    q_grid, t_grid = _grid(q_fmap, "query"), _grid(t_fmap, "target")
    if q_fmap.shape[0] != t_fmap.shape[0]:
        raise ValueError(f"channel counts differ: query {q_fmap.shape[0]}, target {t_fmap.shape[0]}")
    if lines < 0:
        raise ValueError(f"lines must be >= 0, got {lines}")
    shown = max(*query_img.size, *target_img.size)
    side = default_panel(shown) if panel is None else panel
    if side < 1:
        raise ValueError(f"panel must be at least 1 px, got {side}")

    result = match(Nodes.from_feature_map(q_fmap), Nodes.from_feature_map(t_fmap), metric, weighting)
    flows = strongest_flows(result.flow, lines)

    def prepared(img: PILImage) -> PILImage:
        rgb = img.convert("RGB")
        return rgb if rgb.size == (side, side) else rgb.resize((side, side), Image.Resampling.BICUBIC)

    width, x_target = 2 * side + GAP, side + GAP
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = caption_font()
    legend = width >= LEGEND_MIN_WIDTH
    paragraphs = _describe(float(result.score), class_score, caption, lines, flows, side, shown, legend)
    text_lines = wrap_text(paragraphs, measure, font, width - 2 * CAPTION_MARGIN)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (CAPTION_FONT_SIZE, 0)
    line_height = ascent + descent + CAPTION_LINE_SPACING
    strip = 2 * CAPTION_MARGIN + line_height * len(text_lines) - CAPTION_LINE_SPACING

    canvas = Image.new("RGB", (width, side + strip), BACKGROUND)
    canvas.paste(_shade(prepared(query_img), result.weights_a, q_grid), (0, 0))
    canvas.paste(_shade(prepared(target_img), result.weights_b, t_grid), (x_target, 0))

    drawn: list[DrawnLine] = []
    if flows:
        strongest = flows[0].mass
        widest = max(2, side // 70)
        widths = [max(1, round(1 + (widest - 1) * f.mass / strongest)) for f in flows]
        starts = fan_points(flows, side, "query_node", "target_node", (q_grid, t_grid), (0, x_target))
        ends = fan_points(flows, side, "target_node", "query_node", (t_grid, q_grid), (x_target, 0))
        paths = route_lines(list(zip(starts, ends, strict=True)), widest, (width, side))
        label_font = load_font(LABEL_FONT_SIZE)
        taken: list[Any] = []
        for rank, (f, a, b, path, w) in enumerate(zip(flows, starts, ends, paths, widths, strict=True), start=1):
            left, top, right, bottom = measure.textbbox((0, 0), str(rank), font=label_font)
            box = label_box(path, (math.ceil(right - left) + 5, math.ceil(bottom - top) + 4), taken, (width, side))
            taken.append(box)
            colour = PALETTE[(rank - 1) % len(PALETTE)]
            points = tuple((float(x), float(y)) for x, y in path)
            drawn.append(
                DrawnLine(f, rank, (float(a[0]), float(a[1])), (float(b[0]), float(b[1])), points, box, colour, w)
            )

        draw = ImageDraw.Draw(canvas)
        for line in reversed(drawn):  # weakest first, so the strongest lie on top
            stroke = stroke_points(line.points)
            draw.line(stroke, fill=HALO, width=line.width + 2, joint="curve")
            draw.line(stroke, fill=line.colour, width=line.width, joint="curve")
        for line in reversed(drawn):
            r = line.width / 2 + 1.5
            for x, y in (line.start, line.end):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=line.colour, outline=HALO)
        for line in reversed(drawn):
            draw.rectangle(line.label_box, fill=line.colour, outline=HALO)
            left, top = measure.textbbox((0, 0), str(line.rank), font=label_font)[:2]
            draw.text(
                (line.label_box[0] + 3 - left, line.label_box[1] + 2 - top), str(line.rank), fill=HALO, font=label_font
            )

    text_draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(text_lines):
        text_draw.text((CAPTION_MARGIN, side + CAPTION_MARGIN + i * line_height), text, fill=TEXT_COLOUR, font=font)

    return Explanation(
        image=canvas,
        score=float(result.score),
        flows=flows,
        query_weights=result.weights_a,
        target_weights=result.weights_b,
        panel=side,
        lines=tuple(drawn),
        caption=tuple(text_lines),
    )


def supported_suffixes() -> tuple[str, ...]:
    """The file suffixes :func:`save_picture` can write with this Pillow (.webp needs its WebP support)."""
    from PIL import features

    webp = features.check("webp")
    return tuple(s for s, f in PICTURE_FORMATS.items() if f != "WEBP" or webp)


def picture_format(path: str | os.PathLike[str]) -> str:
    """Pillow's format name for ``path``'s suffix (any case): PNG, JPEG or WEBP.

    Raises ValueError naming the supported suffixes for any other suffix (or none)."""
    suffix = Path(path).suffix.lower()
    supported = supported_suffixes()
    if suffix not in supported:
        got = f"'{Path(path).suffix}'" if suffix else "no suffix"
        raise ValueError(f"cannot write a picture with {got}: use one of {', '.join(supported)}")
    return PICTURE_FORMATS[suffix]


def save_picture(explanation: Explanation, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """Write ``explanation.image`` to ``path``, atomically, in ``fmt`` (PNG, JPEG or WEBP;
    default the one ``path``'s suffix names, see :func:`picture_format`); returns the path.

    JPEG is written at quality 92 without chroma subsampling (crisp lines and text).
    A failure leaves ``path`` as it was and no temporary file behind. Raises OSError
    (folder missing, disk full, ...) or ValueError (unknown suffix, or from Pillow).
    """
    fmt = picture_format(path) if fmt is None else fmt.upper()
    options: dict[str, Any] = {"JPEG": {"quality": 92, "subsampling": 0}, "WEBP": {"quality": 92}}.get(fmt, {})
    with atomic_write(path, binary=True) as fh:
        explanation.image.convert("RGB").save(fh, format=fmt, **options)
    return Path(path)


def save_png(explanation: Explanation, path: str | os.PathLike[str]) -> Path:
    """Write ``explanation.image`` to ``path`` as PNG whatever its suffix, atomically; returns the path.

    A failure leaves ``path`` as it was and no temporary file behind. Raises OSError
    (folder missing, disk full, ...) or Pillow's ValueError.
    """
    return save_picture(explanation, path, "PNG")
