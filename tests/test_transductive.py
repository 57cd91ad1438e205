"""The transductive step on generated node sets: where it must help, where it must not harm, when it
keeps the inductive scores, and that the order of the queries never changes a score."""

from __future__ import annotations

import numpy as np
import pytest

from emdcli.matching.nodes import ClassBank, Nodes
from emdcli.matching.support import ClassNodes, Matcher
from emdcli.matching.transductive import Transduction, prediction_spread, refit_scores, soft_assignment

C, H, W = 24, 3, 3


def class_directions(k: int, seed: int = 0) -> np.ndarray:
    """(k, C) non-negative class directions (backbone features are ReLU outputs)."""
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(size=(k, C))) + 0.2


def maps_near(direction: np.ndarray, n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """(n, C, H, W) feature maps whose every node is ``direction`` plus non-negative noise."""
    base = direction[None, :, None, None] + noise * np.abs(rng.normal(size=(n, C, H, W)))
    return base.astype(np.float32)


def fitted(directions: np.ndarray, shots: int, rng: np.random.Generator, matcher: Matcher) -> ClassNodes:
    return matcher.fit([maps_near(d, shots, 0.5, rng) for d in directions])


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(np.where(np.isnan(scores), -np.inf, scores), axis=1) == labels))


def score(matcher: Matcher, classes: ClassNodes, queries: np.ndarray) -> tuple[np.ndarray, bool]:
    result = matcher.score_set(classes, [matcher.match(classes, q) for q in queries], queries)
    return result.scores, result.ran


def test_prediction_spread_by_hand() -> None:
    one_class = np.tile([1.0, 0.0, 0.0, 0.0], (6, 1))
    assert prediction_spread(one_class) == 0.0
    assert prediction_spread(np.eye(4)) == pytest.approx(1.0)
    two_of_four = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]] * 3)
    assert prediction_spread(two_of_four) == pytest.approx(np.log(2) / np.log(4))
    assert prediction_spread(np.array([[np.nan, 0.1, 0.2], [0.5, np.nan, 0.1]])) == pytest.approx(np.log(2) / np.log(3))


def test_soft_assignment_gives_nan_classes_nothing() -> None:
    p = soft_assignment(np.array([[0.2, np.nan, 0.1]]), temperature=10.0)
    assert p[0, 1] == 0.0 and p.sum() == pytest.approx(1.0)
    assert p[0, 0] / p[0, 2] == pytest.approx(np.exp(1.0))


def test_a_class_whose_queries_are_shifted_from_its_support_is_found() -> None:
    """Class 0's queries lie between its example and class 1's: matched one by one many go to class 1;
    matched as a set, class 0 moves toward its queries and gets them back."""
    rng = np.random.default_rng(3)
    dirs = class_directions(4)
    matcher = Matcher(global_weight=0.5)
    classes = fitted(dirs, 1, rng, matcher)
    shifted = 0.5 * dirs[0] + 0.5 * dirs[1]
    queries = np.concatenate([maps_near(shifted, 12, 0.5, rng)] + [maps_near(d, 12, 0.5, rng) for d in dirs[1:]])
    labels = np.repeat(np.arange(4), 12)
    inductive, _ = score(Matcher(global_weight=0.5, transductive=False), classes, queries)
    transductive, ran = score(matcher, classes, queries)
    assert ran
    class0 = labels == 0
    assert accuracy(inductive[class0], labels[class0]) <= 0.25  # the shift is real: class 0 is lost
    assert accuracy(inductive[~class0], labels[~class0]) == 1.0
    assert accuracy(transductive[class0], labels[class0]) >= 0.9  # matched as a set it is found
    assert accuracy(transductive, labels) >= 0.95


