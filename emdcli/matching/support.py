"""Class node sets and the scoring of a query against them: the one path classify and evaluate share.

    matcher = Matcher()                                   # emdcli's defaults (emdcli.defaults)
    classes = matcher.fit([maps_a, maps_b, maps_c])       # each (shots, C, H, W) float32
    scores = matcher.scores(classes, query_maps)          # (n, 3) float64, higher is closer

A class's node set is the (H*W, C) nodes of the mean of its examples' feature maps, or,
with ``kshot="sfc"`` and several examples, a node set fitted to them by DeepEMD's SFC layer
(:mod:`emdcli.matching.sfc`; support sets of more than ``sfc_max_pairs`` examples x classes
fall back to the mean map). A query's score for a class is its EMD score plus
``global_weight`` times the SimpleShot global cosine (:mod:`emdcli.matching.simpleshot`);
with more classes than ``shortlist``, only the ``shortlist`` classes closest by global cosine
are matched by EMD and the others score NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import defaults
from .nodes import METRICS, WEIGHTINGS, ClassBank, Metric, Nodes, Weighting
from .simpleshot import centroids, normalised, pooled
from .transductive import Transduction, TransductiveScores

if TYPE_CHECKING:
    from .sfc import FitStore

#: How a class with several examples gets its node set: their mean feature map, or SFC.
KSHOT_MODES: tuple[str, ...] = defaults.KSHOT_MODES


@dataclass(frozen=True)
class ClassNodes:
    """The classes a query is matched against.

    classes: the class names; nodes[i]: the (H*W, C) node set of class i; shots[i]: how many
    examples it was made from. centre: (C,) float64 mean pooled feature of every example;
    centroids: (K, C) float64 SimpleShot class centroids. kshot: how the node sets were made,
    ``"mean"`` (mean feature map) or ``"sfc"`` (fitted by SFC). similarity: how alike the classes
    are overall, the mean cosine between their mean pooled features (uncentred), in [-1, 1]; None
    when unknown. examples_pooled: (N, C) float64 every example's pooled feature, and
    example_labels: (N,) the class index of each; map_sums: (K, H*W, C) float64 the sum of each
    class's example maps, as nodes (the transductive step refits classes from these).
    bank: the nodes stacked for scoring a query against every class at once.
    """

    classes: tuple[str, ...]
    nodes: tuple[Nodes, ...]
    shots: tuple[int, ...]
    centre: np.ndarray = field(repr=False, compare=False)
    centroids: np.ndarray = field(repr=False, compare=False)
    kshot: str = "mean"
    similarity: float | None = None
    examples_pooled: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False, compare=False)
    example_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp), repr=False, compare=False)
    map_sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)), repr=False, compare=False)
    bank: ClassBank = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bank", ClassBank.from_nodes(list(self.nodes)))

    def global_cosine(self, query_pooled: np.ndarray) -> np.ndarray:
        """(K,) cosine between a (C,) pooled query feature and each class centroid."""
        return np.asarray(self.centroids @ normalised(query_pooled, self.centre))


@dataclass(frozen=True)
class ClassScores:
    """One query scored against every class.

    emd: (K,) float64 EMD scores in [-1, 1] (NaN for classes left off the shortlist);
    global_cosine: (K,) float64 SimpleShot cosine in [-1, 1]; pooled: (C,) float64 the query's
    pooled feature (for the transductive step).
    """

    emd: np.ndarray
    global_cosine: np.ndarray
    pooled: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def total(self, global_weight: float) -> np.ndarray:
        """(K,) float64 ``emd + global_weight * global_cosine``."""
        return self.emd + global_weight * self.global_cosine if global_weight else self.emd.copy()


def uses_sfc(kshot: str, counts: Sequence[int], sfc_max_pairs: int) -> bool:
    """Whether classes with ``counts`` examples each get SFC node sets: asked for, some class has
    several examples, and (examples x classes) is at most ``sfc_max_pairs``."""
    return kshot == "sfc" and max(counts) > 1 and sum(counts) * len(counts) <= sfc_max_pairs


class SupportBuilder:
    """Collects support examples one feature map at a time and makes their :class:`ClassNodes`.

    Keeps a running sum and the pooled feature of each example; every example's map is kept
    only when SFC may run (``expected_examples x classes <= sfc_max_pairs``).
    """

    def __init__(self, classes: Sequence[str], kshot: str, expected_examples: int, sfc_max_pairs: int) -> None:
        self.classes = tuple(classes)
        self.kshot, self.sfc_max_pairs = kshot, sfc_max_pairs
        self._may_fit = kshot == "sfc" and expected_examples * len(self.classes) <= sfc_max_pairs
        self._sums: list[np.ndarray | None] = [None] * len(self.classes)  # float64 running sums
        self._pooled: list[list[np.ndarray]] = [[] for _ in self.classes]
        self._maps: list[list[np.ndarray]] = [[] for _ in self.classes]

    def add(self, label: int, fmap: np.ndarray) -> None:
        """Add one (C, H, W) feature map of class ``classes[label]``."""
        total = self._sums[label]
        self._sums[label] = fmap.astype(np.float64) if total is None else total + fmap
        self._pooled[label].append(pooled(fmap))
        if self._may_fit:
            self._maps[label].append(np.asarray(fmap, dtype=np.float32))

    def build(self, fits: FitStore | None = None) -> ClassNodes:
        """The classes that got at least one example, in the order given. Raises ValueError for none.
        fits: where SFC fits are kept between runs (:func:`emdcli.matching.sfc.fitted_nodes`)."""
        kept = [i for i, s in enumerate(self._sums) if s is not None]
        if not kept:
            raise ValueError("no class has an example")
        counts = [len(self._pooled[i]) for i in kept]
        sums = [s for s in self._sums if s is not None]
        kshot = "mean"
        if self._may_fit and uses_sfc(self.kshot, counts, self.sfc_max_pairs):
            from .sfc import fitted_nodes

            shots = [np.stack([f.reshape(f.shape[0], -1).T for f in self._maps[i]]) for i in kept]  # (shot, H*W, C)
            nodes = tuple(Nodes.from_feature_map(p) for p in fitted_nodes(shots, fits))
            kshot = "sfc"
        else:
            nodes = tuple(Nodes.from_feature_map(total / n) for total, n in zip(sums, counts, strict=True))
        centre, cents = centroids([np.stack(self._pooled[i]) for i in kept])
        similarity = class_similarity([np.mean(self._pooled[i], axis=0) for i in kept])
        map_sums = np.stack([total.reshape(total.shape[0], -1).T for total in sums])  # (K, H*W, C)
        return ClassNodes(
            tuple(self.classes[i] for i in kept), nodes, tuple(counts), centre, cents, kshot, similarity,
            examples_pooled=np.concatenate([np.stack(self._pooled[i]) for i in kept]),
            example_labels=np.repeat(np.arange(len(kept)), counts), map_sums=map_sums,
        )  # fmt: skip


def class_similarity(means: Sequence[np.ndarray]) -> float | None:
    """The mean cosine between every two of the (C,) mean pooled features ``means`` (not centred):
    how alike the classes look overall. None for fewer than two classes."""
    if len(means) < 2:
        return None
    unit = np.stack([m / (np.linalg.norm(m) or 1.0) for m in means])
    sims = unit @ unit.T
    k = len(means)
    return float((sims.sum() - np.trace(sims)) / (k * (k - 1)))


class EpisodeMemo:
    """Results already computed for one episode, so that methods built on the same parts (the
    same fitted classes, the same EMD scores) compute each once.

    reused_seconds: the compute time of the entries handed out again since the last reset
    (so that a method's reported time includes the parts it reused).
    """

    def __init__(self) -> None:
        self._store: dict[Hashable, tuple[Any, float]] = {}
        self.reused_seconds = 0.0

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        import time

        if key in self._store:
            value, seconds = self._store[key]
            self.reused_seconds += seconds
            return value
        t0 = time.perf_counter()
        value = compute()
        self._store[key] = (value, time.perf_counter() - t0)
        return value


@dataclass(frozen=True)
class Weights:
    """The weights of the global cosine a :class:`Matcher` decided for one support set: in each query's
    own score (``inductive``) and in the transductive rounds (``transductive``; None without them)."""

    inductive: float
    transductive: float | None


@dataclass(frozen=True)
class Matcher:
    """How queries are matched to classes: DeepEMD with emdcli's defaults unless told otherwise.

    metric: node cost (``"cosine"``: 1 - cos, or ``"l2"``). kshot: ``"sfc"`` or ``"mean"``.
    global_weight: weight of the global cosine added to the EMD score; None takes the default
    for how the classes were made (:func:`emdcli.defaults.global_weight_for`). shortlist: with
    more classes than this, EMD only for the ones closest by global cosine (0: every class).
    weighting: ``"cross"`` (DeepEMD's cross-reference node weights) or ``"uniform"``.
    transductive: a set of queries is matched together (:mod:`emdcli.matching.transductive`); False:
    each query on its own. transduction: the transductive step's settings.
    """

    metric: Metric = defaults.METRIC  # type: ignore[assignment]
    kshot: str = defaults.KSHOT
    global_weight: float | None = None
    shortlist: int = defaults.SHORTLIST
    weighting: Weighting = "cross"
    sfc_max_pairs: int = defaults.SFC_MAX_PAIRS
    transductive: bool = defaults.TRANSDUCTIVE
    transduction: Transduction = field(default_factory=Transduction)

    def __post_init__(self) -> None:
        checks = (("metric", self.metric, METRICS), ("kshot", self.kshot, KSHOT_MODES),
                  ("weighting", self.weighting, WEIGHTINGS))  # fmt: skip
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")
        if self.shortlist < 0:
            raise ValueError(f"shortlist must be 0 (all) or more, got {self.shortlist}")
        if self.global_weight is not None and not self.global_weight >= 0:
            raise ValueError(f"global_weight must be at least 0, got {self.global_weight}")

    def builder(self, classes: Sequence[str], expected_examples: int) -> SupportBuilder:
        """A builder for ``classes`` that will receive about ``expected_examples`` examples in all."""
        return SupportBuilder(classes, self.kshot, expected_examples, self.sfc_max_pairs)

    def fit(self, per_class: Sequence[np.ndarray], classes: Sequence[str] | None = None) -> ClassNodes:
        """Class node sets from one (shots, C, H, W) array of feature maps per class."""
        names = list(classes) if classes is not None else [str(i) for i in range(len(per_class))]
        build = self.builder(names, sum(len(maps) for maps in per_class))
        for label, maps in enumerate(per_class):
            for fmap in maps:
                build.add(label, fmap)
        return build.build()

    def weight_for(self, classes: ClassNodes) -> float:
        """The global cosine's weight for ``classes``: as given, else the default for how their node
        sets were made and how alike they are (:func:`emdcli.defaults.global_weight_for`)."""
        if self.global_weight is not None:
            return self.global_weight
        return defaults.global_weight_for(classes.kshot, classes.similarity)

    def weights_for(self, classes: ClassNodes) -> Weights:
        """Both weights of the global cosine this matcher decides for ``classes``, decided once."""
        return Weights(self.weight_for(classes), self.transductive_weight_for(classes) if self.transductive else None)

    def transductive_weight_for(self, classes: ClassNodes) -> float:
        """The global cosine's weight in the transductive rounds: as given, else by how alike the
        classes are (:func:`emdcli.defaults.transductive_weight_for`)."""
        if self.global_weight is not None:
            return self.global_weight
        return defaults.transductive_weight_for(classes.similarity)

    def score_set(
        self,
        classes: ClassNodes,
        parts: Sequence[ClassScores],
        maps: np.ndarray | None = None,
        foreign: np.ndarray | None = None,
        weights: Weights | None = None,
    ) -> TransductiveScores:
        """Scores of a set of queries, each already matched on its own (``parts``, from :meth:`match`):
        transductively when the matcher is, else the inductive scores. maps: (n, C, H, W) the queries'
        feature maps (for the node refit); pooled features come from ``maps`` or ``parts``. foreign: (n,)
        bool, queries open-set rejection judges foreign (they move no class in the transductive step).
        weights: as :meth:`weights_for` decided them for ``classes`` (None: decided now)."""
        weights = weights or self.weights_for(classes)
        inductive = weights.inductive
        emd = np.stack([p.emd for p in parts]) if parts else np.zeros((0, len(classes.classes)))
        cosine = np.stack([p.global_cosine for p in parts]) if parts else np.zeros_like(emd)
        if not self.transductive or not parts:
            return TransductiveScores(emd + inductive * cosine if inductive else emd.copy(), False, 0.0)
        pooled_queries = np.stack([p.pooled for p in parts])
        return self.transduction.run(
            classes, emd, cosine, pooled_queries, inductive_weight=inductive,
            weight=weights.transductive if weights.transductive is not None else self.transductive_weight_for(classes),
            maps=maps, metric=self.metric, weighting=self.weighting,
            foreign=foreign,
        )  # fmt: skip

    def match(self, classes: ClassNodes, fmap: np.ndarray) -> ClassScores:
        """Score one (C, H, W) query feature map against every class (EMD on the shortlist only)."""
        glob = classes.global_cosine(pooled(fmap))
        picked = None
        if self.shortlist and len(classes.classes) > self.shortlist:
            picked = np.argsort(-glob, kind="stable")[: self.shortlist]
        emd = classes.bank.scores(Nodes.from_feature_map(fmap), self.metric, only=picked, weighting=self.weighting)
        return ClassScores(emd, glob, pooled(fmap))

    def scores(self, classes: ClassNodes, query: np.ndarray, memo: EpisodeMemo | None = None) -> np.ndarray:
        """(n, K) float64 scores of (n, C, H, W) query maps; NaN for classes off a query's shortlist.

        memo: with a memo, the parts that do not depend on ``global_weight`` are shared with
        other matchers scoring the same episode.
        """
        shortlisting = bool(self.shortlist) and len(classes.classes) > self.shortlist
        key = ("match", id(classes), self.metric, self.weighting, self.shortlist if shortlisting else 0)

        def compute() -> list[ClassScores]:
            return [self.match(classes, q) for q in query]

        parts: list[ClassScores] = compute() if memo is None else memo.get(key, compute)
        if self.transductive:
            return self.score_set(classes, parts, np.asarray(query)).scores
        weight = self.weight_for(classes)
        return np.stack([p.total(weight) for p in parts])

    def fit_episode(self, support: np.ndarray, memo: EpisodeMemo | None = None) -> ClassNodes:
        """:meth:`fit` on a (way, shot, C, H, W) episode support set (shared through ``memo``)."""
        way, shot = support.shape[:2]
        made_by = "sfc" if uses_sfc(self.kshot, [shot] * way, self.sfc_max_pairs) else "mean"
        key = ("fit", made_by, support.shape)  # matchers that make the same node sets share them
        return self.fit(list(support)) if memo is None else memo.get(key, lambda: self.fit(list(support)))
