"""N-way K-shot episodes sampled from a labelled set, as in the few-shot literature."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DatasetError


@dataclass(frozen=True)
class Episode:
    """One few-shot task, as indices into the set's images.

    classes: (way,) the class ids drawn, in episode order (episode label i = classes[i]).
    support: (way, shot) and query: (way, query) image indices; no image is in both.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray

    @property
    def query_labels(self) -> np.ndarray:
        """(way * query,) the episode label of each query in ``query.reshape(-1)`` order."""
        way, per_class = self.query.shape
        return np.repeat(np.arange(way), per_class)


@dataclass(frozen=True)
class EpisodePlan:
    """The episodes of one run, and the classes too small to take part.

    too_small: class ids with fewer than ``shot + query`` images (never drawn).
    """

    way: int
    shot: int
    query: int
    seed: int
    episodes: tuple[Episode, ...]
    eligible: tuple[int, ...]
    too_small: tuple[int, ...]


def sample_episodes(labels: np.ndarray, way: int, shot: int, query: int, episodes: int, seed: int) -> EpisodePlan:
    """Draw ``episodes`` tasks from images labelled ``labels`` ((N,) int class ids).

    Each task draws ``way`` distinct classes among those with at least ``shot + query``
    images, then ``shot + query`` distinct images of each (the first ``shot`` are the
    support). The same arguments always give the same episodes (numpy PCG64, ``seed``).
    Raises DatasetError when fewer than ``way`` classes are large enough.
    """
    if min(way, shot, query, episodes) < 1:
        raise ValueError("way, shot, query and episodes must all be at least 1")
    labels = np.asarray(labels)
    by_class = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    need = shot + query
    eligible = tuple(c for c, idx in by_class.items() if len(idx) >= need)
    too_small = tuple(c for c, idx in by_class.items() if len(idx) < need)
    if len(eligible) < way:
        raise DatasetError(
            f"only {len(eligible)} classes have the {need} images a {way}-way {shot}-shot episode "
            f"with {query} queries per class needs",
            hint="lower --way, --shot or --query",
        )
    rng = np.random.default_rng(seed)
    drawn = []
    for _ in range(episodes):
        classes = rng.choice(np.asarray(eligible), size=way, replace=False)
        picks = np.stack([rng.choice(by_class[int(c)], size=need, replace=False) for c in classes])
        drawn.append(Episode(classes=classes, support=picks[:, :shot], query=picks[:, shot:]))
    return EpisodePlan(way, shot, query, seed, tuple(drawn), eligible, too_small)
