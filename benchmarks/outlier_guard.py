"""Choosing the transductive step's outlier guard on the dev classes.

Episodes as ``benchmarks/open_set.py --phase report`` draws them (5-way, 5 queries per known class by
composition, 0%, 20% or 50% out-of-set queries, half near and half far). For each, the in-set accuracy
gain over ``--no-transductive`` of the transductive step with each candidate guard:

- ``none``: no guard (emdcli 0.1);
- ``g05`` / ``g20``: queries whose open-set score is below the threshold calibrated at sensitivity
  0.05 / 0.2 are set aside (they keep their inductive scores and move no class);
- ``g05skip25`` / ``g05skip15`` / ``g20skip25``: the same, and no transductive step at all when more
  than 25% / 15% of the queries are judged foreign at 0.05;
- ``g05allspread``: ``g05``, and the step's lopsidedness check made on every query, foreign ones too;
- ``g05spread20``: ``g05``, and the lopsidedness check made only on the queries above the threshold
  calibrated at 0.2 (the surest in-set ones), so that unrejected outliers cannot make a set of one
  class look spread.

    python benchmarks/outlier_guard.py --half dev --shots 1 --episodes 60
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import open_set as bench  # noqa: E402
from common import command_line  # noqa: E402
from transductive import SETS  # noqa: E402

from emdcli.matching.rejection import OpenSetScorer, calibrate_rejection  # noqa: E402
from emdcli.matching.support import Matcher  # noqa: E402
from emdcli.matching.transductive import largest_share, prediction_spread  # noqa: E402

VARIANTS = ("none", "g05", "g20", "g05skip25", "g05skip15", "g20skip25", "g05allspread", "g05spread20")


def guarded(variant: str, matcher: Matcher, classes, parts, maps, scores, t05, t20, inductive) -> np.ndarray:  # noqa: ANN001
    """(n, K) scores of the query set under one candidate guard."""
    if variant == "none":
        return matcher.score_set(classes, parts, maps).scores
    if variant == "g05allspread":
        step = matcher.transduction
        lopsided = prediction_spread(inductive) < step.min_spread or (
            step.max_share is not None and largest_share(inductive) > step.max_share
        )
        return inductive if lopsided else matcher.score_set(classes, parts, maps, foreign=scores < t05).scores
    if variant == "g05spread20":
        sure = scores >= t20
        step = matcher.transduction
        lopsided = (
            not sure.any()
            or prediction_spread(inductive[sure]) < step.min_spread
            or (step.max_share is not None and largest_share(inductive[sure]) > step.max_share)
        )
        return inductive if lopsided else matcher.score_set(classes, parts, maps, foreign=scores < t05).scores
    limit = {"skip25": 0.25, "skip15": 0.15}.get(variant[3:])
    if limit is not None and np.mean(scores < t05) > limit:
        return inductive
    threshold = t05 if variant.startswith("g05") else t20
    return matcher.score_set(classes, parts, maps, foreign=scores < threshold).scores


def right(scores: np.ndarray, kind: np.ndarray, truth: np.ndarray) -> list[bool]:
    """Whether each in-set query (``kind == 0``) is classified as ``truth``."""
    return list(np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=1)[kind == 0] == truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--half", choices=("dev", "eval"), default="dev")
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--episodes", type=int, default=60)
    a = ap.parse_args()
    args = argparse.Namespace(model=None, sets=",".join(SETS), data=a.data, split_seed=0, half=a.half)
    halves, bank, model = bench.embedded_halves(args)
    print(f"# {command_line()}")
    print(f"# {a.half} classes, model {model}; 5-way {a.shots}-shot, 5 queries per known class, {a.episodes} episodes "
          "per cell; in-set accuracy gain over --no-transductive, points")  # fmt: skip
    found: dict[tuple[str, str, float], dict[str, float]] = {}
    for name in SETS:
        maps, labels = halves[name]
        far = np.concatenate([halves[o][0] for o in SETS if o != name])
        for mode in bench.MODES:
            for share in bench.SHARES:
                rng = np.random.default_rng([7, a.shots, SETS.index(name), bench.MODES.index(mode), int(100 * share)])
                correct: dict[str, list[bool]] = {v: [] for v in ("inductive", *VARIANTS)}
                for _ in range(a.episodes):
                    support, q, kind, truth = bench.draw_open_episode(maps, labels, far, a.shots, 5, mode, share, rng)
                    matcher = Matcher()
                    classes = matcher.fit(support)
                    parts = [matcher.match(classes, x) for x in q]
                    scorer = OpenSetScorer.from_classes(bank, classes)
                    scores = scorer.scores(np.stack([p.pooled for p in parts]))
                    t05, t20 = (calibrate_rejection(scorer, s).threshold for s in (0.05, 0.2))
                    weight = matcher.weight_for(classes)
                    inductive = np.stack([p.total(weight) for p in parts])

                    correct["inductive"] += right(inductive, kind, truth)
                    for v in VARIANTS:
                        found_ = guarded(v, matcher, classes, parts, q, scores, t05, t20, inductive)
                        correct[v] += right(found_, kind, truth)
                base = float(np.mean(correct["inductive"]))
                found[(name, mode, share)] = {v: 100 * (float(np.mean(correct[v])) - base) for v in VARIANTS}
                gains = " ".join(f"{v} {found[(name, mode, share)][v]:+.1f}" for v in VARIANTS)
                print(f"{name} {mode} {int(100 * share)}%: inductive {100 * base:.1f}; {gains}", flush=True)
    print("\n| guard | worst cell with 20% or 50% out of set | mean gain there | mean gain, all cells "
          "| cells with 20%/50% below -0.5 |")  # fmt: skip
    print("|---|---|---|---|---|")
    for v in VARIANTS:
        out = [r[v] for (_, _, share), r in found.items() if share > 0]
        every = [r[v] for r in found.values()]
        print(f"| {v} | {min(out):+.2f} | {np.mean(out):+.2f} | {np.mean(every):+.2f} | {sum(x < -0.5 for x in out)} |")


if __name__ == "__main__":
    from common import publish

    with publish("outlier_guard", "--half", "--shots={}shot"):
        main()
