"""DeepEMD's Structured Fully Connected layer (SFC) for k-shot classes, in numpy.

Each class gets one learnable node set P_k of shape (n, C), initialised to the mean of
its shots' nodes and fitted so that the support images themselves are classified by
their EMD scores (cross-entropy of ``TEMPERATURE * score``). The score of support image
s against class k is ``sum_ij F_ij cos(u_si, p_kj)`` with F the optimal flow; by the
envelope theorem its gradient with respect to the costs is the flow itself, so the
solver is never differentiated. Node weights are recomputed at every step and treated
as constants, as in DeepEMD's OpenCV solver path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .nodes import TEMPERATURE, WEIGHT_EPS, Nodes
from .transport import emd_flow_trusted

#: Full-batch Adam steps and step size (in units of the nodes' mean absolute value).
SFC_STEPS = 10
SFC_LR = 0.2
#: Part of every stored fit's key: bump it whenever the fit's code changes its result.
FIT_VERSION = 1


@dataclass(frozen=True)
class SFCFit:
    """Fitted class node sets.

    nodes: (way, n, C) float32, one node set per class.
    losses: the support-set cross-entropy (nats) before each step (and after the last, if asked).
    """

    nodes: np.ndarray
    losses: tuple[float, ...]


def _unit(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-node centred, L2-normalised ``p`` ((..., n, C)) and the norms before normalising (..., n, 1)."""
    c = p - p.mean(axis=-1, keepdims=True)
    norm = np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
    return c / norm, norm


def _loss_and_grad(
    p: np.ndarray, shots: list[Nodes], labels: np.ndarray, temperature: float, pool: Executor | None = None
) -> tuple[float, np.ndarray]:
    """Support cross-entropy and its gradient with respect to ``p`` ((way, n, C) float64); the EMD
    solves run in ``pool`` when given (the result is the same)."""
    way, n = p.shape[:2]
    unit_p, norm_p = _unit(p)
    mean_p = p.mean(axis=1)  # (way, C)
    m = p.shape[1]
    units = np.concatenate([s.unit for s in shots]).astype(np.float64)  # (S*n, C)
    cos_all = np.clip(units @ unit_p.reshape(way * m, -1).T, -1.0, 1.0)  # (S*n, way*m)
    wc_all = np.maximum(np.stack([s.mean for s in shots]).astype(np.float64) @ p.reshape(way * m, -1).T, 0.0)
    wc_all += WEIGHT_EPS  # (S, way*m)
    scores = np.empty((len(shots), way))
    flows = np.empty((way, len(shots), n, m))  # flows[k, s]: support image s against class k
    problems = []  # (s, k, a, b, cost): every support image against every class
    for s, node in enumerate(shots):
        rows = slice(s * node.count, (s + 1) * node.count)
        wq = np.maximum(node.raw.astype(np.float64) @ mean_p.T, 0.0) + WEIGHT_EPS  # (n, way)
        for k in range(way):
            cols = slice(k * m, (k + 1) * m)
            a = np.ascontiguousarray(wq[:, k] / wq[:, k].sum())
            b = wc_all[s, cols] / wc_all[s, cols].sum()
            problems.append((s, k, a, b, np.ascontiguousarray(1.0 - cos_all[rows, cols])))
    # the solves are independent and the solver releases the GIL: they run on every core
    solved = (
        pool.map(lambda q: emd_flow_trusted(q[2], q[3], q[4]), problems)
        if pool
        else map(lambda q: emd_flow_trusted(q[2], q[3], q[4]), problems)
    )
    for (s, k, *_), (flow, cost) in zip(problems, solved, strict=True):
        flows[k, s] = flow
        scores[s, k] = 1.0 - cost
    logits = temperature * scores
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    loss = float(-np.mean(np.log(prob[np.arange(len(shots)), labels] + 1e-300)))
    d_scores = prob.copy()
    d_scores[np.arange(len(shots)), labels] -= 1.0
    d_scores *= temperature / len(shots)
    # d score[s, k] / d p_unit[k, j] = sum_i F[k, s]_ij u_si: one (m, S*n) @ (S*n, C) product per class.
    weighted = flows * d_scores.T[:, :, None, None]  # (way, S, n, m)
    grad_unit = np.stack([weighted[k].reshape(-1, m).T @ units for k in range(way)])
    # Back through the per-node normalisation and centring.
    radial = np.sum(unit_p * grad_unit, axis=-1, keepdims=True)
    grad_c = (grad_unit - unit_p * radial) / norm_p
    return loss, grad_c - grad_c.mean(axis=-1, keepdims=True)


