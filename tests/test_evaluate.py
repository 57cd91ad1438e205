"""Few-shot evaluation: episode sampling, the interval formula, the methods, SFC, the command."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from emdcli import defaults
from emdcli.cli import app
from emdcli.errors import DatasetError, UsageError
from emdcli.matching.nodes import ClassBank, Nodes
from emdcli.matching.sfc import fit_sfc
from emdcli.matching.simpleshot import centroids as simpleshot_centroids
from emdcli.matching.simpleshot import simpleshot_scores
from emdcli.matching.support import EpisodeMemo
from emdcli.tasks import fewshot
from emdcli.tasks.episodes import Episode, EpisodePlan, sample_episodes
from emdcli.tasks.evaluate import check_methods, evaluate_episodes, mean_ci95
from tests.conftest import make_folder

runner = CliRunner()

# --- episodes -------------------------------------------------------------------------


def test_episodes_have_the_right_shape_and_no_overlap() -> None:
    labels = np.repeat(np.arange(8), 10)  # 8 classes of 10 images
    plan = sample_episodes(labels, way=5, shot=2, query=3, episodes=50, seed=1)
    assert len(plan.episodes) == 50
    for ep in plan.episodes:
        assert ep.support.shape == (5, 2) and ep.query.shape == (5, 3)
        assert len(set(ep.classes.tolist())) == 5
        assert not set(ep.support.ravel()) & set(ep.query.ravel())
        assert len(set(ep.support.ravel()) | set(ep.query.ravel())) == 25
        for row, cls in enumerate(ep.classes):
            assert (labels[ep.support[row]] == cls).all() and (labels[ep.query[row]] == cls).all()
        assert ep.query_labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3


def test_episodes_are_deterministic_for_a_seed() -> None:
    labels = np.repeat(np.arange(6), 7)

    def flat(seed: int) -> list[list[int]]:
        plan = sample_episodes(labels, 3, 1, 2, 20, seed)
        return [np.concatenate([e.support.ravel(), e.query.ravel()]).tolist() for e in plan.episodes]

    assert flat(3) == flat(3)
    assert flat(3) != flat(4)


def test_small_classes_are_skipped_and_reported() -> None:
    labels = np.array([0] * 5 + [1] * 5 + [2] * 5 + [3] * 2)
    plan = sample_episodes(labels, way=3, shot=1, query=3, episodes=10, seed=0)
    assert plan.too_small == (3,) and plan.eligible == (0, 1, 2)
    assert all(3 not in ep.classes for ep in plan.episodes)
    with pytest.raises(DatasetError, match="only 3 classes"):
        sample_episodes(labels, way=4, shot=1, query=3, episodes=10, seed=0)


# --- statistics -----------------------------------------------------------------------


def test_ci95_is_196_std_over_root_n() -> None:
    mean, ci = mean_ci95([0.0, 1.0, 0.0, 1.0])
    assert mean == 0.5
    assert ci == pytest.approx(1.96 * 0.5 / 2.0)
    assert mean_ci95([0.7] * 9) == (pytest.approx(0.7), 0.0)


# --- methods --------------------------------------------------------------------------


def _separable_episode(way: int = 3, shot: int = 2, n_query: int = 2, seed: int = 0) -> tuple:
    """Feature maps (way, shot, C, 3, 3) whose classes differ by a channel-wise signature."""
    rng = np.random.default_rng(seed)
    c = 12
    sig = rng.normal(size=(way, c, 1, 1)) * 3
    support = (sig[:, None] + rng.normal(size=(way, shot, c, 3, 3))).astype(np.float32)
    query = (np.repeat(sig, n_query, axis=0) + rng.normal(size=(way * n_query, c, 3, 3))).astype(np.float32)
    return support, query, np.repeat(np.arange(way), n_query)


@pytest.mark.parametrize("name", list(fewshot.METHODS))
def test_every_method_scores_an_easy_episode_right(name: str) -> None:
    support, query, truth = _separable_episode()
    scores = fewshot.METHODS[name].score(support, query)
    assert scores.shape == (6, 3)
    assert np.isfinite(scores).all()
    assert (scores.argmax(axis=1) == truth).all()


def test_proto_at_one_shot_is_cosine_to_the_centred_support() -> None:
    support, query, _ = _separable_episode(shot=1)
    s = support.astype(np.float64).mean(axis=(-2, -1))[:, 0]
    centre = s.mean(axis=0)
    unit = (s - centre) / np.linalg.norm(s - centre, axis=1, keepdims=True)
    q = query.astype(np.float64).mean(axis=(-2, -1)) - centre
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    expected = -np.sqrt(np.maximum(2 - 2 * q @ unit.T, 0))
    np.testing.assert_allclose(simpleshot_scores(support, query), expected, atol=1e-9)


def test_pyramid_adds_pooled_cells() -> None:
    fmap = np.arange(2 * 7 * 7, dtype=np.float32).reshape(2, 7, 7)
    nodes = fewshot.pyramid_nodes(fmap)
    assert nodes.shape == (49 + 4 + 9, 2)
    np.testing.assert_allclose(nodes[49], fmap[:, 0:4, 0:4].mean(axis=(1, 2)))  # first 2x2 cell
    np.testing.assert_allclose(nodes[-1], fmap[:, 4:7, 4:7].mean(axis=(1, 2)))  # last 3x3 cell


def test_unknown_or_kshot_only_methods_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown method"):
        check_methods(["proto", "nope"], shot=1)
    with pytest.raises(UsageError, match="needs `shot` 2"):  # the CLI says --shot (tests/test_cli.py)
        check_methods(["emd-sfc"], shot=1)
    assert check_methods(["emd", "proto", "emd"], shot=1) == ["emd", "proto"]


# --- SFC ------------------------------------------------------------------------------


def test_sfc_lowers_the_support_loss() -> None:
    rng = np.random.default_rng(2)
    way, shot, n, c = 3, 4, 9, 16
    centres = rng.normal(size=(way, 1, 1, c))
    shots = (centres + 1.5 * rng.normal(size=(way, shot, n, c))).astype(np.float32)  # overlapping classes
    fit = fit_sfc(shots, steps=15, final_loss=True)
    assert fit.nodes.shape == (way, n, c)
    assert len(fit.losses) == 16
    assert fit.losses[-1] < 0.8 * fit.losses[0]
    untouched = fit_sfc(shots, steps=0)
    np.testing.assert_allclose(untouched.nodes, shots.mean(axis=1), atol=1e-6)


def test_sfc_solves_in_threads_and_fits_the_same_nodes() -> None:
    rng = np.random.default_rng(5)
    shots = [rng.normal(size=(k, 9, 16)).astype(np.float32) for k in (3, 2, 4)]  # unequal shots
    alone = fit_sfc(shots, steps=4, final_loss=True, workers=1)
    threaded = fit_sfc(shots, steps=4, final_loss=True, workers=3)
    assert alone.losses[-1] < alone.losses[0]  # it fitted something
    np.testing.assert_array_equal(threaded.nodes, alone.nodes)
    assert threaded.losses == alone.losses


# --- evaluate_episodes ----------------------------------------------------------------


def _feature_set(classes: int = 4, per_class: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes (signatures of scale 0.5 under unit noise): the methods disagree, and each
    episode scores differently, so that a pairing or labelling error changes the numbers."""
    rng = np.random.default_rng(seed)
    sig = rng.normal(size=(classes, 8, 1, 1)) * 0.5
    labels = np.repeat(np.arange(classes), per_class)
    feats = (sig[labels] + rng.normal(size=(len(labels), 8, 3, 3))).astype(np.float32)
    return feats, labels


