"""The backbone: an onnxruntime session over a verified ONNX feature extractor.

backbone = load_model()                      # the bundled model, checked against its sha256
maps = backbone(batch)                       # (B, 3, S, S) float32 -> (B, C, H, W) float32
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import defaults
from ..errors import DeviceError, ModelError
from .manifest import ModelCheck, resolve_model_path, verified_model

DEVICES = defaults.DEVICES


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_providers(device: str) -> list[str]:
    """onnxruntime execution providers for ``device`` (auto, cpu or cuda)."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    have = available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in have:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise DeviceError(
            "`device` cuda was asked for, but onnxruntime has no CUDA execution provider here "
            f"(available: {', '.join(have)})",
            hint="install onnxruntime-gpu with a matching CUDA, or use `device` cpu",
        )
    return ["CPUExecutionProvider"]


#: Most backbone calls run at once on CPU (each call holds a batch's activations).
MAX_CPU_LANES = 4
#: Images per call on CPU: no slower end to end than 16 on 2 cores, at well under half the peak
#: memory (docs/benchmarks.md, "Throughput, cache, start-up and memory").
CPU_BATCH = 4
#: Images per call on CUDA (not measured: no GPU was available to measure it).
CUDA_BATCH = 16


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def cpu_layout(cores: int) -> tuple[int, int]:
    """(lanes, threads per lane) for ``cores`` CPU cores.

    A lane is one backbone call running at the same time as others. On 2 cores two
    single-threaded lanes classify more photos per second end to end than one call with
    2 threads (docs/benchmarks.md, measured by benchmarks/throughput.py): batches in
    parallel need no synchronisation inside each layer. Beyond MAX_CPU_LANES lanes the cores
    are split between them (not measured: only 2 cores were available).
    """
    lanes = max(1, min(cores, MAX_CPU_LANES))
    return lanes, max(1, cores // lanes)


class Backbone:
    """An onnxruntime session over a verified ONNX feature extractor.

    ``lanes`` calls may run at once from different threads (onnxruntime's ``run`` is
    thread-safe); ``embed_paths`` uses that many. With neither ``threads`` nor ``lanes``
    given, CPU gets ``cpu_layout(usable_cores())`` and CUDA one lane; ``threads`` alone
    means one lane of that many threads, ``lanes`` alone splits the cores between them.
    ``batch_size`` is the number of images per call that suits the device.
    """

    def __init__(
        self, manifest_path: Path, device: str = defaults.DEVICE, threads: int | None = None, lanes: int | None = None
    ) -> None:
        #: The sha256 check made on loading (raises ModelError on a mismatch).
        self.check: ModelCheck = verified_model(manifest_path)
        self.manifest_path = manifest_path
        self.manifest = self.check.manifest
        self.onnx_path = self.check.onnx_path
        self.providers = choose_providers(device)
        on_cpu = self.providers[0] == "CPUExecutionProvider"
        if lanes is None:
            lanes = cpu_layout(usable_cores())[0] if on_cpu and threads is None else 1
        self.lanes: int = max(1, lanes)
        self.batch_size: int = CPU_BATCH if on_cpu else CUDA_BATCH
        if threads is None and on_cpu:
            threads = max(1, usable_cores() // self.lanes)
        self.threads = threads
        self._session = self._open(threads)

    def _open(self, threads: int | None) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # Idle inference threads would otherwise spin after each batch, taking the CPU that
        # decoding and matching need between batches.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
        try:
            sess = ort.InferenceSession(str(self.onnx_path), sess_options=opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.onnx_path}: onnxruntime cannot load it as an ONNX model ({first})") from None
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelError(f"{self.onnx_path}: expected one image input of shape (B, 3, S, S)")
        if len(outputs[0].shape) != 4:
            raise ModelError(
                f"{self.onnx_path}: output has shape {outputs[0].shape}; expected a feature map (B, C, H, W)"
            )
        self._input_name = inputs[0].name
        return sess

    @property
    def active_providers(self) -> list[str]:
        return list(self._session.get_providers())

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 normalised images -> (B, C, H, W) float32 feature maps."""
        out = self._session.run(None, {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)


def with_precision(manifest_path: Path, precision: str | None) -> Path:
    """The manifest of ``manifest_path``'s model at ``precision``: itself when it has that precision
    already; for ``int8``, its int8 variant beside it (:func:`int8_sibling`). None: the bundled
    model at ``defaults.BUNDLED_PRECISION``, any other model as named. UsageError when there is no
    int8 variant (with how to make it), or for ``fp32`` of an int8 model."""
    from ..errors import UsageError
    from .manifest import int8_sibling, is_bundled_default, load_manifest

    if precision is None:
        if not is_bundled_default(manifest_path) or defaults.BUNDLED_PRECISION == "fp32":
            return manifest_path
        precision = defaults.BUNDLED_PRECISION
    if precision not in defaults.PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(defaults.PRECISIONS)}")
    manifest = load_manifest(manifest_path)
    if manifest.precision == precision:
        return manifest_path
    if precision == "fp32":
        raise UsageError(f"{manifest_path.name} is an {manifest.precision} model; `precision` fp32 needs an fp32 one",
                         hint="give `model` the fp32 model it was made from")  # fmt: skip
    sibling = int8_sibling(manifest_path)
    if not sibling.is_file():
        raise UsageError(
            f"{manifest.name} has no int8 variant ({sibling} not found)",
            hint=f"make one: emdcli export `precision` int8 `from` {manifest_path} `calibration` IMAGES_DIR",
        )
    return sibling


def load_model(
    model: str | os.PathLike[str] | None = None, device: str = defaults.DEVICE, precision: str | None = None
) -> Backbone:
    """The backbone of ``model`` (None: the bundled EfficientNet-Lite0; else a manifest, its
    .onnx or a folder holding one) at ``precision`` (None: the bundled model at its default
    precision, int8, any other as named; ``fp32`` or ``int8``, see :func:`with_precision`) on
    ``device`` (auto, cpu or cuda), its sha256 verified."""
    return Backbone(with_precision(resolve_model_path(model), precision), device=device)
