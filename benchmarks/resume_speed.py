"""A folder run stopped halfway, then ``--resume``: what it embeds again and how long it takes.

Builds a folder of ``--images`` images of ``../shared/data`` (every set, in turn), then per round, each
in a fresh feature cache and a fresh process (``emdcli classify SUPPORT FOLDER -o preds.csv``):

- ``fresh``: the whole folder, uninterrupted;
- ``stopped``: the same command, sent SIGINT once half of the queries' features are in the cache;
- ``resume``: the same command with ``--resume``, after ``stopped``, in the same cache.

It prints, per round, the seconds of each, how many queries ``--resume`` read from the cache (its
summary line's "N embedded by an earlier run") against how many the stopped run had embedded, and whether the
resumed rows equal the fresh run's; then the median of ``resume / fresh``. (The cache is keyed by
content: a few images of the sets are byte-identical, so more queries can be read from it than it
has entries.) Rounds alternate nothing:
each round runs fresh first, then stopped and resume.

    python benchmarks/resume_speed.py --images 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line  # noqa: E402


def entries(cache: Path) -> int:
    return len(list(cache.rglob("*.npy")))


def run(args: list[str], cache: Path, stop_at: int | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Seconds of ``emdcli classify ARGS`` in ``cache``; with ``stop_at``, SIGINT once the cache holds
    that many entries."""
    env = {**os.environ, "EMDCLI_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "emdcli", "classify", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    if stop_at is not None:
        while proc.poll() is None and entries(cache) < stop_at:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate()
    return time.perf_counter() - t0, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--support", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "support")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="emdcli-resume-"))
    try:
        sets = sorted(p for p in a.data.iterdir() if p.is_dir())
        pools = [sorted(s.rglob("*.png")) for s in sets]
        folder = work / "folder"
        for i in range(a.images):
            src = pools[i % len(pools)][i // len(pools)]
            dst = folder / f"{i:05d}_{src.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        support = sum(1 for _ in a.support.rglob("*.png"))
        print(f"# {command_line()}")
        shown = os.path.relpath(a.support, Path(__file__).resolve().parents[1])
        print(f"# {a.images} images of {', '.join(s.name for s in sets)}; support {shown} ({support} images); "
              "bundled model, defaults; one fresh process and feature cache per run")  # fmt: skip
        print("\n| round | fresh (s) | stopped (s) | cache entries when stopped | resume (s) "
              "| read from the cache on resume | resume / fresh | rows equal |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        ratios = []
        for r in range(a.rounds):
            out = work / f"preds{r}.csv"
            fresh_cache, cache = work / f"cache-fresh{r}", work / f"cache{r}"
            base = [str(a.support), str(folder), "-q"]
            fresh_s, fresh = run([*base, "-o", str(work / f"fresh{r}.csv")], fresh_cache)
            stop_s, stopped = run([*base, "-o", str(out)], cache, stop_at=support + a.images // 2)
            embedded = entries(cache) - support
            resume_s, resumed = run([str(a.support), str(folder), "-o", str(out), "--resume"], cache)
            assert fresh.returncode == 0 and stopped.returncode == 130 and resumed.returncode == 0, stopped.stderr
            said = re.search(r"(\d+) embedded by an earlier run", " ".join(resumed.stderr.split()))
            from_cache = int(said.group(1)) if said else 0
            same = out.read_text() == (work / f"fresh{r}.csv").read_text()
            ratios.append(resume_s / fresh_s)
            print(f"| {r + 1} | {fresh_s:.1f} | {stop_s:.1f} | {embedded} | {resume_s:.1f} | {from_cache} "
                  f"| {resume_s / fresh_s:.2f} | {same} |", flush=True)  # fmt: skip
        print(f"\nmedian resume / fresh: {np.median(ratios):.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from common import publish

    with publish("resume_speed"):
        main()
