"""Few-shot methods that score one episode: the SimpleShot baseline, DeepEMD and its variants.

Every method maps an episode's feature maps to scores (higher is closer):

    support: (way, shot, C, H, W) float32 feature maps, class i in row i
    query:   (n, C, H, W) float32 feature maps
    returns: (n, way) float64 scores; the prediction is the argmax of a row

Methods are registered in :data:`METHODS` under the names ``emdcli evaluate --methods``
takes. They never print and never touch files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .matching import ClassBank, Nodes, Weighting, l2_normalise

ScoreFn = Callable[..., np.ndarray]  # (support, query, memo=None) -> (n, way) scores

#: Weight of the global (SimpleShot) cosine added to the EMD score by ``emd+global``.
GLOBAL_WEIGHT = 0.5
#: Grids of the extra pooled nodes of ``emd-pyramid`` (DeepEMD v2's feature pyramid).
PYRAMID_GRIDS: tuple[int, ...] = (2, 3)


@dataclass(frozen=True)
class FewShotMethod:
    """A named way to score an episode (see the module docstring for shapes)."""

    name: str
    summary: str
    score: ScoreFn
    kshot_only: bool = False


def pooled(fmaps: np.ndarray) -> np.ndarray:
    """(..., C, H, W) -> (..., C) float64 global average pool."""
    return np.asarray(fmaps, dtype=np.float64).mean(axis=(-2, -1))


def simpleshot_scores(support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """SimpleShot (CL2N): pooled features centred on the support mean, L2-normalised; the
    score is minus the Euclidean distance to each class centroid. (n, way) float64."""
    way, shot = support.shape[:2]
    s = pooled(support).reshape(way * shot, -1)
    centre = s.mean(axis=0)
    cent = l2_normalise(s - centre).reshape(way, shot, -1).mean(axis=1)
    q = l2_normalise(pooled(query) - centre)
    d2 = (q * q).sum(1)[:, None] - 2.0 * q @ cent.T + (cent * cent).sum(1)[None, :]
    return -np.sqrt(np.maximum(d2, 0.0))


def simpleshot_centroids(pooled_shots: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """SimpleShot's centre (C,): the mean of every example, and the classes' normalised
    centroids (K, C): the mean of each class's centred, L2-normalised examples, normalised
    again. pooled_shots: one (shots, C) array of pooled features per class."""
    centre = np.concatenate(pooled_shots).astype(np.float64).mean(axis=0)
    return centre, l2_normalise(np.stack([l2_normalise(p.astype(np.float64) - centre).mean(axis=0)
                                          for p in pooled_shots]))  # fmt: skip


def global_cosine(support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine between CL2N query features and each class's SimpleShot centroid: (n, way)."""
    centre, centroids = simpleshot_centroids(list(pooled(support)))
    return l2_normalise(pooled(query) - centre) @ centroids.T


