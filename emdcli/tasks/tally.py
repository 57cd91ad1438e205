"""Running counts over a stream of predictions (:class:`Tally`: classify's summary, watch's, batch's), and
the check of queries that are support images themselves (:class:`SupportOverlap`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.files import sha256_file
from ..io.folders import LabelledFolder
from .classify import SetReport, SupportSet
from .prediction import Prediction

__all__ = ["SupportOverlap", "Tally"]


class SupportOverlap:
    """Which queries are support images themselves (the same bytes) or lie in the support set's
    own class folders: a sign of swapped arguments or of the same folder given twice.

    Only a query whose size equals some support image's is hashed, so the check costs a stat.
    """

    def __init__(self, folder: LabelledFolder) -> None:
        self._by_size: dict[int, list[Path]] = {}
        for path in (p for c in folder.classes for p in c.files):
            with contextlib.suppress(OSError):
                self._by_size.setdefault(path.stat().st_size, []).append(path)
        self._digests: dict[Path, str] = {}
        self.class_folders = {(folder.root / c.name).resolve() for c in folder.classes}

    def _digest(self, path: Path) -> str:
        if path not in self._digests:
            self._digests[path] = sha256_file(path)
        return self._digests[path]

    def is_support_image(self, query: Path) -> bool:
        """Whether the file ``query`` has the same content as a support image."""
        try:
            same_size = self._by_size.get(query.stat().st_size, [])
            return bool(same_size) and any(self._digest(query) == self._digest(p) for p in same_size)
        except OSError:
            return False

    def in_class_folder(self, query: Path) -> bool:
        """Whether ``query`` lies below one of the support set's class folders."""
        return any(parent in self.class_folders for parent in Path(os.path.abspath(query)).parents)


@dataclass
class Tally:
    """Running counts over a stream of predictions.

    support_images: queries that are support images themselves; in_support_folders: queries
    lying in the support's class folders (both counted only with an ``overlap`` to check). small:
    queries far below the model's input size (:func:`emdcli.io.images.is_small`).
    """

    total: int = 0
    ok: int = 0
    errors: int = 0
    labelled: int = 0
    correct: int = 0
    rejected: int = 0
    highest_open_score: float | None = None
    support_images: int = 0
    in_support_folders: int = 0
    small: int = 0
    #: The first few queries far below the model's input size, to name in a warning.
    small_examples: list[Path] = field(default_factory=list, repr=False)
    overlap: SupportOverlap | None = field(default=None, repr=False)

    def add(self, pred: Prediction) -> None:
        if self.overlap is not None:
            self.support_images += self.overlap.is_support_image(pred.path)
            self.in_support_folders += self.overlap.in_class_folder(pred.path)
        if pred.small:
            self.small += 1
            if len(self.small_examples) < 3:
                self.small_examples.append(pred.path)
        self.count(pred.ok, pred.correct, pred.rejected_as is not None, pred.open_set_score)

    def count(self, ok: bool, correct: bool | None, rejected: bool = False, open_score: float | None = None) -> None:
        """Count one query: whether it was classified, whether rightly (None: no label), whether it was
        rejected as none of the classes, and its open-set score (None: not computed)."""
        self.total += 1
        self.rejected += rejected
        if open_score is not None and (self.highest_open_score is None or open_score > self.highest_open_score):
            self.highest_open_score = open_score
        if not ok:
            self.errors += 1
            return
        self.ok += 1
        if correct is not None:
            self.labelled += 1
            self.correct += int(correct)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def summary(self, support: SupportSet, sets: Iterable[SetReport], *, resumed: int = 0, not_images: int = 0,
                seconds: float, query_seconds: float, from_cache: int = 0) -> dict[str, Any]:  # fmt: skip
        """classify's summary of a run: these counts, the support set's, what the query sets' transductive
        step did, the time (``seconds`` in all, ``query_seconds`` on the queries of this run), and how
        many queries' features came from the feature cache (``from_cache``)."""
        sets, new = list(sets), self.total - resumed
        return {
            "query_sets": len(sets), "transduced_sets": sum(s.ran for s in sets),
            "queries": self.total, "classified": self.ok, "skipped": self.errors, "resumed": resumed,
            "queries_from_cache": from_cache, "small_queries": self.small,
            "labelled": self.labelled, "correct": self.correct, "support_images_as_queries": self.support_images,
            "not_images": not_images,
            "accuracy": None if self.accuracy is None else round(self.accuracy, 6),
            "support_images": sum(support.shots), "support_skipped": len(support.skipped),
            "classes": len(support.classes), "seconds": round(seconds, 3),
            "queries_per_second": round(new / query_seconds, 2) if new and query_seconds > 0 else None,
        }  # fmt: skip
