"""Image retrieval: rank a gallery by global cosine, then re-rank a shortlist by DeepEMD.

    index = GalleryIndex.from_features(paths, fmaps)       # fmaps: (N, C, H, W) float32
    for hit in rank_gallery(index, query_fmap, top_k=10, shortlist=50):
        print(hit.rank, hit.path, hit.score, hit.global_score)

Stage 1 ranks every gallery image by the cosine of global features: pooled feature maps
centred on the gallery mean and L2-normalised (as SimpleShot does for classes). Stage 2
matches the query against the ``shortlist`` best of them by EMD (:mod:`emdcli.matching`)
and sorts those by the EMD score (``rerank="emd"``) or by EMD score plus ``global_weight``
times the global cosine (``rerank="emd+global"``); ``rerank="none"`` keeps the global order. Images past the
shortlist follow the re-ranked ones in their global order, without an EMD score.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .. import defaults
from ..errors import DatasetError
from ..features.source import FeatureSource, Progress, Skipped
from ..io.files import display_path
from ..io.records import Record, rounded
from ..matching.nodes import ClassBank, Nodes
from ..matching.simpleshot import normalised, pooled

Rerank = defaults.RerankName
RERANKS: tuple[str, ...] = defaults.RERANKS


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
        return cls(paths=tuple(Path(p) for p in paths), bank=bank, centre=centre, globals=normalised(g, centre))

    @property
    def size(self) -> int:
        return len(self.paths)

    def global_similarities(self, query_fmap: np.ndarray) -> np.ndarray:
        """(N,) float64 cosine in [-1, 1] between the query's global feature and each image's."""
        return np.asarray(self.globals @ normalised(pooled(query_fmap), self.centre))

    def emd_scores(self, query: Nodes, picked: np.ndarray) -> np.ndarray:
        """(len(picked),) float64 EMD scores in [-1, 1] of ``query`` against the images ``picked``."""
        picked = np.asarray(picked, dtype=np.intp)
        if picked.size == 0:
            return np.empty(0, dtype=np.float64)
        return np.asarray(self.bank.scores(query, only=picked)[picked])


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


def rank_gallery(
    index: GalleryIndex,
    query_fmap: np.ndarray,
    *,
    top_k: int = defaults.SEARCH_TOP_K,
    shortlist: int = defaults.SEARCH_SHORTLIST,
    rerank: Rerank = defaults.RERANK,  # type: ignore[assignment]
    exclude: int | Sequence[int] | None = None,
    global_weight: float = defaults.RERANK_GLOBAL_WEIGHT,
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


@dataclass(frozen=True)
class QueryHits:
    """One query's hits, best first; ``error`` says why an unreadable query has none."""

    query: Path
    hits: tuple[Hit, ...]
    error: str | None = None

    #: The columns of :meth:`to_records`, in order (an unreadable query's record has only some).
    COLUMNS: ClassVar[tuple[str, ...]] = ("query", "rank", "path", "score", "global_score", "status", "error")

    def to_records(self) -> list[Record]:
        """``search``'s rows: one per hit, scores rounded to SCORE_DIGITS, paths as shown; or one
        ``status=error`` record for an unreadable query."""
        q = display_path(self.query)
        if self.error is not None:
            return [{"query": q, "status": "error", "error": self.error}]
        return [
            {"query": q, "status": "ok", "rank": hit.rank, "path": display_path(hit.path), "score": rounded(hit.score),
             "global_score": rounded(hit.global_score), "error": None}
            for hit in self.hits
        ]  # fmt: skip


@dataclass(frozen=True)
class Gallery:
    """A folder of images made searchable: the index of its readable images, and the skipped ones."""

    index: GalleryIndex
    skipped: tuple[Skipped, ...]
    source: FeatureSource = field(repr=False)

    @classmethod
    def build(cls, source: FeatureSource, paths: list[Path], on_done: Progress | None = None) -> Gallery:
        """Embed ``paths`` through the source's cache. Raises DatasetError when none is readable."""
        found = source.array(paths, on_done)
        if found.features is None:
            raise DatasetError(f"none of the {len(paths)} gallery images could be read")
        return cls(GalleryIndex.from_features(found.paths, found.features), found.skipped, source)

    def search(
        self,
        queries: Iterable[Path],
        *,
        top_k: int = defaults.SEARCH_TOP_K,
        shortlist: int = defaults.SEARCH_SHORTLIST,
        rerank: Rerank = defaults.RERANK,  # type: ignore[assignment]
        on_done: Progress | None = None,
    ) -> Iterator[QueryHits]:
        """Hits for each query path, in input order; a query that is in the gallery is not its own hit."""
        position = {p.resolve(): i for i, p in enumerate(self.index.paths)}
        for item in self.source.embed_now(queries, on_done):
            if item.features is None:
                yield QueryHits(item.path, (), item.error)
                continue
            own = position.get(item.path.resolve())
            hits = rank_gallery(self.index, item.features, top_k=top_k, shortlist=shortlist, rerank=rerank, exclude=own)
            yield QueryHits(item.path, hits)


def search(
    queries: Iterable[Path],
    gallery: Path | Sequence[Path],
    *,
    top_k: int = defaults.SEARCH_TOP_K,
    shortlist: int = defaults.SEARCH_SHORTLIST,
    rerank: Rerank = defaults.RERANK,  # type: ignore[assignment]
    source: FeatureSource | None = None,
) -> list[QueryHits]:
    """Search a gallery (a folder, searched recursively, or a list of image paths) for each query
    image (image files, or folders searched recursively). source: None for the bundled model
    without a cache."""
    from ..io.images import iter_image_files, iter_query_paths

    if source is None:
        from ..model.backbone import load_model

        source = FeatureSource(load_model())
    paths = sorted(iter_image_files(gallery)) if isinstance(gallery, Path) else list(gallery)
    found = Gallery.build(source, paths)
    return list(found.search(iter_query_paths(map(str, queries)), top_k=top_k, shortlist=shortlist, rerank=rerank))
