"""A picture of one DeepEMD match: where the weight lies and where the mass flows.

:func:`render_match` draws the query and the target side by side, as the backbone
saw them, each tinted by its cross-reference node weights (the heat map), with the
strongest flows of the optimal plan drawn as lines from query node to target node,
and the EMD score in a caption strip below::

    +-----------+ gap +-----------+
    |  query    |     |  target   |   panel x panel px each
    |  + heat   |-----|  + heat   |   lines: centre of query cell -> centre of target cell
    +-----------+     +-----------+
    | EMD score 0.734  caption ...  |   CAPTION_HEIGHT px
    +-------------------------------+

Node i of a (C, H, W) feature map is the cell (row i // W, col i % W) of an H x W grid
laid over the panel. Pure library code: nothing is printed and nothing is written
except by :func:`save_png`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io.files import atomic_write
from ..matching.nodes import Metric, Nodes, Weighting, match

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: White space in pixels between the query panel and the target panel.
GAP = 8
#: Height in pixels of the caption strip under the panels.
CAPTION_HEIGHT = 24
#: Font size (px) of the caption text.
CAPTION_FONT_SIZE = 13
#: Canvas and caption-strip colour.
BACKGROUND = (255, 255, 255)
#: Caption text colour.
TEXT_COLOUR = (30, 30, 30)
#: Opacity of the heat map at the node with the largest weight (0..1); lower weights scale linearly.
HEAT_ALPHA = 0.6
#: Flow lines: a bright core (visible on the red/yellow heat map) with a dark edge (visible on white).
LINE_CORE = (0, 210, 255)
LINE_EDGE = (10, 20, 80)
#: Opacity of the weakest and the strongest drawn line (interpolated by mass in between).
LINE_ALPHA = (0.45, 1.0)


@dataclass(frozen=True)
class DrawnFlow:
    """One drawn entry of the transport plan.

    query_node: index into the query's n nodes; target_node: index into the target's m nodes.
    mass: the entry as a fraction of the plan's total mass (0..1).
    """

    query_node: int
    target_node: int
    mass: float


@dataclass(frozen=True)
class Explanation:
    """A rendered match.

    image: the RGB picture (width 2 * panel + GAP, height panel + CAPTION_HEIGHT px).
    score: the EMD score in [-1, 1], higher is closer.
    flows: the flows drawn as lines, strongest first.
    query_weights: (n,) and target_weights: (m,) float64 cross-reference node weights (each sums to 1).
    panel: side in px of each of the two image panels.
    """

    image: PILImage
    score: float
    flows: tuple[DrawnFlow, ...]
    query_weights: np.ndarray
    target_weights: np.ndarray
    panel: int


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


def _grid(fmap: np.ndarray, name: str) -> tuple[int, int]:
    if fmap.ndim != 3 or 0 in fmap.shape:
        raise ValueError(f"{name} feature map must have shape (C, H, W), got {fmap.shape}")
    return int(fmap.shape[1]), int(fmap.shape[2])


def _heat(img: PILImage, weights: np.ndarray, grid: tuple[int, int]) -> PILImage:
    """``img`` (RGB, panel x panel) alpha-blended with its (H*W,) node weights as a heat map.

    The weights are scaled by their maximum (the top node gets HEAT_ALPHA, half the
    weight half the opacity), upsampled bilinearly, and coloured from red (low) to
    yellow (high).
    """
    from PIL import Image

    h, w = grid
    top = float(weights.max())
    rel = (weights / top if top > 0 else np.zeros_like(weights)).reshape(h, w).astype(np.float32)
    smooth = Image.fromarray(rel).resize(img.size, Image.Resampling.BILINEAR)
    level = np.clip(np.asarray(smooth, dtype=np.float32), 0.0, 1.0)[..., None]  # (S, S, 1)
    colour = np.concatenate([np.full_like(level, 255.0), 255.0 * level, np.zeros_like(level)], axis=2)
    alpha = HEAT_ALPHA * level
    base = np.asarray(img, dtype=np.float32)
    out = base * (1.0 - alpha) + colour * alpha
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _cell_centre(node: int, grid: tuple[int, int], panel: int, x0: int) -> tuple[float, float]:
    h, w = grid
    row, col = divmod(node, w)
    return x0 + (col + 0.5) * panel / w, (row + 0.5) * panel / h


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, draw: Any, font: Any, width: float) -> str:
    """``text``, cut and ended with '...' if it is wider than ``width`` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "..." if text else ""


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
) -> Explanation:
    """Match two images' feature maps and draw the match.

    query_img, target_img: the images as the model saw them (:func:`emdcli.images.model_view`).
    query_fmap: (C, H, W) and target_fmap: (C, H', W') feature maps of those images.
    lines: how many of the strongest flows to draw (0 for none).
    caption: extra text after the score (file names, predicted class, ...); cut to fit.
    panel: side in px of each image panel; default the larger side of the two images.
    metric, weighting: as for :func:`emdcli.matching.match`.

    Line width and opacity grow with a flow's mass relative to the strongest drawn flow;
    each line ends in a dot at both cell centres. Raises ValueError for malformed input.
    """
    from PIL import Image, ImageDraw

    q_fmap = np.asarray(query_fmap, dtype=np.float32)
    t_fmap = np.asarray(target_fmap, dtype=np.float32)
    q_grid, t_grid = _grid(q_fmap, "query"), _grid(t_fmap, "target")
    if q_fmap.shape[0] != t_fmap.shape[0]:
        raise ValueError(f"channel counts differ: query {q_fmap.shape[0]}, target {t_fmap.shape[0]}")
    if lines < 0:
        raise ValueError(f"lines must be >= 0, got {lines}")
    side = max(*query_img.size, *target_img.size) if panel is None else panel
    if side < 1:
        raise ValueError(f"panel must be at least 1 px, got {side}")

    result = match(Nodes.from_feature_map(q_fmap), Nodes.from_feature_map(t_fmap), metric, weighting)
    flows = strongest_flows(result.flow, lines)

    def prepared(img: PILImage) -> PILImage:
        rgb = img.convert("RGB")
        return rgb if rgb.size == (side, side) else rgb.resize((side, side), Image.Resampling.BICUBIC)

    x_target = side + GAP
    canvas = Image.new("RGB", (2 * side + GAP, side + CAPTION_HEIGHT), BACKGROUND)
    canvas.paste(_heat(prepared(query_img), result.weights_a, q_grid), (0, 0))
    canvas.paste(_heat(prepared(target_img), result.weights_b, t_grid), (x_target, 0))

    if flows:
        overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        strongest = flows[0].mass
        widest = max(2, side // 40)
        for f in reversed(flows):  # weakest first, so the strongest lie on top
            rel = f.mass / strongest
            core = max(1, round(1 + (widest - 1) * rel))
            alpha = round(255 * (LINE_ALPHA[0] + (LINE_ALPHA[1] - LINE_ALPHA[0]) * rel))
            a = _cell_centre(f.query_node, q_grid, side, 0)
            b = _cell_centre(f.target_node, t_grid, side, x_target)
            draw.line([a, b], fill=LINE_EDGE + (alpha,), width=core + 2)
            draw.line([a, b], fill=LINE_CORE + (alpha,), width=core)
            r = core / 2 + 2
            for x, y in (a, b):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=LINE_CORE + (alpha,), outline=LINE_EDGE + (alpha,))
        canvas = Image.alpha_composite(canvas.convert("RGBA"), overlay).convert("RGB")

    text_draw = ImageDraw.Draw(canvas)
    font = _font(CAPTION_FONT_SIZE)
    text = f"EMD score {result.score:.3f}" + (f"   {caption}" if caption else "")
    text = _fit(text, text_draw, font, canvas.width - 8)
    top, bottom = text_draw.textbbox((0, 0), text or "E", font=font)[1::2]
    text_draw.text((4, side + (CAPTION_HEIGHT - (bottom - top)) / 2 - top), text, fill=TEXT_COLOUR, font=font)

    return Explanation(
        image=canvas,
        score=float(result.score),
        flows=flows,
        query_weights=result.weights_a,
        target_weights=result.weights_b,
        panel=side,
    )


def save_png(explanation: Explanation, path: str | os.PathLike[str]) -> Path:
    """Write ``explanation.image`` to ``path`` as PNG, atomically; returns the path.

    A failure leaves ``path`` as it was and no temporary file behind. Raises OSError
    (folder missing, disk full, ...) or Pillow's ValueError.
    """
    with atomic_write(path, binary=True) as fh:
        explanation.image.save(fh, format="PNG")
    return Path(path)
