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
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, defaults
from ..errors import DatasetError, DeviceError, EmdcliError, UsageError
from ..features.cache import FeatureCache
from ..features.source import FeatureSource, Progress, Skipped
from ..io.files import atomic_write, display_path, sha256_file
from ..io.folders import LabelledFolder, read_labelled_folder
from ..matching.nodes import TEMPERATURE, WEIGHT_EPS
from ..matching.transport import emd_flow_trusted
from ..model import trainable
from ..model.backbone import usable_cores
from ..model.manifest import bundled_model_dir
from .episodes import EpisodePlan, sample_episodes
from .evaluate import evaluate_episodes, mean_ci95

#: The training state of an unfinished run inside MODEL_DIR.
CHECKPOINT = "checkpoint.pt"
#: The views a run may cache, in the order ``views`` takes them.
VIEWS = ("centre", "flip", "zoom", "zoom-flip")
#: Side of the central square a zoomed view keeps, as a fraction of the input.
ZOOM = 0.875
#: Methods scored on the validation episodes; the state with the best ``SELECT_BY`` is kept.
VAL_METHODS = ("proto", "emd", "default")
SELECT_BY = "default"
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
#: Trunk maps per forward pass when computing validation features.
FEATURE_BATCH = 64


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
            raise UsageError("--way, --shot, --query, --episodes and the validation counts must be at least 1")
        if self.way < 2:
            raise UsageError("--way must be at least 2: an episode tells classes apart")
        if not 1 <= self.views <= len(VIEWS):
            raise UsageError(f"--views must be 1 to {len(VIEWS)} ({', '.join(VIEWS)})")
        if not self.lr > 0:
            raise UsageError("--lr must be positive")
        if self.val_classes <= 0 or (self.val_classes >= 1 and self.val_classes != int(self.val_classes)):
            raise UsageError("--val-classes must be a fraction below 1 or a whole number of classes")
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


@dataclass
class _State:
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
            hint="add classes or images, or lower --way, --shot or --query (or change --val-classes)",
        )


# the trunk's views --------------------------------------------------------------------------


class ViewExtractor:
    """The trunk on one view of each input: (B, 3, S, S) -> (B, C, H, W), as a FeatureExtractor."""

    def __init__(self, trunk: Any, view: str) -> None:
        self.trunk = trunk
        self.view = view
        self.lanes = getattr(trunk, "lanes", 1)
        self.batch_size = getattr(trunk, "batch_size", 4)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.trunk(view_of(batch, self.view)))


