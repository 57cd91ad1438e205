"""DeepEMD matching of two node sets (Zhang et al., CVPR 2020, "FCN" nodes).

A node set is a float array of shape (n, C): the n = H*W positions of a C x H x W
feature map. Matching a query against a class:

1. Node weights by cross-reference: ``w_i = max(0, u_i . mean_j v_j) + 1e-3`` on the
   raw features, then each side is normalised to total mass 1.
2. Features are centred per node (the mean over channels is subtracted) and
   L2-normalised; the cost is ``1 - cos`` (``metric="cosine"``) or the Euclidean
   distance of the normalised vectors (``metric="l2"``). Both lie in [0, 2].
3. The exact EMD plan is solved; the score is ``1 - <flow, cost>``. For the cosine
   metric this is the paper's flow-weighted cosine similarity divided by its
   temperature (12.5). Higher is closer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .. import defaults
from ..errors import TransportError
from .transport import emd_cost_trusted, solve_emd

Metric = Literal["cosine", "l2"]
METRICS: tuple[str, ...] = defaults.METRICS
Weighting = Literal["cross", "uniform"]
WEIGHTINGS: tuple[str, ...] = ("cross", "uniform")
#: DeepEMD's temperature: confidences are ``softmax(TEMPERATURE * scores)``.
TEMPERATURE = 12.5
#: Floor added to every cross-reference weight so that no node is dropped.
WEIGHT_EPS = 1e-3


@dataclass(frozen=True)
class Nodes:
    """One image's (or class's) nodes prepared for matching.

    raw: (n, C) float32 features as the backbone gave them.
    unit: (n, C) float32 centred (per node), L2-normalised features.
    mean: (C,) float32 mean of ``raw`` over nodes, for the other side's weights.
    """

    raw: np.ndarray
    unit: np.ndarray
    mean: np.ndarray

    @classmethod
    def from_feature_map(cls, fmap: np.ndarray) -> Nodes:
        """Build from a (C, H, W) feature map, or from (n, C) nodes directly."""
        arr = np.asarray(fmap, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr.reshape(arr.shape[0], -1).T
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ValueError(f"expected (C, H, W) or (n, C) features, got shape {arr.shape}")
        raw = np.ascontiguousarray(arr)
        centred = raw - raw.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        unit = centred / np.maximum(norms, 1e-12)
        return cls(raw=raw, unit=unit.astype(np.float32), mean=raw.mean(axis=0))

    @property
    def count(self) -> int:
        return int(self.raw.shape[0])


@dataclass(frozen=True)
class Match:
    """The result of matching two node sets.

    score: float in [-1, 1], higher is closer.
    flow: (n, m) optimal plan, total mass 1.
    weights_a: (n,) and weights_b: (m,) the cross-reference marginals (each sums to 1).
    cost: (n, m) the cost matrix the plan was solved on.
    """

    score: float
    flow: np.ndarray
    weights_a: np.ndarray
    weights_b: np.ndarray
    cost: np.ndarray


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """``x`` divided by its L2 norm along the last axis (vectors of norm below 1e-12 by 1e-12)."""
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12))


def cross_reference_weights(a: Nodes, b: Nodes) -> tuple[np.ndarray, np.ndarray]:
    """DeepEMD's node weights: (n,) for ``a`` and (m,) for ``b``, each summing to 1."""
    wa = np.maximum(a.raw @ b.mean, 0.0).astype(np.float64) + WEIGHT_EPS
    wb = np.maximum(b.raw @ a.mean, 0.0).astype(np.float64) + WEIGHT_EPS
    return wa / wa.sum(), wb / wb.sum()


def cost_matrix(a: Nodes, b: Nodes, metric: Metric = "cosine") -> np.ndarray:
    """(n, m) float64 cost in [0, 2] between the nodes of ``a`` and ``b``."""
    cos = np.clip((a.unit @ b.unit.T).astype(np.float64), -1.0, 1.0)
    if metric == "cosine":
        return np.asarray(1.0 - cos)
    if metric == "l2":
        return np.asarray(np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0)))
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def uniform_weights(a: Nodes, b: Nodes) -> tuple[np.ndarray, np.ndarray]:
    """Equal mass on every node: (n,) and (m,), each summing to 1."""
    return np.full(a.count, 1.0 / a.count), np.full(b.count, 1.0 / b.count)


