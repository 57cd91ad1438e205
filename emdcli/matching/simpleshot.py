"""SimpleShot global features (Wang et al., 2019, "CL2N"): the one place they are computed.

A feature map's global feature is its average pool over positions. Features are centred
on a reference mean (the support set's, or the gallery's) and L2-normalised; a class's
centroid is the mean of its examples' normalised features, normalised again. The global
cosine between a query and a class is the dot product of the two. classify adds it to the
EMD score, search ranks by it before re-ranking, and ``proto`` classifies by it alone.
"""

from __future__ import annotations

import numpy as np

from .nodes import l2_normalise


def pooled(fmaps: np.ndarray) -> np.ndarray:
    """(..., C, H, W) -> (..., C) float64 global average pool."""
    return np.asarray(np.asarray(fmaps, dtype=np.float64).mean(axis=(-2, -1)))


def normalised(features: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(..., C) pooled features centred on the (C,) ``centre`` and L2-normalised: (..., C) float64."""
    return np.asarray(l2_normalise(np.asarray(features, dtype=np.float64) - centre))


def centroids(pooled_shots: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The centre (C,): the mean of every example; and the classes' centroids (K, C): the mean
    of each class's normalised examples, normalised again. pooled_shots: one (shots, C) array per class."""
    centre = np.concatenate(pooled_shots).astype(np.float64).mean(axis=0)
    return centre, np.asarray(l2_normalise(np.stack([normalised(p, centre).mean(axis=0) for p in pooled_shots])))


def simpleshot_scores(support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """SimpleShot's classifier: minus the Euclidean distance of each normalised query to each
    class centroid (unnormalised mean of the normalised examples), higher is closer.

    support: (way, shot, C, H, W) feature maps; query: (n, C, H, W). Returns (n, way) float64.
    """
    way, shot = support.shape[:2]
    s = pooled(support).reshape(way * shot, -1)
    centre = s.mean(axis=0)
    cent = normalised(s, centre).reshape(way, shot, -1).mean(axis=1)
    q = normalised(pooled(query), centre)
    d2 = (q * q).sum(1)[:, None] - 2.0 * q @ cent.T + (cent * cent).sum(1)[None, :]
    return np.asarray(-np.sqrt(np.maximum(d2, 0.0)))
