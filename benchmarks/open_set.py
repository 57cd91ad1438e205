"""Open-set rejection ("none of these"): what it costs in-set and what it rejects out of set.

Each episode of a set draws N known classes (K shots and Q queries each) and, as out-of-set
queries, Q images of each of M other classes of the same set ("near": classes the support set
lacks) and N*Q images of the other sets ("far": other domains). All queries are matched as one
set, as ``emdcli classify`` matches a folder. For each query it records:

- which score separates in-set from out-of-set queries: AUROC of the best inductive class score
  (emdcli.matching.rejection.open_set_scores, what ``--reject`` uses), of the best final score,
  of the margin of the final best over the runner-up, and of the best global cosine;
- with the threshold calibrated on the support set (leave-class-out, see
  emdcli/matching/rejection.py) at each ``--leaks`` value: in-set accuracy without and with
  rejection (a rejected in-set query counts as wrong), the share of in-set queries rejected,
  and the shares of near and far out-of-set queries rejected.

The classes of each set are split in two by benchmarks/transductive.py's seeded permutation:
choose the leak on ``--half dev``, report it on ``--half eval``.

    python benchmarks/open_set.py --data ../shared/data --half eval --episodes 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cached_source, command_line, embed_set  # noqa: E402
from transductive import SETS, split  # noqa: E402

from emdcli.io.folders import read_labelled_folder  # noqa: E402
from emdcli.matching.rejection import open_set_scores, simulated_out_of_set  # noqa: E402
from emdcli.matching.support import Matcher  # noqa: E402
from emdcli.tasks.open_set import auroc  # noqa: E402

SCORES = ("inductive best", "final best", "final margin", "global best")


def half_of(data: Path, name: str, half: str, split_seed: int, source: object) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) maps and (N,) labels (0..) of the images of one half of a set's classes."""
    folder = read_labelled_folder(data / name)
    dev, held_out = split(list(folder.names), split_seed)
    keep = [folder.names.index(c) for c in (dev if half == "dev" else held_out)]
    _, labels, maps = embed_set(source, data / name)  # type: ignore[arg-type]
    chosen = np.isin(labels, keep)
    relabel = {old: new for new, old in enumerate(keep)}
    return maps[chosen], np.array([relabel[int(x)] for x in labels[chosen]])


