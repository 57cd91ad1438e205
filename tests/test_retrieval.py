"""Retrieval: global shortlist, then EMD re-ranking, on small hand-made feature maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emdcli.defaults import RERANK_GLOBAL_WEIGHT as GLOBAL_WEIGHT
from emdcli.errors import DatasetError
from emdcli.matching.nodes import Nodes, emd_score
from emdcli.tasks.search import GalleryIndex, Hit, rank_gallery


def gallery_maps(n: int = 12, seed: int = 0, c: int = 8, h: int = 3, w: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((n, c, h, w)).astype(np.float32)


def make_index(maps: np.ndarray) -> GalleryIndex:
    return GalleryIndex.from_features([Path(f"g{i:02d}.png") for i in range(len(maps))], maps)


def expected_cosines(maps: np.ndarray, query: np.ndarray) -> np.ndarray:
    g = maps.astype(np.float64).mean(axis=(2, 3))
    centre = g.mean(axis=0)
    g = g - centre
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = query.astype(np.float64).mean(axis=(1, 2)) - centre
    return g @ (q / np.linalg.norm(q))


def positions(hits: tuple[Hit, ...]) -> list[int]:
    return [int(h.path.stem[1:]) for h in hits]


def test_index_holds_centred_unit_global_features() -> None:
    maps = gallery_maps()
    index = make_index(maps)
    assert index.size == 12
    assert index.globals.shape == (12, 8)
    assert np.allclose(np.linalg.norm(index.globals, axis=1), 1.0)
    assert np.allclose(index.centre, maps.mean(axis=(0, 2, 3)), atol=1e-6)
    assert index.bank.size == 12 and index.bank.nodes_per_class == 9


def test_stage_one_order_is_the_global_cosine_order() -> None:
    maps = gallery_maps()
    query = gallery_maps(1, seed=1)[0]
    cos = expected_cosines(maps, query)
    hits = rank_gallery(make_index(maps), query, top_k=12, rerank="none")
    assert positions(hits) == list(np.argsort(-cos, kind="stable"))
    assert [h.rank for h in hits] == list(range(1, 13))
    for h in hits:
        assert h.score == pytest.approx(h.global_score)
        assert h.global_score == pytest.approx(cos[int(h.path.stem[1:])])


def test_emd_reranks_the_shortlist_by_emd_score_and_keeps_the_rest_in_global_order() -> None:
    maps = gallery_maps()
    query = gallery_maps(1, seed=2)[0]
    cos = expected_cosines(maps, query)
    global_order = list(np.argsort(-cos, kind="stable"))
    q = Nodes.from_feature_map(query)
    emd = {i: emd_score(q, Nodes.from_feature_map(maps[i])) for i in range(12)}
    hits = rank_gallery(make_index(maps), query, top_k=12, shortlist=5, rerank="emd")
    head, tail = hits[:5], hits[5:]
    assert set(positions(head)) == set(global_order[:5])
    assert positions(head) == sorted(global_order[:5], key=lambda i: -emd[i])
    for h in head:
        assert h.score == pytest.approx(emd[int(h.path.stem[1:])], abs=1e-6)
    assert positions(tail) == global_order[5:]
    assert all(h.score is None for h in tail)
    assert [h.rank for h in hits] == list(range(1, 13))


def test_emd_plus_global_adds_the_cosine() -> None:
    maps = gallery_maps()
    query = gallery_maps(1, seed=3)[0]
    cos = expected_cosines(maps, query)
    q = Nodes.from_feature_map(query)
    combined = {i: emd_score(q, Nodes.from_feature_map(maps[i])) + GLOBAL_WEIGHT * cos[i] for i in range(12)}
    hits = rank_gallery(make_index(maps), query, top_k=12, shortlist=0, rerank="emd+global")
    assert positions(hits) == sorted(range(12), key=lambda i: -combined[i])
    for h in hits:
        assert h.score == pytest.approx(combined[int(h.path.stem[1:])], abs=1e-6)
    half = rank_gallery(make_index(maps), query, top_k=12, shortlist=0, rerank="emd+global", global_weight=0.5)
    for h in half:
        i = int(h.path.stem[1:])
        assert h.score == pytest.approx(combined[i] - 0.5 * cos[i], abs=1e-6)


def test_shortlist_zero_reranks_the_whole_gallery() -> None:
    maps = gallery_maps()
    query = gallery_maps(1, seed=4)[0]
    q = Nodes.from_feature_map(query)
    emd = [emd_score(q, Nodes.from_feature_map(m)) for m in maps]
    hits = rank_gallery(make_index(maps), query, top_k=12, shortlist=0, rerank="emd")
    assert positions(hits) == list(np.argsort(-np.asarray(emd), kind="stable"))
    assert all(h.score is not None for h in hits)


def test_top_k_cuts_and_a_larger_top_k_returns_the_whole_gallery() -> None:
    maps = gallery_maps(6)
    index = make_index(maps)
    query = gallery_maps(1, seed=5)[0]
    assert [h.rank for h in rank_gallery(index, query, top_k=3, shortlist=2)] == [1, 2, 3]
    for rerank in ("emd", "emd+global", "none"):
        hits = rank_gallery(index, query, top_k=100, shortlist=4, rerank=rerank)  # type: ignore[arg-type]
        assert sorted(positions(hits)) == list(range(6))
        assert [h.rank for h in hits] == list(range(1, 7))
    assert len(rank_gallery(index, query, top_k=100, shortlist=100)) == 6  # shortlist past the gallery


def test_a_copy_of_a_gallery_image_finds_it_first_and_exclude_drops_it() -> None:
    maps = gallery_maps()
    index = make_index(maps)
    hits = rank_gallery(index, maps[7], top_k=3, rerank="emd")
    assert hits[0].path == Path("g07.png")
    assert hits[0].score == pytest.approx(1.0, abs=1e-6)
    assert hits[0].global_score == pytest.approx(1.0)
    rest = rank_gallery(index, maps[7], top_k=20, exclude=7)
    assert len(rest) == 11 and Path("g07.png") not in [h.path for h in rest]
    assert len(rank_gallery(index, maps[7], top_k=20, exclude=[0, 7], rerank="none")) == 10


def test_a_one_image_gallery_returns_it() -> None:
    maps = gallery_maps(1)
    hits = rank_gallery(make_index(maps), gallery_maps(1, seed=9)[0], top_k=5)
    assert [h.rank for h in hits] == [1] and hits[0].path == Path("g00.png")


def test_bad_arguments_are_refused() -> None:
    maps = gallery_maps(4)
    index = make_index(maps)
    with pytest.raises(ValueError, match="top_k"):
        rank_gallery(index, maps[0], top_k=0)
    with pytest.raises(ValueError, match="shortlist"):
        rank_gallery(index, maps[0], shortlist=-1)
    with pytest.raises(ValueError, match="rerank"):
        rank_gallery(index, maps[0], rerank="bogus")  # type: ignore[arg-type]
    with pytest.raises(DatasetError):
        GalleryIndex.from_features([], np.empty((0, 8, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="feature maps"):
        GalleryIndex.from_features([Path("a.png")], maps)
