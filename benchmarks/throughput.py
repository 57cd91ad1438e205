"""Where the time goes in `emdcli classify`, as ratios that survive a noisy machine.

Prints, in one run:
1. backbone-only throughput (onnxruntime on already-preprocessed batches): the limit;
2. end-to-end classification of 500 realistic photos (3000 x 2000 JPEG, quality 90,
   upscaled from ../shared/data/tuxpaint) against a 5-way 5-shot support set, as a
   ratio to that limit, and the share of wall time spent decoding, in the backbone and
   in EMD;
3. the same with a 100-class support set (icons), exhaustive and shortlisted;
4. the support stage cold and warm (feature cache);
5. `emdcli --help` wall time; peak RSS of `emdcli classify` at 500 and 5,000 queries.

    python benchmarks/throughput.py [--data ../shared/data] [--photos 500]

The photos are written once to $TMPDIR/emdcli-bench-photos and reused.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import emdcli.embedding as embedding  # noqa: E402
from emdcli.classify import Classifier  # noqa: E402
from emdcli.folders import ClassFolder, LabelledFolder  # noqa: E402
from emdcli.images import iter_image_files, load_image  # noqa: E402
from emdcli.model import Backbone, resolve_model_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Clock:
    """Thread-safe accumulator of seconds per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, dt: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + dt

    def wrap(self, stage: str, fn):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - t0)

        return timed


def make_photos(data: Path, count: int) -> tuple[list[Path], dict[str, list[Path]]]:
    """Queries: ``count`` 3000x2000 JPEGs. Support: 5 classes x 5 other tuxpaint images."""
    from PIL import Image

    out = Path(tempfile.gettempdir()) / "emdcli-bench-photos"
    by_class = {c.name: sorted(iter_image_files(c)) for c in sorted((data / "tuxpaint").iterdir()) if c.is_dir()}
    big = sorted(by_class, key=lambda c: -len(by_class[c]))[:5]
    support = {c: by_class[c][:5] for c in big}
    pool = [p for c in big for p in by_class[c][5:]]
    rng = random.Random(0)
    photos = []
    for i in range(count):
        src = pool[i % len(pool)]
        dst = out / src.parent.name / f"{i:04d}.jpg"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src) as im:
                rgba = im.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (rng.randrange(200, 256),) * 3)
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            canvas.resize((3000, 2000), Image.Resampling.BICUBIC).save(dst, quality=90)
        photos.append(dst)
    return photos, support


def folder_of(support: dict[str, list[Path]]) -> LabelledFolder:
    classes = tuple(ClassFolder(name, tuple(files)) for name, files in sorted(support.items()))
    return LabelledFolder(Path("."), classes, (), ())


def backbone_limit(backbone: Backbone, photos: list[Path], batch: int) -> float:
    prep = backbone.manifest.preprocess
    arrays = np.stack([load_image(p, prep) for p in photos])
    backbone(arrays[:batch])  # warm up
    t0 = time.perf_counter()
    for i in range(0, len(arrays), batch):
        backbone(arrays[i : i + batch])
    return len(arrays) / (time.perf_counter() - t0)


def run_classify(backbone: Backbone, support: LabelledFolder, queries: list[Path], **kw: object) -> dict:
    clock = Clock()
    real_decode = embedding._decode
    embedding._decode = clock.wrap("decode", real_decode)  # type: ignore[assignment]
    try:
        clf = Classifier(clock.wrap("backbone", backbone), backbone.manifest.preprocess, **kw)  # type: ignore[arg-type]
        support_set = clf.fit(support)
        clock.seconds.clear()
        clf.rank = clock.wrap("emd", clf.rank)  # type: ignore[method-assign]
        t0 = time.perf_counter()
        preds = list(clf.predict(support_set, queries))
        wall = time.perf_counter() - t0
    finally:
        embedding._decode = real_decode  # type: ignore[assignment]
    correct = sum(p.predicted == p.path.parent.name for p in preds if p.ok)
    return {"wall": wall, "rate": len(queries) / wall, "acc": correct / len(preds), **clock.seconds}


