"""The command line: formats, exit codes, stdin, streaming and atomic output.

Most tests use the tiny generated ONNX model (see conftest) so they run in milliseconds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emdcli import __version__
from emdcli.cli import app
from emdcli.io.files import sha256_file
from emdcli.model.backbone import cpu_layout, usable_cores

runner = CliRunner()


def run(*args: str, input: str | None = None) -> object:
    return runner.invoke(app, [str(a) for a in args], input=input)


def classify(tiny_model: Path, support: Path, *rest: str, input: str | None = None) -> object:
    return run("classify", support, *rest, "--model", tiny_model, input=input)


def test_version() -> None:
    res = run("--version")
    assert res.exit_code == 0
    assert res.stdout == f"emdcli {__version__}\n"


def test_help_teaches_every_command() -> None:
    res = run("--help")
    assert res.exit_code == 0
    for word in ("classify", "evaluate", "search", "anomaly", "explain", "info", "export", "SUPPORT_DIR"):
        assert word in res.stdout
    res = run("classify", "--help")
    assert res.exit_code == 0
    for word in ("--format", "--output", "--top-k", "--device", "--model", "--config", "Exit codes", "jq"):
        assert word in res.stdout


def test_csv_rows_and_columns(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    res = classify(tiny_model, support_dir, query_dir, "--format", "csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(rows[0].keys()) == [
        "path", "status", "predicted", "score", "confidence", "runner_up", "runner_up_score", "true_label",
        "correct", "top_1", "top_2", "score:blue", "score:green", "score:red", "error",
    ]  # fmt: skip
    assert len(rows) == 6
    assert [Path(r["path"]).parent.name for r in rows] == ["blue", "blue", "green", "green", "red", "red"]
    for r in rows:
        assert r["status"] == "ok" and r["error"] == ""
        assert r["predicted"] == r["true_label"] == r["top_1"]
        assert r["correct"] == "true"
        scores = {c: float(r[f"score:{c}"]) for c in ("blue", "green", "red")}
        assert max(scores, key=scores.get) == r["predicted"]
        assert float(r["score"]) == scores[r["predicted"]]
        assert 0 < float(r["confidence"]) <= 1


def test_default_format_in_a_pipe_is_csv(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    res = classify(tiny_model, support_dir, query_dir)
    assert res.exit_code == 0
    assert res.stdout.startswith("path,status,predicted,")
    assert "6 queries · 6 classified" in res.stderr


def test_json_document(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    res = classify(tiny_model, support_dir, query_dir, "-f", "json", "--top-k", "3")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["model"] == "tiny"
    assert doc["classes"] == ["blue", "green", "red"]
    assert doc["shots"] == {"blue": 3, "green": 3, "red": 3}
    assert len(doc["rows"]) == 6
    first = doc["rows"][0]
    assert set(first) == {
        "path", "status", "predicted", "score", "confidence", "runner_up", "runner_up_score",
        "true_label", "correct", "top", "scores", "error",
    }  # fmt: skip
    assert [t["class"] for t in first["top"]][0] == first["predicted"]
    assert len(first["top"]) == 3 and set(first["scores"]) == {"blue", "green", "red"}
    assert doc["summary"]["queries"] == 6 and doc["summary"]["accuracy"] == 1.0


def test_jsonl_one_object_per_line(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    res = classify(tiny_model, support_dir, query_dir, "-f", "jsonl")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert len(lines) == 6
    assert all(json.loads(line)["status"] == "ok" for line in lines)


def test_table_for_people(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    res = classify(tiny_model, support_dir, query_dir, "-f", "table", "--top-k", "3")
    assert res.exit_code == 0
    for word in ("predicted", "conf.", "runner-up", "top 3", "truth", "✓"):
        assert word in res.stdout
    assert "accuracy 6/6 = 100.0%" in res.stderr  # the summary goes to stderr in every format


def test_stdin_paths(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    paths = sorted(query_dir.rglob("*.png"))[:3]
    res = classify(tiny_model, support_dir, "-", "-f", "jsonl", input="\n".join(map(str, paths)) + "\n")
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["path"] for line in res.stdout.splitlines()] == [str(p) for p in paths]


def test_unreadable_query_is_skipped_and_reported(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    (query_dir / "red" / "broken.png").write_bytes(b"not a png")
    res = classify(tiny_model, support_dir, query_dir, "-f", "csv")
    assert res.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    broken = [r for r in rows if r["path"].endswith("broken.png")]
    assert len(rows) == 7 and len(broken) == 1
    assert broken[0]["status"] == "error" and "not a recognised image format" in broken[0]["error"]
    assert broken[0]["predicted"] == ""
    assert "Warning: skipped" in res.stderr and "broken.png" in res.stderr
    assert "1 skipped" in res.stderr


def test_no_readable_query_is_a_failure(tiny_model: Path, support_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    res = classify(tiny_model, support_dir, bad, "-f", "csv")
    assert res.exit_code == 1
    assert "Error: the query could not be read" in res.stderr


def test_empty_class_folder_is_warned_about(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    (support_dir / "purple").mkdir()
    res = classify(tiny_model, support_dir, query_dir, "-f", "csv")
    assert res.exit_code == 0
    assert "class folder 'purple' holds no images" in res.stderr
    assert "score:purple" not in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["classify", "{tmp}/nope", "{tmp}"], "support folder does not exist"),
        (["classify", "{support}", "{tmp}/missing.png"], "query path does not exist"),
        (["classify", "{support}", "{tmp}/empty"], "no images found"),
        (["classify", "{support}", "{support}", "--format", "xml"], "Invalid value for '--format'"),
        (["classify", "{support}", "{support}", "--top-k", "0"], "Invalid value for '--top-k'"),
        (["classify", "{support}"], "Missing argument"),
        (["classify", "{support}", "{support}", "--config", "{tmp}/none.yaml"], "config file not found"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, support_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = run(*[a.format(tmp=tmp_path, support=support_dir) for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_model_failure_exits_1_in_one_line(support_dir: Path, query_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    res = run("classify", support_dir, query_dir, "--model", tmp_path / "broken.json")
    assert res.exit_code == 1
    assert res.stderr.splitlines()[0].startswith(f"Error: {tmp_path / 'broken.json'}: not a readable JSON manifest")
    assert "Traceback" not in res.output


@pytest.mark.parametrize("model", ["resnet50", "missing/model.json"])
def test_a_model_that_is_not_there_is_a_usage_error_listing_the_bundled_ones(
    model: str, support_dir: Path, query_dir: Path
) -> None:
    res = run("classify", support_dir, query_dir, "--model", model)
    assert res.exit_code == 2
    said = " ".join(res.stderr.split())
    assert f"Error: no model '{model}': not the name of a bundled model, nor a file or folder" in said
    assert "Hint: bundled models: efficientnet_lite0," in said and "or give --model a manifest (.json)" in said


def test_cuda_without_cuda_is_an_error(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    res = classify(tiny_model, support_dir, query_dir, "--device", "cuda")
    assert res.exit_code == 1
    assert "no CUDA execution provider" in res.stderr


def test_output_file_is_complete_and_stdout_empty(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.json"
    res = classify(tiny_model, support_dir, query_dir, "--output", out)
    assert res.exit_code == 0
    assert res.stdout == ""
    assert len(json.loads(out.read_text())["rows"]) == 6  # format taken from the suffix
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".preds")] == []


def crash_after(monkeypatch: pytest.MonkeyPatch, rows: int, message: str) -> None:
    """Make Classifier.predict raise RuntimeError(message) after yielding ``rows`` predictions."""
    from emdcli.tasks import classify as classify_module

    real = classify_module.Classifier.predict

    def crashing(self, support, paths, on_done=None, observe=None):  # type: ignore[no-untyped-def]
        for i, pred in enumerate(real(self, support, paths, on_done, observe)):
            if i == rows:
                raise RuntimeError(message)
            yield pred

    monkeypatch.setattr(classify_module.Classifier, "predict", crashing)


def test_failure_midway_never_leaves_a_half_written_output(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_after(monkeypatch, 2, "disk on fire")
    out = tmp_path / "preds.json"
    res = classify(tiny_model, support_dir, query_dir, "--output", out)
    assert res.exit_code == 1
    assert "unexpected RuntimeError: disk on fire" in res.stderr
    assert not out.exists()
    partial = json.loads((tmp_path / "preds.json.partial").read_text())
    assert len(partial["rows"]) == 2 and partial["summary"]["queries"] == 2
    assert "2 rows computed so far were kept" in res.stderr


def test_config_file_sets_defaults(tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "emdcli.yaml"
    cfg.write_text(f"format: jsonl\nmodel: {tiny_model}\ntop-k: 1\n")
    res = run("classify", support_dir, query_dir, "--config", cfg)
    assert res.exit_code == 0, res.output
    first = json.loads(res.stdout.splitlines()[0])
    assert len(first["top"]) == 1
    res = run("classify", support_dir, query_dir, "--config", cfg, "--format", "csv")
    assert res.stdout.startswith("path,")


def test_info_reports_a_tampered_model_as_not_verified(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "tampered"
    shutil.copytree(tiny_model.parent, folder)
    onnx = folder / "tiny.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")  # one byte more: still loads, but is not the manifest's file
    res = run("info", "--model", folder / "tiny.json", "--format", "json")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["sha256_verified"] is False
    assert data["sha256_file"] == sha256_file(onnx) != data["sha256"]
    assert "providers_used" not in data  # the model was not loaded
    assert "does not match the manifest" in res.stderr


def test_info_reports_model_and_providers(tiny_model: Path) -> None:
    res = run("info", "--model", tiny_model, "--format", "json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["model"] == "tiny" and data["sha256_verified"] is True
    assert data["sha256_file"] == data["sha256"] == sha256_file(tiny_model.parent / "tiny.onnx")
    assert "CPUExecutionProvider" in data["providers_available"]
    assert data["feature_map"] == "8 x 4 x 4 (16 nodes)"
    lanes, threads = cpu_layout(usable_cores())
    assert data["inference"] == f"{lanes} call(s) at once x {threads} thread(s), 4 images per call"
    assert data["feature_cache"].endswith("cache")  # EMDCLI_CACHE_DIR, set by conftest
    from emdcli.io.png import wuffs

    assert data["png_decoder"].startswith("Wuffs (pywuffs " if wuffs() else "Pillow (pip install")
    res = run("info", "--model", tiny_model)
    assert res.exit_code == 0 and "licence" in res.stdout


def test_export_argument_errors() -> None:
    res = run("export", "--arch", "timm:resnet18")
    assert res.exit_code == 2
    assert "--arch needs --weights" in res.stderr


def _emdcli(*args: str) -> list[str]:
    return [sys.executable, "-m", "emdcli", *args]


def test_rows_stream_before_stdin_ends(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    """A pipe sees the first rows while emdcli is still waiting for more paths."""
    paths = sorted(query_dir.rglob("*.png"))
    proc = subprocess.Popen(
        _emdcli("classify", str(support_dir), "-", "--model", str(tiny_model), "-f", "jsonl", "--batch-size", "1"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "EMDCLI_CONFIG": ""},
    )  # fmt: skip
    assert proc.stdin and proc.stdout
    try:
        for p in paths[:3]:
            proc.stdin.write(f"{p}\n".encode())
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no row came out while stdin was still open"
        first = json.loads(proc.stdout.readline())
        assert first["path"] == str(paths[0])
        assert proc.poll() is None  # still running, waiting for input
        for p in paths[3:]:
            proc.stdin.write(f"{p}\n".encode())
        proc.stdin.close()
        rest = proc.stdout.read().decode().splitlines()
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    assert [json.loads(line)["path"] for line in rest] == [str(p) for p in paths[1:]]


def test_console_script_exit_codes(support_dir: Path, tmp_path: Path) -> None:
    res = subprocess.run(_emdcli("classify", str(tmp_path / "nope"), "x"), capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[0] == f"Error: support folder does not exist: {tmp_path / 'nope'}"
    assert res.stdout == ""


def test_no_color_is_respected(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    coloured = runner.invoke(
        app, ["classify", str(support_dir), str(query_dir), "--model", str(tiny_model), "-f", "table"],
        env={"FORCE_COLOR": "1", "NO_COLOR": ""},
    )  # fmt: skip
    assert "\x1b[32m" in coloured.stdout  # the green tick, when colour is allowed
    plain = runner.invoke(
        app, ["classify", str(support_dir), str(query_dir), "--model", str(tiny_model), "-f", "table"],
        env={"FORCE_COLOR": "1", "NO_COLOR": "1"},
    )  # fmt: skip
    assert plain.exit_code == 0
    assert not re.search(r"\x1b\[(3[0-7]|38;)", plain.stdout)  # no foreground colour codes
    assert "✓" in plain.stdout


def test_quiet_silences_stderr(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    (query_dir / "red" / "broken.png").write_bytes(b"")
    res = classify(tiny_model, support_dir, query_dir, "-f", "csv", "--quiet")
    assert res.exit_code == 0
    assert res.stderr == ""
    assert len(res.stdout.splitlines()) == 8


def test_table_shows_rows_computed_before_a_failure(
    tiny_model: Path, support_dir: Path, query_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_after(monkeypatch, 1, "boom")
    res = classify(tiny_model, support_dir, query_dir, "-f", "table")
    assert res.exit_code == 1
    assert "img_0.png" in res.stdout and "img_1.png" not in res.stdout
    assert "1 query · 1 classified" in res.stderr


def test_shortlist_scores_only_the_closest_classes(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    res = classify(tiny_model, support_dir, query_dir, "-f", "jsonl", "--shortlist", "2", "--top-k", "3")
    assert res.exit_code == 0, res.output
    for line in res.stdout.splitlines():
        rec = json.loads(line)
        assert rec["predicted"] == rec["true_label"]
        assert len(rec["top"]) == 2  # only the shortlisted classes are ranked
        assert sum(v is None for v in rec["scores"].values()) == 1
    full = classify(tiny_model, support_dir, query_dir, "-f", "jsonl", "--shortlist", "0")
    assert all(None not in json.loads(line)["scores"].values() for line in full.stdout.splitlines())


def test_support_and_folder_query_features_are_cached(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    entries = lambda: sorted((tmp_path / "cache").rglob("*.npy"))  # noqa: E731
    cold = classify(tiny_model, support_dir, query_dir, "-f", "csv", "--no-cache")
    assert cold.exit_code == 0 and entries() == []
    first = classify(tiny_model, support_dir, query_dir, "-f", "csv")
    assert len(entries()) == 9 + 6  # one per support image and per query of the folder
    warm = classify(tiny_model, support_dir, query_dir, "-f", "csv")
    assert first.stdout == warm.stdout == cold.stdout
    assert len(entries()) == 15 and "6 embedded by an earlier run (feature cache)" in " ".join(warm.stderr.split())
    piped = CliRunner().invoke(app, ["classify", str(support_dir), "-", "--model", str(tiny_model), "-f", "csv"],
                               input="".join(f"{p}\n" for p in sorted(query_dir.rglob("*.png"))))  # fmt: skip
    assert piped.exit_code == 0 and len(entries()) == 15  # a stream is embedded as it comes


@pytest.mark.parametrize("command", ["evaluate", "search", "anomaly", "explain"])
def test_every_command_has_teaching_help(command: str) -> None:
    res = run(command, "--help")
    assert res.exit_code == 0
    assert "Examples" in res.stdout and "Exit codes" in res.stdout and "--model" in res.stdout


def test_summary_line_and_json_summary_agree(tiny_model: Path, support_dir: Path, query_dir: Path) -> None:
    res = classify(tiny_model, support_dir, query_dir, "-f", "json")
    assert res.exit_code == 0
    summary = json.loads(res.stdout)["summary"]
    line = res.stderr.strip().splitlines()[-1]
    assert line.endswith(f" · {summary['queries_per_second']:.1f} queries/s · {summary['seconds']:.1f} s")
