"""The one feature source: images to feature maps, through the feature cache where it pays.

    source = FeatureSource(load_model())                      # cache=FeatureCache.for_model(...) to reuse
    for item in source.embed_now(paths):                         # queries: embedded now, in input order
        item.features                                         # (C, H, W) float32, or None (item.error)
    gallery = source.array(paths)                             # (N, C, H, W) through the cache
    labelled = source.labelled(read_labelled_folder(root))    # a folder per class -> arrays and labels

classify, evaluate, search and anomaly all embed through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import defaults
from ..io.folders import LabelledFolder
from ..io.images import Preprocess
from .cache import FeatureCache
from .pipeline import DEFAULT_BATCH, Embedded, FeatureExtractor, embed_paths

Progress = Callable[[int], None]  # called with the number of images just finished


@dataclass(frozen=True)
class Skipped:
    """An image that was not used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class FeatureArray:
    """The readable images of a list, in its order, with their feature maps.

    features: (N, C, H, W) float32, None when no image was readable; skipped: the unreadable ones.
    """

    paths: tuple[Path, ...]
    features: np.ndarray | None
    skipped: tuple[Skipped, ...]


@dataclass(frozen=True)
class LabelledFeatures:
    """Every readable image of a labelled folder with its feature map.

    labels: (N,) int index into ``classes``; features: (N, C, H, W) float32 (None when
    nothing was readable); skipped: the unreadable images.
    """

    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray
    features: np.ndarray | None
    skipped: tuple[Skipped, ...]


def decode_workers() -> int:
    """Decoding threads when none are asked for: ``defaults.DECODE_THREADS``, else one per usable core."""
    from ..model.backbone import usable_cores

    return defaults.DECODE_THREADS or usable_cores()


class FeatureSource:
    """Feature maps of image files from one extractor (usually a :class:`~emdcli.model.Backbone`).

    prep: how images become its input (default: the extractor's ``manifest.preprocess``).
    batch_size: images per call (None: the extractor's ``batch_size``); workers: decoding threads
    (None: :func:`decode_workers`);
    cache: where :meth:`cached`, :meth:`array` and :meth:`labelled` keep features (None: nowhere).
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        prep: Preprocess | None = None,
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        cache: FeatureCache | None = None,
    ) -> None:
        if prep is None:
            manifest = getattr(extractor, "manifest", None)
            if manifest is None:
                raise ValueError("give prep, the preprocessing of an extractor without a manifest")
            prep = manifest.preprocess
        self.extractor = extractor
        self.prep: Preprocess = prep
        self.batch_size: int = batch_size or int(getattr(extractor, "batch_size", DEFAULT_BATCH))
        self.workers: int = workers or decode_workers()
        self.cache = cache
        #: How many feature maps :meth:`embed_cached` has read from the cache (the rest it embedded).
        self.cache_hits = 0

    def embed_now(self, paths: Iterable[Path], on_done: Progress | None = None) -> Iterator[Embedded]:
        """Feature maps of ``paths`` in input order, embedded now (no cache); ``paths`` may be a stream."""
        return embed_paths(
            self.extractor, self.prep, paths, batch_size=self.batch_size, workers=self.workers, on_done=on_done
        )

    def embed_pictures(self, pictures: Sequence[Any], names: Sequence[Path]) -> Iterator[Embedded]:
        """Feature maps of images already in memory (Pillow images, (H, W, 3) uint8 arrays), in order, in
        batches of ``batch_size``; each named by ``names`` (an unusable one comes back with an error)."""
        from ..errors import ImageError
        from ..io.images import picture_input

        for start in range(0, len(pictures), self.batch_size):
            inputs: list[np.ndarray | str] = []
            for picture, name in zip(pictures[start : start + self.batch_size], names[start:], strict=False):
                try:
                    inputs.append(picture_input(picture, self.prep))
                except ImageError as exc:
                    inputs.append(f"{name}: {exc.message}")
            good = [x for x in inputs if isinstance(x, np.ndarray)]
            maps = iter(self.extractor(np.stack(good)) if good else ())
            for x, name in zip(inputs, names[start:], strict=False):
                yield Embedded(name, next(maps)) if isinstance(x, np.ndarray) else Embedded(name, None, x)

    def embed_cached(self, paths: list[Path], on_done: Progress | None = None) -> Iterator[Embedded]:
        """Feature maps of ``paths`` in input order: from the cache where it has them, the rest
        embedded (in batches, while the cached ones are read) and stored. The order never depends on
        what the cache holds, so results built from them are the same on a cold and a warm cache."""
        cache = self.cache
        if cache is None:
            yield from self.embed_now(paths, on_done)
            return
        missing = [p for p in paths if not cache.has(p)]
        embedded = self.embed_now(missing, on_done)
        wanted = set(missing)
        try:
            for path in paths:
                features = None if path in wanted else cache.get(path)
                if features is not None:
                    self.cache_hits += 1
                    if on_done:
                        on_done(1)
                    yield Embedded(path, features, small=cache.is_small(path))
                    continue
                item = next(embedded) if path in wanted else next(self.embed_now([path], on_done))  # damaged: embed now
                if item.features is not None:
                    cache.put(item.path, item.features, small=item.small)
                yield item
        finally:  # the caller may stop early: end the embedding threads now
            close = getattr(embedded, "close", None)
            if close:
                close()
        cache.prune()

    def array(self, paths: list[Path], on_done: Progress | None = None) -> FeatureArray:
        """The readable ``paths`` in their order and their (N, C, H, W) maps, through the cache."""
        got: dict[Path, np.ndarray] = {}
        skipped = []
        for item in self.embed_cached(paths, on_done):
            if item.features is None:
                skipped.append(Skipped(item.path, item.error or "unreadable"))
            else:
                got[item.path] = item.features
        kept = tuple(p for p in paths if p in got)
        return FeatureArray(kept, np.stack([got.pop(p) for p in kept]) if kept else None, tuple(skipped))

    def labelled(self, folder: LabelledFolder, on_done: Progress | None = None) -> LabelledFeatures:
        """Feature maps of every image of ``folder`` (through the cache), in folder order."""
        owner = {p: i for i, c in enumerate(folder.classes) for p in c.files}
        found = self.array(list(owner), on_done)
        return LabelledFeatures(
            classes=folder.names,
            paths=found.paths,
            labels=np.array([owner[p] for p in found.paths], dtype=np.intp),
            features=found.features,
            skipped=found.skipped,
        )
