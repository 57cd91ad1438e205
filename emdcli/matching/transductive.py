"""Transductive matching: a set of queries helps place each class, as the queries of one domain do.

    step = Transduction()                                      # emdcli's defaults (emdcli.defaults)
    result = step.run(classes, emd, pooled_queries, weight, maps=query_maps)
    result.scores                                              # (n, K) float64, higher is closer

For n queries against the K classes of a :class:`~emdcli.matching.support.ClassNodes`:

1. **The inductive scores** ``S0 = emd + weight * global cosine`` (what ``--no-transductive``
   gives) and the *spread* of their predictions: the entropy of the predicted-class histogram over
   ``log K``, in [0, 1], and the largest share one class takes of them. Below ``min_spread``, or
   above ``max_share`` times the even share, the queries look lopsided (a folder mostly of one class,
   say); there, moving the classes toward the queries was measured to cost accuracy, so S0 is kept
   (``ran`` is False).
2. **Soft k-means on the pooled features**: centred on the mean of the support and the queries
   together, each class's prototype is the sum of its normalised examples plus the normalised
   queries weighted by their soft assignment ``P = softmax(temperature * S)``; S is the EMD score
   plus ``weight`` times the cosine to the prototypes; ``rounds`` rounds.
3. **Node refit** (``refit``; classes fitted by SFC keep their node sets, which averaging with the
   queries made worse): each class's feature map becomes the mean of its examples' maps and the
   query maps weighted by P, and every query is matched by EMD against the refitted node sets
   (one more EMD per query and class; classes off a query's shortlist stay off).
4. Soft k-means again, from the support, on the refitted EMD scores: the final scores.

Every sum over the queries runs in one canonical order (by their pooled features), so the scores
do not depend on the order the queries came in. Nothing here prints or touches files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import defaults
from .nodes import ClassBank, Metric, Nodes, Weighting, l2_normalise

if TYPE_CHECKING:
    from .support import ClassNodes


@dataclass(frozen=True)
class TransductiveScores:
    """The outcome of the transductive step for one set of queries.

    scores: (n, K) float64, higher is closer (NaN for classes off a query's shortlist).
    ran: whether the step changed the inductive scores (False: the predictions were too lopsided, or
    fewer than two queries). spread: the normalised entropy of the inductive predictions, in [0, 1];
    share: the largest class's share of them times K (1 when even, K when all pick one class).
    """

    scores: np.ndarray
    ran: bool
    spread: float
    share: float = 0.0


def prediction_spread(scores: np.ndarray) -> float:
    """The entropy of the histogram of ``argmax`` predictions of (n, K) ``scores`` (NaN never wins),
    divided by log K: 1 when the queries spread evenly over the classes, 0 when they all pick one."""
    n, k = scores.shape
    if n == 0 or k < 2:
        return 0.0
    picks = np.argmax(np.where(np.isnan(scores), -np.inf, scores), axis=1)
    p = np.bincount(picks, minlength=k) / n
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(k))


def largest_share(scores: np.ndarray) -> float:
    """The largest share of ``argmax`` predictions of (n, K) ``scores`` that one class takes, times K:
    1 when every class gets as many, K when one class gets them all (0 for no query)."""
    n, k = scores.shape
    if n == 0:
        return 0.0
    picks = np.argmax(np.where(np.isnan(scores), -np.inf, scores), axis=1)
    return float(np.bincount(picks, minlength=k).max() / n * k)


def soft_assignment(scores: np.ndarray, temperature: float) -> np.ndarray:
    """(n, K) softmax of ``temperature * scores`` over the classes; NaN scores get 0."""
    z = np.where(np.isnan(scores), -np.inf, temperature * scores)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class Transduction:
    """The transductive step's settings (see the module docstring).

    temperature: of the soft assignments. rounds: soft k-means rounds, before and after the refit.
    min_spread: below this prediction spread the inductive scores are kept, and also when one class
    takes more than ``max_share`` times its even share (1/K) of the predictions (None: no limit). refit: refit the class
    node sets with the queries and match again by EMD (needs the query maps). min_queries: smaller
    sets keep the inductive scores.
    """

    temperature: float = defaults.TRANSDUCTIVE_TEMPERATURE
    rounds: int = defaults.TRANSDUCTIVE_ROUNDS
    min_spread: float = defaults.TRANSDUCTIVE_MIN_SPREAD
    max_share: float | None = defaults.TRANSDUCTIVE_MAX_SHARE
    refit: bool = True
    min_queries: int = 2

    def run(
        self,
        classes: ClassNodes,
        emd: np.ndarray,
        cosine: np.ndarray,
        pooled: np.ndarray,
        *,
        inductive_weight: float,
        weight: float,
        maps: np.ndarray | None = None,
        metric: Metric = "cosine",
        weighting: Weighting = "cross",
        foreign: np.ndarray | None = None,
    ) -> TransductiveScores:
        """Scores of n queries against ``classes``.

        emd: (n, K) inductive EMD scores (NaN off a query's shortlist); cosine: (n, K) the inductive
        global cosine (:meth:`ClassNodes.global_cosine`); pooled: (n, C) the queries' pooled features;
        inductive_weight: the global cosine's weight in the inductive scores (kept when the step does
        not run); weight: its weight in the transductive rounds; maps: (n, C, H, W) the queries'
        feature maps, needed for the refit (without them the refit is left out); foreign: (n,) bool,
        the queries open-set rejection judges foreign: they keep their inductive scores and move no
        class (the step runs on the others alone).
        """
        emd = np.asarray(emd, dtype=np.float64)
        cosine = np.asarray(cosine, dtype=np.float64)
        pooled = np.asarray(pooled, dtype=np.float64)
        inductive = emd + inductive_weight * cosine
        if foreign is not None and np.any(foreign):
            keep = ~np.asarray(foreign, dtype=bool)
            inner = self.run(classes, emd[keep], cosine[keep], pooled[keep], inductive_weight=inductive_weight,
                             weight=weight, maps=None if maps is None else np.asarray(maps)[keep], metric=metric,
                             weighting=weighting)  # fmt: skip
            inductive[keep] = inner.scores
            return TransductiveScores(inductive, inner.ran, inner.spread, inner.share)
        spread, share = prediction_spread(inductive), largest_share(inductive)
        lopsided = self.max_share is not None and share > self.max_share
        if len(emd) < self.min_queries or spread < self.min_spread or lopsided:
            return TransductiveScores(inductive, False, spread, share)
        order = np.lexsort(pooled.T[::-1])  # one canonical order for every sum over the queries
        emd, pooled, cosine = emd[order], pooled[order], cosine[order]
        scores = self._soft_kmeans(classes, emd, pooled, weight, cosine)
        if self.refit and maps is not None and classes.kshot != "sfc":
            assign = soft_assignment(scores, self.temperature)
            emd = refit_scores(classes, np.asarray(maps)[order], assign, ~np.isnan(emd), metric, weighting)
            scores = self._soft_kmeans(classes, emd, pooled, weight, cosine)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return TransductiveScores(scores[back], True, spread, share)

    def _soft_kmeans(
        self, classes: ClassNodes, emd: np.ndarray, pooled: np.ndarray, weight: float, cosine: np.ndarray
    ) -> np.ndarray:
        """(n, K) scores after ``rounds`` prototype updates, from the first assignment by ``emd +
        weight * cosine`` (cosine: (n, K) the inductive global cosine)."""
        centre = np.concatenate([classes.examples_pooled, pooled]).mean(axis=0)
        support = _class_sums(classes, l2_normalise(classes.examples_pooled - centre))
        queries = l2_normalise(pooled - centre)
        scores = emd + weight * cosine
        for _ in range(self.rounds):
            assign = soft_assignment(scores, self.temperature)
            scores = emd + weight * (queries @ l2_normalise(support + assign.T @ queries).T)
        return np.asarray(scores)


def _class_sums(classes: ClassNodes, rows: np.ndarray) -> np.ndarray:
    """(K, C): the sum of the (N, C) ``rows`` of each class's examples."""
    sums = np.zeros((len(classes.classes), rows.shape[1]))
    np.add.at(sums, classes.example_labels, rows)
    return sums


def refit_scores(
    classes: ClassNodes,
    maps: np.ndarray,
    assign: np.ndarray,
    picked: np.ndarray,
    metric: Metric = "cosine",
    weighting: Weighting = "cross",
) -> np.ndarray:
    """(n, K) EMD scores of (n, C, H, W) query ``maps`` against class maps refitted with them: each
    class's map is the mean of its examples' maps and the query maps weighted by the (n, K)
    ``assign`` weights. picked: (n, K) bool, the classes each query is matched with (NaN elsewhere)."""
    n, c = maps.shape[:2]
    nodes = maps.reshape(n, c, -1).transpose(0, 2, 1).astype(np.float64)  # (n, H*W, C)
    counts = np.asarray(classes.shots, dtype=np.float64)
    mass = counts + assign.sum(axis=0)
    refitted = (classes.map_sums + np.einsum("nk,nmc->kmc", assign, nodes)) / mass[:, None, None]
    bank = ClassBank.from_nodes([Nodes.from_feature_map(m) for m in refitted.astype(np.float32)])
    out = np.full((n, len(classes.classes)), np.nan)
    for i in range(n):
        only = np.flatnonzero(picked[i])
        q = Nodes.from_feature_map(nodes[i].astype(np.float32))
        out[i] = bank.scores(q, metric, only=None if len(only) == out.shape[1] else only, weighting=weighting)
    return out
