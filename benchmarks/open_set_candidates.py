"""Candidate open-set scores beyond the shipped one: do other pooling, other bank densities or a
score of the whole support set separate in-set from near and far queries better?

The shipped score (emdcli/matching/rejection.py) is the bank-relative cosine to the nearest support
example of mean-pooled features. Each candidate changes one thing:

- ``raw kNN``: the nearest example's cosine, no bank term;
- ``bank k=1`` / ``bank k=50``: the bank density from 1 or 50 neighbours instead of 10;
- ``top-2 mean``: the mean of the two best example similarities;
- ``centroid``: bank-relative cosine to the mean of all the support examples (the support set's domain);
- ``sqrt`` / ``max`` / ``std`` / ``mean+std`` pooling: other summaries of the (C, H, W) map, each with
  its own bank built from the reference images (``std``: per-channel spread over positions, a style
  statistic);
- sums of two scores.

Episodes are those of benchmarks/open_set.py (5-way, 5 queries per class, 50% out of set, half near
and half far), on ``--half dev`` to choose and ``--half eval`` to report.

    python benchmarks/open_set_candidates.py --half dev --episodes 60
    python benchmarks/open_set_candidates.py --half eval --episodes 60
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, publish  # noqa: E402
from open_set import draw_open_episode  # noqa: E402
from transductive import SETS, split  # noqa: E402

from emdcli.features.cache import FeatureCache  # noqa: E402
from emdcli.features.source import FeatureSource  # noqa: E402
from emdcli.io.folders import read_labelled_folder  # noqa: E402
from emdcli.matching.nodes import l2_normalise  # noqa: E402
from emdcli.model.backbone import load_model  # noqa: E402
from emdcli.tasks.open_set import auroc  # noqa: E402
from emdcli.tasks.reference_bank import reference_images  # noqa: E402

POOLINGS = ("mean", "sqrt", "max", "std", "mean+std")
SHIPPED = "mean, bank k=10 (shipped)"


def describe(maps: np.ndarray, pooling: str) -> np.ndarray:
    """(N, C, H, W) maps -> (N, D) float64 summaries."""
    m = np.asarray(maps, dtype=np.float64)
    mean = m.mean(axis=(-2, -1))
    if pooling == "mean":
        return np.asarray(mean)
    if pooling == "sqrt":
        return np.asarray(np.sqrt(np.maximum(mean, 0)))
    if pooling == "max":
        return np.asarray(m.max(axis=(-2, -1)))
    std = m.std(axis=(-2, -1))
    return np.asarray(std if pooling == "std" else np.concatenate([mean, std], axis=-1))


class Bank:
    """A reference bank of (M, D) summaries: centre, unit rows and the k-nearest density."""

    def __init__(self, feats: np.ndarray) -> None:
        self.centre = feats.mean(axis=0)
        self.unit = l2_normalise(feats - self.centre)

    def unit_of(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(l2_normalise(x - self.centre))

    def density(self, unit: np.ndarray, k: int) -> np.ndarray:
        sims = unit @ self.unit.T
        return np.asarray(np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1))


def candidate_scores(banks: dict[str, Bank], support: np.ndarray, queries: np.ndarray) -> dict[str, np.ndarray]:
    """Every candidate's (n,) scores of the (n, C, H, W) ``queries`` against the (N, C, H, W) ``support``."""
    out = {}
    for pooling in POOLINGS:
        bank = banks[pooling]
        su, qu = bank.unit_of(describe(support, pooling)), bank.unit_of(describe(queries, pooling))
        cos = qu @ su.T
        rel = cos - 0.5 * (bank.density(qu, 10)[:, None] + bank.density(su, 10)[None, :])
        if pooling != "mean":
            out[f"{pooling}, bank k=10"] = rel.max(axis=1)
            continue
        out[SHIPPED] = rel.max(axis=1)
        out["mean, raw kNN"] = cos.max(axis=1)
        for k in (1, 50):
            densities = bank.density(qu, k)[:, None] + bank.density(su, k)[None, :]
            out[f"mean, bank k={k}"] = (cos - 0.5 * densities).max(axis=1)
        out["mean, top-2 mean"] = np.sort(rel, axis=1)[:, -2:].mean(axis=1)
        out["mean, centroid"] = qu @ l2_normalise(su.mean(axis=0)) - bank.density(qu, 10)
    out["shipped + std"] = out[SHIPPED] + out["std, bank k=10"]
    out["shipped + 0.5 centroid"] = out[SHIPPED] + 0.5 * out["mean, centroid"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half", choices=("dev", "eval"), default="dev")
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--model", default=None, help="model name (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    backbone = load_model(args.model)
    source = FeatureSource(backbone, cache=FeatureCache.for_model(backbone.manifest, max_bytes=2**33))
    bank_maps = np.stack([i.features for i in source.embed_cached(reference_images()) if i.features is not None])
    banks = {p: Bank(describe(bank_maps, p)) for p in POOLINGS}
    halves = {}
    for name in SETS:
        folder = read_labelled_folder(args.data / name)
        dev, held_out = split(list(folder.names), 0)
        keep = dev if args.half == "dev" else held_out
        found = source.labelled(replace(folder, classes=tuple(c for c in folder.classes if c.name in keep)))
        assert found.features is not None
        halves[name] = (found.features, found.labels)
    print(f"# {command_line()}")
    print(f"# {args.half} classes (split seed 0), model {backbone.manifest.name}, {len(bank_maps)} bank images; "
          f"5-way, 5 queries per class, 50% out of set (half near, half far); {args.episodes} episodes per "
          f"set and shot (seed {args.seed}); AUROC in-set vs near / in-set vs far, mean over episodes")  # fmt: skip
    for shot in (1, 5):
        table: dict[str, dict[str, tuple[float, float]]] = {}
        for name in SETS:
            maps, labels = halves[name]
            far = np.concatenate([halves[o][0] for o in SETS if o != name])
            rng = np.random.default_rng([args.seed, shot, SETS.index(name)])
            per_episode: dict[str, list[tuple[float, float]]] = {}
            for _ in range(args.episodes):
                support, q, kind, _ = draw_open_episode(maps, labels, far, shot, 5, "bal", 0.5, rng)
                for key, s in candidate_scores(banks, np.concatenate(support), q).items():
                    per_episode.setdefault(key, []).append(
                        (auroc(s[kind == 0], s[kind == 1]), auroc(s[kind == 0], s[kind == 2]))
                    )
            for key, pairs in per_episode.items():
                table.setdefault(key, {})[name] = tuple(np.mean(pairs, axis=0))  # type: ignore[assignment]
        print(f"\n{shot}-shot:\n\n| score | " + " | ".join(SETS) + " | mean of the sets |")
        print("|---|" + "---|" * (len(SETS) + 1))
        for key, per in table.items():
            near, far_ = (float(np.mean([v[i] for v in per.values()])) for i in (0, 1))
            cells = " | ".join(f"{v[0]:.3f} / {v[1]:.3f}" for v in per.values())
            print(f"| {key} | {cells} | {near:.3f} / {far_:.3f} |")


if __name__ == "__main__":
    with publish("open_set_candidates", "--half"):
        main()