def nodes_of(fmap: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H*W, C) float32 nodes."""
    return np.ascontiguousarray(fmap.reshape(fmap.shape[0], -1).T, dtype=np.float32)


def _adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def pyramid_nodes(fmap: np.ndarray, grids: tuple[int, ...] = PYRAMID_GRIDS) -> np.ndarray:
    """(C, H, W) -> (H*W + sum(g*g), C) float32: every position plus adaptively pooled g x g cells."""
    c, h, w = fmap.shape
    extra = []
    for g in grids:
        for y0, y1 in _adaptive_bins(h, g):
            for x0, x1 in _adaptive_bins(w, g):
                extra.append(fmap[:, y0:y1, x0:x1].mean(axis=(1, 2)))
    return np.concatenate([nodes_of(fmap), np.asarray(extra, dtype=np.float32).reshape(-1, c)])


def episode_centred(raw: np.ndarray, centre: np.ndarray) -> Nodes:
    """Nodes of (n, C) ``raw`` whose unit vectors are centred on ``centre`` ((C,), the
    episode's mean support node) instead of on each node's own channel mean."""
    unit = l2_normalise(raw.astype(np.float64) - centre).astype(np.float32)
    return Nodes(raw=raw, unit=unit, mean=raw.mean(axis=0))


def emd_scores(
    support: np.ndarray,
    query: np.ndarray,
    *,
    weighting: Weighting = "cross",
    to_nodes: Callable[[np.ndarray], np.ndarray] = nodes_of,
    centring: str = "node",
) -> np.ndarray:
    """DeepEMD scores with one node set per class, from its mean feature map: (n, way).

    centring: ``"node"`` (each node minus its channel mean, as DeepEMD) or ``"episode"``
    (every node minus the mean support node).
    """
    maps = np.asarray(support, dtype=np.float32).mean(axis=1)
    class_raw = [to_nodes(m) for m in maps]
    query_raw = [to_nodes(q) for q in np.asarray(query, dtype=np.float32)]
    if centring == "episode":
        centre = np.concatenate([to_nodes(m) for m in support.reshape(-1, *support.shape[2:])]).mean(axis=0)
        classes = [episode_centred(r, centre) for r in class_raw]
        queries = [episode_centred(r, centre) for r in query_raw]
    elif centring == "node":
        classes = [Nodes.from_feature_map(r) for r in class_raw]
        queries = [Nodes.from_feature_map(r) for r in query_raw]
    else:
        raise ValueError(f"unknown centring {centring!r}")
    bank = ClassBank.from_nodes(classes)
    return np.stack([bank.scores(q, weighting=weighting) for q in queries])


def per_shot_scores(support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """DeepEMD scores against every shot separately: (n, way, shot)."""
    way, shot = support.shape[:2]
    flat = support.reshape(way * shot, 1, *support.shape[2:])
    return emd_scores(flat, query).reshape(len(query), way, shot)


def sfc_scores(support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """DeepEMD scores against one node set per class fitted by SFC (see :mod:`emdcli.sfc`): (n, way)."""
    from .sfc import fit_sfc

    way, shot = support.shape[:2]
    if shot == 1:
        return emd_scores(support, query)
    shots = np.stack([[nodes_of(f) for f in row] for row in np.asarray(support, dtype=np.float32)])
    fitted = fit_sfc(shots).nodes
    bank = ClassBank.from_nodes([Nodes.from_feature_map(p) for p in fitted])
    return np.stack([bank.scores(Nodes.from_feature_map(nodes_of(q))) for q in np.asarray(query, np.float32)])


class EpisodeMemo:
    """Scores already computed for one episode, so that methods built on the same parts
    (``emd`` and ``emd+global``, the two per-shot reductions) solve each EMD once.

    reused_seconds: the compute time of the entries handed out again since the last reset
    (so that a method's reported time includes the parts it reused).
    """

    def __init__(self) -> None:
        self._store: dict[str, tuple[np.ndarray, float]] = {}
        self.reused_seconds = 0.0

    def get(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if key in self._store:
            scores, seconds = self._store[key]
            self.reused_seconds += seconds
            return scores
        t0 = time.perf_counter()
        scores = compute()
        self._store[key] = (scores, time.perf_counter() - t0)
        return scores


def shared(key: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> ScoreFn:
    """``fn`` as a method part whose result is kept in the episode's memo under ``key``."""

    def part(support: np.ndarray, query: np.ndarray, memo: EpisodeMemo | None = None) -> np.ndarray:
        return fn(support, query) if memo is None else memo.get(key, lambda: fn(support, query))

    return part


def emd_uniform_scores(support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """:func:`emd_scores` with uniform node weights: (n, way)."""
    return emd_scores(support, query, weighting="uniform")


_EMD = shared("emd", emd_scores)
_EMD_UNIFORM = shared("emd-uniform", emd_uniform_scores)
_SFC = shared("emd-sfc", sfc_scores)
_PER_SHOT = shared("per-shot", per_shot_scores)
_GLOBAL = shared("global", global_cosine)


def plus_global(base: ScoreFn, weight: float = GLOBAL_WEIGHT) -> ScoreFn:
    """``base`` plus ``weight`` times the SimpleShot global cosine of the same episode."""

    def combined(support: np.ndarray, query: np.ndarray, memo: EpisodeMemo | None = None) -> np.ndarray:
        return base(support, query, memo) + weight * _GLOBAL(support, query, memo)

    return combined


def _reduced_shots(reduce: str) -> ScoreFn:
    def score(support: np.ndarray, query: np.ndarray, memo: EpisodeMemo | None = None) -> np.ndarray:
        s = _PER_SHOT(support, query, memo)
        return s.max(axis=2) if reduce == "max" else s.mean(axis=2)

    return score


def classify_default(support: np.ndarray, query: np.ndarray, memo: EpisodeMemo | None = None) -> np.ndarray:
    """What ``emdcli classify`` does with its defaults (:mod:`emdcli.defaults`): (n, way) scores."""
    from . import defaults

    kshot = "sfc" if defaults.KSHOT == "sfc" and support.shape[1] > 1 else "mean"
    scores = (_SFC if kshot == "sfc" else _EMD)(support, query, memo)
    weight = defaults.global_weight_for(kshot)
    return scores + weight * _GLOBAL(support, query, memo) if weight else scores


def _methods() -> dict[str, FewShotMethod]:
    items = [
        FewShotMethod("proto", "SimpleShot: nearest CL2N centroid of pooled features (the baseline)",
                      shared("proto", simpleshot_scores)),
        FewShotMethod("default", "what classify does by default: emd+global at 1-shot, emd-sfc at k-shot",
                      classify_default),
        FewShotMethod("emd", "DeepEMD: cross-reference weights, per-node centring, class = mean feature map", _EMD),
        FewShotMethod("emd-uniform", "emd with uniform node weights", _EMD_UNIFORM),
        FewShotMethod("emd-episode-centre", "emd with nodes centred on the episode's mean support node",
                      shared("emd-episode-centre", lambda s, q: emd_scores(s, q, centring="episode"))),
        FewShotMethod("emd-pyramid", "emd with extra 2x2 and 3x3 pooled nodes (DeepEMD v2 pyramid)",
                      shared("emd-pyramid", lambda s, q: emd_scores(s, q, to_nodes=pyramid_nodes))),
        FewShotMethod("emd+global", f"emd score + {GLOBAL_WEIGHT:g} x SimpleShot global cosine", plus_global(_EMD)),
        FewShotMethod("emd-uniform+global", f"emd-uniform score + {GLOBAL_WEIGHT:g} x global cosine",
                      plus_global(_EMD_UNIFORM)),
        FewShotMethod("emd-sfc", "emd, k-shot class node set fitted by DeepEMD's SFC", _SFC, kshot_only=True),
        FewShotMethod("emd-sfc+global", f"emd-sfc score + {GLOBAL_WEIGHT:g} x global cosine", plus_global(_SFC),
                      kshot_only=True),
        FewShotMethod("emd-best-shot", "emd against each shot, best shot per class", _reduced_shots("max"),
                      kshot_only=True),
        FewShotMethod("emd-mean-shot", "emd against each shot, mean over the shots", _reduced_shots("mean"),
                      kshot_only=True),
    ]  # fmt: skip
    return {m.name: m for m in items}


#: Every method by name; ``proto`` is the baseline the others are compared with.
METHODS: dict[str, FewShotMethod] = _methods()
BASELINE = "proto"
