"""The few-shot accuracy table of docs/benchmarks.md, produced by ``emdcli evaluate`` itself.

For every set under DATA and every setting (5-way 1-shot, 5-way 5-shot, 20-way 1-shot)
this runs ``emdcli evaluate SET --format json`` with the methods of that setting, all on
the same seeded episodes, and prints one Markdown table: accuracy ± 95% interval per
method, then the paired difference to ``proto``. Settings a set is too small for are
reported as such. Image features come from emdcli's feature cache after the first run.

    python benchmarks/fewshot_table.py --data ../shared/data --episodes 600 --query 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: (way, shot, methods). 20-way runs cost 16x the EMD solves of 5-way ones: fewer variants there.
SETTINGS: list[tuple[int, int, list[str]]] = [
    (5, 1, ["proto", "emd", "emd-uniform", "emd-episode-centre", "emd-pyramid", "emd+global", "emd-uniform+global"]),
    (5, 5, ["proto", "emd", "emd-uniform", "emd-episode-centre", "emd-pyramid", "emd+global", "emd-uniform+global",
            "emd-sfc", "emd-sfc+global", "emd-best-shot", "emd-mean-shot"]),
    (20, 1, ["proto", "emd", "emd+global"]),
]  # fmt: skip


def run_evaluate(dataset: Path, way: int, shot: int, methods: list[str], args: argparse.Namespace) -> dict | str:
    """The JSON document of one ``emdcli evaluate`` run, or the error line it printed."""
    cmd = [
        sys.executable, "-m", "emdcli", "evaluate", str(dataset), "--way", str(way), "--shot", str(shot),
        "--query", str(args.query), "--episodes", str(args.episodes), "--seed", str(args.seed),
        "--methods", ",".join(methods), "--format", "json", "--quiet",
    ]  # fmt: skip
    if args.jobs:
        cmd += ["--jobs", str(args.jobs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 2:
        return proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else "usage error"
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--query", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=0, help="threads per evaluate run (default: all CPUs)")
    ap.add_argument("--sets", default="", help="comma-separated subset of set names")
    ap.add_argument("--settings", default="", help="comma-separated subset, e.g. 5w1s,5w5s,20w1s")
    args = ap.parse_args()
    sets = sorted(p for p in args.data.iterdir() if p.is_dir())
    if args.sets:
        sets = [p for p in sets if p.name in args.sets.split(",")]
    settings = SETTINGS
    if args.settings:
        settings = [s for s in SETTINGS if f"{s[0]}w{s[1]}s" in args.settings.split(",")]
    print(f"<!-- python benchmarks/fewshot_table.py --episodes {args.episodes} --query {args.query} "
          f"--seed {args.seed} -->")  # fmt: skip
    print("| set | setting | method | accuracy % | vs proto (paired) | ms / episode |")
    print("|---|---|---|---|---|---|")
    for way, shot, methods in settings:
        for dataset in sets:
            t0 = time.perf_counter()
            doc = run_evaluate(dataset, way, shot, methods, args)
            setting = f"{way}-way {shot}-shot"
            if isinstance(doc, str):
                print(f"| {dataset.name} | {setting} | n/a | {doc} | | |", flush=True)
                continue
            paired = {p["method"]: p for p in doc["paired"]}
            for r in doc["results"]:
                p = paired.get(r["method"])
                diff = f"{p['difference']:+.1f} ± {p['ci95']:.1f}" if p else ""
                print(
                    f"| {dataset.name} | {setting} | {r['method']} | {r['accuracy']:.1f} ± {r['ci95']:.1f} "
                    f"| {diff} | {1000 * r['seconds_per_episode']:.0f} |",
                    flush=True,
                )
            print(f"# {dataset.name} {setting}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
