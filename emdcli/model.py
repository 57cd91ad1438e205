"""The backbone: an ONNX feature extractor, its manifest, and onnxruntime sessions.

A model is two files side by side: ``NAME.onnx`` (input ``image`` of shape
(B, 3, S, S) float32, output ``features`` of shape (B, C, H, W)) and ``NAME.json``,
the manifest that says how to preprocess for it, which layer it ends at, and the
ONNX file's sha256, checked on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DeviceError, ModelError
from .images import Preprocess

DEVICES = ("auto", "cpu", "cuda")
BUNDLED_NAME = "efficientnet_lite0"
_MANIFEST_FIELDS = (
    "name", "file", "sha256", "input_size", "resize", "mean", "std",
    "layer", "channels", "grid", "source", "licence",
)  # fmt: skip


@dataclass(frozen=True)
class Manifest:
    """What a model file is and how to feed it.

    input_size: side of the square input in px. grid: (H, W) of the output map,
    so a feature map has ``H * W`` nodes of ``channels`` values each. exporter: the
    versions that wrote the file (the same versions rebuild it byte for byte).
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

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(size=self.input_size, resize=self.resize, mean=self.mean, std=self.std)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(manifest: Manifest, path: Path) -> Path:
    """Write ``manifest`` as JSON atomically; returns ``path``."""
    data = asdict(manifest)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def bundled_model_dir() -> Path:
    """Folder of the bundled model: inside the installed package, or the repo's ``weights/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "weights", here.parent / "weights"):
        if (candidate / f"{BUNDLED_NAME}.json").is_file():
            return candidate
    return here / "weights"


def resolve_model_path(model: str | os.PathLike[str] | None) -> Path:
    """The manifest path for ``model``: None (bundled), a .json, a .onnx, or a folder."""
    if model is None or str(model) == "":
        return bundled_model_dir() / f"{BUNDLED_NAME}.json"
    path = Path(model)
    if path.is_dir():
        found = sorted(path.glob("*.json"))
        if len(found) != 1:
            raise ModelError(f"{path}: expected exactly one manifest (.json) in the folder, found {len(found)}")
        return found[0]
    if path.suffix == ".onnx":
        return path.with_suffix(".json")
    return path


def load_manifest(path: Path) -> Manifest:
    """Read and check a manifest. Raises ModelError naming the file and the problem."""
    if not path.is_file():
        raise ModelError(
            f"model manifest not found: {path}",
            hint="pass --model with a .json manifest next to its .onnx file, or reinstall emdcli",
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
        return Manifest(
            name=str(data["name"]),
            file=str(data["file"]),
            sha256=str(data["sha256"]).lower(),
            input_size=int(data["input_size"]),
            resize=str(data["resize"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            layer=str(data["layer"]),
            channels=int(data["channels"]),
            grid=tuple(int(v) for v in data["grid"]),  # type: ignore[arg-type]
            source=str(data["source"]),
            licence=str(data["licence"]),
            exporter=str(data.get("exporter", "")),
        )
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: manifest has a malformed field ({exc})") from None


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
            "--device cuda was asked for, but onnxruntime has no CUDA execution provider here "
            f"(available: {', '.join(have)})",
            hint="install onnxruntime-gpu with a matching CUDA, or use --device cpu",
        )
    return ["CPUExecutionProvider"]


@dataclass(frozen=True)
class ModelInfo:
    """What ``emdcli info`` reports about a model."""

    manifest_path: Path
    onnx_path: Path
    manifest: Manifest
    sha256_ok: bool
    providers: tuple[str, ...]


#: Most backbone calls run at once on CPU (each call holds a batch's activations).
MAX_CPU_LANES = 4
#: Images per call on CPU: as fast as 8 or 16 end to end on 2 cores, with a lower peak
#: memory (peak RSS of `classify` with two lanes: 358-367 MB, against 534 MB at 8 and
#: 838-888 MB at 16).
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
    single-threaded lanes classify 18-21% more photos per second end to end than one
    call with 2 threads (three runs of benchmarks/throughput.py): batches in parallel
    need no synchronisation inside each layer. Beyond MAX_CPU_LANES lanes the cores
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
        self, manifest_path: Path, device: str = "auto", threads: int | None = None, lanes: int | None = None
    ) -> None:
        self.manifest_path = manifest_path
        self.manifest = load_manifest(manifest_path)
        self.onnx_path = manifest_path.parent / self.manifest.file
        if not self.onnx_path.is_file():
            raise ModelError(f"model file not found: {self.onnx_path} (named by {manifest_path})")
        actual = sha256_file(self.onnx_path)
        if actual != self.manifest.sha256:
            raise ModelError(
                f"{self.onnx_path}: sha256 {actual[:16]}... does not match the manifest's "
                f"{self.manifest.sha256[:16]}...; the file is corrupt or was replaced",
                hint="reinstall emdcli, or rebuild the model with `emdcli export`",
            )
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

    def info(self) -> ModelInfo:
        return ModelInfo(self.manifest_path, self.onnx_path, self.manifest, True, tuple(self.active_providers))
