"""``evaluate --open-set M``: open-set episodes, their measures, and the command's output.

The generated sets: ``certain`` has red, orange and blue squares. With the tiny model and its
reference bank (greys and mixed colours, tests.conftest.build_tiny_bank), a query's open-set score
(its bank-relative similarity to the nearest support example) is about 0.15 to 0.35 against an
example of its own class; red and orange score 0.01 to 0.02 against each other, blue about -1.1
against red and -1.6 against orange. So in an episode whose known classes are red and orange the
anchor (red against orange) is 0.01 to 0.02 and the threshold (anchor + the 1-shot offset, -0.17 at
sensitivity 0.05) about -0.15: the blue queries are all rejected. In one whose unseen class is red
or orange the anchor (blue against the other) is about -1.1 or -1.6 and the threshold below -1.2:
none is. ``mixed`` has five classes of random cells, 30% of them in the class's colour, on which
the measures vary from episode to episode.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from emdcli import defaults
from emdcli.cli import app
from emdcli.errors import DatasetError, ModelError, UsageError
from emdcli.features.source import FeatureSource
from emdcli.io.folders import read_labelled_folder
from emdcli.matching.rejection import OpenSetScorer, ReferenceBank, calibrate_rejection, reference_bank_path
from emdcli.matching.support import Matcher
from emdcli.model.backbone import Backbone
from emdcli.tasks.episodes import Episode, sample_episodes, what_fits
from emdcli.tasks.open_set import MEASURES, auroc, evaluate_open_set, evaluate_open_set_episodes
from tests.conftest import build_tiny_model, make_image

runner = CliRunner()

CERTAIN = {"red": (220, 30, 30), "orange": (230, 110, 30), "blue": (30, 40, 220)}
MIXED = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "yellow": (220, 200, 30),
         "white": (240, 240, 240)}  # fmt: skip

#: The CSV header of ``evaluate --open-set``, in order.
COLUMNS = [
    "method", "way", "shot", "query", "open_set", "episodes", "sensitivity", "auroc", "auroc_ci95", "accuracy",
    "accuracy_ci95", "accuracy_rejecting", "accuracy_rejecting_ci95", "in_set_rejected", "in_set_rejected_ci95",
    "unseen_rejected", "unseen_rejected_ci95", "threshold", "threshold_ci95", "seconds_per_episode",
]  # fmt: skip
#: The fields of the JSON document's head (before ``rows``) with --open-set.
HEADER = ["command", "emdcli", "dataset", "model", "model_sha256", "way", "shot", "query", "open_set",
          "sensitivity", "episodes", "seed", "images", "unreadable", "classes", "classes_too_small"]  # fmt: skip


@pytest.fixture()
def certain_set(tmp_path: Path) -> Path:
    for k, (name, colour) in enumerate(CERTAIN.items()):
        for i in range(4):
            make_image(tmp_path / "certain" / name / f"img_{i}.png", colour, 100 * k + i)
    return tmp_path / "certain"


@pytest.fixture()
def mixed_set(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "mixed"
    for name, colour in MIXED.items():
        (root / name).mkdir(parents=True)
        for i in range(4):
            cells = rng.integers(0, 256, (4, 4, 3))
            cells[rng.random((4, 4)) < 0.3] = colour
            Image.fromarray(np.kron(cells, np.ones((8, 8, 1))).astype(np.uint8)).save(root / name / f"img_{i}.png")
    return root


def open_set(tiny_model: Path, dataset: Path, *rest: str) -> Any:
    args = ["evaluate", str(dataset), "--model", str(tiny_model), "--way", "2", "--query", "2", "--episodes", "8",
            *rest]  # fmt: skip
    return runner.invoke(app, args)


def document(res: Any) -> dict[str, Any]:
    assert res.exit_code == 0, res.output
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def untimed(doc: dict[str, Any]) -> dict[str, Any]:
    """The document without what depends on the clock."""
    doc = {**doc, "summary": {k: v for k, v in doc["summary"].items() if k != "seconds"}}
    doc["rows"] = [{k: v for k, v in r.items() if k != "seconds_per_episode"} for r in doc["rows"]]
    return doc


def set_labels(dataset: Path) -> tuple[list[str], np.ndarray]:
    """The class names (folder order) and the label of each image, as the command reads the set."""
    folder = read_labelled_folder(dataset)
    return list(folder.names), np.repeat(np.arange(len(folder.classes)), [len(c.files) for c in folder.classes])


# --- episodes -------------------------------------------------------------------------------


def original_sampler(labels: np.ndarray, way: int, shot: int, query: int, episodes: int, seed: int) -> list:
    """The sampler as it was before open-set episodes, to show ``unseen=0`` draws the same episodes."""
    by_class = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    eligible = [c for c, idx in by_class.items() if len(idx) >= shot + query]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        classes = rng.choice(np.asarray(eligible), size=way, replace=False)
        picks = np.stack([rng.choice(by_class[int(c)], size=shot + query, replace=False) for c in classes])
        out.append((classes.tolist(), picks.tolist()))
    return out


def test_without_unseen_classes_the_episodes_are_those_of_before() -> None:
    labels = np.repeat(np.arange(7), [6, 9, 5, 8, 2, 7, 6])
    plan = sample_episodes(labels, 4, 2, 3, 30, seed=11)
    got = [(e.classes.tolist(), np.concatenate([e.support, e.query], axis=1).tolist()) for e in plan.episodes]
    assert got == original_sampler(labels, 4, 2, 3, 30, 11)
    assert plan.unseen == 0 and all(e.unseen.size == 0 and e.unseen_classes.size == 0 for e in plan.episodes)


def test_open_set_episodes_draw_unseen_classes_apart() -> None:
    labels = np.repeat(np.arange(8), [6, 9, 5, 8, 2, 7, 6, 5])
    plan = sample_episodes(labels, 3, 2, 3, 40, seed=2, unseen=2)
    assert plan.unseen == 2 and plan.too_small == (4,)
    for ep in plan.episodes:
        assert ep.support.shape == (3, 2) and ep.query.shape == (3, 3) and ep.unseen.shape == (2, 3)
        assert ep.unseen_classes.shape == (2,)
        assert len(set(ep.classes.tolist()) | set(ep.unseen_classes.tolist())) == 5
        assert 4 not in ep.unseen_classes
        for row, cls in enumerate(ep.unseen_classes):
            assert (labels[ep.unseen[row]] == cls).all() and len(set(ep.unseen[row].tolist())) == 3
    drawn = {int(c) for ep in plan.episodes for c in ep.unseen_classes}
    assert drawn == {0, 1, 2, 3, 5, 6, 7}  # every class large enough takes the unseen part sometimes
    again = sample_episodes(labels, 3, 2, 3, 40, seed=2, unseen=2)
    assert all(np.array_equal(a.unseen, b.unseen) and np.array_equal(a.query, b.query)
               for a, b in zip(plan.episodes, again.episodes, strict=True))  # fmt: skip


@pytest.mark.parametrize(
    ("sizes", "way", "unseen", "hint"),
    [
        ([4] * 5, 5, 1, "the set has 5 classes, and --way 5 --open-set 1 draws 6: --way 4 --open-set 1 fits"),
        ([4] * 5, 2, 4, "the set has 5 classes, and --way 2 --open-set 4 draws 6: --way 2 --open-set 3 fits"),
        ([9, 9], 2, 1, "the set has 2 classes: an open-set episode needs 3 (--way 2 --open-set 1)"),
        ([4] * 5, 4, 1, "the 5 largest classes hold 4 images or more: --shot 1 --query 3 fits (or lower --way or "
                        "--open-set)"),
    ],
)  # fmt: skip
def test_a_set_too_small_for_open_set_episodes_is_told_what_fits(
    sizes: list[int], way: int, unseen: int, hint: str
) -> None:
    from emdcli.cli.stderr import as_flags

    assert as_flags(what_fits(sizes, way, 1, unseen)) == hint  # the library names `way`; the command line --way
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    with pytest.raises(DatasetError) as caught:
        sample_episodes(labels, way, 1, 15, 3, 0, unseen=unseen)
    assert as_flags(caught.value.hint or "") == hint
    kind = "class" if unseen == 1 else "classes"
    assert f"with 15 queries per class and {unseen} unseen {kind} needs" in caught.value.message


# --- the measures ---------------------------------------------------------------------------


def pairwise_auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    wins = (inside[:, None] > outside[None, :]) + 0.5 * (inside[:, None] == outside[None, :])
    return float(wins.mean())


def test_auroc_is_the_share_of_pairs_ranked_right() -> None:
    rng = np.random.default_rng(0)
    inside, outside = rng.integers(0, 5, 13).astype(float), rng.integers(0, 5, 7).astype(float)  # many ties
    assert auroc(inside, outside) == pytest.approx(pairwise_auroc(inside, outside))
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([0.0]), np.array([1.0, 2.0])) == 0.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    with pytest.raises(ValueError):
        auroc(np.array([1.0]), np.zeros(0))


def embedded(tiny_model: Path, dataset: Path) -> np.ndarray:
    """(N, C, H, W) maps of the set in folder order, each image embedded on its own."""
    from emdcli.io.images import load_image

    backbone = Backbone(tiny_model)
    folder = read_labelled_folder(dataset)
    paths = [p for c in folder.classes for p in c.files]
    return np.concatenate([backbone(load_image(p, backbone.manifest.preprocess)[None]) for p in paths])


def tiny_bank(tiny_model: Path) -> ReferenceBank:
    """The reference bank conftest wrote beside the tiny model's manifest."""
    return ReferenceBank.load(reference_bank_path(tiny_model), Backbone(tiny_model).manifest.sha256)


