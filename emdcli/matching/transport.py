"""Exact optimal transport (Earth Mover's Distance) by POT's network simplex.

POT checks its input with ``assert`` and reports a non-optimal solve only as a
warning; :func:`solve_emd` validates the problem itself and turns every
failure into :class:`~emdcli.errors.TransportError`, without emitting warnings.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import TransportError

#: Relative tolerance on the difference of the two marginals' total masses.
MASS_RTOL = 1e-6
#: Iteration cap handed to the network simplex (ample for a few hundred nodes).
MAX_ITER = 1_000_000
#: The network simplex's result codes other than OPTIMAL (1), as POT's ``check_result`` words them.
#: Read here rather than through ``check_result``, which also emits a UserWarning.
_OPTIMAL = 1
_SOLVER_PROBLEMS = {
    0: "Problem infeasible. Check that a and b are in the simplex",
    2: "Problem unbounded",
    3: "numItermax reached before optimality. Try to increase numItermax.",
}
#: Costs whose largest magnitude lies outside [COST_SCALE_BELOW, COST_SCALE_ABOVE] are scaled (by a
#: power of two) into [0.5, 1) before the solve: the simplex prices its artificial arcs at (largest
#: cost + 1) x node count, which must stay finite, and compares reduced costs with a tolerance
#: relative to that price, so costs much smaller than 1 would look alike.
COST_SCALE_BELOW = 2.0**-4
COST_SCALE_ABOVE = 1e250
#: Total masses larger than this are scaled down (by a power of two) into [0.5, 1) before the solve:
#: the simplex checks that supplies and demands balance to an *absolute* tolerance (about 1e-14), which
#: rounding breaks on large masses (it then reports a feasible problem infeasible).
MASS_SCALE_ABOVE = 1.0

# emdcli hands POT numpy arrays only. Without these, ``import ot`` also imports torch,
# jax, cupy or tensorflow when they are installed (about 5 s for torch on 2 cores).
for _backend in ("PYTORCH", "JAX", "CUPY", "TENSORFLOW"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_backend}", "1")

_LOADING = threading.Lock()
_emd_c: Callable[..., tuple[np.ndarray, float, np.ndarray, np.ndarray, int]] | None = None


def network_simplex() -> Callable[..., tuple[np.ndarray, float, np.ndarray, np.ndarray, int]]:
    """POT's exact solver, ``emd_c(a, b, cost, max_iter, threads)`` -> (flow, cost, u, v, result code).

    It lives in the compiled module ``ot.lp.emd_wrap``, whose only Python import is ``ot.utils.dist``;
    a plain import runs ``ot/__init__`` first, which imports SciPy, networkx and every POT solver
    (most of a one-query run's time). So, unless ``ot`` is imported already, the module is loaded on
    its own, with placeholders for its parent packages and ``dist`` that are removed once it has
    loaded (a later ``import ot`` finds the same module and works as usual; ``dist`` then imports the
    real one). Anything unexpected falls back to the plain import.
    """
    global _emd_c
    if _emd_c is None:
        with _LOADING:  # one thread loads; the placeholders must not be seen by another one's import
            if _emd_c is None:
                module = None if "ot" in sys.modules else _load_emd_wrap_alone()
                if module is None:
                    from ot.lp import emd_wrap

                    module = emd_wrap
                _emd_c = module.emd_c
    return _emd_c


def _real_dist(*args: Any, **kwargs: Any) -> Any:
    """``ot.utils.dist``, imported when first called (the placeholder ``emd_wrap`` keeps)."""
    from ot.utils import dist

    return dist(*args, **kwargs)


def _load_emd_wrap_alone() -> ModuleType | None:
    """``ot.lp.emd_wrap`` loaded without running ``ot/__init__``; None when that cannot be done."""
    import importlib.machinery
    import importlib.util

    try:
        found = importlib.util.find_spec("ot")
        folders = list(found.submodule_search_locations or []) if found else []
        libraries = [p for d in folders for p in (Path(d) / "lp").glob("emd_wrap.*") if p.suffix in (".so", ".pyd")]
    except (ImportError, ValueError, OSError):
        return None
    if len(libraries) != 1:
        return None
    placeholders = {name: ModuleType(name) for name in ("ot", "ot.lp", "ot.utils")}
    placeholders["ot"].__path__ = placeholders["ot.lp"].__path__ = []
    placeholders["ot.utils"].dist = _real_dist  # type: ignore[attr-defined]
    name = "ot.lp.emd_wrap"
    loader = importlib.machinery.ExtensionFileLoader(name, str(libraries[0]))
    spec = importlib.util.spec_from_file_location(name, libraries[0], loader=loader)
    if spec is None:
        return None
    sys.modules.update(placeholders)
    try:
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        return module if callable(getattr(module, "emd_c", None)) else None
    except Exception:  # another POT layout: the plain import will do
        return None
    finally:
        for key in (*placeholders, name):
            sys.modules.pop(key, None)


@dataclass(frozen=True)
class TransportPlan:
    """An optimal plan.

    flow: (n, m) float64, ``flow.sum(1) == a``, ``flow.sum(0) == b``.
    cost: float, ``sum(flow * cost_matrix)``.
    """

    flow: np.ndarray
    cost: float


def _as_float64(x: object, name: str) -> np.ndarray:
    """``x`` as a float64 array of any shape; TransportError for anything that is not real numbers."""
    try:
        raw = np.asarray(x)
        if raw.dtype.kind == "c":  # the cast would silently drop the imaginary part
            raise TransportError(f"{name} holds complex numbers")
        return np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:  # strings, ragged lists, objects, huge ints
        raise TransportError(f"{name} is not an array of real numbers ({exc})") from None


def _as_weights(w: object, name: str) -> np.ndarray:
    """(n,) float64, finite, non-negative, with a positive and finite total mass."""
    arr = _as_float64(w, name)
    if arr.ndim != 1 or arr.size == 0:
        raise TransportError(f"{name} must be a non-empty 1-D weight vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise TransportError(f"{name} holds NaN or infinite weights")
    if np.any(arr < 0):
        raise TransportError(f"{name} holds negative weights")
    with np.errstate(over="ignore"):
        total = arr.sum()
    if total <= 0:
        raise TransportError(f"{name} has zero total mass")
    if not np.isfinite(total):
        raise TransportError(f"{name} has a total mass too large for float64")
    return np.ascontiguousarray(arr)


def solve_emd(a: object, b: object, cost: object) -> TransportPlan:
    """Solve ``min <flow, cost>`` s.t. ``flow @ 1 = a``, ``flow.T @ 1 = b``, ``flow >= 0``.

    a: (n,) non-negative weights; b: (m,) non-negative weights with the same total
    mass as ``a`` (relative tolerance :data:`MASS_RTOL`); cost: (n, m) finite costs.
    Raises :class:`TransportError` on malformed input or a non-optimal solve.
    """
    emd_c = network_simplex()
    a_arr = _as_weights(a, "source weights")
    b_arr = _as_weights(b, "target weights")
    m_arr = _as_float64(cost, "cost matrix")
    if m_arr.shape != (a_arr.size, b_arr.size):
        raise TransportError(f"cost matrix has shape {m_arr.shape}, expected {(a_arr.size, b_arr.size)}")
    if not np.all(np.isfinite(m_arr)):
        raise TransportError("cost matrix holds NaN or infinite entries")
    sa, sb = a_arr.sum(), b_arr.sum()
    if abs(sa - sb) > MASS_RTOL * max(sa, sb):
        raise TransportError(f"the two sides carry different mass ({sa:.9g} vs {sb:.9g})")
    # Make the masses equal to machine precision, as the simplex requires.
    b_arr = b_arr * (sa / sb)
    # Zero weights need no care here: POT's wrapper leaves their nodes out of the graph and
    # returns zero rows and columns for them.
    mass_exp = int(np.frexp(sa)[1]) if sa > MASS_SCALE_ABOVE else 0
    if mass_exp:  # exact, barring underflow of weights ~1e-308 times smaller than the mass
        a_arr, b_arr = np.ldexp(a_arr, -mass_exp), np.ldexp(b_arr, -mass_exp)
    m_arr = np.ascontiguousarray(m_arr)
    m_solve = _solver_costs(m_arr)
    flow, total, _u, _v, code = emd_c(a_arr, b_arr, m_solve, MAX_ITER, 1)
    if code != _OPTIMAL:
        problem = _SOLVER_PROBLEMS.get(code, f"unknown result code {code}")
        raise TransportError(f"EMD solver did not reach the optimum: {problem.strip()}")
    with np.errstate(over="ignore", invalid="ignore"):
        if mass_exp:
            flow = np.ldexp(flow, mass_exp)
        if mass_exp or m_solve is not m_arr:  # price the flow with the masses and costs as given
            total = np.sum(flow * m_arr)
    if not (np.isfinite(total) and np.all(np.isfinite(flow))):
        raise TransportError("the transport cost is too large for float64")
    return TransportPlan(flow=flow, cost=float(total))


def emd_cost_trusted(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    """The optimal transport cost only, for inputs emdcli built itself (the hot path).

    a: (n,) and b: (m,) C-contiguous float64 weights, all positive, each summing to 1;
    cost: (n, m) C-contiguous float64, finite, in [0, 2]. None of this is checked (see
    :func:`solve_emd` for untrusted input); a non-optimal solve still raises TransportError.
    """

    return emd_flow_trusted(a, b, cost)[1]


def emd_flow_trusted(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, float]:
    """The (n, m) optimal flow and its cost, for inputs emdcli built itself (as :func:`emd_cost_trusted`)."""
    flow, total, _u, _v, code = network_simplex()(a, b * (a.sum() / b.sum()), cost, MAX_ITER, 1)
    if code != _OPTIMAL:
        problem = _SOLVER_PROBLEMS.get(code, f"unknown result code {code}")
        raise TransportError(f"EMD solver did not reach the optimum: {problem.strip()}")
    return flow, float(total)


def _solver_costs(m_arr: np.ndarray) -> np.ndarray:
    """The (n, m) costs handed to the simplex: ``m_arr`` itself, or an equivalent that it solves reliably.

    POT's network simplex assumes costs >= 0 (with negative ones it can report a feasible
    problem infeasible), overflows on huge ones and cannot tell tiny ones apart. Every feasible
    flow moves the same total mass, so adding a constant to all costs leaves the optimal flows
    unchanged, and so does scaling by a positive constant (a power of two: exact). Costs already
    in [0, COST_SCALE_ABOVE] with a largest one of at least COST_SCALE_BELOW (or all zero) are
    returned as they are.
    """
    span = float(np.max(np.abs(m_arr)))
    lowest = float(m_arr.min())
    rescale = span > COST_SCALE_ABOVE or 0 < span < COST_SCALE_BELOW
    if not rescale and lowest >= 0:
        return m_arr
    shifted = m_arr
    if rescale:
        shifted = np.ldexp(shifted, -int(np.frexp(span)[1]))  # largest magnitude into [0.5, 1)
        lowest = float(shifted.min())
    if lowest < 0:
        shifted = shifted - lowest
    return np.ascontiguousarray(shifted)