def view_of(batch: np.ndarray, view: str) -> np.ndarray:
    """``batch`` (B, 3, S, S) float32 seen as ``view``: flipped left-right and/or the central
    ``ZOOM`` square scaled back to S x S (bilinear)."""
    out = batch
    if view.startswith("zoom"):
        torch = trainable.require_torch()
        size = batch.shape[-1]
        keep = round(size * ZOOM)
        lo = (size - keep) // 2
        crop = torch.from_numpy(np.ascontiguousarray(batch[..., lo : lo + keep, lo : lo + keep]))
        out = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False).numpy()
    if view.endswith("flip"):
        out = out[..., ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def trunk_maps(
    folder: LabelledFolder,
    settings: TrainSettings,
    parent: trainable.Parent,
    device: str,
    cache: bool,
    on_embedded: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[Skipped, ...]]:
    """(V, N, C, H, W) float32 trunk maps (``parent`` up to ``train_from``) of every readable image in
    ``views`` views, their (N,) labels, and the unreadable images."""
    from ..model.backbone import Backbone

    manifest_path = trainable.export_trunk(settings.train_from, parent)
    trunk = Backbone(manifest_path, device=device)
    views = []
    labels: np.ndarray | None = None
    skipped: tuple[Skipped, ...] = ()
    for view in VIEWS[: settings.views]:
        namespace = f"{trunk.manifest.sha256}/{trunk.manifest.preprocess.key()}/{view}"
        source = FeatureSource(
            ViewExtractor(trunk, view), trunk.manifest.preprocess, cache=FeatureCache(namespace) if cache else None
        )
        if labels is None:
            found = source.labelled(folder, on_embedded)
            if found.features is None:
                raise EmdcliError(f"none of the {folder.image_count} images in {display_path(folder.root)} is readable")
            labels, skipped, paths = found.labels, found.skipped, list(found.paths)
            views.append(found.features)
        else:
            more = source.array(paths, on_embedded)
            if more.features is None or len(more.paths) != len(paths):
                raise EmdcliError("an image became unreadable while its views were made; run again")
            views.append(more.features)
    assert labels is not None
    return np.stack(views), labels, skipped


# the EMD head ------------------------------------------------------------------------------------


def emd_logits(query: Any, support: Any) -> Any:
    """DeepEMD's logits: (Q, C, n) query nodes and (W, C, m) class nodes -> (Q, W) torch tensor.

    ``TEMPERATURE * sum(flow * cos)`` over node pairs, where cos is between per-node-centred,
    unit-length nodes and flow is the exact EMD plan between the cross-reference weights of the
    raw nodes. Weights and flow carry no gradient. Equals TEMPERATURE times emdcli's EMD score.
    """
    torch = trainable.require_torch()
    fn = torch.nn.functional
    q = query.transpose(1, 2)  # (Q, n, C)
    s = support.transpose(1, 2)  # (W, m, C)
    q_unit = fn.normalize(q - q.mean(-1, keepdim=True), dim=-1, eps=1e-12)
    s_unit = fn.normalize(s - s.mean(-1, keepdim=True), dim=-1, eps=1e-12)
    cos = torch.einsum("anc,bmc->abnm", q_unit, s_unit)  # (Q, W, n, m)
    with torch.no_grad():
        wq = torch.relu(torch.einsum("anc,bc->abn", q, s.mean(1))) + WEIGHT_EPS  # (Q, W, n)
        ws = torch.relu(torch.einsum("bmc,ac->abm", s, q.mean(1))) + WEIGHT_EPS  # (Q, W, m)
        wq = np.ascontiguousarray((wq / wq.sum(-1, keepdim=True)).double().cpu().numpy())
        ws = np.ascontiguousarray((ws / ws.sum(-1, keepdim=True)).double().cpu().numpy())
        cost = np.clip(1.0 - cos.detach().double().cpu().numpy(), 0.0, 2.0)
        flow = np.empty_like(cost)
        for a in range(cost.shape[0]):
            for b in range(cost.shape[1]):
                flow[a, b] = emd_flow_trusted(wq[a, b], ws[a, b], np.ascontiguousarray(cost[a, b]))[0]
    flow_t = torch.from_numpy(flow).to(cos.device, cos.dtype)
    return TEMPERATURE * (flow_t * cos).sum(dim=(-1, -2))


def episode_loss(head: Any, maps: Any, way: int, shot: int, query: int) -> tuple[Any, float]:
    """Cross-entropy of one episode and its query accuracy (0..1).

    maps: (way * (shot + query), C, H, W) trunk maps, class by class, each class's ``shot``
    support images first. A class's nodes are its support maps' mean (as emdcli's ``mean``).
    """
    torch = trainable.require_torch()
    out = head(maps)
    b, c, h, w = out.shape
    out = out.reshape(way, shot + query, c, h * w)
    support = out[:, :shot].mean(1)
    queries = out[:, shot:].reshape(way * query, c, h * w)
    logits = emd_logits(queries, support)
    labels = torch.arange(way, device=logits.device).repeat_interleave(query)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return loss, accuracy


def output_maps(head: Any, trunk: np.ndarray, device: Any) -> np.ndarray:
    """(N, C, H, W) float32 output maps of ``head`` (in eval mode, no gradient) on trunk maps."""
    torch = trainable.require_torch()
    was_training = head.training
    head.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(trunk), FEATURE_BATCH):
            out.append(head(torch.from_numpy(trunk[i : i + FEATURE_BATCH]).to(device)).float().cpu().numpy())
    if was_training:
        trainable.freeze_batchnorm(head)
    return np.concatenate(out)


