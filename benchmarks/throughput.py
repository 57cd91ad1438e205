"""Where the time goes in `emdcli classify`, as ratios that survive a noisy machine.

Prints, in one run:
1. backbone-only throughput (onnxruntime on already-preprocessed batches, as many
   batches at once as classify runs): the limit;
2. end-to-end classification of 500 realistic photos (3000 x 2000 JPEG, quality 90,
   upscaled from ../shared/data/tuxpaint) against a 5-way 5-shot support set, as a
   ratio to that limit, and the share of wall time spent decoding, in the backbone and
   in EMD; 1 and 2 alternate for a few rounds, for the default lane layout and for one
   call using every core, each at the default batch size and at 16; then the CPU each
   stage costs alone, and the ratio that leaves at best;
3. the same with a 100-class support set (icons), exhaustive and shortlisted;
4. the support stage cold and warm (feature cache);
5. `emdcli --help` wall time (median of 5 runs); peak RSS of `emdcli classify` at 500 and
   5,000 queries.

    python benchmarks/throughput.py [--data ../shared/data] [--photos 500]

Smaller runs (to check the script, not for figures): --photos 20 --rounds 1 --classes 10
--rss-queries 50.

The photos are written once to $TMPDIR/emdcli-bench-photos and reused.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import emdcli.features.pipeline as embedding  # noqa: E402
from emdcli.features.cache import FeatureCache  # noqa: E402
from emdcli.features.source import FeatureSource  # noqa: E402
from emdcli.io.folders import ClassFolder, LabelledFolder  # noqa: E402
from emdcli.io.images import Preprocess, iter_image_files, load_image  # noqa: E402
from emdcli.matching.support import Matcher  # noqa: E402
from emdcli.model.backbone import Backbone, cpu_layout, usable_cores  # noqa: E402
from emdcli.model.manifest import resolve_model_path  # noqa: E402
from emdcli.tasks.classify import Classifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Clock:
    """Thread-safe accumulator of CPU seconds per stage (each call's own thread's CPU time)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, dt: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + dt

    def wrap(self, stage: str, fn):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(stage, time.thread_time() - t0)

        return timed


def make_photos(data: Path, count: int) -> tuple[list[Path], dict[str, list[Path]]]:
    """Queries: ``count`` 3000x2000 JPEGs. Support: 5 classes x 5 other tuxpaint images."""
    return make_queries(data, count, "emdcli-bench-photos", (3000, 2000), ".jpg", quality=90)


def make_queries(
    data: Path, count: int, folder: str, size: tuple[int, int], suffix: str, **save: int
) -> tuple[list[Path], dict[str, list[Path]]]:
    """``count`` queries of ``size`` px written once to $TMPDIR/``folder`` (PIL ``save`` options),
    upscaled from the five largest tuxpaint classes onto a light grey background, and the
    support set: the first 5 images of each of those classes (never a query's source)."""
    from PIL import Image

    out = Path(tempfile.gettempdir()) / folder
    by_class = {c.name: sorted(iter_image_files(c)) for c in sorted((data / "tuxpaint").iterdir()) if c.is_dir()}
    big = sorted(by_class, key=lambda c: -len(by_class[c]))[:5]
    support = {c: by_class[c][:5] for c in big}
    pool = [p for c in big for p in by_class[c][5:]]
    rng = random.Random(0)
    photos = []
    for i in range(count):
        src = pool[i % len(pool)]
        dst = out / src.parent.name / f"{i:04d}{suffix}"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src) as im:
                rgba = im.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (rng.randrange(200, 256),) * 3)
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            canvas.resize(size, Image.Resampling.BICUBIC).save(dst, **save)
        photos.append(dst)
    return photos, support


def folder_of(support: dict[str, list[Path]]) -> LabelledFolder:
    classes = tuple(ClassFolder(name, tuple(files)) for name, files in sorted(support.items()))
    return LabelledFolder(Path("."), classes, (), ())


