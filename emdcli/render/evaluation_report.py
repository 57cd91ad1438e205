"""``evaluate --report FILE``: one self-contained HTML page of an evaluation, for people to look through.

The page holds, in this order, a heading with the dataset, a line with the model and the episode
shape (way, shot, queries per class, episodes, seed), the accuracy table with the command's rows
(method, accuracy ± 95% CI, the paired difference to proto ± CI, time per episode), then one
confusion matrix picture per method: true class (rows) against predicted class (columns), the
counts over every episode's queries (:attr:`~emdcli.tasks.evaluate.Evaluation.confusion`), the
classes never drawn left out. Each cell is coloured by its share of the row (of the true class's
queries, so that a class drawn often does not outshine one drawn rarely), on a scale drawn beside
the matrix; the counts are written in the cells when they fit. Class names are on the axes for at
most :data:`MAX_NAMED` classes. Under each picture: the method's accuracy and its most confused
pairs (``true -> predicted: n``). An open-set run (``--open-set``) shows its measures as a table,
with no confusion matrix.

The pictures are PNGs drawn with Pillow and embedded as ``data:`` URIs: the page needs no network,
no script and no other file. Every name is escaped. Pure library code: :func:`render_evaluation_report`
returns the text, :func:`write_evaluation_report` writes it atomically; nothing is printed.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.records import Record
from .drawing import cut_text, load_font
from .report import escape, page, write_page

#: Class names are written on the axes of a matrix of at most this many classes.
MAX_NAMED = 40
#: The most confused pairs listed under each picture.
TOP_CONFUSED = 5
#: Side in pixels of one cell at most, and of the whole matrix at most (a cell is 1 px at least).
CELL_MAX, MATRIX_MAX = 36, 640
#: Widest class name on an axis, in pixels (longer ones are cut with '...').
NAME_MAX = 150
FONT_SIZE = 12
#: The colour scale (viridis, from 0 to 1 at even steps): dark for none of the row, yellow for all of it.
SCALE = np.array([(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142), (31, 158, 137),
                  (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37)], dtype=np.float64)  # fmt: skip

STYLE = """
.note { color: #555; font-size: 0.9em; max-width: 60em; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td.accuracy { font-weight: bold; color: #1b5e20; }
.figures { display: flex; flex-wrap: wrap; gap: 1em 2.5em; align-items: flex-start; }
figure.confusion { margin: 0 0 1.5em 0; max-width: 100%; }
img.confusion { display: block; border: 1px solid #ccc; max-width: 100%; height: auto; }
figcaption { margin-top: 0.5em; }
ol.confused { margin: 0.3em 0; }
"""

#: The open-set row's measures: label, key (its interval is key + "_ci95"), format.
OPEN_SET_MEASURES = (
    ("AUROC, in-set vs unseen", "auroc", ".4f"), ("in-set accuracy %", "accuracy", ".2f"),
    ("in-set accuracy with rejection %", "accuracy_rejecting", ".2f"),
    ("in-set queries rejected %", "in_set_rejected", ".2f"), ("unseen queries rejected %", "unseen_rejected", ".2f"),
    ("threshold", "threshold", ".4f"),
)  # fmt: skip


def drawn_classes(matrix: np.ndarray) -> np.ndarray:
    """The class ids with any count in ``matrix`` (K, K): those drawn in some episode, in id order."""
    m = np.asarray(matrix)
    return np.flatnonzero((m.sum(axis=0) + m.sum(axis=1)) > 0)


def most_confused(matrix: np.ndarray, names: Sequence[str], top: int = TOP_CONFUSED) -> list[tuple[str, str, int]]:
    """The ``top`` largest off-diagonal cells of ``matrix`` (K, K) as (true name, predicted name, count),
    largest first (ties in class order); cells of 0 left out."""
    m = np.array(matrix, dtype=np.int64)
    np.fill_diagonal(m, 0)
    t, p = np.nonzero(m)
    order = np.lexsort((p, t, -m[t, p]))[:top]
    return [(names[t[i]], names[p[i]], int(m[t[i], p[i]])) for i in order]


def scale_colours(share: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours of ``share`` values in [0, 1] on :data:`SCALE` (linear between its steps)."""
    x = np.clip(np.asarray(share, dtype=np.float64), 0.0, 1.0) * (len(SCALE) - 1)
    low = np.minimum(x.astype(np.int64), len(SCALE) - 2)
    frac = (x - low)[..., None]
    rgb = SCALE[low] * (1 - frac) + SCALE[low + 1] * frac
    out: np.ndarray = np.rint(rgb).astype(np.uint8)
    return out


def row_shares(matrix: np.ndarray) -> np.ndarray:
    """Each cell of ``matrix`` over its row's sum (0 in a row of none)."""
    m = np.asarray(matrix, dtype=np.float64)
    total = m.sum(axis=1, keepdims=True)
    out: np.ndarray = np.divide(m, total, out=np.zeros_like(m), where=total > 0)
    return out


def _vertical(text: str, font: Any, width: int, height: int, centred: bool = False) -> Any:
    """``text`` drawn black on white, turned to read upwards: an image ``height`` wide, ``width`` high,
    the text starting at its bottom (or ``centred``)."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), "white")
    at, anchor = ((width / 2, height / 2), "mm") if centred else ((0, height / 2), "lm")
    ImageDraw.Draw(strip).text(at, text, fill="black", font=font, anchor=anchor)
    return strip.rotate(90, expand=True)


def confusion_picture(matrix: np.ndarray, names: Sequence[str] | None) -> Any:
    """A Pillow RGB image of ``matrix`` (n, n) counts as a heat map (rows: true class, columns:
    predicted class), coloured by row share with its scale on the right; ``names`` (n) on the axes,
    or None for none."""
    from PIL import Image, ImageDraw

    m = np.asarray(matrix, dtype=np.int64)
    n = m.shape[0]
    cell = max(1, min(CELL_MAX, MATRIX_MAX // max(n, 1)))
    side = n * cell
    font = load_font(FONT_SIZE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = FONT_SIZE + 6
    labels = [cut_text(str(name), measure, font, NAME_MAX) for name in names] if names is not None else []
    band = int(max((measure.textlength(s, font=font) for s in labels), default=0)) + 8 if labels else 0
    left, top = 8 + line + band, 8 + line + band  # axis title, names, then the matrix
    bar_x = left + side + 16
    height = max(side, 120)
    canvas = Image.new("RGB", (bar_x + 14 + 48, top + height + 8), "white")
    draw = ImageDraw.Draw(canvas)

    heat = Image.fromarray(scale_colours(row_shares(m)), "RGB").resize((side, side), Image.Resampling.NEAREST)
    canvas.paste(heat, (left, top))
    if cell >= 8:  # thin lines between cells
        for k in range(1, n):
            draw.line([(left + k * cell, top), (left + k * cell, top + side - 1)], fill="white")
            draw.line([(left, top + k * cell), (left + side - 1, top + k * cell)], fill="white")
    if cell >= 22:  # the counts, when they fit
        shares = row_shares(m)
        for t in range(n):
            for p in range(n):
                text = str(int(m[t, p]))
                if measure.textlength(text, font=font) <= cell - 4:
                    colour = "black" if shares[t, p] > 0.6 else "white"
                    centre = (left + (p + 0.5) * cell, top + (t + 0.5) * cell)
                    draw.text(centre, text, fill=colour, font=font, anchor="mm")
    for k, label in enumerate(labels):
        y = top + (k + 0.5) * cell
        draw.text((left - 4, y), label, fill="black", font=font, anchor="rm")
        column = _vertical(label, font, band - 4, cell)
        canvas.paste(column, (left + k * cell, top - band))
    draw.text((left + side / 2, 8 + line / 2), "predicted class", fill="black", font=font, anchor="mm")
    canvas.paste(_vertical("true class", font, max(side, 80), line, centred=True), (8, top))
    # the colour scale: 100% at the top
    ramp = scale_colours(np.linspace(1.0, 0.0, height))[:, None, :].repeat(14, axis=1)
    canvas.paste(Image.fromarray(np.ascontiguousarray(ramp), "RGB"), (bar_x, top))
    draw.rectangle([bar_x - 1, top - 1, bar_x + 14, top + height], outline="#888")
    for share, anchor in ((1.0, "lt"), (0.5, "lm"), (0.0, "lb")):
        draw.text((bar_x + 18, top + (1 - share) * (height - 1)), f"{share:.0%}", fill="black", font=font,
                  anchor=anchor)  # fmt: skip
    return canvas


def png_uri(image: Any) -> str:
    """A Pillow image as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _ci(value: Any, ci: Any, fmt: str, sign: str = "") -> str:
    return "" if value is None else f"{value:{sign}{fmt}} ± {ci:{fmt}}"


def _shape(header: Mapping[str, Any]) -> str:
    parts = [f"model {header.get('model', '?')}", f"{header['way']}-way {header['shot']}-shot",
             f"{header['query']} queries per class"]  # fmt: skip
    if header.get("open_set"):
        parts.append(f"{header['open_set']} unseen classes (sensitivity {header.get('sensitivity')})")
    parts += [f"{header['episodes']} episodes", f"seed {header['seed']}"]
    return ", ".join(parts)


def _counts(header: Mapping[str, Any]) -> str:
    parts = [f"{header.get('images', '?')} images"]
    if header.get("unreadable"):
        parts.append(f"{header['unreadable']} unreadable")
    parts.append(f"{header.get('classes', '?')} classes large enough to draw")
    small = header.get("classes_too_small") or []
    if small:
        parts.append(f"{len(small)} too small, never drawn: {', '.join(map(str, small))}")
    return ", ".join(parts)


def accuracy_table(records: Sequence[Record]) -> list[str]:
    """The rows of ``evaluate`` as an HTML table, one ``tr.method`` each, the best accuracy marked."""
    best = max((r["accuracy"] for r in records), default=None)
    head = "".join(f'<th class="{c}">{h}</th>' for c, h in (("", "method"), ("number", "accuracy % (± 95% CI)"),
                   ("number", "vs proto, paired (± 95% CI)"), ("number", "ms / episode")))  # fmt: skip
    out = [f'<table class="accuracy"><thead><tr>{head}</tr></thead><tbody>']
    for r in records:
        css = "method best" if r["accuracy"] == best else "method"
        cells = (f'<td class="name">{escape(r["method"])}</td>',
                 f'<td class="number accuracy">{_ci(r["accuracy"], r["ci95"], ".2f")}</td>',
                 f'<td class="number paired">{_ci(r.get("vs_proto"), r.get("vs_proto_ci95"), ".2f", "+")}</td>',
                 f'<td class="number">{1000 * r["seconds_per_episode"]:.1f}</td>')  # fmt: skip
        out.append(f'<tr class="{css}" data-method="{escape(r["method"])}">{"".join(cells)}</tr>')
    out.append("</tbody></table>")
    return out


def open_set_table(record: Record) -> list[str]:
    """The open-set row's measures as an HTML table, one ``tr.measure`` each."""
    out = ['<table class="open-set"><thead><tr><th>measure</th><th class="number">mean ± 95% CI</th></tr>'
           "</thead><tbody>"]  # fmt: skip
    for label, key, fmt in OPEN_SET_MEASURES:
        out.append(f'<tr class="measure" data-measure="{key}"><td>{escape(label)}</td>'
                   f'<td class="number">{_ci(record[key], record[key + "_ci95"], fmt)}</td></tr>')  # fmt: skip
    out.append("</tbody></table>")
    return out


def confusion_figure(method: str, matrix: np.ndarray, names: Sequence[str], record: Record | None) -> list[str]:
    """One method's figure: the picture of ``matrix`` over the classes drawn, its accuracy, the most
    confused pairs."""
    kept = drawn_classes(matrix)
    sub = np.asarray(matrix)[np.ix_(kept, kept)]
    shown = [str(names[i]) for i in kept]
    picture = confusion_picture(sub, shown if len(kept) <= MAX_NAMED else None)
    out = [f'<figure class="confusion" data-method="{escape(method)}"><h3>{escape(method)}</h3>',
           f'<img class="confusion" src="{png_uri(picture)}" alt="{escape(f"confusion matrix of {method}")}" '
           f'width="{picture.width}" height="{picture.height}">', "<figcaption>"]  # fmt: skip
    if len(kept) > MAX_NAMED:
        out.append(f'<p class="note">{len(kept)} classes: too many to name on the axes; rows and columns '
                   "are in the dataset's class order.</p>")  # fmt: skip
    total = int(sub.sum())
    if record is not None:
        out.append(f'<p class="accuracy">accuracy {_ci(record["accuracy"], record["ci95"], ".2f")} % '
                   f"({int(np.trace(sub))} of {total} queries right)</p>")  # fmt: skip
    pairs = most_confused(sub, shown)
    if pairs:
        out.append('<p>most confused (true -&gt; predicted: queries):</p><ol class="confused">')
        out.extend(f'<li class="pair">{escape(f"{t} -> {p}: {n}")}</li>' for t, p, n in pairs)
        out.append("</ol>")
    else:
        out.append('<p class="pair-none">no query was confused</p>')
    out.append("</figcaption></figure>")
    return out


def render_evaluation_report(
    header: Mapping[str, Any],
    records: Sequence[Record],
    confusion: Mapping[str, np.ndarray] | None,
    classes: Sequence[str],
    *,
    title: str = "emdcli evaluate",
) -> str:
    """The HTML page of an evaluation: ``header`` (the command's: dataset, model, way, shot, query,
    episodes, seed, images, ...), its ``records`` (one per method; or the one open-set row, when
    ``header`` has ``open_set``), ``confusion`` (method -> (K, K) counts, None for an open-set run)
    and the names of the K ``classes``."""
    heading = f"{title}: {header.get('dataset', '')}"
    out = [f'<p class="summary shape">{escape(_shape(header))}</p>',
           f'<p class="summary">{escape(_counts(header))}</p>']  # fmt: skip
    if header.get("open_set"):
        out.append('<section id="open-set"><h2>Open-set measures</h2>')
        out.extend(open_set_table(records[0]) if records else [])
        out.append('<p class="note">An open-set run scores rejection, not labels: no confusion matrix.</p></section>')
        return page(heading, out, STYLE)
    out.append('<section id="accuracy"><h2>Accuracy</h2>')
    out.extend(accuracy_table(records))
    out.append("</section>")
    if confusion:
        by_method = {str(r["method"]): r for r in records}
        some = next(iter(confusion.values()))
        drawn = len(drawn_classes(some))
        left_out = f", the {len(classes) - drawn} never drawn left out" if drawn < len(classes) else ""
        out.extend(['<section id="confusion"><h2>Confusion matrices</h2>'
                   f'<p class="note">Rows: the true class; columns: the predicted class. Counts over the queries '
                   f"of all {header.get('episodes', '')} episodes, over the {drawn} classes drawn{escape(left_out)}. "
                   "A cell's colour is its share of the row (of the true class's queries), from the scale beside "
                   "it; the counts are written in the cells when they fit.</p>", '<div class="figures">'])  # fmt: skip
        for method, matrix in confusion.items():
            out.extend(confusion_figure(method, matrix, classes, by_method.get(method)))
        out.append("</div></section>")
    return page(heading, out, STYLE)


def write_evaluation_report(
    path: Path,
    header: Mapping[str, Any],
    records: Sequence[Record],
    confusion: Mapping[str, np.ndarray] | None,
    classes: Sequence[str],
    **options: Any,
) -> Path:
    """Write :func:`render_evaluation_report`'s page to ``path`` atomically (whole or not at all); returns ``path``."""
    return write_page(path, render_evaluation_report(header, records, confusion, classes, **options))
