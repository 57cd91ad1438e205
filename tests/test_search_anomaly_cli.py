"""The search and anomaly commands: output shapes, self-exclusion, calibration, exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emdcli.cli import app
from emdcli.errors import EXIT_ANOMALY
from tests.conftest import make_folder, make_image

runner = CliRunner()


def run(tiny_model: Path, *args: str) -> object:
    return runner.invoke(app, [*args, "--model", str(tiny_model)])


def test_search_finds_the_same_colour_and_never_the_query_itself(tiny_model: Path, tmp_path: Path) -> None:
    gallery = make_folder(tmp_path / "gallery", {"red": 3, "green": 3, "blue": 3})
    query = gallery / "green" / "img_0.png"
    res = run(tiny_model, "search", str(gallery), str(query), "-k", "2", "-f", "csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert all("/green/" in r["path"] and not r["path"].endswith("green/img_0.png") for r in rows)
    assert float(rows[0]["score"]) >= float(rows[1]["score"])
    assert list(rows[0]) == ["query", "rank", "path", "score", "global_score", "status", "error"]


def test_search_json_and_stdin_and_bad_query(tiny_model: Path, tmp_path: Path) -> None:
    gallery = make_folder(tmp_path / "gallery", {"red": 2, "blue": 2})
    good = make_image(tmp_path / "q" / "red.png", (220, 30, 30), seed=9)
    bad = tmp_path / "q" / "broken.png"
    bad.write_bytes(b"not an image")
    args = ["search", str(gallery), "-", "--model", str(tiny_model), "-f", "json", "-k", "1", "--rerank", "emd"]
    res = runner.invoke(app, args, input=f"{good}\n{bad}\n")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["rerank"] == "emd" and doc["gallery_images"] == 4
    assert [r["status"] for r in doc["rows"]] == ["ok", "error"]
    assert "/red/" in doc["rows"][0]["path"]
    assert doc["summary"] == {"queries": 2, "skipped": 1}
    assert "skipped" in res.stderr


def test_search_usage_errors(tiny_model: Path, tmp_path: Path) -> None:
    gallery = make_folder(tmp_path / "gallery", {"red": 2})
    res = run(tiny_model, "search", str(gallery), str(tmp_path / "nope.png"))
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "empty").mkdir()
    res = run(tiny_model, "search", str(tmp_path / "empty"), str(gallery))
    assert res.exit_code == 2 and "no images found" in res.output


def test_anomaly_flags_another_colour(tiny_model: Path, tmp_path: Path) -> None:
    normal = make_folder(tmp_path / "normal", {"red": 8})
    queries = make_folder(tmp_path / "queries", {"red": 1, "blue": 1}, seed=4)
    res = run(tiny_model, "anomaly", str(normal), str(queries), "-f", "csv", "--contamination", "0")
    assert res.exit_code == 0, res.output
    rows = {Path(r["path"]).parent.name: r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert rows["blue"]["verdict"] == "anomaly" and rows["red"]["verdict"] == "normal"
    assert float(rows["blue"]["score"]) > float(rows["blue"]["threshold"]) >= float(rows["red"]["score"])
    assert "calibrated on 8 normal images" in res.stderr and "1 of 2 queries anomalous" in res.stderr
    res = run(tiny_model, "anomaly", str(normal), str(queries), "-f", "json", "--fail-on-anomaly")
    assert res.exit_code == EXIT_ANOMALY == 3
    doc = json.loads(res.stdout)
    assert doc["threshold_source"] == "quantile" and doc["normal_images"] == 8
    res = run(tiny_model, "anomaly", str(normal), str(queries / "red"), "--fail-on-anomaly", "--threshold", "5")
    assert res.exit_code == 0, res.output


def test_anomaly_needs_two_normal_images(tiny_model: Path, tmp_path: Path) -> None:
    normal = make_folder(tmp_path / "normal", {"red": 1})
    res = run(tiny_model, "anomaly", str(normal), str(normal))
    assert res.exit_code == 2 and "at least 2 normal images" in res.output


def test_second_search_does_not_embed_the_gallery_again(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emdcli.model.backbone import Backbone

    gallery = make_folder(tmp_path / "gallery", {"red": 3, "green": 3})
    query = make_image(tmp_path / "q" / "q.png", (30, 200, 40), seed=11)
    embedded: list[int] = []
    real = Backbone.__call__

    def counting(self: Backbone, batch: object) -> object:
        embedded.append(len(batch))  # type: ignore[arg-type]
        return real(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(Backbone, "__call__", counting)
    assert run(tiny_model, "search", str(gallery), str(query), "-f", "csv").exit_code == 0
    assert sum(embedded) == 6 + 1  # the gallery, then the query
    embedded.clear()
    res = run(tiny_model, "search", str(gallery), str(query), "-f", "csv")
    assert res.exit_code == 0, res.output
    assert sum(embedded) == 1  # only the query: the gallery came from the feature cache


def test_an_unreadable_gallery_image_is_named_a_gallery_image(tiny_model: Path, tmp_path: Path) -> None:
    gallery = make_folder(tmp_path / "gallery", {"red": 2, "blue": 2})
    bad = gallery / "red" / "broken.png"
    bad.write_bytes(b"not an image")
    query = make_image(tmp_path / "q" / "red.png", (220, 30, 30), seed=9)
    res = run(tiny_model, "search", str(gallery), str(query), "-k", "1", "-f", "csv")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert f"Warning: skipped gallery image {bad}: not a recognised image format\n" in res.stderr  # type: ignore[attr-defined]
    assert "support" not in res.stderr  # type: ignore[attr-defined]
