"""What a training run does (:class:`TrainSettings`) and the records it reports: the class split,
each episode's numbers, each validation and the run's result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ... import defaults
from ...errors import UsageError
from ...features.source import Skipped
from ...io.records import Record
from ...model import trainable

#: The views a run may cache, in the order ``views`` takes them.
VIEWS = ("centre", "flip", "zoom", "zoom-flip")
#: Methods scored on the validation episodes; the state with the best ``SELECT_BY`` is kept.
VAL_METHODS = ("proto", "emd", "default")
SELECT_BY = "default"


@dataclass(frozen=True)
class TrainSettings:
    """What a run does; a resumed run must have the same settings (``seed`` included)."""

    way: int = defaults.TRAIN_WAY
    shot: int = defaults.TRAIN_SHOT
    query: int = defaults.TRAIN_QUERY
    episodes: int = defaults.TRAIN_EPISODES
    lr: float = defaults.TRAIN_LR
    train_from: str = defaults.TRAIN_FROM
    views: int = defaults.TRAIN_VIEWS
    val_classes: float = defaults.VAL_CLASSES
    val_every: int = defaults.VAL_EVERY
    val_episodes: int = defaults.VAL_EPISODES
    seed: int = defaults.SEED

    def check(self) -> None:
        """UsageError for a value no run can use."""
        if min(self.way, self.shot, self.query, self.episodes, self.val_every, self.val_episodes) < 1:
            raise UsageError("`way`, `shot`, `query`, `episodes` and the validation counts must be at least 1")
        if self.way < 2:
            raise UsageError("`way` must be at least 2: an episode tells classes apart")
        if not 1 <= self.views <= len(VIEWS):
            raise UsageError(f"`views` must be 1 to {len(VIEWS)} ({', '.join(VIEWS)})")
        if not self.lr > 0:
            raise UsageError("`lr` must be positive")
        if self.val_classes <= 0 or (self.val_classes >= 1 and self.val_classes != int(self.val_classes)):
            raise UsageError("`val_classes` must be a fraction below 1 or a whole number of classes")
        trainable.block_index(self.train_from)


@dataclass(frozen=True)
class ClassSplit:
    """Class ids (into the base folder's classes) trained on and held out for validation."""

    train: tuple[int, ...]
    val: tuple[int, ...]


@dataclass(frozen=True)
class EpisodeStats:
    """One training episode: its number (1-based), loss and accuracy on its queries (0..1), learning rate."""

    episode: int
    loss: float
    accuracy: float
    lr: float


@dataclass(frozen=True)
class Validation:
    """Accuracy (%) and 95% half-interval per method on the fixed validation episodes, after ``episode``.

    gain, gain_ci95: the paired difference of SELECT_BY's accuracy to the parent's (episode 0) on
    the same episodes, in points; per_episode: SELECT_BY's accuracy of each episode (0..1).
    """

    episode: int
    accuracy: dict[str, float]
    ci95: dict[str, float]
    seconds: float
    gain: float = 0.0
    gain_ci95: float = 0.0
    per_episode: tuple[float, ...] = ()

    @property
    def significant(self) -> bool:
        """Whether the 95% interval of the gain over the parent lies above 0."""
        return self.gain - self.gain_ci95 > 0


@dataclass(frozen=True)
class TrainResult:
    """What a run did. ``manifest_path`` is None when it was stopped (the checkpoint is kept)."""

    model_dir: Path
    manifest_path: Path | None
    history: tuple[Validation, ...]
    best: Validation
    episodes_done: int
    trunk_seconds: float
    train_seconds: float
    skipped: tuple[Skipped, ...]
    split: ClassSplit
    class_names: tuple[str, ...]
    image_count: int
    max_abs_diff: float | None = None

    @property
    def before(self) -> Validation:
        return self.history[0]

    @property
    def stopped(self) -> bool:
        return self.manifest_path is None

    #: The columns of :meth:`to_records`, in order.
    COLUMNS: ClassVar[tuple[str, ...]] = (
        "episode", *VAL_METHODS, *(f"{m}_ci95" for m in VAL_METHODS), "gain", "gain_ci95", "kept",
    )  # fmt: skip

    def to_records(self) -> list[Record]:
        """One record per validation (:attr:`COLUMNS`): the held-out classes' accuracy and interval per
        method (percent, rounded to 0.01), SELECT_BY's paired gain over the parent (points), and whether
        its state is the one exported."""
        return [
            {"episode": v.episode, **{m: round(v.accuracy[m], 2) for m in VAL_METHODS},
             **{f"{m}_ci95": round(v.ci95[m], 2) for m in VAL_METHODS}, "gain": round(v.gain, 2),
             "gain_ci95": round(v.gain_ci95, 2), "kept": v.episode == self.best.episode}
            for v in self.history
        ]  # fmt: skip
