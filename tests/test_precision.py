"""--precision int8|fp32: each command runs the model's int8 variant (NAME_int8.json beside it), and
says which model it ran; `export --precision int8` makes that variant."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emdcli.cli import app
from emdcli.model.manifest import int8_sibling, load_manifest, resolve_model_path
from tests.conftest import make_folder

runner = CliRunner()


@pytest.fixture(scope="module")
def model_pair(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, Path]:
    """A folder holding the tiny fp32 model and its int8 variant, made by ``export --precision int8``."""
    pytest.importorskip("onnx", reason="making an int8 model needs onnx: pip install '.[export]'")
    folder = tmp_path_factory.mktemp("pair")
    for f in tiny_model.parent.iterdir():
        shutil.copy(f, folder / f.name)
    fp32 = folder / tiny_model.name
    calibration = make_folder(folder.parent / "calibration", {"red": 4, "green": 4, "blue": 4}, seed=3)
    res = runner.invoke(app, ["export", "--precision", "int8", "--from", str(fp32), "--calibration", str(calibration)])
    assert res.exit_code == 0, res.output
    int8 = int8_sibling(fp32)
    assert f"wrote {int8}" in res.stdout and load_manifest(int8).precision == "int8"
    return fp32, int8


def sha_of(manifest: Path) -> str:
    return load_manifest(manifest).sha256


def test_classify_runs_the_int8_variant(model_pair: tuple[Path, Path], support_dir: Path, query_dir: Path) -> None:
    fp32, int8 = model_pair
    shas = {}
    for precision in ("fp32", "int8"):
        res = runner.invoke(app, ["classify", str(support_dir), str(query_dir), "-f", "json", "--model", str(fp32),
                                  "--precision", precision])  # fmt: skip
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        shas[precision] = doc["model_sha256"]
        assert len(doc["rows"]) == 6
    assert shas == {"fp32": sha_of(fp32), "int8": sha_of(int8)}
    assert shas["fp32"] != shas["int8"]


def test_the_model_folder_is_the_fp32_model_and_precision_picks_the_variant(model_pair: tuple[Path, Path]) -> None:
    """A folder holding NAME.json and NAME_int8.json resolves to NAME.json (the folder is the model)."""
    fp32, int8 = model_pair
    assert resolve_model_path(fp32.parent) == fp32
    res = runner.invoke(app, ["info", "--model", str(fp32.parent), "--precision", "int8", "-f", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["precision"] == "int8" and data["manifest"] == str(int8) and data["sha256_verified"] is True
    assert data["quantized"].startswith(f"from {load_manifest(fp32).name} (sha256 {sha_of(fp32)[:12]}...)")


@pytest.mark.parametrize("engine", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_batch_runs_the_int8_variant(
    model_pair: tuple[Path, Path], support_dir: Path, query_dir: Path, tmp_path: Path, engine: str
) -> None:
    fp32, int8 = model_pair
    out = tmp_path / "rows.csv"
    res = runner.invoke(app, ["batch", str(support_dir), str(query_dir), "-o", str(out), "--engine", engine,
                              "--model", str(fp32), "--precision", "int8", "--workers", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and {r["model_sha256"] for r in rows} == {sha_of(int8)}


def test_search_anomaly_and_evaluate_run_the_int8_variant(
    model_pair: tuple[Path, Path], support_dir: Path, query_dir: Path
) -> None:
    fp32, int8 = model_pair
    common = ["--model", str(fp32), "--precision", "int8", "-f", "json"]
    episodes = ["--way", "2", "--shot", "1", "--query", "1", "--episodes", "3"]
    for args in (["search", str(support_dir), str(query_dir / "red")],
                 ["anomaly", str(support_dir / "red"), str(query_dir)],
                 ["evaluate", str(support_dir), *episodes]):  # fmt: skip
        res = runner.invoke(app, [*args, *common])
        assert res.exit_code == 0, (args[0], res.output)
        assert json.loads(res.stdout)["model_sha256"] == sha_of(int8), args[0]


def test_precision_from_the_config_file(
    model_pair: tuple[Path, Path], support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    fp32, int8 = model_pair
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {fp32}\nprecision: int8\n")
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir), "-f", "json", "--config", str(config)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model_sha256"] == sha_of(int8)
    config.write_text("precision: int4\n")
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir), "--config", str(config)])
    assert res.exit_code == 2 and "precision must be one of fp32, int8" in res.output


def test_a_model_without_an_int8_variant_says_how_to_make_one(
    tiny_model: Path, support_dir: Path, query_dir: Path
) -> None:
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir), "--model", str(tiny_model),
                              "--precision", "int8"])  # fmt: skip
    assert res.exit_code == 2
    assert f"has no int8 variant ({int8_sibling(tiny_model)} not found)" in res.output
    assert "emdcli export --precision int8 --from" in res.output


def test_fp32_of_an_int8_model_is_a_usage_error(model_pair: tuple[Path, Path], support_dir: Path) -> None:
    _, int8 = model_pair
    res = runner.invoke(app, ["classify", str(support_dir), str(support_dir / "red"), "--model", str(int8),
                              "--precision", "fp32"])  # fmt: skip
    assert res.exit_code == 2 and "is an int8 model; --precision fp32 needs an fp32 one" in res.output


def test_export_int8_needs_calibration_and_keeps_an_existing_file(model_pair: tuple[Path, Path]) -> None:
    fp32, int8 = model_pair
    res = runner.invoke(app, ["export", "--precision", "int8", "--from", str(fp32)])
    assert res.exit_code == 2 and "--precision int8 needs --calibration DIR" in res.output
    before = int8.read_bytes()
    res = runner.invoke(app, ["export", "--precision", "int8", "--from", str(fp32), "--calibration", str(fp32.parent)])
    assert res.exit_code == 2 and "exists" in res.output and "--force" in res.output
    assert int8.read_bytes() == before
    res = runner.invoke(app, ["export", "--from", str(fp32)])
    assert res.exit_code == 2
    assert "--from, --calibration and --calibration-classes are for --precision int8" in res.output


def test_the_bundled_model_runs_int8_unless_fp32_is_asked_for(model_pair: tuple[Path, Path]) -> None:
    """No --precision: the bundled model's int8 variant (emdcli.defaults.BUNDLED_PRECISION), the
    bundled model named by name too; --precision fp32 the fp32 one; any other fp32 model as named,
    even beside an int8 variant of its own."""
    from emdcli.model.backbone import with_precision

    bundled = resolve_model_path(None)
    assert with_precision(bundled, None) == int8_sibling(bundled)
    assert with_precision(resolve_model_path("efficientnet_lite0"), None) == int8_sibling(bundled)
    assert with_precision(bundled, "fp32") == bundled
    assert with_precision(bundled, "int8") == int8_sibling(bundled)
    fp32, int8 = model_pair
    assert with_precision(fp32, None) == fp32 and with_precision(fp32, "int8") == int8
    for args, name in (([], "efficientnet_lite0_int8"), (["--precision", "fp32"], "efficientnet_lite0")):
        res = runner.invoke(app, ["info", "-f", "json", *args])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["model"] == name


def test_default_output_is_unchanged_without_precision(support_dir: Path, query_dir: Path, tiny_model: Path) -> None:
    """No --precision: a model other than the bundled one as named (the rows of an fp32 run, byte for byte)."""
    base = ["classify", str(support_dir), str(query_dir), "-f", "csv", "--model", str(tiny_model)]
    plain, fp32 = runner.invoke(app, base), runner.invoke(app, [*base, "--precision", "fp32"])
    assert plain.exit_code == 0 and plain.stdout == fp32.stdout
    assert len(list(csv.DictReader(io.StringIO(plain.stdout)))) == 6


def test_export_int8_names_a_missing_calibration_class(model_pair: tuple[Path, Path], tmp_path: Path) -> None:
    fp32, _ = model_pair
    calib = make_folder(tmp_path / "calib", {"red": 2})
    res = runner.invoke(app, ["export", "--precision", "int8", "--from", str(fp32), "--calibration", str(calib),
                              "--calibration-classes", "red,blue", "--output", str(tmp_path / "out")])  # fmt: skip
    assert res.exit_code == 2 and "--calibration-classes: no folder blue in" in res.output
    assert not (tmp_path / "out").exists()