def fit_sfc(
    shots: np.ndarray | Sequence[np.ndarray],
    *,
    steps: int = SFC_STEPS,
    lr: float = SFC_LR,
    temperature: float = TEMPERATURE,
    final_loss: bool = False,
    workers: int | None = None,
) -> SFCFit:
    """Fit one node set per class to the support set.

    shots: (way, shot, n, C) float32 nodes of every support image, or a sequence of
    (shot_k, n, C) arrays when classes have different numbers of shots.
    Returns the (way, n, C) fitted node sets, starting from the per-class mean; with
    ``final_loss`` the loss after the last step is computed too (one more pass). workers: threads
    that solve each step's EMD problems (None: one per usable core; the fit is the same).
    """
    from ..model.backbone import usable_cores

    workers = workers or usable_cores()
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="emdcli-sfc") as pool:
            return _fit(shots, steps, lr, temperature, final_loss, pool)
    return _fit(shots, steps, lr, temperature, final_loss, None)


def _fit(
    shots: np.ndarray | Sequence[np.ndarray],
    steps: int,
    lr: float,
    temperature: float,
    final_loss: bool,
    pool: Executor | None,
) -> SFCFit:
    per_class = [np.asarray(c, dtype=np.float32) for c in shots]
    support = [Nodes.from_feature_map(x) for c in per_class for x in c]
    labels = np.concatenate([np.full(len(c), k) for k, c in enumerate(per_class)])
    p = np.stack([c.astype(np.float64).mean(axis=0) for c in per_class])
    step = lr * float(np.mean(np.abs(p)))
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    b1, b2 = 0.9, 0.999
    losses = []
    for t in range(1, steps + 1):
        loss, grad = _loss_and_grad(p, support, labels, temperature, pool)
        losses.append(loss)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        p -= step * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-12)
    if final_loss:
        losses.append(_loss_and_grad(p, support, labels, temperature, pool)[0])
    return SFCFit(nodes=p.astype(np.float32), losses=tuple(losses))


class FitStore(Protocol):
    """Where fitted node sets are kept between runs (a :class:`~emdcli.features.cache.FeatureCache`)."""

    def get_fit(self, digest: str) -> np.ndarray | None: ...

    def put_fit(self, digest: str, nodes: np.ndarray) -> None: ...


def fit_digest(shots: Sequence[np.ndarray]) -> str:
    """The sha256 (hex) of what :func:`fit_sfc` with its defaults computes from: every class's (shot, n, C)
    nodes as float32 bytes, in order, the settings and :data:`FIT_VERSION`. Any change to one example
    of any class changes it (the fit couples the classes: each class's nodes are fitted against all)."""
    h = hashlib.sha256(f"sfc/{FIT_VERSION}/{SFC_STEPS}/{SFC_LR!r}/{TEMPERATURE!r}/{WEIGHT_EPS!r}".encode())
    for c in shots:
        arr = np.ascontiguousarray(c, dtype=np.float32)
        h.update(repr(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def fitted_nodes(shots: Sequence[np.ndarray], store: FitStore | None = None) -> np.ndarray:
    """(way, n, C) float32: :func:`fit_sfc`'s nodes for ``shots`` (a sequence of (shot_k, n, C) arrays),
    read from ``store`` when it holds the fit of exactly these shots (:func:`fit_digest`), else fitted
    and put there."""
    if store is None:
        return fit_sfc(shots).nodes
    digest = fit_digest(shots)
    first = np.asarray(shots[0])
    found = store.get_fit(digest)
    if found is not None and found.shape == (len(shots), *first.shape[1:]):
        return found
    nodes = fit_sfc(shots).nodes
    store.put_fit(digest, nodes)
    return nodes