def match(a: Nodes, b: Nodes, metric: Metric = "cosine", weighting: Weighting = "cross") -> Match:
    """Match two node sets by exact EMD (cross-reference node weights by default)."""
    if weighting == "cross":
        wa, wb = cross_reference_weights(a, b)
    elif weighting == "uniform":
        wa, wb = uniform_weights(a, b)
    else:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
    cost = cost_matrix(a, b, metric)
    plan = solve_emd(wa, wb, cost)
    return Match(score=1.0 - plan.cost, flow=plan.flow, weights_a=wa, weights_b=wb, cost=cost)


def emd_score(a: Nodes, b: Nodes, metric: Metric = "cosine", weighting: Weighting = "cross") -> float:
    """Only the score of :func:`match`: float in [-1, 1], higher is closer."""
    return match(a, b, metric, weighting).score


def score_matrix(
    queries: list[Nodes], classes: list[Nodes], metric: Metric = "cosine", weighting: Weighting = "cross"
) -> np.ndarray:
    """(n_queries, n_classes) float64 EMD scores."""
    out = np.empty((len(queries), len(classes)), dtype=np.float64)
    for i, q in enumerate(queries):
        for j, c in enumerate(classes):
            out[i, j] = emd_score(q, c, metric, weighting)
    return out


@dataclass(frozen=True)
class ClassBank:
    """Several node sets stacked for scoring one query against all of them at once.

    unit: (K * m, C) float32, the classes' centred unit nodes one block after another.
    raw: (K * m, C) float32 raw nodes; means: (K, C) float32 each class's mean node.
    All classes must have the same node count m.
    """

    unit: np.ndarray
    raw: np.ndarray
    means: np.ndarray
    nodes_per_class: int

    @classmethod
    def from_nodes(cls, classes: list[Nodes]) -> ClassBank:
        counts = {c.count for c in classes}
        if len(counts) != 1:
            raise ValueError(f"every class needs the same number of nodes, got {sorted(counts)}")
        return cls(
            unit=np.ascontiguousarray(np.concatenate([c.unit for c in classes])),
            raw=np.ascontiguousarray(np.concatenate([c.raw for c in classes])),
            means=np.stack([c.mean for c in classes]),
            nodes_per_class=counts.pop(),
        )

    @property
    def size(self) -> int:
        return int(self.means.shape[0])

    def scores(
        self,
        query: Nodes,
        metric: Metric = "cosine",
        only: np.ndarray | None = None,
        weighting: Weighting = "cross",
    ) -> np.ndarray:
        """(K,) float64 EMD scores of ``query`` against every class (or NaN outside ``only``).

        The same numbers as :func:`emd_score` class by class, with the weights and
        cosines of all classes computed in two matrix products.
        """
        m = self.nodes_per_class
        picked = np.arange(self.size) if only is None else np.asarray(only, dtype=np.intp)
        out = np.full(self.size, np.nan)
        if only is None:
            unit, raw, means = self.unit, self.raw, self.means
        else:  # only the picked classes' nodes enter the products (a shortlist of many classes)
            c = self.unit.shape[1]
            unit = self.unit.reshape(self.size, m, c)[picked].reshape(-1, c)
            raw = self.raw.reshape(self.size, m, c)[picked].reshape(-1, c)
            means = self.means[picked]
        cos = np.clip((query.unit @ unit.T).astype(np.float64), -1.0, 1.0)  # (n, P*m)
        wq = np.maximum(query.raw @ means.T, 0.0).astype(np.float64) + WEIGHT_EPS  # (n, P)
        wc = np.maximum(raw @ query.mean, 0.0).astype(np.float64) + WEIGHT_EPS  # (P*m,)
        if weighting == "uniform":
            wq, wc = np.ones_like(wq), np.ones_like(wc)
        elif weighting != "cross":
            raise ValueError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
        if not (np.isfinite(cos).all() and np.isfinite(wq).all() and np.isfinite(wc).all()):
            raise TransportError("the features hold NaN or infinite values; the model output is broken")
        wq /= wq.sum(axis=0)
        costs = 1.0 - cos if metric == "cosine" else np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
        for j, k in enumerate(picked):
            b = wc[j * m : (j + 1) * m]
            cost = np.ascontiguousarray(costs[:, j * m : (j + 1) * m])
            out[k] = 1.0 - emd_cost_trusted(np.ascontiguousarray(wq[:, j]), b / b.sum(), cost)
        return out


def softmax_confidence(scores: np.ndarray, temperature: float = TEMPERATURE) -> np.ndarray:
    """Softmax of ``temperature * scores`` over the last axis (same shape as ``scores``)."""
    z = temperature * np.asarray(scores, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))