def independent_measures(
    features: np.ndarray, episode: Episode, bank: ReferenceBank, sensitivity: float, set_aside: bool = True
) -> dict[str, float]:
    """One episode's measures counted here: the open-set score and the threshold from the scorer and
    calibrate_rejection, the queries below the threshold set aside from the transductive step (not when
    ``set_aside`` is False); the AUROC over every pair of queries, the accuracy and shares by counting."""
    matcher = Matcher()
    support = features[episode.support]
    known, unseen = features[episode.query.reshape(-1)], features[episode.unseen.reshape(-1)]
    classes = matcher.fit(list(support))
    rejection = calibrate_rejection(OpenSetScorer.from_classes(bank, classes), sensitivity)
    threshold = rejection.threshold
    queries = np.concatenate([known, unseen])
    scores = rejection.scores(queries.mean(axis=(2, 3)))
    foreign = np.array([score < threshold for score in scores])
    parts = [matcher.match(classes, q) for q in queries]
    final = matcher.score_set(classes, parts, queries, foreign=foreign if set_aside else None).scores
    truth = [k for k in range(len(support)) for _ in range(episode.query.shape[1])]
    inside, outside = scores[: len(known)], scores[len(known) :]
    correct = [int(np.nanargmax(final[i])) == truth[i] for i in range(len(known))]
    kept_correct = [right and score >= threshold for right, score in zip(correct, inside, strict=True)]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in inside for b in outside)
    return {
        "auroc": wins / (len(inside) * len(outside)), "accuracy": sum(correct) / len(known),
        "accuracy_rejecting": sum(kept_correct) / len(known),
        "in_set_rejected": sum(score < threshold for score in inside) / len(inside),
        "unseen_rejected": sum(score < threshold for score in outside) / len(outside), "threshold": threshold,
    }  # fmt: skip


