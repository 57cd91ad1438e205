"""Few-shot classification: fit a support folder, then score queries against it.

    clf = Classifier()                                   # the bundled model, emdcli's defaults
    support = clf.fit(read_labelled_folder(Path("support")))
    for pred in clf.predict(support, [Path("query.jpg")]):
        print(pred.predicted, pred.confidence)

Embedding goes through a :class:`~emdcli.features.source.FeatureSource`; the class node sets
and the scores come from a :class:`~emdcli.matching.support.Matcher`, the same code that
``evaluate``'s ``default`` method runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .. import defaults
from ..errors import DatasetError
from ..features.pipeline import Embedded
from ..features.source import FeatureSource, Progress, Skipped
from ..io.folders import LabelledFolder
from ..matching.nodes import ClassBank, Nodes
from ..matching.rejection import OpenSetScorer, ReferenceBank, Rejection, calibrate_rejection, fixed_rejection
from ..matching.support import ClassNodes, ClassScores, Matcher, Weights
from ..matching.transductive import TransductiveScores
from .prediction import Prediction, Ranked, ranking_from_scores

__all__ = ["Classifier", "Prediction", "Ranked", "Reject", "SetReport", "SupportSet", "batches"]


@dataclass(frozen=True)
class Reject:
    """Whether to answer "none of these" (``label``) for a query unlike every class.

    threshold: reject a query whose open-set score is below it; None: calibrate it on the support
    set to reject about ``sensitivity`` of in-set queries (:mod:`emdcli.matching.rejection`).
    """

    threshold: float | None = None
    sensitivity: float = defaults.REJECT_SENSITIVITY
    label: str = defaults.UNKNOWN_LABEL

    def rejection(self, scorer: OpenSetScorer) -> Rejection:
        """The rejection for the support set of ``scorer``: the given threshold, or a calibrated one."""
        if self.threshold is not None:
            return fixed_rejection(scorer, self.threshold, self.label)
        return calibrate_rejection(scorer, self.sensitivity, self.label)


T = TypeVar("T")
#: A query: an image file's path (a Path or str), or an image in memory (a Pillow image, an (H, W, 3) uint8
#: array); typed Any so that Pillow stays an import of its own.
Query = Any


@dataclass(frozen=True)
class SupportSet:
    """A fitted support folder: the class node sets, and what was left out.

    nodes: the classes as :class:`~emdcli.matching.support.ClassNodes`. skipped: unreadable
    support images. empty_classes: class folders left out (no image, or none readable).
    examples: class -> (path, (C, H, W) feature map) of each example, kept only when asked
    for (``fit(keep_examples=True)``). rejection: when a query is answered "none of these" (None:
    never). outliers: which queries the transductive step sets aside as foreign: the rejection, else
    one calibrated at the default sensitivity (None without a reference bank).
    """

    nodes: ClassNodes
    skipped: tuple[Skipped, ...] = ()
    empty_classes: tuple[str, ...] = ()
    examples: dict[str, tuple[tuple[Path, np.ndarray], ...]] = field(default_factory=dict, repr=False, compare=False)
    rejection: Rejection | None = None
    outliers: Rejection | None = field(default=None, repr=False, compare=False)
    #: The weights of the global cosine the classifier's matcher decided for these classes, once (None:
    #: decided when needed, for a support set made elsewhere).
    weights: Weights | None = field(default=None, repr=False, compare=False)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.nodes.classes

    @property
    def shots(self) -> tuple[int, ...]:
        return self.nodes.shots

    @property
    def kshot(self) -> str:
        return self.nodes.kshot


class Classifier:
    """DeepEMD few-shot classifier: a feature source and a matcher.

    source: where feature maps come from (None: the bundled model, no cache). matcher: how
    queries are scored (None: ``Matcher()``, emdcli's defaults, see :mod:`emdcli.defaults`).
    bank: the reference bank of open-set rejection (None: the model's own, when it has one).
    """

    def __init__(
        self, source: FeatureSource | None = None, matcher: Matcher | None = None, bank: ReferenceBank | None = None
    ) -> None:
        if source is None:
            from ..model.backbone import load_model

            source = FeatureSource(load_model())
        self.source = source
        self.matcher = matcher or Matcher()
        if bank is None:
            from .reference_bank import bank_for

            bank = bank_for(source.extractor)
        self.bank = bank
        #: What the transductive step did for each set of queries :meth:`predict` matched, in order.
        self.sets: list[SetReport] = []

    @property
    def model_name(self) -> str:
        """The name in the feature extractor's manifest (``"unnamed"`` for an extractor without one)."""
        manifest = getattr(self.source.extractor, "manifest", None)
        return str(getattr(manifest, "name", "unnamed"))

    def fit(
        self,
        folder: LabelledFolder,
        on_done: Progress | None = None,
        *,
        keep_examples: bool = False,
        reject: Reject | None = None,
    ) -> SupportSet:
        """Embed every support image (through the source's cache) and make the class node sets;
        with ``reject``, also when a query is none of the classes (:class:`Reject`).

        Raises DatasetError when fewer than two classes have a readable image, ModelError for
        ``reject`` with a model that has no reference bank.
        """
        self._check_bank(reject)  # before any image is embedded
        owner = {p: i for i, c in enumerate(folder.classes) for p in c.files}
        build = self.matcher.builder(folder.names, folder.image_count)
        skipped: list[Skipped] = []
        kept: dict[str, list[tuple[Path, np.ndarray]]] = {}
        for item in self.source.embed_cached(list(owner), on_done):
            if item.features is None:
                skipped.append(Skipped(item.path, item.error or "unreadable"))
                continue
            label = owner[item.path]
            build.add(label, item.features)
            if keep_examples:
                kept.setdefault(folder.names[label], []).append((item.path, item.features))
        try:
            nodes = build.build(fits=self.source.cache)  # an unchanged support set is not refitted
        except ValueError:
            nodes = None
        if nodes is None or len(nodes.classes) < 2:
            found = 0 if nodes is None else len(nodes.classes)
            raise DatasetError(
                f"{folder.root}: only {found} class(es) have a readable image; need at least 2",
                hint="check the skipped files listed above",
            )
        lost = tuple(n for n in folder.names if n not in nodes.classes)
        examples = {n: tuple(sorted(kept[n], key=lambda e: str(e[0]))) for n in nodes.classes if n in kept}
        rejection, outliers = self.open_set(nodes, reject)
        return SupportSet(
            nodes=nodes,
            skipped=tuple(skipped),
            empty_classes=tuple(folder.empty) + lost,
            examples=examples,
            rejection=rejection,
            outliers=outliers,
            weights=self.matcher.weights_for(nodes),
        )

    def _check_bank(self, reject: Reject | None) -> None:
        """ModelError when ``reject`` asks for rejection and the model has no reference bank."""
        if reject is not None and self.bank is None:
            from ..errors import ModelError
            from .reference_bank import NO_BANK, NO_BANK_HINT

            raise ModelError(NO_BANK, hint=NO_BANK_HINT)

    def open_set(self, nodes: ClassNodes, reject: Reject | None = None) -> tuple[Rejection | None, Rejection | None]:
        """(rejection, outliers) for fitted classes: what ``reject`` asks for (None without it), and
        what the transductive step sets aside (the rejection, else a calibrated one; None without a bank
        or a transductive matcher). ModelError for ``reject`` without a bank."""
        self._check_bank(reject)
        if self.bank is None:
            return None, None
        scorer = OpenSetScorer.from_classes(self.bank, nodes)
        rejection = None if reject is None else reject.rejection(scorer)
        if rejection is not None or not self.matcher.transductive:
            return rejection, rejection
        return rejection, calibrate_rejection(scorer, defaults.REJECT_SENSITIVITY)

    def global_weight_for(self, support: SupportSet) -> float:
        """The weight of the global cosine for ``support``: as set, else the default for its kshot."""
        return self.weights_of(support).inductive

    def weights_of(self, support: SupportSet) -> Weights:
        """The weights the matcher decided for ``support`` when it was fitted (decided now if it was not)."""
        return support.weights or self.matcher.weights_for(support.nodes)

    def rank(self, support: SupportSet, features: np.ndarray) -> tuple[Ranked, ...]:
        """The classes for one (C, H, W) feature map, best first: every class, or with a
        shortlist only the shortlisted ones (the others have no EMD score)."""
        scores = self.matcher.match(support.nodes, features).total(self.global_weight_for(support))
        idx = np.flatnonzero(~np.isnan(scores))
        return ranking_from_scores([support.classes[i] for i in idx], scores[idx])

    def score_set(self, support: SupportSet, maps: np.ndarray) -> TransductiveScores:
        """Scores of (n, C, H, W) query maps matched as one set, as :meth:`predict` matches a set:
        ``scores`` (n, K), NaN for classes off a query's shortlist (transductive when the matcher is)."""
        parts = [self.matcher.match(support.nodes, fmap) for fmap in maps]
        return self.matcher.score_set(support.nodes, parts, maps)

    def closest_example(self, support: SupportSet, features: np.ndarray, label: str) -> tuple[Path, np.ndarray]:
        """The example of class ``label`` whose EMD score with the (C, H, W) ``features`` is highest:
        its path and feature map. Needs a support set fitted with ``keep_examples=True``."""
        examples = support.examples.get(label)
        if not examples:
            raise ValueError(f"no examples kept for class {label!r}; fit with keep_examples=True")
        q = Nodes.from_feature_map(features)
        bank = ClassBank.from_nodes([Nodes.from_feature_map(f) for _, f in examples])
        return examples[int(np.argmax(bank.scores(q, self.matcher.metric)))]

    def predict(
        self,
        support: SupportSet,
        paths: Iterable[Path] | Sequence[Query],
        on_done: Progress | None = None,
        observe: Callable[[Prediction, np.ndarray], None] | None = None,
    ) -> Iterator[Prediction]:
        """One Prediction per query, in input order.

        A list of paths is embedded through the source's feature cache (a stream as it comes). A list
        may also hold images in memory (Pillow images, (H, W, 3) or (H, W) uint8 arrays): their
        predictions are named ``<image I>``, I their place in the list. With a
        transductive matcher the paths are matched as sets of at most
        ``defaults.TRANSDUCTIVE_SET`` consecutive queries, a set's predictions coming once it is
        embedded (what each set's step did is appended to :attr:`sets`); else each query alone, as
        soon as its batch is embedded. ``observe(prediction, features)`` is called with each
        classified query's (C, H, W) feature map before the prediction is yielded (to draw it).
        """
        known = set(support.classes)

        def label_of(path: Path) -> str | None:
            return path.parent.name if path.parent.name in known else None

        weights = self.weights_of(support)  # decided once for the run
        rejection = support.rejection
        # the open-set scores are needed to answer "none of these", or to set foreign queries aside
        judge = rejection or (support.outliers if self.matcher.transductive else None)

        def decided(path: Path, scores: np.ndarray, open_score: float | None, small: bool) -> Prediction:
            idx = np.flatnonzero(~np.isnan(scores))
            ranking = ranking_from_scores([support.classes[i] for i in idx], scores[idx])
            if rejection is None:
                return Prediction(path, "ok", ranking, label_of(path), small=small)
            rejected_as = rejection.label if rejection.rejects(open_score) else None
            return Prediction(path, "ok", ranking, label_of(path), None, open_score, rejected_as, small)

        # a list (a folder's files) goes through the feature cache, so that a stopped run embeds nothing twice
        if isinstance(paths, list) and not all(isinstance(p, Path) for p in paths):
            embedded = self._embed_queries(paths, on_done)
        elif isinstance(paths, list):
            embedded = self.source.embed_cached(paths, on_done)
        else:
            embedded = self.source.embed_now(iter(paths), on_done)

        def matched(items: Iterable[Embedded]) -> Iterator[tuple[Embedded, ClassScores | None]]:
            # each query is matched as soon as it is embedded, while the next batches are decoded and
            # embedded in other threads (a set's step needs them all; their matches need not wait)
            for item in items:
                yield item, None if item.features is None else self.matcher.match(support.nodes, item.features)

        each = matched(embedded)
        sets = batches(each, defaults.TRANSDUCTIVE_SET) if self.matcher.transductive else ([e] for e in each)
        for pairs in sets:
            chunk = [item for item, _ in pairs]
            ok = [item.features for item in chunk if item.features is not None]
            parts = [part for _, part in pairs if part is not None]
            open_scores = judge.scores(np.stack([p.pooled for p in parts])) if judge and parts else np.zeros(len(parts))
            if self.matcher.transductive and ok:
                foreign = open_scores < judge.threshold if judge else None
                result = self.matcher.score_set(support.nodes, parts, np.stack(ok), foreign=foreign, weights=weights)
                self.sets.append(SetReport(len(ok), result.ran, result.spread, result.share))
                totals = list(result.scores)
            else:
                totals = [p.total(weights.inductive) for p in parts]
            found = iter(zip(totals, open_scores, strict=True))
            for item in chunk:
                if item.features is None:
                    yield Prediction(item.path, "error", true_label=label_of(item.path), error=item.error)
                    continue
                scores, open_score = next(found)
                pred = decided(item.path, scores, float(open_score), item.small)
                if observe:
                    observe(pred, item.features)
                yield pred

    def _embed_queries(self, queries: Sequence[Query], on_done: Progress | None) -> Iterator[Embedded]:
        """Paths (through the cache) and images in memory, in order."""
        is_path = [isinstance(q, str | os.PathLike) for q in queries]
        files = self.source.embed_cached([Path(q) for q, f in zip(queries, is_path, strict=True) if f], on_done)
        names = [Path(f"<image {i}>") for i, f in enumerate(is_path) if not f]
        pictures = self.source.embed_pictures([q for q, f in zip(queries, is_path, strict=True) if not f], names)
        for f in is_path:
            yield next(files) if f else next(pictures)


@dataclass(frozen=True)
class SetReport:
    """What the transductive step did for one set of queries: how many it matched, whether it ran
    (False: the inductive scores were kept), the spread of the inductive predictions, in [0, 1], and
    the largest share of them one class took, times the number of classes."""

    queries: int
    ran: bool
    spread: float
    share: float


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
