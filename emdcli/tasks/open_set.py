"""Open-set evaluation: what rejection ("none of these") keeps and rejects on a labelled set.

    run = evaluate_open_set(Path("photos"), way=5, unseen=2, shot=1, query=15)
    print(run.result.auroc, run.result.unseen_rejected)

or, on feature maps already computed:

    plan = sample_episodes(labels, way=5, shot=1, query=15, episodes=600, seed=0, unseen=2)
    result = evaluate_open_set_episodes(features, plan, bank)

Each episode has ``way`` known classes (K shots and Q queries each) and Q queries of each of
``unseen`` classes the support set lacks. All queries are matched as one set by the matcher
(emdcli's default ``Matcher()``, as classify matches a folder), the queries rejection judges foreign
set aside from its transductive step; the open-set score and the threshold are what ``classify
--reject auto`` uses (:mod:`emdcli.matching.rejection`: the score relative to the model's reference
bank, the threshold calibrated on the episode's support set at ``sensitivity``). Every measure is a
mean and 95% interval over the episodes (:func:`~emdcli.tasks.evaluate.mean_ci95`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .. import defaults
from ..errors import UsageError
from ..features.source import FeatureSource, LabelledFeatures, Progress
from ..io.folders import LabelledFolder
from ..io.records import Record
from ..matching.rejection import OpenSetScorer, ReferenceBank, calibrate_rejection, sensitivity_range
from ..matching.support import Matcher
from .episodes import Episode, EpisodePlan, sample_episodes
from .evaluate import embedded_set, mean_ci95

#: The per-episode measures, in the order the result and its rows give them. auroc in [0, 1]; the
#: others shares in [0, 1] per episode (percent in :class:`OpenSetResult`) but the threshold.
MEASURES = ("auroc", "accuracy", "accuracy_rejecting", "in_set_rejected", "unseen_rejected", "threshold")
#: The measures :class:`OpenSetResult` gives in percent (the AUROC and the threshold are as measured).
PERCENTS = ("accuracy", "accuracy_rejecting", "in_set_rejected", "unseen_rejected")


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an in-set score > an out-of-set score), ties counting half (the Mann-Whitney statistic)."""
    inside, outside = np.asarray(inside, dtype=np.float64), np.asarray(outside, dtype=np.float64)
    if not len(inside) or not len(outside):
        raise ValueError("auroc needs scores on both sides")
    both = np.concatenate([inside, outside])
    order = both.argsort(kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for value in np.unique(both):  # average ranks of ties
        tied = both == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(inside)].sum() - len(inside) * (len(inside) + 1) / 2) / (len(inside) * len(outside)))


def check_sensitivity(sensitivity: float) -> float:
    """``sensitivity`` when the measured offsets cover it; UsageError otherwise."""
    low, high = sensitivity_range()
    if not low <= sensitivity <= high:
        example = defaults.REJECT_SENSITIVITY
        raise UsageError(
            f"the sensitivity must be between {low:g} and {high:g}, got {sensitivity:g}",
            hint=f"for example {example:g}: about {100 * example:g}% of in-set queries rejected",
        )
    return sensitivity


def episode_open_set(
    features: np.ndarray,
    episode: Episode,
    bank: ReferenceBank,
    sensitivity: float = defaults.REJECT_SENSITIVITY,
    matcher: Matcher | None = None,
) -> dict[str, float]:
    """One open-set episode's :data:`MEASURES` (shares in [0, 1]).

    features: (N, C, H, W) float32 feature maps of the whole set. A rejected in-set query counts
    as wrong in ``accuracy_rejecting``; ``accuracy`` is without rejection.
    """
    matcher = matcher or Matcher()
    support = features[episode.support]  # (way, shot, C, H, W)
    known = episode.query.reshape(-1)
    query = features[np.concatenate([known, episode.unseen.reshape(-1)])]
    inside = np.arange(len(query)) < len(known)
    classes = matcher.fit_episode(support)
    parts = [matcher.match(classes, fmap) for fmap in query]
    rejection = calibrate_rejection(OpenSetScorer.from_classes(bank, classes), sensitivity)
    scores = rejection.scores(np.stack([p.pooled for p in parts]))
    rejected = scores < rejection.threshold
    final = matcher.score_set(classes, parts, query, foreign=rejected).scores
    predicted = np.argmax(np.where(np.isnan(final), -np.inf, final), axis=1)  # off a shortlist: never
    correct = predicted[inside] == episode.query_labels
    return {
        "auroc": auroc(scores[inside], scores[~inside]),
        "accuracy": float(correct.mean()),
        "accuracy_rejecting": float((correct & ~rejected[inside]).mean()),
        "in_set_rejected": float(rejected[inside].mean()),
        "unseen_rejected": float(rejected[~inside].mean()),
        "threshold": rejection.threshold,
    }


