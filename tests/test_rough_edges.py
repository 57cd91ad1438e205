"""What a new user hit first: each rough edge of issue 33 with a test that failed before its fix."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emdcli.cli import app

runner = CliRunner()


def test_the_path_column_keeps_each_query_as_given(
    tiny_model: Path, support_dir: Path, query_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``find . -print0`` gives ./a/b.png: the rows say ./a/b.png, so that they join back to the input list."""
    monkeypatch.chdir(query_dir.parent)
    given = ["./queries/red/img_0.png", "queries/green/../green/img_1.png"]
    res = runner.invoke(app, ["classify", str(support_dir), "-", "-0", "--model", str(tiny_model), "-f", "csv"],
                        input="\0".join(given) + "\0")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert [r["path"] for r in csv.DictReader(io.StringIO(res.stdout))] == given
    res = runner.invoke(app, ["classify", str(support_dir), "./queries/blue", "--model", str(tiny_model), "-f", "csv"])
    assert [r["path"] for r in csv.DictReader(io.StringIO(res.stdout))] == [
        "./queries/blue/img_0.png", "./queries/blue/img_1.png"]  # fmt: skip


def test_a_run_of_one_query_says_in_plain_words_why_it_was_matched_alone(
    tiny_model: Path, support_dir: Path, query_dir: Path
) -> None:
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir / "red"), "--model", str(tiny_model),
                              "-f", "csv"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir / "red" / "img_0.png"), "--model",
                              str(tiny_model), "-f", "csv"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "classified the one query on its own: matching queries together needs two or more" in res.stderr


def test_a_stopped_training_run_is_told_the_whole_command_that_resumes_it(tmp_path: Path) -> None:
    from emdcli.cli.train import continue_command
    from emdcli.tasks.training.settings import TrainSettings

    settings = TrainSettings(way=3, shot=2, lr=0.0005, val_classes=0.25, seed=7)
    said = continue_command(tmp_path / "my set", tmp_path / "out", settings, "trained-before")
    assert said == (f"emdcli train '{tmp_path / 'my set'}' --out {tmp_path / 'out'} --model trained-before --way 3 "
                    "--shot 2 --lr 0.0005 --val-classes 0.25 --seed 7 --resume")  # fmt: skip
    assert continue_command(tmp_path, tmp_path / "out", TrainSettings(), None) == (
        f"emdcli train {tmp_path} --out {tmp_path / 'out'} --resume")  # fmt: skip


def test_at_80_columns_a_class_name_stays_whole_and_the_path_folds_instead(tiny_model: Path, tmp_path: Path) -> None:
    from tests.conftest import make_folder

    names = {"red": "people_body_parts_and_gestures", "green": "household_electronics_and_tools", "blue": "b"}
    support = make_folder(tmp_path / "support", {"red": 2, "green": 2, "blue": 2})
    queries = make_folder(tmp_path / "queries" / "a_very_long_folder_name_for_queries" / "nested_level",
                          {"red": 1, "green": 1}, seed=5)  # fmt: skip
    for folder in (support, queries):
        for short, long in names.items():
            if (folder / short).exists():
                (folder / short).rename(folder / long)
    res = runner.invoke(app, ["classify", str(support), str(tmp_path / "queries"), "--model", str(tiny_model), "-f",
                              "table", "--top-k", "3"], env={"COLUMNS": "80"})  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(names["red"] in line.split() for line in lines) and any(names["green"] in line.split() for line in lines)


def test_the_library_classifies_images_in_memory_as_it_does_their_files(
    tiny_model: Path, support_dir: Path, query_dir: Path
) -> None:
    import numpy as np
    from PIL import Image

    from emdcli.features.source import FeatureSource
    from emdcli.io.folders import read_labelled_folder
    from emdcli.model.backbone import Backbone
    from emdcli.tasks.classify import Classifier

    clf = Classifier(FeatureSource(Backbone(tiny_model)))
    support = clf.fit(read_labelled_folder(support_dir))
    files = sorted(query_dir.rglob("*.png"))
    from_files = list(clf.predict(support, files))
    with Image.open(files[0]) as im:
        picture = im.copy()
    array = np.asarray(Image.open(files[1]).convert("RGB"))
    mixed = list(clf.predict(support, [picture, array, str(files[2]), *files[3:], np.zeros((4, 4), np.float32)]))
    assert [p.path for p in mixed[:2]] == [Path("<image 0>"), Path("<image 1>")] and mixed[2].path == files[2]
    assert [p.scores() for p in mixed[:-1]] == [p.scores() for p in from_files]
    assert mixed[-1].status == "error" and "must be (H, W, 3) or (H, W) uint8" in (mixed[-1].error or "")


def test_an_image_far_below_the_input_size_is_classified_with_a_warning_and_counted(
    tiny_model: Path, support_dir: Path, tmp_path: Path
) -> None:
    """The tiny model's input is 32 px: under 8 px on the shorter side is far below it."""
    import json

    from PIL import Image

    folder = tmp_path / "q"
    folder.mkdir()
    Image.new("RGB", (1, 1), (220, 30, 30)).save(folder / "dot.png")
    Image.new("RGB", (5, 30), (30, 40, 220)).save(folder / "sliver.png")
    Image.new("RGB", (8, 8), (30, 200, 40)).save(folder / "fine.png")
    for run in ("cold cache", "warm cache"):
        res = runner.invoke(app, ["classify", str(support_dir), str(folder), "--model", str(tiny_model), "-f", "json"])
        assert res.exit_code == 0, (run, res.output)
        said = " ".join(res.stderr.split())
        assert (
            "2 queries under 8 px on the shorter side, far below the model's 32 px input, were classified all " in said
        )
        assert f"their predictions say little: {folder / 'dot.png'}, {folder / 'sliver.png'}" in said, run
        summary = json.loads(res.stdout)["summary"]
        assert summary["small_queries"] == 2 and summary["classified"] == 3


@pytest.mark.parametrize("options", [[], ["--no-transductive"], ["--kshot", "mean"]])
def test_a_run_decides_its_global_weights_once(
    tiny_model: Path, support_dir: Path, query_dir: Path, monkeypatch: pytest.MonkeyPatch, options: list[str]
) -> None:
    from emdcli import defaults

    calls = {"global": 0, "transductive": 0}
    global_weight_for, transductive_weight_for = defaults.global_weight_for, defaults.transductive_weight_for

    def counted_global(*args: object) -> float:
        calls["global"] += 1
        return global_weight_for(*args)  # type: ignore[arg-type]

    def counted_transductive(*args: object) -> float:
        calls["transductive"] += 1
        return transductive_weight_for(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(defaults, "global_weight_for", counted_global)
    monkeypatch.setattr(defaults, "transductive_weight_for", counted_transductive)
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir), "--model", str(tiny_model), "-f", "json",
                              *options])  # fmt: skip
    assert res.exit_code == 0, res.output
    transductive = "--no-transductive" not in options
    assert calls == {"global": 1, "transductive": 1 if transductive else 0}
