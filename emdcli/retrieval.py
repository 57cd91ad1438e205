"""Image retrieval: rank a gallery by global cosine, then re-rank a shortlist by DeepEMD.

    index = GalleryIndex.from_features(paths, fmaps)       # fmaps: (N, C, H, W) float32
    for hit in search(index, query_fmap, top_k=10, shortlist=50):
        print(hit.rank, hit.path, hit.score, hit.global_score)

Stage 1 ranks every gallery image by the cosine of global features: pooled feature maps
centred on the gallery mean and L2-normalised (as SimpleShot does for classes). Stage 2
matches the query against the ``shortlist`` best of them by EMD (:mod:`emdcli.matching`)
and sorts those by the EMD score (``rerank="emd"``) or by EMD score plus ``global_weight``
times the global cosine (``rerank="emd+global"``); ``rerank="none"`` keeps the global order. Images past the
shortlist follow the re-ranked ones in their global order, without an EMD score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import DatasetError
from .fewshot import pooled
from .matching import ClassBank, Nodes, l2_normalise

Rerank = Literal["emd", "emd+global", "none"]
RERANKS: tuple[str, ...] = ("emd", "emd+global", "none")
#: How many of the globally closest images are re-ranked by EMD unless told otherwise.
DEFAULT_SHORTLIST = 50
#: Weight of the global cosine added to the EMD score by ``rerank="emd+global"``.
GLOBAL_WEIGHT = 1.0


@dataclass(frozen=True)
class GalleryIndex:
    """The images a query is searched against.

    paths: the N gallery images, in the order of every array below.
    bank: their (H*W, C) node sets stacked for EMD scoring.
    centre: (C,) float64 mean of the pooled gallery features.
    globals: (N, C) float64 pooled features centred on ``centre``, L2-normalised.
    """

    paths: tuple[Path, ...]
    bank: ClassBank = field(repr=False)
    centre: np.ndarray = field(repr=False)
    globals: np.ndarray = field(repr=False)

    @classmethod
    def from_features(cls, paths: Sequence[Path], fmaps: np.ndarray | Sequence[np.ndarray]) -> GalleryIndex:
        """Build from N paths and their (N, C, H, W) float32 feature maps (all of one shape).

        Raises DatasetError for an empty gallery, ValueError when the counts or shapes disagree.
        """
        if len(paths) == 0:
            raise DatasetError("the gallery holds no images")
        arr = np.asarray(fmaps, dtype=np.float32)
        if arr.ndim != 4 or arr.shape[0] != len(paths):
            raise ValueError(f"expected ({len(paths)}, C, H, W) feature maps, got shape {arr.shape}")
        g = pooled(arr)
        centre = g.mean(axis=0)
        bank = ClassBank.from_nodes([Nodes.from_feature_map(f) for f in arr])
        return cls(paths=tuple(Path(p) for p in paths), bank=bank, centre=centre, globals=l2_normalise(g - centre))

    @property
    def size(self) -> int:
        return len(self.paths)

    def global_similarities(self, query_fmap: np.ndarray) -> np.ndarray:
        """(N,) float64 cosine in [-1, 1] between the query's global feature and each image's."""
        q = pooled(np.asarray(query_fmap, dtype=np.float32)) - self.centre
        return self.globals @ l2_normalise(q)

    def emd_scores(self, query: Nodes, picked: np.ndarray) -> np.ndarray:
        """(len(picked),) float64 EMD scores in [-1, 1] of ``query`` against the images ``picked``."""
        picked = np.asarray(picked, dtype=np.intp)
        if picked.size == 0:
            return np.empty(0, dtype=np.float64)
        return self.bank.scores(query, only=picked)[picked]


@dataclass(frozen=True)
class Hit:
    """One retrieved image.

    rank: 1-based position, best first. score: what the ranking sorted by (the EMD score
    in [-1, 1], EMD + ``global_weight`` x global cosine, or the global cosine with ``rerank="none"``);
    None for an image past the shortlist. global_score: its global cosine in [-1, 1].
    """

    rank: int
    path: Path
    score: float | None
    global_score: float


def search(
    index: GalleryIndex,
    query_fmap: np.ndarray,
    *,
    top_k: int = 10,
    shortlist: int = DEFAULT_SHORTLIST,
    rerank: Rerank = "emd",
    exclude: int | Sequence[int] | None = None,
    global_weight: float = GLOBAL_WEIGHT,
) -> tuple[Hit, ...]:
    """The ``top_k`` gallery images closest to a (C, H, W) query feature map, best first.

    shortlist: how many of the globally closest images are re-ranked; 0 re-ranks the whole
    gallery. exclude: gallery positions never returned (the query itself, when it is in the
    gallery). global_weight: the cosine's weight for ``rerank="emd+global"``. Fewer than
    ``top_k`` hits come back when the gallery is smaller.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if shortlist < 0:
        raise ValueError(f"shortlist must be 0 (all) or more, got {shortlist}")
    if rerank not in RERANKS:
        raise ValueError(f"unknown rerank {rerank!r}; expected one of {', '.join(RERANKS)}")
    sims = index.global_similarities(query_fmap)
    keep = np.ones(index.size, dtype=bool)
    if exclude is not None:
        keep[np.atleast_1d(np.asarray(exclude, dtype=np.intp))] = False
    order = np.flatnonzero(keep)
    order = order[np.argsort(-sims[order], kind="stable")]
    if rerank == "none":
        head, head_scores = order[:top_k], sims[order[:top_k]]
        tail = order[:0]
    else:
        n_short = len(order) if shortlist == 0 else min(shortlist, len(order))
        head = order[:n_short]
        head_scores = index.emd_scores(Nodes.from_feature_map(query_fmap), head)
        if rerank == "emd+global":
            head_scores = head_scores + global_weight * sims[head]
        best = np.argsort(-head_scores, kind="stable")[:top_k]
        head, head_scores = head[best], head_scores[best]
        tail = order[n_short : n_short + top_k - len(head)]
    hits = [
        Hit(rank=r, path=index.paths[i], score=float(s), global_score=float(sims[i]))
        for r, (i, s) in enumerate(zip(head, head_scores, strict=True), start=1)
    ]
    hits += [
        Hit(rank=r, path=index.paths[i], score=None, global_score=float(sims[i]))
        for r, i in enumerate(tail, start=len(hits) + 1)
    ]
    return tuple(hits)
