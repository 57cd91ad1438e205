"""Choose the bundled backbone's layer, input size and resize mode by measurement.

For each candidate (EfficientNet-Lite variant, input size, resize mode) this exports
a multi-output ONNX model (needs the ``export`` extra), embeds every image of every
set under DATA once, then scores the *same* N-way K-shot episodes with:

- ``emd``: emdcli's DeepEMD matching (cross-reference weights, 1 - cos cost, exact
  EMD; k-shot class = mean feature map of its shots), and
- ``proto``: nearest class prototype of globally pooled features, centred on the
  support mean and L2-normalised (SimpleShot).

Prints a Markdown table (accuracy % +- 95% CI over episodes).

    python benchmarks/choose_backbone.py --data ../shared/data --episodes 200
"""

from __future__ import annotations

import os

# Small matrix products only: BLAS threads would fight the worker processes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np  # noqa: E402

from emdcli.io.images import Preprocess, iter_image_files, load_image
from emdcli.matching.nodes import Nodes, emd_score
from emdcli.model.export import _Cut, efficientnet_lite, export_module
from emdcli.tasks.evaluate import mean_ci95  # noqa: E402

# (variant, size, resize, layers)
CONFIGS = [
    ("lite0", 224, "squash", ["blocks.4", "blocks.5", "blocks.6", "head"]),
    ("lite0", 224, "crop", ["blocks.6"]),
    ("lite0", 160, "squash", ["blocks.5", "blocks.6", "head"]),
    ("lite0", 192, "squash", ["blocks.5", "blocks.6"]),
    ("lite0", 256, "squash", ["blocks.5", "blocks.6"]),
]
SETTINGS = [(5, 1), (5, 5)]
QUERIES = 10

_FEATS: dict[str, np.ndarray] = {}
_POOLED: dict[str, np.ndarray] = {}


def read_sets(data: Path) -> dict[str, tuple[list[Path], np.ndarray, list[str]]]:
    sets = {}
    for d in sorted(p for p in data.iterdir() if p.is_dir()):
        paths, labels, names = [], [], []
        for c in sorted(p for p in d.iterdir() if p.is_dir()):
            files = list(iter_image_files(c))
            if files:
                names.append(c.name)
                paths += files
                labels += [len(names) - 1] * len(files)
        sets[d.name] = (paths, np.asarray(labels), names)
    return sets


def sample_episodes(labels: np.ndarray, way: int, shot: int, query: int, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    eligible = [c for c, idx in by_class.items() if len(idx) >= shot + query]
    episodes = []
    for _ in range(n):
        classes = rng.choice(eligible, size=way, replace=False)
        sup, qry = [], []
        for c in classes:
            pick = rng.choice(by_class[c], size=shot + query, replace=False)
            sup.append(pick[:shot])
            qry.append(pick[shot:])
        episodes.append((np.stack(sup), np.stack(qry)))
    return episodes


def pool_to(fmap: np.ndarray, grid: int) -> np.ndarray:
    """(B, C, H, W) -> (B, C, grid, grid) by average pooling with an integer factor."""
    b, c, h, w = fmap.shape
    if h == grid:
        return fmap
    f = h // grid
    return fmap.reshape(b, c, grid, f, grid, f).mean(axis=(3, 5))


def embed_all(onnx: Path, paths: list[Path], prep: Preprocess, n_out: int) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    outs: list[list[np.ndarray]] = [[] for _ in range(n_out)]
    batch = 32
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(paths), batch):
            xs = np.stack(list(pool.map(lambda p: load_image(p, prep), paths[start : start + batch])))
            for i, y in enumerate(sess.run(None, {"image": xs})):
                outs[i].append(y.astype(np.float32))
    return [np.concatenate(o) for o in outs]


