"""Few-shot methods that score one episode: the SimpleShot baseline, DeepEMD and its variants.

Every method maps an episode's feature maps to scores (higher is closer):

    support: (way, shot, C, H, W) float32 feature maps, class i in row i
    query:   (n, C, H, W) float32 feature maps
    returns: (n, way) float64 scores; the prediction is the argmax of a row

Methods are registered in :data:`METHODS` under the names ``emdcli evaluate --methods``
takes. They never print and never touch files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .matching import ClassBank, Nodes, Weighting

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

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


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def simpleshot_scores(support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """SimpleShot (CL2N): pooled features centred on the support mean, L2-normalised; the
    score is minus the Euclidean distance to each class centroid. (n, way) float64."""
    way, shot = support.shape[:2]
    s = pooled(support).reshape(way * shot, -1)
    centre = s.mean(axis=0)
    cent = _l2n(s - centre).reshape(way, shot, -1).mean(axis=1)
    q = _l2n(pooled(query) - centre)
    d2 = (q * q).sum(1)[:, None] - 2.0 * q @ cent.T + (cent * cent).sum(1)[None, :]
    return -np.sqrt(np.maximum(d2, 0.0))


def global_cosine(support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine between CL2N query features and each class's normalised CL2N centroid: (n, way)."""
    way, shot = support.shape[:2]
    s = pooled(support).reshape(way * shot, -1)
    centre = s.mean(axis=0)
    cent = _l2n(_l2n(s - centre).reshape(way, shot, -1).mean(axis=1))
    return _l2n(pooled(query) - centre) @ cent.T


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
    unit = _l2n(raw.astype(np.float64) - centre).astype(np.float32)
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


def per_shot_scores(support: np.ndarray, query: np.ndarray, reduce: str) -> np.ndarray:
    """DeepEMD scores against every shot separately, then ``"max"`` or ``"mean"`` per class: (n, way)."""
    way, shot = support.shape[:2]
    flat = support.reshape(way * shot, 1, *support.shape[2:])
    s = emd_scores(flat, query).reshape(len(query), way, shot)
    return s.max(axis=2) if reduce == "max" else s.mean(axis=2)


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


def plus_global(scores: ScoreFn, weight: float = GLOBAL_WEIGHT) -> ScoreFn:
    """``scores`` plus ``weight`` times the SimpleShot global cosine of the same episode."""

    def combined(support: np.ndarray, query: np.ndarray) -> np.ndarray:
        return scores(support, query) + weight * global_cosine(support, query)

    return combined


def emd_uniform_scores(support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """:func:`emd_scores` with uniform node weights: (n, way)."""
    return emd_scores(support, query, weighting="uniform")


emd_plus_global = plus_global(emd_scores)


def _methods() -> dict[str, FewShotMethod]:
    items = [
        FewShotMethod("proto", "SimpleShot: nearest CL2N centroid of pooled features (the baseline)",
                      simpleshot_scores),
        FewShotMethod("emd", "DeepEMD: cross-reference weights, per-node centring, class = mean feature map",
                      emd_scores),
        FewShotMethod("emd-uniform", "emd with uniform node weights", emd_uniform_scores),
        FewShotMethod("emd-episode-centre", "emd with nodes centred on the episode's mean support node",
                      lambda s, q: emd_scores(s, q, centring="episode")),
        FewShotMethod("emd-pyramid", "emd with extra 2x2 and 3x3 pooled nodes (DeepEMD v2 pyramid)",
                      lambda s, q: emd_scores(s, q, to_nodes=pyramid_nodes)),
        FewShotMethod("emd+global", f"emd score + {GLOBAL_WEIGHT:g} x SimpleShot global cosine", emd_plus_global),
        FewShotMethod("emd-uniform+global", f"emd-uniform score + {GLOBAL_WEIGHT:g} x global cosine",
                      plus_global(emd_uniform_scores)),
        FewShotMethod("emd-sfc", "emd, k-shot class node set fitted by DeepEMD's SFC", sfc_scores, kshot_only=True),
        FewShotMethod("emd-sfc+global", f"emd-sfc score + {GLOBAL_WEIGHT:g} x global cosine", plus_global(sfc_scores),
                      kshot_only=True),
        FewShotMethod("emd-best-shot", "emd against each shot, best shot per class",
                      lambda s, q: per_shot_scores(s, q, "max"), kshot_only=True),
        FewShotMethod("emd-mean-shot", "emd against each shot, mean over the shots",
                      lambda s, q: per_shot_scores(s, q, "mean"), kshot_only=True),
    ]  # fmt: skip
    return {m.name: m for m in items}


#: Every method by name; ``proto`` is the baseline the others are compared with.
METHODS: dict[str, FewShotMethod] = _methods()
BASELINE = "proto"
