"""The few-shot accuracy table of docs/benchmarks.md, produced by ``emdcli evaluate`` itself.

For every set under DATA and every setting (5-way 1-shot, 5-way 5-shot, 20-way 1-shot)
this runs ``emdcli evaluate SET --format json`` with the methods of that setting, all on
the same seeded episodes, and prints two Markdown tables: every method (accuracy ± 95%
interval per method, then the paired difference to ``proto``), then ``default`` (what
``emdcli classify`` does with its defaults) against the baseline, with the mean of the
paired differences per setting. Every number in both tables comes from the JSON of these
runs. Settings a set is too small for are reported as such. Image features come from
emdcli's feature cache after the first run.

    python benchmarks/fewshot_table.py --data ../shared/data --episodes 600 --query 5
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

#: (way, shot, methods). 20-way runs cost 16x the EMD solves of 5-way ones: fewer variants there.
#: ``default`` comes last: it reuses the parts (emd, emd-sfc, global cosine) the methods before
#: it computed in the episode's memo, and the methods before it are timed as without it.
SETTINGS: list[tuple[int, int, list[str]]] = [
    (5, 1, ["proto", "emd", "emd-uniform", "emd-episode-centre", "emd-pyramid", "emd+global", "emd-uniform+global",
            "default"]),
    (5, 5, ["proto", "emd", "emd-uniform", "emd-episode-centre", "emd-pyramid", "emd+global", "emd-uniform+global",
            "emd-sfc", "emd-sfc+global", "emd-best-shot", "emd-mean-shot", "default"]),
    (20, 1, ["proto", "emd", "emd+global", "default"]),
]  # fmt: skip

#: The columns of the second table: the baseline, plain DeepEMD, and classify's default.
BASELINE, EMD, DEFAULT = "proto", "emd", "default"


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


def accuracy_text(doc: dict, method: str) -> str:
    """``accuracy ± ci95`` of ``method`` in one run's JSON document."""
    r = next(r for r in doc["rows"] if r["method"] == method)
    return f"{r['accuracy']:.1f} ± {r['ci95']:.1f}"


def default_table(runs: list[tuple[str, str, dict | str]]) -> list[str]:
    """The Markdown lines of the default-against-the-baseline table.

    runs: (set name, setting, JSON document or the error line) in print order, settings
    grouped. After each setting's rows, a ``mean`` row: the mean of its paired
    differences ``default - proto`` as the JSON documents give them.
    """
    lines = [
        f"| set | setting | {BASELINE} | {EMD} | {DEFAULT} | {DEFAULT} − {BASELINE} (paired) |",
        "|---|---|---|---|---|---|",
    ]
    settings = list(dict.fromkeys(setting for _, setting, _ in runs))
    for setting in settings:
        diffs = []
        for name, s, doc in runs:
            if s != setting:
                continue
            if isinstance(doc, str):
                reason = doc.removeprefix("Error: ")
                lines.append(f"| {name} | {setting} | n/a: {reason} | | | |")
                continue
            p = next(r for r in doc["rows"] if r["method"] == DEFAULT)
            diffs.append(p["vs_proto"])
            lines.append(
                f"| {name} | {setting} | {accuracy_text(doc, BASELINE)} | {accuracy_text(doc, EMD)} "
                f"| {accuracy_text(doc, DEFAULT)} | **{p['vs_proto']:+.1f} ± {p['vs_proto_ci95']:.1f}** |"
            )
        mean = f"**{sum(diffs) / len(diffs):+.2f}**" if diffs else "n/a: no set ran"
        lines.append(f"| mean | {setting} | | | | {mean} |")
    return lines


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
    print(f"<!-- python {shlex.join(sys.argv)} -->")  # the exact command line, arguments as given
    print("| set | setting | method | accuracy % | vs proto (paired) | ms / episode |")
    print("|---|---|---|---|---|---|")
    runs: list[tuple[str, str, dict | str]] = []
    for way, shot, methods in settings:
        for dataset in sets:
            t0 = time.perf_counter()
            doc = run_evaluate(dataset, way, shot, methods, args)
            setting = f"{way}-way {shot}-shot"
            runs.append((dataset.name, setting, doc))
            if isinstance(doc, str):
                print(f"| {dataset.name} | {setting} | n/a | {doc} | | |", flush=True)
                continue
            for r in doc["rows"]:
                diff = "" if r["vs_proto"] is None else f"{r['vs_proto']:+.1f} ± {r['vs_proto_ci95']:.1f}"
                print(
                    f"| {dataset.name} | {setting} | {r['method']} | {r['accuracy']:.1f} ± {r['ci95']:.1f} "
                    f"| {diff} | {1000 * r['seconds_per_episode']:.0f} |",
                    flush=True,
                )
            print(f"# {dataset.name} {setting}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print()
    print("\n".join(default_table(runs)), flush=True)
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("fewshot_table"):
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        sys.exit(main())
