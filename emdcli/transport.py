"""Exact optimal transport (Earth Mover's Distance) by POT's network simplex.

POT checks its input with ``assert`` and reports a non-optimal solve only as a
warning; :func:`solve_emd` validates the problem itself and turns every
failure into :class:`~emdcli.errors.TransportError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import TransportError

#: Relative tolerance on the difference of the two marginals' total masses.
MASS_RTOL = 1e-6
#: Iteration cap handed to the network simplex (ample for a few hundred nodes).
MAX_ITER = 1_000_000

# emdcli hands POT numpy arrays only. Without these, ``import ot`` also imports torch,
# jax, cupy or tensorflow when they are installed (about 5 s for torch on 2 cores).
for _backend in ("PYTORCH", "JAX", "CUPY", "TENSORFLOW"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_backend}", "1")


@dataclass(frozen=True)
class TransportPlan:
    """An optimal plan.

    flow: (n, m) float64, ``flow.sum(1) == a``, ``flow.sum(0) == b``.
    cost: float, ``sum(flow * cost_matrix)``.
    """

    flow: np.ndarray
    cost: float


def _as_weights(w: object, name: str) -> np.ndarray:
    arr = np.asarray(w, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise TransportError(f"{name} must be a non-empty 1-D weight vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise TransportError(f"{name} holds NaN or infinite weights")
    if np.any(arr < 0):
        raise TransportError(f"{name} holds negative weights")
    if arr.sum() <= 0:
        raise TransportError(f"{name} has zero total mass")
    return np.ascontiguousarray(arr)


def solve_emd(a: object, b: object, cost: object) -> TransportPlan:
    """Solve ``min <flow, cost>`` s.t. ``flow @ 1 = a``, ``flow.T @ 1 = b``, ``flow >= 0``.

    a: (n,) non-negative weights; b: (m,) non-negative weights with the same total
    mass as ``a`` (relative tolerance :data:`MASS_RTOL`); cost: (n, m) finite costs.
    Raises :class:`TransportError` on malformed input or a non-optimal solve.
    """
    from ot.lp.emd_wrap import check_result, emd_c  # heavy import: keep it lazy

    a_arr = _as_weights(a, "source weights")
    b_arr = _as_weights(b, "target weights")
    m_arr = np.asarray(cost, dtype=np.float64)
    if m_arr.shape != (a_arr.size, b_arr.size):
        raise TransportError(
            f"cost matrix has shape {m_arr.shape}, expected {(a_arr.size, b_arr.size)}"
        )
    if not np.all(np.isfinite(m_arr)):
        raise TransportError("cost matrix holds NaN or infinite entries")
    sa, sb = a_arr.sum(), b_arr.sum()
    if abs(sa - sb) > MASS_RTOL * max(sa, sb):
        raise TransportError(f"the two sides carry different mass ({sa:.9g} vs {sb:.9g})")
    # Make the masses equal to machine precision, as the simplex requires.
    b_arr = b_arr * (sa / sb)
    m_arr = np.ascontiguousarray(m_arr)
    flow, total, _u, _v, code = emd_c(a_arr, b_arr, m_arr, MAX_ITER, 1)
    problem = check_result(code)
    if problem:
        raise TransportError(f"EMD solver did not reach the optimum: {problem.strip()}")
    return TransportPlan(flow=flow, cost=float(total))
