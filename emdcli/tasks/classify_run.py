"""A run of ``classify`` as a library object: a support set, a stream of queries, and what the run does
besides predicting (resume an earlier output, sort the queries into folders, draw each match, keep
the records for a report). The command line parses, calls and renders; a Python user does the same:

    run = ClassifyRun.open(Path("support"), ["photos"], sort=SortInto(Path("sorted")))
    run.fit(Classifier())
    rows = []
    run.execute(rows.append)          # one record per query, sorted into sorted/<class>/ as it goes
    print(run.summary()["accuracy"])

Every record goes through :meth:`Prediction.to_record`; ``execute`` hands each to ``emit`` and counts it
under one :func:`~emdcli.interrupts.deferred` block, so that a signal never separates a row from its
count. The library prints nothing: what a person should hear comes through ``note(kind, text)``
(``kind`` ``"warn"`` or ``"inform"``) and the run's fields.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, EmdcliError
from ..interrupts import deferred
from ..io.files import display_path
from ..io.folders import LabelledFolder
from ..io.images import query_paths
from ..io.records import Record
from ..io.sorting import SortAction, Sorter
from ..matching.simpleshot import pooled as pooled_of
from .classify import Classifier, Reject, SupportSet
from .prediction import Prediction, Resumed, read_resumed, run_header
from .review import Item, suggest
from .tally import SupportOverlap, Tally

__all__ = ["ClassifyRun", "ResumeFrom", "SortInto", "sort_prediction"]

#: ``note(kind, text)``: what a person should hear, ``kind`` ``"warn"`` or ``"inform"``.
Note = Callable[[str, str], None]


def _silent(kind: str, text: str) -> None:
    return None


def _item(index: int, pred: Prediction, text: str) -> Item:
    """A classified query as :func:`~emdcli.tasks.review.suggest` weighs it."""
    top, second = pred.ranking[0], pred.ranking[1] if len(pred.ranking) > 1 else None
    margin = top.confidence - (second.confidence if second else 0.0)
    return Item(index, text, top.label, top.confidence, second.label if second else None, margin,
                pred.rejected_as is not None)  # fmt: skip


def sort_prediction(sorter: Sorter, pred: Prediction, earlier: Path | None = None, note: Note = _silent) -> Record:
    """Sort one query by its prediction (``earlier``: where an earlier run's row says it went); the row's
    ``sorted_to`` and ``sort_action`` (empty for a query that was not classified)."""
    if not pred.ok or pred.predicted is None:
        return {"sorted_to": None, "sort_action": None}
    placed = sorter.place(pred.path, pred.predicted, pred.confidence, rejected=pred.rejected_as is not None,
                          earlier=earlier)  # fmt: skip
    shown = display_path(pred.path)
    if placed.action in ("kept", "failed"):
        note("warn", f"not sorted {shown}: {placed.reason}")
    elif sorter.dry_run and placed.target is not None:
        note("inform", f"{placed.action} {shown} -> {display_path(placed.target)}")
    return placed.record()


@dataclass(frozen=True)
class SortInto:
    """Sort each classified query into ``folder``/<predicted class>/ by ``action`` (``classify --sort-into``);
    below ``min_confidence`` into ``folder``/_review/; ``dry_run``: say what would go where, changing nothing."""

    folder: Path
    action: SortAction = "copy"
    min_confidence: float | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class ResumeFrom:
    """Keep the rows an earlier, interrupted run left in ``output`` (or ``output.partial``), written in
    ``fmt``, and classify only the queries they lack (``classify --resume``)."""

    output: Path
    fmt: str


@dataclass
class ClassifyRun:
    """One classify run. Made by :meth:`open` (every check that needs no model), then :meth:`fit`, then
    :meth:`execute`; :meth:`summary` at any time.

    queries: the query paths (a list, or a stream from stdin); texts: each path as given (the rows keep
    ``./a.png``); not_images: files of the query folders that are not images; sorter: with ``sort``;
    resumed: what an earlier output held; records: every record, when ``keep_records`` (a report's).
    """

    support_path: Path
    folder: LabelledFolder
    fitted_file: bool
    queries: Iterable[Path]
    from_stdin: bool
    top_k: int
    reject: Reject | None = None
    explain_dir: Path | None = None
    resume: ResumeFrom | None = None
    sorter: Sorter | None = None
    keep_records: bool = False
    #: How many queries to suggest labelling next (:func:`emdcli.tasks.review.suggest`); 0: none.
    suggest: int = 0
    texts: dict[Path, str] = field(default_factory=dict, repr=False)
    not_images: list[Path] = field(default_factory=list, repr=False)
    clf: Classifier | None = field(default=None, repr=False)
    support: SupportSet | None = field(default=None, repr=False)
    resumed: Resumed | None = None
    records: list[Record] = field(default_factory=list, repr=False)
    tally: Tally = field(default_factory=Tally, repr=False)
    #: Queries embedded (or read from the cache) so far, for the note of a stopped run.
    embedded: int = 0
    #: The queries to label next (their paths as given), once :meth:`execute` is done (``suggest``).
    suggested: list[str] = field(default_factory=list)
    _started: float = field(default_factory=time.perf_counter, repr=False)
    _query_started: float = 0.0
    _support_hits: int = 0

    @classmethod
    def open(
        cls,
        support: Path,
        queries: list[str],
        *,
        top_k: int = 2,
        reject: Reject | None = None,
        stdin: Iterable[str] | None = None,
        explain_dir: Path | None = None,
        sort: SortInto | None = None,
        resume: ResumeFrom | None = None,
        keep_records: bool = False,
        suggest: int = 0,
    ) -> ClassifyRun:
        """A run over ``queries`` (files, folders, ``-`` for the lines of ``stdin``) against ``support`` (a
        labelled folder or a fitted file), checked before any model is loaded: UsageError (DatasetError)
        for a support or query location that cannot serve, or a ``sort`` folder that cannot."""
        from .fitted import is_fitted_file, support_folder

        fitted_file, folder = is_fitted_file(support), support_folder(support)
        sorter = None
        if sort is not None:
            label = reject.label if reject else None
            sorter = Sorter.for_support(sort.folder, folder, sort.action, min_confidence=sort.min_confidence,
                                        dry_run=sort.dry_run, unknown_label=label, queries=queries)  # fmt: skip
        from_stdin = "-" in queries
        texts: dict[Path, str] = {}
        not_images: list[Path] = []
        paths: Iterable[Path] = query_paths(queries, stdin if from_stdin else None, not_images, texts)
        if sorter is not None:  # what an earlier run sorted into the folder is not a query again
            paths = sorter.outside(paths)
        if not from_stdin:
            paths = list(paths)
            if not paths:
                from ..io.images import IMAGE_NAMES_HINT

                raise DatasetError(f"no images found in {', '.join(queries)}", hint=IMAGE_NAMES_HINT)
        return cls(support, folder, fitted_file, paths, from_stdin, top_k, reject, explain_dir, resume, sorter,
                   keep_records, suggest, texts, not_images)  # fmt: skip

    # before the queries -------------------------------------------------------------------------------

    def fit(self, clf: Classifier, on_support: Callable[[int], None] | None = None) -> SupportSet:
        """Fit the support set with ``clf`` (or load the fitted file), then read what ``resume`` holds
        (DatasetError when it was written for other classes)."""
        from .fitted import fit_or_load

        self.clf = clf
        self.support = fit_or_load(clf, self.support_path, self.folder, on_support, reject=self.reject,
                                   keep_examples=self.explain_dir is not None)  # fmt: skip
        if self.resume is not None:
            self.resumed = read_resumed(self.resume.output, self.resume.fmt, self.support.classes)
        if self.resumed is not None:
            done = self.resumed.done
            self.texts.update((Path(t), t) for t in done)  # the earlier rows keep their text too
            left = (p for p in self.queries if display_path(self.texts.get(p, p)) not in done)
            self.queries = left if self.from_stdin else list(left)
        self.tally = Tally(overlap=SupportOverlap(self.folder))
        return self.support

    @property
    def fitted(self) -> tuple[Classifier, SupportSet]:
        if self.clf is None or self.support is None:
            raise RuntimeError("call fit() first")
        return self.clf, self.support

    @property
    def classes(self) -> tuple[str, ...]:
        return self.fitted[1].classes

    @property
    def top(self) -> int:
        """Ranked classes listed per row: ``top_k``, at most the number of classes."""
        return min(self.top_k, len(self.classes))

    @property
    def open_set(self) -> bool:
        """Whether rows carry the open-set columns (rejection on)."""
        return self.fitted[1].rejection is not None

    @property
    def prior(self) -> tuple[Prediction, ...]:
        """The predictions an earlier run left (``resume``), re-emitted first."""
        return self.resumed.predictions if self.resumed is not None else ()

    @property
    def header(self) -> dict[str, Any]:
        """The settings written beside the rows (:func:`~emdcli.tasks.prediction.run_header`)."""
        clf, support = self.fitted
        extractor = clf.source.extractor
        sha = getattr(getattr(extractor, "check", None), "actual", None)  # a Backbone's verified sha256
        sha = sha or getattr(getattr(extractor, "manifest", None), "sha256", "")
        return run_header(
            clf.model_name,
            str(sha),
            clf.matcher,
            support.nodes,
            rejection=support.rejection,
            weights=clf.weights_of(support),
        )

    # the queries --------------------------------------------------------------------------------------

    def execute(
        self, emit: Callable[[Record], None], on_query: Callable[[int], None] | None = None, note: Note = _silent
    ) -> None:
        """Classify every query: each record (the earlier run's first) handed to ``emit`` and counted in
        :attr:`tally` together. ``on_query(n)``: n more queries embedded."""
        from .pictures import MatchPictures

        clf, support = self.fitted
        self._query_started, self._support_hits = time.perf_counter(), clf.source.cache_hits
        pictures = None
        if self.explain_dir is not None:
            pictures = MatchPictures(clf, support, self.explain_dir, lambda text: note("warn", text))

        def embedded(n: int) -> None:
            self.embedded += n
            if on_query is not None:
                on_query(n)

        pooled: dict[Path, np.ndarray] = {}

        def observe(pred: Prediction, features: np.ndarray) -> None:
            if pictures is not None:
                pictures(pred, features)
            if self.suggest:
                pooled[pred.path] = pooled_of(features)

        new = clf.predict(support, self.queries, embedded, observe if pictures or self.suggest else None)
        items: list[Item] = []  # the classified queries, for the suggestions
        keys: list[Path] = []
        for pred, resumed in itertools.chain(((p, True) for p in self.prior), ((p, False) for p in new)):
            if not pred.ok and not resumed:  # an earlier run's skips were reported by that run
                note("warn", f"skipped {pred.error}")
            if self.suggest and pred.path in pooled:
                items.append(_item(len(items), pred, display_path(self.texts.get(pred.path, pred.path))))
                keys.append(pred.path)
            record = self.record(pred, pictures.drawn.pop(pred.path, None) if pictures else None, note)
            with deferred():  # a row and its count go together: a signal waits for both
                emit(record)
                self.tally.add(pred)
            if self.keep_records:
                self.records.append(record)
        if self.suggest:
            chosen = suggest(items, {it.id: pooled[key] for it, key in zip(items, keys, strict=True)}, self.suggest)
            self.suggested = [items[i].path for i in chosen]

    def record(self, pred: Prediction, picture: str | None = None, note: Note = _silent) -> Record:
        """The row of ``pred``: its path as given, the picture drawn of it, where it was sorted to."""
        given = self.texts.pop(pred.path, None)
        record = pred.to_record(self.classes, self.top, None if given is None else display_path(given),
                                open_set=self.open_set)  # fmt: skip
        if self.explain_dir is not None:
            record["picture"] = picture
        if self.sorter is not None:
            earlier = self.resumed.sorted_to.get(pred.path) if self.resumed else None
            record.update(sort_prediction(self.sorter, pred, earlier, note))
        return record

    # after ---------------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The run's counts and times so far (:meth:`Tally.summary`), what was sorted, what was rejected."""
        clf, support = self.fitted
        now = time.perf_counter()
        found = self.tally.summary(support, clf.sets, resumed=len(self.prior), not_images=len(self.not_images),
                                   seconds=now - self._started, query_seconds=now - (self._query_started or now),
                                   from_cache=clf.source.cache_hits - self._support_hits)  # fmt: skip
        if self.sorter is not None:
            found["sorted"] = dict(self.sorter.counts)
        if self.suggest:
            found["suggested"] = list(self.suggested)
        return found if support.rejection is None else {**found, "rejected": self.tally.rejected}

    def stopped_while_embedding(self) -> bool:
        """Whether the run stopped after embedding some queries but before any new row."""
        return self.tally.total == len(self.prior) and self.embedded > 0

    def check_outcome(self) -> None:
        """DatasetError when no query was given (stdin), EmdcliError when none could be read."""
        if self.tally.total == 0:
            raise DatasetError("no query paths were given on stdin", hint="pipe one image path per line into '-'")
        if self.tally.ok == 0:
            one = self.tally.total == 1
            raise EmdcliError("the query could not be read" if one else f"none of the {self.tally.total} queries "
                              "could be read", hint="see the warnings above")  # fmt: skip

    def write_report(self, path: Path) -> None:
        """The HTML page of the run (``keep_records`` must have been on)."""
        from ..render.report import write_report

        write_report(path, self.records, self.folder)
