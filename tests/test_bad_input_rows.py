"""Rows of docs/robustness.md that no other test file covered: each case's exit code and output.

search and anomaly with an unreadable query or no query at all, search / anomaly / evaluate
stopped midway with --output, a classify run where no query could be read, a support path
that is a file, broken models and manifests at the command line, and a config file that
tries to run code.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from emdcli.cli import app
from tests.conftest import make_folder, make_image, write_flat_onnx

runner = CliRunner()

ANOMALY_HEADER = "path,status,score,threshold,verdict,error\n"
NO_QUERY = "Error: no query images were given\nHint: give image files, folders, or pipe paths into '-'\n"
CRASHED = (
    "Error: unexpected RuntimeError: disk on fire\n"
    "Hint: this is a bug in emdcli; run again with EMDCLI_DEBUG=1 for the traceback and report it\n"
)
NONE_READ = "Error: none of the queries could be read\nHint: see the warnings above\n"


def broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image")
    return path


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files that an --output run left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- search and anomaly: an unreadable query, or no query at all -------------------------------


def test_anomaly_reports_an_unreadable_query_as_an_error_row(tiny_model: Path, tmp_path: Path) -> None:
    normal = make_folder(tmp_path / "normal", {"red": 4})
    bad_normal = broken(normal / "red" / "bad.png")
    good = make_image(tmp_path / "q" / "good.png", (220, 30, 30), seed=9)
    bad = broken(tmp_path / "q" / "bad.png")
    args = ["anomaly", str(normal), str(bad), str(good), "--model", str(tiny_model), "-f", "csv"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["path"] for r in rows] == [str(bad), str(good)]
    assert rows[0] == {
        "path": str(bad), "status": "error", "score": "", "threshold": "", "verdict": "",
        "error": f"{bad}: not a recognised image format",
    }  # fmt: skip
    assert rows[1]["status"] == "ok" and rows[1]["verdict"] in ("normal", "anomaly") and rows[1]["error"] == ""
    assert f"Warning: skipped normal image {bad_normal}: not a recognised image format\n" in res.stderr
    assert f"Warning: skipped {bad}: not a recognised image format\n" in res.stderr  # the query
    assert "calibrated on 4 normal images" in res.stderr  # the broken normal image is left out

    res = runner.invoke(app, ["anomaly", str(normal), str(bad), "--model", str(tiny_model), "-f", "csv"])
    assert res.exit_code == 1
    assert res.stdout == ANOMALY_HEADER + f"{bad},error,,,,{bad}: not a recognised image format\n"
    assert res.stderr.endswith(NONE_READ)


@pytest.mark.parametrize("command", ["search", "anomaly"])
@pytest.mark.parametrize("source", ["empty folder", "empty stdin"])
def test_search_and_anomaly_without_any_query_exit_1(
    tiny_model: Path, tmp_path: Path, command: str, source: str
) -> None:
    images = make_folder(tmp_path / "images", {"red": 3})
    (tmp_path / "empty").mkdir()
    queries = str(tmp_path / "empty") if source == "empty folder" else "-"
    args = [str(images), queries]  # the reference set first in both
    res = runner.invoke(app, [command, *args, "--model", str(tiny_model), "-f", "csv"], input="")
    assert res.exit_code == 1
    assert res.stdout == ""  # not even a CSV header
    assert res.stderr.endswith(NO_QUERY)
    assert res.stderr.count("Error:") == 1


# --- search, anomaly and evaluate stopped midway with --output FILE -----------------------------


def fail_on_black_images(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Make the backbone raise ``exc`` when it is given an all-black image (and only then)."""
    from emdcli.model.backbone import Backbone

    real = Backbone.__call__

    def failing(self: Backbone, batch: np.ndarray) -> np.ndarray:
        if any(np.all(image == image.min()) for image in batch):
            raise exc
        return real(self, batch)

    monkeypatch.setattr(Backbone, "__call__", failing)


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [(RuntimeError("disk on fire"), 1, CRASHED), (KeyboardInterrupt(), 130, "Interrupted.\n")],
    ids=["failure", "interrupt"],
)
@pytest.mark.parametrize("command", ["search", "anomaly"])
def test_search_and_anomaly_stopped_midway_keep_finished_rows_in_partial(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, exc: BaseException, code: int,
    message: str,
) -> None:  # fmt: skip
    images = make_folder(tmp_path / "images", {"red": 3, "blue": 3})
    q1 = make_image(tmp_path / "q" / "a.png", (220, 30, 30), seed=21)
    q2 = tmp_path / "q" / "b.png"
    Image.new("RGB", (40, 40), (0, 0, 0)).save(q2)  # the backbone fails on this one (see fail_on_black_images)
    config = tmp_path / "one_at_a_time.yaml"
    config.write_text("batch-size: 1\n")  # each query its own backbone call: q1 is done before q2 fails
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "rows.csv"
    out.write_text("an earlier, complete result\n")
    where = [str(images), str(q1), str(q2)]
    args = [command, *where, "--model", str(tiny_model), "--config", str(config), "--no-cache"]
    if command == "search":
        args += ["-k", "2"]
    complete = runner.invoke(app, [*args, "-f", "csv"])
    assert complete.exit_code == 0, complete.output
    header, *rows = complete.stdout.splitlines(keepends=True)
    first_query = [r for r in rows if r.startswith(f"{q1},")]
    assert len(first_query) == (2 if command == "search" else 1) and len(rows) == 2 * len(first_query)

    fail_on_black_images(monkeypatch, exc)
    res = runner.invoke(app, [*args, "-o", str(out)])
    assert res.exit_code == code
    assert res.stdout == ""
    partial = out_dir / "rows.csv.partial"
    kept = "1 row computed so far was" if len(first_query) == 1 else f"{len(first_query)} rows computed so far were"
    assert f"{kept} kept in {partial}\n" in res.stderr
    assert res.stderr.endswith(message)
    assert out.read_text() == "an earlier, complete result\n"  # FILE itself is never touched
    assert partial.read_text() == header + "".join(first_query)  # the finished query's rows, complete
    assert leftovers(out_dir) == []


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [(RuntimeError("disk on fire"), 1, CRASHED), (KeyboardInterrupt(), 130, "Interrupted.\n")],
    ids=["failure", "interrupt"],
)
def test_evaluate_stopped_midway_writes_nothing(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, code: int, message: str
) -> None:
    dataset = make_folder(tmp_path / "set", {"red": 4, "green": 4})
    Image.new("RGB", (40, 40), (0, 0, 0)).save(dataset / "red" / "zz_black.png")  # embedded last
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "eval.json"
    out.write_text("{}\n")
    fail_on_black_images(monkeypatch, exc)
    args = ["evaluate", str(dataset), "--model", str(tiny_model), "--way", "2", "--query", "2", "--episodes", "4",
            "--methods", "proto,emd", "--no-cache", "-o", str(out)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == code
    assert res.stdout == ""
    assert res.stderr.endswith(message) and "kept in" not in res.stderr
    assert out.read_text() == "{}\n"  # untouched
    assert sorted(p.name for p in out_dir.iterdir()) == ["eval.json"]  # no .partial, no temporary file


# --- classify ----------------------------------------------------------------------------------


def test_no_readable_query_stops_after_the_rows(tiny_model: Path, support_dir: Path, tmp_path: Path) -> None:
    bad = broken(tmp_path / "q" / "bad.png")
    res = runner.invoke(app, ["classify", str(support_dir), str(bad), "--model", str(tiny_model), "-f", "csv"])
    assert res.exit_code == 1
    header, *rows = res.stdout.splitlines()
    assert header.startswith("path,status,predicted,")
    assert rows == [f"{bad},error,,,,,,,,,,,,,{bad}: not a recognised image format"]  # the row comes first
    assert res.stderr.startswith(f"Warning: skipped {bad}: not a recognised image format\n")
    assert res.stderr.endswith("Error: the query could not be read\nHint: see the warnings above\n")


def test_support_path_that_is_a_file_is_a_usage_error(tiny_model: Path, tmp_path: Path, query_dir: Path) -> None:
    support = make_image(tmp_path / "support.png", (220, 30, 30), seed=1)
    res = runner.invoke(app, ["classify", str(support), str(query_dir), "--model", str(tiny_model)])
    assert res.exit_code == 2
    assert res.stderr == f"Error: support must be a folder with one sub-folder per class, got a file: {support}\n"
    assert res.stdout == ""


# --- models and config files -------------------------------------------------------------------


def _flat_model(folder: Path) -> None:
    """Replace the tiny model's ONNX file with one whose output is a (B, 3) vector."""
    write_flat_onnx(folder / "tiny.onnx")


@pytest.mark.parametrize("how", ["output is not a feature map", "manifest is not JSON", "manifest lacks sha256"])
def test_broken_models_and_manifests_stop_with_exit_1(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path, how: str
) -> None:
    from emdcli.io.files import sha256_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_model.parent, folder)
    manifest = folder / "tiny.json"
    data = json.loads(manifest.read_text())
    if how == "output is not a feature map":
        _flat_model(folder)
        data["sha256"] = sha256_file(folder / "tiny.onnx")
        manifest.write_text(json.dumps(data))
        expected = f"Error: {folder / 'tiny.onnx'}: output has shape ['batch', 3]; expected a feature map (B, C, H, W)"
    elif how == "manifest is not JSON":
        manifest.write_text("{not json")
        expected = f"Error: {manifest}: not a readable JSON manifest ("
    else:
        del data["sha256"]
        manifest.write_text(json.dumps(data))
        expected = f"Error: {manifest}: manifest lacks sha256"
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir), "--model", str(manifest)])
    assert res.exit_code == 1
    assert res.stderr.splitlines()[0].startswith(expected), res.stderr
    assert res.stdout == ""


def test_config_file_is_read_with_safe_load(
    support_dir: Path, query_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "emdcli.yaml"
    cfg.write_text('format: !!python/object/apply:os.system ["touch pwned"]\n')
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir), "--config", str(cfg)])
    assert res.exit_code == 2
    assert res.stderr == (
        f"Error: {cfg}: not valid YAML (could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system')\n"
    )
    assert res.stdout == ""
    assert not (tmp_path / "pwned").exists()
