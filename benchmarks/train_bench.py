"""``emdcli train``: its defaults chosen on held-out base classes, then its gain on novel classes.

Each set under DATA is split by class with a seeded permutation (``--split-seeds``) into base
classes (what a user would train on) and novel classes (what they would few-shot later). The
novel classes are never seen by training, nor by the choice of defaults.

``--phase choose``: on icons' base classes of split 0, train with each candidate setting and print
the validation curve (the held-out base classes' 5-way 1-shot accuracy of proto, emd and default
every VAL_EVERY episodes) and the time per episode. Defaults are chosen from it.

``--phase eval``: on every set and split, train with the defaults on the base classes, then score
the bundled and the trained model on the novel classes with ``proto``, ``emd`` and ``default`` on the
same seeded episodes (5-way 1-shot and 5-way 5-shot), with the paired difference of the defaults.

    python benchmarks/train_bench.py --phase choose --data ../shared/data
    python benchmarks/train_bench.py --phase eval --data ../shared/data --episodes 300
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line  # noqa: E402

from emdcli.features.cache import FeatureCache  # noqa: E402
from emdcli.features.source import FeatureSource  # noqa: E402
from emdcli.model.backbone import load_model  # noqa: E402
from emdcli.tasks.evaluate import evaluate, mean_ci95  # noqa: E402
from emdcli.tasks.train import TrainSettings, train  # noqa: E402

#: Novel classes per set: a count, or a fraction of the set's classes.
NOVEL = {"icons": 100, "cards": 0.5, "openclipart": 0.5, "glyphs": 0.5}
CANDIDATES = {
    "lr 1e-3, 1 view": TrainSettings(views=1),
    "lr 1e-3, 2 views": TrainSettings(views=2),
    "lr 3e-3, 2 views": TrainSettings(views=2, lr=3e-3),
    "lr 1e-3, 4 views": TrainSettings(views=4),
    "lr 3e-3, 1 view": TrainSettings(views=1, lr=3e-3),
    "lr 1e-2, 1 view": TrainSettings(views=1, lr=1e-2),
    "lr 1e-2, 2 views": TrainSettings(views=2, lr=1e-2),
    "lr 3e-3, 4 views": TrainSettings(views=4, lr=3e-3),
    "lr 3e-2, 1 view": TrainSettings(views=1, lr=3e-2),
    "from blocks.5, lr 1e-2, 1 view": TrainSettings(train_from="blocks.5", views=1, lr=1e-2),
}
METHODS = ("proto", "emd", "default")


def split_set(root: Path, novel: float, seed: int, into: Path) -> tuple[Path, Path]:
    """Folders of symlinks: ``into/base`` and ``into/novel``, the classes of ``root`` split by ``seed``."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    count = int(novel) if novel >= 1 else round(novel * len(classes))
    order = np.random.default_rng(1000 + seed).permutation(len(classes))
    picked = {classes[i] for i in order[:count]}
    for part in ("base", "novel"):
        (into / part).mkdir(parents=True, exist_ok=True)
    for name in classes:
        os.symlink((root / name).resolve(), into / ("novel" if name in picked else "base") / name)
    return into / "base", into / "novel"


def run_training(base: Path, out: Path, settings: TrainSettings) -> tuple[object, float]:
    t0 = time.perf_counter()
    result = train(base, out, settings, force=True)
    return result, time.perf_counter() - t0


