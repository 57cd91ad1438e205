"""Open-set rejection ("none of these"): the bank-relative score, its calibration, the outlier guard of
the transductive step, and --reject / --sensitivity on classify and batch.

The generated images: support classes of warm colours (red, orange, pink), in-set queries of the
same colours, and foreign queries of cold ones (blue, green, grey); the tiny model's reference bank
holds generic colours. As in a real image set, the support classes resemble each other more than
they resemble the foreign kind, which is what the calibration's anchor relies on.
"""

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
from emdcli.matching.rejection import (
    OpenSetScorer,
    ReferenceBank,
    calibrate_rejection,
    offset_for,
    reference_bank_path,
    sensitivity_range,
)
from emdcli.matching.support import Matcher
from emdcli.matching.transductive import Transduction
from emdcli.model.backbone import Backbone
from emdcli.tasks.classify import Classifier, Reject
from emdcli.tasks.prediction import Prediction, Ranked, flat_row
from tests.conftest import build_tiny_bank, build_tiny_model, make_image

runner = CliRunner()
WARM = {"red": (220, 30, 30), "orange": (230, 130, 30), "pink": (220, 40, 150)}
COLD = {"blue": (30, 40, 220), "green": (30, 200, 40), "grey": (128, 128, 128)}


def warm_support(root: Path, shots: int) -> Path:
    for k, (name, colour) in enumerate(WARM.items()):
        for i in range(shots):
            make_image(root / name / f"{i}.png", colour, seed=100 + 10 * k + i)
    return root


@pytest.fixture()
def inbox(tmp_path: Path) -> Path:
    """4 in-set queries of each warm class (in folders named by class) and 2 of each cold colour in other/."""
    root = tmp_path / "inbox"
    for k, (name, colour) in enumerate(WARM.items()):
        for i in range(4):
            make_image(root / name / f"{i}.png", colour, seed=300 + 10 * k + i)
    for k, (name, colour) in enumerate(COLD.items()):
        for i in range(2):
            make_image(root / "other" / f"{name}{i}.png", colour, seed=400 + 10 * k + i)
    return root


# the score and its calibration, by hand ---------------------------------------------------------


def test_a_density_is_the_mean_cosine_to_the_k_nearest_bank_images() -> None:
    bank = ReferenceBank(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]], np.float32), "sha", k=2)
    assert bank.centre == pytest.approx([0, 0, 0])
    unit = bank.normalised(np.array([[2.0, 0.0, 0.0]]))
    cosines = sorted(float(unit[0] @ u) for u in bank.unit)  # 1, 0, 0, -1/sqrt(3)
    assert (cosines[-1] + cosines[-2]) / 2 == pytest.approx(0.5)
    assert bank.density(unit) == pytest.approx([0.5])


def test_the_score_is_the_best_similarity_relative_to_both_densities() -> None:
    rng = np.random.default_rng(0)
    bank = ReferenceBank(rng.normal(size=(30, 4)).astype(np.float32), "sha", k=3)
    examples = rng.normal(size=(4, 4))
    scorer = OpenSetScorer.from_classes(bank, _Classes(examples, [0, 0, 1, 1]))
    query = rng.normal(size=(2, 4))
    q = bank.normalised(query)
    x = bank.normalised(examples)
    want = [max(float(q[i] @ x[j]) - (bank.density(q[i : i + 1])[0] + bank.density(x[j : j + 1])[0]) / 2
                for j in range(4)) for i in range(2)]  # fmt: skip
    assert scorer.scores(query) == pytest.approx(want)


def test_the_anchor_adds_the_own_class_level_only_when_every_class_has_two_examples() -> None:
    rng = np.random.default_rng(1)
    bank = ReferenceBank(rng.normal(size=(20, 3)).astype(np.float32), "sha", k=2)
    examples = rng.normal(size=(4, 3))
    rel = OpenSetScorer.from_classes(bank, _Classes(examples, [0, 1, 2, 2])).pairwise(examples)
    one = OpenSetScorer.from_classes(bank, _Classes(examples, [0, 1, 2, 2]))
    other = np.mean([max(rel[i, j] for j in range(4) if [0, 1, 2, 2][j] != [0, 1, 2, 2][i]) for i in range(4)])
    assert one.anchor() == pytest.approx(other)  # a class of one example: the other classes only
    two = OpenSetScorer.from_classes(bank, _Classes(examples, [0, 0, 1, 1]))
    labels = [0, 0, 1, 1]
    other = np.mean([max(rel[i, j] for j in range(4) if labels[j] != labels[i]) for i in range(4)])
    own = np.mean([max(rel[i, j] for j in range(4) if labels[j] == labels[i] and j != i) for i in range(4)])
    assert two.anchor() == pytest.approx((other + own) / 2)


