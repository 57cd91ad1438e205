"""DeepEMD matching: weights, costs and scores on problems that can be checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from emdcli.matching.nodes import (
    WEIGHT_EPS,
    ClassBank,
    Nodes,
    cost_matrix,
    cross_reference_weights,
    emd_score,
    match,
    score_matrix,
    softmax_confidence,
)


def random_map(seed: int, c: int = 16, h: int = 3, w: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((c, h, w)).astype(np.float32)


def test_nodes_from_feature_map_shapes_and_centring() -> None:
    fmap = random_map(0, c=16, h=3, w=4)
    nodes = Nodes.from_feature_map(fmap)
    assert nodes.raw.shape == (12, 16)
    assert np.allclose(nodes.raw[5], fmap[:, 1, 1])  # row-major positions
    assert np.allclose(nodes.unit.mean(axis=1), 0, atol=1e-6)
    assert np.allclose(np.linalg.norm(nodes.unit, axis=1), 1, atol=1e-5)


def test_cross_reference_weights_follow_the_formula() -> None:
    a = Nodes.from_feature_map(np.array([[1.0, 0.0], [0.0, 2.0]]))  # (n=2, C=2)
    b = Nodes.from_feature_map(np.array([[1.0, 1.0], [3.0, -1.0]]))
    wa, wb = cross_reference_weights(a, b)
    mean_b = np.array([2.0, 0.0])
    mean_a = np.array([0.5, 1.0])
    raw_a = np.maximum([1 * mean_b[0], 2 * mean_b[1]], 0) + WEIGHT_EPS
    raw_b = np.maximum([1 * 0.5 + 1 * 1.0, 3 * 0.5 - 1 * 1.0], 0) + WEIGHT_EPS
    assert np.allclose(wa, raw_a / raw_a.sum())
    assert np.allclose(wb, raw_b / raw_b.sum())
    assert np.allclose(mean_a, a.mean)


def test_identical_node_sets_score_highest() -> None:
    maps = [random_map(s) for s in range(5)]
    query = Nodes.from_feature_map(maps[0])
    scores = score_matrix([query], [Nodes.from_feature_map(m) for m in maps])[0]
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert int(np.argmax(scores)) == 0
    assert (scores[1:] < scores[0] - 1e-3).all()


@pytest.mark.parametrize("weighting", ["uniform", "cross"])
def test_permuted_feature_map_scores_like_the_original(weighting: str) -> None:
    fmap = random_map(1, h=4, w=4)
    other = Nodes.from_feature_map(random_map(2, h=4, w=4))
    nodes = Nodes.from_feature_map(fmap)
    perm = np.random.default_rng(3).permutation(16)
    shuffled = Nodes.from_feature_map(nodes.raw[perm])
    assert emd_score(shuffled, other, weighting=weighting) == pytest.approx(
        emd_score(nodes, other, weighting=weighting),
        abs=1e-6,  # float32 features
    )
    assert emd_score(shuffled, nodes, weighting=weighting) == pytest.approx(1.0, abs=1e-6)


def test_score_is_flow_weighted_cosine() -> None:
    a = Nodes.from_feature_map(random_map(4))
    b = Nodes.from_feature_map(random_map(5))
    m = match(a, b)
    cos = a.unit.astype(np.float64) @ b.unit.T.astype(np.float64)
    assert m.score == pytest.approx(float((m.flow * cos).sum()), abs=1e-6)
    assert m.flow.sum() == pytest.approx(1.0)
    assert np.allclose(m.flow.sum(axis=1), m.weights_a)


def test_l2_cost_is_distance_of_unit_vectors() -> None:
    a = Nodes.from_feature_map(random_map(6))
    b = Nodes.from_feature_map(random_map(7))
    d = cost_matrix(a, b, "l2")
    direct = np.linalg.norm(a.unit[:, None, :] - b.unit[None, :, :], axis=-1)
    assert np.allclose(d, direct, atol=1e-5)
    assert emd_score(a, a, "l2") == pytest.approx(1.0, abs=1e-3)


def test_unknown_metric_and_weighting_are_refused() -> None:
    a = Nodes.from_feature_map(random_map(0))
    with pytest.raises(ValueError, match="unknown metric"):
        cost_matrix(a, a, "manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown weighting"):
        match(a, a, weighting="random")  # type: ignore[arg-type]


def test_softmax_confidence_sums_to_one_and_keeps_order() -> None:
    conf = softmax_confidence(np.array([[0.2, 0.5, 0.4]]))
    assert conf.sum() == pytest.approx(1.0)
    assert list(np.argsort(-conf[0])) == [1, 2, 0]
    assert conf[0, 1] / conf[0, 2] == pytest.approx(np.exp(12.5 * 0.1))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_class_bank_scores_equal_pairwise_scores(metric: str) -> None:
    query = Nodes.from_feature_map(random_map(10))
    classes = [Nodes.from_feature_map(random_map(s)) for s in range(11, 15)]
    bank = ClassBank.from_nodes(classes)
    expected = score_matrix([query], classes, metric)[0]  # type: ignore[arg-type]
    assert np.allclose(bank.scores(query, metric), expected, atol=1e-9)  # type: ignore[arg-type]
    some = bank.scores(query, metric, only=np.array([2, 0]))  # type: ignore[arg-type]
    assert np.isnan(some[[1, 3]]).all() and np.allclose(some[[0, 2]], expected[[0, 2]], atol=1e-9)


def test_class_bank_needs_equal_node_counts() -> None:
    with pytest.raises(ValueError, match="same number of nodes"):
        ClassBank.from_nodes([Nodes.from_feature_map(random_map(0, h=2)), Nodes.from_feature_map(random_map(1))])


def test_broken_features_are_refused_not_scored() -> None:
    from emdcli.errors import TransportError

    bad = random_map(0)
    bad[0, 0, 0] = np.nan
    bank = ClassBank.from_nodes([Nodes.from_feature_map(random_map(1)), Nodes.from_feature_map(random_map(2))])
    with pytest.raises(TransportError, match="NaN or infinite"):
        bank.scores(Nodes.from_feature_map(bad))
