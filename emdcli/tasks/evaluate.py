"""Few-shot evaluation: every method scored on the same episodes, with paired differences.

    run = evaluate(Path("photos"), way=5, shot=1, methods=["proto", "emd", "default"])
    for r in run.evaluation.results:
        print(r.method, r.accuracy, r.ci95)

or, on feature maps already computed:

    plan = sample_episodes(labels, way=5, shot=1, query=15, episodes=600, seed=0)
    result = evaluate_episodes(features, plan, ["proto", "emd"])

Accuracies and intervals are in percent; an interval is ``1.96 * std / sqrt(episodes)``
over the per-episode accuracies (population std, as the few-shot literature reports).
``result.confusion[method]`` counts, over all episodes' queries, true class against predicted class.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .. import defaults
from ..errors import EmdcliError, UsageError
from ..features.source import FeatureSource, LabelledFeatures, Progress
from ..io.folders import LabelledFolder, read_labelled_folder
from ..io.records import Record
from ..matching.support import EpisodeMemo
from .episodes import Episode, EpisodePlan, sample_episodes
from .fewshot import BASELINE, METHODS


@dataclass(frozen=True)
class MethodResult:
    """One method's accuracy over a run's episodes (accuracy and ci95 in percent)."""

    method: str
    way: int
    shot: int
    query: int
    episodes: int
    accuracy: float
    ci95: float
    seconds_per_episode: float


@dataclass(frozen=True)
class PairedResult:
    """``method`` minus ``baseline`` per episode: mean and 95% interval, in points."""

    method: str
    baseline: str
    difference: float
    ci95: float


@dataclass(frozen=True)
class Evaluation:
    """Everything one run measured.

    per_episode: method -> (episodes,) float64 accuracy of each episode, in [0, 1].
    confusion: method -> (K, K) int64 counts over every episode's queries: entry [t, p] is how many
    queries of class t the method labelled p (t, p: class ids of the labels the plan was drawn from,
    K the number of those classes). Row t sums to ``query`` times the episodes that drew class t;
    the trace over the total is the mean accuracy (every episode has ``way * query`` queries).
    """

    results: tuple[MethodResult, ...]
    paired: tuple[PairedResult, ...]
    per_episode: dict[str, np.ndarray]
    confusion: dict[str, np.ndarray]

    #: The columns of :meth:`to_records`, in order.
    COLUMNS: ClassVar[tuple[str, ...]] = (
        "method", "way", "shot", "query", "episodes", "accuracy", "ci95", "vs_proto", "vs_proto_ci95",
        "seconds_per_episode",
    )  # fmt: skip

    def to_records(self) -> list[Record]:
        """One record per method (:attr:`COLUMNS`): accuracy and interval in percent, the paired
        difference to the baseline in points (None for the baseline itself or without it), rounded to 0.01."""
        paired = {p.method: p for p in self.paired}
        out = []
        for r in self.results:
            p = paired.get(r.method)
            out.append({
                "method": r.method, "way": r.way, "shot": r.shot, "query": r.query, "episodes": r.episodes,
                "accuracy": round(r.accuracy, 2), "ci95": round(r.ci95, 2),
                "vs_proto": round(p.difference, 2) if p else None, "vs_proto_ci95": round(p.ci95, 2) if p else None,
                "seconds_per_episode": round(r.seconds_per_episode, 5),
            })  # fmt: skip
        return out


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and 95% half-interval ``1.96 * std / sqrt(n)`` of ``values`` (population std)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no values")
    return float(arr.mean()), float(1.96 * arr.std() / np.sqrt(arr.size))


def check_methods(names: Sequence[str], shot: int) -> list[str]:
    """The methods to run, in order and without repeats; UsageError for an unknown name
    or a k-shot-only method at 1-shot."""
    out: list[str] = []
    for name in names:
        if name not in METHODS:
            raise UsageError(f"unknown method {name!r}", hint=f"choose from {', '.join(METHODS)}")
        if METHODS[name].kshot_only and shot < 2:
            raise UsageError(f"method {name!r} needs `shot` 2 or more")
        if name not in out:
            out.append(name)
    return out


def episode_predictions(
    features: np.ndarray, episode: Episode, method: str, memo: EpisodeMemo | None = None
) -> np.ndarray:
    """(way * query,) the episode label ``method`` gives each query, in ``query.reshape(-1)`` order.

    features: (N, C, H, W) float32 feature maps of the whole set. memo: parts already
    computed for this episode by other methods (see :class:`~emdcli.fewshot.EpisodeMemo`).
    """
    support = features[episode.support]  # (way, shot, C, H, W)
    query = features[episode.query.reshape(-1)]
    scores = METHODS[method].score(support, query, memo)
    scores = np.where(np.isnan(scores), -np.inf, scores)  # classes off a shortlist never win
    predicted: np.ndarray = np.argmax(scores, axis=1)
    return predicted


def episode_accuracy(features: np.ndarray, episode: Episode, method: str, memo: EpisodeMemo | None = None) -> float:
    """Fraction of the episode's queries that ``method`` labels right (see :func:`episode_predictions`)."""
    return float(np.mean(episode_predictions(features, episode, method, memo) == episode.query_labels))


def confusion_cells(episode: Episode, predicted: np.ndarray, classes: int) -> np.ndarray:
    """(way * query,) int64 the cell of each query in a (classes, classes) confusion matrix,
    flattened: ``true * classes + predicted``, both class ids of the set (episode label i is
    class id ``episode.classes[i]``). predicted: episode labels, as :func:`episode_predictions` gives them."""
    ids = np.asarray(episode.classes, dtype=np.int64)
    cells: np.ndarray = ids[episode.query_labels] * classes + ids[predicted]
    return cells


