"""Anomaly detection by DeepEMD (emdcli.tasks.anomaly) vs global cosine: AUROC per image set.

For each set (one folder per class under DATA/SET), every class with at least
``--n-normal + --min-held`` images (a seeded sample of ``--max-classes`` of them when
there are more) is in turn the normal class:

- normal set: ``--n-normal`` seeded images of the class;
- test: the class's remaining images (normal) and a seeded sample of
  ``max(remaining, --anomalies)`` images of the set's other classes (anomalies).

Each test image gets two scores, higher = more anomalous:

- ``emd``: :func:`emdcli.tasks.anomaly.anomaly_scores`, mean ``1 - EMD score`` over its k
  nearest normal images;
- ``global``: mean ``1 - cosine`` over its k nearest normal images by pooled features
  centred on the normal set's mean and L2-normalised (CL2N);
- ``global-l2``: the same without centring (pooled features only L2-normalised). Centring
  on a one-class normal set removes the direction the class shares, so this uncentred
  cosine is the stronger global baseline here.

AUROC is the Mann-Whitney rank-sum statistic (ties count half), averaged over the
classes, in percent; a paired difference emd - global is the mean over classes
+- 1.96 * std / sqrt(classes). ``FPR``/``TPR`` are the EMD score's rates on the held-out
normal images and on the anomalies at the threshold :func:`emdcli.tasks.anomaly.calibrate`
sets from the normal set alone (``--contamination``). Seeded and deterministic. Images
are embedded once with the bundled model through the library's feature cache.

    EMDCLI_CACHE_DIR=/tmp/emdcli-bench-cache OPENBLAS_NUM_THREADS=1 \\
        python benchmarks/anomaly.py --data ../shared/data --n-normal 10 --ks 1,3
"""

from __future__ import annotations

import os

# Single-threaded matrix products: the timings are on one core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from common import cached_source, command_line, difference_text, embed_set, set_names