def backbone_limit(backbone: Backbone, arrays: np.ndarray, batch: int) -> tuple[float, float]:
    """Images/s and CPU ms per image of the backbone alone on preprocessed batches,
    ``backbone.lanes`` batches at a time (as classify runs it)."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [arrays[i : i + batch] for i in range(0, len(arrays), batch)]
    backbone(chunks[0])  # warm up
    c0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=backbone.lanes) as pool:
        list(pool.map(backbone, chunks))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(arrays) / wall, 1000 * cpu / len(arrays)


def decode_cpu_ms(photos: list[Path], prep: Preprocess) -> float:
    """CPU ms per photo to decode and preprocess, one thread, nothing else running."""
    c0 = time.process_time()
    for p in photos:
        load_image(p, prep)
    return 1000 * (time.process_time() - c0) / len(photos)


def run_classify(
    backbone: Backbone,
    support: LabelledFolder,
    queries: list[Path],
    *,
    batch_size: int | None = None,
    shortlist: int = 0,
    workers: int | None = None,
) -> dict:
    """Classify ``queries`` against ``support`` as the library does, timing each stage's CPU.

    shortlist: as :class:`~emdcli.matching.support.Matcher`'s. 0 (every class matched by EMD)
    unless a run varies it: the library's default when docs/benchmarks.md was measured (it is
    now 10, which changes nothing at 5 classes but would at 100). The other matching settings
    are the library's defaults (SFC at k-shot, global weight by kshot), unchanged since then.
    workers: decoding threads (None: the library's default).
    """
    clock = Clock()
    real_decode = embedding._decode
    embedding._decode = clock.wrap("decode", real_decode)  # type: ignore[assignment]
    try:
        timed = clock.wrap("backbone", backbone)
        timed.lanes = backbone.lanes  # type: ignore[attr-defined]  # the calls at once and batch size classify uses
        timed.batch_size = backbone.batch_size  # type: ignore[attr-defined]
        source = FeatureSource(timed, backbone.manifest.preprocess, batch_size=batch_size, workers=workers)
        clf = Classifier(source, Matcher(shortlist=shortlist))
        support_set = clf.fit(support)
        clock.seconds.clear()
        # predict matches through the matcher (not Classifier.rank): time that. Matcher is frozen.
        object.__setattr__(clf.matcher, "match", clock.wrap("emd", clf.matcher.match))
        c0, t0 = time.process_time(), time.perf_counter()
        preds = list(clf.predict(support_set, queries))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        embedding._decode = real_decode  # type: ignore[assignment]
    correct = sum(p.predicted == p.path.parent.name for p in preds if p.ok)
    shares = {f"{stage}_share": seconds / cpu for stage, seconds in clock.seconds.items()}
    return {
        "wall": wall, "rate": len(queries) / wall, "acc": correct / len(preds),
        "cpu_ms": 1000 * cpu / len(queries), **clock.seconds, **shares,
    }  # fmt: skip


def timed_cmd(args: list[str], repeat: int = 5, env: dict[str, str] | None = None) -> float:
    """Median wall seconds of ``repeat`` runs of a command, after one untimed warm-up run."""
    subprocess.run(args, check=True, capture_output=True, env=env)  # warm-up (writes bytecode)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mb(args: list[str], stdin: str) -> float:
    """Peak resident memory (MB) of one command, read from GNU time."""
    res = subprocess.run(["/usr/bin/time", "-f", "%M", *args], input=stdin, text=True, capture_output=True, check=True)
    return int(res.stderr.strip().splitlines()[-1]) / 1024


def startup_and_memory(data: Path, rss_queries: tuple[int, ...] = (500, 5000)) -> None:
    """Section 5: `emdcli --help` wall time, and peak RSS of `emdcli classify` by query count
    (each of ``rss_queries``, then the first at batch size 16)."""
    exe = shutil.which("emdcli") or sys.exit("emdcli is not on PATH")
    # As installed by pip, which compiles the bytecode (this machine may set
    # PYTHONDONTWRITEBYTECODE, which leaves an editable install to compile on every start).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    help_s = timed_cmd([exe, "--help"], env=env)
    # The floor: Python with the modules Typer needs to render help (it imports Rich's
    # Markdown, tracebacks and tables whatever the app's markup mode).
    floor_s = timed_cmd([sys.executable, "-c", "import typer.main, typer.rich_utils"], env=env)
    print(
        f"\n## 5. `emdcli --help`: {help_s:.3f} s (median of 5 runs, bytecode compiled); "
        f"importing Typer and Rich alone: {floor_s:.3f} s (median of 5)"
    )
    small = [p for c in sorted((data / "tuxpaint").iterdir()) if c.is_dir() for p in iter_image_files(c)]
    support_dir = str(REPO / "examples" / "support")
    print("| queries (224 px PNG, fed on stdin, -f csv) | peak RSS MB |")
    print("|---|---|")
    for n, extra in [*((q, []) for q in rss_queries), (rss_queries[0], ["--batch-size", "16"])]:
        listing = "\n".join(str(small[i % len(small)]) for i in range(n)) + "\n"
        rss = peak_rss_mb([exe, "classify", support_dir, "-", "-f", "csv", "--quiet", *extra], listing)
        print(f"| {n} {' '.join(extra)} | {rss:.0f} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--photos", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the backbone's (as classify)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of the limit and end-to-end runs")
    ap.add_argument("--classes", type=int, default=100, help="support classes of sections 3 and 4 (icons)")
    ap.add_argument("--rss-queries", default="500,5000", help="comma-separated query counts of section 5's peak RSS")
    ap.add_argument("--startup-only", action="store_true", help="only section 5 (start-up and memory)")
    args = ap.parse_args()
    rss_queries = tuple(int(n) for n in args.rss_queries.split(","))
    if args.startup_only:
        startup_and_memory(args.data, rss_queries)
        return 0
    cores = usable_cores()
    print(f"# {cores} cores, {args.photos} photos of 3000x2000 px, {args.rounds} rounds", flush=True)
    photos, support = make_photos(args.data, args.photos)
    lanes, threads = cpu_layout(cores)
    backbone = Backbone(resolve_model_path(None), device="cpu")
    batch = args.batch_size or backbone.batch_size
    configs = [(f"{lanes} x {threads}, batch {batch} (default)", backbone, batch)]
    if batch != 16:
        configs.append((f"{lanes} x {threads}, batch 16", backbone, 16))
    if lanes > 1:
        one_call = Backbone(resolve_model_path(None), device="cpu", threads=cores)
        configs += [(f"1 x {cores}, batch {batch}", one_call, batch), (f"1 x {cores}, batch 16", one_call, 16)]
    prep = backbone.manifest.preprocess
    arrays = np.stack([load_image(p, prep) for p in photos[:160]])
    ranker = Classifier(FeatureSource(backbone, prep), Matcher(shortlist=0))
    support_set = ranker.fit(folder_of(support))
    query_features = [e.features for e in ranker.source.embed_now(photos[:100]) if e.features is not None]

    print(
        "\n## 1-2. Backbone-only limit and end to end, 5-way 5-shot support, photos as queries\n"
        "Layout: lanes (backbone calls at once) x onnxruntime threads per call. Rounds alternate "
        "the settings so that all see the same machine. CPU ms: process CPU per image. decode, "
        "backbone, EMD: their share of the process CPU (the CPU time of the threads doing them; "
        "with one call over several threads, the backbone's other threads count as rest)."
    )
    print(
        "| round | setting | limit images/s | limit CPU ms | queries/s | ratio to limit "
        "| CPU ms | decode | backbone | EMD | rest | accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in configs}
    emd_shares: list[float] = []
    alone: list[tuple[float, float, float]] = []
    for rnd in range(1, args.rounds + 1):
        for name, net, size in configs:
            limit, limit_cpu = backbone_limit(net, arrays, size)
            r = run_classify(net, folder_of(support), photos, batch_size=size)
            runs[name].append((limit, r["rate"]))
            if name == configs[0][0]:
                emd_shares.append(r["emd_share"])
            rest = 1 - r["decode_share"] - r["backbone_share"] - r["emd_share"]
            print(
                f"| {rnd} | {name} | {limit:.1f} | {limit_cpu:.1f} | {r['rate']:.1f} | {r['rate'] / limit:.0%} "
                f"| {r['cpu_ms']:.1f} | {r['decode_share']:.0%} | {r['backbone_share']:.0%} "
                f"| {r['emd_share']:.0%} | {rest:.0%} | {r['acc']:.1%} |",
                flush=True,
            )
        # The CPU each stage costs alone, once per round: decode, backbone (default setting), EMD.
        c0 = time.process_time()
        for f in query_features:
            ranker.rank(support_set, f)
        emd_ms = 1000 * (time.process_time() - c0) / len(query_features)
        alone.append((decode_cpu_ms(photos[:100], prep), backbone_limit(backbone, arrays, batch)[1], emd_ms))

    print(
        "\nMedians over the rounds. A slower backbone setting is easier to keep busy, so each "
        "end-to-end rate is also given as a ratio to the highest backbone-only limit of all settings:\n"
    )
    print("| setting | limit images/s | end to end queries/s | ratio to own limit | ratio to highest limit |")
    print("|---|---|---|---|---|")
    best = max(statistics.median(v[0] for v in values) for values in runs.values())
    for name, values in runs.items():
        limit = statistics.median(v[0] for v in values)
        rate = statistics.median(v[1] for v in values)
        ratio = statistics.median(v[1] / v[0] for v in values)
        print(f"| {name} | {limit:.1f} | {rate:.1f} | {ratio:.0%} | {rate / best:.0%} |")
    print(f"\nMedian EMD share of the CPU, default setting: {statistics.median(emd_shares):.0%}")
    dec, net_ms, emd_ms = (statistics.median(a[i] for a in alone) for i in range(3))
    print(
        f"CPU per photo, each stage alone (medians): decode and preprocess {dec:.1f} ms, backbone "
        f"{net_ms:.1f} ms, EMD ranking {emd_ms:.1f} ms. With every core busy and nothing lost to "
        f"sharing them, end to end can reach at most {net_ms / (net_ms + dec + emd_ms):.0%} of the "
        "backbone-only rate.",
        flush=True,
    )

    # 3. Many classes: 100 icon classes (--classes), 5 shots each; icon queries.
    icons = {c.name: sorted(iter_image_files(c)) for c in sorted((args.data / "icons").iterdir()) if c.is_dir()}
    chosen = [c for c in icons if len(icons[c]) >= 10][: args.classes]
    big_support = {c: icons[c][:5] for c in chosen}
    icon_queries = [p for c in chosen for p in icons[c][5:]][: args.photos]
    small_support = {c: icons[c][:5] for c in chosen[:5]}
    base = run_classify(backbone, folder_of(small_support), icon_queries, batch_size=args.batch_size, shortlist=0)
    print(f"\n## 3. {len(chosen)}-class support (icons, 5 shots), {len(icon_queries)} icon queries")
    print("| support | shortlist | ms per query | ratio to 5 classes | EMD share of CPU | accuracy |")
    print("|---|---|---|---|---|---|")
    print(f"| 5 classes | - | {1000 * base['wall'] / len(icon_queries):.1f} | 1.00 | {base['emd_share']:.0%} | - |")
    for k in (0, 5, 10, 20):
        r = run_classify(backbone, folder_of(big_support), icon_queries, batch_size=args.batch_size, shortlist=k)
        print(
            f"| {len(chosen)} classes | {k or 'none (exhaustive)'} | {1000 * r['wall'] / len(icon_queries):.1f} "
            f"| {r['wall'] / base['wall']:.2f} | {r['emd_share']:.0%} | {r['acc']:.1%} |",
            flush=True,
        )

    # 4. The support stage, cold and warm (feature cache in a fresh folder).
    print(
        f"\n## 4. Support stage, {sum(len(v) for v in big_support.values())} icon images "
        f"({len(big_support)} classes x 5), feature cache"
    )
    print("| run | seconds | speed-up |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as cache_root:
        times = []
        for label in ("cold (empty cache)", "warm (same support again)"):
            cache = FeatureCache.for_model(backbone.manifest, root=Path(cache_root))
            clf = Classifier(FeatureSource(backbone, batch_size=args.batch_size, cache=cache))
            t0 = time.perf_counter()
            clf.fit(folder_of(big_support))
            times.append(time.perf_counter() - t0)
            print(f"| {label} | {times[-1]:.2f} | {times[0] / times[-1]:.1f}x |", flush=True)

    startup_and_memory(args.data, rss_queries)
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("throughput", "--startup-only=startup"):
        sys.exit(main())
