"""Few-shot accuracy of the INT8 model against the fp32 one it was quantized from, on the same episodes.

For every set under DATA (one folder per class), the classes are split in two by
benchmarks/transductive.py's seeded permutation (``--split-seed``, 0 as everywhere): the int8
model is calibrated on dev-half images only, so accuracy is measured on the eval half. Both
models embed those images (through the feature cache, keyed by each model's sha256, so a rerun
costs only the episodes); one episode plan per set and setting (``sample_episodes`` with
``--seed``, as ``emdcli evaluate`` draws them) is scored by both through
``emdcli.tasks.evaluate.evaluate_episodes``, and the per-episode differences int8 - fp32 give a
mean ± 95% interval (1.96 * std / sqrt(episodes)) in points.

``--also retrieval,anomaly`` runs benchmarks/retrieval.py and benchmarks/anomaly.py for each model
as well (their own protocols, on every class of ``--also-sets``; the model is passed by replacing
their ``cached_source``) and prints their rows for fp32 and int8 one under the other.

    python benchmarks/int8_accuracy.py --data ../shared/data --episodes 300
    python benchmarks/int8_accuracy.py --sets openclipart --episodes 20        # a quick check
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line  # noqa: E402
from transductive import split  # noqa: E402

from emdcli.features.cache import FeatureCache  # noqa: E402
from emdcli.features.source import FeatureSource  # noqa: E402
from emdcli.io.folders import read_labelled_folder  # noqa: E402
from emdcli.model.backbone import Backbone  # noqa: E402
from emdcli.model.manifest import int8_sibling, resolve_model_path  # noqa: E402
from emdcli.tasks.episodes import sample_episodes  # noqa: E402
from emdcli.tasks.evaluate import evaluate_episodes, mean_ci95  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def source_for(manifest: Path) -> FeatureSource:
    """The model on CPU (the default lane layout) with a feature cache big enough for every set."""
    backbone = Backbone(manifest, device="cpu")
    return FeatureSource(backbone, cache=FeatureCache.for_model(backbone.manifest, max_bytes=2**32))


def eval_half(
    source: FeatureSource, root: Path, split_seed: int, half: str = "eval"
) -> tuple[tuple[Path, ...], np.ndarray, np.ndarray]:
    """Paths, labels and (N, C, H, W) maps of the eval-half (or ``half="dev"``) classes of one set."""
    folder = read_labelled_folder(root)
    dev, held_out = split(list(folder.names), split_seed)
    keep = set(held_out if half == "eval" else dev)
    folder = replace(folder, classes=tuple(c for c in folder.classes if c.name in keep))
    found = source.labelled(folder)
    assert found.features is not None, f"{root}: no readable image"
    return found.paths, found.labels, found.features


def passthrough(module_name: str, argv: list[str], source: FeatureSource) -> list[str]:
    """The Markdown table rows that benchmarks/<module_name>.py prints for the model of ``source``."""
    import importlib

    module = importlib.import_module(module_name)
    module.cached_source = lambda: (source.extractor, source)  # type: ignore[attr-defined]
    saved, out = sys.argv, io.StringIO()
    sys.argv = [f"{module_name}.py", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            module.main()
    finally:
        sys.argv = saved
    lines = [line for line in out.getvalue().splitlines() if line.startswith("| ")]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--model-fp32", default=None, help="manifest (default: the bundled model)")
    ap.add_argument("--model-int8", default=None, help="manifest (default: the fp32 model's _int8 sibling)")
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--sets", default="", help="comma-separated subset of the sets under --data")
    ap.add_argument("--seed", type=int, default=0, help="episode seed")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument(
        "--half", choices=("eval", "dev"), default="eval", help="dev: the calibration half, to choose settings on"
    )
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--query", type=int, default=5)
    ap.add_argument("--methods", default="default,proto")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="threads scoring episodes")
    ap.add_argument("--also", default="", help="comma-separated: retrieval, anomaly")
    ap.add_argument("--also-sets", default="cards,icons,openclipart,tuxpaint")
    ap.add_argument("--retrieval-limit", type=int, default=300, help="queries per set of the retrieval run")
    args = ap.parse_args()
    fp32_path = resolve_model_path(args.model_fp32)
    int8_path = resolve_model_path(args.model_int8) if args.model_int8 else int8_sibling(fp32_path)
    names = sorted(p.name for p in args.data.iterdir() if p.is_dir())
    if args.sets:
        names = [n for n in names if n in args.sets.split(",")]
    shots = [int(s) for s in args.shots.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    sources = {"fp32": source_for(fp32_path), "int8": source_for(int8_path)}
    print(f"# {command_line()}")
    for label, src in sources.items():
        m = src.extractor.manifest  # type: ignore[attr-defined]
        print(f"# {label}: {m.name} (sha256 {m.sha256[:12]}, precision {m.precision})")
    print(
        f"# {args.half}-half classes (split seed {args.split_seed}); {args.way}-way, {args.query} queries per class, "
        f"{args.episodes} episodes per row (seed {args.seed}), the same episodes for both models; "
        "int8 - fp32: mean of the per-episode differences ± 95% interval, in points"
    )
    print()
    print("| set | setting | method | fp32 % | int8 % | int8 − fp32 (paired) |")
    print("|---|---|---|---|---|---|")
    worst: list[tuple[float, float, str]] = []
    for name in names:
        t0 = time.perf_counter()
        embedded = {
            label: eval_half(src, args.data / name, args.split_seed, args.half) for label, src in sources.items()
        }
        if embedded["fp32"][0] != embedded["int8"][0]:
            raise SystemExit(f"{name}: the two models read different images")
        labels = embedded["fp32"][1]
        for shot in shots:
            setting = f"{args.way}-way {shot}-shot"
            try:
                plan = sample_episodes(labels, args.way, shot, args.query, args.episodes, args.seed)
            except Exception as exc:  # too small a set for the shape
                print(f"| {name} | {setting} | n/a: {exc} | | | |", flush=True)
                continue
            runs = {
                label: evaluate_episodes(maps, plan, methods, workers=args.jobs)
                for label, (_, _, maps) in embedded.items()
            }
            for method in methods:
                a, b = runs["fp32"].per_episode[method], runs["int8"].per_episode[method]
                (fa, fh), (qa, qh) = mean_ci95(a), mean_ci95(b)
                d, dh = mean_ci95(b - a)
                worst.append((100 * d, 100 * dh, f"{name} {setting} {method}"))
                print(
                    f"| {name} | {setting} | {method} | {100 * fa:.1f} ± {100 * fh:.1f} "
                    f"| {100 * qa:.1f} ± {100 * qh:.1f} | {100 * d:+.2f} ± {100 * dh:.2f} |",
                    flush=True,
                )
        print(f"# {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if worst:
        low = min(worst)
        mean = float(np.mean([w[0] for w in worst]))
        print(
            f"\nMean of the {len(worst)} paired differences: {mean:+.2f} points; "
            f"the lowest: {low[0]:+.2f} ± {low[1]:.2f} ({low[2]})."
        )
    also = [a for a in args.also.split(",") if a]
    for which in also:
        argv = ["--data", str(args.data), "--sets", args.also_sets]
        if which == "retrieval":
            argv += ["--limit", str(args.retrieval_limit)]
        rows = {label: passthrough(which, argv, src) for label, src in sources.items()}
        print(f"\n{which} (python benchmarks/{which}.py {' '.join(argv)}), each row for fp32 then int8:\n")
        header, *fp_rows = rows["fp32"]
        _, *q_rows = rows["int8"]
        cells = header.split("|")
        print("|".join([*cells[:2], " model ", *cells[2:]]))
        print("|---" * (len(cells) - 1) + "|")
        for f_row, q_row in zip(fp_rows, q_rows, strict=True):
            for label, row in (("fp32", f_row), ("int8", q_row)):
                parts = row.split("|")
                print("|".join([*parts[:2], f" {label} ", *parts[2:]]), flush=True)
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("int8_accuracy", "--half"):
        sys.exit(main())