def test_measures_are_counted_right_and_vary_by_episode(tiny_model: Path, mixed_set: Path) -> None:
    features = embedded(tiny_model, mixed_set)
    bank = tiny_bank(tiny_model)
    _, labels = set_labels(mixed_set)
    plan = sample_episodes(labels, 3, 1, 2, 10, seed=1, unseen=2)
    result = evaluate_open_set_episodes(features, plan, bank, 0.3, workers=2)
    counted = [independent_measures(features, ep, bank, 0.3) for ep in plan.episodes]
    want = {m: np.array([c[m] for c in counted]) for m in MEASURES}
    for m in MEASURES:
        np.testing.assert_allclose(result.per_episode[m], want[m], atol=1e-9, err_msg=m)
    # the set can show an error: the measures differ from episode to episode, rejection changes accuracy
    for m in ("auroc", "accuracy", "in_set_rejected", "unseen_rejected", "threshold"):
        assert len(set(want[m].tolist())) > 2, m
    assert (want["accuracy_rejecting"] < want["accuracy"]).any()
    # and setting the foreign queries aside matters: without it the accuracy would differ
    mixed_in = np.array([independent_measures(features, ep, bank, 0.3, set_aside=False)["accuracy"]
                         for ep in plan.episodes])  # fmt: skip
    assert (mixed_in != want["accuracy"]).any()
    assert (result.way, result.shot, result.query, result.unseen, result.episodes) == (3, 1, 2, 2, 10)
    assert result.sensitivity == 0.3
    assert result.auroc == pytest.approx(want["auroc"].mean())
    assert result.auroc_ci95 == pytest.approx(1.96 * want["auroc"].std() / np.sqrt(10))
    assert result.unseen_rejected == pytest.approx(100 * want["unseen_rejected"].mean())
    assert result.accuracy_rejecting_ci95 == pytest.approx(196 * want["accuracy_rejecting"].std() / np.sqrt(10))
    assert result.threshold == pytest.approx(want["threshold"].mean())
    one = evaluate_open_set_episodes(features, plan, bank, 0.3, workers=1)
    for m in MEASURES:
        np.testing.assert_array_equal(one.per_episode[m], result.per_episode[m], err_msg=m)
    # the score is inductive: the AUROC does not depend on the sensitivity; a higher one rejects more
    low = evaluate_open_set_episodes(features, plan, bank, 0.05, workers=1)
    np.testing.assert_array_equal(low.per_episode["auroc"], result.per_episode["auroc"])
    assert (low.per_episode["threshold"] < result.per_episode["threshold"]).all()
    assert low.in_set_rejected < result.in_set_rejected and low.unseen_rejected < result.unseen_rejected


