"""classify and evaluate share one scoring path: evaluate's methods are classify's settings, and
``default`` is exactly what classify runs with its defaults, shortlist and large-support fallback included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emdcli import defaults
from emdcli.features.source import FeatureSource
from emdcli.io.folders import read_labelled_folder
from emdcli.io.images import load_image
from emdcli.matching.simpleshot import centroids as simpleshot_centroids
from emdcli.matching.support import Matcher
from emdcli.model.backbone import Backbone
from emdcli.tasks import fewshot
from emdcli.tasks.classify import Classifier
from emdcli.tasks.episodes import Episode, EpisodePlan
from emdcli.tasks.evaluate import evaluate_episodes
from tests.conftest import make_folder, make_image


def many_classes(root: Path, classes: int, shots: int, seed: int = 0) -> Path:
    """``classes`` folders of ``shots`` images, each class its own random colour."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        colour = tuple(int(v) for v in rng.integers(20, 236, 3))
        for i in range(shots):
            make_image(root / f"c{k:02d}" / f"img_{i}.png", colour, seed * 1000 + k * 10 + i)  # type: ignore[arg-type]
    return root


def episode_arrays(backbone: Backbone, support_dir: Path, queries: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(way, shot, C, H, W) support maps in folder order and (n, C, H, W) query maps."""
    prep = backbone.manifest.preprocess
    folder = read_labelled_folder(support_dir)
    maps = np.stack([backbone(np.stack([load_image(p, prep) for p in c.files])) for c in folder.classes])
    return maps, backbone(np.stack([load_image(p, prep) for p in queries]))


def classify_scores(clf: Classifier, support_dir: Path, qmaps: np.ndarray) -> tuple[str, np.ndarray]:
    """What classify reports for each query: (kshot used, (n, K) scores with NaN for unranked classes)."""
    folder = read_labelled_folder(support_dir)
    support = clf.fit(folder)
    scores = clf.score_set(support, qmaps).scores
    order = [support.classes.index(c.name) for c in folder.classes]
    return support.kshot, scores[:, order]


@pytest.mark.parametrize(
    ("global_weight", "kshot", "method"),
    [(0.0, "mean", "emd"), (0.5, "mean", "emd+global"), (0.0, "sfc", "emd-sfc"), (0.5, "sfc", "emd-sfc+global")],
)
def test_classify_settings_equal_the_method(
    tiny_model: Path, tmp_path: Path, global_weight: float, kshot: str, method: str
) -> None:
    support_dir = make_folder(tmp_path / "support", {"red": 3, "green": 3, "blue": 3})
    queries = sorted(make_folder(tmp_path / "q", {"red": 1, "green": 1, "blue": 1}, seed=4).rglob("*.png"))
    backbone = Backbone(tiny_model)
    matcher = Matcher(kshot=kshot, global_weight=global_weight, shortlist=0, transductive=False)
    clf = Classifier(FeatureSource(backbone), matcher)
    maps, qmaps = episode_arrays(backbone, support_dir, queries)
    used, got = classify_scores(clf, support_dir, qmaps)
    assert used == kshot
    np.testing.assert_allclose(got, fewshot.METHODS[method].score(maps, qmaps), atol=1e-9)


@pytest.mark.parametrize(("classes", "shots", "kshot"), [(12, 2, "sfc"), (26, 4, "mean")])
def test_default_is_what_classify_runs_with_shortlist_and_fallback(
    tiny_model: Path, tmp_path: Path, classes: int, shots: int, kshot: str
) -> None:
    """More classes than the shortlist (10): unranked classes are NaN in both; 26 classes x 4 shots
    is over SFC_MAX_PAIRS (104 x 26 = 2704 > 2500), so both fall back to the mean map."""
    support_dir = many_classes(tmp_path / "support", classes, shots)
    queries = sorted(many_classes(tmp_path / "q", classes, 1, seed=0).rglob("*.png"))
    backbone = Backbone(tiny_model)
    maps, qmaps = episode_arrays(backbone, support_dir, queries)
    used, got = classify_scores(Classifier(FeatureSource(backbone)), support_dir, qmaps)
    expected = fewshot.METHODS["default"].score(maps, qmaps)
    assert used == kshot
    assert (np.isnan(got).sum(axis=1) == classes - defaults.SHORTLIST).all()  # the shortlist ran
    np.testing.assert_allclose(got, expected, atol=1e-9, equal_nan=True)
    # evaluate's accuracy for this episode is classify's accuracy on the same queries
    episode = Episode(np.arange(classes), np.arange(classes * shots).reshape(classes, shots),
                      classes * shots + np.arange(classes).reshape(classes, 1))  # fmt: skip
    features = np.concatenate([maps.reshape(-1, *maps.shape[2:]), qmaps])
    plan = EpisodePlan(classes, shots, 1, 0, (episode,), tuple(range(classes)), ())
    result = evaluate_episodes(features, plan, ["default"])
    predicted = np.nanargmax(got, axis=1)
    assert result.results[0].accuracy == pytest.approx(100 * np.mean(predicted == np.arange(classes)))


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
    clf = Classifier(FeatureSource(backbone))
    support = clf.fit(read_labelled_folder(support_dir))
    assert support.kshot == "mean" and clf.global_weight_for(support) == defaults.GLOBAL_WEIGHT
    maps, qmaps = episode_arrays(backbone, support_dir, queries)
    expected = fewshot.METHODS["emd+global"].score(maps, qmaps)
    np.testing.assert_allclose(fewshot.METHODS["default-inductive"].score(maps, qmaps), expected)
    assert not np.allclose(expected, fewshot.METHODS["emd"].score(maps, qmaps))  # the global term counts


def test_large_support_sets_use_the_mean_map(tiny_model: Path, tmp_path: Path) -> None:
    support_dir = make_folder(tmp_path / "support", {"red": 3, "green": 3})
    source = FeatureSource(Backbone(tiny_model))
    folder = read_labelled_folder(support_dir)
    assert Classifier(source).fit(folder).kshot == "sfc"  # 6 examples x 2 classes = 12 pairs
    assert Classifier(source, Matcher(sfc_max_pairs=11)).fit(folder).kshot == "mean"


def test_an_unchanged_support_set_is_not_refitted(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emdcli.features.cache import FeatureCache
    from emdcli.matching import sfc

    fits: list[int] = []
    real_fit = sfc.fit_sfc
    monkeypatch.setattr(sfc, "fit_sfc", lambda shots, **kw: fits.append(len(shots)) or real_fit(shots, **kw))
    support_dir = make_folder(tmp_path / "support", {"red": 3, "green": 3})
    backbone = Backbone(tiny_model)

    def fitted() -> np.ndarray:  # a fresh classifier and cache object each time, as a new run has
        source = FeatureSource(backbone, cache=FeatureCache("tiny", root=tmp_path / "cache"))
        nodes = Classifier(source).fit(read_labelled_folder(support_dir)).nodes.nodes
        return np.stack([n.raw for n in nodes])

    first = fitted()
    assert fits == [2]
    folder = FeatureCache("tiny", root=tmp_path / "cache").folder
    assert len(list(folder.glob("*.fit"))) == 1 and len(list(folder.glob("*.npy"))) == 6  # 6 images' features
    np.testing.assert_array_equal(fitted(), first)  # the stored fit, the same nodes
    assert fits == [2]
    make_image(next((support_dir / "green").glob("*.png")), (0, 90, 200), seed=9)  # one example changes
    changed = fitted()
    assert fits == [2, 2] and not np.array_equal(changed, first)
    uncached = Classifier(FeatureSource(backbone)).fit(read_labelled_folder(support_dir))  # no cache: fitted
    assert fits == [2, 2, 2]
    np.testing.assert_array_equal(np.stack([n.raw for n in uncached.nodes.nodes]), changed)