def run_episode(args: tuple) -> tuple[float, float]:
    key, sup, qry = args
    feats = _FEATS[key]
    way, shot = sup.shape
    protos = [Nodes.from_feature_map(feats[s].mean(axis=0)) for s in sup]
    correct = 0
    qidx = qry.reshape(-1)
    qlab = np.repeat(np.arange(way), qry.shape[1])
    for qi, lab in zip(qidx, qlab, strict=True):
        q = Nodes.from_feature_map(feats[qi])
        scores = [emd_score(q, p) for p in protos]
        correct += int(np.argmax(scores) == lab)
    emd_acc = correct / len(qidx)
    # SimpleShot prototype on globally pooled features.
    g = _POOLED[key]
    gs = g[sup.reshape(-1)]
    centre = gs.mean(axis=0)

    def norm(x: np.ndarray) -> np.ndarray:
        x = x - centre
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    proto = norm(gs).reshape(way, shot, -1).mean(axis=1)
    pred = np.argmax(norm(g[qidx]) @ proto.T, axis=1)
    return emd_acc, float(np.mean(pred == qlab))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default="", help="comma-separated subset of set names")
    ap.add_argument(
        "--config", action="append", default=[], metavar="VARIANT:SIZE:RESIZE:LAYER",
        help="measure only these candidates (repeatable), e.g. lite0:224:crop:blocks.6",
    )  # fmt: skip
    args = ap.parse_args()
    configs = CONFIGS
    if args.config:
        configs = [(v, int(s), r, [layer]) for v, s, r, layer in (c.split(":") for c in args.config)]
    sets = read_sets(args.data)
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    episodes = {
        (name, way, shot): sample_episodes(labels, way, shot, QUERIES, args.episodes, args.seed)
        for name, (_, labels, _) in sets.items()
        for way, shot in SETTINGS
    }
    rows = []
    means: dict[tuple, dict[int, list[tuple[float, float]]]] = {}
    for variant, size, resize, layers in configs:
        prep = Preprocess(size=size, resize=resize)
        model = efficientnet_lite(variant)
        with tempfile.TemporaryDirectory() as tmp:
            res = export_module(
                _Cut.efficientnet(model, layers), Path(tmp), "multi", size=size, layer=",".join(layers),
                mean=prep.mean, std=prep.std, resize=resize, source="benchmark", licence="n/a",
            )  # fmt: skip
            for name, (paths, _, _) in sets.items():
                t0 = time.perf_counter()
                outs = embed_all(res.onnx_path, paths, prep, len(layers))
                dt = time.perf_counter() - t0
                print(f"# {variant} {size} {resize} {name}: {len(paths)} images in {dt:.1f}s", file=sys.stderr)
                grid = outs[-1].shape[-1]
                for layer, fmap in zip(layers, outs, strict=True):
                    _FEATS[f"{name}|{layer}"] = pool_to(fmap, grid)
                    _POOLED[f"{name}|{layer}"] = fmap.mean(axis=(2, 3))
        for layer in layers:
            for name in sets:
                key = f"{name}|{layer}"
                for way, shot in SETTINGS:
                    eps = episodes[(name, way, shot)]
                    t0 = time.perf_counter()
                    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
                        accs = list(pool.map(run_episode, [(key, s, q) for s, q in eps], chunksize=8))
                    emd = [a for a, _ in accs]
                    pro = [b for _, b in accs]
                    diff = [a - b for a, b in accs]
                    row = (
                        f"| {variant} | {size} | {resize} | {layer} | {tuple(_FEATS[key].shape[1:])} | {name} "
                        f"| {way}-way {shot}-shot | {100 * np.mean(emd):.1f} ± {100 * mean_ci95(emd)[1]:.1f} "
                        f"| {100 * np.mean(pro):.1f} ± {100 * mean_ci95(pro)[1]:.1f} "
                        f"| {100 * np.mean(diff):+.1f} ± {100 * mean_ci95(diff)[1]:.1f} |"
                    )
                    rows.append(row)
                    cell = means.setdefault((variant, size, resize, layer), {})
                    cell.setdefault(shot, []).append((float(np.mean(emd)), float(np.mean(pro))))
                    print(row, f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
        _FEATS.clear()
        _POOLED.clear()
    print("| variant | size | resize | layer | map (C,H,W) | set | episodes | emd % | proto % | emd - proto |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("Mean over the sets (accuracy %):")
    print()
    print("| variant | size | resize | layer | emd 1-shot | proto 1-shot | emd 5-shot | proto 5-shot | emd - proto |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (variant, size, resize, layer), by_shot in means.items():
        cells = [100 * np.mean([x[k] for x in by_shot[s]]) for s in (1, 5) for k in (0, 1)]
        gain = np.mean([e - p for s in (1, 5) for e, p in by_shot[s]]) * 100
        shown = " | ".join(f"{c:.1f}" for c in cells)
        print(f"| {variant} | {size} | {resize} | {layer} | {shown} | {gain:+.1f} |")
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("choose_backbone", "--config=config"):
        raise SystemExit(main())
