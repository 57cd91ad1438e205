"""Reports: one record per prediction, written as a table, CSV, JSON or JSON Lines.

Structured formats stream: each row is written and flushed as soon as it is known.
``--output`` files are written to a temporary file beside the target and renamed
into place only when complete (see :class:`AtomicFile`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .classify import Prediction

SCORE_DIGITS = 6


def display_path(path: Path | str) -> str:
    """``path`` as printable text: undecodable bytes of a file name become ``\\xNN``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), SCORE_DIGITS)


def record(pred: Prediction, classes: Sequence[str], top_k: int) -> dict[str, Any]:
    """The structured form of one prediction (the JSON/JSONL object; CSV flattens it)."""
    ru = pred.runner_up
    scores = pred.scores()
    return {
        "path": display_path(pred.path),
        "status": pred.status,
        "predicted": pred.predicted,
        "score": _round(pred.score),
        "confidence": _round(pred.confidence),
        "runner_up": ru.label if ru else None,
        "runner_up_score": _round(ru.score) if ru else None,
        "true_label": pred.true_label,
        "correct": pred.correct,
        "top": [
            {"class": r.label, "score": _round(r.score), "confidence": _round(r.confidence)}
            for r in pred.ranking[:top_k]
        ],
        "scores": {c: _round(scores[c]) for c in classes if c in scores},
        "error": pred.error,
    }


def csv_header(classes: Sequence[str], top_k: int) -> list[str]:
    head = ["path", "status", "predicted", "score", "confidence", "runner_up", "runner_up_score"]
    head += ["true_label", "correct"] + [f"top_{i}" for i in range(1, top_k + 1)]
    return head + [f"score:{c}" for c in classes] + ["error"]


def csv_row(rec: dict[str, Any], classes: Sequence[str], top_k: int) -> list[Any]:
    def cell(v: Any) -> Any:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        return v

    row = [cell(rec[k]) for k in ("path", "status", "predicted", "score", "confidence", "runner_up")]
    row += [cell(rec["runner_up_score"]), cell(rec["true_label"]), cell(rec["correct"])]
    tops = [t["class"] for t in rec["top"]]
    row += [tops[i] if i < len(tops) else "" for i in range(top_k)]
    row += [cell(rec["scores"].get(c)) for c in classes]
    return row + [cell(rec["error"])]


class StructuredWriter:
    """Streams records to a text stream as csv, json or jsonl; call ``close`` once."""

    def __init__(
        self, stream: IO[str], fmt: str, classes: Sequence[str], top_k: int, header: dict[str, Any]
    ) -> None:
        self.stream, self.fmt, self.classes, self.top_k = stream, fmt, list(classes), top_k
        self._first = True
        if fmt == "csv":
            self._line(csv_header(self.classes, top_k))
        elif fmt == "json":
            head = json.dumps(header, ensure_ascii=False)[:-1]
            stream.write(f'{head}, "predictions": [')
            stream.flush()

    def _line(self, row: list[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)
        self.stream.write(buf.getvalue())
        self.stream.flush()

    def write(self, pred: Prediction) -> None:
        rec = record(pred, self.classes, self.top_k)
        if self.fmt == "csv":
            self._line(csv_row(rec, self.classes, self.top_k))
        elif self.fmt == "jsonl":
            self.stream.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.stream.flush()
        else:
            self.stream.write(("\n  " if self._first else ",\n  ") + json.dumps(rec, ensure_ascii=False))
            self.stream.flush()
        self._first = False

    def close(self, summary: dict[str, Any]) -> None:
        if self.fmt == "json":
            self.stream.write(f'\n], "summary": {json.dumps(summary, ensure_ascii=False)}}}\n')
            self.stream.flush()


class AtomicFile:
    """A text file that appears at ``path`` only when :meth:`commit` is called.

    Until then rows go to a hidden temporary file in the same folder. :meth:`abort`
    can keep what was written as ``<path>.partial`` so no computed row is lost; it
    never touches ``path`` itself.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.", suffix=".tmp")
        self._tmp = Path(tmp)
        self.stream: IO[str] = os.fdopen(fd, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)

    def abort(self, keep: bool = True) -> Path | None:
        """Close; with ``keep``, save what was written as ``<path>.partial`` and return that path."""
        if not self.stream.closed:
            self.stream.flush()
            self.stream.close()
        if keep and self._tmp.exists() and self._tmp.stat().st_size > 0:
            partial = self.path.with_name(self.path.name + ".partial")
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, partial)
            return partial
        self._tmp.unlink(missing_ok=True)
        return None
