"""``classify --report FILE``: one self-contained HTML page of a run, for people to look through.

The page holds, in this order, a summary line, the support classes with thumbnails of their
examples, then the queries grouped by predicted class, one table row each: thumbnail, file name,
confidence, runner-up, true label, and a link to the picture of ``--explain-dir`` when the record
names one. A wrong prediction (the true label is known and differs) and a rejected one (with
``--reject``: ``predicted`` differs from ``best_class``) are marked in words and by a CSS class
(``wrong``, ``rejected``) on the row. Queries that could not be read are listed last.

Thumbnails (:data:`THUMB_SIZE` px squares, the centre crop, as JPEG) are embedded as ``data:``
URIs: the page needs no network, no script and no other file (only the optional links to the
explain pictures, relative to the page's folder). Every name is escaped with :func:`html.escape`.
Pure library code: :func:`render_report` returns the text, :func:`write_report` writes it
atomically; nothing is printed. The page skeleton (:func:`page`, :data:`BASE_STYLE`), :func:`escape`,
:func:`write_page` and :func:`check_report_path` are shared with ``evaluate --report``'s page
(:mod:`emdcli.render.evaluation_report`).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..errors import EmdcliError, UsageError
from ..io.files import atomic_write, display_path, require_output_folder
from ..io.records import Record

if TYPE_CHECKING:
    from ..io.folders import LabelledFolder

#: Side in pixels of every thumbnail.
THUMB_SIZE = 96
#: JPEG quality of the thumbnails (small files, faces and textures still recognisable).
THUMB_QUALITY = 80
#: At most this many examples of each support class are shown (the rest are counted).
MAX_EXAMPLES = 24


#: The style every report page starts with (``evaluate``'s and ``classify``'s): text, headings, tables.
BASE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 1.5em; } h3 { font-size: 1.05em; }
.summary { color: #444; }
table { border-collapse: collapse; margin-bottom: 1em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: middle; }
"""

#: What classify's page adds: thumbnails, query rows, marks.
STYLE = """
.examples { display: flex; flex-wrap: wrap; gap: 6px; }
figure { margin: 0; width: 96px; font-size: 0.75em; overflow-wrap: anywhere; }
img.thumb, .nothumb { width: 96px; height: 96px; display: block; border: 1px solid #ccc; }
.nothumb { background: #eee; color: #777; text-align: center; line-height: 96px; font-size: 0.75em; }
td.file { overflow-wrap: anywhere; max-width: 40em; }
tr.wrong { background: #fde8e8; } tr.rejected { background: #fff4d6; }
.mark { font-weight: bold; padding: 1px 5px; border-radius: 3px; margin-left: 4px; }
.mark.wrong { color: #fff; background: #c62828; } .mark.rejected { color: #000; background: #f9a825; }
.more { color: #666; font-size: 0.85em; align-self: center; }
"""


def thumbnail(path: Path, size: int = THUMB_SIZE) -> str | None:
    """``path`` as a ``data:image/jpeg;base64,...`` URI of a ``size`` px square (the centre crop),
    or None when it cannot be read."""
    from ..io.images import Preprocess, model_view

    try:
        img = model_view(path, Preprocess(size=size, resize="crop"))
    except (EmdcliError, OSError):
        return None
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=THUMB_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def check_report_path(path: Path, taken: Iterable[Path | None] = ()) -> None:
    """UsageError (exit 2), before any work, when ``path`` cannot be written: its folder is missing
    or not writable, it is a folder, or it is also another output of the run (``taken``)."""
    if path.is_dir():
        raise UsageError(f"`report` must be a file, not a folder: {display_path(path)}",
                         hint="give it a file name, such as report.html")  # fmt: skip
    for other in taken:
        if other is not None and os.path.abspath(other) == os.path.abspath(path):
            raise UsageError(f"`report` and `output` are the same file: {display_path(path)}",
                             hint="give the report its own name, such as report.html")  # fmt: skip
    try:
        require_output_folder(path)
    except UsageError as exc:
        raise UsageError(exc.message.replace("`output`", "`report`"),
                         hint=(exc.hint or "").replace("`output`", "`report`") or None) from None  # fmt: skip


def escape(value: object) -> str:
    """``value`` as text safe in HTML, quotes too (for attributes)."""
    return html.escape(str(value), quote=True)


_e = escape


def page(title: str, body: Iterable[str], style: str = "") -> str:
    """A whole self-contained HTML page: ``title`` (escaped here) as its title and first heading,
    then the ``body`` parts (HTML, one a line), styled by :data:`BASE_STYLE` and then ``style``."""
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{BASE_STYLE}{style}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    return "\n".join([*head, *body, "</body></html>\n"])


def write_page(path: Path, text: str) -> Path:
    """Write a page's ``text`` to ``path`` atomically (whole or not at all); returns ``path``."""
    with atomic_write(path) as fh:
        fh.write(text)
    return path


def _img(uri: str | None, alt: str, css: str) -> str:
    if uri is None:
        return f'<span class="nothumb" title="{_e(alt)}">unreadable</span>'
    return f'<img class="thumb {css}" src="{uri}" alt="{_e(alt)}" title="{_e(alt)}" width="96" height="96">'


def _href(picture: str, base: Path | None) -> str:
    """A link to ``picture`` from a page in the folder ``base``: relative when it can be, else a
    file: URI; percent-encoded."""
    where = os.path.abspath(picture)
    if base is not None:
        try:
            rel = os.path.relpath(where, os.path.abspath(base))
            return quote(rel.replace(os.sep, "/"))
        except ValueError:  # another drive (Windows)
            pass
    return Path(where).as_uri()


