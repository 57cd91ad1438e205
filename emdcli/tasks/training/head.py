"""The EMD head in torch: DeepEMD's logits of an episode's queries, the episode's loss, the head's
output maps and their validation by emdcli's own methods on fixed episodes.

A query's logit for a class is ``TEMPERATURE * sum(flow * cos)`` over node pairs: the cosines of
per-node-centred features, and the flow POT's exact EMD plan between the cross-reference weights,
both weights and flow held constant (since d EMD / d cost is the flow, the gradient through the
cost is exact).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ...matching.nodes import TEMPERATURE, WEIGHT_EPS
from ...matching.transport import emd_flow_trusted
from ...model import trainable
from ..episodes import EpisodePlan
from ..evaluate import evaluate_episodes, mean_ci95
from .settings import SELECT_BY, VAL_METHODS, Validation

#: Trunk maps per forward pass when computing validation features.
FEATURE_BATCH = 64


def emd_logits(query: Any, support: Any) -> Any:
    """DeepEMD's logits: (Q, C, n) query nodes and (W, C, m) class nodes -> (Q, W) torch tensor.

    ``TEMPERATURE * sum(flow * cos)`` over node pairs, where cos is between per-node-centred,
    unit-length nodes and flow is the exact EMD plan between the cross-reference weights of the
    raw nodes. Weights and flow carry no gradient. Equals TEMPERATURE times emdcli's EMD score.
    """
    torch = trainable.require_torch()
    fn = torch.nn.functional
    q = query.transpose(1, 2)  # (Q, n, C)
    s = support.transpose(1, 2)  # (W, m, C)
    q_unit = fn.normalize(q - q.mean(-1, keepdim=True), dim=-1, eps=1e-12)
    s_unit = fn.normalize(s - s.mean(-1, keepdim=True), dim=-1, eps=1e-12)
    cos = torch.einsum("anc,bmc->abnm", q_unit, s_unit)  # (Q, W, n, m)
    with torch.no_grad():
        wq = torch.relu(torch.einsum("anc,bc->abn", q, s.mean(1))) + WEIGHT_EPS  # (Q, W, n)
        ws = torch.relu(torch.einsum("bmc,ac->abm", s, q.mean(1))) + WEIGHT_EPS  # (Q, W, m)
        wq = np.ascontiguousarray((wq / wq.sum(-1, keepdim=True)).double().cpu().numpy())
        ws = np.ascontiguousarray((ws / ws.sum(-1, keepdim=True)).double().cpu().numpy())
        cost = np.clip(1.0 - cos.detach().double().cpu().numpy(), 0.0, 2.0)
        flow = np.empty_like(cost)
        for a in range(cost.shape[0]):
            for b in range(cost.shape[1]):
                flow[a, b] = emd_flow_trusted(wq[a, b], ws[a, b], np.ascontiguousarray(cost[a, b]))[0]
    flow_t = torch.from_numpy(flow).to(cos.device, cos.dtype)
    return TEMPERATURE * (flow_t * cos).sum(dim=(-1, -2))


def episode_loss(head: Any, maps: Any, way: int, shot: int, query: int) -> tuple[Any, float]:
    """Cross-entropy of one episode and its query accuracy (0..1).

    maps: (way * (shot + query), C, H, W) trunk maps, class by class, each class's ``shot``
    support images first. A class's nodes are its support maps' mean (as emdcli's ``mean``).
    """
    torch = trainable.require_torch()
    out = head(maps)
    b, c, h, w = out.shape
    out = out.reshape(way, shot + query, c, h * w)
    support = out[:, :shot].mean(1)
    queries = out[:, shot:].reshape(way * query, c, h * w)
    logits = emd_logits(queries, support)
    labels = torch.arange(way, device=logits.device).repeat_interleave(query)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return loss, accuracy


def output_maps(head: Any, trunk: np.ndarray, device: Any) -> np.ndarray:
    """(N, C, H, W) float32 output maps of ``head`` (in eval mode, no gradient) on trunk maps."""
    torch = trainable.require_torch()
    was_training = head.training
    head.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(trunk), FEATURE_BATCH):
            out.append(head(torch.from_numpy(trunk[i : i + FEATURE_BATCH]).to(device)).float().cpu().numpy())
    if was_training:
        trainable.freeze_batchnorm(head)
    return np.concatenate(out)


def validate(
    head: Any, trunk: np.ndarray, plan: EpisodePlan, episode: int, device: Any, parent: Validation | None = None
) -> Validation:
    """Score VAL_METHODS on ``plan``'s episodes, with the features of ``head`` on ``trunk`` maps, and
    the paired gain of SELECT_BY over ``parent`` (the validation before training; None: this is it)."""
    t0 = time.perf_counter()
    features = output_maps(head, trunk, device)
    evaluation = evaluate_episodes(features, plan, VAL_METHODS, workers=os.cpu_count() or 1)
    acc = {r.method: r.accuracy for r in evaluation.results}
    ci = {r.method: r.ci95 for r in evaluation.results}
    mine = evaluation.per_episode[SELECT_BY]
    gain, gain_ci = (0.0, 0.0) if parent is None else mean_ci95(100 * (mine - np.asarray(parent.per_episode)))
    return Validation(episode, acc, ci, time.perf_counter() - t0, gain, gain_ci, tuple(float(a) for a in mine))
