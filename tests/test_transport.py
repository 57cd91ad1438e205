"""Exact EMD: checked against an independent LP solver and on hand-solvable problems."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from emdcli.errors import TransportError
from emdcli.matching.transport import solve_emd


def lp_emd(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    """The transportation LP solved by scipy's HiGHS, for comparison."""
    n, m = cost.shape
    rows = np.zeros((n + m, n * m))
    for i in range(n):
        rows[i, i * m : (i + 1) * m] = 1.0
    for j in range(m):
        rows[n + j, j::m] = 1.0
    res = linprog(cost.ravel(), A_eq=rows, b_eq=np.concatenate([a, b]), bounds=(0, None), method="highs")
    assert res.status == 0
    return float(res.fun)


@pytest.mark.parametrize("seed", range(12))
def test_emd_matches_independent_lp(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 9, size=2)
    a = rng.random(n) + 0.01
    b = rng.random(m) + 0.01
    a, b = a / a.sum(), b / b.sum()
    cost = rng.random((n, m)) * 2
    plan = solve_emd(a, b, cost)
    assert plan.cost == pytest.approx(lp_emd(a, b, cost), abs=1e-6)
    assert np.allclose(plan.flow.sum(axis=1), a, atol=1e-9)
    assert np.allclose(plan.flow.sum(axis=0), b, atol=1e-9)
    assert (plan.flow >= 0).all()
    assert plan.cost == pytest.approx(float((plan.flow * cost).sum()), abs=1e-12)


def test_hand_solved_two_by_two() -> None:
    # Moving 0.5 along the diagonal costs 0; the rest must cross at cost 1.
    a = np.array([0.5, 0.5])
    b = np.array([0.25, 0.75])
    cost = np.array([[0.0, 1.0], [1.0, 0.0]])
    plan = solve_emd(a, b, cost)
    assert plan.cost == pytest.approx(0.25)
    assert np.allclose(plan.flow, [[0.25, 0.25], [0.0, 0.5]])


def test_identity_transport_costs_nothing() -> None:
    w = np.array([0.2, 0.3, 0.5])
    cost = 1.0 - np.eye(3)
    plan = solve_emd(w, w, cost)
    assert plan.cost == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(plan.flow, np.diag(w))


def test_masses_that_differ_by_rounding_are_accepted() -> None:
    a = np.array([1 / 3, 1 / 3, 1 / 3])
    b = np.array([0.5, 0.5 + 1e-9])
    plan = solve_emd(a, b, np.ones((3, 2)))
    assert plan.cost == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("a", "b", "cost", "message"),
    [
        ([0.5, 0.5], [1.0], [[0.0, 1.0]], "cost matrix has shape"),
        ([0.5, np.nan], [1.0], [[0.0], [1.0]], "NaN or infinite weights"),
        ([1.5, -0.5], [1.0], [[0.0], [1.0]], "negative weights"),
        ([0.0, 0.0], [1.0], [[0.0], [1.0]], "zero total mass"),
        ([0.5, 0.5], [2.0], [[0.0], [1.0]], "different mass"),
        ([1.0], [1.0], [[np.inf]], "NaN or infinite entries"),
        ([], [1.0], np.zeros((0, 1)), "non-empty 1-D"),
    ],
)
def test_malformed_problems_raise_our_error(a: list, b: list, cost: list, message: str) -> None:
    with pytest.raises(TransportError, match=message):
        solve_emd(a, b, cost)


@pytest.mark.parametrize("seed", range(5))
def test_trusted_hot_path_agrees_with_the_checked_solver(seed: int) -> None:
    from emdcli.matching.transport import emd_cost_trusted

    rng = np.random.default_rng(seed)
    a, b = rng.random(7) + 0.01, rng.random(5) + 0.01
    a, b = a / a.sum(), b / b.sum()
    cost = np.ascontiguousarray(rng.random((7, 5)) * 2)
    assert emd_cost_trusted(a, b, cost) == pytest.approx(solve_emd(a, b, cost).cost, abs=1e-12)


# POT's solver loaded alone --------------------------------------------------------------------


def _python(code: str) -> str:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


LOADED = "import sys; print(sorted({m.split('.')[0] for m in sys.modules} & {'ot', 'scipy', 'networkx', 'torch'}))"


def test_the_solver_loads_without_the_rest_of_pot_and_solves_as_pot_does() -> None:
    """A fresh process solves without importing ``ot``'s package, SciPy or networkx; a later
    ``import ot`` still works (its own solver is the same module) and agrees with the flow."""
    code = f"""
import numpy as np
from emdcli.matching.transport import solve_emd
rng = np.random.default_rng(0)
a, b, cost = rng.random(7), rng.random(9), rng.random((7, 9))
b *= a.sum() / b.sum()
plan = solve_emd(a, b, cost)
{LOADED}
import ot
print(np.allclose(ot.emd(a, b, cost), plan.flow), abs(ot.emd2(a, b, cost) - plan.cost) < 1e-12)
x, y = rng.random(5), rng.random(6)
print(ot.emd_1d(x, y).shape, "emd_wrap" in dir(ot.lp))
"""
    assert _python(code).splitlines() == ["[]", "True True", "(5, 6) True"]


def test_the_solver_falls_back_to_the_plain_import_when_the_module_cannot_load_alone() -> None:
    code = f"""
import importlib.machinery
original, refused = importlib.machinery.ExtensionFileLoader.exec_module, []
def refuse_once(self, module):  # the load alone fails once, as on a POT of another layout
    if module.__name__ == "ot.lp.emd_wrap" and not refused:
        refused.append(module)
        raise ImportError("another layout")
    return original(self, module)
importlib.machinery.ExtensionFileLoader.exec_module = refuse_once
import numpy as np
from emdcli.matching.transport import solve_emd
plan = solve_emd(np.array([0.5, 0.5]), np.array([0.5, 0.5]), np.array([[0.0, 1.0], [1.0, 0.0]]))
print(plan.cost)
{LOADED}
"""
    assert _python(code).splitlines() == ["0.0", "['networkx', 'ot', 'scipy']"]  # the plain import's cost


def test_an_imported_pot_is_used_as_it_is() -> None:
    code = """
import ot
import numpy as np
from emdcli.matching.transport import network_simplex
print(network_simplex() is ot.lp.emd_wrap.emd_c)
"""
    assert _python(code) == "True"


def test_threads_that_solve_at_once_load_the_solver_once() -> None:
    """evaluate's episodes solve on several threads from the start: one loads, the others wait."""
    code = f"""
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from emdcli.matching.transport import solve_emd
def one(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random(5), rng.random(5)
    return solve_emd(a, b * a.sum() / b.sum(), rng.random((5, 5))).cost
with ThreadPoolExecutor(8) as pool:
    costs = list(pool.map(one, range(32)))
print(len(costs), all(c >= 0 for c in costs))
{LOADED}
"""
    assert _python(code).splitlines() == ["32 True", "[]"]