def independent_accuracies(features: np.ndarray, labels: np.ndarray, plan: EpisodePlan, method: str) -> np.ndarray:
    """Each episode's accuracy of ``method``, counted here: the truth of a query comes from the set's own
    ``labels`` (not from Episode.query_labels), each episode is scored on its own, in plan order."""
    out = []
    for ep in plan.episodes:
        flat = ep.query.reshape(-1)
        truth = np.array([ep.classes.tolist().index(labels[i]) for i in flat])
        scores = fewshot.METHODS[method].score(features[ep.support], features[flat])
        out.append(np.mean(scores.argmax(axis=1) == truth))
    return np.array(out)


def ci95(values: np.ndarray) -> float:
    return float(1.96 * values.std() / np.sqrt(values.size))


def test_evaluation_is_paired_and_independent_of_threads() -> None:
    feats, labels = _feature_set()
    plan = sample_episodes(labels, way=3, shot=1, query=3, episodes=12, seed=5)
    names = ["proto", "emd", "emd+global"]
    expected = {name: independent_accuracies(feats, labels, plan, name) for name in names}
    # The data can show a pairing error: per-episode accuracies and differences vary, the methods disagree.
    for name in names:
        assert len(set(expected[name].tolist())) > 2, name
    for name in names[1:]:
        diff = expected[name] - expected["proto"]
        assert len(set(diff.tolist())) > 2 and diff.mean() != 0, name

    one = evaluate_episodes(feats, plan, names, workers=1)
    two = evaluate_episodes(feats, plan, names, workers=2)
    for evaluation in (one, two):
        assert [r.method for r in evaluation.results] == names
        assert [(p.method, p.baseline) for p in evaluation.paired] == [("emd", "proto"), ("emd+global", "proto")]
        for name in names:
            np.testing.assert_array_equal(evaluation.per_episode[name], expected[name], err_msg=name)
        for r in evaluation.results:
            assert r.accuracy == pytest.approx(100 * expected[r.method].mean())
            assert r.ci95 == pytest.approx(100 * ci95(expected[r.method]))
        for p in evaluation.paired:
            diff = expected[p.method] - expected["proto"]
            assert p.difference == pytest.approx(100 * diff.mean())
            assert p.ci95 == pytest.approx(100 * ci95(diff))
    r = one.results[0]
    assert (r.way, r.shot, r.query, r.episodes) == (3, 1, 3, 12)
    assert r.seconds_per_episode >= 0

    # A mis-pairing (each emd episode against the next episode's proto) keeps the mean difference but
    # not its interval, which the assertions above would catch.
    shifted = np.roll(expected["emd"], 1) - expected["proto"]
    assert 100 * shifted.mean() == pytest.approx(one.paired[0].difference)
    assert abs(100 * ci95(shifted) - one.paired[0].ci95) > 1.0


