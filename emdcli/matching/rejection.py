"""Open-set rejection: "none of these" for a query unlike every class of the support set.

    bank = ReferenceBank.load(reference_bank_path(manifest_path), manifest.sha256)
    scorer = OpenSetScorer.from_classes(bank, classes)    # classes: ClassNodes
    rejection = calibrate_rejection(scorer, sensitivity=0.05)
    rejection.rejects(float(scorer.scores(pooled_query[None])[0]))

**The score** of a query is its bank-relative similarity to the nearest support example: with
pooled features centred on the mean of a *reference bank* (pooled features of about 2,000 generic
public-domain images, ``reference-bank/`` in the repository, one bank per model) and
L2-normalised, ``max_x cos(q, x) - (B(q) + B(x)) / 2``, where ``B(.)`` is the mean cosine to the
``k`` nearest bank images. An image of another kind is no closer to the examples than it is to
images of nothing in particular; an in-set query is. It is inductive (a query's score does not
depend on the other queries) and costs one (n, M) product.

**The threshold** is ``anchor + offset``. The anchor is measured on the support set: each example
scored against the other classes' examples (and, when every class has two examples or more,
against the other examples of its own class), averaged. The offset is the ``sensitivity``
quantile of (in-set query score - anchor), measured on the development classes of every image set
(``benchmarks/open_set.py --phase calibrate``, written to ``rejection_offsets.json``), so that
about ``sensitivity`` of in-set queries are rejected whatever the domain. docs/benchmarks.md,
"Open-set rejection", measures what it keeps and rejects on classes the choice never saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .nodes import l2_normalise

if TYPE_CHECKING:
    from .support import ClassNodes

#: The suffix of a model's reference bank file, beside its manifest: ``NAME.bank.npz``.
BANK_SUFFIX = ".bank.npz"
#: The nearest bank images whose mean cosine is a feature's density ``B``.
BANK_NEIGHBOURS = 10
#: The file of measured offsets, beside this module.
OFFSETS_FILE = Path(__file__).with_name("rejection_offsets.json")


def reference_bank_path(manifest_path: Path) -> Path:
    """Where the reference bank of the model whose manifest is ``manifest_path`` lives."""
    return manifest_path.with_name(manifest_path.name.removesuffix(".json") + BANK_SUFFIX)


@dataclass(frozen=True)
class ReferenceBank:
    """Pooled features of generic images, the yardstick of the open-set score.

    features: (M, C) float32 pooled features. model_sha256: the model they were computed with.
    source: where the images came from (text). k: neighbours averaged into a density.
    """

    features: np.ndarray = field(repr=False)
    model_sha256: str
    source: str = ""
    k: int = BANK_NEIGHBOURS
    centre: np.ndarray = field(init=False, repr=False, compare=False)
    unit: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        feats = np.asarray(self.features, dtype=np.float64)
        if feats.ndim != 2 or len(feats) < self.k:
            raise ValueError(f"a reference bank needs at least {self.k} (M, C) features, got shape {feats.shape}")
        centre = feats.mean(axis=0)
        object.__setattr__(self, "centre", centre)
        object.__setattr__(self, "unit", l2_normalise(feats - centre))

    def normalised(self, pooled: np.ndarray) -> np.ndarray:
        """(n, C) pooled features centred on the bank's mean and L2-normalised: (n, C) float64."""
        return np.asarray(l2_normalise(np.asarray(pooled, dtype=np.float64) - self.centre))

    def density(self, unit: np.ndarray) -> np.ndarray:
        """(n,) float64: the mean cosine of each of the (n, C) ``unit`` rows to its ``k`` nearest bank images."""
        sims = np.asarray(unit) @ self.unit.T
        return np.asarray(np.partition(sims, -self.k, axis=1)[:, -self.k :].mean(axis=1))

    def save(self, path: Path) -> None:
        """Write the bank as an ``.npz`` of plain arrays (no pickle), atomically."""
        from ..io.files import AtomicFile

        out = AtomicFile(path, binary=True)
        try:
            np.savez(out.stream, features=np.asarray(self.features, dtype=np.float16),
                     model_sha256=np.array(self.model_sha256), source=np.array(self.source))  # fmt: skip
        except BaseException:
            out.abort(keep=False)
            raise
        out.commit()

    @classmethod
    def load(cls, path: Path, model_sha256: str | None = None) -> ReferenceBank:
        """Read a bank written by :meth:`save`; ValueError when it was made for another model."""
        with np.load(path, allow_pickle=False) as z:
            bank = cls(z["features"].astype(np.float32), str(z["model_sha256"]), str(z["source"]))
        if model_sha256 is not None and bank.model_sha256 != model_sha256:
            made, wanted = bank.model_sha256[:12], model_sha256[:12]
            raise ValueError(f"{path.name} was computed with model {made}..., not {wanted}...")
        return bank


