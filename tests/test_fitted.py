"""emdcli fit: a support folder fitted once into a file that classify and batch take in its place."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from emdcli.cli import app
from emdcli.tasks.fitted import FORMAT_VERSION
from tests.conftest import build_tiny_bank, build_tiny_model, make_image, settled

runner = CliRunner()


@pytest.fixture()
def fitted(tiny_model: Path, support_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "colours.emdfit"
    res = runner.invoke(app, ["fit", str(support_dir), "-o", str(out), "--model", str(tiny_model)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.stderr and "3 classes from 9 examples" in res.stderr
    return out


@pytest.fixture()
def mixed_queries(query_dir: Path) -> Path:
    for i, colour in enumerate([(240, 240, 240), (20, 20, 20), (128, 128, 128)]):
        make_image(query_dir / "other" / f"o{i}.png", colour, seed=60 + i)
    return query_dir


@pytest.mark.parametrize("options", [[], ["--reject", "auto"], ["--no-transductive", "--kshot", "sfc"]])
def test_classify_gives_the_same_rows_from_the_file_as_from_the_folder(
    tiny_model: Path, support_dir: Path, mixed_queries: Path, fitted: Path, options: list[str]
) -> None:
    common = [str(mixed_queries), "--model", str(tiny_model), "-f", "csv", *options]
    from_folder = runner.invoke(app, ["classify", str(support_dir), *common])
    from_file = runner.invoke(app, ["classify", str(fitted), *common])
    assert from_folder.exit_code == from_file.exit_code == 0, from_file.output
    assert from_file.stdout == from_folder.stdout and len(from_file.stdout.splitlines()) == 10


def test_batch_gives_the_same_rows_from_the_file(
    tiny_model: Path, support_dir: Path, mixed_queries: Path, fitted: Path, tmp_path: Path
) -> None:
    rows = []
    for support, name in ((support_dir, "a.csv"), (fitted, "b.csv")):
        res = runner.invoke(app, ["batch", str(support), str(mixed_queries), "-o", str(tmp_path / name), "--model",
                                  str(tiny_model), "--reject", "auto"])  # fmt: skip
        assert res.exit_code == 0, res.output
        rows.append(list(csv.DictReader((tmp_path / name).open())))
    assert rows[0] == rows[1] and len(rows[0]) == 9


def test_a_file_for_another_model_is_refused(fitted: Path, mixed_queries: Path, tmp_path: Path) -> None:
    other = build_tiny_model(tmp_path / "other", channels=6)
    build_tiny_bank(other)
    res = runner.invoke(app, ["classify", str(fitted), str(mixed_queries), "--model", str(other)])
    assert res.exit_code == 2
    said = " ".join(res.stderr.split())
    assert "colours.emdfit was fitted with the model tiny (sha256" in said and "--model tiny" in said


def test_other_matching_settings_are_refused(tiny_model: Path, fitted: Path, mixed_queries: Path) -> None:
    res = runner.invoke(app, ["classify", str(fitted), str(mixed_queries), "--model", str(tiny_model), "--kshot",
                              "mean"])  # fmt: skip
    assert res.exit_code == 2 and "was fitted with kshot sfc, not mean" in " ".join(res.stderr.split())


def test_a_damaged_file_or_another_format_version_is_refused(
    tiny_model: Path, fitted: Path, mixed_queries: Path, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.emdfit"
    damaged.write_bytes(fitted.read_bytes()[: len(fitted.read_bytes()) // 2])
    res = runner.invoke(app, ["classify", str(damaged), str(mixed_queries), "--model", str(tiny_model)])
    assert res.exit_code == 2 and "is not a fitted support file of emdcli" in res.stderr
    with np.load(fitted, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    meta["format_version"] = FORMAT_VERSION + 1
    future = tmp_path / "future.emdfit"
    with future.open("wb") as f:  # a file object: np.savez would add .npz to a name
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    res = runner.invoke(app, ["classify", str(future), str(mixed_queries), "--model", str(tiny_model)])
    assert res.exit_code == 2
    assert f"is format version {FORMAT_VERSION + 1} of fitted files" in " ".join(res.stderr.split())


def test_a_file_made_with_other_preprocessing_is_refused(
    tiny_model: Path, fitted: Path, mixed_queries: Path, tmp_path: Path
) -> None:
    with np.load(fitted, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    assert meta["model"]["preprocess"].startswith("v")  # what this emdcli recorded
    for made_with, shown in (("v2/32/crop/x/y", "v2/32/crop/x/y"), (None, "not recorded: emdcli 0.2.0 or older")):
        meta["model"]["preprocess"], meta["emdcli"] = made_with, "0.2.0"
        older = tmp_path / "older.emdfit"
        with older.open("wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        res = runner.invoke(app, ["classify", str(older), str(mixed_queries), "--model", str(tiny_model)])
        said = " ".join(res.stderr.split())
        assert res.exit_code == 2, res.output
        assert f"older.emdfit was fitted by emdcli 0.2.0, whose image preprocessing ({shown}) differs" in said
        assert "emdcli fit SUPPORT_FOLDER -o FILE.emdfit" in said


def test_the_file_holds_plain_arrays_and_says_where_each_example_came_from(fitted: Path, support_dir: Path) -> None:
    with zipfile.ZipFile(fitted) as z:
        assert all(name.endswith(".npy") for name in z.namelist())
    with np.load(fitted, allow_pickle=False) as z:  # would raise for an object (pickled) array
        meta = json.loads(str(z["meta"]))
        assert z["nodes"].shape[0] == 3 and z["examples_pooled"].shape[0] == 9
    assert meta["classes"] == ["blue", "green", "red"] and meta["shots"] == [3, 3, 3]
    from emdcli.io.files import sha256_file

    for example in meta["examples"]:
        path = Path(example["path"])
        assert (
            path.is_absolute() and path.parent.name == example["class"] and path.is_relative_to(support_dir.resolve())
        )
        assert example["sha256"] == sha256_file(path)


def test_info_describes_a_fitted_file(fitted: Path) -> None:
    res = runner.invoke(app, ["info", str(fitted), "-f", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["model"] == "tiny" and doc["classes"] == ["blue (3)", "green (3)", "red (3)"] and doc["examples"] == 9
    assert runner.invoke(app, ["info", str(fitted.with_name("missing.emdfit"))]).exit_code == 2


def test_fit_needs_the_suffix(tiny_model: Path, support_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["fit", str(support_dir), "-o", str(tmp_path / "x.npz"), "--model", str(tiny_model)])
    assert res.exit_code == 2 and "--output must end in .emdfit" in res.stderr


def test_pictures_from_the_file_are_those_from_the_folder_and_a_changed_example_is_named(
    tiny_model: Path, support_dir: Path, mixed_queries: Path, fitted: Path, tmp_path: Path
) -> None:
    common = [str(mixed_queries), "--model", str(tiny_model), "-f", "csv"]
    for support, pics in ((support_dir, "a"), (fitted, "b")):
        res = runner.invoke(app, ["classify", str(support), *common, "--explain-dir", str(tmp_path / pics)])
        assert res.exit_code == 0, res.output
    drawn = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(drawn) == 9 and drawn == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in drawn)

    query = next(mixed_queries.rglob("*.png"))
    said = [runner.invoke(app, ["explain", str(s), str(query), "--model", str(tiny_model), "-o",
                                str(tmp_path / f"{i}.png")]) for i, s in enumerate((support_dir, fitted))]  # fmt: skip
    assert said[0].exit_code == said[1].exit_code == 0, said[1].output
    assert said[0].stdout.replace(str(tmp_path / "0.png"), str(tmp_path / "1.png")) == said[1].stdout

    changed = sorted((support_dir / "red").iterdir())[0]
    changed.write_bytes(changed.read_bytes() + b"x")
    res = runner.invoke(app, ["explain", str(fitted), str(query), "--model", str(tiny_model), "-o",
                              str(tmp_path / "c.png")])  # fmt: skip
    assert res.exit_code == 2
    assert f"the example {changed} is gone or has changed" in " ".join(res.stderr.split())


def test_the_library_loads_what_it_saved(
    tiny_model: Path, support_dir: Path, mixed_queries: Path, tmp_path: Path
) -> None:
    from emdcli.features.source import FeatureSource
    from emdcli.io.folders import read_labelled_folder
    from emdcli.model.backbone import Backbone
    from emdcli.tasks.classify import Classifier, Reject
    from emdcli.tasks.fitted import load_fitted, save_fitted

    clf = Classifier(FeatureSource(Backbone(tiny_model)))
    folder = read_labelled_folder(support_dir)
    support = clf.fit(folder, reject=Reject())
    save_fitted(tmp_path / "s.emdfit", support, clf, folder)
    again = load_fitted(tmp_path / "s.emdfit", clf, Reject()).support
    queries = sorted(mixed_queries.rglob("*.png"))
    want = [(p.predicted, p.open_set_score, p.ranking) for p in clf.predict(support, queries)]
    assert [(p.predicted, p.open_set_score, p.ranking) for p in clf.predict(again, queries)] == want
    assert again.rejection is not None and support.rejection is not None
    assert again.rejection.threshold == support.rejection.threshold


def test_evaluate_says_what_to_do_with_a_fitted_file(fitted: Path) -> None:
    res = runner.invoke(app, ["evaluate", str(fitted)])
    assert res.exit_code == 2
    said = " ".join(res.stderr.split())
    assert "evaluate draws each episode's support images from a labelled folder" in said
    assert f"emdcli classify {fitted} LABELLED_FOLDER" in said


def test_watch_gives_the_same_rows_from_the_file(
    tiny_model: Path, support_dir: Path, mixed_queries: Path, fitted: Path
) -> None:
    settled(mixed_queries)
    common = [str(mixed_queries), "--once", "--model", str(tiny_model), "-f", "csv", "--reject", "auto"]
    rows = [runner.invoke(app, ["watch", str(s), *common]) for s in (support_dir, fitted)]
    assert rows[0].exit_code == rows[1].exit_code == 0, rows[1].output
    assert rows[0].stdout == rows[1].stdout and len(rows[0].stdout.splitlines()) == 10
