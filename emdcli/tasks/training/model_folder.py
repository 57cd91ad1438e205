"""The model folder (MODEL_DIR): checked before a run, and what the run writes into it at the end:
the trained network's ONNX file (checked against torch), its blocks file and its manifest, whose
training record says how the model was made."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ... import __version__
from ...errors import UsageError
from ...io.files import display_path, sha256_file
from ...model import trainable
from ...model.export import ExportResult
from ...model.manifest import bundled_model_dir
from .checkpoints import CHECKPOINT, TrainState
from .settings import ClassSplit, TrainSettings, Validation


def prepare_model_dir(out: Path, resume: bool, force: bool) -> Path | None:
    """Check MODEL_DIR before a run; the checkpoint to resume from, or None for a new run.

    UsageError for the bundled model's folder, a file, a finished model or an interrupted run
    (without ``force`` or ``resume``), and for ``resume`` with nothing to resume. ``force``
    deletes an earlier run's model and checkpoint (only those files).
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"`out` must be a folder, but {display_path(out)} is a file")
    if out.resolve() == bundled_model_dir().resolve():
        raise UsageError("`out` is the bundled model's folder, which training never overwrites",
                         hint="give a new folder, e.g. `out` my-model")  # fmt: skip
    checkpoint = out / CHECKPOINT
    models = [p for suffix in ("*.json", "*.onnx", f"*{trainable.BLOCKS_SUFFIX}") for p in sorted(out.glob(suffix))]
    if force:
        for path in [*models, checkpoint]:
            path.unlink(missing_ok=True)
        if resume:
            raise UsageError("`resume` and `force` contradict each other: pick one")
        return None
    if resume:
        if models:
            raise UsageError(f"{display_path(out)} holds a finished model; there is nothing to resume",
                             hint="use it with `model`, or pass `force` to train again")  # fmt: skip
        if not checkpoint.is_file():
            raise UsageError(f"nothing to resume: {display_path(out)} holds no {CHECKPOINT}",
                             hint="start the run without `resume`")  # fmt: skip
        return checkpoint
    if models:
        raise UsageError(f"{display_path(out)} already holds a model ({models[0].name})",
                         hint="pass `force` to replace it, or another `out`")  # fmt: skip
    if checkpoint.is_file():
        raise UsageError(f"{display_path(out)} holds an interrupted run",
                         hint="pass `resume` to continue it, or `force` to start over")  # fmt: skip
    return None


def model_name(out: Path) -> str:
    """File stem of the trained model: MODEL_DIR's name, in letters, digits, '-' and '_'."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", out.resolve().name).strip("_")
    return name or "emdcli_model"


def training_record(
    settings: TrainSettings,
    parent: trainable.Parent,
    base: str,
    names: tuple[str, ...],
    image_count: int,
    split: ClassSplit,
    state: TrainState,
    dev: Any,
) -> dict[str, Any]:
    """The manifest's training record of a finished run: the settings, the parent, the base set (its
    ``base`` fingerprint), the state kept and every validation, the time spent and the device."""
    best = state.best
    return {
        "emdcli": __version__,
        "settings": asdict(settings),
        "parent": {"name": parent.manifest.name, "sha256": parent.manifest.sha256, "variant": parent.variant,
                   "weights_sha256": sha256_file(trainable.parent_weights(parent))},
        "base_set": {"fingerprint": base, "classes": len(names), "images": image_count,
                     "train_classes": len(split.train), "val_classes": [names[i] for i in split.val]},
        "kept_episode": state.best_episode,
        "validation_before": _summary(state.history[0]),
        "validation_kept": _summary(best),
        "validation": [_summary(v) for v in state.history],
        "train_seconds": round(state.train_seconds, 1),
        "device": str(dev),
    }  # fmt: skip


def write_model(
    head: Any, out: Path, settings: TrainSettings, training: dict[str, Any], parent: trainable.Parent
) -> ExportResult:
    """Export the trained network into ``out`` as MODEL_NAME.onnx (its parity with torch checked),
    MODEL_NAME.blocks.pt and MODEL_NAME.json with the ``training`` record."""
    return trainable.export_trained(head.cpu(), settings.train_from, out, model_name(out), training, parent)


def _summary(v: Validation) -> dict[str, Any]:
    """A validation for the manifest: everything but the per-episode accuracies."""
    return {k: val for k, val in asdict(v).items() if k != "per_episode"}