def test_the_unseen_class_is_rejected_exactly_when_the_known_ones_look_alike(
    tiny_model: Path, certain_set: Path
) -> None:
    names, _ = set_labels(certain_set)
    run = evaluate_open_set(certain_set, way=2, unseen=1, shot=1, query=3, episodes=12, seed=0,
                            source=FeatureSource(Backbone(tiny_model)), workers=1)  # fmt: skip
    blue_unseen = np.array([names[int(ep.unseen_classes[0])] == "blue" for ep in run.plan.episodes])
    assert 0 < blue_unseen.sum() < 12  # both kinds of episode were drawn
    assert run.result.sensitivity == defaults.REJECT_SENSITIVITY
    np.testing.assert_array_equal(run.result.per_episode["unseen_rejected"], blue_unseen.astype(float))
    for m in ("auroc", "accuracy", "accuracy_rejecting"):
        np.testing.assert_array_equal(run.result.per_episode[m], np.ones(12), err_msg=m)
    np.testing.assert_array_equal(run.result.per_episode["in_set_rejected"], np.zeros(12))
    assert run.result.unseen_rejected == pytest.approx(100 * blue_unseen.mean())
    thresholds = run.result.per_episode["threshold"]  # as the module docstring says
    assert (np.abs(thresholds[blue_unseen] + 0.15) < 0.05).all() and (thresholds[~blue_unseen] < -1.2).all()


class NoEmbedding:
    """A feature source of ``tiny_model``'s model that fails the test when it embeds an image."""

    def __init__(self, model: Path) -> None:
        self.extractor = Backbone(model)

    def labelled(self, *args: object) -> None:
        raise AssertionError("an image was embedded")


