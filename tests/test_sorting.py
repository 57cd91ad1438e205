"""classify --sort-into DIR: queries put into DIR/<predicted class>/ by copy, link or move, never
overwriting, never touching a support image, whole or not at all, and finished by a rerun."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from emdcli.cli import app
from emdcli.io import sorting
from emdcli.io.sorting import Plan, Sorter, candidates, transfer
from tests.conftest import make_folder, make_image

runner = CliRunner()


def classify(tiny_model: Path, support: Path, *rest: object) -> Any:
    return runner.invoke(app, ["classify", str(support), *(str(a) for a in rest), "--model", str(tiny_model)])


def rows_of(res: Any) -> list[dict[str, str]]:
    assert res.exit_code == 0, res.output
    return list(csv.DictReader(io.StringIO(res.stdout)))


def tree(root: Path) -> dict[str, str]:
    """Every file (and link) below ``root``: relative path -> sha256 of its bytes (``link->TARGET``
    for a symbolic link), so two snapshots differ when anything was added, removed or changed."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link->{os.readlink(path)}"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_copy_puts_each_query_into_its_class_folder(tiny_model: Path, support_dir: Path, query_dir: Path,
                                                    tmp_path: Path) -> None:  # fmt: skip
    before = tree(query_dir)
    out = tmp_path / "sorted"
    rows = rows_of(classify(tiny_model, support_dir, query_dir, "--sort-into", out, "-f", "csv", "-q"))
    assert all(r["correct"] == "true" for r in rows)  # the tiny model tells the colours apart
    assert tree(out) == {f"{c}/img_{i}.png": before[f"{c}/img_{i}.png"] for c in ("blue", "green", "red")
                         for i in (0, 1)}  # fmt: skip
    assert tree(query_dir) == before  # a copy leaves the queries where they were
    for r in rows:
        assert r["sort_action"] == "copied"
        assert Path(r["sorted_to"]) == out / r["predicted"] / Path(r["path"]).name
    assert list(rows[0])[-3:] == ["sorted_to", "sort_action", "error"]


def test_without_sort_into_the_rows_are_unchanged(tiny_model: Path, support_dir: Path, query_dir: Path,
                                                  tmp_path: Path) -> None:  # fmt: skip
    plain = classify(tiny_model, support_dir, query_dir, "-f", "csv", "-q")
    assert plain.exit_code == 0
    assert "sorted_to" not in plain.stdout.splitlines()[0]
    sorted_run = classify(tiny_model, support_dir, query_dir, "-f", "csv", "-q", "--sort-into", tmp_path / "s")
    strip = [{k: v for k, v in r.items() if k not in ("sorted_to", "sort_action")} for r in rows_of(sorted_run)]
    assert strip == rows_of(plain)
    jsonl = classify(tiny_model, support_dir, query_dir, "-f", "jsonl", "-q", "--sort-into", tmp_path / "s")
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert {r["sort_action"] for r in records} == {"present"}  # the second run found them done
    assert all(r["sorted_to"].startswith(str(tmp_path / "s")) for r in records)


def test_clashes_never_overwrite(tiny_model: Path, support_dir: Path, tmp_path: Path) -> None:
    first = make_folder(tmp_path / "q1", {"red": 1}, seed=3)
    second = make_folder(tmp_path / "q2", {"red": 1}, seed=4)  # another red/img_0.png, other bytes
    out = tmp_path / "sorted"
    (out / "red").mkdir(parents=True)
    (out / "red" / "img_0.png").write_bytes(b"not ours")
    rows = rows_of(classify(tiny_model, support_dir, first, second, "--sort-into", out, "-q"))
    assert [r["predicted"] for r in rows] == ["red", "red"]
    assert tree(out) == {
        "red/img_0.png": hashlib.sha256(b"not ours").hexdigest(),  # kept as it was
        "red/img_0-2.png": digest(first / "red" / "img_0.png"),
        "red/img_0-3.png": digest(second / "red" / "img_0.png"),
    }
    assert [Path(r["sorted_to"]).name for r in rows] == ["img_0-2.png", "img_0-3.png"]


