"""A query's prediction and the one place it becomes a record, a flat row, or is read back.

Every command that writes predictions (``classify`` in any format, ``batch`` on any engine, the
Parquet writer) goes through :meth:`Prediction.to_record` and :func:`flat_row`; ``--resume`` reads
earlier rows back with :meth:`Prediction.from_record`. :func:`run_header` is the settings block
written beside them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io.files import display_path
from ..io.records import Record, rounded
from ..matching.nodes import softmax_confidence

if TYPE_CHECKING:
    from ..matching.rejection import Rejection
    from ..matching.support import ClassNodes, Matcher, Weights


@dataclass(frozen=True)
class Ranked:
    """One class in a query's ranking: score in [-1, 1] and softmax confidence in [0, 1]."""

    label: str
    score: float
    confidence: float


def ranking_from_scores(labels: list[str], scores: np.ndarray) -> tuple[Ranked, ...]:
    """``labels`` with their (len(labels),) scores, best first, with softmax confidences."""
    conf = softmax_confidence(scores)
    order = np.argsort(-scores, kind="stable")
    return tuple(Ranked(labels[i], float(scores[i]), float(conf[i])) for i in order)


@dataclass(frozen=True)
class Prediction:
    """The outcome for one query image.

    status: ``"ok"``, or ``"error"`` with ``error`` saying why (then ``ranking`` is empty).
    ranking: every class, best first. true_label: the name of the query's parent
    folder when that is a class of the support set, else None. open_set_score: the query's
    similarity to the nearest support example relative to generic images
    (:mod:`emdcli.matching.rejection`), when computed. rejected_as: the
    answer for a query rejected as none of the classes (``"unknown"``), else None; the ranking
    still holds its best class.
    """

    path: Path
    status: str
    ranking: tuple[Ranked, ...] = ()
    true_label: str | None = None
    error: str | None = None
    open_set_score: float | None = None
    rejected_as: str | None = None
    #: Whether the image is far below the model's input size (:func:`emdcli.io.images.is_small`): its
    #: prediction says little. Not written in the rows; classify warns and counts it.
    small: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def predicted(self) -> str | None:
        """The answer: the best class, or ``rejected_as`` for a rejected query."""
        return self.rejected_as or self.best_class

    @property
    def best_class(self) -> str | None:
        return self.ranking[0].label if self.ranking else None

    @property
    def score(self) -> float | None:
        return self.ranking[0].score if self.ranking else None

    @property
    def confidence(self) -> float | None:
        return self.ranking[0].confidence if self.ranking else None

    @property
    def runner_up(self) -> Ranked | None:
        return self.ranking[1] if len(self.ranking) > 1 else None

    @property
    def correct(self) -> bool | None:
        if not self.ok or self.true_label is None:
            return None
        return self.predicted == self.true_label

    def scores(self) -> dict[str, float]:
        return {r.label: r.score for r in self.ranking}

    def to_record(self, classes: Sequence[str], top_k: int, path: str | None = None, open_set: bool = False) -> Record:
        """The JSON object of this prediction: scores rounded to SCORE_DIGITS, None where there is
        no value (a class off the shortlist has no score). path: the text of the path field
        (default: ``self.path`` as shown). open_set: with rejection on, also ``best_class`` and
        ``open_set_score`` (``score`` is always the best class's). :func:`flat_row` makes the
        CSV/Parquet row of it."""
        ru = self.runner_up
        scores = self.scores()
        record: Record = {
            "path": display_path(self.path) if path is None else path, "status": self.status,
            "predicted": self.predicted, "score": rounded(self.score), "confidence": rounded(self.confidence),
            "runner_up": ru.label if ru else None, "runner_up_score": rounded(ru.score) if ru else None,
            "true_label": self.true_label, "correct": self.correct,
        }  # fmt: skip
        if open_set:
            record.update({"best_class": self.best_class, "open_set_score": rounded(self.open_set_score)})
        return {
            **record,
            "top": [{"class": r.label, "score": rounded(r.score), "confidence": rounded(r.confidence)}
                    for r in self.ranking[:top_k]],
            "scores": {c: rounded(scores.get(c)) for c in classes},
            "error": self.error,
        }  # fmt: skip

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Prediction:
        """A Prediction rebuilt from a record or a flat row of an earlier output (``--resume``):
        the ranking from its ``scores`` (or ``score:CLASS`` columns), the path, truth and error."""
        scores = {str(c): float(v) for c, v in record_scores(record).items() if v not in (None, "")}
        ranking: tuple[Ranked, ...] = ()
        if record.get("status") == "ok" and scores:
            ranking = ranking_from_scores(list(scores), np.array(list(scores.values())))
        error = record.get("error") or (None if ranking else "no scores in the earlier output")
        status = "ok" if ranking else "error"
        rejected_as = record.get("predicted") if ranking and record_rejected(record) else None
        found = record.get("open_set_score")
        open_score = None if found in (None, "") else float(found)
        true_label = record.get("true_label") or None
        return cls(Path(str(record["path"])), status, ranking, true_label, error, open_score, rejected_as)