def _number(value: Any) -> str:
    return "" if value is None or value == "" else f"{float(value):.3f}"


def is_wrong(record: Record) -> bool:
    """The true label is known and the prediction is not it."""
    return record.get("correct") is False


def is_rejected(record: Record) -> bool:
    """With rejection on: the answer is not the best class (the query was rejected)."""
    best = record.get("best_class")
    return bool(best) and record.get("predicted") != best


def _row(record: Record, base: Path | None) -> str:
    path = str(record.get("path", ""))
    name = Path(path).name or path
    css = ["query", *(["wrong"] if is_wrong(record) else []), *(["rejected"] if is_rejected(record) else [])]
    marks = ""
    if is_wrong(record):
        marks += f'<span class="mark wrong">wrong: is {_e(record.get("true_label"))}</span>'
    if is_rejected(record):
        marks += f'<span class="mark rejected">rejected (best: {_e(record.get("best_class"))})</span>'
    runner = record.get("runner_up")
    runner_cell = "" if runner is None else f"{_e(runner)} ({_number(record.get('runner_up_score'))})"
    picture = record.get("picture")
    link = f'<a class="explain" href="{_e(_href(str(picture), base))}">match</a>' if picture else ""
    cells = (
        _img(thumbnail(Path(path)), name, "query"),
        f'<span title="{_e(path)}">{_e(name)}</span>{marks}',
        _number(record.get("confidence")),
        runner_cell,
        _e(record.get("true_label") or ""),
        link,
    )
    tds = "".join(f'<td class="{c}">{v}</td>' for c, v in zip(("thumb", "file", "confidence", "runner-up", "truth",
                                                                  "explain"), cells, strict=True))  # fmt: skip
    return f'<tr class="{" ".join(css)}" data-class="{_e(record.get("predicted") or "")}">{tds}</tr>'


def _summary(records: Sequence[Record], folder: LabelledFolder) -> str:
    ok = [r for r in records if r.get("status") == "ok"]
    labelled = [r for r in ok if r.get("correct") is not None]
    wrong = sum(is_wrong(r) for r in ok)
    rejected = sum(is_rejected(r) for r in ok)
    parts = [f"{len(records)} queries", f"{len(ok)} classified", f"{len(folder.classes)} classes",
             f"{folder.image_count} support images"]  # fmt: skip
    if labelled:
        parts.append(f"{len(labelled) - wrong} of {len(labelled)} labelled queries right "
                     f"({(len(labelled) - wrong) / len(labelled):.1%}), {wrong} wrong")  # fmt: skip
    if rejected:
        parts.append(f"{rejected} rejected")
    if len(ok) < len(records):
        parts.append(f"{len(records) - len(ok)} not readable")
    return ", ".join(parts)


def render_report(
    records: Iterable[Record],
    folder: LabelledFolder,
    *,
    base: Path | None = None,
    title: str = "emdcli classify",
    max_examples: int = MAX_EXAMPLES,
) -> str:
    """The HTML page of classify's ``records`` (``Prediction.to_record`` dicts, ``picture`` too)
    over the support ``folder``. ``base``: the folder the page will lie in (links to the explain
    pictures are made relative to it). At most ``max_examples`` examples per support class."""
    rows = list(records)
    out = [
        f'<p class="summary">{_e(_summary(rows, folder))}</p>',
        f'<section id="support"><h2>Support: {_e(display_path(folder.root))}</h2>',
    ]
    for cls in folder.classes:
        shown = cls.files[:max_examples]
        out.append(f'<div class="support-class" data-class="{_e(cls.name)}">'
                   f"<h3>{_e(cls.name)} ({len(cls.files)})</h3><div class=\"examples\">")  # fmt: skip
        for file in shown:
            out.append(f"<figure>{_img(thumbnail(file), file.name, 'support')}"
                       f"<figcaption>{_e(display_path(file.name))}</figcaption></figure>")  # fmt: skip
        if len(cls.files) > len(shown):
            out.append(f'<span class="more">and {len(cls.files) - len(shown)} more</span>')
        out.append("</div></div>")
    out.append("</section>")
    classified = [r for r in rows if r.get("status") == "ok" and r.get("predicted")]
    order = list(folder.names) + sorted({str(r["predicted"]) for r in classified} - set(folder.names))
    out.append('<section id="queries"><h2>Queries by predicted class</h2>')
    head = "".join(f"<th>{h}</th>" for h in ("image", "file", "confidence", "runner-up", "true label", "explain"))
    for label in order:
        group = [r for r in classified if r["predicted"] == label]
        if not group:
            continue
        out.append(f'<div class="predicted-class" data-class="{_e(label)}"><h3>{_e(label)} ({len(group)})</h3>'
                   f'<table class="queries"><thead><tr>{head}</tr></thead><tbody>')  # fmt: skip
        out.extend(_row(r, base) for r in group)
        out.append("</tbody></table></div>")
    out.append("</section>")
    failed = [r for r in rows if not (r.get("status") == "ok" and r.get("predicted"))]
    if failed:
        out.append('<section id="unreadable"><h2>Not classified</h2><ul>')
        out.extend(f'<li class="error">{_e(r.get("path", ""))}: {_e(r.get("error") or "")}</li>' for r in failed)
        out.append("</ul></section>")
    return page(title, out, STYLE)


def write_report(path: Path, records: Iterable[Record], folder: LabelledFolder, **options: Any) -> Path:
    """Write :func:`render_report`'s page to ``path`` atomically (whole or not at all); returns ``path``."""
    return write_page(path, render_report(records, folder, base=path.parent, **options))
