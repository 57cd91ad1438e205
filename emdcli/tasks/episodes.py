"""N-way K-shot episodes sampled from a labelled set, as in the few-shot literature."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError


@dataclass(frozen=True)
class Episode:
    """One few-shot task, as indices into the set's images.

    classes: (way,) the class ids drawn, in episode order (episode label i = classes[i]).
    support: (way, shot) and query: (way, query) image indices; no image is in both.
    unseen_classes: (M,) class ids drawn as open-set classes, none of ``classes``; unseen:
    (M, query) image indices of their queries (both empty unless the plan draws open-set episodes).
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray
    unseen_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    unseen: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))

    @property
    def query_labels(self) -> np.ndarray:
        """(way * query,) the episode label of each query in ``query.reshape(-1)`` order."""
        way, per_class = self.query.shape
        return np.repeat(np.arange(way), per_class)


@dataclass(frozen=True)
class EpisodePlan:
    """The episodes of one run, and the classes too small to take part.

    too_small: class ids with fewer than ``shot + query`` images (never drawn). unseen: the
    open-set classes each episode adds (0: none).
    """

    way: int
    shot: int
    query: int
    seed: int
    episodes: tuple[Episode, ...]
    eligible: tuple[int, ...]
    too_small: tuple[int, ...]
    unseen: int = 0


def what_fits(sizes: list[int], way: int, shot: int, unseen: int = 0) -> str:
    """A hint naming an episode shape that the classes' image counts ``sizes`` (largest first) allow;
    ``unseen``: the open-set classes each episode adds (``--open-set``)."""
    drawn = way + unseen
    lower = "(or lower `way` or `open_set`)" if unseen else "(or lower `way`)"
    if len(sizes) < drawn:
        if not unseen:
            return f"the set has {len(sizes)} classes: use `way` {len(sizes)} or less"
        if len(sizes) < 3:
            return f"the set has {len(sizes)} classes: an open-set episode needs 3 (`way` 2 `open_set` 1)"
        known = max(2, len(sizes) - unseen)
        return (f"the set has {len(sizes)} classes, and `way` {way} `open_set` {unseen} draws {drawn}: "
                f"`way` {known} `open_set` {len(sizes) - known} fits")  # fmt: skip
    fits = sizes[drawn - 1]  # every one of the ``drawn`` largest classes holds at least this many images
    held = f"the {drawn} largest classes hold {fits} images or more"
    if fits > shot:
        return f"{held}: `shot` {shot} `query` {fits - shot} fits {lower}"
    if fits >= 2:
        return f"{held}: `shot` {fits - 1} `query` 1 fits {lower}"
    return f"only {sum(n >= 2 for n in sizes)} classes hold 2 images or more: lower `way`"


def drawn_too(smallest: int, shot: int) -> str:
    """A hint naming the ``shot`` and ``query`` with which a class of ``smallest`` readable images is drawn too."""
    if smallest > shot:
        return f"`shot` {shot} `query` {smallest - shot} draws them too"
    if smallest >= 2:
        return f"`shot` {smallest - 1} `query` 1 draws them too"
    return "a class needs 2 images to be drawn"


def sample_episodes(
    labels: np.ndarray, way: int, shot: int, query: int, episodes: int, seed: int, unseen: int = 0
) -> EpisodePlan:
    """Draw ``episodes`` tasks from images labelled ``labels`` ((N,) int class ids).

    Each task draws ``way`` distinct classes among those with at least ``shot + query``
    images, then ``shot + query`` distinct images of each (the first ``shot`` are the
    support). With ``unseen`` (open-set episodes), it draws ``way + unseen`` classes: the last
    ``unseen`` are left out of the support set and give ``query`` queries each. The same
    arguments always give the same episodes (numpy PCG64, ``seed``), and ``unseen=0`` the same
    ones as before open-set episodes existed. Raises DatasetError when fewer than ``way + unseen``
    classes are large enough.
    """
    if min(way, shot, query, episodes) < 1 or unseen < 0:
        raise ValueError("way, shot, query and episodes must all be at least 1, unseen at least 0")
    labels = np.asarray(labels)
    by_class = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    need = shot + query
    eligible = tuple(c for c, idx in by_class.items() if len(idx) >= need)
    too_small = tuple(c for c, idx in by_class.items() if len(idx) < need)
    if len(eligible) < way + unseen:
        sizes = sorted((len(idx) for idx in by_class.values()), reverse=True)
        hint = what_fits(sizes, way, shot, unseen)
        extra = f" and {unseen} unseen {'class' if unseen == 1 else 'classes'}" if unseen else ""
        raise DatasetError(
            f"only {len(eligible)} classes have the {need} images a {way}-way {shot}-shot episode with "
            f"{query} queries per class{extra} needs (the largest classes hold "
            f"{', '.join(map(str, sizes[: way + unseen]))})",
            hint=hint,
        )
    rng = np.random.default_rng(seed)
    drawn = []
    for _ in range(episodes):
        classes = rng.choice(np.asarray(eligible), size=way + unseen, replace=False)
        picks = np.stack([rng.choice(by_class[int(c)], size=need, replace=False) for c in classes[:way]])
        episode = Episode(classes=classes[:way], support=picks[:, :shot], query=picks[:, shot:])
        if unseen:
            out = np.stack([rng.choice(by_class[int(c)], size=query, replace=False) for c in classes[way:]])
            episode = Episode(episode.classes, episode.support, episode.query, classes[way:], out)
        drawn.append(episode)
    return EpisodePlan(way, shot, query, seed, tuple(drawn), eligible, too_small, unseen)
