"""Few-shot accuracy with the reduced-scale resize (``emdcli.io.images.REDUCING_GAP``) against one
bicubic pass, on the same episodes, on large images.

The image sets are small (every shorter side under 448 px), where the two resizes give the same
pixels. So every image is first upscaled in memory, bicubic, to a shorter side of ``--side`` px (816:
a 1 MP photo of 3:2), composited on white as emdcli reads it; then brought to the model's input by
``fit_to_input`` with ``reducing_gap=None`` (one bicubic pass, emdcli 0.2.0) and with the default
gap, and embedded by the bundled model at its default precision. For each set and half (classes split
as benchmarks/transductive.py splits them), one episode plan per setting (``sample_episodes``, seed
``--seed``) is scored on both; the per-episode differences give a mean ± 95% interval in points.

    python benchmarks/resize_accuracy.py --episodes 100
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, publish  # noqa: E402
from transductive import SETS, split  # noqa: E402

from emdcli.io.folders import read_labelled_folder  # noqa: E402
from emdcli.io.images import REDUCING_GAP, decode_rgb, fit_to_input, to_input_array  # noqa: E402
from emdcli.model.backbone import load_model  # noqa: E402
from emdcli.tasks.episodes import sample_episodes  # noqa: E402
from emdcli.tasks.evaluate import evaluate_episodes, mean_ci95  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def inputs(path: Path, side: int, prep) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """The (3, S, S) inputs of ``path`` upscaled to a shorter side of ``side``: one bicubic pass, and
    with the reducing gap."""
    from PIL import Image

    img = decode_rgb(path, prep.size)
    scale = side / min(img.size)
    big = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    return (to_input_array(fit_to_input(big, prep, reducing_gap=None), prep),
            to_input_array(fit_to_input(big, prep), prep))  # fmt: skip


def embedded(backbone, paths: list[Path], side: int, jobs: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """(N, C, H, W) maps of ``paths`` by both resizes."""
    prep = backbone.manifest.preprocess
    with ThreadPoolExecutor(jobs) as pool:
        pairs = list(pool.map(lambda p: inputs(p, side, prep), paths))
    maps = []
    for which in (0, 1):
        arrays = np.stack([p[which] for p in pairs])
        maps.append(np.concatenate([backbone(arrays[i : i + 16]) for i in range(0, len(arrays), 16)]))
    return maps[0], maps[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--side", type=int, default=816)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of the sets")
    args = ap.parse_args()
    backbone = load_model()
    print(f"# {command_line()}")
    print(f"# model {backbone.manifest.name}; images upscaled to a shorter side of {args.side} px; one bicubic "
          f"pass (0.2.0) against reducing_gap={REDUCING_GAP:g}; 5-way, 5 queries per class, {args.episodes} episodes "
          f"per row (seed {args.seed}), the same for both; gap - one pass: mean of the per-episode differences ± 95% "
          "interval, in points")  # fmt: skip
    print("\n| set | half | setting | method | one pass % | reducing gap % | gap − one pass (paired) |")
    print("|---|---|---|---|---|---|---|")
    found = []
    for name in args.sets.split(","):
        folder = read_labelled_folder(args.data / name)
        dev, held_out = split(list(folder.names), 0)
        for half, keep in (("dev", dev), ("eval", held_out)):
            classes = [c for c in folder.classes if c.name in keep]
            paths = [p for c in classes for p in c.files]
            labels = np.array([i for i, c in enumerate(classes) for _ in c.files])
            before, after = embedded(backbone, paths, args.side, args.jobs)
            for shot in (1, 5):
                plan = sample_episodes(labels, 5, shot, 5, args.episodes, args.seed)
                a = evaluate_episodes(before, plan, ["default", "proto"], workers=args.jobs).per_episode
                b = evaluate_episodes(after, plan, ["default", "proto"], workers=args.jobs).per_episode
                for method in ("default", "proto"):
                    d, dh = mean_ci95(b[method] - a[method])
                    found.append(100 * d)
                    cells = f"{100 * np.mean(a[method]):.1f} | {100 * np.mean(b[method]):.1f}"
                    diff = f"{100 * d:+.2f} ± {100 * dh:.2f}"
                    print(f"| {name} | {half} | 5-way {shot}-shot | {method} | {cells} | {diff} |", flush=True)
    print(f"\nMean of the {len(found)} paired differences: {np.mean(found):+.2f} points; the lowest {min(found):+.2f}.")


if __name__ == "__main__":
    with publish("resize_accuracy", "--sets"):
        main()
