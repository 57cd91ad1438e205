"""Anomaly detection: how far an image is, by DeepEMD, from a set of normal images.

    normal = NormalSet.from_features(paths, fmaps)          # fmaps: (n, C, H, W) float32
    cal = calibrate(normal, k=3, contamination=0.05)
    score = anomaly_scores(normal, query_fmap, k=cal.k)
    verdict = judge(cal, score)                               # verdict.anomalous

The anomaly score of an image is the mean dissimilarity ``1 - EMD score`` to its ``k``
nearest normal images (nearest by EMD score; see :mod:`emdcli.matching`). It lies in
[0, 2]: about 0 for a copy of a normal image, higher for more anomalous ones. The
threshold is calibrated on the normal images themselves: each is scored against the
others (leave-one-out), and the threshold is the ``1 - contamination`` quantile
(linear interpolation) of those scores, so about that fraction of normal images
would be flagged. An image is anomalous when its score is above the threshold.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from .. import defaults
from ..errors import DatasetError
from ..features.source import FeatureSource, Progress, Skipped
from ..io.files import display_path
from ..io.records import Record, rounded
from ..matching.nodes import ClassBank, Nodes

ThresholdSource = Literal["quantile", "explicit"]


@dataclass(frozen=True)
class NormalSet:
    """The normal images: their paths and their (H*W, C) node sets stacked for EMD scoring."""

    paths: tuple[Path, ...]
    bank: ClassBank = field(repr=False)

    @classmethod
    def from_features(cls, paths: Sequence[Path], fmaps: np.ndarray | Sequence[np.ndarray]) -> NormalSet:
        """Build from n paths and their (n, C, H, W) float32 feature maps (all of one shape).

        Raises DatasetError when there is no image, ValueError when the counts or shapes disagree.
        """
        if len(paths) == 0:
            raise DatasetError("the normal set holds no images")
        arr = np.asarray(fmaps, dtype=np.float32)
        if arr.ndim != 4 or arr.shape[0] != len(paths):
            raise ValueError(f"expected ({len(paths)}, C, H, W) feature maps, got shape {arr.shape}")
        bank = ClassBank.from_nodes([Nodes.from_feature_map(f) for f in arr])
        return cls(paths=tuple(Path(p) for p in paths), bank=bank)

    @property
    def size(self) -> int:
        return len(self.paths)


def normal_similarities(normal: NormalSet, query_fmap: np.ndarray) -> np.ndarray:
    """(n,) float64 EMD scores in [-1, 1] of a (C, H, W) query against each normal image."""
    return normal.bank.scores(Nodes.from_feature_map(query_fmap))


def _score_from_similarities(sims: np.ndarray, k: int) -> float:
    """Mean of ``1 - s`` over the ``k`` largest finite similarities ``s`` (k already capped)."""
    s = np.sort(sims[np.isfinite(sims)])[::-1][:k]
    return float(np.mean(1.0 - s))


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def anomaly_scores(normal: NormalSet, query_fmap: np.ndarray, *, k: int = defaults.ANOMALY_K) -> float:
    """Anomaly score of a (C, H, W) query: mean ``1 - EMD score`` over its ``k`` nearest normal
    images (k is capped at the set's size). In [0, 2]; higher is more anomalous."""
    _check_k(k)
    return _score_from_similarities(normal_similarities(normal, query_fmap), min(k, normal.size))


@dataclass(frozen=True)
class Calibration:
    """A threshold on anomaly scores, set on the normal images.

    threshold: scores above it are anomalous. scores: (n,) float64 leave-one-out score of
    each normal image against the others, in the normal set's order. contamination: the
    fraction in [0, 1) of normal images the quantile rule flags. k: neighbours averaged
    (already capped at n - 1; score queries with this k). source: ``"quantile"`` when the
    threshold is the ``1 - contamination`` quantile of ``scores``, ``"explicit"`` when given.
    """

    threshold: float
    scores: np.ndarray = field(repr=False)
    contamination: float
    k: int
    source: ThresholdSource

    @property
    def flagged_fraction(self) -> float:
        """Fraction of the normal images whose leave-one-out score is above the threshold (NaN without scores)."""
        return float(np.mean(self.scores > self.threshold)) if self.scores.size else float("nan")


def leave_one_out_scores(normal: NormalSet, *, k: int = defaults.ANOMALY_K) -> np.ndarray:
    """(n,) float64 anomaly score of each normal image against the other n - 1 (k capped at n - 1).

    Raises DatasetError with fewer than 2 normal images.
    """
    _check_k(k)
    n = normal.size
    if n < 2:
        raise DatasetError(
            f"calibration needs at least 2 normal images, got {n}",
            hint="add normal images, or give an explicit threshold",
        )
    k = min(k, n - 1)
    b = normal.bank
    m = b.nodes_per_class
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        own = Nodes(raw=b.raw[i * m : (i + 1) * m], unit=b.unit[i * m : (i + 1) * m], mean=b.means[i])
        others = np.delete(np.arange(n), i)
        out[i] = _score_from_similarities(b.scores(own, only=others), k)
    return out


def calibrate(
    normal: NormalSet,
    *,
    k: int = defaults.ANOMALY_K,
    contamination: float = defaults.CONTAMINATION,
    threshold: float | None = None,
) -> Calibration:
    """Leave-one-out scores of the normal images and a threshold: ``threshold`` when given,
    else the ``1 - contamination`` quantile of those scores.

    Raises DatasetError with fewer than 2 normal images and no explicit threshold (with one
    image and a threshold, ``scores`` is empty), ValueError for a contamination outside
    [0, 1) or k < 1.
    """
    if not 0.0 <= contamination < 1.0:
        raise ValueError(f"contamination must be in [0, 1), got {contamination}")
    if threshold is not None and normal.size < 2:
        _check_k(k)
        return Calibration(float(threshold), np.empty(0), contamination, 1, "explicit")
    scores = leave_one_out_scores(normal, k=k)
    k = min(k, normal.size - 1)
    if threshold is not None:
        return Calibration(float(threshold), scores, contamination, k, "explicit")
    cut = float(np.quantile(scores, 1.0 - contamination))
    return Calibration(cut, scores, contamination, k, "quantile")


@dataclass(frozen=True)
class Verdict:
    """One image judged: its anomaly score, the threshold, and whether the score is above it."""

    score: float
    threshold: float
    anomalous: bool


def judge(calibration: Calibration, score: float) -> Verdict:
    """Anomalous when ``score`` is strictly above the calibrated threshold."""
    return Verdict(score=float(score), threshold=calibration.threshold, anomalous=bool(score > calibration.threshold))


@dataclass(frozen=True)
class Judged:
    """One query judged; ``verdict`` is None and ``error`` says why when it could not be read."""

    path: Path
    verdict: Verdict | None
    error: str | None = None

    #: The columns of :meth:`to_record`, in order (an unreadable query's record has only some).
    COLUMNS: ClassVar[tuple[str, ...]] = ("path", "status", "score", "threshold", "verdict", "error")

    def to_record(self) -> Record:
        """``anomaly``'s row: the score and threshold rounded to SCORE_DIGITS, the path as shown; only
        the path, ``status=error`` and the error for an unreadable query."""
        path = display_path(self.path)
        v = self.verdict
        if v is None:
            return {"path": path, "status": "error", "error": self.error}
        return {"path": path, "status": "ok", "score": rounded(v.score), "threshold": rounded(v.threshold),
                "verdict": "anomaly" if v.anomalous else "normal", "error": None}  # fmt: skip


@dataclass(frozen=True)
class AnomalyDetector:
    """A normal set, embedded and calibrated, ready to judge queries."""

    normal: NormalSet
    calibration: Calibration
    skipped: tuple[Skipped, ...]
    source: FeatureSource = field(repr=False)

    @classmethod
    def fit(
        cls,
        source: FeatureSource,
        paths: list[Path],
        *,
        k: int = defaults.ANOMALY_K,
        contamination: float = defaults.CONTAMINATION,
        threshold: float | None = None,
        on_done: Progress | None = None,
    ) -> AnomalyDetector:
        """Embed the normal images (through the source's cache) and calibrate (see :func:`calibrate`)."""
        found = source.array(paths, on_done)
        if found.features is None:
            raise DatasetError(f"none of the {len(paths)} normal images could be read")
        normal = NormalSet.from_features(found.paths, found.features)
        cal = calibrate(normal, k=k, contamination=contamination, threshold=threshold)
        return cls(normal, cal, found.skipped, source)

    def judge(self, queries: Iterable[Path], on_done: Progress | None = None) -> Iterator[Judged]:
        """A verdict for each query path, in input order."""
        for item in self.source.embed_now(queries, on_done):
            if item.features is None:
                yield Judged(item.path, None, item.error)
            else:
                score = anomaly_scores(self.normal, item.features, k=self.calibration.k)
                yield Judged(item.path, judge(self.calibration, score))


def anomaly(
    normal: Path | Sequence[Path],
    queries: Iterable[Path],
    *,
    k: int = defaults.ANOMALY_K,
    contamination: float = defaults.CONTAMINATION,
    threshold: float | None = None,
    source: FeatureSource | None = None,
) -> tuple[Calibration, list[Judged]]:
    """Calibrate on the normal images (a folder, searched recursively, or a list of paths) and judge
    each query (image files, or folders searched recursively). source: None for the bundled model without a cache."""
    from ..io.images import iter_image_files, iter_query_paths

    if source is None:
        from ..model.backbone import load_model

        source = FeatureSource(load_model())
    paths = sorted(iter_image_files(normal)) if isinstance(normal, Path) else list(normal)
    detector = AnomalyDetector.fit(source, paths, k=k, contamination=contamination, threshold=threshold)
    return detector.calibration, list(detector.judge(iter_query_paths(map(str, queries))))
