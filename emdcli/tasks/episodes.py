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


def what_fits(sizes: list[int], way: int, shot: int) -> str:
    """A hint naming an episode shape that the classes' image counts ``sizes`` (largest first) allow."""
    if len(sizes) < way:
        return f"the set has {len(sizes)} classes: use --way {len(sizes)} or less"
    fits = sizes[way - 1]  # every one of the ``way`` largest classes holds at least this many images
    held = f"the {way} largest classes hold {fits} images or more"
    if fits > shot:
        return f"{held}: --shot {shot} --query {fits - shot} fits (or lower --way)"
    if fits >= 2:
        return f"{held}: --shot {fits - 1} --query 1 fits (or lower --way)"
    return f"only {sum(n >= 2 for n in sizes)} classes hold 2 images or more: lower --way"


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
        sizes = sorted((len(idx) for idx in by_class.values()), reverse=True)
        hint = what_fits(sizes, way, shot)
        raise DatasetError(
            f"only {len(eligible)} classes have the {need} images a {way}-way {shot}-shot episode "
            f"with {query} queries per class needs (the largest classes hold {', '.join(map(str, sizes[:way]))})",
            hint=hint,
        )
    rng = np.random.default_rng(seed)
    drawn = []
    for _ in range(episodes):
        classes = rng.choice(np.asarray(eligible), size=way, replace=False)
        picks = np.stack([rng.choice(by_class[int(c)], size=need, replace=False) for c in classes])
        drawn.append(Episode(classes=classes, support=picks[:, :shot], query=picks[:, shot:]))
    return EpisodePlan(way, shot, query, seed, tuple(drawn), eligible, too_small)
