"""Retrieval quality of global cosine alone vs DeepEMD re-ranking (emdcli.tasks.search).

Every image of a set (one folder per class under DATA/SET) is a query against the rest
of its set, itself excluded; the images of its class are the relevant ones. For each
query this runs :func:`emdcli.tasks.search.rank_gallery` three times on the same gallery:

- ``global``: global cosine only (``rerank="none"``),
- ``emd``: the ``--shortlist`` globally closest re-ranked by EMD score,
- ``emd+W*global``: the same shortlist re-ranked by EMD score + W x global cosine, for
  each W of ``--global-weights`` (default: ``emdcli.defaults.RERANK_GLOBAL_WEIGHT``),

and reports recall@1 (the first hit is of the query's class) and mAP@R (R = number of
other images of the query's class; AP@R = (1/R) sum_{i<=R} precision@i * rel_i), in
percent, with the paired difference to ``global`` (mean +- 1.96 * std / sqrt(queries)),
and the wall time per query (single-threaded). Images are embedded once with the bundled
model through the library's feature cache (set EMDCLI_CACHE_DIR to share it).

    EMDCLI_CACHE_DIR=/tmp/emdcli-bench-cache OPENBLAS_NUM_THREADS=1 \\
        python benchmarks/retrieval.py --data ../shared/data --shortlist 50
"""

from __future__ import annotations

import os

# Single-threaded matrix products: the numbers are per query on one core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import cached_source, command_line, difference_text, embed_set, set_names

from emdcli.defaults import RERANK_GLOBAL_WEIGHT
from emdcli.tasks.search import GalleryIndex, Rerank, rank_gallery


def average_precision_at_r(rel: np.ndarray) -> float:
    """AP@R of a (R,) 0/1 relevance vector of the first R hits."""
    r = len(rel)
    precision = np.cumsum(rel) / np.arange(1, r + 1)
    return float((precision * rel).sum() / r)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--sets", default="", help="comma-separated subset of set names")
    ap.add_argument("--shortlist", type=int, default=50, help="images re-ranked by EMD (0 = all)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N queries of each set (0 = all)")
    ap.add_argument(
        "--global-weights", default=f"{RERANK_GLOBAL_WEIGHT:g}", help="comma-separated weights for emd+global"
    )
    args = ap.parse_args()
    # (row name, rerank, global weight)
    modes: list[tuple[str, Rerank, float]] = [("global", "none", 0.0), ("emd", "emd", 0.0)]
    modes += [(f"emd+{float(w):g}*global", "emd+global", float(w)) for w in args.global_weights.split(",")]
    backbone, source = cached_source()
    names = set_names(args.data, args.sets)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        paths, labels, fmaps = embed_set(source, args.data / name)
        t_embed = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = GalleryIndex.from_features(paths, fmaps)
        t_index = time.perf_counter() - t0
        print(f"# {name}: {len(paths)} images embedded in {t_embed:.1f}s, indexed in {t_index:.1f}s", file=sys.stderr)
        label_of = {p: int(lab) for p, lab in zip(paths, labels, strict=True)}
        counts = np.bincount(labels)
        queries = range(len(paths)) if not args.limit else range(min(args.limit, len(paths)))
        for _, rerank, w in modes:  # warm-up, not timed
            rank_gallery(index, fmaps[0], top_k=10, shortlist=args.shortlist, rerank=rerank, exclude=0, global_weight=w)
        r1: dict[str, list[float]] = {m[0]: [] for m in modes}
        ap_r: dict[str, list[float]] = {m[0]: [] for m in modes}
        secs = dict.fromkeys(r1, 0.0)
        for i in queries:
            r = int(counts[labels[i]]) - 1
            for mode, rerank, w in modes:
                t0 = time.perf_counter()
                kw = {"shortlist": args.shortlist, "rerank": rerank, "exclude": i, "global_weight": w}
                hits = rank_gallery(index, fmaps[i], top_k=max(r, 1), **kw)
                secs[mode] += time.perf_counter() - t0
                rel = np.array([label_of[h.path] == labels[i] for h in hits], dtype=np.float64)
                r1[mode].append(float(rel[0]))
                ap_r[mode].append(average_precision_at_r(rel[:r]) if r else 0.0)
        n = len(queries)
        base_r1, base_ap = np.array(r1["global"]), np.array(ap_r["global"])
        for mode, _, _ in modes:
            a, m = np.array(r1[mode]), np.array(ap_r[mode])
            d_r1 = "" if mode == "global" else difference_text(a - base_r1)
            d_ap = "" if mode == "global" else difference_text(m - base_ap)
            row = (
                f"| {name} | {n} | {len(counts)} | {mode} | {100 * a.mean():.1f} | {d_r1} "
                f"| {100 * m.mean():.1f} | {d_ap} | {1000 * secs[mode] / n:.1f} |"
            )
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    cmd = command_line()
    env = f"EMDCLI_CACHE_DIR={os.environ.get('EMDCLI_CACHE_DIR', '')} OPENBLAS_NUM_THREADS=1"
    print(f"Retrieval, leave-one-out, bundled model {backbone.manifest.name} ({backbone.manifest.sha256[:12]}), ")
    print(f"re-ranking shortlist {args.shortlist or 'all'}; recall@1 and mAP@R in %, differences vs global ± 95% CI;")
    print(f"ms per query single-threaded. Reproduce: `{env} {cmd}`")
    print()
    print("| set | queries | classes | ranking | recall@1 | Δ recall@1 | mAP@R | Δ mAP@R | ms/query |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("retrieval"):
        raise SystemExit(main())
