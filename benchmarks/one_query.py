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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]


def timed(tree: Path, args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "emdcli", *args], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


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
        before = work / "before"
        before.mkdir()
        archive = subprocess.run(["git", "archive", args.before, "emdcli"], cwd=REPO, check=True,
                                 capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        (before / "weights").symlink_to(REPO / "weights")  # where a checkout keeps them
        revision = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=REPO, check=True,
                                  capture_output=True, text=True).stdout.strip()  # fmt: skip
        trees = {f"before ({revision})": before, "this tree": REPO}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["EMDCLI_CACHE_DIR"] = str(work / "cache")
        for tree in trees.values():
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "emdcli")], check=True)
        classify = ["classify", str(work / "support"), str(query)]
        for tree in trees.values():
            timed(tree, classify, env)  # warms the feature cache (and the OS's file cache)

        print(f"# one query against {args.classes} classes x {args.shots} examples (icons), warm feature cache; "
              f"{os.cpu_count()} cores; {args.rounds} rounds, the trees alternating; seconds per process")  # fmt: skip
        runs: dict[str, list[float]] = {name: [] for name in trees}
        helps: list[float] = []
        order = list(trees)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                runs[name].append(timed(trees[name], classify, env))
            helps.append(timed(REPO, ["--help"], env))
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
