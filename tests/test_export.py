"""Exporting backbones to ONNX (needs the export extra: torch, torchvision, timm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the export extra is not installed")

from emdcli.io.images import load_image  # noqa: E402
from emdcli.model import export  # noqa: E402
from emdcli.model.backbone import Backbone  # noqa: E402
from emdcli.model.manifest import load_manifest, resolve_model_path  # noqa: E402
from tests.conftest import EXAMPLES  # noqa: E402

BUNDLED = load_manifest(resolve_model_path(None))


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> export.ExportResult:
    return export.export_bundled(
        tmp_path_factory.mktemp("export"), layer=BUNDLED.layer, size=BUNDLED.input_size, resize=BUNDLED.resize
    )


def test_onnx_output_matches_torch(rebuilt: export.ExportResult) -> None:
    assert rebuilt.max_abs_diff <= 1e-4
    m = rebuilt.manifest
    assert (m.channels, m.grid, m.layer) == (BUNDLED.channels, BUNDLED.grid, BUNDLED.layer)


def test_bundled_model_equals_torch_on_a_real_image() -> None:
    image = next((EXAMPLES / "queries").rglob("*.png"))
    x = load_image(image, BUNDLED.preprocess)[None]
    module = export._Cut.efficientnet(export.efficientnet_lite("lite0"), [BUNDLED.layer])
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = Backbone(resolve_model_path(None), device="cpu")(x)
    assert got.shape == expected.shape
    assert float(np.max(np.abs(got - expected))) <= 1e-4


def test_rebuild_matches_the_bundled_model_within_float_rounding(rebuilt: export.ExportResult) -> None:
    """What holds on any machine: the same graph, the same weights within float rounding (constants
    folded on another CPU differ in the last bits, so the bytes and the sha256 may differ), and the
    same features on a real image."""
    import onnx
    from onnx import numpy_helper

    bundled_path = resolve_model_path(None).parent / BUNDLED.file
    ours, theirs = onnx.load(str(bundled_path)), onnx.load(str(rebuilt.onnx_path))
    assert [n.op_type for n in theirs.graph.node] == [n.op_type for n in ours.graph.node]
    a = [numpy_helper.to_array(t) for t in ours.graph.initializer]
    b = [numpy_helper.to_array(t) for t in theirs.graph.initializer]
    assert [x.shape for x in b] == [x.shape for x in a]
    assert max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True)) <= 1e-5
    image = next((EXAMPLES / "queries").rglob("*.png"))
    x = load_image(image, BUNDLED.preprocess)[None]
    got = Backbone(rebuilt.manifest_path, device="cpu")(x)
    want = Backbone(resolve_model_path(None), device="cpu")(x)
    assert float(np.max(np.abs(got - want))) <= 1e-4


def test_export_a_torchvision_architecture_from_a_local_file(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    res = export.export_architecture("torchvision:resnet18", weights, tmp_path / "out", layer="layer3", size=64)
    assert res.max_abs_diff <= 1e-4
    assert (res.manifest.channels, res.manifest.grid) == (256, (4, 4))
    out = Backbone(res.manifest_path)(np.zeros((1, 3, 64, 64), dtype=np.float32))
    assert out.shape == (1, 256, 4, 4)


def test_export_errors_are_ours(tmp_path: Path) -> None:
    from emdcli.errors import ExportError

    with pytest.raises(ExportError, match="unknown layer"):
        export.export_bundled(tmp_path, layer="blocks.99")
    with pytest.raises(ExportError, match="timm:NAME or torchvision:NAME"):
        export.export_architecture("keras:vgg", tmp_path / "w.pth", tmp_path, layer="x")
