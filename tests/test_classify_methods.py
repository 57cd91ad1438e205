"""classify's scoring options are the evaluate methods of the same names, number for number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emdcli import defaults, fewshot
from emdcli.classify import Classifier
from emdcli.fewshot import simpleshot_centroids
from emdcli.folders import read_labelled_folder
from emdcli.images import load_image
from emdcli.model import Backbone
from tests.conftest import make_folder


@pytest.mark.parametrize(
    ("global_weight", "kshot", "method"),
    [
        (0.0, "mean", "emd"),
        (0.5, "mean", "emd+global"),
        (0.0, "sfc", "emd-sfc"),
        (0.5, "sfc", "emd-sfc+global"),
        (None, None, "default"),
    ],  # fmt: skip
)
def test_classifier_scores_equal_the_method(
    tiny_model: Path, tmp_path: Path, global_weight: float | None, kshot: str | None, method: str
) -> None:
    support_dir = make_folder(tmp_path / "support", {"red": 3, "green": 3, "blue": 3})
    queries = sorted(make_folder(tmp_path / "q", {"red": 1, "green": 1, "blue": 1}, seed=4).rglob("*.png"))
    backbone = Backbone(tiny_model)
    prep = backbone.manifest.preprocess
    if method == "default":  # the library's and the CLI's defaults
        clf = Classifier(backbone, prep)
        kshot = defaults.KSHOT
    else:
        clf = Classifier(backbone, prep, global_weight=global_weight, kshot=kshot)  # type: ignore[arg-type]
    folder = read_labelled_folder(support_dir)
    support = clf.fit(folder)
    assert support.kshot == kshot
    maps = np.stack([backbone(np.stack([load_image(p, prep) for p in c.files])) for c in folder.classes])
    qmaps = backbone(np.stack([load_image(p, prep) for p in queries]))
    expected = fewshot.METHODS[method].score(maps, qmaps)
    for row, qf in zip(expected, qmaps, strict=True):
        got = {r.label: r.score for r in clf.rank(support, qf)}
        np.testing.assert_allclose([got[c.name] for c in folder.classes], row, atol=1e-5)


def test_simpleshot_centroids_match_proto() -> None:
    rng = np.random.default_rng(0)
    pooled = [rng.normal(size=(3, 6)) for _ in range(4)]
    centre, centroids = simpleshot_centroids(pooled)
    assert np.allclose(centre, np.concatenate(pooled).mean(axis=0))
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0)


def test_default_at_one_shot_is_emd_plus_global(tiny_model: Path, tmp_path: Path) -> None:
    support_dir = make_folder(tmp_path / "support", {"red": 1, "green": 1, "blue": 1})
    queries = sorted(make_folder(tmp_path / "q", {"red": 1, "blue": 1}, seed=4).rglob("*.png"))
    backbone = Backbone(tiny_model)
    prep = backbone.manifest.preprocess
    clf = Classifier(backbone, prep)
    folder = read_labelled_folder(support_dir)
    support = clf.fit(folder)
    assert support.kshot == "mean" and clf.global_weight_for(support) == defaults.GLOBAL_WEIGHT
    maps = np.stack([backbone(np.stack([load_image(p, prep) for p in c.files])) for c in folder.classes])
    qmaps = backbone(np.stack([load_image(p, prep) for p in queries]))
    expected = fewshot.METHODS["emd+global"].score(maps, qmaps)
    np.testing.assert_allclose(fewshot.METHODS["default"].score(maps, qmaps), expected)
    for row, qf in zip(expected, qmaps, strict=True):
        got = {r.label: r.score for r in clf.rank(support, qf)}
        np.testing.assert_allclose([got[c.name] for c in folder.classes], row, atol=1e-5)


def test_large_support_sets_use_the_mean_map(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emdcli import classify

    support_dir = make_folder(tmp_path / "support", {"red": 3, "green": 3})
    backbone = Backbone(tiny_model)
    clf = Classifier(backbone, backbone.manifest.preprocess)
    assert clf.fit(read_labelled_folder(support_dir)).kshot == "sfc"  # 6 examples x 2 classes = 12 pairs
    monkeypatch.setattr(classify, "SFC_MAX_PAIRS", 11)
    support = clf.fit(read_labelled_folder(support_dir))
    assert support.kshot == "mean" and clf.global_weight_for(support) == defaults.GLOBAL_WEIGHT
