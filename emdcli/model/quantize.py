"""An INT8 variant of a model: onnxruntime static quantization, calibrated on real images.

    images = calibration_images(Path("data/openclipart"), 200, seed=0)
    result = quantize_model(Path("weights/efficientnet_lite0.json"), Path("weights"), images)
    result.manifest_path                      # weights/efficientnet_lite0_int8.json, next to its .onnx

The calibration images are preprocessed exactly as at inference (the source manifest's
:class:`~emdcli.io.images.Preprocess`); the ranges of the activations are measured on them
and the model is rewritten with 8-bit weights and activations. The written manifest is the
source's with ``precision="int8"`` and a ``quantization`` record (what it was quantized from,
how, on how many images), and the sha256 of the file written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, ModelError
from ..io.files import atomic_write, sha256_file
from ..io.images import iter_image_files, load_image
from .manifest import INT8_SUFFIX, Manifest, load_manifest, verified_model, write_manifest
from .onnx_graph import excluded_nodes, fold_static_padding, image_input_name

#: How to get the ``onnx`` package, which onnxruntime's quantization tools need.
EXPORT_HINT = "pip install 'emdcli[export]'"
#: Calibration methods (onnxruntime's CalibrationMethod MinMax, Entropy, Percentile).
METHODS = ("minmax", "entropy", "percentile")
#: Quantized model formats: QuantizeLinear/DequantizeLinear pairs around float ops, or quantized ops.
FORMATS = ("qdq", "qoperator")
#: Activation types: asymmetric unsigned (u8, the x86 kernels' native input) or signed.
ACTIVATION_TYPES = ("uint8", "int8")
#: Images per calibration run (onnxruntime keeps every activation of a run in memory).
CALIBRATION_BATCH = 8
#: Nodes left in float32 by default (name prefixes of the exported EfficientNet-Lite0): the stem,
#: blocks.0 and blocks.1, the high-resolution start (112 x 112 to 56 x 56). Most of the quantization
#: error came from them: with only the stem and blocks.0 kept, int8 lost up to 0.92 points on the
#: evaluation half (cards, 5-way 1-shot; that run is in docs/benchmarks.md as of commit 27a3480), with
#: blocks.1 kept too at most 0.44 (docs/benchmarks.md, "INT8 backbone: the accuracy it costs", and
#: benchmarks/results/int8_accuracy_eval.md); keeping blocks.6 instead did not help.
DEFAULT_KEEP_FP32 = ("/conv_stem/", "/blocks.0/", "/blocks.1/")


@dataclass(frozen=True)
class QuantizeSettings:
    """How a model is quantized (:func:`quantize_model`).

    method: an activation's range from the calibration values: ``minmax`` (the extremes),
    ``entropy`` (least KL divergence) or ``percentile`` (the ``percentile``-th of the absolute values).
    per_channel: a scale per output channel of each weight.
    quant_format: ``qdq`` (Quantize/DequantizeLinear pairs, fused to integer kernels) or ``qoperator`` (QLinearConv).
    activation_type: ``uint8`` (asymmetric) or ``int8``. symmetric_activations: a zero point of 0.
    reduce_range: 7-bit weights (for CPUs without VNNI).
    keep_fp32: node-name prefixes of the nodes left in float32 (``/conv_stem/`` ...).
    pre_process: run onnxruntime's ``quant_pre_process`` first.
    fold_padding: fold run-time Pad amounts to constants first (:func:`fold_static_padding`).
    percentile: with ``method="percentile"``, in (0, 100].
    """

    method: str = "percentile"
    per_channel: bool = True
    quant_format: str = "qdq"
    activation_type: str = "uint8"
    symmetric_activations: bool = False
    reduce_range: bool = False
    keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32
    pre_process: bool = True
    fold_padding: bool = True
    percentile: float = 99.999

    def check(self) -> None:
        """ValueError for a setting outside its choices."""
        for value, choices, what in (
            (self.method, METHODS, "calibration method"),
            (self.quant_format, FORMATS, "format"),
            (self.activation_type, ACTIVATION_TYPES, "activation type"),
        ):
            if value not in choices:
                raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_model` wrote.

    sha256: of the written ONNX file (as its manifest says). calibration_count: images the
    ranges were measured on. excluded: the nodes left in float32. seconds: wall time.
    """

    manifest_path: Path
    onnx_path: Path
    sha256: str
    calibration_count: int
    settings: QuantizeSettings
    excluded: tuple[str, ...]
    seconds: float


