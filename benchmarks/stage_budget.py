"""The per-image budget: each stage's CPU time inside a real classify run, the overlap efficiency, and
the end-to-end rate against an earlier commit.

Queries (written once under $TMPDIR by benchmarks/throughput.py's ``make_queries``, upscaled from the
five largest tuxpaint classes onto a light grey background; support: 5 other images of each class):
1 MP JPEG (1224 x 816, quality 90), 6 MP JPEG (3000 x 2000, quality 90) and 1 MP PNG (1224 x 816).

(1) This tree, in one process: ``Classifier.fit`` then ``predict`` on ``--images`` queries of each kind,
    no feature cache, the library's defaults (the bundled model at its default precision, lanes and
    decoding threads by the cores). Every stage is wrapped to add up the CPU time of the thread that
    runs it (``time.thread_time``): decode (``decode_rgb``), resize (``fit_to_input``), normalise
    (``to_input_array``), backbone (each call), match (each query against every class) and the set's
    transductive step; ms per image. "other" is the process's CPU time not in any stage. The
    end-to-end rate is ``predict``'s (the fit is start-up). **Overlap efficiency** = end-to-end rate x
    sum of the stages / cores: 1.0 when the cores do nothing but the stages' work. The backbone-only
    rate (preprocessed batches, as classify runs them) is measured in the same run. Medians of
    ``--rounds``.
(2) This tree against ``--before``, as fresh ``python -m emdcli classify SUPPORT QUERIES --no-cache -f
    jsonl`` processes: each kind's rate with the start-up subtracted, ``(N - 1) / (t(N) - t(1))`` from a
    run on N images and one on the first image alone; the trees alternate which goes first in each
    round; the ratio this / before is taken within each round, medians of ``--rounds``.

(3) The SFC fit of the support set (5 classes x 5 examples, its features in memory): its EMD solves on
    one thread (as before) and on every core (``fit_sfc``'s default), alternating, median seconds of
    ``--rounds``, and whether the two fits gave the same nodes.

    python benchmarks/stage_budget.py --before f3779b1~1 --images 300 --rounds 5
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, earlier_tree, publish, timed_run  # noqa: E402
from throughput import Clock, backbone_limit, folder_of, make_queries  # noqa: E402

import emdcli.io.images as images  # noqa: E402
from emdcli.features.source import FeatureSource  # noqa: E402
from emdcli.matching.support import Matcher  # noqa: E402
from emdcli.model.backbone import load_model, usable_cores  # noqa: E402
from emdcli.tasks.classify import Classifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KINDS = {  # name: (folder under $TMPDIR, size, suffix, save options)
    "1 MP JPEG": ("emdcli-jpeg1mp", (1224, 816), ".jpg", {"quality": 90}),
    "6 MP JPEG": ("emdcli-bench-photos", (3000, 2000), ".jpg", {"quality": 90}),
    "1 MP PNG": ("emdcli-int8-png1mp", (1224, 816), ".png", {}),
}
IMAGE_STAGES = {"decode_rgb": "decode", "fit_to_input": "resize", "to_input_array": "normalise"}
STAGES = ("decode", "resize", "normalise", "backbone", "match", "set step")


def queries_of(data: Path, kind: str, count: int) -> tuple[list[Path], dict[str, list[Path]]]:
    folder, size, suffix, save = KINDS[kind]
    return make_queries(data, count, folder, size, suffix, **save)


def staged_run(backbone, queries: list[Path], support: dict[str, list[Path]]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Section (1) for one kind, once: ms per image of each stage and of 'other', and images/s."""
    clock = Clock()
    saved = {name: getattr(images, name) for name in IMAGE_STAGES}
    for name, fn in saved.items():
        setattr(images, name, clock.wrap(IMAGE_STAGES[name], fn))
    try:
        timed = clock.wrap("backbone", backbone)
        timed.lanes, timed.batch_size = backbone.lanes, backbone.batch_size
        classifier = Classifier(FeatureSource(timed, backbone.manifest.preprocess), Matcher())
        fitted = classifier.fit(folder_of(support))
        matcher = classifier.matcher  # frozen: wrap its methods on the instance
        object.__setattr__(matcher, "match", clock.wrap("match", matcher.match))
        object.__setattr__(matcher, "score_set", clock.wrap("set step", matcher.score_set))
        clock.seconds.clear()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        predictions = list(classifier.predict(fitted, queries))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        for name, fn in saved.items():
            setattr(images, name, fn)
    assert all(p.ok for p in predictions)
    n = len(queries)
    found = {stage: 1000 * clock.seconds.get(stage, 0.0) / n for stage in STAGES}
    found["other"] = 1000 * cpu / n - sum(found.values())
    found["rate"] = n / wall
    return found


