"""Checkpoints: the whole state of an unfinished run (``checkpoint.pt`` in MODEL_DIR), written
atomically at each validation and when the run is stopped, and read back by ``--resume`` so that a
resumed run ends where an uninterrupted one would."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ... import __version__
from ...errors import UsageError
from ...io.files import atomic_write, display_path
from ...model import trainable
from .settings import TrainSettings, Validation

#: The training state of an unfinished run inside MODEL_DIR.
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainState:
    """Everything a checkpoint holds besides the settings."""

    episode: int
    head: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    best_head: dict[str, Any]
    history: list[Validation] = field(default_factory=list)
    best_episode: int = 0
    train_seconds: float = 0.0

    @property
    def best(self) -> Validation:
        """The validation of the state kept so far."""
        return next(v for v in self.history if v.episode == self.best_episode)


def save_checkpoint(path: Path, settings: TrainSettings, base: str, parent: str, state: TrainState) -> None:
    """Write the checkpoint atomically (a temporary file renamed into place); ``parent``: the sha256 of
    the parent model's ONNX file."""
    torch = trainable.require_torch()
    payload = {
        "emdcli": __version__, "settings": asdict(settings), "base": base, "parent": parent,
        "state": {**state.__dict__, "history": [asdict(v) for v in state.history]},
    }  # fmt: skip
    with atomic_write(path, binary=True) as fh:
        torch.save(payload, fh)


def load_checkpoint(path: Path, settings: TrainSettings, base: str, parent: str) -> TrainState:
    """The state saved at ``path``; UsageError when it was made with other settings, another base set
    or another parent model."""
    torch = trainable.require_torch()
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        saved_settings, saved_base, raw = payload["settings"], payload["base"], dict(payload["state"])
    except Exception as exc:  # a damaged or foreign file
        raise UsageError(f"{display_path(path)} is not a readable checkpoint ({type(exc).__name__})",
                         hint="pass `force` to start over") from None  # fmt: skip
    if saved_settings != asdict(settings):
        diff = [f"{k} {saved_settings.get(k)!r} (now {v!r})" for k, v in asdict(settings).items()
                if saved_settings.get(k) != v]  # fmt: skip
        raise UsageError(f"the interrupted run had other settings: {', '.join(diff)}",
                         hint="resume with the same options, or pass `force` to start over")  # fmt: skip
    if saved_base != base:
        raise UsageError("the base set changed since the interrupted run (its files differ)",
                         hint="pass `force` to start over on the base set as it is now")  # fmt: skip
    if payload.get("parent") != parent:
        raise UsageError("the interrupted run started from another model",
                         hint="resume with the same `model`, or pass `force` to start over")  # fmt: skip
    raw["history"] = [Validation(**v) for v in raw["history"]]
    return TrainState(**raw)