def confusion_matrix(cells: Sequence[np.ndarray], classes: int) -> np.ndarray:
    """(classes, classes) int64 counts of the :func:`confusion_cells` of any number of episodes."""
    flat = np.concatenate([np.zeros(0, dtype=np.int64), *cells])
    return np.bincount(flat, minlength=classes * classes).astype(np.int64).reshape(classes, classes)


def evaluate_episodes(
    features: np.ndarray,
    plan: EpisodePlan,
    methods: Sequence[str],
    *,
    workers: int = 1,
    on_episode: Callable[[int], None] | None = None,
    classes: int | None = None,
) -> Evaluation:
    """Score every method on every episode of ``plan``.

    features: (N, C, H, W) float32, indexed like the labels the plan was drawn from.
    Episodes run in ``workers`` threads (the EMD solver releases the GIL); the
    result does not depend on ``workers``. ``on_episode(1)`` is called per episode.
    classes: the side of the confusion matrices, the number of classes of those labels
    (None: the largest class id the plan knows of, plus one).
    """
    names = check_methods(methods, plan.shot)
    known = (*plan.eligible, *plan.too_small)
    side = (max(known) + 1 if known else 0) if classes is None else classes
    if known and max(known) >= side:
        raise ValueError(f"class id {max(known)} does not fit confusion matrices of {side} classes")

    def run(episode: Episode) -> tuple[list[float], list[float], list[np.ndarray]]:
        accs, secs, cells = [], [], []
        memo = EpisodeMemo()
        for name in names:
            memo.reused_seconds = 0.0
            t0 = time.perf_counter()
            predicted = episode_predictions(features, episode, name, memo)
            accs.append(float(np.mean(predicted == episode.query_labels)))
            secs.append(time.perf_counter() - t0 + memo.reused_seconds)  # a method's time includes reused parts
            cells.append(confusion_cells(episode, predicted, side))
        if on_episode:
            on_episode(1)
        return accs, secs, cells

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="emdcli-episode") as pool:
        done = list(pool.map(run, plan.episodes))  # in plan order, whatever the threads
    accs = np.array([a for a, _, _ in done]).reshape(len(done), len(names))
    secs = np.array([s for _, s, _ in done]).reshape(len(done), len(names))
    confusion = {name: confusion_matrix([c[i] for _, _, c in done], side) for i, name in enumerate(names)}
    per_episode = {name: accs[:, i] for i, name in enumerate(names)}
    results = []
    for i, name in enumerate(names):
        mean, ci = mean_ci95(accs[:, i])
        seconds = float(secs[:, i].mean())
        results.append(MethodResult(name, plan.way, plan.shot, plan.query, len(done), 100 * mean, 100 * ci, seconds))
    paired = []
    if BASELINE in per_episode:
        for name in names:
            if name != BASELINE:
                mean, ci = mean_ci95(per_episode[name] - per_episode[BASELINE])
                paired.append(PairedResult(name, BASELINE, 100 * mean, 100 * ci))
    return Evaluation(tuple(results), tuple(paired), per_episode, confusion)


@dataclass(frozen=True)
class EvaluationRun:
    """What :func:`evaluate` did: the images it used, the episodes it drew and what they measured."""

    data: LabelledFeatures
    plan: EpisodePlan
    evaluation: Evaluation


def evaluate(
    dataset: Path | LabelledFolder,
    *,
    way: int = defaults.WAY,
    shot: int = defaults.SHOT,
    query: int = defaults.QUERY,
    episodes: int = defaults.EPISODES,
    seed: int = defaults.SEED,
    methods: Sequence[str] = defaults.METHODS,
    source: FeatureSource | None = None,
    workers: int | None = None,
    on_embedded: Progress | None = None,
    on_episode: Progress | None = None,
) -> EvaluationRun:
    """Embed a labelled set (a folder per class), draw ``episodes`` N-way K-shot episodes and score
    every method on the same ones. source: None for the bundled model without a cache; workers:
    threads scoring episodes (None: every CPU). Raises UsageError for an unknown method or a set
    too small for the episode shape, EmdcliError when no image is readable.
    """
    names = check_methods(methods, shot)
    if not names:
        raise UsageError("no method to run", hint="for example `methods` proto,emd")
    data, features = embedded_set(dataset, way, shot, query, seed, source, on_embedded)
    plan = sample_episodes(data.labels, way, shot, query, episodes, seed)
    result = evaluate_episodes(features, plan, names, workers=workers or os.cpu_count() or 1, on_episode=on_episode,
                               classes=len(data.classes))  # fmt: skip
    return EvaluationRun(data, plan, result)


def embedded_set(
    dataset: Path | LabelledFolder,
    way: int,
    shot: int,
    query: int,
    seed: int,
    source: FeatureSource | None,
    on_embedded: Progress | None = None,
    unseen: int = 0,
) -> tuple[LabelledFeatures, np.ndarray]:
    """A labelled set and its (N, C, H, W) feature maps, once the episode shape (``unseen``: open-set
    classes per episode) is known to fit its files (DatasetError before any image is embedded, as
    unreadable ones can only make it worse). source: None for the bundled model without a cache.
    EmdcliError when no image is readable."""
    folder = dataset if isinstance(dataset, LabelledFolder) else read_labelled_folder(dataset)
    labels = np.repeat(np.arange(len(folder.classes)), [len(c.files) for c in folder.classes])
    sample_episodes(labels, way, shot, query, 1, seed, unseen)
    if source is None:
        from ..model.backbone import load_model

        source = FeatureSource(load_model())
    data = source.labelled(folder, on_embedded)
    if data.features is None:
        raise EmdcliError(f"none of the {folder.image_count} images in {folder.root} could be read")
    return data, data.features
