"""A feature cache on disk, so a second run on the same support set does not re-embed it.

    cache = FeatureCache.for_model(manifest)  # namespace: the model's sha256 and preprocessing
    features = cache.get(path)            # (C, H, W) float32, or None on a miss
    if features is None:
        features = ...                    # embed the image
        cache.put(path, features)
    cache.prune()                         # once per run: keep the cache under max_bytes

Entries are keyed by the sha256 of the image file's bytes (not its name) and live in
``ROOT/features/NS/DIGEST.npy``, where NS is the first 16 hex digits of the sha256 of the
namespace (the model and its preprocessing), so different models never share entries.
Fitted SFC nodes of a support set live beside them as ``DIGEST.fit`` (same format, keyed by the
sha256 of the examples' features: ``emdcli.matching.sfc.fit_digest``). Each entry is a plain
``.npy`` file of numbers only, written to a temporary file beside it and renamed into place, so
readers never see a partial entry. The cache is only an optimisation: a damaged entry is a miss,
and a failed write is counted, never raised.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io.files import TMP_SUFFIX, AtomicFile, default_cache_dir, sha256_file

if TYPE_CHECKING:
    from ..model.manifest import Manifest

#: Default size limit of the whole cache (all namespaces), in bytes.
DEFAULT_MAX_BYTES = 512 * 2**20
#: ``prune`` deletes down to this fraction of ``max_bytes``, so it does not run on every call.
PRUNE_TARGET = 0.9
#: Temporary files older than this (s) are leftovers of a killed writer; ``prune`` removes them.
STALE_TMP_SECONDS = 3600.0

_ENTRY_SUFFIX = ".npy"
#: An empty file beside an entry whose image is far below the model's input size.
_SMALL_SUFFIX = ".small"
#: A stored SFC fit (:meth:`FeatureCache.put_fit`): pruned with the feature entries, never counted as one.
_FIT_SUFFIX = ".fit"
_MAX_MEMO = 4096


def _remove(path: Path | str) -> bool:
    """Delete ``path``; True if this call removed it, False if it was gone or undeletable."""
    try:
        os.remove(path)
    except OSError:
        return False
    return True


class FeatureCache:
    """Feature maps on disk, keyed by image content, one folder per model and preprocessing.

    namespace: any text that identifies the model and preprocessing, for example
    ``f"{manifest.sha256}/{preprocess.key()}"``. root: the cache folder (default
    ``default_cache_dir()``); nothing is created until the first ``put``. max_bytes: the
    size limit in bytes of all entries under ``root/features`` (every namespace), kept by
    ``prune``. Arrays go in and come out as float32 of any shape, typically (C, H, W).

    Counters: ``hits`` and ``misses`` (``get`` calls), ``write_errors`` (``put`` calls that
    stored nothing because of an OSError). Safe to share between threads and processes.
    """

    def __init__(self, namespace: str, root: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.namespace = namespace
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = int(max_bytes)
        self.folder = self.root / "features" / hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:16]
        self.hits = 0
        self.misses = 0
        self.write_errors = 0
        self._digests: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_model(
        cls, manifest: Manifest, root: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> FeatureCache:
        """The cache of ``manifest``'s model: namespace ``f"{sha256}/{preprocess.key()}"``. A pixel limit
        other than the default (``$EMDCLI_MAX_PIXELS``) gets a namespace of its own, so that an image the
        limit refuses is refused whether an earlier run cached its features or not."""
        from .. import defaults
        from ..errors import EmdcliError
        from ..io.images import max_pixels

        namespace = f"{manifest.sha256}/{manifest.preprocess.key()}"
        try:
            limit = max_pixels()
        except EmdcliError:  # a bad value: decoding says so, image by image
            limit = defaults.MAX_PIXELS
        if limit != defaults.MAX_PIXELS:
            namespace += f"/max-pixels-{limit}"
        return cls(namespace, root=root, max_bytes=max_bytes)

    def entry_path(self, digest: str) -> Path:
        """Where the entry for a file whose sha256 is ``digest`` lives."""
        return self.folder / f"{digest}{_ENTRY_SUFFIX}"

    def fit_path(self, digest: str) -> Path:
        """Where the SFC fit whose :func:`~emdcli.matching.sfc.fit_digest` is ``digest`` lives."""
        return self.folder / f"{digest}{_FIT_SUFFIX}"

    def _digest(self, path: Path) -> str:
        """``sha256_file(path)``, remembered per (path, size, mtime_ns). Raises OSError."""
        st = os.stat(path)
        key = (os.fspath(path), st.st_size, st.st_mtime_ns)
        known = self._digests.get(key)
        if known is not None:
            return known
        digest = sha256_file(path)
        with self._lock:
            if len(self._digests) >= _MAX_MEMO:
                self._digests.clear()
            self._digests[key] = digest
        return digest

    def has(self, path: Path) -> bool:
        """Whether an entry for the image file ``path`` exists (it may still be damaged: ``get`` says)."""
        try:
            return self.entry_path(self._digest(path)).is_file()
        except OSError:
            return False

    def get(self, path: Path) -> np.ndarray | None:
        """The cached float32 array for the image file ``path``, or None on a miss.

        A missing, corrupt, truncated or unreadable entry is a miss (a damaged one is
        deleted if possible), as is an image file that cannot be read. A hit refreshes
        the entry's mtime, which ``prune`` uses as its last-use time.
        """
        arr = self._load(path)
        with self._lock:
            if arr is None:
                self.misses += 1
            else:
                self.hits += 1
        return arr

    def _load(self, path: Path) -> np.ndarray | None:
        try:
            entry = self.entry_path(self._digest(path))
        except OSError:
            return None
        return self._load_entry(entry)

    def get_fit(self, digest: str) -> np.ndarray | None:
        """The fitted nodes stored under ``digest`` (:func:`emdcli.matching.sfc.fit_digest`: the sha256 of what
        the fit was computed from), float32, or None on a miss. Not counted in ``hits`` or ``misses``."""
        return self._load_entry(self.fit_path(digest))

    def put_fit(self, digest: str, nodes: np.ndarray) -> None:
        """Store fitted ``nodes`` (cast to float32) under ``digest``, atomically, as :meth:`put` stores an
        image's features (in ``DIGEST.fit`` beside them, so that counts of feature entries leave fits out);
        an OSError stores nothing and counts in ``write_errors``."""
        self._store(self.fit_path(digest), nodes)

    def _load_entry(self, entry: Path) -> np.ndarray | None:
        try:
            with open(entry, "rb") as fh:
                arr = np.load(fh, allow_pickle=False)
        except FileNotFoundError:
            return None
        except Exception:  # a damaged entry may raise anything from OSError to ValueError
            _remove(entry)
            return None
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
            _remove(entry)  # put only ever writes float32 arrays
            return None
        with contextlib.suppress(OSError):
            os.utime(entry)
        return arr

    def is_small(self, path: Path) -> bool:
        """Whether ``put`` was told the image file ``path`` is far below the model's input size (an empty
        ``DIGEST.small`` marker beside its entry)."""
        try:
            return self.entry_path(self._digest(path)).with_suffix(_SMALL_SUFFIX).exists()
        except OSError:
            return False

    def put(self, path: Path, features: np.ndarray, *, small: bool = False) -> None:
        """Store ``features`` (cast to float32) for the image file ``path``; ``small``: the image is far below
        the model's input size (:meth:`is_small` says so later).

        Atomic: the array is written to a temporary file in the entry's folder and
        renamed over the entry, so concurrent writers are safe (the last one wins) and
        readers never see a partial file. An OSError (read-only or full disk, unreadable
        image) stores nothing and increments ``write_errors`` instead of raising.
        """
        try:
            entry = self.entry_path(self._digest(path))
        except OSError:
            with self._lock:
                self.write_errors += 1
            return
        if self._store(entry, features) and small:
            with contextlib.suppress(OSError):  # without it, a later run only misses the warning
                entry.with_suffix(_SMALL_SUFFIX).touch()

    def _store(self, entry: Path, array: np.ndarray) -> bool:
        """Write ``array`` as float32 to ``entry`` atomically; False (and one more write error) on an OSError."""
        arr = np.ascontiguousarray(array, dtype=np.float32)
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            target = AtomicFile(entry, binary=True)
        except OSError:
            with self._lock:
                self.write_errors += 1
            return False
        try:
            np.save(target.stream, arr, allow_pickle=False)
            target.commit(fsync=False)  # a cache entry lost in a crash is only a miss
        except OSError:
            target.abort(keep=False)
            with self._lock:
                self.write_errors += 1
            return False
        return True

    def prune(self) -> int:
        """Keep the whole cache (every namespace under ``root/features``) within ``max_bytes``.

        If the entries total more than ``max_bytes`` bytes, delete the least recently used
        (oldest mtime) until they total at most 90% of it. Returns the number of entries
        this call deleted. Entries that vanish meanwhile (another process pruned them) are
        skipped; temporary files left by killed writers over an hour ago are also removed.
        """
        entries: list[tuple[int, int, str]] = []  # (mtime_ns, size in bytes, path)
        stale_before = time.time_ns() - int(STALE_TMP_SECONDS * 1e9)
        try:
            namespaces = [d.path for d in os.scandir(self.root / "features") if d.is_dir(follow_symlinks=False)]
        except OSError:
            return 0
        for folder in namespaces:
            try:
                listing = list(os.scandir(folder))
            except OSError:
                continue
            for item in listing:
                try:
                    if not item.is_file(follow_symlinks=False):
                        continue
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                if item.name.endswith((_ENTRY_SUFFIX, _FIT_SUFFIX)):
                    entries.append((st.st_mtime_ns, st.st_size, item.path))
                elif item.name.endswith(TMP_SUFFIX) and st.st_mtime_ns < stale_before:
                    _remove(item.path)
        total = sum(size for _, size, _ in entries)
        if total <= self.max_bytes:
            return 0
        target = PRUNE_TARGET * self.max_bytes
        removed = 0
        for _, size, entry in sorted(entries):
            if total <= target:
                break
            try:
                os.remove(entry)
                _remove(Path(entry).with_suffix(_SMALL_SUFFIX))
            except FileNotFoundError:
                total -= size  # another process got there first: the space is free all the same
                continue
            except OSError:
                continue
            total -= size
            removed += 1
        return removed

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.folder)!r}, hits={self.hits}, misses={self.misses}, "
            f"write_errors={self.write_errors})"
        )
