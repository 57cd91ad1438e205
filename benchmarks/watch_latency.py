"""``emdcli watch``: from an image landing in the inbox to its row on disk.

Makes ``--images`` distinct 1 MP JPEGs (1155 x 866, quality 90) from the images of ``../shared/data``
(every set in turn; distinct content, so the feature cache never has them), starts
``emdcli watch SUPPORT INBOX -o rows.csv`` in a fresh feature cache and waits until it watches (the
model warm). Then, one image at a time, ``--gap`` seconds apart, it lands an image in the inbox by
one of two ways, alternating:

- ``write``: the image's bytes written into INBOX/NAME and the file closed;
- ``move``: the file written in a folder beside the inbox, then renamed into it.

The clock starts when the close or the rename returns and stops when a line of rows.csv names the
file (the file is read every millisecond). The first ``--warmup`` images are not counted. Per watch
mode (native file events, and ``--poll 0.5``) it prints the median, the 90th percentile and the
number of images, per way of landing and in all; then, in the same run, the median wall time of
``emdcli classify SUPPORT ONE.jpg`` (a fresh process per image: what a script gets without watch).

    python benchmarks/watch_latency.py --images 40
"""

from __future__ import annotations

import argparse
import os
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

ROOT = Path(__file__).resolve().parents[1]
SIZE = (1155, 866)  # 1.0 MP


def make_images(data: Path, n: int, out: Path) -> list[Path]:
    """``n`` distinct 1 MP JPEGs made from the images of every set under ``data``, in turn."""
    from PIL import Image

    sets = sorted(p for p in data.iterdir() if p.is_dir())
    pools = [sorted(q for q in s.rglob("*") if q.suffix.lower() in (".png", ".jpg", ".jpeg")) for s in sets]
    made = []
    for i in range(n):
        pool = pools[i % len(pools)]
        src = pool[(i // len(pools)) * 7 % len(pool)]
        with Image.open(src) as im:
            rgb = im.convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)
        path = out / f"img{i:04d}.jpg"
        rgb.save(path, quality=90)
        made.append(path)
    return made


def land(image: Path, inbox: Path, staging: Path, how: str) -> float:
    """Put ``image`` into ``inbox`` by ``how`` (write or move); the perf_counter when it is there."""
    data = image.read_bytes()
    if how == "write":
        with open(inbox / image.name, "wb") as f:
            f.write(data)
        return time.perf_counter()
    tmp = staging / image.name
    tmp.write_bytes(data)
    os.rename(tmp, inbox / image.name)
    return time.perf_counter()


def wait_for_row(rows: Path, name: str, timeout: float = 30.0) -> float:
    """The perf_counter when a complete line of ``rows`` first names ``name``."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        try:
            text = rows.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines(keepends=True):
            if name in line and line.endswith("\n"):
                return time.perf_counter()
        time.sleep(0.001)
    raise TimeoutError(f"no row for {name} within {timeout} s")


def watch_run(
    images: list[Path], support: Path, work: Path, poll: float | None, warmup: int, gap: float
) -> dict[str, list[float]]:
    """Latencies (ms) by way of landing for one watch process."""
    inbox, staging = work / "inbox", work / "staging"
    for d in (inbox, staging):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    rows = work / "rows.csv"
    rows.unlink(missing_ok=True)
    env = {**os.environ, "EMDCLI_CACHE_DIR": str(work / "cache")}
    cmd = [sys.executable, "-m", "emdcli", "watch", str(support), str(inbox), "-o", str(rows)]
    if poll is not None:
        cmd += ["--poll", str(poll)]
    err = open(work / "stderr.txt", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stderr=err, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while "watching" not in (work / "stderr.txt").read_text():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError((work / "stderr.txt").read_text())
            time.sleep(0.05)
        found: dict[str, list[float]] = {"write": [], "move": []}
        for i, image in enumerate(images):
            how = ("write", "move")[i % 2]
            t0 = land(image, inbox, staging, how)
            t1 = wait_for_row(rows, image.name)
            if i >= warmup:
                found[how].append(1000 * (t1 - t0))
            time.sleep(gap)
        return found
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        err.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--support", type=Path, default=ROOT / "examples" / "support")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--gap", type=float, default=0.3, help="seconds between landings")
    ap.add_argument("--classify-runs", type=int, default=5)
    args = ap.parse_args()

    print(f"$ {command_line()}\n")
    with tempfile.TemporaryDirectory(prefix="emdcli-watch-") as tmp:
        work = Path(tmp)
        (work / "images").mkdir()
        images = make_images(args.data, args.images + args.warmup, work / "images")
        print(
            f"{len(images)} distinct {SIZE[0]}x{SIZE[1]} JPEGs (the first {args.warmup} not counted); support "
            f"{os.path.relpath(args.support, ROOT)}; one image every {args.gap} s; {os.cpu_count()} CPUs\n"
        )
        print("| watch mode | landed by | median ms | p90 ms | images |")
        print("|---|---|---|---|---|")
        for label, poll in (("native events", None), ("--poll 0.5", 0.5)):
            found = watch_run(images, args.support, work, poll, args.warmup, args.gap)
            both = found["write"] + found["move"]
            for how, ms in (*found.items(), ("either", both)):
                print(f"| {label} | {how} | {np.median(ms):.1f} | {np.percentile(ms, 90):.1f} | {len(ms)} |")
        walls = []
        for image in images[: args.classify_runs]:
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "emdcli", "classify", str(args.support), str(image), "-f", "csv"]
            env = {**os.environ, "EMDCLI_CACHE_DIR": str(work / "cache")}
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            walls.append(1000 * (time.perf_counter() - t0))
        print(
            f"\nemdcli classify SUPPORT ONE.jpg (a fresh process each, warm feature cache for the support): "
            f"median {np.median(walls):.0f} ms over {len(walls)} images"
        )


if __name__ == "__main__":
    from common import publish

    with publish("watch_latency"):
        main()
