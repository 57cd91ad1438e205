"""Open-set rejection: "none of these" for a query unlike every class of the support set.

The score is the query's best *inductive* class score (EMD plus the inductive global term, the
query matched on its own), so that it does not depend on which other queries came with it. A
query scoring below the threshold is rejected.

The threshold is calibrated on the support set itself, for any model and domain: each support
example is scored against the *other* classes only, which is what a query of a class the support
set lacks would get (its own class is absent). The threshold is the ``1 - leak`` quantile of
those scores, so that about ``leak`` of such simulated out-of-set queries would still be accepted.
benchmarks/open_set.py measures what that keeps and rejects on real image sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .support import ClassNodes, ClassScores, Matcher


def open_set_scores(matcher: Matcher, classes: ClassNodes, parts: Sequence[ClassScores]) -> np.ndarray:
    """(n,) float64: each query's best inductive class score (NaN classes, off the shortlist, ignored)."""
    if not parts:
        return np.zeros(0)
    weight = matcher.weight_for(classes)
    return np.array([float(np.nanmax(p.total(weight))) for p in parts])


def simulated_out_of_set(
    matcher: Matcher, classes: ClassNodes, examples: Iterable[tuple[int, np.ndarray]]
) -> np.ndarray:
    """(m,) float64: each support example's best inductive score among the classes other than its
    own (``examples``: (class index, (C, H, W) feature map)); examples whose other classes are all
    off the shortlist are left out."""
    weight = matcher.weight_for(classes)
    found = []
    for label, fmap in examples:
        totals = matcher.match(classes, fmap).total(weight)
        totals[label] = np.nan
        if not np.all(np.isnan(totals)):
            found.append(float(np.nanmax(totals)))
    return np.array(found)


@dataclass(frozen=True)
class Rejection:
    """When a query is "none of these": its open-set score (:func:`open_set_scores`) is below
    ``threshold``.

    leak: the share of simulated out-of-set scores the threshold lets through (None when the
    threshold was given). calibrated_on: how many simulated scores it was calibrated on (0 when given).
    label: the answer a rejected query gets.
    """

    threshold: float
    leak: float | None = None
    calibrated_on: int = 0
    label: str = "unknown"

    def rejects(self, score: float | None) -> bool:
        return score is not None and score < self.threshold


def calibrate_rejection(simulated: np.ndarray, leak: float, label: str = "unknown") -> Rejection:
    """The :class:`Rejection` whose threshold lets ``leak`` (in (0, 1)) of the ``simulated``
    out-of-set scores through. ValueError without any simulated score."""
    if not 0 < leak < 1:
        raise ValueError(f"leak must be between 0 and 1, got {leak}")
    if len(simulated) == 0:
        raise ValueError("no simulated out-of-set score to calibrate on: the support set needs two classes")
    return Rejection(float(np.quantile(simulated, 1 - leak)), leak, len(simulated), label)