def test_the_threshold_is_the_anchor_plus_the_measured_offset() -> None:
    rng = np.random.default_rng(2)
    bank = ReferenceBank(rng.normal(size=(20, 3)).astype(np.float32), "sha", k=2)
    scorer = OpenSetScorer.from_classes(bank, _Classes(rng.normal(size=(6, 3)), [0, 0, 1, 1, 2, 2]))
    found = calibrate_rejection(scorer, 0.05, label="none")
    assert found.threshold == pytest.approx(scorer.anchor() + offset_for(2, 0.05))
    assert (found.sensitivity, found.label, found.weak) == (0.05, "none", None)
    # more sensitive: a higher threshold; between measured points the offset is interpolated
    assert offset_for(2, 0.2) > offset_for(2, 0.05) > offset_for(2, 0.01)
    assert offset_for(5, 0.075) == pytest.approx((offset_for(5, 0.05) + offset_for(5, 0.1)) / 2)
    assert offset_for(7, 0.05) == offset_for(5, 0.05)  # the largest measured count up to it
    low, high = sensitivity_range()
    with pytest.raises(ValueError, match="sensitivity"):
        offset_for(1, high + 0.1)
    assert found.rejects(found.threshold - 1e-9) and not found.rejects(found.threshold) and not found.rejects(None)


@pytest.mark.parametrize(("labels", "weak"), [([0, 1, 2], "1 example in a class"), ([0, 0, 1, 1], "only 2 classes"),
                                              ([0, 0, 1, 1, 2, 2], None)])  # fmt: skip
def test_a_weak_calibration_says_why(labels: list[int], weak: str | None) -> None:
    rng = np.random.default_rng(3)
    bank = ReferenceBank(rng.normal(size=(20, 3)).astype(np.float32), "sha", k=2)
    scorer = OpenSetScorer.from_classes(bank, _Classes(rng.normal(size=(len(labels), 3)), labels))
    assert calibrate_rejection(scorer, 0.05).weak == weak


def test_a_bank_reads_back_and_refuses_another_model(tmp_path: Path) -> None:
    bank = ReferenceBank(np.arange(24, dtype=np.float32).reshape(12, 2), "abc123", "test images")
    bank.save(tmp_path / "m.bank.npz")
    again = ReferenceBank.load(tmp_path / "m.bank.npz", "abc123")
    assert again.features == pytest.approx(bank.features) and (again.model_sha256, again.source) == (
        "abc123", "test images")  # fmt: skip
    with pytest.raises(ValueError, match="computed with model abc123"):
        ReferenceBank.load(tmp_path / "m.bank.npz", "fff000")
    assert reference_bank_path(tmp_path / "m.json") == tmp_path / "m.bank.npz"


# the outlier guard of the transductive step ----------------------------------------------------------


def test_foreign_queries_move_no_class() -> None:
    """The in-set queries' scores with foreign queries set aside are exactly those of the in-set queries
    alone; without the guard, a crowd of foreign queries near one class changes them."""
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(3, 16)) * 3
    support = [(centres[k] + rng.normal(size=(2, 16)))[:, :, None, None].repeat(2, 2).repeat(2, 3) for k in range(3)]
    matcher = Matcher(kshot="mean", transductive=True, transduction=Transduction(min_spread=0.0, max_share=None))
    classes = matcher.fit([s.astype(np.float32) for s in support])
    inset = np.concatenate([centres[k] + rng.normal(size=(4, 16)) for k in range(3)])
    outliers = centres[0] * 0.3 + 5 + rng.normal(size=(12, 16))  # a crowd between class 0 and elsewhere
    maps = np.concatenate([inset, outliers])[:, :, None, None].repeat(2, 2).repeat(2, 3).astype(np.float32)
    parts = [matcher.match(classes, m) for m in maps]
    foreign = np.arange(len(maps)) >= len(inset)
    alone = matcher.score_set(classes, parts[: len(inset)], maps[: len(inset)]).scores
    guarded = matcher.score_set(classes, parts, maps, foreign=foreign).scores
    unguarded = matcher.score_set(classes, parts, maps).scores
    assert guarded[: len(inset)] == pytest.approx(alone)
    assert not np.allclose(unguarded[: len(inset)], alone)
    weight = matcher.weight_for(classes)
    assert guarded[len(inset) :] == pytest.approx(np.stack([p.total(weight) for p in parts[len(inset) :]]))