def test_move_moves_queries_and_never_touches_support_images(tiny_model: Path, support_dir: Path, query_dir: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    support_before = tree(support_dir)
    queries_before = tree(query_dir)
    out = tmp_path / "sorted"
    a_support_image = support_dir / "green" / "img_1.png"
    res = classify(tiny_model, support_dir, query_dir, a_support_image, "--sort-into", out, "--sort-action", "move",
                   "-f", "csv")  # fmt: skip
    rows = rows_of(res)
    assert tree(support_dir) == support_before  # not moved, not touched
    assert "not sorted" in res.stderr and "a support image" in res.stderr
    kept = [r for r in rows if r["path"] == str(a_support_image)]
    assert kept[0]["sort_action"] == "kept" and kept[0]["sorted_to"] == ""
    assert tree(query_dir) == {}  # every query moved out
    assert sorted(tree(out).values()) == sorted(queries_before.values())
    assert {r["sort_action"] for r in rows if r is not kept[0]} == {"moved"}


def test_low_confidence_goes_to_review(tiny_model: Path, support_dir: Path, tmp_path: Path) -> None:
    queries = tmp_path / "q"
    for name, colour in {"red.png": (220, 30, 30), "blue.png": (30, 40, 220), "purple.png": (115, 35, 135)}.items():
        make_image(queries / name, colour, seed=1)  # purple: half red, half blue, so not sure of either
    out = tmp_path / "sorted"
    rows = rows_of(classify(tiny_model, support_dir, queries, "--sort-into", out, "--min-confidence", "0.9", "-q",
                            "--no-transductive"))  # fmt: skip
    confidence = {Path(r["path"]).name: float(r["confidence"]) for r in rows}
    assert confidence["purple.png"] < 0.9 < min(confidence["red.png"], confidence["blue.png"])
    assert sorted(tree(out)) == ["_review/purple.png", "blue/blue.png", "red/red.png"]
    for r in rows:
        folder = "_review" if float(r["confidence"]) < 0.9 else r["predicted"]
        assert Path(r["sorted_to"]) == out / folder / Path(r["path"]).name


def test_rejected_queries_go_to_the_unknown_folder(tiny_model: Path, support_dir: Path, tmp_path: Path) -> None:
    queries = tmp_path / "q"
    make_image(queries / "grey.png", (128, 128, 128), seed=1)
    rows = rows_of(classify(tiny_model, support_dir, queries, "--sort-into", tmp_path / "s", "--reject", "0.999",
                            "--unknown-label", "none-of-these", "-q"))  # fmt: skip
    assert rows[0]["predicted"] == "none-of-these"
    assert list(tree(tmp_path / "s")) == ["none-of-these/grey.png"]


def test_dry_run_changes_nothing_and_says_what_it_would_do(tiny_model: Path, support_dir: Path, query_dir: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "sorted"
    (out / "red").mkdir(parents=True)
    shutil.copy(query_dir / "red" / "img_0.png", out / "red" / "img_0.png")  # one done by an earlier run
    before = tree(tmp_path)
    res = classify(tiny_model, support_dir, query_dir, "--sort-into", out, "--sort-action", "move", "--dry-run",
                   "--min-confidence", "0.0001", "-f", "csv", "--no-cache")  # fmt: skip
    rows = rows_of(res)
    assert tree(tmp_path) == before
    assert sorted(p.name for p in out.iterdir()) == ["red"]  # no folder made either
    actions = {Path(r["path"]).relative_to(query_dir).as_posix(): r["sort_action"] for r in rows}
    assert actions.pop("red/img_0.png") == "would move"  # finishing the earlier move: remove the source
    assert set(actions.values()) == {"would move"}
    assert f"would move {query_dir / 'green' / 'img_0.png'} -> {out / 'green' / 'img_0.png'}" in res.stderr
    assert "nothing changed" in res.stderr
    # two queries of one name in one folder: a dry run hands out the names a real run would
    twin = make_folder(tmp_path / "twin", {"red": 1}, seed=4)
    res = classify(tiny_model, support_dir, query_dir / "red", twin, "--sort-into", tmp_path / "new", "--dry-run",
                   "-q")  # fmt: skip
    assert [Path(r["sorted_to"]).name for r in rows_of(res)] == ["img_0.png", "img_1.png", "img_0-2.png"]
    assert not (tmp_path / "new").exists()


def test_rerun_after_an_interruption_finishes_without_duplicates(tiny_model: Path, support_dir: Path, query_dir: Path,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:  # fmt: skip
    out, csv_out = tmp_path / "sorted", tmp_path / "out.csv"
    real = sorting.transfer
    calls = []

    def interrupted(source: Path, target: Path, how: Any) -> str:
        calls.append(source)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(source, target, how)

    monkeypatch.setattr(sorting, "transfer", interrupted)
    args = [query_dir, "--sort-into", out, "--sort-action", "move", "-o", csv_out]
    res = classify(tiny_model, support_dir, *args)
    assert res.exit_code == 130, res.output
    assert len(tree(out)) == 3 and len(tree(query_dir)) == 3  # three moved, none half done
    assert not [p for p in out.rglob(".*")]  # no temporary file left
    monkeypatch.setattr(sorting, "transfer", real)
    rows = rows_of(classify(tiny_model, support_dir, *args, "--resume", "-q"))
    csv_rows = list(csv.DictReader(io.StringIO(csv_out.read_text())))
    assert len(csv_rows) == 6
    assert tree(query_dir) == {}
    assert len(tree(out)) == 6 and not [n for n in tree(out) if "-2" in n]
    assert sorted(r["sort_action"] for r in csv_rows) == ["moved"] * 3 + ["present"] * 3  # resumed rows: present
    assert all(Path(r["sorted_to"]).is_file() for r in csv_rows)
    assert rows == []  # (rows went to --output)


def test_the_same_command_again_recognises_what_is_done(tiny_model: Path, support_dir: Path, query_dir: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "sorted"
    # pre-create part of the result: one copied, one moved across file systems up to the unlink of its source
    for name in ("red/img_0.png", "blue/img_1.png"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(query_dir / name, out / name)
    first = {Path(r["path"]).relative_to(query_dir).as_posix(): r["sort_action"]
             for r in rows_of(classify(tiny_model, support_dir, query_dir, "--sort-into", out, "-q"))}  # fmt: skip
    assert first.pop("red/img_0.png") == "present" and first.pop("blue/img_1.png") == "present"
    assert set(first.values()) == {"copied"}
    again = rows_of(classify(tiny_model, support_dir, query_dir, "--sort-into", out, "-q"))
    assert {r["sort_action"] for r in again} == {"present"}
    assert len(tree(out)) == 6
    moved = rows_of(classify(tiny_model, support_dir, query_dir, "--sort-into", out, "--sort-action", "move", "-q"))
    assert {r["sort_action"] for r in moved} == {"moved"}  # each copy in place: only the sources go
    assert tree(query_dir) == {} and len(tree(out)) == 6


def test_sorted_files_in_the_query_folder_are_not_queries_again(tiny_model: Path, support_dir: Path, query_dir: Path
                                                                ) -> None:  # fmt: skip
    out = query_dir / "sorted"
    assert len(rows_of(classify(tiny_model, support_dir, query_dir, "--sort-into", out, "-q"))) == 6
    res = classify(tiny_model, support_dir, query_dir, "--sort-into", out, "-f", "csv")
    assert len(rows_of(res)) == 6
    assert "left out 6 queries already in the folders of --sort-into" in res.stderr
    assert len(tree(out)) == 6


def test_usage_errors_before_any_work(tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path) -> None:
    before = tree(tmp_path)
    res = classify(tiny_model, support_dir, query_dir, "--sort-into", support_dir / "sorted")
    assert res.exit_code == 2 and "inside the support folder" in res.stderr
    res = classify(tiny_model, support_dir, query_dir, "--sort-into", support_dir)
    assert res.exit_code == 2 and "inside the support folder" in res.stderr
    res = classify(tiny_model, support_dir, query_dir, "--dry-run")
    assert res.exit_code == 2 and "need --sort-into" in res.stderr
    res = classify(tiny_model, support_dir, query_dir, "--sort-into", tmp_path / "s", "--min-confidence", "2")
    assert res.exit_code == 2
    res = classify(tiny_model, support_dir, query_dir, "--sort-into", tmp_path / "s", "--reject", "auto",
                   "--unknown-label", "a/b")  # fmt: skip
    assert res.exit_code == 2 and "path separator" in res.stderr
    res = classify(tiny_model, support_dir, query_dir / "red", "--sort-into", query_dir)
    assert res.exit_code == 2 and "inside a class folder" in res.stderr
    assert tree(tmp_path) == before and not (tmp_path / "s").exists()
    if os.geteuid() == 0:
        return  # root writes anywhere
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        res = classify(tiny_model, support_dir, query_dir, "--sort-into", locked / "sorted", "-f", "csv")
        assert res.exit_code == 2 and "cannot write into --sort-into" in res.stderr and res.stdout == ""
    finally:
        locked.chmod(0o700)


def test_an_error_on_one_file_is_a_skip_and_a_full_disk_stops(tiny_model: Path, support_dir: Path, query_dir: Path,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:  # fmt: skip
    real = sorting.transfer

    def refuse_one(source: Path, target: Path, how: Any) -> str:
        if source.parent.name == "green" and source.name == "img_0.png":
            raise PermissionError(errno.EACCES, "Permission denied", str(source))
        return real(source, target, how)

    monkeypatch.setattr(sorting, "transfer", refuse_one)
    res = classify(tiny_model, support_dir, query_dir, "--sort-into", tmp_path / "s", "-f", "csv")
    rows = rows_of(res)
    assert sorted(r["sort_action"] for r in rows) == ["copied"] * 5 + ["failed"]
    assert "not sorted" in res.stderr and "Permission denied" in res.stderr
    assert len(tree(tmp_path / "s")) == 5

    def full(source: Path, target: Path, how: Any) -> str:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(sorting, "transfer", full)
    res = classify(tiny_model, support_dir, query_dir, "--sort-into", tmp_path / "t", "-o", tmp_path / "o.csv")
    assert res.exit_code == 1
    assert "no space left on the device" in res.stderr


# the library ------------------------------------------------------------------------------------


def test_candidate_names(tmp_path: Path) -> None:
    names = candidates(tmp_path, "a.png")
    assert [next(names).name for _ in range(3)] == ["a.png", "a-2.png", "a-3.png"]
    assert next(candidates(tmp_path, "noext")).name == "noext"


def test_link_is_hard_on_one_file_system_else_symbolic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "q" / "a.png"
    src.parent.mkdir()
    src.write_bytes(b"image")
    sorter = Sorter(tmp_path / "out", "link")
    placed = sorter.place(src, "red")
    assert placed.action == "hardlinked" and os.path.samefile(src, tmp_path / "out" / "red" / "a.png")
    assert sorter.place(src, "red").action == "present"  # the same file: not linked again

    def cross_device(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    placed = sorter.place(src, "green")
    assert placed.action == "symlinked" and placed.record()["sort_action"] == "symlinked"
    target = tmp_path / "out" / "green" / "a.png"
    assert target.is_symlink() and target.read_bytes() == b"image"
    assert sorter.place(src, "green").action == "present"
    assert sorter.counts == {"hardlinked": 1, "symlinked": 1, "present": 2}


def test_a_move_across_file_systems_copies_then_unlinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "q" / "a.png"
    src.parent.mkdir()
    src.write_bytes(b"image")
    real_link = os.link

    def no_link_from_the_source(a: Any, b: Any, **kwargs: Any) -> None:
        if Path(a) == src:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(a, b, **kwargs)

    monkeypatch.setattr(os, "link", no_link_from_the_source)
    unlinked = []
    real_unlink = os.unlink

    def interrupt_before_the_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path) == src and not unlinked:
            unlinked.append(path)
            raise KeyboardInterrupt
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", interrupt_before_the_unlink)
    sorter = Sorter(tmp_path / "out", "move")
    with pytest.raises(KeyboardInterrupt):
        sorter.place(src, "red")
    target = tmp_path / "out" / "red" / "a.png"
    assert target.read_bytes() == b"image" and src.exists()  # the copy is whole; the source not yet gone
    assert [p.name for p in target.parent.iterdir()] == ["a.png"]  # no temporary file left
    plan = sorter.plan(src, target.parent)
    assert plan == Plan(src, target, "finish")
    assert sorter.place(src, "red").action == "moved"
    assert not src.exists() and target.read_bytes() == b"image"
    assert sorter.place(src, "red", earlier=target).action == "present"  # gone, and where it went is known
    assert sorter.place(src, "red").action == "failed"


def test_transfer_never_overwrites(tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    src.write_bytes(b"new")
    taken = tmp_path / "out" / "a.png"
    taken.parent.mkdir()
    taken.write_bytes(b"old")
    for how in ("copy", "link", "move"):
        with pytest.raises(FileExistsError):
            transfer(src, taken, how)  # type: ignore[arg-type]
        assert taken.read_bytes() == b"old" and src.read_bytes() == b"new"
    assert sorted(p.name for p in taken.parent.iterdir()) == ["a.png"]