def test_well_separated_classes_are_not_harmed() -> None:
    rng = np.random.default_rng(5)
    dirs = np.eye(3).repeat(C // 3, axis=1) * 3.0 + 0.1  # each class owns its own channels
    matcher = Matcher(global_weight=0.5)
    classes = fitted(dirs, 1, rng, matcher)
    queries = np.concatenate([maps_near(d, 6, 0.3, rng) for d in dirs])
    labels = np.repeat(np.arange(3), 6)
    inductive, _ = score(Matcher(global_weight=0.5, transductive=False), classes, queries)
    transductive, ran = score(matcher, classes, queries)
    assert ran and not np.allclose(transductive, inductive)  # the step ran and moved the scores ...
    assert accuracy(inductive, labels) == accuracy(transductive, labels) == 1.0  # ... and lost nothing


def test_queries_of_one_class_keep_the_inductive_scores() -> None:
    rng = np.random.default_rng(7)
    dirs = class_directions(4)
    matcher = Matcher(global_weight=0.5)
    classes = fitted(dirs, 1, rng, matcher)
    queries = maps_near(dirs[2], 10, 0.3, rng)
    inductive, _ = score(Matcher(global_weight=0.5, transductive=False), classes, queries)
    transductive, ran = score(matcher, classes, queries)
    assert not ran
    assert np.array_equal(transductive, inductive)
    single, ran_single = score(matcher, classes, queries[:1])
    assert not ran_single and np.array_equal(single, inductive[:1])


@pytest.mark.parametrize(("shots", "shortlist"), [(1, 0), (3, 0), (1, 3)])
def test_the_order_of_the_queries_changes_no_score(shots: int, shortlist: int) -> None:
    rng = np.random.default_rng(11)
    dirs = class_directions(5)
    matcher = Matcher(shortlist=shortlist)
    classes = fitted(dirs, shots, rng, matcher)
    queries = np.concatenate([maps_near(0.7 * d + 0.3 * dirs[(i + 1) % 5], 4, 0.6, rng) for i, d in enumerate(dirs)])
    forward, ran = score(matcher, classes, queries)
    perm = rng.permutation(len(queries))
    shuffled, _ = score(matcher, classes, queries[perm])
    assert ran
    assert np.array_equal(shuffled, forward[perm], equal_nan=True)
    if shortlist:
        assert (np.isnan(forward).sum(axis=1) == 5 - shortlist).all()


def test_refit_matches_against_the_mean_of_examples_and_weighted_queries() -> None:
    """One query fully assigned to class 0 and one half to each class: each class's refitted map is
    (its example + the weighted queries) / (1 + their weights), matched by plain EMD."""
    rng = np.random.default_rng(2)
    dirs = class_directions(2)
    classes = Matcher().fit([maps_near(d, 1, 0.4, rng) for d in dirs])
    queries = np.concatenate([maps_near(dirs[0], 1, 0.4, rng), maps_near(dirs[1], 1, 0.4, rng)])
    assign = np.array([[1.0, 0.0], [0.5, 0.5]])
    got = refit_scores(classes, queries, assign, np.ones((2, 2), bool))
    example = classes.map_sums  # (2, H*W, C): one example each
    nodes = queries.reshape(2, C, -1).transpose(0, 2, 1).astype(np.float64)
    refitted = [(example[0] + nodes[0] + 0.5 * nodes[1]) / 2.5, (example[1] + 0.5 * nodes[1]) / 1.5]
    bank = ClassBank.from_nodes([Nodes.from_feature_map(m.astype(np.float32)) for m in refitted])
    want = np.stack([bank.scores(Nodes.from_feature_map(n.astype(np.float32))) for n in nodes])
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_sfc_classes_keep_their_node_sets() -> None:
    """Classes fitted by SFC are moved by the pooled rounds only: without the global term the
    transductive scores are the inductive EMD scores."""
    rng = np.random.default_rng(4)
    dirs = class_directions(3)
    matcher = Matcher(kshot="sfc", global_weight=0.0)
    classes = fitted(dirs, 3, rng, matcher)
    assert classes.kshot == "sfc"
    queries = np.concatenate([maps_near(d, 4, 0.5, rng) for d in dirs])
    inductive, _ = score(Matcher(kshot="sfc", global_weight=0.0, transductive=False), classes, queries)
    transductive, ran = score(matcher, classes, queries)
    assert ran and np.array_equal(transductive, inductive)


def test_without_maps_there_is_no_refit() -> None:
    rng = np.random.default_rng(6)
    dirs = class_directions(3)
    classes = Matcher().fit([maps_near(d, 1, 0.4, rng) for d in dirs])
    queries = np.concatenate([maps_near(d, 4, 0.5, rng) for d in dirs])
    matcher = Matcher(global_weight=0.0)
    parts = [matcher.match(classes, q) for q in queries]
    no_maps = matcher.score_set(classes, parts).scores  # w = 0 and no refit: the EMD scores themselves
    np.testing.assert_array_equal(no_maps, np.stack([p.emd for p in parts]))
    assert not np.array_equal(matcher.score_set(classes, parts, queries).scores, no_maps)


def test_settings_are_checked_where_used() -> None:
    step = Transduction(min_spread=1.01)  # never spread enough: always inductive
    rng = np.random.default_rng(8)
    dirs = class_directions(3)
    classes = Matcher().fit([maps_near(d, 1, 0.4, rng) for d in dirs])
    queries = np.concatenate([maps_near(d, 3, 0.4, rng) for d in dirs])
    matcher = Matcher(transduction=step)
    _, ran = score(matcher, classes, queries)
    assert not ran