def section_one(data: Path, count: int, rounds: int) -> None:
    backbone = load_model()
    cores = usable_cores()
    print(f"\n## (1) Stage budget in a classify run: CPU ms per image (median of {rounds} rounds)\n")
    print(f"{backbone.manifest.name}, {backbone.lanes} lanes x {backbone.threads} threads, batch "
          f"{backbone.batch_size}, {cores} cores, {count} queries per kind.\n")  # fmt: skip
    print("| images | " + " | ".join(STAGES) + " | sum of the stages | other | end to end, images/s | "
          "backbone only, images/s | end to end / backbone only | overlap efficiency |")  # fmt: skip
    print("|---|" + "---|" * (len(STAGES) + 7))
    for kind in KINDS:
        queries, support = queries_of(data, kind, count)
        runs, limits = [], []
        for _ in range(rounds):
            runs.append(staged_run(backbone, queries, support))
            arrays = np.stack([images.load_image(p, backbone.manifest.preprocess) for p in queries[:64]])
            limits.append(backbone_limit(backbone, arrays, backbone.batch_size)[0])
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        total = sum(med[s] for s in STAGES)
        efficiency = statistics.median(r["rate"] * sum(r[s] for s in STAGES) / (1000 * cores) for r in runs)
        limit = statistics.median(limits)
        cells = " | ".join(f"{med[s]:.2f}" for s in STAGES)
        print(f"| {kind} | {cells} | {total:.2f} | {med['other']:.2f} | {med['rate']:.1f} | {limit:.1f} | "
              f"{med['rate'] / limit:.2f} | **{efficiency:.2f}** |", flush=True)  # fmt: skip


def section_two(data: Path, count: int, rounds: int, revision: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        before, short = earlier_tree(revision, work)
        trees = {f"before ({short})": before, "this tree": REPO}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["EMDCLI_CACHE_DIR"] = str(work / "cache")
        print(f"\n## (2) End to end against {short}: `emdcli classify --no-cache`, images/s with the start-up "
              f"subtracted ({count} queries and 1; median of {rounds} rounds, the trees alternating)\n")  # fmt: skip
        print("| images | " + " | ".join(trees) + " | this / before |")
        print("|---|---|---|---|")
        for kind in KINDS:
            queries, support = queries_of(data, kind, count)
            folder = work / "support" / kind.replace(" ", "_")
            for name, files in support.items():
                (folder / name).mkdir(parents=True)
                for f in files:
                    (folder / name / f.name).symlink_to(f.resolve())
            inbox = work / "queries" / kind.replace(" ", "_")  # exactly these queries, in class folders
            for q in queries:
                (inbox / q.parent.name).mkdir(parents=True, exist_ok=True)
                (inbox / q.parent.name / q.name).symlink_to(q.resolve())
            many = ["classify", str(folder), str(inbox), "--no-cache", "-f", "jsonl"]
            one = ["classify", str(folder), str(queries[0]), "--no-cache", "-f", "jsonl"]
            for tree in trees.values():
                timed_run(tree, one, env)  # warm the OS's file cache
            rates: dict[str, list[float]] = {name: [] for name in trees}
            order = list(trees)
            for r in range(rounds):
                for name in order if r % 2 == 0 else order[::-1]:
                    t_many, t_one = timed_run(trees[name], many, env), timed_run(trees[name], one, env)
                    rates[name].append((count - 1) / (t_many - t_one))
            ratio = statistics.median(a / b for a, b in zip(rates[order[1]], rates[order[0]], strict=True))
            cells = " | ".join(f"{statistics.median(rates[name]):.1f}" for name in order)
            print(f"| {kind} | {cells} | **{ratio:.2f}x** |", flush=True)


def section_three(data: Path, rounds: int) -> None:
    from emdcli.matching.sfc import fit_sfc

    backbone = load_model()
    _, support = queries_of(data, "1 MP JPEG", 1)
    prep = backbone.manifest.preprocess
    shots = [backbone(np.stack([images.load_image(p, prep) for p in files])) for files in support.values()]
    shots = [s.reshape(s.shape[0], s.shape[1], -1).transpose(0, 2, 1) for s in shots]  # (shot, H*W, C)
    times: dict[int | None, list[float]] = {1: [], None: []}
    fits = {}
    for r in range(rounds):
        for workers in (1, None) if r % 2 == 0 else (None, 1):
            start = time.perf_counter()
            fits[workers] = fit_sfc(shots, workers=workers)
            times[workers].append(time.perf_counter() - start)
    same = np.array_equal(fits[1].nodes, fits[None].nodes)
    one, every = statistics.median(times[1]), statistics.median(times[None])
    print(f"\n## (3) SFC fit, {len(shots)} classes x {len(shots[0])} examples ({usable_cores()} cores; median of "
          f"{rounds} rounds)\n")  # fmt: skip
    print("| EMD solves on | seconds |\n|---|---|")
    print(f"| one thread (before) | {one:.3f} |\n| every core | {every:.3f} |")
    print(f"\none thread / every core: {one / every:.2f}x; the same nodes: {'yes' if same else 'NO'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--before", default="f3779b1~1", help="the earlier commit (git revision)")
    ap.add_argument("--images", type=int, default=300, help="queries of each kind")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"# {command_line()}")
    section_one(args.data, args.images, args.rounds)
    section_two(args.data, args.images, args.rounds, args.before)
    section_three(args.data, args.rounds)


if __name__ == "__main__":
    with publish("stage_budget"):
        main()
