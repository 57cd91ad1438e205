"""The transductive step on generated node sets: where it must help, where it must not harm, when it
keeps the inductive scores, and that the order of the queries never changes a score."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from emdcli.cli import app
from emdcli.features.source import FeatureSource
from emdcli.io.folders import read_labelled_folder
from emdcli.io.images import load_image
from emdcli.matching.nodes import ClassBank, Nodes
from emdcli.matching.support import ClassNodes, Matcher
from emdcli.matching.transductive import Transduction, prediction_spread, refit_scores, soft_assignment
from emdcli.model.backbone import Backbone
from emdcli.tasks.classify import Classifier, Prediction
from emdcli.tasks.prediction import flat_row
from tests.conftest import make_folder

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


# the command line ----------------------------------------------------------------------------------

runner = CliRunner()


def classify(tiny_model: Path, *args: object, input: str | None = None) -> object:
    return runner.invoke(app, ["classify", *(str(a) for a in args), "--model", str(tiny_model)], input=input)


def test_no_transductive_gives_the_rows_of_each_query_matched_alone(
    tiny_model: Path, support_dir: Path, query_dir: Path
) -> None:
    res: object = classify(tiny_model, support_dir, query_dir, "-f", "csv", "--no-transductive", "--no-cache")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    clf = Classifier(FeatureSource(Backbone(tiny_model)), Matcher(transductive=False))
    support = clf.fit(read_labelled_folder(support_dir))
    paths = sorted(query_dir.rglob("*.png"))
    maps = Backbone(tiny_model)(np.stack([load_image(p, clf.source.prep) for p in paths]))
    preds = [Prediction(p, "ok", clf.rank(support, m), p.parent.name) for p, m in zip(paths, maps, strict=True)]
    want = [flat_row(pred.to_record(support.classes, 2), support.classes, 2) for pred in preds]
    got = list(csv.DictReader(io.StringIO(res.stdout)))  # type: ignore[attr-defined]
    assert len(got) == len(want) == 6
    for row, expected in zip(got, want, strict=True):
        assert row["predicted"] == expected["predicted"] and row["runner_up"] == expected["runner_up"]
        for c in support.classes:
            assert float(row[f"score:{c}"]) == expected[f"score:{c}"]


def test_a_set_of_queries_is_matched_together_and_its_rows_do_not_depend_on_their_order(
    tiny_model: Path, support_dir: Path, tmp_path: Path
) -> None:
    queries = sorted(make_folder(tmp_path / "q", {"red": 3, "green": 3, "blue": 3}, seed=5).rglob("*.png"))
    forward: object = classify(tiny_model, support_dir, *queries, "-f", "json")
    backward: object = classify(tiny_model, support_dir, *reversed(queries), "-f", "json")
    alone: object = classify(tiny_model, support_dir, *queries, "-f", "json", "--no-transductive")
    docs = [json.loads(r.stdout) for r in (forward, backward, alone)]  # type: ignore[attr-defined]
    assert docs[0]["transductive"] is True and docs[0]["transductive_global_weight"] == 0.5
    assert docs[0]["summary"]["query_sets"] == 1 and docs[0]["summary"]["transduced_sets"] == 1
    assert docs[2]["transductive"] is False and docs[2]["summary"]["transduced_sets"] == 0
    by_path = [{r["path"]: r for r in d["rows"]} for d in docs]
    assert [r["path"] for r in docs[1]["rows"]] == [str(q) for q in reversed(queries)]  # rows in input order
    assert by_path[0] == by_path[1]  # ... with the same content
    assert any(by_path[0][p]["scores"] != by_path[2][p]["scores"] for p in by_path[0])  # the step ran


def test_stdin_is_matched_query_by_query_unless_asked(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    listing = "".join(f"{p}\n" for p in sorted(query_dir.rglob("*.png")))
    streamed: object = classify(tiny_model, support_dir, "-", "-f", "json", input=listing)
    asked: object = classify(tiny_model, support_dir, "-", "-f", "json", "--transductive", input=listing)
    folder: object = classify(tiny_model, support_dir, query_dir, "-f", "json")
    s, a, f = (json.loads(r.stdout) for r in (streamed, asked, folder))  # type: ignore[attr-defined]
    assert s["transductive"] is False and s["summary"]["query_sets"] == 0
    assert a["transductive"] is True and a["summary"]["query_sets"] == 1
    assert a["rows"] == f["rows"]  # stdin read to its end is the same set as the folder


def test_queries_of_one_class_are_matched_alone_and_stderr_says_why(
    tiny_model: Path, support_dir: Path, tmp_path: Path
) -> None:
    reds = make_folder(tmp_path / "q", {"red": 4}, seed=6)
    res: object = classify(tiny_model, support_dir, reds, "-f", "json")
    alone: object = classify(tiny_model, support_dir, reds, "-f", "json", "--no-transductive")
    assert res.exit_code == 0  # type: ignore[attr-defined]
    doc, ref = json.loads(res.stdout), json.loads(alone.stdout)  # type: ignore[attr-defined]
    assert doc["summary"]["transduced_sets"] == 0 and doc["rows"] == ref["rows"]
    assert "classified each query on its own, not together: most first guesses went to few classes" in res.stderr  # type: ignore[attr-defined]


def test_transductive_is_a_config_key(tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("transductive: false\n")
    res: object = classify(tiny_model, support_dir, query_dir, "-f", "json", "--config", config)
    assert json.loads(res.stdout)["transductive"] is False  # type: ignore[attr-defined]
    config.write_text("transductive: maybe\n")
    bad: object = classify(tiny_model, support_dir, query_dir, "--config", config)
    assert bad.exit_code == 2 and "transductive" in bad.stderr  # type: ignore[attr-defined]
