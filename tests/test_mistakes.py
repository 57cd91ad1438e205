"""A new user's mistakes never pass silently: each gets a clear warning, a count, or a usage error
before any work, with exact exit codes and messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from emdcli.cli import app
from emdcli.io.folders import read_labelled_folder
from emdcli.tasks.classify import Prediction
from emdcli.tasks.tally import SupportOverlap, Tally
from tests.conftest import make_folder, make_image

runner = CliRunner()


def run(*args: object, input: str | bytes | None = None) -> Any:
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_the_support_folder_given_as_queries_is_called_out(tiny_model: Path, support_dir: Path) -> None:
    res = run("classify", support_dir, support_dir, "--model", tiny_model, "-f", "json")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["summary"]["support_images_as_queries"] == doc["summary"]["queries"] == 9
    assert (
        "Warning: every query is also a support image (the same file content): their predictions and the "
        "accuracy say nothing about unseen images; did you swap SUPPORT and QUERIES, or give the same folder "
        "twice?\n"
    ) in res.stderr
    assert "· 9 of them support images ·" in res.stderr


def test_a_few_support_images_among_the_queries_are_counted(
    tiny_model: Path, support_dir: Path, query_dir: Path
) -> None:
    shutil.copy(support_dir / "red" / "img_0.png", query_dir / "red" / "copy.png")
    res = run("classify", support_dir, query_dir, "--model", tiny_model, "-f", "json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["summary"]["support_images_as_queries"] == 1
    assert "Warning: 1 of 7 queries is also a support image (the same file content)" in res.stderr


def test_unseen_queries_raise_no_overlap_warning(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    res = run("classify", support_dir, query_dir, "--model", tiny_model, "-f", "json")
    assert json.loads(res.stdout)["summary"]["support_images_as_queries"] == 0
    assert "support images" not in res.stderr and "swap" not in res.stderr


def test_a_query_inside_a_support_class_folder_is_flagged(support_dir: Path) -> None:
    overlap = SupportOverlap(read_labelled_folder(support_dir))
    later = make_image(support_dir / "red" / "added_later.png", (10, 10, 10), seed=99)  # not read as support
    outside = make_image(support_dir.parent / "elsewhere.png", (220, 30, 30), seed=12345)
    tally = Tally(overlap=overlap)
    for path in (later, outside):
        tally.add(Prediction(path, "error", error="unreadable"))
    assert (tally.support_images, tally.in_support_folders) == (0, 1)


def test_files_that_are_not_used_are_counted_by_reason(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    make_image(support_dir / "stray.png", (220, 30, 30), seed=1)  # beside the class folders
    (support_dir / "red" / "notes.txt").write_text("not an image")
    (query_dir / "red" / "phone.heic").write_bytes(b"\0" * 64)
    (query_dir / "red" / "more.heic").write_bytes(b"\0" * 64)
    (query_dir / "list.txt").write_text("x")
    res = run("classify", support_dir, query_dir, "--model", tiny_model, "-f", "json")
    assert res.exit_code == 0
    assert f"Warning: not used: 1 file directly in {support_dir}, outside any class folder (stray.png)\n" in res.stderr
    assert "Warning: not used: 1 file in the class folders that is not an image (.txt 1)\n" in res.stderr
    assert "Warning: left out: 3 files in the query folders that are not images (.heic 2, .txt 1)\n" in res.stderr
    assert json.loads(res.stdout)["summary"]["not_images"] == 3


def test_a_file_of_an_unread_format_given_explicitly_says_what_is_read(tiny_model: Path, support_dir: Path) -> None:
    heic = support_dir.parent / "phone.heic"
    heic.write_bytes(b"\0" * 64)
    res = run("classify", support_dir, heic, "--model", tiny_model, "-f", "csv")
    assert res.exit_code == 1
    assert (
        f"Warning: skipped {heic}: not a recognised image format (emdcli reads .bmp, .gif, .jpeg, .jpg, .pgm, "
        ".png, .ppm, .tif, .tiff, .webp; convert it)\n"
    ) in res.stderr
    assert "Error: the query could not be read\n" in res.stderr


@pytest.mark.parametrize("command", ["classify", "search", "anomaly", "evaluate"])
def test_output_into_a_missing_folder_is_a_usage_error_before_any_work(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    import emdcli.model.backbone

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the output location was checked")

    monkeypatch.setattr(emdcli.model.backbone, "load_model", no_model)
    target = tmp_path / "missing" / "out.csv"
    folders = {"classify": [support_dir, query_dir], "search": [support_dir / "red", query_dir],
               "anomaly": [support_dir / "red", query_dir], "evaluate": [support_dir]}[command]  # fmt: skip
    res = run(command, *folders, "--model", tiny_model, "-o", target)
    assert res.exit_code == 2, res.output
    assert res.stderr == (
        f"Error: folder for --output does not exist: {target.parent}\nHint: create it: mkdir -p {target.parent}\n"
    )
    assert not target.parent.exists()


def test_an_output_suffix_without_a_format_is_refused(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    res = run("classify", support_dir, query_dir, "--model", tiny_model, "-o", support_dir.parent / "pred.tsv")
    assert res.exit_code == 2
    assert res.stderr.startswith(f"Error: cannot tell the format from the suffix of {support_dir.parent / 'pred.tsv'}")
    assert not (support_dir.parent / "pred.tsv").exists()


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "table"])
def test_empty_stdin_leaves_stdout_empty(tiny_model: Path, support_dir: Path, fmt: str) -> None:
    res = run("classify", support_dir, "-", "--model", tiny_model, "-f", fmt, input="")
    assert res.exit_code == 2
    assert res.stdout == ""
    assert "Error: no query paths were given on stdin" in res.stderr


def test_nul_separated_paths_on_stdin(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    paths = sorted(query_dir.rglob("*.png"))[:3]
    (weird := query_dir / "red" / "line\nbreak.png").write_bytes(paths[0].read_bytes())
    data = b"".join(bytes(p) + b"\0" for p in [*paths, weird])
    res = run("classify", support_dir, "-", "-0", "--model", tiny_model, "-f", "jsonl", input=data)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in [*paths, weird]]
    assert all(r["status"] == "ok" for r in rows)


def test_anomaly_refuses_contamination_with_a_threshold(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    res = run("anomaly", support_dir / "red", query_dir, "--model", tiny_model, "--contamination", "0.1",
              "--threshold", "0.5")  # fmt: skip
    assert res.exit_code == 2
    assert res.stderr.startswith("Error: --contamination and --threshold cannot be used together\n")
    alone = run("anomaly", support_dir / "red", query_dir, "--model", tiny_model, "--threshold", "0.5", "-f", "csv")
    assert alone.exit_code == 0, alone.output


def test_anomaly_says_a_file_is_not_a_folder(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    image = support_dir / "red" / "img_0.png"
    res = run("anomaly", image, query_dir, "--model", tiny_model)
    assert res.exit_code == 2
    assert res.stderr.startswith(f"Error: normal must be a folder of images, but {image} is a file\n")


def test_anomaly_warns_when_calibrating_on_few_images(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    res = run("anomaly", support_dir / "red", query_dir, "--model", tiny_model, "-f", "csv")
    assert res.exit_code == 0
    assert (
        "Warning: the threshold is calibrated on only 3 normal images, too few for a quantile to mean much; "
        "give 10 or more, or set --threshold\n"
    ) in res.stderr


def test_resuming_a_finished_file_reports_no_speed(tiny_model: Path, tmp_path: Path) -> None:
    support = make_folder(tmp_path / "s", {"red": 2, "green": 2})
    queries = make_folder(tmp_path / "q", {"red": 2, "green": 2}, seed=3)
    out = tmp_path / "pred.json"
    first = run("classify", support, queries, "--model", tiny_model, "-o", out)
    assert first.exit_code == 0, first.output
    again = run("classify", support, queries, "--model", tiny_model, "-o", out, "--resume")
    assert again.exit_code == 0, again.output
    summary = json.loads(out.read_text())["summary"]
    assert (summary["queries"], summary["resumed"], summary["queries_per_second"]) == (4, 4, None)
    assert "queries/s" not in again.stderr


def test_no_images_found_names_every_suffix_emdcli_reads(tiny_model: Path, support_dir: Path, tmp_path: Path) -> None:
    """The hint lists the suffixes the reader accepts (one list: IMAGE_EXTENSIONS), for classify and batch."""
    from emdcli.io.images import IMAGE_EXTENSIONS

    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "notes.txt").write_text("not an image")
    for extra in (["classify"], ["batch", "-o", str(tmp_path / "out.csv")]):
        res = runner.invoke(app, [extra[0], str(support_dir), str(queries), "--model", str(tiny_model), *extra[1:]])
        assert res.exit_code != 0, res.output
        hint = next(line for line in res.stderr.splitlines() if line.startswith("Hint: image files end in"))
        assert sorted(s.strip() for s in hint.removeprefix("Hint: image files end in ").split(",")) == sorted(
            IMAGE_EXTENSIONS
        ), hint
