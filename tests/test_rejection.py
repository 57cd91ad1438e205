"""Open-set rejection ("none of these"): the score, its calibration, and --reject on classify and batch.

The generated images: the support set has red, green and blue squares; the out-of-set queries
are white, black and yellow squares, whose open-set scores (best class score, matched alone) are
far below those of red, green and blue queries with the tiny model, so a threshold between them
must reject exactly the out-of-set ones.
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
from emdcli.matching.rejection import Rejection, calibrate_rejection, open_set_scores, simulated_out_of_set
from emdcli.matching.support import Matcher
from emdcli.model.backbone import Backbone
from emdcli.tasks.classify import Classifier, Reject
from emdcli.tasks.prediction import Prediction, Ranked, flat_row
from tests.conftest import make_image

runner = CliRunner()
OTHERS = {"white": (240, 240, 240), "black": (20, 20, 20), "yellow": (230, 200, 20)}


@pytest.fixture()
def open_queries(query_dir: Path) -> Path:
    """The red/green/blue queries plus three of colours the support set lacks, in ``other/``."""
    for i, colour in enumerate(OTHERS.values()):
        make_image(query_dir / "other" / f"o{i}.png", colour, seed=50 + i)
    return query_dir


def test_calibration_is_the_quantile_that_lets_the_leak_through() -> None:
    found = calibrate_rejection(np.array([0.1, 0.2, 0.3, 0.4, 0.5]), leak=0.2, label="none")
    assert found == Rejection(threshold=pytest.approx(0.42), leak=0.2, calibrated_on=5, label="none")
    assert found.rejects(0.41) and not found.rejects(0.43) and not found.rejects(None)
    with pytest.raises(ValueError, match="leak"):
        calibrate_rejection(np.array([0.1]), leak=1.0)
    with pytest.raises(ValueError, match="two classes"):
        calibrate_rejection(np.zeros(0), leak=0.1)


def test_simulated_scores_leave_each_examples_own_class_out() -> None:
    rng = np.random.default_rng(3)
    per_class = [rng.normal(size=(2, 8, 3, 3)).astype(np.float32) + 2 * k for k in range(3)]
    matcher = Matcher(transductive=False)
    classes = matcher.fit(per_class)
    simulated = simulated_out_of_set(matcher, classes, ((k, m) for k, maps in enumerate(per_class) for m in maps))
    weight = matcher.weight_for(classes)
    for i, (k, fmap) in enumerate((k, m) for k, maps in enumerate(per_class) for m in maps):
        totals = matcher.match(classes, fmap).total(weight)
        assert simulated[i] == pytest.approx(max(t for j, t in enumerate(totals) if j != k))
        assert simulated[i] < totals[k]  # its own class, left out, would have scored higher
    parts = [matcher.match(classes, m) for m in per_class[0]]
    assert open_set_scores(matcher, classes, parts) == pytest.approx([p.total(weight).max() for p in parts])


def test_auto_threshold_is_calibrated_on_the_support_set(tiny_model: Path, support_dir: Path) -> None:
    source = FeatureSource(Backbone(tiny_model))
    matcher = Matcher()
    support = Classifier(source, matcher).fit(read_labelled_folder(support_dir), reject=Reject(leak=0.25))
    assert support.rejection is not None and support.rejection.calibrated_on == 9 and support.examples == {}
    folder = read_labelled_folder(support_dir)
    pairs = [(k, f) for k, c in enumerate(folder.classes) for f in source.array(list(c.files)).features]
    want = np.quantile(simulated_out_of_set(matcher, support.nodes, pairs), 0.75)
    assert support.rejection.threshold == pytest.approx(want)


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


def test_classify_rejects_the_images_of_other_classes(tiny_model: Path, support_dir: Path, open_queries: Path) -> None:
    args = ["classify", str(support_dir), str(open_queries), "--model", str(tiny_model), "-f", "csv", "--no-cache"]
    res = runner.invoke(app, [*args, "--reject", "0.6", "--unknown-label", "none_of_these"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 9
    for row in rows:
        outside = "/other/" in row["path"]
        assert row["predicted"] == ("none_of_these" if outside else row["true_label"]), row
        assert row["best_class"] in ("red", "green", "blue") and row["score"] and row["open_set_score"]
        assert (float(row["open_set_score"]) < 0.6) == outside
    assert "3 rejected as none of the classes" in res.stderr
    plain = runner.invoke(app, args)  # without --reject: every query gets a class, no new columns
    assert "best_class" not in plain.stdout.splitlines()[0]
    assert {r["predicted"] for r in csv.DictReader(io.StringIO(plain.stdout))} <= {"red", "green", "blue"}


def test_classify_json_says_how_it_rejected(tiny_model: Path, support_dir: Path, open_queries: Path) -> None:
    args = ["classify", str(support_dir), str(open_queries), "--model", str(tiny_model), "-f", "json", "-q"]
    doc = json.loads(runner.invoke(app, [*args, "--reject", "auto"]).stdout)
    assert doc["reject"]["calibrated_on"] == 9 and doc["reject"]["leak"] == 0.1 and doc["reject"]["label"] == "unknown"
    assert isinstance(doc["reject"]["threshold"], float)
    assert doc["summary"]["rejected"] == sum(r["predicted"] == "unknown" for r in doc["rows"])
    given = json.loads(runner.invoke(app, [*args, "--reject", "0.6"]).stdout)
    assert given["reject"] == {"threshold": 0.6, "leak": None, "calibrated_on": 0, "label": "unknown"}
    assert given["summary"]["rejected"] == 3


@pytest.mark.parametrize("value", ["sometimes", "nan", ""])
def test_a_bad_reject_value_is_a_usage_error(tiny_model: Path, support_dir: Path, query_dir: Path, value: str) -> None:
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir), "--model", str(tiny_model),
                              "--reject", value])  # fmt: skip
    assert res.exit_code == 2
    assert "reject must be none, auto or a threshold (a number)" in res.stderr


def test_reject_from_the_config_file(tiny_model: Path, support_dir: Path, open_queries: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("reject: 0.6\nunknown-label: other\n")
    res = runner.invoke(app, ["classify", str(support_dir), str(open_queries), "--model", str(tiny_model),
                              "-f", "csv", "--config", str(config)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sum(r["predicted"] == "other" for r in csv.DictReader(io.StringIO(res.stdout))) == 3


def test_batch_rejects_as_classify_does(
    tiny_model: Path, support_dir: Path, open_queries: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rows.csv"
    res = runner.invoke(app, ["batch", str(support_dir), str(open_queries), "-o", str(out), "--model",
                              str(tiny_model), "--reject", "0.6", "--no-cache"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["path"] for r in rows if r["predicted"] == "unknown") == sorted(
        str(p) for p in (open_queries / "other").iterdir()
    )
    assert all(r["best_class"] for r in rows) and "3 rejected as none of the classes" in " ".join(res.stderr.split())