@dataclass(frozen=True)
class OpenSetResult:
    """What open-set episodes measured: each a mean over the episodes and its 95% half-interval.

    auroc: of the open-set score, in-set vs unseen queries, in [0, 1]. accuracy: in-set accuracy
    without rejection; accuracy_rejecting: with it (a rejected in-set query is wrong); in_set_rejected
    and unseen_rejected: the shares of each kind of query rejected; all four in percent. threshold:
    the calibrated threshold (on the open-set score's scale). sensitivity: the share of in-set queries
    the calibration aims to reject. per_episode: measure -> (episodes,)
    float64, as :func:`episode_open_set` gives them (shares in [0, 1]).
    """

    way: int
    shot: int
    query: int
    unseen: int
    episodes: int
    sensitivity: float
    auroc: float
    auroc_ci95: float
    accuracy: float
    accuracy_ci95: float
    accuracy_rejecting: float
    accuracy_rejecting_ci95: float
    in_set_rejected: float
    in_set_rejected_ci95: float
    unseen_rejected: float
    unseen_rejected_ci95: float
    threshold: float
    threshold_ci95: float
    seconds_per_episode: float
    per_episode: dict[str, np.ndarray]

    #: The columns of :meth:`to_record`, in order.
    COLUMNS: ClassVar[tuple[str, ...]] = (
        "method", "way", "shot", "query", "open_set", "episodes", "sensitivity",
        *(f"{m}{end}" for m in MEASURES for end in ("", "_ci95")), "seconds_per_episode",
    )  # fmt: skip

    def to_record(self) -> Record:
        """``evaluate --open-set``'s one row (:attr:`COLUMNS`): the measures in percent rounded to 0.01,
        the AUROC and the threshold to 0.0001."""
        measures = {f"{m}{end}": round(getattr(self, f"{m}{end}"), 2 if m in PERCENTS else 4)
                    for m in MEASURES for end in ("", "_ci95")}  # fmt: skip
        return {
            "method": "default", "way": self.way, "shot": self.shot, "query": self.query, "open_set": self.unseen,
            "episodes": self.episodes, "sensitivity": self.sensitivity, **measures,
            "seconds_per_episode": round(self.seconds_per_episode, 5),
        }  # fmt: skip


def evaluate_open_set_episodes(
    features: np.ndarray,
    plan: EpisodePlan,
    bank: ReferenceBank,
    sensitivity: float = defaults.REJECT_SENSITIVITY,
    *,
    matcher: Matcher | None = None,
    workers: int = 1,
    on_episode: Callable[[int], None] | None = None,
) -> OpenSetResult:
    """Score every open-set episode of ``plan`` (drawn with ``unseen`` of at least 1).

    Episodes run in ``workers`` threads; the result does not depend on ``workers``.
    ``on_episode(1)`` is called per episode.
    """
    if plan.unseen < 1:
        raise ValueError("the plan has no unseen classes: draw it with sample_episodes(..., unseen=1 or more)")
    check_sensitivity(sensitivity)
    matcher = matcher or Matcher()

    def run(episode: Episode) -> tuple[dict[str, float], float]:
        t0 = time.perf_counter()
        found = episode_open_set(features, episode, bank, sensitivity, matcher)
        if on_episode:
            on_episode(1)
        return found, time.perf_counter() - t0

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="emdcli-open-set") as pool:
        done = list(pool.map(run, plan.episodes))
    per_episode = {m: np.array([found[m] for found, _ in done]) for m in MEASURES}
    stats: dict[str, float] = {}
    for m in MEASURES:
        mean, ci = mean_ci95(per_episode[m])
        scale = 100 if m in PERCENTS else 1
        stats[m], stats[f"{m}_ci95"] = scale * mean, scale * ci
    seconds = float(np.mean([s for _, s in done]))
    return OpenSetResult(plan.way, plan.shot, plan.query, plan.unseen, len(done), sensitivity, **stats,
                         seconds_per_episode=seconds, per_episode=per_episode)  # fmt: skip


@dataclass(frozen=True)
class OpenSetRun:
    """What :func:`evaluate_open_set` did: the images it used, the episodes it drew and what they measured."""

    data: LabelledFeatures
    plan: EpisodePlan
    result: OpenSetResult


def evaluate_open_set(
    dataset: Path | LabelledFolder,
    *,
    way: int = defaults.WAY,
    unseen: int = 1,
    shot: int = defaults.SHOT,
    query: int = defaults.QUERY,
    episodes: int = defaults.EPISODES,
    seed: int = defaults.SEED,
    sensitivity: float = defaults.REJECT_SENSITIVITY,
    matcher: Matcher | None = None,
    source: FeatureSource | None = None,
    workers: int | None = None,
    on_embedded: Progress | None = None,
    on_episode: Progress | None = None,
) -> OpenSetRun:
    """Embed a labelled set (a folder per class), draw ``episodes`` open-set episodes (``way`` known
    classes, ``unseen`` more giving ``query`` queries each) and measure rejection on them.
    matcher: None for emdcli's defaults; source: None for the bundled model without a cache;
    workers: threads scoring episodes (None: every CPU). Raises UsageError for ``unseen`` below 1 or
    a ``sensitivity`` the calibration does not cover, ModelError for a model without a reference bank,
    DatasetError for a set too small for the episode shape (before any image is embedded), EmdcliError
    when no image is readable.
    """
    from ..errors import ModelError
    from .reference_bank import NO_BANK, NO_BANK_HINT, bank_for

    if unseen < 1:
        raise UsageError(f"an open-set episode needs at least 1 unseen class, got {unseen}")
    check_sensitivity(sensitivity)
    if source is None:
        from ..model.backbone import load_model

        source = FeatureSource(load_model())
    bank = bank_for(source.extractor)
    if bank is None:
        raise ModelError(NO_BANK, hint=NO_BANK_HINT)
    data, features = embedded_set(dataset, way, shot, query, seed, source, on_embedded, unseen)
    plan = sample_episodes(data.labels, way, shot, query, episodes, seed, unseen)
    result = evaluate_open_set_episodes(
        features, plan, bank, sensitivity, matcher=matcher, workers=workers or os.cpu_count() or 1,
        on_episode=on_episode,
    )  # fmt: skip
    return OpenSetRun(data, plan, result)