def test_wrong_query_labels_would_change_the_accuracies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The independent count catches labels paired with the wrong queries (np.tile for np.repeat)."""
    feats, labels = _feature_set()
    plan = sample_episodes(labels, way=3, shot=1, query=3, episodes=12, seed=5)
    expected = independent_accuracies(feats, labels, plan, "emd")
    right = evaluate_episodes(feats, plan, ["emd"]).per_episode["emd"]
    np.testing.assert_array_equal(right, expected)
    tiled = property(lambda ep: np.tile(np.arange(ep.query.shape[0]), ep.query.shape[1]))
    monkeypatch.setattr(Episode, "query_labels", tiled)
    wrong = evaluate_episodes(feats, plan, ["emd"]).per_episode["emd"]
    assert not np.array_equal(wrong, expected)


# --- the command ----------------------------------------------------------------------


@pytest.fixture()
def labelled_set(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "set", {"red": 5, "green": 5, "blue": 5})


def evaluate(tiny_model: Path, dataset: Path, *rest: str) -> object:
    args = ["evaluate", str(dataset), "--model", str(tiny_model), "--way", "3", "--query", "2", "--episodes", "6",
            *rest]  # fmt: skip
    return runner.invoke(app, args)


#: Base colours of the mixed set's classes.
MIXED = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


@pytest.fixture()
def mixed_set(tmp_path: Path) -> Path:
    """3 classes x 6 images of 4 x 4 cells of 8 px (one node each for the tiny model): about 30% of the
    cells in the class's colour, the rest random. The methods disagree and episodes differ (seed 0)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mixed"
    for name, colour in MIXED.items():
        (root / name).mkdir(parents=True)
        for i in range(6):
            cells = rng.integers(0, 256, (4, 4, 3))
            cells[rng.random((4, 4)) < 0.3] = colour
            Image.fromarray(np.kron(cells, np.ones((8, 8, 1))).astype(np.uint8)).save(root / name / f"img_{i}.png")
    return root