@dataclass(frozen=True)
class OpenSetScorer:
    """The support examples, ready to give queries their open-set score (module docstring).

    unit: (N, C) float64 examples centred on the bank's mean, normalised; density: (N,) their
    bank densities; labels: (N,) their class indices; shots: examples per class.
    """

    bank: ReferenceBank = field(repr=False)
    unit: np.ndarray = field(repr=False)
    density: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    shots: tuple[int, ...]

    @classmethod
    def from_classes(cls, bank: ReferenceBank, classes: ClassNodes) -> OpenSetScorer:
        """From the pooled examples kept in ``classes``."""
        unit = bank.normalised(classes.examples_pooled)
        return cls(bank, unit, bank.density(unit), np.asarray(classes.example_labels), tuple(classes.shots))

    def pairwise(self, pooled: np.ndarray) -> np.ndarray:
        """(n, N) float64 bank-relative similarities of (n, C) pooled queries to every example."""
        q = self.bank.normalised(np.atleast_2d(pooled))
        return np.asarray(q @ self.unit.T - 0.5 * (self.bank.density(q)[:, None] + self.density[None, :]))

    def scores(self, pooled: np.ndarray) -> np.ndarray:
        """(n,) float64 open-set scores of (n, C) pooled queries: higher is more like the support set."""
        if len(pooled) == 0:
            return np.zeros(0)
        return np.asarray(self.pairwise(pooled).max(axis=1))

    def anchor(self) -> float:
        """The support set's own level of the score: each example against the other classes' examples,
        averaged with each against its own class's other examples when every class has two or more."""
        rel = self.unit @ self.unit.T - 0.5 * (self.density[:, None] + self.density[None, :])
        same = self.labels[:, None] == self.labels[None, :]
        other = float(np.where(same, -np.inf, rel).max(axis=1).mean())
        if min(self.shots) < 2:
            return other
        np.fill_diagonal(rel, -np.inf)
        return 0.5 * (other + float(np.where(same, rel, -np.inf).max(axis=1).mean()))


@cache
def _offsets() -> dict[str, Any]:
    return dict(json.loads(OFFSETS_FILE.read_text()))


def offset_for(shots: int, sensitivity: float) -> float:
    """The measured offset for classes of ``shots`` examples (the largest measured count up to it) at
    ``sensitivity``, interpolated linearly between the measured sensitivities."""
    table = _offsets()["offsets"]
    measured = sorted(int(s) for s in table)
    row = table[str(max([s for s in measured if s <= shots] or measured[:1]))]
    points = sorted((float(p), float(v)) for p, v in row.items())
    xs, ys = [p for p, _ in points], [v for _, v in points]
    if not xs[0] <= sensitivity <= xs[-1]:
        raise ValueError(f"sensitivity must be between {xs[0]:g} and {xs[-1]:g}, got {sensitivity:g}")
    return float(np.interp(sensitivity, xs, ys))


def sensitivity_range() -> tuple[float, float]:
    """The smallest and largest sensitivity the measured offsets cover."""
    points = [float(p) for row in _offsets()["offsets"].values() for p in row]
    return min(points), max(points)


@dataclass(frozen=True)
class Rejection:
    """When a query is "none of these": its open-set score (:meth:`OpenSetScorer.scores`) is below
    ``threshold``.

    scorer: what scores queries. sensitivity: the share of in-set queries the calibration expects to
    reject (None when the threshold was given). anchor: the support set's level (None when given).
    label: the answer a rejected query gets. weak: why the calibration is a rough one, or None.
    """

    scorer: OpenSetScorer = field(repr=False, compare=False)
    threshold: float
    sensitivity: float | None = None
    anchor: float | None = None
    label: str = "unknown"
    weak: str | None = None

    def rejects(self, score: float | None) -> bool:
        return score is not None and score < self.threshold

    def scores(self, pooled: np.ndarray) -> np.ndarray:
        """(n,) open-set scores of (n, C) pooled queries."""
        return self.scorer.scores(pooled)


def weak_calibration(shots: tuple[int, ...]) -> str | None:
    """Why a support set of classes with ``shots`` examples calibrates rejection roughly, or None."""
    if len(shots) == 2:
        return "only 2 classes"
    if min(shots) < 2:
        return "1 example in a class"
    return None


def calibrate_rejection(scorer: OpenSetScorer, sensitivity: float, label: str = "unknown") -> Rejection:
    """The :class:`Rejection` expected to reject ``sensitivity`` of in-set queries (module docstring)."""
    anchor = scorer.anchor()
    threshold = anchor + offset_for(min(scorer.shots), sensitivity)
    return Rejection(scorer, threshold, sensitivity, anchor, label, weak_calibration(scorer.shots))


def fixed_rejection(scorer: OpenSetScorer, threshold: float, label: str = "unknown") -> Rejection:
    """A :class:`Rejection` at a given ``threshold`` on the open-set score."""
    return Rejection(scorer, float(threshold), None, None, label)
