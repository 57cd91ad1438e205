"""The accuracy ``emdcli watch`` gives up by matching images as they arrive instead of as one set.

``watch`` matches the images already in the inbox as one set (as ``classify`` matches a folder), and
later ones in the groups that become ready together: one at a time when they trickle in. Matching
them one by one is ``classify --no-transductive``; the transductive step needs a set.

On the **eval** classes of each set (split seed 0, as benchmarks/transductive.py), 5-way episodes at
1 and 5 shots with ``--queries`` per class (5 where a set has too few images for more), the queries
arrive in a random order and are matched as ``watch`` would: in groups of ``b`` consecutive arrivals,
for b = 1 (each on its own), 5, 25 and all of them (one set: the backlog, or ``classify``). Printed:
accuracy ± 95% interval for b = all, and the paired difference of each smaller b to it, per set; then
the mean over the sets. Features: the bundled int8 model through the feature cache.

    python benchmarks/watch_accuracy.py --episodes 40
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, difference_text  # noqa: E402
from transductive import split  # noqa: E402

from emdcli.tasks.evaluate import mean_ci95  # noqa: E402

SETS = ("cards", "glyphs", "icons", "openclipart", "tuxpaint")
BURSTS = (1, 5, 25)


def eval_features(data: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) features and (N,) labels of the eval half of a set's classes (feature cache)."""
    from emdcli.features.cache import FeatureCache
    from emdcli.features.source import FeatureSource
    from emdcli.io.folders import read_labelled_folder
    from emdcli.model.backbone import load_model

    folder = read_labelled_folder(data / name)
    _, held_out = split(list(folder.names), 0)
    folder = replace(folder, classes=tuple(c for c in folder.classes if c.name in held_out))
    model = load_model()
    found = FeatureSource(model, cache=FeatureCache.for_model(model.manifest, max_bytes=2**31)).labelled(folder)
    assert found.features is not None
    return found.features, found.labels


def episode_accuracy(
    features: np.ndarray, labels: np.ndarray, shot: int, queries: int, seed: int
) -> dict[str, float] | None:
    """Accuracy of one 5-way episode for each group size (None when the set is too small)."""
    from emdcli.matching.support import Matcher

    rng = np.random.default_rng(seed)
    big = [k for k in np.unique(labels) if (labels == k).sum() >= shot + queries]
    if len(big) < 5:
        return None
    classes = rng.choice(big, 5, replace=False)
    support, query, truth = [], [], []
    for i, k in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == k))[: shot + queries]
        support.append(features[idx[:shot]])
        query += list(idx[shot:])
        truth += [i] * queries
    order = rng.permutation(len(query))  # the order of arrival
    maps, truth_arr = features[np.asarray(query)[order]], np.asarray(truth)[order]
    matcher = Matcher()
    nodes = matcher.fit(list(np.stack(support)))
    parts = [matcher.match(nodes, q) for q in maps]
    found = {}
    for b, key in ((len(maps), "all"), *((b, str(b)) for b in BURSTS)):
        if key != "all" and b >= len(maps):  # one group of all: the same as "all"
            found[key] = found["all"]
            continue
        picks = []
        for start in range(0, len(maps), b):
            scores = matcher.score_set(nodes, parts[start : start + b], maps[start : start + b]).scores
            picks += list(np.nanargmax(scores, axis=1))
        found[key] = float(np.mean(np.asarray(picks) == truth_arr))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"$ {command_line()}\n")
    print(f"Eval classes (split seed 0), 5-way, {args.episodes} episodes per set and shot count (seed {args.seed}), "
          f"queries in a random order of arrival, matched in groups of b consecutive arrivals. Accuracy % ± 95% "
          f"interval with all matched as one set; for smaller b the paired difference to it, in points.\n")  # fmt: skip
    means: dict[tuple[int, str], list[float]] = {}
    for shot in (1, 5):
        print(f"### 5-way {shot}-shot\n")
        print("| set | queries per class | all as one set | " + " | ".join(f"b = {b}" for b in BURSTS) + " | s |")
        print("|---|---|---|" + "---|" * len(BURSTS) + "---|")
        for name in SETS:
            t0 = time.perf_counter()
            features, labels = eval_features(args.data, name)
            for queries in (args.queries, 5):
                run = [(features, labels, shot, queries, args.seed * 100_000 + e) for e in range(args.episodes)]
                with ThreadPoolExecutor(2) as pool:
                    found = list(pool.map(lambda a: episode_accuracy(*a), run))
                if all(f is not None for f in found):
                    break
            rows = [f for f in found if f is not None]
            whole = np.array([r["all"] for r in rows])
            mean, half = mean_ci95(whole)
            cells = []
            for b in BURSTS:
                diff = np.array([r[str(b)] for r in rows]) - whole
                cells.append(difference_text(diff))
                means.setdefault((shot, str(b)), []).append(float(diff.mean()))
            means.setdefault((shot, "all"), []).append(float(whole.mean()))
            print(f"| {name} | {queries} | {100 * mean:.1f} ± {100 * half:.1f} | {' | '.join(cells)} | "
                  f"{time.perf_counter() - t0:.0f} |")  # fmt: skip
        print()
    print("Mean over the sets:\n")
    print("| shots | all as one set | " + " | ".join(f"b = {b}" for b in BURSTS) + " |")
    print("|---|---|" + "---|" * len(BURSTS))
    for shot in (1, 5):
        cells = [f"{100 * np.mean(means[(shot, str(b))]):+.2f}" for b in BURSTS]
        print(f"| {shot} | {100 * np.mean(means[(shot, 'all')]):.2f} | {' | '.join(cells)} |")


if __name__ == "__main__":
    from common import publish

    with publish("watch_accuracy"):
        main()
