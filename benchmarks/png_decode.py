"""PNG decoding, Pillow against Wuffs, and glibc's malloc thresholds: images/s of ``load_image``.

Each configuration runs in a fresh process (malloc's thresholds cannot be set back): the 1 MP
PNGs of benchmarks/int8_speed.py (1224 x 816) go through ``load_image`` (decode, resize to the
bundled model's input, normalise) by 1 and by 2 threads, after one warm-up pass. Configurations:
the decoder (Pillow, or Wuffs when pywuffs is installed) x malloc (glibc's defaults, or the
thresholds emdcli sets when Wuffs is first used: ``emdcli.io.png.MALLOC_*_THRESHOLD``), in a
new order every round; medians over ``--rounds``.

    python benchmarks/png_decode.py --images 100 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]


def measure(decoder: str, malloc: str, images: int, data: Path) -> dict[str, float]:
    """One configuration, in this process: images/s and CPU ms per image at 1 and 2 threads."""
    from concurrent.futures import ThreadPoolExecutor

    from int8_speed import make_png

    import emdcli.io.png as png
    from emdcli.io.images import Preprocess, load_image

    if malloc == "glibc":
        png._keep_freed_memory = lambda: None  # type: ignore[assignment]  # glibc's own thresholds
    else:
        png._keep_freed_memory()  # as the first PNG Wuffs decodes would (Pillow alone never sets them)
    png.PNG_DECODER = "auto" if decoder == "wuffs" else "pillow"
    paths = make_png(data, images)
    prep = Preprocess()
    for p in paths:
        load_image(p, prep)  # warm: files in the page cache, Wuffs loaded
    out = {}
    for threads in (1, 2):
        with ThreadPoolExecutor(threads) as pool:
            c0, t0 = time.process_time(), time.perf_counter()
            list(pool.map(lambda p: load_image(p, prep), paths))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[f"rate{threads}"] = len(paths) / wall
        out[f"cpu{threads}"] = 1000 * cpu / len(paths)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--one", nargs=2, metavar=("DECODER", "MALLOC"), help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.images, args.data)))
        return 0
    from common import command_line

    from emdcli.io.png import MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD, wuffs

    decoders = ["pillow"] + (["wuffs"] if wuffs() is not None else [])
    configs = [(d, m) for d in decoders for m in ("glibc", "emdcli")]
    print(f"# {command_line()}")
    if "wuffs" not in decoders:
        print("# pywuffs is not installed (pip install 'emdcli[fast]'): Pillow only")
    print(f"# {args.images} 1 MP PNGs; {args.rounds} rounds, a fresh process per configuration")
    results: dict[tuple[str, str], list[dict[str, float]]] = {c: [] for c in configs}
    rng = random.Random(0)
    for rnd in range(1, args.rounds + 1):
        for decoder, malloc in rng.sample(configs, len(configs)):
            cmd = [sys.executable, __file__, "--one", decoder, malloc, "--images", str(args.images)]
            done = subprocess.run([*cmd, "--data", str(args.data)], capture_output=True, text=True, check=True)
            results[(decoder, malloc)].append(json.loads(done.stdout))
        print(f"# round {rnd} done", file=sys.stderr, flush=True)
    print("\n| decoder | malloc thresholds | images/s, 1 thread | images/s, 2 threads | CPU ms/image, 2 threads |")
    print("|---|---|---|---|---|")
    for decoder, malloc in configs:
        runs = results[(decoder, malloc)]
        r1, r2, c2 = (statistics.median(r[k] for r in runs) for k in ("rate1", "rate2", "cpu2"))
        mb = MALLOC_MMAP_THRESHOLD >> 20, MALLOC_TRIM_THRESHOLD >> 20
        label = "glibc's defaults" if malloc == "glibc" else f"emdcli's ({mb[0]} MB mmap, {mb[1]} MB trim)"
        print(f"| {decoder} | {label} | {r1:.1f} | {r2:.1f} | {c2:.2f} |")
    return 0


if __name__ == "__main__":
    from common import publish

    if "--one" in sys.argv:  # a child of the run: what it prints is the parent's to record
        sys.exit(main())
    with publish("png_decode"):
        sys.exit(main())