def test_a_bad_sensitivity_or_shape_is_refused_before_any_image_is_embedded(
    tiny_model: Path, certain_set: Path
) -> None:
    source: Any = NoEmbedding(tiny_model)
    with pytest.raises(DatasetError, match="only 3 classes have the 3 images"):
        evaluate_open_set(certain_set, way=3, unseen=1, query=2, source=source)
    for bad in (0.0, 0.005, 0.6, 1.0):
        with pytest.raises(UsageError, match=f"the sensitivity must be between 0.01 and 0.5, got {bad:g}"):
            evaluate_open_set(certain_set, way=2, unseen=1, query=2, sensitivity=bad, source=source)
    with pytest.raises(UsageError, match="at least 1 unseen class"):
        evaluate_open_set(certain_set, way=2, unseen=0, query=2, source=source)


def test_a_model_without_a_reference_bank_is_refused(tmp_path: Path, certain_set: Path) -> None:
    bare = build_tiny_model(tmp_path / "bare")
    assert not reference_bank_path(bare).exists()
    with pytest.raises(ModelError, match="the model has no reference bank") as caught:
        evaluate_open_set(certain_set, way=2, unseen=1, query=2, source=NoEmbedding(bare))  # before embedding
    assert caught.value.hint is not None and "build_banks.py" in caught.value.hint
    res = open_set(bare, certain_set, "--open-set", "1")
    assert res.exit_code == 1, res.output
    assert "the model has no reference bank" in " ".join(res.stderr.split()) and res.stdout == ""


# --- the command ----------------------------------------------------------------------------


def test_json_has_one_row_of_the_measures(tiny_model: Path, certain_set: Path) -> None:
    doc = document(open_set(tiny_model, certain_set, "--open-set", "1", "--format", "json"))
    assert list(doc)[: len(HEADER)] == HEADER and list(doc)[len(HEADER) :] == ["rows", "summary"]
    assert (doc["open_set"], doc["sensitivity"], doc["way"], doc["images"], doc["classes"]) == (
        1, defaults.REJECT_SENSITIVITY, 2, 12, 3)  # fmt: skip
    assert len(doc["rows"]) == 1 and list(doc["rows"][0]) == COLUMNS
    row = doc["rows"][0]
    assert (row["method"], row["open_set"], row["episodes"], row["sensitivity"]) == (
        "default", 1, 8, defaults.REJECT_SENSITIVITY)  # fmt: skip
    names, labels = set_labels(certain_set)
    plan = sample_episodes(labels, 2, 1, 2, 8, seed=0, unseen=1)
    blue = np.array([names[int(ep.unseen_classes[0])] == "blue" for ep in plan.episodes], dtype=float)
    assert 0 < blue.sum() < 8
    assert row["unseen_rejected"] == pytest.approx(100 * blue.mean(), abs=0.005)
    assert row["unseen_rejected_ci95"] == pytest.approx(196 * blue.std() / np.sqrt(8), abs=0.005)
    assert (row["auroc"], row["auroc_ci95"], row["accuracy"], row["in_set_rejected"]) == (1.0, 0.0, 100.0, 0.0)
    assert doc["summary"]["episodes"] == 8


def test_csv_and_table(tiny_model: Path, mixed_set: Path) -> None:
    args = ("--way", "3", "--open-set", "2", "--sensitivity", "0.2", "--seed", "1")
    res = open_set(tiny_model, mixed_set, *args, "--format", "csv")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == ",".join(COLUMNS)
    row = next(csv.DictReader(io.StringIO(res.stdout)))
    doc = document(open_set(tiny_model, mixed_set, *args, "--format", "json"))
    assert {k: v for k, v in row.items() if k != "seconds_per_episode"} == {
        k: str(v) for k, v in doc["rows"][0].items() if k != "seconds_per_episode"
    }
    assert doc["sensitivity"] == 0.2 and doc["rows"][0]["sensitivity"] == 0.2 and row["sensitivity"] == "0.2"
    at_default = ("--way", "3", "--open-set", "2", "--seed", "1", "--format", "json")
    default = document(open_set(tiny_model, mixed_set, *at_default))["rows"][0]
    assert default["sensitivity"] == defaults.REJECT_SENSITIVITY
    assert default["auroc"] == doc["rows"][0]["auroc"] and default["threshold"] < doc["rows"][0]["threshold"]
    res = open_set(tiny_model, mixed_set, *args, "--format", "table")
    assert res.exit_code == 0, res.output
    r = doc["rows"][0]
    assert "3-way 1-shot, 2 queries per class, 2 unseen classes, 8 episodes (seed 1)" in " ".join(res.stdout.split())
    cells = {
        "AUROC, in-set vs unseen": f"{r['auroc']:.3f} ± {r['auroc_ci95']:.3f}",
        "in-set accuracy %": f"{r['accuracy']:.1f} ± {r['accuracy_ci95']:.1f}",
        "in-set accuracy with rejection %": f"{r['accuracy_rejecting']:.1f} ± {r['accuracy_rejecting_ci95']:.1f}",
        "in-set queries rejected %": f"{r['in_set_rejected']:.1f} ± {r['in_set_rejected_ci95']:.1f}",
        "unseen queries rejected %": f"{r['unseen_rejected']:.1f} ± {r['unseen_rejected_ci95']:.1f}",
        "threshold (calibrated at sensitivity 0.2)": f"{r['threshold']:.3f} ± {r['threshold_ci95']:.3f}",
    }
    shown = [" ".join(line.split()) for line in res.stdout.splitlines()]
    for name, value in cells.items():
        assert f"{name} {value}" in shown, name


