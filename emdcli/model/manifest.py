"""A model's manifest: what its ONNX file is, how to feed it, and the file's sha256.

A model is two files side by side: ``NAME.onnx`` (input ``image`` of shape (B, 3, S, S)
float32, output ``features`` of shape (B, C, H, W)) and ``NAME.json``, the manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..io.files import atomic_write, sha256_file
from ..io.images import Preprocess

#: File stem of the bundled model (``weights/efficientnet_lite0.json`` and ``.onnx``).
BUNDLED_NAME = "efficientnet_lite0"
_MANIFEST_FIELDS = (
    "name", "file", "sha256", "input_size", "resize", "mean", "std",
    "layer", "channels", "grid", "source", "licence",
)  # fmt: skip


@dataclass(frozen=True)
class Manifest:
    """What a model file is and how to feed it.

    input_size: side of the square input in px. grid: (H, W) of the output map, so a
    feature map has ``H * W`` nodes of ``channels`` values each. exporter: the versions
    that wrote the file. training: for a model written by ``emdcli train``, its settings, parent,
    base set and validation figures (None for an exported one). precision: ``"fp32"``, or
    ``"int8"`` for a quantized model; quantization: for an int8 one, what it was quantized from
    and how (:mod:`emdcli.model.quantize`; None otherwise).
    """

    name: str
    file: str
    sha256: str
    input_size: int
    resize: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layer: str
    channels: int
    grid: tuple[int, int]
    source: str
    licence: str
    exporter: str = ""
    training: dict[str, Any] | None = None
    precision: str = "fp32"
    quantization: dict[str, Any] | None = None

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(size=self.input_size, resize=self.resize, mean=self.mean, std=self.std)


@dataclass(frozen=True)
class ModelCheck:
    """The outcome of hashing a model's ONNX file against its manifest.

    expected: the manifest's sha256; actual: the sha256 of the file's bytes, computed now.
    """

    manifest_path: Path
    onnx_path: Path
    manifest: Manifest
    expected: str
    actual: str

    @property
    def ok(self) -> bool:
        return self.actual == self.expected


def write_manifest(manifest: Manifest, path: Path) -> Path:
    """Write ``manifest`` as JSON atomically; returns ``path``."""
    fields = asdict(manifest)
    for key, default in (("training", None), ("precision", "fp32"), ("quantization", None)):
        if fields[key] == default:  # left out, so that older manifests are written as they were
            del fields[key]
    with atomic_write(path) as fh:
        json.dump(fields, fh, indent=2)
        fh.write("\n")
    return path


def bundled_model_dir() -> Path:
    """Folder of the bundled model: inside the installed package, or the repo's ``weights/``."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "weights", package.parent / "weights"):
        if (candidate / f"{BUNDLED_NAME}.json").is_file():
            return candidate
    return package / "weights"


def bundled_models() -> tuple[str, ...]:
    """Names of the models shipped in ``weights/`` (the stems of their manifests), the default first."""
    names = sorted(p.stem for p in bundled_model_dir().glob("*.json"))
    return tuple(sorted(names, key=lambda n: n != BUNDLED_NAME))


def resolve_model_path(model: str | os.PathLike[str] | None) -> Path:
    """The manifest path for ``model``: None (the default bundled model), a bundled model's name
    (:func:`bundled_models`; a file or folder of that name in the working folder wins), a .json, a
    .onnx, or a folder."""
    if model is None or str(model) == "":
        return bundled_model_dir() / f"{BUNDLED_NAME}.json"
    path = Path(model)
    if not path.exists() and path.name == str(model) and str(model) in bundled_models():
        return bundled_model_dir() / f"{model}.json"
    if not path.exists():
        from ..errors import UsageError

        raise UsageError(
            f"no model {str(model)!r}: not the name of a bundled model, nor a file or folder",
            hint=f"bundled models: {', '.join(bundled_models())}; or give `model` a manifest (.json), its .onnx, "
            "or a folder holding one",
        )
    if path.is_dir():
        found = sorted(path.glob("*.json"))
        if len(found) > 1:  # a model folder may hold the model's int8 variant beside it: the folder is the model
            found = [f for f in found if int8_sibling(f) in found] or found
        if len(found) != 1:
            raise ModelError(f"{path}: expected exactly one manifest (.json) in the folder, found {len(found)}")
        return found[0]
    if path.suffix == ".onnx":
        return path.with_suffix(".json")
    return path


#: The suffix of an int8 variant's file stem: ``NAME_int8.json`` beside ``NAME.json``.
INT8_SUFFIX = "_int8"


def is_bundled_default(manifest_path: Path) -> bool:
    """Whether ``manifest_path`` is the default bundled model's manifest (fp32)."""
    return manifest_path.resolve() == (bundled_model_dir() / f"{BUNDLED_NAME}.json").resolve()


def int8_sibling(manifest_path: Path) -> Path:
    """Where the int8 variant of the model ``manifest_path`` lives: ``<dir>/<stem>_int8.json``."""
    return manifest_path.with_name(f"{manifest_path.stem}{INT8_SUFFIX}.json")


def load_manifest(path: Path) -> Manifest:
    """Read and check a manifest. Raises ModelError naming the file and the problem."""
    if not path.is_file():
        raise ModelError(
            f"model manifest not found: {path}",
            hint="pass `model` with a .json manifest next to its .onnx file, or reinstall emdcli",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: a manifest must be a JSON object")
    missing = [f for f in _MANIFEST_FIELDS if f not in data]
    if missing:
        raise ModelError(f"{path}: manifest lacks {', '.join(missing)}")
    try:
        mean, std, grid = (tuple(float(v) for v in data[k]) for k in ("mean", "std", "grid"))
        if len(mean) != 3 or len(std) != 3 or len(grid) != 2:
            raise ValueError("mean and std need 3 values, grid 2")
        return Manifest(
            name=str(data["name"]),
            file=str(data["file"]),
            sha256=str(data["sha256"]).lower(),
            input_size=int(data["input_size"]),
            resize=str(data["resize"]),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            layer=str(data["layer"]),
            channels=int(data["channels"]),
            grid=(int(grid[0]), int(grid[1])),
            source=str(data["source"]),
            licence=str(data["licence"]),
            exporter=str(data.get("exporter", "")),
            training=dict(data["training"]) if isinstance(data.get("training"), dict) else None,
            precision=str(data.get("precision", "fp32")),
            quantization=dict(data["quantization"]) if isinstance(data.get("quantization"), dict) else None,
        )
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: manifest has a malformed field ({exc})") from None


def check_model(manifest_path: Path) -> ModelCheck:
    """Read the manifest and hash the ONNX file it names. Raises ModelError when either is missing."""
    manifest = load_manifest(manifest_path)
    onnx_path = manifest_path.parent / manifest.file
    if not onnx_path.is_file():
        raise ModelError(f"model file not found: {onnx_path} (named by {manifest_path})")
    try:
        actual = sha256_file(onnx_path)
    except OSError as exc:
        raise ModelError(f"cannot read {onnx_path}: {exc.strerror or exc}") from None
    return ModelCheck(manifest_path, onnx_path, manifest, manifest.sha256, actual)


def verified_model(manifest_path: Path) -> ModelCheck:
    """:func:`check_model`, raising ModelError when the file's sha256 differs from the manifest's."""
    check = check_model(manifest_path)
    if not check.ok:
        raise ModelError(
            f"{check.onnx_path}: sha256 {check.actual[:16]}... does not match the manifest's "
            f"{check.expected[:16]}...; the file is corrupt or was replaced",
            hint="reinstall emdcli, or rebuild the model with `emdcli export`",
        )
    return check
