"""Transductive matching: choosing its safeguard on dev classes, then emdcli against the peer library on
held-out classes, on the same features and episodes.

The classes of each set under DATA are split in two by a seeded permutation (``--split-seed``, as in
benchmarks/global_weight_rule.py): the first half ("dev") to choose anything, the second ("eval") to
report on. Features are the bundled model's (no cache), computed once per set.

``--phase dev``: on the dev classes, 5-way 1-shot episodes whose query sets are balanced (``bal``,
every class ``--query`` queries), imbalanced (``imb``: a random 1..Q of each class), dominated by one
class (``dom``: Q of one class, 1 of each other) or of one class only (``one``). Per episode the
accuracy of each query matched on its own (``default-inductive``) and of the transductive step without
its safeguard, and the two statistics of the inductive predictions the safeguard may look at: their
spread (normalised entropy of the predicted-class histogram) and the largest predicted share times
the number of classes. Then the mean gain over the inductive default of every candidate safeguard.

``--phase eval``: on the eval classes, ``emdcli``'s methods through ``evaluate_episodes`` (proto, emd,
default-inductive, default, and emd-sfc at 5-shot) and easyfsl 1.5.0's methods with an identity
backbone on the same episodes' pooled features (centred on the support mean and L2-normalised, as
SimpleShot's CL2N), 5-way 1-shot and 5-shot, ``--queries`` per class (sets too small for a shape are
skipped and said so). Accuracy ± 95% interval, the paired difference to the best easyfsl method of
that set and shape, and the time per episode. easyfsl is a benchmark dependency only:

    python -m venv /tmp/peers && . /tmp/peers/bin/activate && pip install '.[export]' easyfsl==1.5.0
    python benchmarks/transductive.py --phase dev --data ../shared/data --episodes 200
    python benchmarks/transductive.py --phase eval --data ../shared/data --episodes 200
    python benchmarks/transductive.py --phase imbalance --data ../shared/data --episodes 200

``--phase imbalance``: the shipped default against ``default-inductive`` on the eval classes with the
query sets of ``--phase dev`` (bal, imb, dom, one), 5-way 1-shot.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

SETS = ("cards", "glyphs", "icons", "openclipart", "tuxpaint")
MODES = ("bal", "imb", "dom", "one")
PEERS = ("SimpleShot", "BD-CSPN", "LaplacianShot", "PT-MAP", "TIM", "TransductiveFinetuning")
SPREADS = (0.0, 0.6, 0.7, 0.8)
SHARES = (None, 2.5, 2.0, 1.5)


def split(classes: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """(dev, eval): the classes in two halves by a seeded permutation (benchmarks/global_weight_rule.py's)."""
    order = np.random.default_rng(seed).permutation(len(classes))
    half = len(classes) // 2
    return [classes[i] for i in sorted(order[:half])], [classes[i] for i in sorted(order[half:])]


def half_features(data: Path, name: str, half: str, split_seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(N, C, H, W) features and (N,) labels of the images of one half of a set's classes, and the class count."""
    from emdcli.features.source import FeatureSource
    from emdcli.io.folders import read_labelled_folder
    from emdcli.model.backbone import load_model

    folder = read_labelled_folder(data / name)
    dev, held_out = split(list(folder.names), split_seed)
    keep = dev if half == "dev" else held_out
    folder = replace(folder, classes=tuple(c for c in folder.classes if c.name in keep))
    found = FeatureSource(load_model()).labelled(folder)
    assert found.features is not None
    return found.features, found.labels, len(keep)


def query_subset(labels: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """(n,) bool: which queries of a balanced episode (``labels`` in class blocks) a query set keeps."""
    keep = np.zeros(len(labels), bool)
    classes = np.unique(labels)
    big = rng.choice(classes)
    for k in classes:
        idx = np.flatnonzero(labels == k)
        if mode == "bal" or (mode in ("dom", "one") and k == big):
            keep[idx] = True
        elif mode == "imb":
            keep[idx[: rng.integers(1, len(idx) + 1)]] = True
        elif mode == "dom":
            keep[idx[:1]] = True
    return keep


def modes_run(features: np.ndarray, labels: np.ndarray, episodes: int, query: int, seed: int) -> dict[str, Any]:
    """Per mode, per episode: (inductive accuracy, unguarded transductive accuracy, spread, largest share x K,
    shipped default's accuracy)."""
    from emdcli.matching.support import Matcher
    from emdcli.matching.transductive import Transduction, prediction_spread
    from emdcli.tasks.episodes import sample_episodes

    plan = sample_episodes(labels, 5, 1, query, episodes, seed)
    inductive, unguarded, shipped = Matcher(transductive=False), Matcher(transduction=Transduction(min_spread=0.0,
                                        max_share=None)), Matcher()  # fmt: skip
    out: dict[str, Any] = {}
    for mode in MODES:
        rng = np.random.default_rng(seed + 1)
        masks = [query_subset(ep.query_labels, mode, rng) for ep in plan.episodes]

        def run(args: tuple[Any, np.ndarray]) -> tuple[float, ...]:
            ep, keep = args
            support, query_maps = features[ep.support], features[ep.query.reshape(-1)][keep]
            truth = ep.query_labels[keep]
            classes = inductive.fit(list(support))
            parts = [inductive.match(classes, q) for q in query_maps]
            base = inductive.score_set(classes, parts, query_maps).scores
            free = unguarded.score_set(classes, parts, query_maps).scores
            ship = shipped.score_set(classes, parts, query_maps).scores
            share = np.bincount(np.argmax(base, axis=1), minlength=5).max() / len(truth) * 5
            return (float(np.mean(np.argmax(base, 1) == truth)), float(np.mean(np.argmax(free, 1) == truth)),
                    prediction_spread(base), float(share), float(np.mean(np.argmax(ship, 1) == truth)))  # fmt: skip

        with ThreadPoolExecutor(2) as pool:
            out[mode] = np.array(list(pool.map(run, zip(plan.episodes, masks, strict=True))))
    return out


def dev_phase(args: argparse.Namespace) -> None:
    print(f"Dev classes (split seed {args.split_seed}), 5-way 1-shot, {args.episodes} episodes per set and query "
          f"count (seed {args.seed}). Gain in accuracy points over default-inductive of the transductive step "
          "when the safeguard lets it run: mean over the sets (worst set).\n")  # fmt: skip
    for query in args.queries:
        runs = {}
        for name in args.sets:
            features, labels, _ = half_features(args.data, name, "dev", args.split_seed)
            try:
                runs[name] = modes_run(features, labels, args.episodes, query, args.seed)
            except Exception as exc:  # a half too small for this query count
                print(f"({name}: skipped at {query} queries per class: {exc})")
        print(f"\n#### {query} queries per class ({', '.join(runs)})\n")
        print("| min spread | max share x K | " + " | ".join(MODES) + " | mean of the four |")
        print("|---|---|" + "---|" * (len(MODES) + 1))
        for spread in SPREADS:
            for share in SHARES:
                cells, means = [], []
                for mode in MODES:
                    gains = []
                    for r in runs.values():
                        a = r[mode]
                        on = (a[:, 2] >= spread) & (a[:, 3] <= (share or np.inf))
                        gains.append(100 * (np.where(on, a[:, 1], a[:, 0]).mean() - a[:, 0].mean()))
                    cells.append(f"{np.mean(gains):+.2f} ({min(gains):+.2f})")
                    means.append(np.mean(gains))
                print(
                    f"| {spread:g} | {share if share else 'any'} | " + " | ".join(cells) + f" | {np.mean(means):+.2f} |"
                )


def imbalance_phase(args: argparse.Namespace) -> None:
    print(f"Eval classes (split seed {args.split_seed}), 5-way 1-shot, {args.episodes} episodes (seed "
          f"{args.seed}); accuracy % of default-inductive -> the shipped default, and the paired difference "
          "± 95% interval.\n")  # fmt: skip
    for query in args.queries:
        print(f"\n#### {query} queries per class\n")
        print("| set | " + " | ".join(MODES) + " |")
        print("|---|" + "---|" * len(MODES))
        for name in args.sets:
            features, labels, _ = half_features(args.data, name, "eval", args.split_seed)
            try:
                r = modes_run(features, labels, args.episodes, query, args.seed)
            except Exception:
                print(f"| {name} | " + " | ".join(["too few images"] * len(MODES)) + " |")
                continue
            cells = []
            for mode in MODES:
                a = r[mode]
                d = 100 * (a[:, 4] - a[:, 0])
                cells.append(f"{100 * a[:, 0].mean():.1f} -> {100 * a[:, 4].mean():.1f} "
                             f"({d.mean():+.1f} ± {1.96 * d.std() / np.sqrt(len(d)):.1f})")  # fmt: skip
            print(f"| {name} | " + " | ".join(cells) + " |")


def peer_scores(name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """easyfsl's method ``name`` with an identity backbone: (way, shot, C) and (n, C) CL2N features ->
    (n, way) scores (its logits)."""
    import torch
    from easyfsl import methods
    from torch import nn

    cls = {"SimpleShot": methods.SimpleShot, "BD-CSPN": methods.BDCSPN, "LaplacianShot": methods.LaplacianShot,
           "PT-MAP": methods.PTMAP, "TIM": methods.TIM,
           "TransductiveFinetuning": methods.TransductiveFinetuning}[name]  # fmt: skip

    def score(support: np.ndarray, query: np.ndarray) -> np.ndarray:
        way, shot, c = support.shape
        model = cls(nn.Identity())
        model.process_support_set(torch.tensor(support.reshape(-1, c), dtype=torch.float32),
                                  torch.arange(way).repeat_interleave(shot))  # fmt: skip
        fine_tunes = name in ("TIM", "TransductiveFinetuning")
        with torch.enable_grad() if fine_tunes else torch.no_grad():
            out = model(torch.tensor(query, dtype=torch.float32))
        return np.asarray(out.detach().numpy(), dtype=np.float64)

    return score


def peer_episode(
    score: Callable[[np.ndarray, np.ndarray], np.ndarray], pooled_all: np.ndarray, episode: Any
) -> tuple[float, float]:
    """One easyfsl method on one episode: its accuracy and seconds."""
    support, query = cl2n(pooled_all[episode.support], pooled_all[episode.query.reshape(-1)])
    started = time.perf_counter()
    got = score(support, query)
    return float(np.mean(np.argmax(got, 1) == episode.query_labels)), time.perf_counter() - started


def cl2n(support: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled (way, shot, C) and (n, C) features centred on the support mean and L2-normalised."""
    centre = support.reshape(-1, support.shape[-1]).mean(axis=0)

    def unit(x: np.ndarray) -> np.ndarray:
        d = x - centre
        return np.asarray(d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12))

    return unit(support), unit(query)


def eval_phase(args: argparse.Namespace) -> None:
    import torch

    from emdcli.matching.simpleshot import pooled
    from emdcli.tasks.episodes import sample_episodes
    from emdcli.tasks.evaluate import evaluate_episodes, mean_ci95

    torch.set_num_threads(1)
    print(f"Eval classes (split seed {args.split_seed}); {args.episodes} episodes per set and shape (seed "
          f"{args.seed}); emdcli's methods by evaluate_episodes, easyfsl 1.5.0's on the same episodes' pooled "
          "features (CL2N); accuracy % ± 95% interval; vs best easyfsl: the paired difference to the easyfsl "
          "method with the best mean on that set and shape; time per episode on 2 threads (emdcli) or 2 "
          "episodes at once (easyfsl).\n")  # fmt: skip
    summary: list[tuple[str, int, int, dict[str, float], dict[str, float], str]] = []
    for name in args.sets:
        features, labels, classes = half_features(args.data, name, "eval", args.split_seed)
        pooled_all = pooled(features)
        for shot in (1, 5):
            for query in args.queries:
                try:
                    plan = sample_episodes(labels, 5, shot, query, args.episodes, args.seed)
                except Exception as exc:
                    print(f"\n({name} 5-way {shot}-shot, {query} queries: skipped: {exc})")
                    continue
                ours = ["proto", "emd", "default-inductive", "default"] + (["emd-sfc"] if shot > 1 else [])
                t0 = time.perf_counter()
                result = evaluate_episodes(features, plan, ours, workers=2)
                per_episode = dict(result.per_episode)
                seconds = {r.method: r.seconds_per_episode for r in result.results}
                for peer in PEERS:
                    score = peer_scores(peer)
                    with ThreadPoolExecutor(2) as pool:
                        done = list(pool.map(lambda ep, f=score, x=pooled_all: peer_episode(f, x, ep), plan.episodes))
                    per_episode[peer] = np.array([a for a, _ in done])
                    seconds[peer] = float(np.mean([t for _, t in done]))
                best_peer = max(PEERS, key=lambda m: per_episode[m].mean())
                print(f"\n#### {name} ({classes} eval classes), 5-way {shot}-shot, {query} queries per class "
                      f"({time.perf_counter() - t0:.0f} s)\n")  # fmt: skip
                print("| method | accuracy | vs best easyfsl (paired) | ms per episode |")
                print("|---|---|---|---|")
                for method in [*ours, *PEERS]:
                    acc, ci = mean_ci95(100 * per_episode[method])
                    diff, dci = mean_ci95(100 * (per_episode[method] - per_episode[best_peer]))
                    star = " (best easyfsl)" if method == best_peer else ""
                    ms = 1000 * seconds[method]
                    print(f"| {method}{star} | {acc:.1f} ± {ci:.1f} | {diff:+.1f} ± {dci:.1f} | {ms:.1f} |")
                means = {m: 100 * float(v.mean()) for m, v in per_episode.items()}
                summary.append((name, shot, query, means, seconds, best_peer))
    print(
        "\n#### Summary: the shipped default against proto, the best fixed emdcli method and the best easyfsl method\n"
    )
    print("| set | shape | queries | default | − proto | − best fixed emdcli | − best easyfsl (which) | "
          "time default / default-inductive |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, shot, query, means, seconds, best_peer in summary:
        fixed = ["proto", "emd", "default-inductive"] + (["emd-sfc"] if shot > 1 else [])
        best_fixed = max(means[m] for m in fixed)
        print(f"| {name} | 5w{shot}s | {query} | {means['default']:.1f} | {means['default'] - means['proto']:+.1f} | "
              f"{means['default'] - best_fixed:+.1f} | {means['default'] - means[best_peer]:+.1f} ({best_peer}) | "
              f"{seconds['default'] / seconds['default-inductive']:.2f} |")  # fmt: skip
    for shot in (1, 5):
        for query in args.queries:
            rows = [r for r in summary if r[1] == shot and r[2] == query]
            if rows:
                print(f"| mean over {len(rows)} sets | 5w{shot}s | {query} | "
                      f"{np.mean([r[3]['default'] for r in rows]):.1f} | "
                      f"{np.mean([r[3]['default'] - r[3]['proto'] for r in rows]):+.2f} | | "
                      f"{np.mean([r[3]['default'] - r[3][r[5]] for r in rows]):+.2f} | |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=("dev", "eval", "imbalance"), required=True)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--queries", default="15,5", help="queries per class, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0)
    args = ap.parse_args()
    args.sets = args.sets.split(",")
    args.queries = [int(q) for q in args.queries.split(",")]
    {"dev": dev_phase, "eval": eval_phase, "imbalance": imbalance_phase}[args.phase](args)


if __name__ == "__main__":
    from common import publish

    with publish("transductive", "--phase"):
        main()
