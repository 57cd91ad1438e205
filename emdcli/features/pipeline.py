"""Images to feature maps: reading, decoding, batched inference and the caller's work, overlapped."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ImageError
from ..io.images import Preprocess, load_image_judged

#: Images per backbone call for an extractor that does not say (no ``batch_size``).
DEFAULT_BATCH = 16
#: Seconds without a new path after which the paths read so far go on as a smaller batch.
STALL_SECONDS = 0.1
_END = object()  # the end of a stream of paths or of batches


class FeatureExtractor(Protocol):
    """Anything that maps (B, 3, S, S) float32 images to (B, C, H, W) float32 maps.

    An extractor may also have int attributes ``lanes``, how many calls can usefully
    run at once from different threads (1 when it has none), and ``batch_size``, the
    images per call that suit it (DEFAULT_BATCH when it has none).
    """

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Embedded:
    """One image's feature map, or why there is none.

    features: (C, H, W) float32, or None when ``error`` says why the image was skipped.
    """

    path: Path
    features: np.ndarray | None
    error: str | None = None
    #: Whether the image is far below the model's input size (:func:`emdcli.io.images.is_small`).
    small: bool = False


def _decode(path: Path, prep: Preprocess) -> tuple[np.ndarray, bool] | str:
    try:
        return load_image_judged(path, prep)
    except ImageError as exc:
        return exc.message


def _decode_and_infer(
    extractor: FeatureExtractor, batch: list[tuple[Path, Future[tuple[np.ndarray, bool] | str]]]
) -> tuple[list[tuple[Path, tuple[np.ndarray, bool] | str]], np.ndarray | None]:
    """One lane's work: wait for a batch's decoded images, then run them through the backbone."""
    decoded = [(p, f.result()) for p, f in batch]
    good = [got[0] for _, got in decoded if isinstance(got, tuple)]
    return decoded, extractor(np.stack(good)) if good else None


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put ``item`` on the bounded queue ``q``, unless ``stop`` is set first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


@dataclass(frozen=True)
class _Failed:
    """What the path source raised, passed down the queues to be raised to the caller."""

    error: BaseException


def embed_paths(
    extractor: FeatureExtractor,
    prep: Preprocess,
    paths: Iterable[Path],
    *,
    batch_size: int = DEFAULT_BATCH,
    workers: int = 1,
    on_done: Callable[[int], None] | None = None,
) -> Iterator[Embedded]:
    """Feature maps for ``paths``, in input order, read lazily (``paths`` may be a stream).

    The stages overlap, each in its own threads: reading ``paths``, grouping them into
    batches, decoding (``workers`` threads), the backbone (up to ``extractor.lanes``
    batches at once), and the caller's work on the finished batch (classify matches
    it). A slow stream never holds back finished results, and when no new path has come
    for STALL_SECONDS the paths read so far go on as a smaller batch. At most about
    ``lanes + 4`` batches are read ahead. Unreadable images come back with
    ``features=None`` and an error; an error raised by ``paths`` itself is raised after
    every path before it has been yielded. ``on_done(n)`` is called after every batch
    with the number of images it held.
    """
    lanes = max(1, int(getattr(extractor, "lanes", 1)))
    decode_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emdcli-decode")
    infer_pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="emdcli-infer")
    incoming: queue.Queue[Any] = queue.Queue(maxsize=2 * batch_size)  # paths, then _END or _Failed
    ready: queue.Queue[Any] = queue.Queue(maxsize=lanes + 1)  # futures, then _END or an error
    stop = threading.Event()

    def read() -> None:  # the only thread that touches ``paths``
        try:
            for path in paths:
                if not _put(incoming, path, stop):
                    return
        except BaseException as exc:  # handed to the caller, after the paths read before it
            _put(incoming, _Failed(exc), stop)
            return
        _put(incoming, _END, stop)

    def submit(chunk: list[Path]) -> bool:
        batch = [(p, decode_pool.submit(_decode, p, prep)) for p in chunk]
        return _put(ready, infer_pool.submit(_decode_and_infer, extractor, batch), stop)

    def group() -> None:
        chunk: list[Path] = []
        try:
            while not stop.is_set():
                try:
                    item = incoming.get(timeout=STALL_SECONDS)
                except queue.Empty:  # the stream stalls: pass on what there is
                    if chunk and not submit(chunk):
                        return
                    chunk = []
                    continue
                if item is _END or isinstance(item, _Failed):
                    if chunk and not submit(chunk):
                        return
                    _put(ready, item.error if isinstance(item, _Failed) else _END, stop)
                    return
                chunk.append(item)
                if len(chunk) == batch_size:
                    if not submit(chunk):
                        return
                    chunk = []
        except RuntimeError:  # the pools were shut down: the caller has gone
            return

    for target, name in ((read, "emdcli-read"), (group, "emdcli-batch")):
        threading.Thread(target=target, name=name, daemon=True).start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            decoded, feats = item.result()
            rows = iter(feats if feats is not None else ())
            for path, got in decoded:
                if isinstance(got, tuple):
                    yield Embedded(path, next(rows), small=got[1])
                else:
                    yield Embedded(path, None, got)
            if on_done:
                on_done(len(decoded))
    finally:  # also when the caller stops early: drop queued work, let running work end
        stop.set()
        decode_pool.shutdown(wait=True, cancel_futures=True)
        infer_pool.shutdown(wait=True, cancel_futures=True)
