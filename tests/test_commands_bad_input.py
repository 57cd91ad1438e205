"""Bad input for evaluate, search, anomaly and explain: reported skips and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from emdcli.cli import app
from tests.conftest import make_folder

runner = CliRunner()


def run(tiny_model: Path, *args: str) -> object:
    return runner.invoke(app, [*args, "--model", str(tiny_model)])


def broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image")
    return path


def test_search_skips_a_broken_gallery_image_and_reports_a_broken_query(tiny_model: Path, tmp_path: Path) -> None:
    gallery = make_folder(tmp_path / "gallery", {"red": 2, "blue": 2})
    broken(gallery / "red" / "bad.png")
    bad_query = broken(tmp_path / "q.png")
    res = run(tiny_model, "search", str(gallery), str(bad_query), str(gallery / "blue" / "img_0.png"), "-f", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["gallery_images"] == 4  # the broken one is left out
    assert doc["rows"][0]["status"] == "error" and "not a recognised image format" in doc["rows"][0]["error"]
    assert all(r["status"] == "ok" for r in doc["rows"][1:])
    assert "skipped" in res.stderr and "bad.png" in res.stderr
    res = run(tiny_model, "search", str(gallery), str(bad_query))
    assert res.exit_code == 1 and "none of the queries could be read" in res.stderr


def test_anomaly_and_evaluate_skip_broken_images(tiny_model: Path, tmp_path: Path) -> None:
    normal = make_folder(tmp_path / "normal", {"red": 4})
    broken(normal / "red" / "bad.png")
    res = run(tiny_model, "anomaly", str(normal), str(normal / "red" / "img_0.png"), "-f", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["normal_images"] == 4
    dataset = make_folder(tmp_path / "set", {"red": 4, "green": 4})
    broken(dataset / "green" / "bad.png")
    res = run(tiny_model, "evaluate", str(dataset), "--way", "2", "--query", "2", "--episodes", "3", "-f", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["images"] == 8 and doc["unreadable"] == 1
    assert "skipped" in res.stderr


def test_explain_refuses_a_broken_query_in_one_line(tiny_model: Path, tmp_path: Path) -> None:
    support = make_folder(tmp_path / "support", {"red": 1, "blue": 1})
    out = tmp_path / "m.png"
    res = run(tiny_model, "explain", str(support), str(broken(tmp_path / "q.png")), "-o", str(out))
    assert res.exit_code == 1
    assert res.stderr.splitlines()[0].startswith("Error: ") and "not a recognised image format" in res.stderr
    assert not out.exists()
    res = run(tiny_model, "explain", str(support), str(tmp_path / "missing.png"), "-o", str(out))
    assert res.exit_code == 2
