"""The default's global weight, chosen per support set: classes that look alike overall (their mean
pooled features close) are matched by EMD alone; classes that differ overall keep the global term;
SFC classes never have it; a weight the user gives always wins."""

from __future__ import annotations

import numpy as np
import pytest

from emdcli import defaults
from emdcli.matching.support import Matcher, class_similarity

H = W = 4


def channels(*weights: float) -> np.ndarray:
    """A (C, H, W) map with the same node everywhere."""
    return np.broadcast_to(np.asarray(weights, dtype=np.float32)[:, None, None], (len(weights), H, W)).copy()


def halves(left: tuple[float, ...], right: tuple[float, ...]) -> np.ndarray:
    """A (C, H, W) map whose left columns have node ``left`` and right columns node ``right``."""
    fmap = channels(*left)
    fmap[:, :, W // 2 :] = np.asarray(right, dtype=np.float32)[:, None, None]
    return fmap


def test_class_similarity_is_the_mean_cosine_between_classes() -> None:
    assert class_similarity([np.array([1.0, 0.0]), np.array([2.0, 0.0])]) == pytest.approx(1.0)
    assert class_similarity([np.array([1.0, 0.0]), np.array([0.0, 3.0])]) == pytest.approx(0.0)
    three = [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0])]  # cosines 0, 0.707, 0.707
    assert class_similarity(three) == pytest.approx(np.sqrt(0.5) * 2 / 3)
    assert class_similarity([np.array([1.0, 0.0])]) is None


def test_classes_alike_overall_are_matched_by_emd_alone() -> None:
    """Half red and half blue against all purple: equal pooled features, so only the nodes tell them
    apart; the global term would only add noise, and the default leaves it out."""
    red, blue, purple = (1.0, 0.0, 0.1), (0.0, 1.0, 0.1), (0.5, 0.5, 0.1)
    split, even = halves(red, blue), channels(*purple)
    matcher = Matcher()
    classes = matcher.fit([split[None], even[None]], ["split", "purple"])
    assert classes.similarity == pytest.approx(1.0, abs=1e-6)
    assert matcher.weight_for(classes) == 0.0
    scores = matcher.scores(classes, np.stack([halves(red, blue), channels(*purple)]))
    assert list(np.argmax(scores, axis=1)) == [0, 1]


def test_classes_that_differ_overall_keep_the_global_term() -> None:
    matcher = Matcher()
    classes = matcher.fit([channels(1, 0, 0)[None], channels(0, 1, 0)[None], channels(0, 0, 1)[None]])
    assert classes.similarity == pytest.approx(0.0)
    assert matcher.weight_for(classes) == defaults.GLOBAL_WEIGHT


def test_the_threshold_decides_and_sfc_and_the_users_weight_win() -> None:
    def pair(cosine: float) -> list[np.ndarray]:
        angle = np.arccos(cosine)
        return [channels(1, 0)[None], channels(np.cos(angle), np.sin(angle))[None]]

    below, above = Matcher().fit(pair(defaults.SIMILAR_CLASSES - 0.01)), Matcher().fit(pair(defaults.SIMILAR_CLASSES))
    assert Matcher().weight_for(below) == defaults.GLOBAL_WEIGHT and Matcher().weight_for(above) == 0.0
    assert Matcher(global_weight=0.3).weight_for(above) == 0.3 == Matcher(global_weight=0.3).weight_for(below)
    two_shots = [np.stack([channels(1, 0), channels(0.9, 0.1)]), np.stack([channels(0, 1), channels(0.1, 0.9)])]
    sfc = Matcher().fit(two_shots)
    assert sfc.kshot == "sfc" and Matcher().weight_for(sfc) == defaults.SFC_GLOBAL_WEIGHT
    assert Matcher().fit(two_shots).similarity == sfc.similarity  # deterministic


def test_classify_reports_the_chosen_weight_and_a_flag_wins(tiny_model, support_dir, query_dir) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from emdcli.cli import app

    def run(*extra: str) -> tuple[dict, str]:  # type: ignore[type-arg]
        res = CliRunner().invoke(app, ["classify", str(support_dir), str(query_dir), "--model", str(tiny_model),
                                       "--kshot", "mean", "-f", "json", *extra])  # fmt: skip
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout), res.stderr

    doc, err = run()
    similarity = doc["support_similarity"]
    alike = similarity >= defaults.SIMILAR_CLASSES
    assert doc["global_weight"] == (0.0 if alike else defaults.GLOBAL_WEIGHT)
    assert ("the classes look alike overall" in err) == alike
    doc, err = run("--global-weight", "0.25")
    assert doc["global_weight"] == 0.25 and doc["support_similarity"] == similarity
    assert "look alike" not in err
