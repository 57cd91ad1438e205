"""Few-shot evaluation: episode sampling, the interval formula, the methods, SFC, the command."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from emdcli import fewshot
from emdcli.cli import app
from emdcli.episodes import sample_episodes
from emdcli.errors import DatasetError, UsageError
from emdcli.evaluate import check_methods, evaluate_episodes, mean_ci95
from emdcli.sfc import fit_sfc
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
    s = fewshot.pooled(support)[:, 0]
    centre = s.mean(axis=0)
    unit = (s - centre) / np.linalg.norm(s - centre, axis=1, keepdims=True)
    q = fewshot.pooled(query) - centre
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    expected = -np.sqrt(np.maximum(2 - 2 * q @ unit.T, 0))
    np.testing.assert_allclose(fewshot.simpleshot_scores(support, query), expected, atol=1e-9)


def test_pyramid_adds_pooled_cells() -> None:
    fmap = np.arange(2 * 7 * 7, dtype=np.float32).reshape(2, 7, 7)
    nodes = fewshot.pyramid_nodes(fmap)
    assert nodes.shape == (49 + 4 + 9, 2)
    np.testing.assert_allclose(nodes[49], fmap[:, 0:4, 0:4].mean(axis=(1, 2)))  # first 2x2 cell
    np.testing.assert_allclose(nodes[-1], fmap[:, 4:7, 4:7].mean(axis=(1, 2)))  # last 3x3 cell


def test_unknown_or_kshot_only_methods_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown method"):
        check_methods(["proto", "nope"], shot=1)
    with pytest.raises(UsageError, match="needs --shot 2"):
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


# --- evaluate_episodes ----------------------------------------------------------------


def _feature_set(classes: int = 4, per_class: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sig = rng.normal(size=(classes, 8, 1, 1)) * 2
    labels = np.repeat(np.arange(classes), per_class)
    feats = (sig[labels] + rng.normal(size=(len(labels), 8, 3, 3))).astype(np.float32)
    return feats, labels


def test_evaluation_is_paired_and_independent_of_threads() -> None:
    feats, labels = _feature_set()
    plan = sample_episodes(labels, way=3, shot=1, query=2, episodes=12, seed=5)
    one = evaluate_episodes(feats, plan, ["proto", "emd", "emd+global"], workers=1)
    two = evaluate_episodes(feats, plan, ["proto", "emd", "emd+global"], workers=2)
    assert [r.accuracy for r in one.results] == [r.accuracy for r in two.results]
    assert [r.method for r in one.results] == ["proto", "emd", "emd+global"]
    assert [p.method for p in one.paired] == ["emd", "emd+global"]
    diff = one.per_episode["emd"] - one.per_episode["proto"]
    assert one.paired[0].difference == pytest.approx(100 * diff.mean())
    assert one.paired[0].ci95 == pytest.approx(100 * 1.96 * diff.std() / np.sqrt(12))
    r = one.results[0]
    assert (r.way, r.shot, r.query, r.episodes) == (3, 1, 2, 12)
    assert 0 <= r.accuracy <= 100 and r.seconds_per_episode >= 0


# --- the command ----------------------------------------------------------------------


@pytest.fixture()
def labelled_set(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "set", {"red": 5, "green": 5, "blue": 5})


def evaluate(tiny_model: Path, dataset: Path, *rest: str) -> object:
    args = ["evaluate", str(dataset), "--model", str(tiny_model), "--way", "3", "--query", "2", "--episodes", "6",
            *rest]  # fmt: skip
    return runner.invoke(app, args)


def test_evaluate_json_shape(tiny_model: Path, labelled_set: Path) -> None:
    res = evaluate(tiny_model, labelled_set, "--format", "json", "--methods", "proto,emd")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [r["method"] for r in doc["results"]] == ["proto", "emd"]
    for r in doc["results"]:
        assert set(r) == {"method", "way", "shot", "query", "episodes", "accuracy", "ci95", "seconds_per_episode"}
        assert (r["way"], r["shot"], r["query"], r["episodes"]) == (3, 1, 2, 6)
        assert r["accuracy"] == 100.0  # three solid colours: every method gets every query right
    assert doc["paired"] == [{"method": "emd", "baseline": "proto", "difference": 0.0, "ci95": 0.0}]
    assert doc["images"] == 15 and doc["classes"] == 3 and doc["seed"] == 0


def test_evaluate_csv_and_table(tiny_model: Path, labelled_set: Path) -> None:
    res = evaluate(tiny_model, labelled_set, "--format", "csv", "--methods", "proto,emd-uniform")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["method"] for r in rows] == ["proto", "emd-uniform"]
    assert rows[0]["vs_proto"] == "" and rows[1]["vs_proto"] == "0.00"
    res = evaluate(tiny_model, labelled_set, "--format", "table")
    assert res.exit_code == 0, res.output
    assert "3-way 1-shot" in res.stdout and "emd" in res.stdout and "100.0 ± 0.0" in res.stdout


def test_evaluate_writes_output_atomically(tiny_model: Path, labelled_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    res = evaluate(tiny_model, labelled_set, "--output", str(out))
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    assert json.loads(out.read_text())["results"][0]["method"] == "proto"


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
    assert "1 of 3 classes have fewer than 3 readable images" in res.stderr


def test_methods_sharing_parts_score_as_if_alone() -> None:
    support, query, _ = _separable_episode(shot=3)
    memo = fewshot.EpisodeMemo()
    together = {name: fewshot.METHODS[name].score(support, query, memo) for name in fewshot.METHODS}
    for name, method in fewshot.METHODS.items():
        np.testing.assert_allclose(together[name], method.score(support, query), err_msg=name)
    alone = fewshot.emd_scores(support, query) + fewshot.GLOBAL_WEIGHT * fewshot.global_cosine(support, query)
    np.testing.assert_allclose(together["emd+global"], alone)
    assert memo.reused_seconds > 0  # emd+global reused emd, the shot reductions shared their solves
