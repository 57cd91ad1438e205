"""Open-set rejection ("none of these"): calibrating it on dev classes, then what it costs in-set, what
it rejects out of set, and whether out-of-set queries drag the transductive step, on eval classes.

The classes of each set are split in two by benchmarks/transductive.py's seeded permutation: choose
on ``--half dev``, report on ``--half eval``. Features are the model's (``--model``; default: the
bundled one at its default precision), through the feature cache.

``--phase calibrate`` (dev classes): 5-way episodes at 1, 2, 3, 5 and 10 shots, ``--query`` in-set
queries per class; for every in-set query the open-set score minus the support set's anchor
(emdcli/matching/rejection.py). The quantiles of those residuals, each set weighted alike, are the
offsets ``--reject auto`` adds to the anchor: written to emdcli/matching/rejection_offsets.json.

``--phase report`` (eval classes): 5-way 1-shot and 5-shot episodes. Known classes get queries by a
composition (``bal``: ``--query`` each; ``imb``: a random 1..Q each; ``dom``: Q of one class, 1 of each
other; ``one``: Q of one class only) and out-of-set queries make up 0%, 20% or 50% of the query set,
half "near" (other classes of the same set, the support set lacks them) and half "far" (images of the
other sets). All queries are matched as one set, as ``emdcli classify`` matches a folder. Printed:

1. AUROC in-set vs near and in-set vs far of each candidate score (balanced sets, 50% out of set, 5
   and 15 queries per class);
2. at ``--reject auto`` with the default sensitivity: in-set accuracy without and with rejection (a
   rejected in-set query counts wrong), the shares of in-set, near and far queries rejected;
3. in-set accuracy of the transductive step without the outlier guard (emdcli 0.1) and with it
   (the default), against each query matched on its own (``--no-transductive``), per composition.

    python benchmarks/open_set.py --phase calibrate --half dev --episodes 300 --write
    python benchmarks/open_set.py --phase report --half eval --episodes 40 --shots 1
    python benchmarks/open_set.py --phase report --half eval --episodes 40 --shots 5
    python benchmarks/open_set.py --phase report --half eval --episodes 40 --model efficientnet_lite0_mixed \
        --rejection-only
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line  # noqa: E402
from transductive import SETS, split  # noqa: E402

from emdcli import defaults  # noqa: E402
from emdcli.features.cache import FeatureCache  # noqa: E402
from emdcli.features.source import FeatureSource  # noqa: E402
from emdcli.io.folders import read_labelled_folder  # noqa: E402
from emdcli.matching.nodes import l2_normalise  # noqa: E402
from emdcli.matching.rejection import (  # noqa: E402
    OFFSETS_FILE,
    OpenSetScorer,
    ReferenceBank,
    calibrate_rejection,
    reference_bank_path,
)
from emdcli.matching.simpleshot import pooled  # noqa: E402
from emdcli.matching.support import Matcher  # noqa: E402
from emdcli.model.backbone import load_model  # noqa: E402
from emdcli.tasks.open_set import auroc  # noqa: E402

SENSITIVITIES = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
CALIBRATION_SHOTS = (1, 2, 3, 5, 10)
SCORES = ("EMD best (0.1)", "kNN, support-centred", "kNN, bank-relative (default)")
MODES = ("bal", "imb", "dom", "one")
SHARES = (0.0, 0.2, 0.5)


def embedded_halves(args: argparse.Namespace) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], ReferenceBank, str]:
    """Per set: (N, C, H, W) maps and (N,) labels (0..) of one half's classes; the model's bank; its name."""
    backbone = load_model(args.model)
    source = FeatureSource(backbone, cache=FeatureCache.for_model(backbone.manifest, max_bytes=2**33))
    bank = ReferenceBank.load(reference_bank_path(backbone.manifest_path), backbone.manifest.sha256)
    halves = {}
    for name in args.sets.split(","):
        folder = read_labelled_folder(args.data / name)
        dev, held_out = split(list(folder.names), args.split_seed)
        keep = dev if args.half == "dev" else held_out
        found = source.labelled(replace(folder, classes=tuple(c for c in folder.classes if c.name in keep)))
        assert found.features is not None
        halves[name] = (found.features, found.labels)
    return halves, bank, backbone.manifest.name


def draw_known(labels: np.ndarray, way: int, shot: int, query: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Image indices of ``way`` random classes with ``shot + query`` images each (support first)."""
    counts = np.bincount(labels)
    picked = rng.choice(np.flatnonzero(counts >= shot + query), size=way, replace=False)
    return [rng.permutation(np.flatnonzero(labels == c))[: shot + query] for c in picked]


