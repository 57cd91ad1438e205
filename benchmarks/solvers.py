"""Exact EMD solvers compared on identical DeepEMD problems from real features.

Problems: the bundled model's 49-node feature maps of images from a set under DATA
(default tuxpaint), each query against 5 class means, with cross-reference weights and
the 1 - cos cost, exactly as `emdcli classify` builds them. Each solver gets the same
(a, b, cost); reported: median and mean microseconds per pair, and the largest
difference of the transport cost from POT's network simplex.

    pip install opencv-python-headless   # optional: adds OpenCV's cv2.EMD (DeepEMD's choice)
    python benchmarks/solvers.py [--data ../shared/data] [--set tuxpaint] [--pairs 2000]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from emdcli.io.images import iter_image_files, load_image  # noqa: E402
from emdcli.matching.nodes import Nodes, cost_matrix, cross_reference_weights  # noqa: E402
from emdcli.matching.transport import MAX_ITER, emd_cost_trusted, solve_emd  # noqa: E402
from emdcli.model.backbone import Backbone  # noqa: E402
from emdcli.model.manifest import resolve_model_path  # noqa: E402


def problems(data: Path, name: str, count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    backbone = Backbone(resolve_model_path(None), device="cpu")
    files = sorted(iter_image_files(data / name))[:120]
    feats = np.concatenate(
        [backbone(np.stack([load_image(f, backbone.manifest.preprocess) for f in files[i : i + 16]]))
         for i in range(0, len(files), 16)]
    )  # fmt: skip
    rng = np.random.default_rng(0)
    out = []
    while len(out) < count:
        q = Nodes.from_feature_map(feats[rng.integers(len(feats))])
        c = Nodes.from_feature_map(feats[rng.choice(len(feats), 5, replace=False)].mean(axis=0))
        a, b = cross_reference_weights(q, c)
        out.append((a, b, cost_matrix(q, c)))
    return out


def solvers() -> dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]]:
    import ot
    from ot.lp.emd_wrap import emd_c

    found: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
        "POT ot.emd2 (public API)": lambda a, b, m: float(ot.emd2(a, b, m)),
        "POT emd_c (low-level, as emdcli)": lambda a, b, m: float(emd_c(a, b, m, MAX_ITER, 1)[1]),
        "emdcli solve_emd (emd_c + checks, for untrusted input)": lambda a, b, m: solve_emd(a, b, m).cost,
        "emdcli emd_cost_trusted (classify's hot path)": emd_cost_trusted,
    }
    try:
        import cv2

        def opencv(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
            s1 = a.astype(np.float32).reshape(-1, 1)
            s2 = b.astype(np.float32).reshape(-1, 1)
            return float(cv2.EMD(s1, s2, cv2.DIST_USER, cost=m.astype(np.float32))[0])

        found[f"OpenCV cv2.EMD {cv2.__version__} (float32)"] = opencv
    except ImportError:
        pass
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--set", default="tuxpaint")
    ap.add_argument("--pairs", type=int, default=2000)
    args = ap.parse_args()
    probs = problems(args.data, args.set, args.pairs)
    n = probs[0][2].shape
    rows = []
    reference = None
    for name, solve in solvers().items():
        solve(*probs[0])  # warm up (imports)
        times, costs = [], []
        for a, b, m in probs:
            t0 = time.perf_counter()
            costs.append(solve(a, b, m))
            times.append(time.perf_counter() - t0)
        costs_arr = np.array(costs)
        if reference is None:
            reference = costs_arr
        diff = float(np.max(np.abs(costs_arr - reference)))
        rows.append((name, 1e6 * float(np.median(times)), 1e6 * float(np.mean(times)), diff))
    print(f"{len(probs)} problems of {n[0]} x {n[1]} nodes from {args.set}; one core; times per pair")
    print("| solver | median µs | mean µs | max |cost - POT| |")
    print("|---|---|---|---|")
    for name, med, mean, diff in rows:
        print(f"| {name} | {med:.0f} | {mean:.0f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("solvers"):
        raise SystemExit(main())