# classify, batch, explain ---------------------------------------------------------------------------


@pytest.mark.parametrize("shots", [1, 5])
def test_auto_rejects_the_foreign_kind_and_keeps_the_classes(
    tiny_model: Path, tmp_path: Path, inbox: Path, shots: int
) -> None:
    clf = Classifier(FeatureSource(Backbone(tiny_model)))
    support = clf.fit(read_labelled_folder(warm_support(tmp_path / "s", shots)), reject=Reject())
    preds = list(clf.predict(support, sorted(inbox.rglob("*.png"))))
    foreign = [p for p in preds if p.path.parent.name == "other"]
    inset = [p for p in preds if p.path.parent.name != "other"]
    assert [p.predicted for p in foreign] == ["unknown"] * 6
    assert all(p.predicted == p.true_label for p in inset)
    assert all(p.best_class in WARM for p in foreign)  # a rejected row keeps its nearest class


def test_a_trained_like_model_needs_its_own_bank(tmp_path: Path, inbox: Path) -> None:
    """A model in a folder of its own (as emdcli train writes one) works with the bank beside it, and
    without one --reject says what is missing instead of guessing."""
    manifest = build_tiny_model(tmp_path / "trained")
    args = ["classify", str(warm_support(tmp_path / "s", 2)), str(inbox), "--model", str(manifest), "-f", "csv"]
    res = runner.invoke(app, [*args, "--reject", "auto"])
    assert res.exit_code == 1 and "has no reference bank" in res.stderr and "build_banks.py" in res.stderr
    assert runner.invoke(app, args).exit_code == 0  # without --reject: no bank needed
    build_tiny_bank(manifest)
    res = runner.invoke(app, [*args, "--reject", "auto"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert sorted(r["path"] for r in rows if r["predicted"] == "unknown") == sorted(
        str(p) for p in (inbox / "other").iterdir())  # fmt: skip


def test_a_rejected_prediction_keeps_its_best_class_and_reads_back() -> None:
    ranking = (Ranked("cat", 0.4, 0.7), Ranked("dog", 0.1, 0.3))
    pred = Prediction(Path("q/dog/a.png"), "ok", ranking, "dog", open_set_score=0.12, rejected_as="unknown")
    assert (pred.predicted, pred.best_class, pred.correct) == ("unknown", "cat", False)
    record = pred.to_record(["cat", "dog"], 2, open_set=True)
    assert (record["predicted"], record["best_class"], record["open_set_score"], record["score"]) == (
        "unknown", "cat", 0.12, 0.4)  # fmt: skip
    for shape in (record, flat_row(record, ["cat", "dog"], 2)):
        again = Prediction.from_record(shape)
        assert (again.predicted, again.best_class, again.open_set_score) == ("unknown", "cat", 0.12)
    assert "best_class" not in pred.to_record(["cat", "dog"], 2)  # rejection off: the columns of before


def test_classify_json_says_how_it_rejected(tiny_model: Path, tmp_path: Path, inbox: Path) -> None:
    args = ["classify", str(warm_support(tmp_path / "s", 2)), str(inbox), "--model", str(tiny_model), "-f", "json"]
    res = runner.invoke(app, [*args, "--reject", "auto", "--sensitivity", "0.1"])
    doc = json.loads(res.stdout)
    assert doc["reject"]["sensitivity"] == 0.1 and doc["reject"]["label"] == "unknown"
    assert doc["reject"]["threshold"] == pytest.approx(doc["reject"]["anchor"] + offset_for(2, 0.1), abs=1e-5)
    assert doc["summary"]["rejected"] == sum(r["predicted"] == "unknown" for r in doc["rows"]) == 6
    assert "calibrated to reject about 10% of the queries that belong to a class" in " ".join(res.stderr.split())
    given = json.loads(runner.invoke(app, [*args, "--reject", "-0.3"]).stdout)
    assert given["reject"] == {"threshold": -0.3, "sensitivity": None, "anchor": None, "label": "unknown"}


def test_a_one_shot_calibration_says_it_is_rough(tiny_model: Path, tmp_path: Path, inbox: Path) -> None:
    args = ["classify", str(warm_support(tmp_path / "s", 1)), str(inbox), "--model", str(tiny_model), "-f", "csv"]
    res = runner.invoke(app, [*args, "--reject", "auto"])
    assert res.exit_code == 0, res.output
    assert "the calibration is rough with 1 example in a class" in " ".join(res.stderr.split())
    two = runner.invoke(app, ["classify", str(warm_support(tmp_path / "s2", 2)), str(inbox), "--model",
                              str(tiny_model), "-f", "csv", "--reject", "auto"])  # fmt: skip
    assert "rough" not in two.stderr


def test_a_threshold_that_rejects_everything_says_so(tiny_model: Path, tmp_path: Path, inbox: Path) -> None:
    args = ["classify", str(warm_support(tmp_path / "s", 2)), str(inbox), "--model", str(tiny_model), "-f", "csv"]
    res = runner.invoke(app, [*args, "--reject", "5"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.stderr.split())
    assert "--reject 5 rejected every query (the highest open_set_score was" in said and "--reject auto" in said
    assert "rejected every query" not in runner.invoke(app, [*args, "--reject", "auto"]).stderr


@pytest.mark.parametrize(("value", "said"), [("0", "the sensitivity must be between 0.01 and 0.5, got 0"),
                                             ("0.9", "the sensitivity must be between 0.01 and 0.5, got 0.9"),
                                             ("-1", "sensitivity must be a number of at least 0, got -1")])  # fmt: skip
def test_a_sensitivity_out_of_range_is_a_usage_error(
    tiny_model: Path, tmp_path: Path, inbox: Path, value: str, said: str
) -> None:
    res = runner.invoke(app, ["classify", str(warm_support(tmp_path / "s", 2)), str(inbox), "--model",
                              str(tiny_model), "--reject", "auto", "--sensitivity", value])  # fmt: skip
    assert res.exit_code == 2
    assert said in " ".join(res.stderr.split())


@pytest.mark.parametrize("value", ["sometimes", "nan", ""])
def test_a_bad_reject_value_is_a_usage_error(tiny_model: Path, support_dir: Path, query_dir: Path, value: str) -> None:
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir), "--model", str(tiny_model),
                              "--reject", value])  # fmt: skip
    assert res.exit_code == 2
    assert "reject must be none, auto or a threshold (a number)" in res.stderr


