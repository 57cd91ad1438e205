"""Model manifests, sha256 verification, onnxruntime sessions and providers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from emdcli.errors import DeviceError, ModelError, UsageError
from emdcli.model import manifest as manifest_module
from emdcli.model.backbone import Backbone, choose_providers
from emdcli.model.manifest import bundled_models, load_manifest, resolve_model_path
from tests.conftest import build_tiny_model


def copy_model(tiny_model: Path, dest: Path) -> Path:
    dest.mkdir()
    shutil.copy(tiny_model, dest / "tiny.json")
    shutil.copy(tiny_model.with_suffix(".onnx"), dest / "tiny.onnx")
    return dest / "tiny.json"


def test_tiny_backbone_runs(tiny_model: Path) -> None:
    net = Backbone(tiny_model, device="cpu")
    out = net(np.zeros((2, 3, 32, 32), dtype=np.float32))
    assert out.shape == (2, 8, 4, 4)
    assert net.active_providers == ["CPUExecutionProvider"]


def test_resolve_model_path_accepts_json_onnx_and_folder(tiny_model: Path) -> None:
    assert resolve_model_path(str(tiny_model)) == tiny_model
    assert resolve_model_path(str(tiny_model.with_suffix(".onnx"))) == tiny_model
    assert resolve_model_path(str(tiny_model.parent)) == tiny_model
    assert resolve_model_path(None).name == "efficientnet_lite0.json"


def test_a_bundled_model_is_named_by_its_stem(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--model NAME`` finds weights/NAME.json; a file or folder of that name where emdcli runs wins."""
    weights = tmp_path / "weights"
    copy_model(tiny_model, weights)
    shutil.copy(tiny_model, weights / "efficientnet_lite0.json")
    monkeypatch.setattr(manifest_module, "bundled_model_dir", lambda: weights)
    assert bundled_models() == ("efficientnet_lite0", "tiny")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("tiny") == weights / "tiny.json"
    with pytest.raises(UsageError, match="no model 'nothing'"):  # neither a bundled name nor a path
        resolve_model_path("nothing")
    (tmp_path / "tiny").mkdir()
    with pytest.raises(ModelError, match="expected exactly one manifest"):  # the local folder of that name is meant
        resolve_model_path("tiny")


def test_sha256_mismatch_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    manifest = copy_model(tiny_model, tmp_path / "m")
    with open(manifest.with_suffix(".onnx"), "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="does not match the manifest") as info:
        Backbone(manifest)
    assert info.value.exit_code == 1


def test_file_that_is_not_onnx(tmp_path: Path) -> None:
    manifest_path = build_tiny_model(tmp_path / "m")
    onnx_path = manifest_path.with_suffix(".onnx")
    onnx_path.write_bytes(b"definitely not a protobuf")
    data = json.loads(manifest_path.read_text())
    from emdcli.io.files import sha256_file

    data["sha256"] = sha256_file(onnx_path)
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="cannot load it as an ONNX model"):
        Backbone(manifest_path)


def test_model_whose_output_is_not_a_feature_map(tmp_path: Path) -> None:
    from emdcli.io.files import sha256_file
    from tests.conftest import write_flat_onnx

    folder = tmp_path / "flat"
    manifest_path = build_tiny_model(folder)
    write_flat_onnx(folder / "tiny.onnx")
    data = json.loads(manifest_path.read_text())
    data["sha256"] = sha256_file(folder / "tiny.onnx")
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="expected a feature map"):
        Backbone(manifest_path)


def test_missing_and_malformed_manifests(tmp_path: Path, tiny_model: Path) -> None:
    with pytest.raises(ModelError, match="manifest not found"):
        load_manifest(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="not a readable JSON manifest"):
        load_manifest(bad)
    data = json.loads(tiny_model.read_text())
    del data["sha256"]
    bad.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="manifest lacks sha256"):
        load_manifest(bad)
    manifest = copy_model(tiny_model, tmp_path / "m")
    manifest.with_suffix(".onnx").unlink()
    with pytest.raises(ModelError, match="model file not found"):
        Backbone(manifest)


def test_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import emdcli.model.backbone as model

    monkeypatch.setattr(model, "available_providers", lambda: ["CPUExecutionProvider"])
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(DeviceError, match="no CUDA execution provider"):
        choose_providers("cuda")
    monkeypatch.setattr(model, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert choose_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cpu") == ["CPUExecutionProvider"]


def test_the_committed_tiny_models_are_what_their_script_makes() -> None:
    onnx = pytest.importorskip("onnx", reason="checking the committed models needs onnx: pip install '.[export]'")
    import importlib.util

    from tests.conftest import MODELS

    spec = importlib.util.spec_from_file_location("make_tiny_models", MODELS / "make_tiny_models.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    made = script.models()
    assert sorted(made) == sorted(p.name for p in MODELS.glob("*.onnx"))
    for name, model in made.items():
        assert onnx.load(str(MODELS / name)) == model, f"{name} differs from what make_tiny_models.py makes"