def test_same_seed_same_numbers(tiny_model: Path, mixed_set: Path) -> None:
    args = ("--way", "3", "--open-set", "2", "--format", "json")
    first = untimed(document(open_set(tiny_model, mixed_set, *args, "--seed", "3")))
    assert untimed(document(open_set(tiny_model, mixed_set, *args, "--seed", "3", "--jobs", "1"))) == first
    other = untimed(document(open_set(tiny_model, mixed_set, *args, "--seed", "4")))
    assert other["rows"] != first["rows"]


def test_open_set_0_is_todays_evaluate(tiny_model: Path, mixed_set: Path) -> None:
    for fmt in ("json", "csv"):
        today = open_set(tiny_model, mixed_set, "--methods", "proto,emd", "--format", fmt)
        zero = open_set(tiny_model, mixed_set, "--methods", "proto,emd", "--open-set", "0", "--format", fmt)
        assert today.exit_code == zero.exit_code == 0, today.output + zero.output
        if fmt == "json":
            assert untimed(json.loads(zero.stdout)) == untimed(json.loads(today.stdout))
            assert "open_set" not in json.loads(today.stdout) and "sensitivity" not in json.loads(today.stdout)
        else:
            rows = [list(csv.reader(io.StringIO(r.stdout))) for r in (today, zero)]
            assert [[c[:-1] for c in rs] for rs in rows][0] == [[c[:-1] for c in rs] for rs in rows][1]
            assert rows[0][0][0] == "method" and [r[0] for r in rows[0][1:]] == ["proto", "emd"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--way", "3", "--open-set", "1"], "only 3 classes have the 3 images a 3-way 1-shot episode with 2 queries "
                                            "per class and 1 unseen class needs (the largest classes hold 4, 4, 4)"),
        (["--way", "3", "--open-set", "1"], "Hint: the set has 3 classes, and --way 3 --open-set 1 draws 4: --way 2 "
                                            "--open-set 1 fits"),
        (["--open-set", "1", "--query", "4"], "--shot 1 --query 3 fits (or lower --way or --open-set)"),
        (["--open-set", "1", "--sensitivity", "0.6"], "the sensitivity must be between 0.01 and 0.5, got 0.6"),
        (["--open-set", "1", "--sensitivity", "0"], "the sensitivity must be between 0.01 and 0.5, got 0"),
        (["--sensitivity", "0.6"], "the sensitivity must be between 0.01 and 0.5, got 0.6"),
        (["--open-set", "1", "--methods", "proto"], "--open-set scores the default method only"),
        (["--open-set", "-1"], "Invalid value for '--open-set': -1 is below the minimum of 0."),
    ],
)  # fmt: skip
def test_usage_errors(tiny_model: Path, certain_set: Path, args: list[str], message: str) -> None:
    res = open_set(tiny_model, certain_set, *args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.stderr.split())
    assert res.stdout == ""