def choose(data: Path, episodes: int | None, names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = split_set(data / "icons", NOVEL["icons"], 0, Path(tmp))
        print(f"icons split 0: {len(list(base.iterdir()))} base classes (validation: 20% of them)\n")
        for name in names:
            settings = CANDIDATES[name]
            if episodes:
                settings = dataclasses.replace(settings, episodes=episodes)
            result, seconds = run_training(base, Path(tmp) / "model", settings)
            per = result.train_seconds / result.episodes_done
            print(f"### {name} (train_from {settings.train_from}, {settings.episodes} episodes)")
            print(f"trunk {result.trunk_seconds:.1f} s, training {result.train_seconds:.1f} s "
                  f"({per * 1000:.0f} ms per episode, validation included), whole run {seconds:.1f} s\n")  # fmt: skip
            print("| episode | " + " | ".join(METHODS) + " |")
            print("|---|" + "---|" * len(METHODS))
            for v in result.history:
                kept = " (kept)" if v.episode == result.best.episode else ""
                cells = " | ".join(f"{v.accuracy[m]:.1f} ± {v.ci95[m]:.1f}" for m in METHODS)
                print(f"| {v.episode}{kept} | {cells} |")
            print(flush=True)


def novel_eval(model: str | None, novel: Path, way: int, shot: int, episodes: int, seed: int) -> object:
    backbone = load_model(model)
    source = FeatureSource(backbone, cache=FeatureCache.for_model(backbone.manifest))
    return evaluate(novel, way=way, shot=shot, query=5, episodes=episodes, seed=seed, methods=METHODS,
                    source=source).evaluation  # fmt: skip


def eval_phase(data: Path, sets: list[str], seeds: list[int], episodes: int, train_episodes: int | None) -> None:
    rows, times = [], []
    for name in sets:
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                base, novel = split_set(data / name, NOVEL[name], seed, Path(tmp))
                settings = TrainSettings(seed=seed)
                if train_episodes:
                    settings = dataclasses.replace(settings, episodes=train_episodes)
                result, seconds = run_training(base, Path(tmp) / "model", settings)
                n_base, n_novel = len(list(base.iterdir())), len(list(novel.iterdir()))
                times.append((name, seed, n_base, result, seconds))
                for shot in (1, 5):
                    bundled = novel_eval(None, novel, 5, shot, episodes, seed)
                    trained = novel_eval(str(result.model_dir), novel, 5, shot, episodes, seed)
                    rows.append((name, seed, n_base, n_novel, shot, bundled, trained))
                    print(f"done {name} split {seed} 5w{shot}s", file=sys.stderr, flush=True)
    print(f"Novel classes, 5-way, 5 queries per class, {episodes} episodes per row (the same for both models).\n")
    print(
        "| set | split | base / novel classes | setting | model | proto | emd | default | trained − bundled default |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    gains: dict[tuple[str, int], list[float]] = {}
    for name, seed, n_base, n_novel, shot, bundled, trained in rows:
        diff = trained.per_episode["default"] - bundled.per_episode["default"]
        mean, ci = mean_ci95(100 * diff)
        gains.setdefault((name, shot), []).append(mean)
        for label, ev in (("bundled", bundled), ("trained", trained)):
            acc = {r.method: f"{r.accuracy:.1f} ± {r.ci95:.1f}" for r in ev.results}
            paired = f"**{mean:+.1f} ± {ci:.1f}**" if label == "trained" else ""
            print(f"| {name} | {seed} | {n_base} / {n_novel} | 5w{shot}s | {label} | {acc['proto']} | {acc['emd']} | "
                  f"{acc['default']} | {paired} |")  # fmt: skip
    print("\nMean gain of the default over the splits (points):\n")
    print("| set | 5w1s | 5w5s |")
    print("|---|---|---|")
    for name in sets:
        print(f"| {name} | {np.mean(gains[(name, 1)]):+.1f} | {np.mean(gains[(name, 5)]):+.1f} |")
    print("\nTraining time (defaults, this machine):\n")
    print("| set | split | base classes | images | trunk maps (s) | training (s) | per episode (ms) | kept episode |")
    print("|---|---|---|---|---|---|---|---|")
    for name, seed, n_base, result, _ in times:
        per = 1000 * result.train_seconds / result.episodes_done
        print(f"| {name} | {seed} | {n_base} | {result.image_count} | {result.trunk_seconds:.0f} | "
              f"{result.train_seconds:.0f} | {per:.0f} | {result.best.episode} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("choose", "eval"), required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--episodes", type=int, default=300, help="novel-class episodes per setting (eval)")
    parser.add_argument("--train-episodes", type=int, default=None, help="override the training episodes")
    parser.add_argument("--candidates", default=";".join(list(CANDIDATES)[:4]), help="choose: names separated by ;")
    parser.add_argument("--sets", default=",".join(NOVEL), help="eval: the sets to split, comma-separated")
    parser.add_argument("--split-seeds", default="0,1")
    args = parser.parse_args()
    print(f"`{command_line()}`\n")
    if args.phase == "choose":
        choose(args.data, args.train_episodes, args.candidates.split(";"))
    else:
        seeds = [int(s) for s in args.split_seeds.split(",")]
        eval_phase(args.data, args.sets.split(","), seeds, args.episodes, args.train_episodes)


if __name__ == "__main__":
    from common import publish

    with publish("train_bench", "--phase", "--sets"):
        main()
