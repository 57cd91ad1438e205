"""Few-shot classification: build a support set, then score queries against it.

backbone = Backbone(resolve_model_path(None))
clf = Classifier(backbone, backbone.manifest.preprocess)
support = clf.fit(read_labelled_folder(Path("support")))
for pred in clf.predict(support, [Path("query.jpg")]):
    print(pred.predicted, pred.confidence)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import defaults
from .cache import FeatureCache
from .embedding import DEFAULT_BATCH, Embedded, FeatureExtractor, embed_paths
from .errors import DatasetError
from .fewshot import simpleshot_centroids
from .folders import LabelledFolder
from .images import Preprocess
from .matching import ClassBank, Metric, Nodes, softmax_confidence


@dataclass(frozen=True)
class Skipped:
    """An image that was not used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class SupportSet:
    """The classes a query is matched against.

    nodes[i]: the nodes of class ``classes[i]``: the mean (C, H, W) feature map of its
    ``shots[i]`` readable examples, as (H*W, C) nodes. bank: the same nodes stacked
    for scoring a query against every class at once. examples: class -> (path, (C, H, W)
    feature map) of each example, kept only when asked for (``fit(keep_examples=True)``).
    centre: (C,) float64 mean pooled feature of all examples; centroids: (K, C) float64
    SimpleShot class centroids (mean of the examples' centred, L2-normalised pooled
    features, normalised again). kshot: how class nodes were made, ``"mean"`` (mean
    feature map) or ``"sfc"`` (fitted by :mod:`emdcli.sfc`).
    """

    classes: tuple[str, ...]
    nodes: tuple[Nodes, ...]
    shots: tuple[int, ...]
    skipped: tuple[Skipped, ...] = ()
    empty_classes: tuple[str, ...] = ()
    examples: dict[str, tuple[tuple[Path, np.ndarray], ...]] = field(default_factory=dict, repr=False, compare=False)
    centre: np.ndarray | None = field(default=None, repr=False, compare=False)
    centroids: np.ndarray | None = field(default=None, repr=False, compare=False)
    kshot: str = "mean"
    bank: ClassBank = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bank", ClassBank.from_nodes(list(self.nodes)))


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
    folder when that is a class of the support set, else None.
    """

    path: Path
    status: str
    ranking: tuple[Ranked, ...] = ()
    true_label: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def predicted(self) -> str | None:
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


@dataclass
class Tally:
    """Running counts over a stream of predictions."""

    total: int = 0
    ok: int = 0
    errors: int = 0
    labelled: int = 0
    correct: int = 0

    def add(self, pred: Prediction) -> None:
        self.total += 1
        if not pred.ok:
            self.errors += 1
            return
        self.ok += 1
        if pred.correct is not None:
            self.labelled += 1
            self.correct += int(pred.correct)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


@dataclass(frozen=True)
class LabelledFeatures:
    """Every readable image of a labelled folder with its feature map.

    labels: (N,) int index into ``classes``; features: (N, C, H, W) float32 (None when
    nothing was readable); skipped: the unreadable images.
    """

    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray
    features: np.ndarray | None
    skipped: tuple[Skipped, ...]


#: How a class with several examples gets its node set: their mean feature map, or SFC.
KSHOT_MODES: tuple[str, ...] = ("mean", "sfc")
#: SFC solves (support images x classes) EMDs per step: above this many, classes use the mean map.
SFC_MAX_PAIRS = 2500


class Classifier:
    """DeepEMD few-shot classifier over a feature extractor (see :mod:`emdcli.matching`).

    A class's score is its EMD score plus ``global_weight`` times the cosine between the
    query's and the class's SimpleShot global features (None: 0.5 for mean maps and single
    examples, 0 for SFC node sets, see :mod:`emdcli.defaults`); with ``kshot="sfc"`` a class
    with several examples is matched through a node set fitted by SFC instead of their mean map.
    ``batch_size`` None takes the extractor's (Backbone: 4 on CPU, 16 on CUDA).
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        prep: Preprocess,
        *,
        metric: Metric = "cosine",
        batch_size: int | None = None,
        workers: int = 1,
        shortlist: int = 0,
        cache: FeatureCache | None = None,
        global_weight: float | None = None,
        kshot: str = defaults.KSHOT,
    ) -> None:
        if kshot not in KSHOT_MODES:
            raise ValueError(f"unknown kshot {kshot!r}; expected one of {', '.join(KSHOT_MODES)}")
        self.global_weight = global_weight
        self.kshot = kshot
        self.shortlist = shortlist
        self.cache = cache
        self.extractor = extractor
        self.prep = prep
        self.metric: Metric = metric
        self.batch_size: int = batch_size or int(getattr(extractor, "batch_size", DEFAULT_BATCH))
        self.workers = workers

    def embed(self, paths: Iterable[Path], on_done: Callable[[int], None] | None = None) -> Iterator[Embedded]:
        """Feature maps of ``paths`` in input order, embedded now (no cache); ``paths`` may be a stream."""
        return embed_paths(
            self.extractor, self.prep, paths, batch_size=self.batch_size, workers=self.workers, on_done=on_done
        )

    def cached_features(self, paths: list[Path], on_done: Callable[[int], None] | None) -> Iterator[Embedded]:
        """Feature maps of ``paths`` (cached ones first, then the rest in order, embedded and stored)."""
        if self.cache is None:
            yield from self.embed(paths, on_done)
            return
        todo = []
        for path in paths:
            features = self.cache.get(path)
            if features is None:
                todo.append(path)
            else:
                yield Embedded(path, features)
        if on_done and len(todo) < len(paths):
            on_done(len(paths) - len(todo))
        for item in self.embed(todo, on_done):
            if item.features is not None:
                self.cache.put(item.path, item.features)
            yield item
        self.cache.prune()

    def fit(
        self, folder: LabelledFolder, on_done: Callable[[int], None] | None = None, *, keep_examples: bool = False
    ) -> SupportSet:
        """Embed every support image; a class's nodes come from its mean feature map (or SFC)."""
        owner = {p: c.name for c in folder.classes for p in c.files}
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        pooled: dict[str, list[np.ndarray]] = {}
        maps: dict[str, list[np.ndarray]] = {}
        # Keep every example's map only when SFC can run (its cost is examples x classes).
        may_fit = self.kshot == "sfc" and folder.image_count * len(folder.classes) <= SFC_MAX_PAIRS
        skipped: list[Skipped] = []
        kept: dict[str, list[tuple[Path, np.ndarray]]] = {}
        for item in self.cached_features(list(owner), on_done):
            if item.features is None:
                skipped.append(Skipped(item.path, item.error or "unreadable"))
                continue
            name = owner[item.path]
            if keep_examples:
                kept.setdefault(name, []).append((item.path, item.features))
            sums[name] = sums[name] + item.features if name in sums else item.features.astype(np.float64)
            counts[name] = counts.get(name, 0) + 1
            pooled.setdefault(name, []).append(item.features.mean(axis=(1, 2)))
            if may_fit:
                maps.setdefault(name, []).append(item.features)
        names = tuple(c.name for c in folder.classes if c.name in counts)
        lost = [c.name for c in folder.classes if c.name not in counts]
        if len(names) < 2:
            raise DatasetError(
                f"{folder.root}: only {len(names)} class(es) have a readable image; need at least 2",
                hint="check the skipped files listed above",
            )
        kshot = "mean"
        total = sum(counts[n] for n in names)
        if may_fit and max(counts.values()) > 1 and total * len(names) <= SFC_MAX_PAIRS:
            from .sfc import fit_sfc

            shots = [np.stack([f.reshape(f.shape[0], -1).T for f in maps[n]]) for n in names]  # (shot, H*W, C) each
            nodes = tuple(Nodes.from_feature_map(p) for p in fit_sfc(shots).nodes)
            kshot = "sfc"
        else:
            nodes = tuple(Nodes.from_feature_map(sums[n] / counts[n]) for n in names)
        centre, centroids = simpleshot_centroids([np.stack(pooled[n]) for n in names])
        return SupportSet(
            classes=names,
            nodes=nodes,
            shots=tuple(counts[n] for n in names),
            skipped=tuple(skipped),
            empty_classes=tuple(folder.empty) + tuple(lost),
            examples={n: tuple(sorted(kept[n], key=lambda e: str(e[0]))) for n in names if n in kept},
            centre=centre,
            centroids=centroids,
            kshot=kshot,
        )

    def feature_array(
        self, paths: list[Path], on_done: Callable[[int], None] | None = None
    ) -> tuple[tuple[Path, ...], np.ndarray | None, tuple[Skipped, ...]]:
        """The readable ``paths`` in their order, their (N, C, H, W) feature maps (through the
        cache; None when none was readable) and the unreadable ones."""
        got: dict[Path, np.ndarray] = {}
        skipped = []
        for item in self.cached_features(paths, on_done):
            if item.features is None:
                skipped.append(Skipped(item.path, item.error or "unreadable"))
            else:
                got[item.path] = item.features
        kept = tuple(p for p in paths if p in got)
        return kept, (np.stack([got.pop(p) for p in kept]) if kept else None), tuple(skipped)

    def embed_labelled(self, folder: LabelledFolder, on_done: Callable[[int], None] | None = None) -> LabelledFeatures:
        """Feature maps of every image of ``folder`` (through the cache), in folder order."""
        owner = {p: i for i, c in enumerate(folder.classes) for p in c.files}
        paths, features, skipped = self.feature_array(list(owner), on_done)
        return LabelledFeatures(
            classes=folder.names,
            paths=paths,
            labels=np.array([owner[p] for p in paths], dtype=np.intp),
            features=features,
            skipped=skipped,
        )

    def closest_example(self, support: SupportSet, features: np.ndarray, label: str) -> tuple[Path, np.ndarray]:
        """The example of class ``label`` whose EMD score with the (C, H, W) ``features`` is highest:
        its path and feature map. Needs a support set fitted with ``keep_examples=True``."""
        examples = support.examples.get(label)
        if not examples:
            raise ValueError(f"no examples kept for class {label!r}; fit with keep_examples=True")
        q = Nodes.from_feature_map(features)
        bank = ClassBank.from_nodes([Nodes.from_feature_map(f) for _, f in examples])
        return examples[int(np.argmax(bank.scores(q, self.metric)))]

    def global_weight_for(self, support: SupportSet) -> float:
        """The weight of the global cosine for ``support``: as given, else the default for how its
        class node sets were made (:func:`emdcli.defaults.global_weight_for`)."""
        return defaults.global_weight_for(support.kshot) if self.global_weight is None else self.global_weight

    @staticmethod
    def global_similarities(support: SupportSet, q: Nodes) -> np.ndarray:
        """(K,) cosine between the query's pooled features, centred on the support's mean and
        normalised, and each class's SimpleShot centroid."""
        if support.centre is None or support.centroids is None:
            centre, centroids = support.bank.centre, support.bank.prototypes
        else:
            centre, centroids = support.centre, support.centroids
        g = q.mean.astype(np.float64) - centre
        return np.asarray(centroids @ (g / max(float(np.linalg.norm(g)), 1e-12)))

    def shortlisted(self, support: SupportSet, q: Nodes) -> np.ndarray | None:
        """Indices of the ``shortlist`` classes closest by global cosine, or None for all."""
        if not self.shortlist or len(support.classes) <= self.shortlist:
            return None
        return np.argsort(-self.global_similarities(support, q), kind="stable")[: self.shortlist]

    def rank(self, support: SupportSet, features: np.ndarray) -> tuple[Ranked, ...]:
        """The classes for one (C, H, W) feature map, best first: every class, or with a
        shortlist only the shortlisted ones (the others have no EMD score)."""
        q = Nodes.from_feature_map(features)
        picked = self.shortlisted(support, q)
        scores = support.bank.scores(q, self.metric, only=picked)
        weight = self.global_weight_for(support)
        if weight:
            scores = scores + weight * self.global_similarities(support, q)
        idx = np.arange(len(scores)) if picked is None else picked
        return ranking_from_scores([support.classes[i] for i in idx], scores[idx])

    def predict(
        self,
        support: SupportSet,
        paths: Iterable[Path],
        on_done: Callable[[int], None] | None = None,
        observe: Callable[[Prediction, np.ndarray], None] | None = None,
    ) -> Iterator[Prediction]:
        """One Prediction per path, in input order, as soon as its batch is embedded.

        ``observe(prediction, features)`` is called with each classified query's (C, H, W)
        feature map before the prediction is yielded (to draw it, for example).
        """
        known = set(support.classes)
        for item in self.embed(paths, on_done):
            parent = item.path.parent.name
            label = parent if parent in known else None
            if item.features is None:
                yield Prediction(item.path, "error", true_label=label, error=item.error)
            else:
                pred = Prediction(item.path, "ok", self.rank(support, item.features), label)
                if observe:
                    observe(pred, item.features)
                yield pred
