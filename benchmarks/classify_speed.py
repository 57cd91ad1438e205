"""Images per second of `emdcli classify`, end to end, on this machine.

Runs the installed `emdcli` as a user would (a fresh process each time, model load
and support set included) on:

1. the bundled examples (5 classes x 4 support images, 20 queries), and
2. a 500-image query folder sampled from ../shared/data (openclipart + tuxpaint),
   against the bundled example support set.

Each command runs once untimed (to warm the file cache), then ``--repeat`` times; the
wall time reported is the median of those runs.

    python benchmarks/classify_speed.py [--data ../shared/data] [--repeat 3] [--queries 500]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def median_time(args: list[str], repeat: int) -> float:
    """Median wall seconds of ``repeat`` runs of a command, after one untimed warm-up run."""
    timed(args)
    return statistics.median(timed(args) for _ in range(repeat))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per command (the median is reported)")
    ap.add_argument("--queries", type=int, default=500, help="size of the sampled query folder")
    args = ap.parse_args()
    if args.repeat < 1 or args.queries < 1:
        ap.error("--repeat and --queries must be at least 1")
    exe = shutil.which("emdcli") or sys.exit("emdcli is not on PATH: pip install . first")
    support = REPO / "examples" / "support"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "queries"
        pool = sorted((args.data / "openclipart").rglob("*.png")) + sorted((args.data / "tuxpaint").rglob("*.png"))
        for i, src in enumerate(random.Random(0).sample(pool, args.queries)):
            dst = big / src.parent.name / f"{i:03d}_{src.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        help_s = median_time([exe, "--help"], args.repeat)
        runs = (
            ("examples (20 queries)", REPO / "examples" / "queries", 20),
            (f"{args.queries}-image folder", big, args.queries),
        )
        for label, queries, n in runs:
            wall = median_time([exe, "classify", str(support), str(queries), "-f", "csv"], args.repeat)
            rows.append((label, n, wall, n / wall))
    print(
        f"machine: {os.cpu_count()} cores; median of {args.repeat} runs (after one warm-up run); "
        "whole process, model load included"
    )
    print("| run | queries | wall s | queries/s |")
    print("|---|---|---|---|")
    for label, n, s, rate in rows:
        print(f"| {label} | {n} | {s:.2f} | {rate:.1f} |")
    print(f"| `emdcli --help` | - | {help_s:.2f} | - |")
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("classify_speed"):
        raise SystemExit(main())
