"""The default's global weight chosen per support set: the rule's threshold chosen on half of each
set's classes, then the default measured on the other half.

The rule (emdcli.defaults.SIMILAR_CLASSES): when the support classes look alike overall (the mean
cosine between their mean pooled features, uncentred, is at least the threshold), classes matched
through one example or a mean map get no global term; otherwise they get GLOBAL_WEIGHT (0.5).
Classes fitted by SFC (the 5-shot default) never have the term, so the rule changes 1-shot.

The classes of each set under DATA are split in two by a seeded permutation (``--split-seed``):
the first half ("dev") to choose the threshold, the second ("eval") to report on.

``--phase dev``: 5-way 1-shot episodes (5 queries per class) on the dev classes of every set; per
episode the accuracy of EMD alone (weight 0) and of EMD + 0.5 x global, and the support similarity;
then, for each candidate threshold, the accuracy of the rule (weight 0 where the similarity reaches
it). The threshold with the best mean over the sets is the one to ship.

``--phase eval``: ``emdcli evaluate`` itself on the eval classes of every set (a temporary folder of
symlinks), 5-way 1-shot and 5-way 5-shot, with proto, emd, emd+global (and emd-sfc at 5-shot) next
to ``default`` (what classify does, the rule included), on the same seeded episodes.

    python benchmarks/global_weight_rule.py --phase dev --data ../shared/data --episodes 300
    python benchmarks/global_weight_rule.py --phase eval --data ../shared/data --episodes 600
    python benchmarks/global_weight_rule.py --phase cost
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

THRESHOLDS = (0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
SETTINGS = (
    (5, 1, ["proto", "emd", "emd+global", "default"]),
    (5, 5, ["proto", "emd", "emd+global", "emd-sfc", "default"]),
)


def split(classes: list[str], seed: int) -> tuple[list[str], list[str]]:
    """(dev, eval): the classes in two halves by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(len(classes))
    half = len(classes) // 2
    return [classes[i] for i in sorted(order[:half])], [classes[i] for i in sorted(order[half:])]


def dev_phase(data: Path, sets: list[str], args: argparse.Namespace) -> None:
    from emdcli.features.cache import FeatureCache
    from emdcli.features.source import FeatureSource
    from emdcli.io.folders import read_labelled_folder
    from emdcli.matching.simpleshot import pooled
    from emdcli.matching.support import Matcher, class_similarity
    from emdcli.model.backbone import load_model

    backbone = load_model()
    source = FeatureSource(backbone, cache=FeatureCache.for_model(backbone.manifest))
    plain, with_global = Matcher(global_weight=0.0), Matcher(global_weight=0.5)
    print(f"Dev classes (first half, split seed {args.split_seed}), 5-way 1-shot, {args.query} queries per class, "
          f"{args.episodes} episodes per set (seed {args.seed}); accuracy %.\n")  # fmt: skip
    print(
        "| set | dev classes | support similarity, mean ± sd | emd | emd+global | "
        + " | ".join(f"rule at {t}" for t in THRESHOLDS)
        + " |"
    )
    print("|---" * (5 + len(THRESHOLDS)) + "|")
    per_threshold: dict[float, list[float]] = {t: [] for t in THRESHOLDS}
    for name in sets:
        folder = read_labelled_folder(data / name)
        dev, _ = split(list(folder.names), args.split_seed)
        found = source.labelled(folder)
        assert found.features is not None
        keep = {folder.names.index(c) for c in dev}
        by_class = [np.flatnonzero(found.labels == c) for c in sorted(keep)]
        by_class = [idx for idx in by_class if len(idx) >= 1 + args.query]
        rng = np.random.default_rng(args.seed)
        sims, acc_plain, acc_global = [], [], []
        for _ in range(args.episodes):
            picked = rng.choice(len(by_class), 5, replace=False)
            support, queries, truth = [], [], []
            for label, c in enumerate(picked):
                idx = rng.choice(by_class[c], 1 + args.query, replace=False)
                support.append(found.features[idx[:1]])
                queries += list(idx[1:])
                truth += [label] * args.query
            classes = plain.fit(support)
            sims.append(class_similarity([pooled(s[0]) for s in support]))
            q = found.features[queries]
            acc_plain.append(float(np.mean(np.argmax(plain.scores(classes, q), 1) == truth)))
            acc_global.append(float(np.mean(np.argmax(with_global.scores(classes, q), 1) == truth)))
        s, a0, a5 = np.array(sims), np.array(acc_plain), np.array(acc_global)
        cells = []
        for t in THRESHOLDS:
            rule = float(np.mean(np.where(s >= t, a0, a5)))
            per_threshold[t].append(rule)
            cells.append(f"{100 * rule:.1f}")
        print(f"| {name} | {len(by_class)} | {s.mean():.3f} ± {s.std():.3f} | {100 * a0.mean():.1f} "
              f"| {100 * a5.mean():.1f} | " + " | ".join(cells) + " |", flush=True)  # fmt: skip
    print("| mean | | | | | " + " | ".join(f"{100 * np.mean(v):.2f}" for v in per_threshold.values()) + " |")