def calibrate(args: argparse.Namespace) -> None:
    halves, bank, model = embedded_halves(args)
    pooled_halves = {n: (pooled(m), y) for n, (m, y) in halves.items()}
    table: dict[str, dict[str, float]] = {}
    print(f"# {command_line()}")
    print(f"# {args.half} classes, model {model}; 5-way, {args.query} in-set queries per class, {args.episodes} "
          "episodes per set and shot; residual = in-set query's open-set score - the support set's anchor")  # fmt: skip
    print("\n| shots | " + " | ".join(f"q{p:g}" for p in SENSITIVITIES) + " | in-set rejected at 0.05, per set |")
    print("|---|" + "---|" * (len(SENSITIVITIES) + 1))
    for shot in CALIBRATION_SHOTS:
        per_set = {}
        for name, (feats, labels) in pooled_halves.items():
            rng = np.random.default_rng([args.seed, shot, SETS.index(name)])
            found = []
            if np.sum(np.bincount(labels) >= shot + args.query) < 5:
                print(
                    f"# {name}: fewer than 5 classes with {shot + args.query} images, {shot} shots left out",
                    file=sys.stderr,
                )
                continue
            for _ in range(args.episodes):
                idx = draw_known(labels, 5, shot, args.query, rng)
                support = [feats[i[:shot]] for i in idx]
                scorer = OpenSetScorer.from_classes(bank, PooledClasses(support))  # type: ignore[arg-type]
                queries = np.concatenate([feats[i[shot:]] for i in idx])
                found.append(scorer.scores(queries) - scorer.anchor())
            per_set[name] = np.concatenate(found)
        # every set weighs the same: the same number of residuals from each
        n = min(len(v) for v in per_set.values())
        pooled_residuals = np.concatenate([v[:n] for v in per_set.values()])
        row = {f"{p:g}": round(float(np.quantile(pooled_residuals, p)), 4) for p in SENSITIVITIES}
        table[str(shot)] = row
        held = ", ".join(f"{k} {100 * np.mean(v < row['0.05']):.1f}%" for k, v in per_set.items())
        print(f"| {shot} | " + " | ".join(f"{v:.4f}" for v in row.values()) + f" | {held} |")
    if args.write:
        OFFSETS_FILE.write_text(json.dumps({
            "about": "offsets of --reject auto: quantiles of (in-set open-set score - support anchor), per shots",
            "command": command_line(), "model": model, "half": args.half, "episodes": args.episodes,
            "query": args.query, "offsets": table,
        }, indent=1) + "\n")  # fmt: skip
        print(f"\nwrote {OFFSETS_FILE.name}")


class PooledClasses:
    """The fields of ClassNodes that OpenSetScorer.from_classes reads, from one (shots, C) array of
    pooled support features per class (calibration needs nothing else)."""

    def __init__(self, support: list[np.ndarray]) -> None:
        self.examples_pooled = np.concatenate(support)
        self.example_labels = np.repeat(np.arange(len(support)), [len(s) for s in support])
        self.shots = tuple(len(s) for s in support)


def compose(rng: np.random.Generator, mode: str, query: int, way: int) -> list[int]:
    """How many queries each known class gives."""
    if mode == "bal":
        return [query] * way
    if mode == "imb":
        return [int(rng.integers(1, query + 1)) for _ in range(way)]
    big = int(rng.integers(way))
    return [query if k == big else (1 if mode == "dom" else 0) for k in range(way)]