def validate(
    head: Any, trunk: np.ndarray, plan: EpisodePlan, episode: int, device: Any, parent: Validation | None = None
) -> Validation:
    """Score VAL_METHODS on ``plan``'s episodes, with the features of ``head`` on ``trunk`` maps, and
    the paired gain of SELECT_BY over ``parent`` (the validation before training; None: this is it)."""
    t0 = time.perf_counter()
    features = output_maps(head, trunk, device)
    evaluation = evaluate_episodes(features, plan, VAL_METHODS, workers=os.cpu_count() or 1)
    acc = {r.method: r.accuracy for r in evaluation.results}
    ci = {r.method: r.ci95 for r in evaluation.results}
    mine = evaluation.per_episode[SELECT_BY]
    gain, gain_ci = (0.0, 0.0) if parent is None else mean_ci95(100 * (mine - np.asarray(parent.per_episode)))
    return Validation(episode, acc, ci, time.perf_counter() - t0, gain, gain_ci, tuple(float(a) for a in mine))


# the model folder ---------------------------------------------------------------------------------


def prepare_model_dir(out: Path, resume: bool, force: bool) -> Path | None:
    """Check MODEL_DIR before a run; the checkpoint to resume from, or None for a new run.

    UsageError for the bundled model's folder, a file, a finished model or an interrupted run
    (without ``force`` or ``resume``), and for ``resume`` with nothing to resume. ``force``
    deletes an earlier run's model and checkpoint (only those files).
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder, but {display_path(out)} is a file")
    if out.resolve() == bundled_model_dir().resolve():
        raise UsageError("--out is the bundled model's folder, which training never overwrites",
                         hint="give a new folder, e.g. --out my-model")  # fmt: skip
    checkpoint = out / CHECKPOINT
    models = [p for suffix in ("*.json", "*.onnx", f"*{trainable.BLOCKS_SUFFIX}") for p in sorted(out.glob(suffix))]
    if force:
        for path in [*models, checkpoint]:
            path.unlink(missing_ok=True)
        if resume:
            raise UsageError("--resume and --force contradict each other: pick one")
        return None
    if resume:
        if models:
            raise UsageError(f"{display_path(out)} holds a finished model; there is nothing to resume",
                             hint="use it with --model, or pass --force to train again")  # fmt: skip
        if not checkpoint.is_file():
            raise UsageError(f"nothing to resume: {display_path(out)} holds no {CHECKPOINT}",
                             hint="start the run without --resume")  # fmt: skip
        return checkpoint
    if models:
        raise UsageError(f"{display_path(out)} already holds a model ({models[0].name})",
                         hint="pass --force to replace it, or another --out")  # fmt: skip
    if checkpoint.is_file():
        raise UsageError(f"{display_path(out)} holds an interrupted run",
                         hint="pass --resume to continue it, or --force to start over")  # fmt: skip
    return None


def model_name(out: Path) -> str:
    """File stem of the trained model: MODEL_DIR's name, in letters, digits, '-' and '_'."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", out.resolve().name).strip("_")
    return name or "emdcli_model"


def save_checkpoint(path: Path, settings: TrainSettings, base: str, parent: str, state: _State) -> None:
    """Write the checkpoint atomically (a temporary file renamed into place); ``parent``: the sha256 of
    the parent model's ONNX file."""
    torch = trainable.require_torch()
    payload = {
        "emdcli": __version__, "settings": asdict(settings), "base": base, "parent": parent,
        "state": {**state.__dict__, "history": [asdict(v) for v in state.history]},
    }  # fmt: skip
    with atomic_write(path, binary=True) as fh:
        torch.save(payload, fh)


