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

from .classify import Prediction, Ranked, ranking_from_scores
from .errors import DatasetError

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
        "scores": {c: _round(scores.get(c)) for c in classes},  # None: not on the shortlist
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


def prediction_from_record(rec: dict[str, Any]) -> Prediction:
    """Rebuild a Prediction from a record written by :func:`record` (for ``--resume``)."""
    import numpy as np

    scores = {str(c): float(v) for c, v in (rec.get("scores") or {}).items() if v is not None}
    ranking: tuple[Ranked, ...] = ()
    if rec.get("status") == "ok" and scores:
        ranking = ranking_from_scores(list(scores), np.array(list(scores.values())))
    status = "ok" if ranking else "error"
    error = rec.get("error") or (None if ranking else "no scores in the earlier output")
    return Prediction(Path(str(rec["path"])), status, ranking, rec.get("true_label") or None, error)


def read_earlier_output(path: Path, fmt: str, classes: Sequence[str]) -> list[Prediction]:
    """The predictions in an earlier (possibly interrupted) ``--output`` file.

    Raises DatasetError when the file cannot be parsed as ``fmt`` or was made for
    other classes, so that rows from two different support sets never mix.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} to resume from it ({exc})") from None
    bad = DatasetError(
        f"{path} is not {fmt} output of emdcli classify; cannot resume from it",
        hint="remove the file, or pass the --format it was written with",
    )
    try:
        if fmt == "csv":
            reader = csv.DictReader(io.StringIO(text))
            found = [h[len("score:") :] for h in reader.fieldnames or [] if h.startswith("score:")]
            recs: list[dict[str, Any]] = [
                {**row, "scores": {c: row[f"score:{c}"] or None for c in found}} for row in reader
            ]
        elif fmt == "jsonl":
            recs = [json.loads(line) for line in text.splitlines() if line.strip()]
            found = list(recs[0]["scores"]) if recs else list(classes)
        else:
            doc = json.loads(text)
            recs, found = doc["predictions"], doc["classes"]
        if any("path" not in r for r in recs):
            raise bad
    except (ValueError, KeyError, TypeError, IndexError, csv.Error):
        raise bad from None
    if recs and sorted(found) != sorted(classes):
        raise DatasetError(
            f"{path} was written for classes {', '.join(found)}, not {', '.join(classes)}; cannot resume",
            hint="remove it, or resume with the support folder it was made with",
        )
    return [prediction_from_record(r) for r in recs]


class RowWriter:
    """Streams flat rows (dicts with the keys ``columns``) as csv, jsonl or one json document.

    json: ``{**header, rows_key: [row, ...], "summary": {...}}``; call ``close`` once.
    """

    def __init__(
        self, stream: IO[str], fmt: str, columns: Sequence[str], header: dict[str, Any], rows_key: str = "rows"
    ) -> None:
        self.stream, self.fmt, self.columns = stream, fmt, list(columns)
        self._first = True
        if fmt == "csv":
            self._csv(self.columns)
        elif fmt == "json":
            head = json.dumps(header, ensure_ascii=False)[:-1]
            stream.write(f'{head}{", " if header else ""}"{rows_key}": [')
            stream.flush()

    def _csv(self, values: list[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(["" if v is None else v for v in values])
        self.stream.write(buf.getvalue())
        self.stream.flush()

    def write(self, row: dict[str, Any]) -> None:
        self.emit(row, [row.get(c) for c in self.columns])

    def emit(self, record: dict[str, Any], csv_values: list[Any]) -> None:
        """Write one record: ``csv_values`` (in ``columns`` order) for csv, ``record`` otherwise."""
        if self.fmt == "csv":
            self._csv(csv_values)
        elif self.fmt == "jsonl":
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()
        else:
            self.stream.write(("\n  " if self._first else ",\n  ") + json.dumps(record, ensure_ascii=False))
            self.stream.flush()
        self._first = False

    def close(self, summary: dict[str, Any]) -> None:
        if self.fmt == "json":
            self.stream.write(f'\n], "summary": {json.dumps(summary, ensure_ascii=False)}}}\n')
            self.stream.flush()


class StructuredWriter(RowWriter):
    """Streams predictions as csv, json or jsonl (json: ``{**header, "predictions": [...], "summary"}``)."""

    def __init__(self, stream: IO[str], fmt: str, classes: Sequence[str], top_k: int, header: dict[str, Any]) -> None:
        self.classes, self.top_k = list(classes), top_k
        super().__init__(stream, fmt, csv_header(self.classes, top_k), header, rows_key="predictions")

    def write(self, pred: Prediction) -> None:  # type: ignore[override]
        rec = record(pred, self.classes, self.top_k)
        self.emit(rec, csv_row(rec, self.classes, self.top_k))


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