def episode(
    maps: np.ndarray, labels: np.ndarray, far: np.ndarray, shot: int, rng: np.random.Generator, args: argparse.Namespace
) -> dict[str, np.ndarray]:
    """One episode's per-query records: kind (0 in-set, 1 near, 2 far), correct, the scores, and the
    simulated out-of-set scores of its support set."""
    counts = np.bincount(labels)
    eligible = np.flatnonzero(counts >= shot + args.query)
    picked = rng.choice(eligible, size=min(len(eligible), args.way + args.unknown), replace=False)
    known, unknown = picked[: args.way], picked[args.way :]
    support, queries, kinds, truth = [], [], [], []
    for k, c in enumerate(known):
        idx = rng.permutation(np.flatnonzero(labels == c))[: shot + args.query]
        support.append(maps[idx[:shot]])
        queries.append(maps[idx[shot:]])
        kinds += [0] * args.query
        truth += [k] * args.query
    for c in unknown:
        idx = rng.permutation(np.flatnonzero(labels == c))[: args.query]
        queries.append(maps[idx])
        kinds += [1] * len(idx)
        truth += [-1] * len(idx)
    far_idx = rng.choice(len(far), size=args.way * args.query, replace=False)
    queries.append(far[far_idx])
    kinds += [2] * len(far_idx)
    truth += [-1] * len(far_idx)
    query = np.concatenate(queries)
    matcher = Matcher()
    classes = matcher.fit(support)
    parts = [matcher.match(classes, q) for q in query]
    final = matcher.score_set(classes, parts, query).scores
    ordered = -np.sort(-np.nan_to_num(final, nan=-np.inf), axis=1)
    simulated = simulated_out_of_set(matcher, classes, ((k, m) for k, s in enumerate(support) for m in s))
    return {
        "kind": np.array(kinds), "correct": np.nanargmax(final, axis=1) == np.array(truth),
        "inductive best": open_set_scores(matcher, classes, parts), "final best": ordered[:, 0],
        "final margin": ordered[:, 0] - ordered[:, 1],
        "global best": np.array([float(np.max(p.global_cosine)) for p in parts]),
        "simulated": simulated,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--half", choices=("dev", "eval"), default="eval")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--unknown", type=int, default=5, help="near out-of-set classes per episode (at most)")
    ap.add_argument("--query", type=int, default=5)
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--leaks", default="0.05,0.1,0.2,0.3")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = [n for n in args.sets.split(",") if n]
    shots = [int(s) for s in args.shots.split(",")]
    leaks = [float(x) for x in args.leaks.split(",")]
    _, source = cached_source()
    halves = {n: half_of(args.data, n, args.half, args.split_seed, source) for n in names}
    print(f"# {command_line()}")
    print(f"# {args.half} classes (split seed {args.split_seed}); {args.way}-way, {args.query} queries per class; "
          f"near: up to {args.unknown} other classes of the set, {args.query} queries each; far: "
          f"{args.way * args.query} images of the other sets; {args.episodes} episodes per row "
          f"(seed {args.seed})")  # fmt: skip
    auroc_rows, leak_rows = [], []
    for shot in shots:
        for name in names:
            maps, labels = halves[name]
            far = np.concatenate([halves[o][0] for o in names if o != name])
            rng = np.random.default_rng([args.seed, shot, SETS.index(name) if name in SETS else 99])
            found = [episode(maps, labels, far, shot, rng, args) for _ in range(args.episodes)]
            kinds = [f["kind"] for f in found]
            per_score = []
            for score in SCORES:
                near = np.mean([auroc(f[score][k == 0], f[score][k == 1]) for f, k in zip(found, kinds, strict=True)])
                far_ = np.mean([auroc(f[score][k == 0], f[score][k == 2]) for f, k in zip(found, kinds, strict=True)])
                per_score.append(f"{near:.3f} / {far_:.3f}")
            auroc_rows.append(f"| {name} | {shot} | " + " | ".join(per_score) + " |")
            base = np.mean([f["correct"][k == 0].mean() for f, k in zip(found, kinds, strict=True)])
            for leak in leaks:
                kept, rej_in, rej_near, rej_far = [], [], [], []
                for f, k in zip(found, kinds, strict=True):
                    threshold = np.quantile(f["simulated"], 1 - leak)
                    rejected = f["inductive best"] < threshold
                    kept.append((f["correct"] & ~rejected)[k == 0].mean())
                    rej_in.append(rejected[k == 0].mean())
                    rej_near.append(rejected[k == 1].mean())
                    rej_far.append(rejected[k == 2].mean())
                leak_rows.append(
                    f"| {name} | {shot} | {leak:g} | {100 * base:.1f} | {100 * np.mean(kept):.1f} | "
                    f"{100 * np.mean(rej_in):.1f} | {100 * np.mean(rej_near):.1f} | {100 * np.mean(rej_far):.1f} |"
                )
            print(f"# done: {name} {shot}-shot", file=sys.stderr, flush=True)
    print("\nAUROC, in-set vs near / in-set vs far (mean over episodes):\n")
    print("| set | shot | " + " | ".join(SCORES) + " |")
    print("|---|---|" + "---|" * len(SCORES))
    print("\n".join(auroc_rows))
    print("\nCalibrated rejection by the inductive best score (percent of each kind of query):\n")
    print("| set | shot | leak | in-set accuracy, no rejection | with rejection | in-set rejected | near rejected "
          "| far rejected |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(leak_rows))


if __name__ == "__main__":
    main()
