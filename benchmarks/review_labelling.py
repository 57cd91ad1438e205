"""The review loop simulated: which images to label next, and how fast a correction re-scores the rest.

On the **eval** classes of each set under DATA (split seed 0, as benchmarks/transductive.py), per
episode: ``--way`` classes (fewer where a set has fewer with enough images), 1 example each to start
(a support folder in a temporary directory), a pool of up to ``--pool`` images per class plus 20% as
many images of other eval classes (foreign: the simulated person says "none of these" to them), and a
test split of up to ``--test`` images per class kept out of the pool. A person then labels ``B`` images
one at a time through :class:`emdcli.tasks.review.Review` (each label copied into the support folder,
the classes refitted, the rest re-scored), chosen by:

- ``suggest``: what the page suggests (``Review.suggest(1)``: the least certain by margin, spread by a
  k-center over pooled features);
- ``least-conf``: the lowest confidence of the best class;
- ``random``.

Printed per set and strategy: accuracy (%) on the rest of the pool (in-set images not labelled) and on
the test split after B = 5, 10, 20, 50 labels, each the mean over the episodes; then the labels each
strategy needed to reach what ``random`` reached at 50 (on the rest of the pool, mean over the sets:
the first budget of 1..50 at or above it, in the same episodes), and the mean of the sets' rows.
Then the time of one correction
(journal, copy, refit, one column re-matched) with 1,000 queries and 20 classes: median of
``--timing-rounds``.

    python benchmarks/review_labelling.py --episodes 3
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line  # noqa: E402
from transductive import split  # noqa: E402

SETS = ("cards", "glyphs", "icons", "openclipart", "tuxpaint")
STRATEGIES = ("suggest", "least-conf", "random")
BUDGETS = (5, 10, 20, 50)


def eval_folder(data: Path, name: str):  # type: ignore[no-untyped-def]
    from emdcli.io.folders import read_labelled_folder

    folder = read_labelled_folder(data / name)
    _, held_out = split(list(folder.names), 0)
    return replace(folder, classes=tuple(c for c in folder.classes if c.name in held_out))


def episode(folder, way: int, pool: int, test: int, rng: np.random.Generator, work: Path):  # type: ignore[no-untyped-def]
    """A support folder (1 example per class) under ``work``, the pool (path, true class or None for a
    foreign one) and the test split (path, class)."""
    big = [c for c in folder.classes if len(c.files) >= 1 + 4 + 2]
    chosen = [big[i] for i in rng.choice(len(big), min(way, len(big)), replace=False)]
    others = [c for c in folder.classes if c not in chosen]
    support = work / "support"
    pool_items, test_items = [], []
    for c in chosen:
        files = [c.files[i] for i in rng.permutation(len(c.files))]
        (support / c.name).mkdir(parents=True)
        shutil.copy(files[0], support / c.name / files[0].name)
        rest = files[1:]
        n_test = min(test, len(rest) // 3)
        test_items += [(p, c.name) for p in rest[:n_test]]
        pool_items += [(p, c.name) for p in rest[n_test : n_test + pool]]
    foreign = [p for c in others for p in c.files]
    n_foreign = min(len(foreign), len(pool_items) // 5)
    pool_items += [(foreign[i], None) for i in rng.choice(len(foreign), n_foreign, replace=False)]
    return support, pool_items, test_items


def run_strategy(clf, support_src: Path, pool, test, strategy: str, budget: int, rng, work: Path) -> dict:  # type: ignore[no-untyped-def]
    """Accuracy on the rest of the pool and on the test split after each number of labels 1..budget."""
    from emdcli.tasks.review import Review

    support = work / f"support-{strategy}"
    shutil.copytree(support_src, support)
    queries = [p for p, _ in pool] + [p for p, _ in test]
    truth = [t for _, t in pool] + [t for _, t in test]
    in_pool = set(range(len(pool)))
    review = Review.start(clf, support, queries, journal=work / f"{strategy}.jsonl")
    curve_rest, curve_test = [], []

    def measure() -> None:
        items = {it.id: it for it in review.items()}
        rest = [i for i in in_pool if i not in review.decided and truth[i] is not None and i in items]
        tests = [i for i in range(len(pool), len(queries)) if i in items]
        curve_rest.append(100 * np.mean([items[i].predicted == truth[i] for i in rest]) if rest else np.nan)
        curve_test.append(100 * np.mean([items[i].predicted == truth[i] for i in tests]) if tests else np.nan)

    for _ in range(budget):
        left = [it for it in review.items() if it.id in in_pool]
        if not left:
            break
        if strategy == "suggest":
            pool_left = {it.id for it in left}
            every = review.items()
            picks = [i for i in review.suggest(len(every), every) if i in pool_left] or [left[0].id]
            pick = picks[0]
        elif strategy == "least-conf":
            pick = min(left, key=lambda it: (it.confidence, it.id)).id
        else:
            pick = left[int(rng.integers(len(left)))].id
        label = truth[pick]
        if label is None:
            review.decide(pick, "none")
        else:
            review.decide(pick, "correct", label)
        measure()
    return {"rest": curve_rest, "test": curve_test}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--way", type=int, default=10)
    ap.add_argument("--pool", type=int, default=20, help="pool images per class, at most")
    ap.add_argument("--test", type=int, default=10, help="test images per class, at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-rounds", type=int, default=5)
    args = ap.parse_args()

    import emdcli
    from emdcli.features.cache import FeatureCache
    from emdcli.features.source import FeatureSource
    from emdcli.model.backbone import load_model

    model = load_model()
    clf = emdcli.Classifier(FeatureSource(model, cache=FeatureCache.for_model(model.manifest, max_bytes=2**31)))
    print(f"$ {command_line()}\n")
    print(f"Eval classes (split seed 0), {args.episodes} episodes per set (seed {args.seed}), up to {args.way} "
          f"classes, 1 example each to start; pool up to {args.pool} images per class + 20% foreign; test split "
          f"up to {args.test} per class. Accuracy % after B labels, mean over the episodes.\n")  # fmt: skip
    print("| set | strategy | " + " | ".join(f"rest B={b}" for b in BUDGETS) + " | "
          + " | ".join(f"test B={b}" for b in BUDGETS) + " |")  # fmt: skip
    print("|---|---|" + "---|" * (2 * len(BUDGETS)))
    needed: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    set_means: dict[str, list[list[float]]] = {s: [] for s in STRATEGIES}  # per set: the cells of its row
    for name in SETS:
        folder = eval_folder(args.data, name)
        curves: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
        for e in range(args.episodes):
            rng = np.random.default_rng(args.seed * 1000 + e)
            with tempfile.TemporaryDirectory(prefix="emdcli-label-") as tmp:
                work = Path(tmp)
                support, pool, test = episode(folder, args.way, args.pool, args.test, rng, work)
                for strategy in STRATEGIES:
                    curves[strategy].append(run_strategy(clf, support, pool, test, strategy, max(BUDGETS),
                                                         np.random.default_rng(e), work))  # fmt: skip
        for strategy in STRATEGIES:
            row = []
            for view in ("rest", "test"):
                for b in BUDGETS:
                    vals = [c[view][b - 1] for c in curves[strategy] if len(c[view]) >= b]
                    row.append(float(np.nanmean(vals)) if vals else np.nan)
            set_means[strategy].append(row)
            print(f"| {name} | {strategy} | {' | '.join('' if np.isnan(v) else f'{v:.1f}' for v in row)} |")
        for e in range(args.episodes):  # labels needed to reach random's accuracy at 50, per episode
            if len(curves["random"][e]["rest"]) < max(BUDGETS):
                continue  # a pool too small for 50 labels
            goal = curves["random"][e]["rest"][max(BUDGETS) - 1]
            for strategy in STRATEGIES:
                rest = curves[strategy][e]["rest"]
                reached = next((i + 1 for i, acc in enumerate(rest) if acc >= goal), np.nan)
                needed[strategy].append(reached)
    print("\nMean over the sets:\n")
    print("| strategy | " + " | ".join(f"rest B={b}" for b in BUDGETS) + " | "
          + " | ".join(f"test B={b}" for b in BUDGETS) + " |")  # fmt: skip
    print("|---|" + "---|" * (2 * len(BUDGETS)))
    for strategy in STRATEGIES:
        means = np.nanmean(np.asarray(set_means[strategy]), axis=0)
        print(f"| {strategy} | {' | '.join(f'{v:.2f}' for v in means)} |")
    print("\nLabels needed to reach random's accuracy at 50 on the rest of the pool (mean over sets and episodes; "
          "NaN: not within 50):\n")  # fmt: skip
    for strategy in STRATEGIES:
        vals = np.asarray(needed[strategy], dtype=float)
        reached = vals[~np.isnan(vals)]
        mean = f"{reached.mean():.1f}" if len(reached) else "-"
        print(f"- {strategy}: {mean} labels where reached, in {len(reached)} of {len(vals)} episodes")
    timing(clf, args)


def timing(clf, args) -> None:  # type: ignore[no-untyped-def]
    """The time of one correction with 1,000 queries and 20 classes."""
    from emdcli.io.folders import read_labelled_folder
    from emdcli.tasks.review import Review

    sets = [read_labelled_folder(args.data / s) for s in SETS]
    classes = [c for f in sets for c in f.classes if len(c.files) >= 3][:20]
    queries = [p for f in sets for c in f.classes for p in c.files if c not in classes][:1000]
    times = []
    with tempfile.TemporaryDirectory(prefix="emdcli-label-time-") as tmp:
        support = Path(tmp) / "support"
        for i, c in enumerate(classes):
            (support / f"{i:02d}_{c.name}").mkdir(parents=True)
            shutil.copy(c.files[0], support / f"{i:02d}_{c.name}" / c.files[0].name)
        review = Review.start(clf, support, queries, journal=Path(tmp) / "j.jsonl")
        names = review.classes
        for r in range(args.timing_rounds):
            item = review.items()[0]
            t0 = time.perf_counter()
            review.decide(item.id, "correct", names[r % len(names)])
            times.append(time.perf_counter() - t0)
    print(f"\nOne correction with {len(queries)} queries and {len(classes)} classes (journal, copy, refit, one column "
          f"re-matched): median {1000 * float(np.median(times)):.0f} ms over {len(times)} "
          f"({', '.join(f'{1000 * t:.0f}' for t in times)} ms)")  # fmt: skip


if __name__ == "__main__":
    from common import publish

    with publish("review_labelling"):
        main()