def record_rejected(record: Mapping[str, Any]) -> bool:
    """Whether a record (or flat row) answers a query rejected as none of the classes: its
    ``predicted`` is not its ``best_class`` (rows have ``best_class`` only with rejection on)."""
    best = record.get("best_class") or None
    return best is not None and (record.get("predicted") or None) != best


def record_scores(record: Mapping[str, Any]) -> dict[str, Any]:
    """Class -> score of a record (its ``scores``) or of a flat row (its ``score:CLASS`` columns)."""
    nested = record.get("scores")
    if isinstance(nested, Mapping):
        return dict(nested)
    return {k[len("score:") :]: v for k, v in record.items() if k.startswith("score:")}


def prediction_columns(classes: Sequence[str], top_k: int, open_set: bool = False) -> tuple[str, ...]:
    """The flat columns of a prediction (classify's CSV, batch's every format): path, status,
    prediction, runner-up, truth, (best_class and open_set_score with rejection on), top_1..top_K,
    score:CLASS for each class, error."""
    return (
        "path", "status", "predicted", "score", "confidence", "runner_up", "runner_up_score", "true_label", "correct",
        *(("best_class", "open_set_score") if open_set else ()),
        *(f"top_{i}" for i in range(1, top_k + 1)), *(f"score:{c}" for c in classes), "error",
    )  # fmt: skip


def flat_row(record: Mapping[str, Any], classes: Sequence[str], top_k: int) -> Record:
    """A :meth:`Prediction.to_record` record as one flat row keyed by :func:`prediction_columns`
    (``top`` as top_1..top_K, ``scores`` as score:CLASS); keys beyond those (e.g. ``picture``) are
    kept, before ``error``."""
    tops = [t["class"] for t in record["top"]]
    row = {k: v for k, v in record.items() if k not in ("top", "scores", "error")}
    row.update({f"top_{i + 1}": tops[i] if i < len(tops) else None for i in range(top_k)})
    row.update({f"score:{c}": record["scores"].get(c) for c in classes})
    row["error"] = record["error"]
    return row


def run_header(
    model: str,
    model_sha256: str,
    matcher: Matcher,
    nodes: ClassNodes,
    top_k: int | None = None,
    rejection: Rejection | None = None,
    weights: Weights | None = None,
) -> Record:
    """The settings written beside a run's predictions (and checked on ``--resume``): the model,
    the matching settings for this support set, its classes and their shots (top_k and the
    open-set rejection when given)."""
    names = nodes.classes
    weights = weights or matcher.weights_for(nodes)
    header: Record = {
        "model": model, "model_sha256": model_sha256, "metric": matcher.metric, "kshot": nodes.kshot,
        "global_weight": weights.inductive, "support_similarity": rounded(nodes.similarity, 4),
        "shortlist": matcher.shortlist, "transductive": matcher.transductive,
        "transductive_global_weight": weights.transductive,
    }  # fmt: skip
    if top_k is not None:
        header["top_k"] = top_k
    if rejection is not None:
        header["reject"] = {"threshold": rounded(rejection.threshold), "sensitivity": rejection.sensitivity,
                            "anchor": rounded(rejection.anchor), "label": rejection.label}  # fmt: skip
    return {**header, "classes": list(names), "shots": dict(zip(names, nodes.shots, strict=True))}


@dataclass(frozen=True)
class Resumed:
    """What an earlier, unfinished run of ``classify`` left for ``--resume``: the file read (the
    output or its .partial), its predictions in order, and where its rows say each query was
    sorted to (``--sort-into``)."""

    path: Path
    predictions: tuple[Prediction, ...]
    sorted_to: dict[Path, Path]
    #: The text of each row's path, as written (``./a.png`` stays so).
    texts: tuple[str, ...] = ()

    @property
    def done(self) -> frozenset[str]:
        """The paths of the queries it holds, as its rows write them (a set: one lookup per query)."""
        return frozenset(self.texts or (display_path(p.path) for p in self.predictions))


def read_resumed(output: Path, fmt: str, classes: Sequence[str]) -> Resumed | None:
    """The predictions an earlier run of ``classify`` left in ``output`` (or its .partial), None
    when there is none. DatasetError when they were made for other classes."""
    from ..errors import DatasetError
    from ..io.records import read_earlier

    earlier = read_earlier(output, fmt, "classify")
    if earlier is None:
        return None
    records = earlier.records
    found = list(record_scores(records[0])) if records else list(classes)
    if sorted(found) != sorted(classes):
        raise DatasetError(
            f"{earlier.path} was written for classes {', '.join(found)}, not {', '.join(classes)}; cannot resume",
            hint="remove it, or resume with the support folder it was made with",
        )
    prior = tuple(Prediction.from_record(r) for r in records)
    sorted_to = {p.path: Path(r["sorted_to"]) for p, r in zip(prior, records, strict=True) if r.get("sorted_to")}
    return Resumed(earlier.path, prior, sorted_to, tuple(str(r["path"]) for r in records))