def expected_accuracies(tiny_model: Path, dataset: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Per-episode accuracies of the command's episodes (3-way 1-shot, 2 queries, 6 episodes, seed 0),
    counted independently: each image embedded on its own, labels from the folder names."""
    from emdcli.io.images import load_image
    from emdcli.model.backbone import Backbone

    backbone = Backbone(tiny_model)
    classes = sorted(p.name for p in dataset.iterdir())
    files = [(k, p) for k, c in enumerate(classes) for p in sorted((dataset / c).glob("*.png"))]
    feats = np.concatenate([backbone(load_image(p, backbone.manifest.preprocess)[None]) for _, p in files])
    labels = np.array([k for k, _ in files])
    plan = sample_episodes(labels, way=3, shot=1, query=2, episodes=6, seed=0)
    return {name: independent_accuracies(feats, labels, plan, name) for name in names}


def test_mixed_set_can_show_a_pairing_error(tiny_model: Path, mixed_set: Path) -> None:
    acc = expected_accuracies(tiny_model, mixed_set, ["proto", "emd", "emd-uniform"])
    for name in ("emd", "emd-uniform"):
        diff = acc[name] - acc["proto"]
        assert len(set(diff.tolist())) > 2 and diff.mean() != 0, name
        shifted = np.roll(acc[name], 1) - acc["proto"]  # paired with the wrong episodes
        assert abs(ci95(shifted) - ci95(diff)) > 0.01, name


def method_rows(doc: dict) -> dict[str, dict]:
    """{method: row} of an ``evaluate --format json`` document (its ``rows``, with the CSV's columns)."""
    return {r["method"]: r for r in doc["rows"]}


def test_evaluate_json_shape(tiny_model: Path, mixed_set: Path) -> None:
    res = evaluate(tiny_model, mixed_set, "--format", "json", "--methods", "proto,emd")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    acc = expected_accuracies(tiny_model, mixed_set, ["proto", "emd"])
    rows = method_rows(doc)
    assert list(rows) == ["proto", "emd"]
    diff = acc["emd"] - acc["proto"]
    want = {
        "proto": (100 * acc["proto"].mean(), 100 * ci95(acc["proto"]), None, None),
        "emd": (100 * acc["emd"].mean(), 100 * ci95(acc["emd"]), 100 * diff.mean(), 100 * ci95(diff)),
    }
    for name, r in rows.items():
        assert (r["way"], r["shot"], r["query"], r["episodes"]) == (3, 1, 2, 6)
        got = (r["accuracy"], r["ci95"], r["vs_proto"], r["vs_proto_ci95"])
        assert got == tuple(None if w is None else pytest.approx(w, abs=0.0051) for w in want[name]), name
    assert doc["images"] == 18 and doc["classes"] == 3 and doc["seed"] == 0


def number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


def test_evaluate_csv_and_table(tiny_model: Path, mixed_set: Path) -> None:
    acc = expected_accuracies(tiny_model, mixed_set, ["proto", "emd", "emd-uniform", "default"])
    res = evaluate(tiny_model, mixed_set, "--format", "csv", "--methods", "proto,emd-uniform")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["method"] for r in rows] == ["proto", "emd-uniform"]
    diff = acc["emd-uniform"] - acc["proto"]
    want = [
        (100 * acc["proto"].mean(), 100 * ci95(acc["proto"]), None, None),
        (100 * acc["emd-uniform"].mean(), 100 * ci95(acc["emd-uniform"]), 100 * diff.mean(), 100 * ci95(diff)),
    ]
    for r, w in zip(rows, want, strict=True):
        got = tuple(number(r[c]) for c in ("accuracy", "ci95", "vs_proto", "vs_proto_ci95"))
        assert got == tuple(None if x is None else pytest.approx(x, abs=0.0051) for x in w), r["method"]
    res = evaluate(tiny_model, mixed_set, "--format", "table")  # proto,emd,default
    assert res.exit_code == 0, res.output
    assert "3-way 1-shot" in res.stdout
    cells = {}  # method -> the table's cells: accuracy ± CI, then the paired difference (none for proto)
    for line in res.stdout.splitlines():
        row = re.split(r"\s{2,}", line.strip())
        if row[0] in ("proto", "emd", "default"):
            cells[row[0]] = row[1:-1]  # the last cell is the time per episode
    for name in ("proto", "emd", "default"):
        want_cells = [f"{100 * acc[name].mean():.1f} ± {100 * ci95(acc[name]):.1f}"]
        if name != "proto":
            d = acc[name] - acc["proto"]
            want_cells.append(f"{100 * d.mean():+.1f} ± {100 * ci95(d):.1f}")
        assert cells[name] == want_cells, name


def test_evaluate_writes_output_atomically(tiny_model: Path, labelled_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    res = evaluate(tiny_model, labelled_set, "--output", str(out))
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    assert list(method_rows(json.loads(out.read_text()))) == ["proto", "emd", "default"]


def test_evaluate_usage_errors(tiny_model: Path, labelled_set: Path) -> None:
    res = evaluate(tiny_model, labelled_set, "--methods", "proto,bogus")
    assert res.exit_code == 2 and "unknown method 'bogus'" in res.output
    res = evaluate(tiny_model, labelled_set, "--methods", "emd-sfc")
    assert res.exit_code == 2 and "needs --shot 2" in res.output
    res = evaluate(tiny_model, labelled_set, "--shot", "4")  # 4 + 2 > 5 images per class
    assert res.exit_code == 2 and "only 0 classes" in res.output
    res = evaluate(tiny_model, labelled_set.parent / "missing")
    assert res.exit_code == 2


def test_evaluate_reports_small_classes(tiny_model: Path, tmp_path: Path) -> None:
    dataset = make_folder(tmp_path / "set", {"red": 5, "green": 5, "blue": 2})
    res = runner.invoke(app, ["evaluate", str(dataset), "--model", str(tiny_model), "--way", "2", "--query", "2",
                              "--episodes", "4", "--format", "json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["classes_too_small"] == ["blue"]
    said = " ".join(res.stderr.split())
    assert (
        "1 of 3 classes have fewer than 3 readable images and are never drawn: blue; --shot 1 --query 1 draws" in said
    )


def test_methods_sharing_parts_score_as_if_alone() -> None:
    support, query, _ = _separable_episode(shot=3)
    memo = EpisodeMemo()
    together = {name: fewshot.METHODS[name].score(support, query, memo) for name in fewshot.METHODS}
    for name, method in fewshot.METHODS.items():
        np.testing.assert_allclose(together[name], method.score(support, query), err_msg=name)
    # emd+global computed here from the parts, without the Matcher: mean maps, EMD, SimpleShot cosine
    bank = ClassBank.from_nodes([Nodes.from_feature_map(m) for m in support.astype(np.float64).mean(axis=1)])
    emd = np.stack([bank.scores(Nodes.from_feature_map(q)) for q in query])
    centre, cents = simpleshot_centroids(list(support.astype(np.float64).mean(axis=(-2, -1))))
    pooled_q = query.astype(np.float64).mean(axis=(-2, -1)) - centre
    glob = (pooled_q / np.linalg.norm(pooled_q, axis=1, keepdims=True)) @ cents.T
    np.testing.assert_allclose(together["emd+global"], emd + defaults.GLOBAL_WEIGHT * glob, atol=1e-9)
    assert memo.reused_seconds > 0  # emd+global reused emd, the shot reductions shared their solves


@pytest.mark.parametrize(
    ("sizes", "way", "shot", "hint"),
    [
        ([16] * 26, 5, 5, "the 5 largest classes hold 16 images or more: --shot 5 --query 11 fits (or lower --way)"),
        (
            [9, 8, 3, 3, 3, 2],
            5,
            5,
            "the 5 largest classes hold 3 images or more: --shot 2 --query 1 fits (or lower --way)",
        ),
        ([9, 8, 1, 1], 3, 1, "only 2 classes hold 2 images or more: lower --way"),
        ([9, 8, 7], 5, 1, "the set has 3 classes: use --way 3 or less"),
    ],
)
def test_a_set_too_small_for_the_shape_is_told_a_shape_that_fits(
    sizes: list[int], way: int, shot: int, hint: str
) -> None:
    from emdcli.cli.stderr import as_flags
    from emdcli.errors import DatasetError
    from emdcli.tasks.episodes import sample_episodes

    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    with pytest.raises(DatasetError) as caught:
        sample_episodes(labels, way, shot, 15, 3, 0)
    assert as_flags(caught.value.hint) == hint  # the library names `shot`; the command line --shot
    assert f"(the largest classes hold {', '.join(map(str, sizes[:way]))})" in caught.value.message


def test_a_shape_the_files_cannot_fit_is_refused_before_any_image_is_embedded(tmp_path: Path) -> None:
    from emdcli.errors import DatasetError
    from emdcli.tasks.evaluate import evaluate

    for c in range(3):
        for i in range(3):
            (tmp_path / f"c{c}").mkdir(exist_ok=True)
            Image.new("RGB", (8, 8), (80 * c, 0, 0)).save(tmp_path / f"c{c}" / f"{i}.png")

    class NoEmbedding:
        def labelled(self, *args: object) -> None:
            raise AssertionError("an image was embedded")

    with pytest.raises(DatasetError, match="only 0 classes have the 6 images"):
        evaluate(tmp_path, way=3, shot=1, query=5, source=NoEmbedding())  # type: ignore[arg-type]
