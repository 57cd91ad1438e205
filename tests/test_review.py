"""Review and correct: decisions journalled first, corrections become support examples, undo, restart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from emdcli.errors import UsageError
from emdcli.features.source import FeatureSource
from emdcli.model.backbone import Backbone
from emdcli.tasks.classify import Classifier
from emdcli.tasks.review import Item, Journal, Review, journal_path, suggest
from tests.conftest import make_image


@pytest.fixture()
def inbox(tmp_path: Path) -> list[Path]:
    """Six queries: two of each colour, one of them a red square hidden in a 'green'-looking name."""
    paths = []
    for i, colour in enumerate([(220, 30, 30), (225, 40, 35), (30, 200, 40), (40, 190, 50), (30, 40, 220)]):
        paths.append(make_image(tmp_path / "inbox" / f"q{i}.png", colour, seed=300 + i))
    return paths


def start(tiny_model: Path, support: Path, queries: list[Path]) -> Review:
    return Review.start(Classifier(FeatureSource(Backbone(tiny_model))), support, queries)


def test_a_correction_is_journalled_copied_refitted_and_undone(
    tiny_model: Path, support_dir: Path, inbox: list[Path]
) -> None:
    review = start(tiny_model, support_dir, inbox)
    items = review.items()
    assert len(items) == 5 and [it.margin for it in items] == sorted(it.margin for it in items)
    assert {it.predicted for it in items} == {"red", "green", "blue"}
    red = next(it for it in items if it.predicted == "red")

    entry = review.decide(red.id, "correct", "crimson")  # a new class
    placed = support_dir / "crimson" / inbox[red.id].name
    assert entry["placed"] == f"crimson/{inbox[red.id].name}" and placed.read_bytes() == inbox[red.id].read_bytes()
    assert journal_path(support_dir).read_text().count("\n") == 1
    assert "crimson" in review.classes and red.id not in {it.id for it in review.items()}
    other_red = next(it for it in review.items() if it.path.endswith(("q0.png", "q1.png")))
    assert "crimson" in (other_red.predicted, other_red.runner_up)  # re-scored against the new class

    accepted = review.decide(other_red.id, "accept")
    took = support_dir / other_red.predicted / Path(other_red.path).name
    assert accepted["label"] == other_red.predicted and took.is_file()
    with pytest.raises(UsageError, match="decided already"):
        review.decide(other_red.id, "skip")

    assert review.undo()["undoes"] == accepted["seq"]
    assert not took.exists() and placed.is_file()
    assert other_red.id in {it.id for it in review.items()}
    actions = [e["action"] for e in Journal(journal_path(support_dir)).read()]
    assert actions == ["correct", "accept", "undo"]


def test_a_restart_goes_on_where_it_was_and_finishes_a_copy_cut_short(
    tiny_model: Path, support_dir: Path, inbox: list[Path]
) -> None:
    review = start(tiny_model, support_dir, inbox)
    first = next(it for it in review.items() if it.predicted != "blue")
    review.decide(first.id, "none")
    blue = next(it for it in review.items() if it.predicted == "blue")
    review.decide(blue.id, "accept")
    # a crash after the journal line and before the copy: the file is missing
    (support_dir / "blue" / inbox[blue.id].name).unlink()
    with open(journal_path(support_dir), "a", encoding="utf-8") as fh:
        fh.write('{"seq": 99, "action": "acc')  # and a line cut short, never applied

    again = start(tiny_model, support_dir, inbox)
    assert (support_dir / "blue" / inbox[blue.id].name).read_bytes() == inbox[blue.id].read_bytes()
    assert {it.id for it in again.items()} == {it.id for it in review.items()}
    assert len(again.items()) == 3
    assert again.undo()["undoes"] == 2 and not (support_dir / "blue" / inbox[blue.id].name).exists()


def test_undo_never_removes_a_file_someone_changed(tiny_model: Path, support_dir: Path, inbox: list[Path]) -> None:
    review = start(tiny_model, support_dir, inbox)
    item = review.items()[0]
    entry = review.decide(item.id, "correct", "green")
    placed = support_dir / entry["placed"]
    placed.write_bytes(placed.read_bytes() + b"edited")
    review.undo()
    assert placed.is_file()


@pytest.mark.parametrize("label", ["", "..", "a/b", ".hidden"])
def test_a_label_that_cannot_be_a_folder_is_refused(
    tiny_model: Path, support_dir: Path, inbox: list[Path], label: str
) -> None:
    review = start(tiny_model, support_dir, inbox)
    with pytest.raises(UsageError):
        review.decide(review.items()[0].id, "correct", label)
    assert not journal_path(support_dir).exists()


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    log = Journal(tmp_path / "j.jsonl")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: log.append({"action": "skip", "query": f"q{i}" * 50}), range(200)))
    entries = log.read()
    assert sorted(e["seq"] for e in entries) == list(range(1, 201))
    assert all(json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines())


def test_suggestions_are_uncertain_and_spread() -> None:
    items = [Item(i, f"q{i}", "a", 0.5, "b", margin, False) for i, margin in enumerate([0.01, 0.02, 0.03, 0.5, 0.9])]
    pooled = {0: np.array([1.0, 0.0]), 1: np.array([1.0, 0.01]), 2: np.array([0.0, 1.0]),
              3: np.array([-1.0, 0.0]), 4: np.array([0.0, -1.0])}  # fmt: skip
    picked = suggest(items, pooled, 2)
    assert picked[0] == 0 and picked[1] != 1  # the least certain, then one unlike it
    assert suggest(items, pooled, 10) == [0, 1, 2, 3, 4]


def test_the_review_copies_nothing_outside_the_support_folder(
    tiny_model: Path, support_dir: Path, inbox: list[Path], tmp_path: Path
) -> None:
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file() and support_dir not in p.parents)
    review = start(tiny_model, support_dir, inbox)
    for it in review.items()[:3]:
        review.decide(it.id, "accept")
    after = sorted(p for p in tmp_path.rglob("*") if p.is_file() and support_dir not in p.parents)
    new = set(after) - set(before)
    assert new <= {journal_path(support_dir)} | {p for p in after if "cache" in p.parts}
    shutil.rmtree(support_dir / "red")  # a class emptied by hand is left out at the next start


def test_classify_suggests_what_to_label_next(tiny_model: Path, support_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from emdcli.cli import app

    colours = [(220, 30, 30), (130, 35, 130), (30, 200, 40), (30, 120, 130), (30, 40, 220), (140, 140, 40)]
    for i, colour in enumerate(colours):  # clear ones, and mixtures of two classes
        make_image(tmp_path / "mixed" / f"m{i}.png", colour, seed=500 + i)
    res = CliRunner().invoke(app, ["classify", str(support_dir), str(tmp_path / "mixed"), "--model", str(tiny_model),
                                   "-f", "json", "--suggest", "2", "--no-transductive"])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    suggested = doc["summary"]["suggested"]
    margins = {r["path"]: r["top"][0]["confidence"] - r["top"][1]["confidence"] for r in doc["rows"]}
    assert len(suggested) == 2 and margins[suggested[0]] <= min(margins.values()) + 1e-5
    assert max(margins[p] for p in suggested) < max(margins.values())  # the clear ones are not suggested
    assert f"label next: {suggested[0]}, {suggested[1]}" in res.stderr


def test_the_journal_is_undone_and_replayed_from_the_command_line(
    tiny_model: Path, support_dir: Path, inbox: list[Path]
) -> None:
    from typer.testing import CliRunner

    from emdcli.cli import app

    review = start(tiny_model, support_dir, inbox)
    first = review.decide(review.items()[0].id, "correct", "green")
    second = review.decide(review.items()[0].id, "correct", "blue")
    (support_dir / first["placed"]).unlink()  # a folder restored from an older backup
    runner = CliRunner()
    res = runner.invoke(app, ["review", str(support_dir), "--replay"])
    assert res.exit_code == 0 and "1 image(s) copied again" in res.stderr
    assert (support_dir / first["placed"]).read_bytes() == Path(first["query"]).read_bytes()
    res = runner.invoke(app, ["review", str(support_dir), "--undo"])
    assert res.exit_code == 0 and f"undid decision 2: correct (blue) of {second['query']}" in res.stderr
    assert not (support_dir / second["placed"]).exists() and (support_dir / first["placed"]).exists()
    res = runner.invoke(app, ["review", str(support_dir)])
    assert res.exit_code == 2 and "give the QUERIES to review" in res.stderr
