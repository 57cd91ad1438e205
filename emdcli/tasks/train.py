"""Meta-training the backbone's last blocks with the EMD head (DeepEMD's meta-training stage).

    result = train(Path("my-domain"), Path("my-model"), TrainSettings(episodes=2000))
    result.manifest_path          # a model folder every command takes as --model
    result.best.accuracy          # validation accuracy (%) per method of the state kept

How it works (the numbers are :class:`TrainSettings` fields):

1. The classes of BASE_DIR are split by ``seed``: ``val_classes`` are held out for validation,
   the rest are trained on.
2. Every image goes once through the frozen trunk (the bundled network up to the block before
   ``train_from``, as ONNX) in ``views`` views (centre, flipped, zoomed, zoomed and flipped);
   those maps are cached on disk like any features.
3. Each episode draws ``way`` classes, ``shot + query`` images of each and a view per image, and
   runs the trained blocks on their trunk maps. A query's logit for a class is
   ``12.5 * sum(flow * cos)`` over node pairs: the cosines of per-node-centred features, and the
   flow POT's exact EMD plan between the cross-reference weights, both weights and flow held
   constant (as DeepEMD's code does with its OpenCV solver: since d EMD / d cost is the flow,
   the gradient through the cost is exact). Cross-entropy over the episode's classes; SGD with
   Nesterov momentum, cosine-decayed learning rate; BatchNorm statistics stay the parent's.
4. Every ``val_every`` episodes (and before the first) the held-out classes are scored by
   emdcli's own proto, emd and default methods on fixed episodes. The state kept and exported
   is the one with the best ``default`` accuracy among those whose paired gain over the parent
   is significant (its 95% interval above 0); when none is, the parent's weights are kept.
   Everything above goes into the manifest.

A checkpoint (``checkpoint.pt``) is written at each validation and when ``stop`` is set; it
holds the whole state, so a resumed run ends where an uninterrupted one would.

The parts live in :mod:`emdcli.tasks.training`, one concern per module: the settings and records
(:mod:`~.training.settings`), the trunk's views (:mod:`~.training.views`), the EMD head and its
validation (:mod:`~.training.head`), checkpoints (:mod:`~.training.checkpoints`) and the model
folder (:mod:`~.training.model_folder`); this module runs them (the base set, the loop).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import defaults
from ..errors import DatasetError, DeviceError
from ..features.source import Progress, Skipped
from ..io.files import sha256_file
from ..io.folders import LabelledFolder, read_labelled_folder
from ..model import trainable
from ..model.backbone import usable_cores
from .episodes import sample_episodes
from .training.checkpoints import CHECKPOINT, TrainState, load_checkpoint, save_checkpoint
from .training.head import episode_loss, validate
from .training.model_folder import prepare_model_dir, training_record, write_model
from .training.settings import SELECT_BY, ClassSplit, EpisodeStats, TrainResult, TrainSettings, Validation
from .training.views import trunk_maps

__all__ = [
    "CHECKPOINT",
    "ClassSplit",
    "EpisodeStats",
    "TrainResult",
    "TrainSettings",
    "Validation",
    "fingerprint",
    "learning_rate",
    "split_classes",
    "torch_device",
    "train",
]

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


# the base set ----------------------------------------------------------------------------------


def split_classes(count: int, val_classes: float, seed: int, way: int = 2) -> ClassSplit:
    """Hold out ``val_classes`` of ``count`` classes, drawn by ``seed``: a count, or a fraction below 1
    (rounded, and at least ``way``, so that a validation episode can be drawn). Each list sorted."""
    held = int(val_classes) if val_classes >= 1 else max(way, round(val_classes * count))
    held = max(1, min(held, count - 1))
    order = np.random.default_rng(seed).permutation(count)
    return ClassSplit(
        train=tuple(sorted(int(i) for i in order[held:])), val=tuple(sorted(int(i) for i in order[:held]))
    )


def fingerprint(folder: LabelledFolder) -> str:
    """sha256 of every class name with the sha256 of each of its files (in folder order)."""
    digest = hashlib.sha256()
    for cls in folder.classes:
        for path in cls.files:
            digest.update(f"{cls.name}/{path.name}:{sha256_file(path)}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _check_shape(what: str, labels: np.ndarray, ids: Sequence[int], names: Sequence[str], way: int, need: int) -> None:
    big = [i for i in ids if int(np.sum(labels == i)) >= need]
    if len(big) < way:
        raise DatasetError(
            f"{len(big)} of the {len(ids)} {what} classes hold the {need} readable images a {way}-way episode "
            f"needs (e.g. {', '.join(names[i] for i in ids[:3])})",
            hint="add classes or images, or lower `way`, `shot` or `query` (or change `val_classes`)",
        )


# the run ------------------------------------------------------------------------------------------


def torch_device(device: str) -> Any:
    """The torch device for ``device`` (auto, cpu or cuda); DeviceError when CUDA is asked for and absent."""
    torch = trainable.require_torch()
    if device not in defaults.DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(defaults.DEVICES)}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("`device` cuda was asked for, but torch sees no CUDA device", hint="use `device` cpu")
    return torch.device("cuda")


def learning_rate(settings: TrainSettings, episode: int) -> float:
    """Cosine decay from ``lr`` at episode 0 to 0 at ``episodes``."""
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * episode / settings.episodes))


def train(
    base_dir: Path | LabelledFolder,
    out: Path,
    settings: TrainSettings = TrainSettings(),  # noqa: B008 (frozen: one shared default is safe)
    *,
    resume: bool = False,
    force: bool = False,
    model: str | os.PathLike[str] | None = None,
    device: str = defaults.DEVICE,
    cache: bool = True,
    stop: threading.Event | None = None,
    on_embedded: Progress | None = None,
    on_episode: Callable[[EpisodeStats], None] | None = None,
    on_validation: Callable[[Validation], None] | None = None,
) -> TrainResult:
    """Meta-train on the classes of ``base_dir`` (a folder per class, or one already read) and write the
    model into ``out`` (see the module).

    ``model`` is the model to start from (None: the bundled one; else what ``--model`` takes: an
    EfficientNet-Lite export or a model written by ``train``). ``stop`` set during the run ends it
    after the current episode with a checkpoint (the result's ``stopped``); ``resume`` continues
    from the checkpoint in ``out``. Raises UsageError (or DatasetError) for bad settings, folders,
    a parent model training cannot start from or a base set too small for the episode shape.
    """
    settings.check()
    torch = trainable.require_torch()
    parent = trainable.parent_of(model)
    checkpoint_from = prepare_model_dir(out, resume, force)
    folder = base_dir if isinstance(base_dir, LabelledFolder) else read_labelled_folder(base_dir)
    dev = torch_device(device)
    if dev.type == "cpu":  # the CLI caps BLAS threads at 1 for the matching; training wants every core
        torch.set_num_threads(usable_cores())
    split = split_classes(len(folder.classes), settings.val_classes, settings.seed, settings.way)
    names = folder.names
    base = fingerprint(folder)
    resumed = load_checkpoint(checkpoint_from, settings, base, parent.manifest.sha256) if checkpoint_from else None

    t0 = time.perf_counter()
    maps, labels, skipped = trunk_maps(folder, settings, parent, device, cache, on_embedded)
    trunk_seconds = time.perf_counter() - t0
    _check_shape("training", labels, split.train, names, settings.way, settings.shot + settings.query)
    _check_shape("validation", labels, split.val, names, settings.way, settings.shot + settings.query)

    val_index = np.flatnonzero(np.isin(labels, split.val))
    val_plan = sample_episodes(labels[val_index], settings.way, settings.shot, settings.query, settings.val_episodes,
                               settings.seed)  # fmt: skip
    val_trunk = np.ascontiguousarray(maps[0, val_index])
    by_class = [np.flatnonzero(labels == c) for c in split.train]
    by_class = [idx for idx in by_class if len(idx) >= settings.shot + settings.query]

    torch.manual_seed(settings.seed)
    head = trainable.trainable_head(settings.train_from, parent).to(dev)
    trainable.freeze_batchnorm(head)
    optimizer = torch.optim.SGD(head.parameters(), lr=settings.lr, momentum=MOMENTUM, nesterov=True,
                                weight_decay=WEIGHT_DECAY)  # fmt: skip
    rng = np.random.default_rng(settings.seed)
    if resumed is not None:
        state = resumed
        head.load_state_dict(state.head)
        optimizer.load_state_dict(state.optimizer)
        rng.bit_generator.state = state.rng
    else:
        out.mkdir(parents=True, exist_ok=True)
        first = validate(head, val_trunk, val_plan, 0, dev)
        if on_validation:
            on_validation(first)
        state = TrainState(0, {}, {}, {}, copy.deepcopy(head.state_dict()), [first], 0)
    checkpoint = out / CHECKPOINT

    def snapshot() -> None:
        state.head, state.optimizer = head.state_dict(), optimizer.state_dict()
        state.rng = dict(rng.bit_generator.state)
        save_checkpoint(checkpoint, settings, base, parent.manifest.sha256, state)

    way, shot, query = settings.way, settings.shot, settings.query
    started = time.perf_counter() - state.train_seconds
    while state.episode < settings.episodes:
        if stop is not None and stop.is_set():
            state.train_seconds = time.perf_counter() - started
            snapshot()
            return _result(out, None, state, trunk_seconds, skipped, split, names, int(labels.size))
        lr = learning_rate(settings, state.episode)
        for group in optimizer.param_groups:
            group["lr"] = lr
        classes = rng.choice(len(by_class), size=way, replace=False)
        picks = np.stack([rng.choice(by_class[c], size=shot + query, replace=False) for c in classes]).reshape(-1)
        views = rng.integers(settings.views, size=picks.size)
        batch = torch.from_numpy(np.ascontiguousarray(maps[views, picks])).to(dev)
        loss, accuracy = episode_loss(head, batch, way, shot, query)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.episode += 1
        if on_episode:
            on_episode(EpisodeStats(state.episode, loss.item(), accuracy, lr))
        if state.episode % settings.val_every == 0 or state.episode == settings.episodes:
            record = validate(head, val_trunk, val_plan, state.episode, dev, state.history[0])
            state.history.append(record)
            if record.significant and record.accuracy[SELECT_BY] > state.best.accuracy[SELECT_BY]:
                state.best_head, state.best_episode = copy.deepcopy(head.state_dict()), state.episode
            if on_validation:
                on_validation(record)
            state.train_seconds = time.perf_counter() - started
            if state.episode < settings.episodes:
                snapshot()
    state.train_seconds = time.perf_counter() - started

    head.load_state_dict(state.best_head)
    training = training_record(settings, parent, base, names, int(labels.size), split, state, dev)
    result = write_model(head, out, settings, training, parent)
    checkpoint.unlink(missing_ok=True)
    return _result(
        out, result.manifest_path, state, trunk_seconds, skipped, split, names, int(labels.size), result.max_abs_diff
    )


def _result(
    out: Path,
    manifest_path: Path | None,
    state: TrainState,
    trunk_seconds: float,
    skipped: tuple[Skipped, ...],
    split: ClassSplit,
    names: tuple[str, ...],
    image_count: int,
    max_abs_diff: float | None = None,
) -> TrainResult:
    return TrainResult(out, manifest_path, tuple(state.history), state.best, state.episode, trunk_seconds,
                       state.train_seconds, skipped, split, names, image_count, max_abs_diff)  # fmt: skip
