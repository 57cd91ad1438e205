"""Images per second of `emdcli classify`, end to end, on this machine.

Runs the installed `emdcli` as a user would (a fresh process each time, model load
and support set included) on:

1. the bundled examples (5 classes x 4 support images, 20 queries), and
2. a 500-image query folder sampled from ../shared/data (openclipart + tuxpaint),
   against the bundled example support set.

    python benchmarks/classify_speed.py [--data ../shared/data] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    exe = shutil.which("emdcli") or sys.exit("emdcli is not on PATH: pip install . first")
    support = REPO / "examples" / "support"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "queries"
        pool = sorted((args.data / "openclipart").rglob("*.png")) + sorted((args.data / "tuxpaint").rglob("*.png"))
        for i, src in enumerate(random.Random(0).sample(pool, 500)):
            dst = big / src.parent.name / f"{i:03d}_{src.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        timed([exe, "--help"])  # warm the file cache
        help_s = min(timed([exe, "--help"]) for _ in range(args.repeat))
        runs = (("examples (20 queries)", REPO / "examples" / "queries", 20), ("500-image folder", big, 500))
        for label, queries, n in runs:
            best = min(timed([exe, "classify", str(support), str(queries), "-f", "csv"]) for _ in range(args.repeat))
            rows.append((label, n, best, n / best))
    print(f"machine: {os.cpu_count()} cores; best of {args.repeat} runs; whole process, model load included")
    print("| run | queries | wall s | queries/s |")
    print("|---|---|---|---|")
    for label, n, s, rate in rows:
        print(f"| {label} | {n} | {s:.2f} | {rate:.1f} |")
    print(f"| `emdcli --help` | - | {help_s:.2f} | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
