"""A one-query run against a warm-cache support folder, this tree against an earlier commit.

A support folder of ``--classes`` icon classes x ``--shots`` examples (copied from ``../shared/data``)
and one query of another class. Both trees get their bytecode compiled first and one untimed run
each (the feature cache, shared, is then warm for both). Then ``--rounds`` rounds, alternating
which tree goes first: the wall time of ``python -m emdcli classify SUPPORT QUERY`` as a fresh
process, and of ``python -m emdcli --help`` for this tree. Prints every round and the medians.

    python benchmarks/one_query.py --before f3779b1~1 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import earlier_tree, timed_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def support_folder(data: Path, classes: int, shots: int, into: Path) -> Path:
    """``classes`` icon classes (sorted, each with more than ``shots`` images) x ``shots`` images, and
    one image of the next such class as the query."""
    names = [d for d in sorted((data / "icons").iterdir()) if d.is_dir() and len(list(d.glob("*.png"))) > shots]
    for folder in names[:classes]:
        (into / "support" / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.png"))[:shots]:
            shutil.copy(image, into / "support" / folder.name / image.name)
    query = sorted(names[classes].glob("*.png"))[0]
    shutil.copy(query, into / query.name)
    return into / query.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--before", required=True, help="the earlier commit (git revision)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        query = support_folder(args.data, args.classes, args.shots, work)
        before, revision = earlier_tree(args.before, work)
        trees = {f"before ({revision})": before, "this tree": REPO}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["EMDCLI_CACHE_DIR"] = str(work / "cache")
        classify = ["classify", str(work / "support"), str(query)]
        for tree in trees.values():
            timed_run(tree, classify, env)  # warms the feature cache (and the OS's file cache)

        print(f"# one query against {args.classes} classes x {args.shots} examples (icons), warm feature cache; "
              f"{os.cpu_count()} cores; {args.rounds} rounds, the trees alternating; seconds per process")  # fmt: skip
        runs: dict[str, list[float]] = {name: [] for name in trees}
        helps: list[float] = []
        order = list(trees)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                runs[name].append(timed_run(trees[name], classify, env))
            helps.append(timed_run(REPO, ["--help"], env))
            print(f"round {r + 1}: " + ", ".join(f"{n} {runs[n][-1]:.3f} s" for n in order)
                  + f"; --help {helps[-1]:.3f} s")  # fmt: skip
        med = {name: statistics.median(times) for name, times in runs.items()}
        ratios = [b / a for b, a in zip(runs[order[0]], runs[order[1]], strict=True)]
        print()
        print("| tree | one-query classify, median s |")
        print("|---|---|")
        for name in order:
            print(f"| {name} | {med[name]:.3f} |")
        print()
        print(f"before / this tree: median of the rounds' ratios {statistics.median(ratios):.2f}x")
        print(f"emdcli --help (this tree): median {statistics.median(helps):.3f} s")


if __name__ == "__main__":
    from common import publish

    with publish("one_query"):
        main()
