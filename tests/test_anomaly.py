"""Anomaly scores, leave-one-out calibration and verdicts on small hand-made feature maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emdcli.errors import DatasetError
from emdcli.matching.nodes import Nodes, emd_score
from emdcli.tasks.anomaly import (
    Calibration,
    NormalSet,
    anomaly_scores,
    calibrate,
    judge,
    leave_one_out_scores,
    normal_similarities,
)

C, H, W = 8, 3, 3


def normal_maps(n: int, seed: int = 0, noise: float = 0.1) -> np.ndarray:
    """n maps of one pattern (a ramp over channels at every position) plus noise."""
    rng = np.random.default_rng(seed)
    base = np.broadcast_to(np.linspace(0.0, 1.0, C)[:, None, None], (C, H, W))
    return (base + noise * rng.random((n, C, H, W))).astype(np.float32)


def far_map() -> np.ndarray:
    """The reversed ramp: every node points the other way after centring."""
    return np.broadcast_to(np.linspace(1.0, 0.0, C)[:, None, None], (C, H, W)).astype(np.float32).copy()


def make_set(maps: np.ndarray) -> NormalSet:
    return NormalSet.from_features([Path(f"n{i:02d}.png") for i in range(len(maps))], maps)


def test_a_copy_of_a_normal_image_scores_about_zero() -> None:
    maps = normal_maps(5)
    assert anomaly_scores(make_set(maps), maps[3], k=1) == pytest.approx(0.0, abs=1e-6)


def test_a_far_image_scores_above_every_leave_one_out_score() -> None:
    maps = normal_maps(8)
    normal = make_set(maps)
    far = anomaly_scores(normal, far_map())
    loo = leave_one_out_scores(normal)
    assert far > loo.max()
    assert far > 1.99  # reversed nodes: cosine about -1 everywhere
    cal = calibrate(normal)
    assert judge(cal, far).anomalous


def test_score_is_the_mean_dissimilarity_to_the_k_nearest() -> None:
    maps = normal_maps(6, noise=0.5)
    normal = make_set(maps)
    query = normal_maps(1, seed=11, noise=0.5)[0]
    q = Nodes.from_feature_map(query)
    direct = np.array([emd_score(q, Nodes.from_feature_map(m)) for m in maps])
    assert np.allclose(normal_similarities(normal, query), direct, atol=1e-6)
    nearest = np.sort(1.0 - direct)
    for k in (1, 2, 4):
        assert anomaly_scores(normal, query, k=k) == pytest.approx(nearest[:k].mean(), abs=1e-6)
    assert anomaly_scores(normal, query, k=50) == pytest.approx(nearest.mean(), abs=1e-6)  # capped at n


def test_leave_one_out_scores_each_image_against_the_others() -> None:
    maps = normal_maps(5, noise=0.5)
    normal = make_set(maps)
    loo = leave_one_out_scores(normal, k=2)
    for i in range(5):
        others = make_set(np.delete(maps, i, axis=0))
        assert loo[i] == pytest.approx(anomaly_scores(others, maps[i], k=2), abs=1e-6)


def test_quantile_rule_with_twenty_scores_and_ten_percent_contamination() -> None:
    normal = make_set(normal_maps(20, noise=0.5))
    cal = calibrate(normal, contamination=0.1)
    s = np.sort(cal.scores)
    assert len(s) == 20 and cal.source == "quantile" and cal.contamination == 0.1
    # 0.9 quantile of 20 values: 90% of the way between the 18th and 19th smallest.
    assert cal.threshold == pytest.approx(s[17] + 0.1 * (s[18] - s[17]))
    assert s[17] < cal.threshold < s[18]
    assert cal.flagged_fraction == pytest.approx(0.1)  # exactly the two largest
    assert [judge(cal, x).anomalous for x in s] == [False] * 18 + [True] * 2


def test_zero_contamination_puts_the_threshold_on_the_largest_score() -> None:
    cal = calibrate(make_set(normal_maps(6, noise=0.5)), contamination=0.0)
    assert cal.threshold == pytest.approx(cal.scores.max())
    assert cal.flagged_fraction == 0.0


def test_k_is_capped_at_n_minus_one() -> None:
    maps = normal_maps(3, noise=0.5)
    normal = make_set(maps)
    cal = calibrate(normal, k=10)
    assert cal.k == 2
    assert np.allclose(cal.scores, leave_one_out_scores(normal, k=2))
    assert calibrate(normal, k=1).k == 1


def test_an_explicit_threshold_is_kept() -> None:
    normal = make_set(normal_maps(4, noise=0.5))
    cal = calibrate(normal, threshold=0.25, contamination=0.2)
    assert cal.threshold == 0.25 and cal.source == "explicit"
    assert cal.scores.shape == (4,)
    assert judge(cal, 0.3).anomalous and not judge(cal, 0.25).anomalous
    one = calibrate(make_set(normal_maps(1)), threshold=0.5)  # no leave-one-out possible, none needed
    assert one.scores.size == 0 and one.k == 1 and np.isnan(one.flagged_fraction)


def test_fewer_than_two_normal_images_cannot_be_calibrated() -> None:
    normal = make_set(normal_maps(1))
    with pytest.raises(DatasetError, match="at least 2"):
        calibrate(normal)
    with pytest.raises(DatasetError, match="at least 2"):
        leave_one_out_scores(normal)
    assert anomaly_scores(normal, far_map()) > 1.0  # scoring alone works with one image
    with pytest.raises(DatasetError):
        NormalSet.from_features([], np.empty((0, C, H, W), dtype=np.float32))


def test_bad_arguments_are_refused() -> None:
    normal = make_set(normal_maps(3))
    with pytest.raises(ValueError, match="contamination"):
        calibrate(normal, contamination=1.0)
    with pytest.raises(ValueError, match="contamination"):
        calibrate(normal, contamination=-0.1)
    with pytest.raises(ValueError, match="k must"):
        anomaly_scores(normal, far_map(), k=0)
    with pytest.raises(ValueError, match="k must"):
        calibrate(normal, k=0)
    with pytest.raises(ValueError, match="feature maps"):
        NormalSet.from_features([Path("a.png")], normal_maps(2))


def test_verdict_carries_score_and_threshold() -> None:
    cal = Calibration(threshold=0.4, scores=np.array([0.1, 0.2]), contamination=0.05, k=1, source="explicit")
    v = judge(cal, 0.5)
    assert (v.score, v.threshold, v.anomalous) == (0.5, 0.4, True)
    assert not judge(cal, 0.4).anomalous