def draw_open_episode(
    maps: np.ndarray,
    labels: np.ndarray,
    far: np.ndarray,
    shot: int,
    query: int,
    mode: str,
    share: float,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """One 5-way episode: the support maps per class, the (n, C, H, W) query maps, each query's kind
    (0 in-set, 1 near, 2 far) and the in-set queries' classes. ``mode`` composes the in-set queries;
    ``share`` of the query set is out of set, half near (other classes of ``labels``) and half far."""
    idx = draw_known(labels, 5, shot, query, rng)
    counts = compose(rng, mode, query, 5)
    support = [maps[i[:shot]] for i in idx]
    known_idx = [i[shot : shot + c] for i, c in zip(idx, counts, strict=True)]
    truth = np.concatenate([np.full(len(i), k) for k, i in enumerate(known_idx)])
    queries = [maps[np.concatenate(known_idx)]]
    n_in = len(truth)
    n_out = int(round(n_in * share / (1 - share))) if share else 0
    n_near, n_far = n_out - n_out // 2, n_out // 2
    kinds = [np.zeros(n_in, int)]
    if n_near:
        taken = set(np.concatenate(idx).tolist())
        others = np.array([j for j in np.flatnonzero(~np.isin(labels, labels[[i[0] for i in idx]])) if j not in taken])
        queries.append(maps[rng.choice(others, size=n_near, replace=False)])
        kinds.append(np.ones(n_near, int))
    if n_far:
        queries.append(far[rng.choice(len(far), size=n_far, replace=False)])
        kinds.append(np.full(n_far, 2))
    return support, np.concatenate(queries), np.concatenate(kinds), truth


def report_episode(maps, labels, far, bank, shot, query, mode, share, rng) -> dict[str, np.ndarray | float]:  # noqa: ANN001
    """One episode's per-query records and accuracies."""
    support, q, kind, truth = draw_open_episode(maps, labels, far, shot, query, mode, share, rng)
    matcher = Matcher()
    classes = matcher.fit(support)
    parts = [matcher.match(classes, x) for x in q]
    scorer = OpenSetScorer.from_classes(bank, classes)
    rejection = calibrate_rejection(scorer, defaults.REJECT_SENSITIVITY)
    qp = np.stack([p.pooled for p in parts])
    score = scorer.scores(qp)
    foreign = score < rejection.threshold
    weight = matcher.weight_for(classes)
    inductive = np.stack([p.total(weight) for p in parts])
    unguarded = matcher.score_set(classes, parts, q).scores
    guarded = matcher.score_set(classes, parts, q, foreign=foreign).scores

    def correct(s: np.ndarray) -> np.ndarray:
        return np.asarray(np.argmax(np.nan_to_num(s, nan=-np.inf), axis=1)[kind == 0] == truth)

    centre = classes.centre
    support_unit = l2_normalise(classes.examples_pooled - centre)
    knn = (l2_normalise(qp - centre) @ support_unit.T).max(axis=1)
    return {
        "kind": kind, "scores": np.stack([np.nanmax(inductive, axis=1), knn, score]), "rejected": foreign,
        "inductive": correct(inductive), "unguarded": correct(unguarded), "guarded": correct(guarded),
    }  # fmt: skip


def paired_gain(eps: list[dict[str, np.ndarray]], key: str) -> tuple[float, float]:
    """In-set accuracy of ``key`` minus the inductive one over all the episodes' queries, and the 95%
    half-interval of that difference with the episodes as the independent units (a ratio estimator)."""
    d = np.array([float(np.sum(e[key].astype(int) - e["inductive"].astype(int))) for e in eps])
    n = np.array([len(e["inductive"]) for e in eps], dtype=float)
    gain = d.sum() / n.sum()
    spread = np.sqrt(np.sum((d - gain * n) ** 2) * len(eps) / max(len(eps) - 1, 1)) / n.sum()
    return float(gain), float(1.96 * spread)


def report(args: argparse.Namespace) -> None:
    halves, bank, model = embedded_halves(args)
    names = list(halves)
    shots = [int(s) for s in args.shots.split(",")]
    print(f"# {command_line()}")
    print(f"# {args.half} classes (split seed {args.split_seed}), model {model}; 5-way; out-of-set queries half near "
          f"(other classes of the set) and half far (the other sets); {args.episodes} episodes per cell "
          f"(seed {args.seed}); --reject auto at sensitivity {defaults.REJECT_SENSITIVITY:g}")  # fmt: skip
    auroc_rows, reject_rows, trans_rows = [], [], []
    cells = [(q, "bal", 0.5) for q in (5, 15)]
    if not args.rejection_only:
        cells += [(5, m, s) for m in MODES for s in SHARES if (m, s) != ("bal", 0.5)]
    for shot in shots:
        for name in names:
            maps, labels = halves[name]
            far = np.concatenate([halves[o][0] for o in names if o != name])
            trans: dict[tuple[str, float], list[float]] = {}
            for query, mode, share in cells:
                if np.sum(np.bincount(labels) >= shot + query) < 5:
                    print(f"# {name}: fewer than 5 classes with {shot + query} images, {shot}-shot {query} queries "
                          "left out", file=sys.stderr)  # fmt: skip
                    continue
                rng = np.random.default_rng(
                    [args.seed, shot, SETS.index(name), query, MODES.index(mode), int(100 * share)]
                )
                eps = [
                    report_episode(maps, labels, far, bank, shot, query, mode, share, rng) for _ in range(args.episodes)
                ]
                found = [np.mean(np.concatenate([e["inductive"] for e in eps]))]
                found += [paired_gain(eps, k) for k in ("unguarded", "guarded")]
                trans[(mode, share)] = found if query == 5 else trans.get((mode, share), found)
                if mode != "bal" or share != 0.5:
                    continue
                near = [[auroc(e["scores"][s][e["kind"] == 0], e["scores"][s][e["kind"] == 1]) for e in eps]
                        for s in range(len(SCORES))]  # fmt: skip
                far_ = [[auroc(e["scores"][s][e["kind"] == 0], e["scores"][s][e["kind"] == 2]) for e in eps]
                        for s in range(len(SCORES))]  # fmt: skip
                cells_ = [f"{np.mean(a):.3f} / {np.mean(b):.3f}" for a, b in zip(near, far_, strict=True)]
                auroc_rows.append(f"| {name} | {shot} | {query} | " + " | ".join(cells_) + " |")
                rej = {
                    k: 100 * np.mean(np.concatenate([e["rejected"][e["kind"] == k] for e in eps])) for k in (0, 1, 2)
                }
                acc = 100 * np.mean(np.concatenate([e["guarded"] for e in eps]))
                kept = 100 * np.mean(np.concatenate([e["guarded"] & ~e["rejected"][e["kind"] == 0] for e in eps]))
                reject_rows.append(f"| {name} | {shot} | {query} | {acc:.1f} | {kept:.1f} | {acc - kept:.1f} | "
                                   f"{rej[0]:.1f} | {rej[1]:.1f} | {rej[2]:.1f} |")  # fmt: skip
            for mode in MODES:
                for share in SHARES:
                    if (mode, share) in trans:
                        ind, (ung, ung_ci), (gua, gua_ci) = trans[(mode, share)]
                        cells_ = [f"{100 * x:+.1f} ± {100 * ci:.1f}" for x, ci in ((ung, ung_ci), (gua, gua_ci))]
                        trans_rows.append(f"| {name} | {shot} | {mode} | {int(100 * share)}% | {100 * ind:.1f} | "
                                          + " | ".join(cells_) + " |")  # fmt: skip
            print(f"# done: {name} {shot}-shot", file=sys.stderr, flush=True)
    print("\nAUROC, in-set vs near / in-set vs far (balanced query sets, 50% out of set; mean over episodes):\n")
    print("| set | shot | queries per class | " + " | ".join(SCORES) + " |")
    print("|---|---|---|" + "---|" * len(SCORES))
    print("\n".join(auroc_rows))
    print(f"\n--reject auto at sensitivity {defaults.REJECT_SENSITIVITY:g} (percent; balanced, 50% out of set):\n")
    print("| set | shot | queries per class | in-set accuracy, no rejection | with rejection | cost (points) "
          "| in-set rejected | near rejected | far rejected |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(reject_rows))
    if args.rejection_only:
        return
    print("\nIn-set accuracy of matching each query on its own (--no-transductive), and the transductive step "
          "against it (points, ± 95% interval over episodes) without the outlier guard (0.1) and with it (the "
          "default), 5 queries per class:\n")  # fmt: skip
    print("| set | shot | composition | out of set | --no-transductive | transductive, no guard | with guard |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(trans_rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=("calibrate", "report"), required=True)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--half", choices=("dev", "eval"), default="eval")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="a bundled model's name or a manifest (default: the bundled one)")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--query", type=int, default=5, help="calibrate: in-set queries per class")
    ap.add_argument("--shots", default="1,5", help="report: shots")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rejection-only", action="store_true", help="report: tables 1 and 2 only")
    ap.add_argument("--write", action="store_true", help="calibrate: write emdcli/matching/rejection_offsets.json")
    args = ap.parse_args()
    if args.phase == "calibrate" and args.half != "dev":
        sys.exit("calibrate on the dev classes only (--half dev)")
    calibrate(args) if args.phase == "calibrate" else report(args)


if __name__ == "__main__":
    from common import publish

    with publish("open_set", "--phase", "--shots={}shot", "--model"):
        main()
