"""Speed of the INT8 model against the fp32 one, as ratios measured in one run on the same machine.

Prints, fp32 and int8 alternating in every round (medians over ``--rounds``):

(a) backbone-only images/s on already-preprocessed batches of the backbone's batch size, as
    classify runs it (``lanes`` calls at once, cores split between them), at each of ``--lanes``;
(b) end-to-end classification images/s through the library path `emdcli classify` takes
    (``Classifier.fit`` on a 5-way 5-shot tuxpaint support set, then ``predict`` on the queries,
    no feature cache; benchmarks/throughput.py's ``run_classify``) on 1 MP PNG images
    (1224 x 816) and on 6 MP JPEG photos (3000 x 2000, quality 90, benchmarks/throughput.py's
    ``make_photos``), both upscaled from ../shared/data/tuxpaint onto a light grey background;
    at each of ``--lanes`` and of ``--workers`` (decoding threads), the PNGs decoded by Pillow and,
    when pywuffs is installed (the ``fast`` extra), by Wuffs; the ratio int8/fp32 and each
    one's ratio to its own backbone-only limit;
(b2) each configuration of (b) against the layout emdcli 0.1 ran by default (fp32, lanes by
    ``cpu_layout``, 1 decoding thread, PNGs decoded by Pillow) in the same round;
(c) a per-image budget for each precision, each stage timed alone on inputs made beforehand,
    one thread, in ms per image (medians over the images): decode (open and decode the file,
    JPEG at reduced scale as emdcli does: ``decode_rgb``), resize (the decoded image to the
    model's input: ``fit_to_input``), normalise (to the float tensor: ``to_input_array``), backbone (one
    single-threaded call on a batch, per image), EMD matching (ranking one query against the
    support set) and output (the prediction's JSON record).

    python benchmarks/int8_speed.py --data ../shared/data --images 200 --rounds 5
    python benchmarks/int8_speed.py --images 20 --rounds 1          # a quick check

The images are written once to $TMPDIR/emdcli-bench-photos (6 MP, shared with throughput.py)
and $TMPDIR/emdcli-int8-png1mp, and reused.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line  # noqa: E402
from throughput import backbone_limit, folder_of, make_photos, make_queries, run_classify  # noqa: E402

import emdcli.io.png as png  # noqa: E402
from emdcli.features.source import FeatureSource  # noqa: E402
from emdcli.io.images import decode_rgb, fit_to_input, load_image, to_input_array  # noqa: E402
from emdcli.matching.support import Matcher  # noqa: E402
from emdcli.model.backbone import Backbone, cpu_layout, usable_cores  # noqa: E402
from emdcli.model.manifest import int8_sibling, resolve_model_path  # noqa: E402
from emdcli.tasks.classify import Classifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PNG_SIZE = (1224, 816)  # 1.0 MP, 3:2


def make_png(data: Path, count: int) -> list[Path]:
    """``count`` 1 MP PNG queries (benchmarks/throughput.py's ``make_queries``: the same sources and
    support set as the 6 MP photos)."""
    return make_queries(data, count, "emdcli-int8-png1mp", PNG_SIZE, ".png")[0]


def per_image_ms(fn, items: list) -> float:  # type: ignore[no-untyped-def, type-arg]
    """Median wall ms of ``fn(item)`` over ``items`` (one thread, nothing else of ours running)."""
    times = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def budget(manifest: Path, photos: list[Path], support: dict[str, list[Path]], batch: int) -> dict[str, float]:
    """Section (c) for one model and one kind of image: ms per image of each stage alone."""
    backbone = Backbone(manifest, device="cpu", threads=1)
    prep = backbone.manifest.preprocess
    decoded = [decode_rgb(p, prep.size) for p in photos]
    fitted = [fit_to_input(img, prep) for img in decoded]
    out = {"decode": per_image_ms(lambda p: decode_rgb(p, prep.size), photos)}
    out["resize"] = per_image_ms(lambda img: fit_to_input(img, prep), decoded)
    out["normalise"] = per_image_ms(lambda img: to_input_array(img, prep), fitted)
    arrays = np.stack([load_image(p, prep) for p in photos])
    chunks = [arrays[i : i + batch] for i in range(0, len(arrays) - batch + 1, batch)] or [arrays]
    backbone(chunks[0])
    out["backbone"] = per_image_ms(backbone, chunks) / len(chunks[0])
    clf = Classifier(FeatureSource(backbone), Matcher())
    fitted = clf.fit(folder_of(support))
    maps = backbone(arrays[: min(len(arrays), 40)])
    out["EMD matching"] = per_image_ms(lambda f: clf.rank(fitted, f), list(maps))
    preds = list(clf.predict(fitted, photos[: len(maps)]))
    classes = list(fitted.classes)
    out["output"] = per_image_ms(lambda p: json.dumps(p.to_record(classes, 2)), preds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--model-fp32", default=None, help="manifest (default: the bundled model)")
    ap.add_argument("--model-int8", default=None, help="manifest (default: the fp32 model's _int8 sibling)")
    ap.add_argument("--images", type=int, default=200, help="query images of each kind")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lanes", default="1,2", help="comma-separated lane counts (cores split between lanes)")
    ap.add_argument("--workers", default="1,2", help="comma-separated decoding-thread counts (end to end)")
    args = ap.parse_args()
    fp32_path = resolve_model_path(args.model_fp32)
    models = {
        "fp32": fp32_path,
        "int8": resolve_model_path(args.model_int8) if args.model_int8 else int8_sibling(fp32_path),
    }
    lanes_list = [int(x) for x in args.lanes.split(",")]
    workers_list = [int(x) for x in args.workers.split(",")]
    cores = usable_cores()
    before = ("fp32", cpu_layout(cores)[0], 1)  # emdcli 0.1's default: lanes by cpu_layout, 1 decoding thread
    if before[1] not in lanes_list or 1 not in workers_list:
        ap.error(f"--lanes must include {before[1]} and --workers 1: the layout before is the baseline")
    jpegs, support = make_photos(args.data, args.images)
    pngs = make_png(args.data, args.images)
    # kind -> (queries, PNG decoder, the kind whose "before" row is its baseline)
    kinds = {"1 MP PNG, Pillow": (pngs, "pillow", "1 MP PNG, Pillow")}
    if png.wuffs() is not None:
        kinds["1 MP PNG, Wuffs"] = (pngs, "auto", "1 MP PNG, Pillow")
    kinds["6 MP JPEG"] = (jpegs, "pillow", "6 MP JPEG")
    print(f"# {command_line()}")
    if "1 MP PNG, Wuffs" not in kinds:
        print("# pywuffs is not installed (pip install 'emdcli[fast]'): PNGs decoded by Pillow only")
    print(f"# {cores} cores; {args.images} queries of each kind; {args.rounds} rounds, fp32 and int8 alternating")
    backbones = {
        (label, lanes): Backbone(path, device="cpu", lanes=lanes)
        for lanes in lanes_list
        for label, path in models.items()
    }
    for label, path in models.items():
        m = backbones[(label, lanes_list[0])].manifest
        print(f"# {label}: {path} ({m.name}, sha256 {m.sha256[:12]}, precision {m.precision})")
    batch = backbones[("fp32", lanes_list[0])].batch_size
    prep = backbones[("fp32", lanes_list[0])].manifest.preprocess
    arrays = np.stack([load_image(p, prep) for p in pngs[: max(batch, min(160, args.images))]])
    limit: dict[tuple[str, int], list[float]] = {}
    e2e: dict[tuple[str, str, int, int], list[float]] = {}
    acc: dict[tuple[str, str, int, int], float] = {}
    for rnd in range(1, args.rounds + 1):
        for lanes in lanes_list:
            for label in models:
                limit.setdefault((label, lanes), []).append(backbone_limit(backbones[(label, lanes)], arrays, batch)[0])
        for workers in workers_list:
            for lanes in lanes_list:
                for label in models:
                    for kind, (queries, decoder, _) in kinds.items():
                        png.PNG_DECODER = decoder
                        net = backbones[(label, lanes)]
                        r = run_classify(net, folder_of(support), queries, batch_size=batch, workers=workers)
                        e2e.setdefault((kind, label, lanes, workers), []).append(r["rate"])
                        acc[(kind, label, lanes, workers)] = r["acc"]
        print(f"# round {rnd} done", file=sys.stderr, flush=True)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(f"\n## (a) Backbone only, preprocessed batches of {batch}, images/s (median of {args.rounds})\n")
    print("| lanes x threads | fp32 | int8 | int8 / fp32 |")
    print("|---|---|---|---|")
    for lanes in lanes_list:
        f, q = med(limit[("fp32", lanes)]), med(limit[("int8", lanes)])
        ratio = med([b / a for a, b in zip(limit[("fp32", lanes)], limit[("int8", lanes)], strict=True)])
        print(f"| {lanes} x {max(1, cores // lanes)} | {f:.1f} | {q:.1f} | {ratio:.2f}x |")
    print(
        "\n## (b) End to end, Classifier fit + predict (5-way 5-shot tuxpaint support, no cache), images/s\n\n"
        "int8 / fp32: median over rounds of the ratio within a round; to limit: end-to-end rate over the same "
        "model's backbone-only rate of that round.\n"
    )
    print(
        "| images | lanes x threads | decoding threads | fp32 | int8 | int8 / fp32 | fp32 to limit | int8 to limit "
        "| accuracy fp32/int8 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        for workers in workers_list:
            for lanes in lanes_list:
                key = (kind, "fp32", lanes, workers)
                f, q = e2e[key], e2e[(kind, "int8", lanes, workers)]
                ratio = med([b / a for a, b in zip(f, q, strict=True)])
                fl = med([a / b for a, b in zip(f, limit[("fp32", lanes)], strict=True)])
                ql = med([a / b for a, b in zip(q, limit[("int8", lanes)], strict=True)])
                print(
                    f"| {kind} | {lanes} x {max(1, cores // lanes)} | {workers} | {med(f):.1f} | {med(q):.1f} "
                    f"| **{ratio:.2f}x** | {fl:.0%} | {ql:.0%} "
                    f"| {acc[key]:.1%} / {acc[(kind, 'int8', lanes, workers)]:.1%} |"
                )
    print(
        f"\n## (b2) Against the layout before: fp32, {before[1]} x {max(1, cores // before[1])}, "
        "1 decoding thread, Pillow\n\n"
        "Each configuration's images/s over the layout before's in the same round, median over rounds.\n"
    )
    print("| images | precision | lanes x threads | decoding threads | images/s | x before |")
    print("|---|---|---|---|---|---|")
    for kind, (_, _, base_kind) in kinds.items():
        base = e2e[(base_kind, *before)]
        for workers in workers_list:
            for lanes in lanes_list:
                for label in models:
                    rates = e2e[(kind, label, lanes, workers)]
                    gain = med([r / b for r, b in zip(rates, base, strict=True)])
                    print(
                        f"| {kind} | {label} | {lanes} x {max(1, cores // lanes)} | {workers} | {med(rates):.1f} "
                        f"| {gain:.2f}x |"
                    )
    print(
        "\n## (c) Per-image budget, each stage alone on one thread, ms per image (medians over the images)\n\n"
        f"backbone: one single-threaded call on a batch of {batch}, per image.\n"
    )
    stages = ("decode", "resize", "normalise", "backbone", "EMD matching", "output")
    print("| images | precision | " + " | ".join(stages) + " | total | backbone share |")
    print("|---|---|" + "---|" * (len(stages) + 2))
    for kind, (queries, decoder, _) in kinds.items():
        png.PNG_DECODER = decoder
        sample = queries[: min(len(queries), 60)]
        for label, path in models.items():
            b = budget(path, sample, support, batch)
            total = sum(b[s] for s in stages)
            print(
                f"| {kind} | {label} | "
                + " | ".join(f"{b[s]:.2f}" for s in stages)
                + f" | {total:.1f} | {b['backbone'] / total:.0%} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("int8_speed"):
        sys.exit(main())
