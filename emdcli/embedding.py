"""Images to feature maps: decoding in a thread pool, overlapped with batched inference."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import ImageError
from .images import Preprocess, load_image


class FeatureExtractor(Protocol):
    """Anything that maps (B, 3, S, S) float32 images to (B, C, H, W) float32 maps."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Embedded:
    """One image's feature map, or why there is none.

    features: (C, H, W) float32, or None when ``error`` says why the image was skipped.
    """

    path: Path
    features: np.ndarray | None
    error: str | None = None


def _decode(path: Path, prep: Preprocess) -> np.ndarray | str:
    try:
        return load_image(path, prep)
    except ImageError as exc:
        return exc.message


def embed_paths(
    extractor: FeatureExtractor,
    prep: Preprocess,
    paths: Iterable[Path],
    *,
    batch_size: int = 16,
    workers: int = 1,
    on_done: Callable[[int], None] | None = None,
) -> Iterator[Embedded]:
    """Feature maps for ``paths``, in input order, read lazily (``paths`` may be a stream).

    Decoding of the next batch runs in ``workers`` threads while the current batch is
    in the backbone. Unreadable images come back with ``features=None`` and an error.
    ``on_done(n)`` is called after every batch with the number of images it held.
    """
    source = iter(paths)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emdcli-decode") as pool:
        pending: deque[list[tuple[Path, Future[np.ndarray | str]]]] = deque()

        def submit_next() -> bool:
            chunk = list(islice(source, batch_size))
            if chunk:
                pending.append([(p, pool.submit(_decode, p, prep)) for p in chunk])
            return bool(chunk)

        more = submit_next()
        while pending:
            if more:
                more = submit_next()  # keep one batch decoding ahead of the backbone
            batch = pending.popleft()
            decoded = [(p, f.result()) for p, f in batch]
            good = [arr for _, arr in decoded if isinstance(arr, np.ndarray)]
            feats = iter(extractor(np.stack(good)) if good else [])
            for path, arr in decoded:
                if isinstance(arr, np.ndarray):
                    yield Embedded(path, next(feats))
                else:
                    yield Embedded(path, None, arr)
            if on_done:
                on_done(len(batch))