from emdcli.matching.nodes import l2_normalise
from emdcli.matching.simpleshot import pooled
from emdcli.tasks.anomaly import NormalSet, anomaly_scores, calibrate


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the (n,) bool ``positive`` labels, by the
    rank-sum formula with average ranks (ties count half)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    start = 0
    while start < len(s):  # average rank over each run of ties
        stop = start + 1
        while stop < len(s) and sorted_s[stop] == sorted_s[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2.0  # mean of 1-based ranks start+1..stop
        start = stop
    n_pos = int(positive.sum())
    n_neg = len(s) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def global_scores(normal_fmaps: np.ndarray, test_fmaps: np.ndarray, k: int, centred: bool = True) -> np.ndarray:
    """(T,) mean ``1 - cosine`` to the k nearest normal images by pooled features, centred on
    the normal mean (CL2N) or not, then L2-normalised."""
    g = pooled(normal_fmaps)
    centre = g.mean(axis=0) if centred else np.zeros(g.shape[1])
    cos = l2_normalise(pooled(test_fmaps) - centre) @ l2_normalise(g - centre).T  # (T, n)
    return (1.0 - -np.sort(-cos, axis=1)[:, : min(k, len(g))]).mean(axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--sets", default="", help="comma-separated subset of set names")
    ap.add_argument("--n-normal", type=int, default=10, help="normal images per class")
    ap.add_argument("--min-held", type=int, default=5, help="a class needs this many held-out normal images")
    ap.add_argument("--anomalies", type=int, default=50, help="anomalies per class (at least the held-out count)")
    ap.add_argument("--max-classes", type=int, default=40, help="seeded sample of classes per set")
    ap.add_argument("--ks", default="1,3", help="comma-separated k values (nearest normal images averaged)")
    ap.add_argument("--contamination", type=float, default=0.05, help="for the calibrated threshold")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    backbone, source = cached_source()
    names = set_names(args.data, args.sets)
    rows, timings = [], []
    for name in names:
        paths, labels, fmaps = embed_set(source, args.data / name)
        rng = np.random.default_rng([args.seed, zlib.crc32(name.encode())])
        counts = np.bincount(labels)
        eligible = np.flatnonzero(counts >= args.n_normal + args.min_held)
        if len(eligible) > args.max_classes:
            eligible = np.sort(rng.choice(eligible, size=args.max_classes, replace=False))
        if len(eligible) == 0:
            print(f"# {name}: no class has {args.n_normal + args.min_held} images; skipped", file=sys.stderr)
            continue
        res: dict[tuple[str, int], list[float]] = {}
        rates: dict[int, list[tuple[float, float]]] = {k: [] for k in ks}
        n_held, n_anom, secs, n_scored = [], [], 0.0, 0
        for c in eligible:
            members = rng.permutation(np.flatnonzero(labels == c))
            normal_idx, held = members[: args.n_normal], members[args.n_normal :]
            others = np.flatnonzero(labels != c)
            anomalies = rng.choice(others, size=min(max(len(held), args.anomalies), len(others)), replace=False)
            test = np.concatenate([held, anomalies])
            positive = np.r_[np.zeros(len(held), bool), np.ones(len(anomalies), bool)]
            n_held.append(len(held))
            n_anom.append(len(anomalies))
            normal = NormalSet.from_features([paths[i] for i in normal_idx], fmaps[normal_idx])
            for k in ks:
                t0 = time.perf_counter()
                emd = np.array([anomaly_scores(normal, fmaps[t], k=k) for t in test])
                secs += time.perf_counter() - t0
                n_scored += len(test)
                res.setdefault(("emd", k), []).append(auroc(emd, positive))
                for method, centred in (("global", True), ("global-l2", False)):
                    glob = global_scores(fmaps[normal_idx], fmaps[test], k, centred)
                    res.setdefault((method, k), []).append(auroc(glob, positive))
                cal = calibrate(normal, k=k, contamination=args.contamination)
                flagged = emd > cal.threshold
                rates[k].append((float(flagged[~positive].mean()), float(flagged[positive].mean())))
        for k in ks:
            e, g, gl = (np.array(res[(m, k)]) for m in ("emd", "global", "global-l2"))
            fpr, tpr = np.array(rates[k]).mean(axis=0)
            d, dl = e - g, e - gl
            row = (
                f"| {name} | {len(eligible)} | {args.n_normal} | {np.mean(n_held):.1f} | {np.mean(n_anom):.1f} | {k} "
                f"| {100 * e.mean():.1f} | {100 * g.mean():.1f} | {100 * gl.mean():.1f} "
                f"| {difference_text(d)} | {difference_text(dl)} "
                f"| {int((e > gl).sum())}/{int((e < gl).sum())} | {100 * fpr:.1f} | {100 * tpr:.1f} |"
            )
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
        timings.append(f"{name}: {1000 * secs / n_scored:.2f} ms per EMD anomaly score ({n_scored} scored)")
        print(f"# {timings[-1]}", file=sys.stderr, flush=True)
    cmd = command_line()
    env = f"EMDCLI_CACHE_DIR={os.environ.get('EMDCLI_CACHE_DIR', '')} OPENBLAS_NUM_THREADS=1"
    model = f"{backbone.manifest.name} ({backbone.manifest.sha256[:12]})"
    print(f"Anomaly detection, bundled model {model}, seed {args.seed};")
    print("AUROC in %, mean over normal classes; Δ = emd minus that global score ± 95% CI over classes;")
    print("wins = classes where emd / global-l2 has the higher AUROC; FPR/TPR (%) of the EMD score at the")
    print(f"threshold calibrate() sets on the normal images (contamination {args.contamination}).")
    print(f"Reproduce: `{env} {cmd}`")
    print()
    print(
        "| set | classes | normal | held-out normal | anomalies | k | AUROC emd | AUROC global | AUROC global-l2 "
        "| Δ global | Δ global-l2 | wins | FPR | TPR |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("Single-threaded: " + "; ".join(timings))
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("anomaly"):
        raise SystemExit(main())