def test_reject_from_the_config_file(tiny_model: Path, tmp_path: Path, inbox: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("reject: auto\nsensitivity: 0.02\nunknown-label: other\n")
    res = runner.invoke(app, ["classify", str(warm_support(tmp_path / "s", 2)), str(inbox), "--model",
                              str(tiny_model), "-f", "json", "--config", str(config)])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["reject"]["sensitivity"] == 0.02 and sum(r["predicted"] == "other" for r in doc["rows"]) == 6


def test_batch_rejects_as_classify_does(tiny_model: Path, tmp_path: Path, inbox: Path) -> None:
    support = warm_support(tmp_path / "s", 2)
    out = tmp_path / "rows.csv"
    res = runner.invoke(app, ["batch", str(support), str(inbox), "-o", str(out), "--model", str(tiny_model),
                              "--reject", "auto", "--no-cache"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["path"] for r in rows if r["predicted"] == "unknown") == sorted(
        str(p) for p in (inbox / "other").iterdir()
    )
    assert all(r["best_class"] for r in rows) and "6 rejected as none of the classes" in " ".join(res.stderr.split())
    direct = runner.invoke(app, ["classify", str(support), str(inbox), "--model", str(tiny_model), "-f", "csv",
                                 "--reject", "auto"])  # fmt: skip
    by_path = {r["path"]: r for r in csv.DictReader(io.StringIO(direct.stdout))}
    for row in rows:
        assert (row["predicted"], row["open_set_score"]) == (by_path[row["path"]]["predicted"],
                                                             by_path[row["path"]]["open_set_score"])  # fmt: skip


def test_explain_dir_draws_a_rejected_query_against_its_nearest_class(
    tiny_model: Path, tmp_path: Path, inbox: Path
) -> None:
    """It crashed ("no examples kept for class 'unknown'") as soon as one query was rejected."""
    pictures, report = tmp_path / "pictures", tmp_path / "r.html"
    res = runner.invoke(app, ["classify", str(warm_support(tmp_path / "s", 2)), str(inbox), "--model",
                              str(tiny_model), "-f", "csv", "--reject", "auto", "--explain-dir", str(pictures),
                              "--report", str(report)])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    rejected = [r for r in rows if r["predicted"] == "unknown"]
    assert len(rejected) == 6 and all(r["picture"] and Path(r["picture"]).is_file() for r in rows)
    assert report.is_file()


class _Classes:
    """The fields of ClassNodes that OpenSetScorer.from_classes reads."""

    def __init__(self, pooled: np.ndarray, labels: list[int]) -> None:
        self.examples_pooled = np.asarray(pooled, dtype=np.float64)
        self.example_labels = np.asarray(labels)
        self.shots = tuple(int(n) for n in np.bincount(labels))
