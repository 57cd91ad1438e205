"""Few-shot methods that score one episode: the SimpleShot baseline, DeepEMD and its variants.

Every method maps an episode's feature maps to scores (higher is closer):

    support: (way, shot, C, H, W) float32 feature maps, class i in row i
    query:   (n, C, H, W) float32 feature maps
    returns: (n, way) float64 scores; the prediction is the argmax of a row

Methods are registered in :data:`METHODS` under the names ``emdcli evaluate --methods``
takes. Those that match like classify go through :class:`emdcli.matching.support.Matcher`,
the same code classify runs. They never print and never touch files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import defaults
from ..matching.nodes import ClassBank, Nodes, l2_normalise
from ..matching.simpleshot import simpleshot_scores
from ..matching.support import EpisodeMemo, Matcher

ScoreFn = Callable[..., np.ndarray]  # (support, query, memo=None) -> (n, way) scores

#: Grids of the extra pooled nodes of ``emd-pyramid`` (DeepEMD v2's feature pyramid).
PYRAMID_GRIDS: tuple[int, ...] = (2, 3)


@dataclass(frozen=True)
class FewShotMethod:
    """A named way to score an episode (see the module docstring for shapes)."""

    name: str
    summary: str
    score: ScoreFn
    kshot_only: bool = False


def matcher_method(matcher: Matcher) -> ScoreFn:
    """A method that fits ``matcher`` to the episode's support set and scores its queries, as
    classify does; parts shared with other methods come from the episode's memo."""

    def score(support: np.ndarray, query: np.ndarray, memo: EpisodeMemo | None = None) -> np.ndarray:
        return matcher.scores(matcher.fit_episode(support, memo), query, memo)

    return score


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


def variant_scores(
    support: np.ndarray, query: np.ndarray, *, pyramid: bool = False, episode_centre: bool = False
) -> np.ndarray:
    """DeepEMD scores (n, way) with node sets other than classify's: the mean feature map of each
    class with extra pyramid nodes, or with nodes centred on the episode's mean support node."""
    to_nodes = pyramid_nodes if pyramid else nodes_of
    class_raw = [to_nodes(m) for m in np.asarray(support, dtype=np.float32).mean(axis=1)]
    query_raw = [to_nodes(q) for q in np.asarray(query, dtype=np.float32)]
    if episode_centre:
        centre = np.concatenate([to_nodes(m) for m in support.reshape(-1, *support.shape[2:])]).mean(axis=0)
        classes = [episode_centred(r, centre) for r in class_raw]
        queries = [episode_centred(r, centre) for r in query_raw]
    else:
        classes = [Nodes.from_feature_map(r) for r in class_raw]
        queries = [Nodes.from_feature_map(r) for r in query_raw]
    bank = ClassBank.from_nodes(classes)
    return np.stack([bank.scores(q) for q in queries])


def _memoised(key: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> ScoreFn:
    def part(support: np.ndarray, query: np.ndarray, memo: EpisodeMemo | None = None) -> np.ndarray:
        return fn(support, query) if memo is None else memo.get(key, lambda: fn(support, query))  # type: ignore[no-any-return]

    return part


def _per_shot(reduce: str) -> ScoreFn:
    """EMD against every shot separately (each shot its own class), then the best or the mean per class."""
    single = Matcher(kshot="mean", global_weight=0.0, shortlist=0, transductive=False)

    def score(support: np.ndarray, query: np.ndarray, memo: EpisodeMemo | None = None) -> np.ndarray:
        way, shot = support.shape[:2]
        flat = support.reshape(way * shot, 1, *support.shape[2:])
        s = matcher_method(single)(flat, query, memo).reshape(len(query), way, shot)
        return np.asarray(s.max(axis=2) if reduce == "max" else s.mean(axis=2))

    return score


def _methods() -> dict[str, FewShotMethod]:
    w = defaults.GLOBAL_WEIGHT
    plain = {"global_weight": 0.0, "shortlist": 0, "transductive": False}  # the fixed methods: each query alone
    with_global = {"global_weight": w, "shortlist": 0, "transductive": False}
    items = [
        FewShotMethod("proto", "SimpleShot: nearest CL2N centroid of pooled features (the baseline)",
                      _memoised("proto", simpleshot_scores)),
        FewShotMethod("default", "exactly what classify does with its defaults (emd+global at 1-shot, emd-sfc "
                      "at k-shot, shortlist, large-support fallback, transductive over the episode's queries)",
                      matcher_method(Matcher())),
        FewShotMethod("default-inductive", "the default with each query matched on its own (no transductive "
                      "step)", matcher_method(Matcher(transductive=False))),
        FewShotMethod("emd", "DeepEMD: cross-reference weights, per-node centring, class = mean feature map",
                      matcher_method(Matcher(kshot="mean", **plain))),  # type: ignore[arg-type]
        FewShotMethod("emd-uniform", "emd with uniform node weights",
                      matcher_method(Matcher(kshot="mean", weighting="uniform", **plain))),  # type: ignore[arg-type]
        FewShotMethod("emd-episode-centre", "emd with nodes centred on the episode's mean support node",
                      _memoised("emd-episode-centre", lambda s, q: variant_scores(s, q, episode_centre=True))),
        FewShotMethod("emd-pyramid", "emd with extra 2x2 and 3x3 pooled nodes (DeepEMD v2 pyramid)",
                      _memoised("emd-pyramid", lambda s, q: variant_scores(s, q, pyramid=True))),
        FewShotMethod("emd+global", f"emd score + {w:g} x SimpleShot global cosine",
                      matcher_method(Matcher(kshot="mean", **with_global))),  # type: ignore[arg-type]
        FewShotMethod("emd-uniform+global", f"emd-uniform score + {w:g} x global cosine",
                      matcher_method(Matcher(kshot="mean", weighting="uniform", **with_global))),  # type: ignore[arg-type]
        FewShotMethod("emd-sfc", "emd, k-shot class node set fitted by DeepEMD's SFC",
                      matcher_method(Matcher(kshot="sfc", **plain)), kshot_only=True),  # type: ignore[arg-type]
        FewShotMethod("emd-sfc+global", f"emd-sfc score + {w:g} x global cosine",
                      matcher_method(Matcher(kshot="sfc", **with_global)), kshot_only=True),  # type: ignore[arg-type]
        FewShotMethod("emd-best-shot", "emd against each shot, best shot per class", _per_shot("max"),
                      kshot_only=True),
        FewShotMethod("emd-mean-shot", "emd against each shot, mean over the shots", _per_shot("mean"),
                      kshot_only=True),
    ]  # fmt: skip
    return {m.name: m for m in items}


#: Every method by name; ``proto`` is the baseline the others are compared with.
METHODS: dict[str, FewShotMethod] = _methods()
BASELINE = "proto"