def load_checkpoint(path: Path, settings: TrainSettings, base: str, parent: str) -> _State:
    """The state saved at ``path``; UsageError when it was made with other settings, another base set
    or another parent model."""
    torch = trainable.require_torch()
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        saved_settings, saved_base, raw = payload["settings"], payload["base"], dict(payload["state"])
    except Exception as exc:  # a damaged or foreign file
        raise UsageError(f"{display_path(path)} is not a readable checkpoint ({type(exc).__name__})",
                         hint="pass --force to start over") from None  # fmt: skip
    if saved_settings != asdict(settings):
        diff = [f"{k} {saved_settings.get(k)!r} (now {v!r})" for k, v in asdict(settings).items()
                if saved_settings.get(k) != v]  # fmt: skip
        raise UsageError(f"the interrupted run had other settings: {', '.join(diff)}",
                         hint="resume with the same options, or pass --force to start over")  # fmt: skip
    if saved_base != base:
        raise UsageError("the base set changed since the interrupted run (its files differ)",
                         hint="pass --force to start over on the base set as it is now")  # fmt: skip
    if payload.get("parent") != parent:
        raise UsageError("the interrupted run started from another model",
                         hint="resume with the same --model, or pass --force to start over")  # fmt: skip
    raw["history"] = [Validation(**v) for v in raw["history"]]
    return _State(**raw)


# the run ------------------------------------------------------------------------------------------


def torch_device(device: str) -> Any:
    """The torch device for ``device`` (auto, cpu or cuda); DeviceError when CUDA is asked for and absent."""
    torch = trainable.require_torch()
    if device not in defaults.DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(defaults.DEVICES)}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but torch sees no CUDA device", hint="use --device cpu")
    return torch.device("cuda")


def learning_rate(settings: TrainSettings, episode: int) -> float:
    """Cosine decay from ``lr`` at episode 0 to 0 at ``episodes``."""
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * episode / settings.episodes))


def train(
    base_dir: Path | LabelledFolder,
    out: Path,
    settings: TrainSettings = TrainSettings(),
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
        state = _State(0, {}, {}, {}, copy.deepcopy(head.state_dict()), [first], 0)
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
    best = state.best
    training = {
        "emdcli": __version__,
        "settings": asdict(settings),
        "parent": {"name": parent.manifest.name, "sha256": parent.manifest.sha256, "variant": parent.variant,
                   "weights_sha256": sha256_file(trainable.parent_weights(parent))},
        "base_set": {"fingerprint": base, "classes": len(names), "images": int(labels.size),
                     "train_classes": len(split.train), "val_classes": [names[i] for i in split.val]},
        "kept_episode": state.best_episode,
        "validation_before": _summary(state.history[0]),
        "validation_kept": _summary(best),
        "validation": [_summary(v) for v in state.history],
        "train_seconds": round(state.train_seconds, 1),
        "device": str(dev),
    }  # fmt: skip
    result = trainable.export_trained(head.cpu(), settings.train_from, out, model_name(out), training, parent)
    checkpoint.unlink(missing_ok=True)
    return _result(
        out, result.manifest_path, state, trunk_seconds, skipped, split, names, int(labels.size), result.max_abs_diff
    )


def _summary(v: Validation) -> dict[str, Any]:
    """A validation for the manifest: everything but the per-episode accuracies."""
    return {k: val for k, val in asdict(v).items() if k != "per_episode"}


def _result(
    out: Path,
    manifest_path: Path | None,
    state: _State,
    trunk_seconds: float,
    skipped: tuple[Skipped, ...],
    split: ClassSplit,
    names: tuple[str, ...],
    image_count: int,
    max_abs_diff: float | None = None,
) -> TrainResult:
    return TrainResult(out, manifest_path, tuple(state.history), state.best, state.episode, trunk_seconds,
                       state.train_seconds, skipped, split, names, image_count, max_abs_diff)  # fmt: skip