def timed_cmd(args: list[str], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def peak_rss_mb(args: list[str], stdin: str) -> float:
    """Peak resident memory (MB) of one command, read from GNU time."""
    res = subprocess.run(["/usr/bin/time", "-f", "%M", *args], input=stdin, text=True, capture_output=True, check=True)
    return int(res.stderr.strip().splitlines()[-1]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--photos", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    print(f"# {os.cpu_count()} cores, {args.photos} photos of 3000x2000 px", flush=True)
    photos, support = make_photos(args.data, args.photos)
    backbone = Backbone(resolve_model_path(None), device="cpu")

    limit = backbone_limit(backbone, photos[:160], args.batch_size)
    print(f"\n## 1. Backbone only (preprocessed batches of {args.batch_size}): {limit:.1f} images/s")

    r5 = run_classify(backbone, folder_of(support), photos, batch_size=args.batch_size)
    print("\n## 2. End to end, 5-way 5-shot support, photos as queries")
    print("| queries/s | ratio to backbone limit | decode (thread-seconds / wall) | backbone | EMD | accuracy |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {r5['rate']:.1f} | {r5['rate'] / limit:.0%} | {r5.get('decode', 0) / r5['wall']:.0%} "
        f"| {r5.get('backbone', 0) / r5['wall']:.0%} | {r5.get('emd', 0) / r5['wall']:.0%} | {r5['acc']:.1%} |",
        flush=True,
    )

    # 3. Many classes: 100 icon classes, 5 shots each; icon queries.
    icons = {c.name: sorted(iter_image_files(c)) for c in sorted((args.data / "icons").iterdir()) if c.is_dir()}
    chosen = [c for c in icons if len(icons[c]) >= 10][:100]
    big_support = {c: icons[c][:5] for c in chosen}
    icon_queries = [p for c in chosen for p in icons[c][5:]][: args.photos]
    small_support = {c: icons[c][:5] for c in chosen[:5]}
    base = run_classify(backbone, folder_of(small_support), icon_queries, batch_size=args.batch_size, shortlist=0)
    print(f"\n## 3. {len(chosen)}-class support (icons, 5 shots), {len(icon_queries)} icon queries")
    print("| support | shortlist | ms per query | ratio to 5 classes | EMD share | accuracy |")
    print("|---|---|---|---|---|---|")
    print(
        f"| 5 classes | - | {1000 * base['wall'] / len(icon_queries):.1f} | 1.00 | "
        f"{base.get('emd', 0) / base['wall']:.0%} | - |"
    )
    for k in (0, 5, 10, 20):
        r = run_classify(backbone, folder_of(big_support), icon_queries, batch_size=args.batch_size, shortlist=k)
        print(
            f"| {len(chosen)} classes | {k or 'none (exhaustive)'} | {1000 * r['wall'] / len(icon_queries):.1f} "
            f"| {r['wall'] / base['wall']:.2f} | {r.get('emd', 0) / r['wall']:.0%} | {r['acc']:.1%} |",
            flush=True,
        )

    # 4. The support stage, cold and warm (feature cache in a fresh folder).
    from emdcli.cache import FeatureCache

    print(
        f"\n## 4. Support stage, {sum(len(v) for v in big_support.values())} icon images "
        f"({len(big_support)} classes x 5), feature cache"
    )
    print("| run | seconds | speed-up |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as cache_root:
        namespace = f"{backbone.manifest.sha256}/{backbone.manifest.preprocess.key()}"
        times = []
        for label in ("cold (empty cache)", "warm (same support again)"):
            clf = Classifier(backbone, backbone.manifest.preprocess, batch_size=args.batch_size,
                             cache=FeatureCache(namespace, root=Path(cache_root)))  # fmt: skip
            t0 = time.perf_counter()
            clf.fit(folder_of(big_support))
            times.append(time.perf_counter() - t0)
            print(f"| {label} | {times[-1]:.2f} | {times[0] / times[-1]:.1f}x |", flush=True)

    # 5. Start-up and memory.
    exe = shutil.which("emdcli") or sys.exit("emdcli is not on PATH")
    help_s = timed_cmd([exe, "--help"])
    print(f"\n## 5. `emdcli --help`: {help_s:.3f} s (best of 5)")
    small = [p for c in sorted((args.data / "tuxpaint").iterdir()) if c.is_dir() for p in iter_image_files(c)]
    support_dir = str(REPO / "examples" / "support")
    print("| queries (224 px PNG, fed on stdin, -f csv) | peak RSS MB |")
    print("|---|---|")
    for n in (500, 5000):
        listing = "\n".join(str(small[i % len(small)]) for i in range(n)) + "\n"
        rss = peak_rss_mb([exe, "classify", support_dir, "-", "-f", "csv", "--quiet"], listing)
        print(f"| {n} | {rss:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