def calibration_images(folder: Path, count: int, seed: int, *, classes: Iterable[str] | None = None) -> list[Path]:
    """``count`` images of ``folder`` (a folder per class, or loose images), chosen reproducibly.

    Classes take turns (in a seeded order), each giving its images in a seeded order, so the
    images are spread evenly over classes; fewer than ``count`` come back when the folder has
    fewer. classes: only these class folders (for example a development half). The result
    depends only on the file names and ``seed``.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    root = Path(folder)
    wanted = None if classes is None else set(classes)
    groups: dict[str, list[Path]] = {}
    for path in iter_image_files(root):
        rel = path.relative_to(root)
        name = rel.parts[0] if len(rel.parts) > 1 else ""
        if wanted is None or name in wanted:
            groups.setdefault(name, []).append(path)
    rng = random.Random(seed)
    order = sorted(groups)
    rng.shuffle(order)
    queues = []
    for name in order:
        files = sorted(groups[name])
        rng.shuffle(files)
        queues.append(files)
    chosen: list[Path] = []
    depth = 0
    while len(chosen) < count and any(depth < len(q) for q in queues):
        for files in queues:
            if depth < len(files) and len(chosen) < count:
                chosen.append(files[depth])
        depth += 1
    return chosen


def _import_quantization() -> Any:
    """onnxruntime.quantization (which needs onnx), or ExportError saying what to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization as quantization
    except ImportError as exc:
        raise ExportError(
            f"quantizing a model needs the onnx package ({exc.name or exc}), which is not installed",
            hint=EXPORT_HINT,
        ) from None
    return quantization


def _calibration_method(q: Any, name: str) -> Any:
    """onnxruntime's CalibrationMethod for one of :data:`METHODS`."""
    return {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }[name]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantization tools print and log progress; a library says nothing."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