def eval_phase(data: Path, sets: list[str], args: argparse.Namespace) -> None:
    from emdcli.io.folders import read_labelled_folder

    print(f"Eval classes (second half, split seed {args.split_seed}); `emdcli evaluate` with {args.query} queries "
          f"per class, {args.episodes} episodes (seed {args.seed}); accuracy % ± 95% interval, and the paired "
          "difference to proto.\n")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="emdcli-eval-half-") as tmp:
        for way, shot, methods in SETTINGS:
            if f"{way}w{shot}s" not in args.settings.split(","):
                continue
            print(f"\n### {way}-way {shot}-shot\n")
            print("| set | classes | " + " | ".join(methods)
                  + " | default − best fixed | default − proto (paired) | best fixed − proto (paired) |")  # fmt: skip
            print("|---" * (len(methods) + 5) + "|")
            gains, oracle = [], []
            for name in sets:
                _, held = split(list(read_labelled_folder(data / name).names), args.split_seed)
                root = Path(tmp) / name
                for c in held:
                    if not (root / c).exists():
                        root.mkdir(parents=True, exist_ok=True)
                        (root / c).symlink_to((data / name / c).resolve())
                cmd = [sys.executable, "-m", "emdcli", "evaluate", str(root), "--way", str(way), "--shot", str(shot),
                       "--query", str(args.query), "--episodes", str(args.episodes), "--seed", str(args.seed),
                       "--methods", ",".join(methods), "--format", "json", "--quiet"]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    reason = proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else f"exit {proc.returncode}"
                    print(f"| {name} | {len(held)} | n/a: {reason} |")
                    continue
                rows = {r["method"]: r for r in json.loads(proc.stdout)["rows"]}
                fixed = [m for m in methods if m != "default"]
                best = max(fixed, key=lambda m: rows[m]["accuracy"])  # the oracle: the best fixed method here
                d, b = rows["default"], rows[best]
                gains.append(d["vs_proto"])
                oracle.append(b["vs_proto"] or 0.0)
                cells = [f"{rows[m]['accuracy']:.1f} ± {rows[m]['ci95']:.1f}" for m in methods]
                best_gain = (
                    "0.0 (proto)" if best == "proto" else f"{b['vs_proto']:+.1f} ± {b['vs_proto_ci95']:.1f} ({best})"
                )
                print(f"| {name} | {len(held)} | " + " | ".join(cells)
                      + f" | {d['accuracy'] - b['accuracy']:+.1f} | {d['vs_proto']:+.1f} ± {d['vs_proto_ci95']:.1f} "
                      f"| {best_gain} |", flush=True)  # fmt: skip
            if gains:
                print("| mean |" + " |" * (len(methods) + 2)
                      + f" **{sum(gains) / len(gains):+.2f}** | {sum(oracle) / len(oracle):+.2f} |")  # fmt: skip


def cost_phase(data: Path, sets: list[str], args: argparse.Namespace) -> None:
    """The rule's cost per support set: the support similarity of K classes, median of 200 calls."""
    import time

    from emdcli.matching.support import class_similarity
    from emdcli.model.backbone import load_model

    channels = load_model().manifest.channels
    rng = np.random.default_rng(args.seed)
    print(f"Support similarity of K classes of {channels}-channel pooled features, median of 200 calls:\n")
    print("| classes | microseconds |")
    print("|---|---|")
    for k in (5, 20, 100):
        means = list(rng.random((k, channels)))
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            class_similarity(means)
            times.append(time.perf_counter() - t0)
        print(f"| {k} | {1e6 * float(np.median(times)):.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("dev", "eval", "cost"), required=True)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--sets", default="cards,glyphs,icons,openclipart,tuxpaint")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--query", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--settings", default="5w1s,5w5s", help="eval: comma-separated subset of 5w1s,5w5s")
    args = ap.parse_args()
    print(f"`{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}`\n")
    sets = [s for s in args.sets.split(",") if s]
    phases = {"dev": dev_phase, "eval": eval_phase, "cost": cost_phase}
    phases[args.phase](args.data.resolve(), sets, args)
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("global_weight_rule", "--phase"):
        raise SystemExit(main())