class _Batches:
    """A CalibrationDataReader over a list of (B, 3, S, S) arrays (``get_next`` until None)."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self._items = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._items, None)
        return None if batch is None else {self.input_name: batch}


def prepare_float_model(
    source_onnx: Path, out_path: Path, input_size: int, *, pre_process: bool = True, fold_padding: bool = True
) -> Path:
    """The float model quantization starts from: with ``fold_padding``, :func:`fold_static_padding`;
    with ``pre_process``, onnxruntime's ``quant_pre_process`` (shape inference and the basic graph
    optimisations: constant folding, redundant nodes removed). Returns ``out_path``."""
    q = _import_quantization()
    source = source_onnx
    if fold_padding:
        source, _ = fold_static_padding(source_onnx, out_path.with_name(f"{out_path.stem}.folded.onnx"), input_size)
    if pre_process:
        with _quiet():
            q.quant_pre_process(str(source), str(out_path), skip_symbolic_shape=False)
    else:
        out_path.write_bytes(source.read_bytes())
    return out_path


def calibrate(
    model_path: Path,
    batches: Iterable[np.ndarray],
    cache_path: Path,
    settings: QuantizeSettings,
    workdir: Path,
) -> Path:
    """Measure the activation ranges of ``model_path`` on ``batches`` ((B, 3, S, S) float32),
    one batch per run so that memory stays bounded whatever their number, and save them to
    ``cache_path`` (onnxruntime's calibration cache, which ``quantize_static`` reads)."""
    q = _import_quantization()
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    method = _calibration_method(q, settings.method)
    options: dict[str, Any] = {}
    if settings.method == "percentile":
        options["percentile"] = settings.percentile
        options["symmetric"] = settings.symmetric_activations
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    input_name = image_input_name(model_path)
    with _quiet():
        calibrator = q.create_calibrator(
            model_path,
            op_types,
            augmented_model_path=str(workdir / "augmented.onnx"),
            calibrate_method=method,
            extra_options=options,
        )
        seen = 0
        for batch in batches:
            calibrator.collect_data(_Batches(input_name, [np.ascontiguousarray(batch, dtype=np.float32)]))
            seen += 1
        if not seen:
            raise ValueError("no calibration images")
        ranges = calibrator.compute_data()
        q.save_tensors_data(ranges, cache_path)
    del calibrator
    return cache_path


def quantize_calibrated(
    model_path: Path, cache_path: Path, out_path: Path, settings: QuantizeSettings, exclude: Sequence[str] = ()
) -> Path:
    """Write the quantized model of ``model_path`` to ``out_path`` with the ranges of ``cache_path``
    (from :func:`calibrate` with the same ``settings.method``), leaving the nodes ``exclude`` in float."""
    q = _import_quantization()
    method = _calibration_method(q, settings.method)
    activation = q.QuantType.QUInt8 if settings.activation_type == "uint8" else q.QuantType.QInt8
    with _quiet():
        q.quantize_static(
            str(model_path),
            str(out_path),
            None,
            quant_format=q.QuantFormat.QDQ if settings.quant_format == "qdq" else q.QuantFormat.QOperator,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=activation,
            weight_type=q.QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            calibrate_method=method,
            calibration_cache_path=str(cache_path),
            extra_options={"ActivationSymmetric": settings.symmetric_activations},
        )
    return out_path


def _batches(paths: Sequence[Path], manifest: Manifest, size: int) -> Iterator[np.ndarray]:
    prep = manifest.preprocess
    for start in range(0, len(paths), size):
        yield np.stack([load_image(p, prep) for p in paths[start : start + size]])


def quantize_model(
    source_manifest: Path,
    out_dir: Path,
    calibration: Sequence[Path],
    *,
    settings: QuantizeSettings | None = None,
    name: str | None = None,
    calibration_note: str = "",
) -> QuantizeResult:
    """Quantize the model of ``source_manifest`` (bundled, exported or trained) to INT8.

    calibration: image files, preprocessed as at inference (the manifest's preprocessing); they
    set the activation ranges (none of them should be an image the model is later measured on).
    Writes ``out_dir/<name>.onnx`` and ``<name>.json`` atomically (name: ``<source name>_int8``).
    settings: how (:class:`QuantizeSettings`; None: its defaults). calibration_note: how the
    calibration images were chosen, recorded in the manifest.

    Raises ModelError when the source model does not verify, ExportError when the onnx package
    is missing, ValueError for an unknown setting or no calibration image; ImageError for an
    unreadable calibration image.
    """
    t0 = time.perf_counter()
    settings = QuantizeSettings() if settings is None else settings
    settings.check()
    if not calibration:
        raise ValueError("no calibration images")
    q = _import_quantization()
    import onnxruntime

    check = verified_model(source_manifest)
    source = check.manifest
    name = name or f"{source.name}{INT8_SUFFIX}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    manifest_path = out_dir / f"{name}.json"
    with tempfile.TemporaryDirectory(prefix="emdcli-quantize-") as tmp:
        work = Path(tmp)
        prepared = prepare_float_model(
            check.onnx_path,
            work / "prepared.onnx",
            source.input_size,
            pre_process=settings.pre_process,
            fold_padding=settings.fold_padding,
        )
        cache = calibrate(
            prepared,
            _batches(list(calibration), source, CALIBRATION_BATCH),
            work / "ranges.json",
            settings,
            work,
        )
        exclude = excluded_nodes(prepared, settings.keep_fp32)
        written = quantize_calibrated(prepared, cache, work / "int8.onnx", settings, exclude)
        with atomic_write(onnx_path, binary=True) as fh:
            fh.write(written.read_bytes())
    del q
    digest = sha256_file(onnx_path)
    record: dict[str, Any] = {
        "source": {"name": source.name, "sha256": source.sha256},
        "calibration": {"images": len(calibration), "chosen": calibration_note},
        "method": settings.method,
        **{k: v for k, v in asdict(settings).items() if k not in ("method", "keep_fp32")},
        "keep_fp32": list(settings.keep_fp32),
        "excluded_nodes": exclude,
        "weight_type": "int8",
        "onnxruntime": onnxruntime.__version__,
    }
    if settings.method != "percentile":
        del record["percentile"]
    manifest = replace(
        source,
        name=name,
        file=onnx_path.name,
        sha256=digest,
        precision="int8",
        quantization=record,
    )
    write_manifest(manifest, manifest_path)
    if load_manifest(manifest_path).sha256 != digest:  # pragma: no cover - a disk that lies
        raise ModelError(f"{manifest_path}: written manifest does not name the written model")
    return QuantizeResult(
        manifest_path=manifest_path,
        onnx_path=onnx_path,
        sha256=digest,
        calibration_count=len(calibration),
        settings=settings,
        excluded=tuple(exclude),
        seconds=time.perf_counter() - t0,
    )
