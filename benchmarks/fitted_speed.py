"""Loading a fitted file against fitting the same support folder from a warm feature cache.

A support folder of ``--classes`` classes x ``--shots`` examples (linked from ``../shared/data``: the
classes of every set with enough images, in turn), fitted once to warm the cache and written with
``save_fitted``; then ``--rounds`` rounds, alternating which goes first, each timing inside this
process (imports excluded): ``Classifier.fit`` on the folder (every feature map read from the cache,
the node sets and the rejection's calibration made again) and ``load_fitted`` on the file. Prints each
round's seconds and the median ratio.

    python benchmarks/fitted_speed.py --classes 100 --shots 5 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line  # noqa: E402

from emdcli.features.cache import FeatureCache  # noqa: E402
from emdcli.features.source import FeatureSource  # noqa: E402
from emdcli.io.folders import read_labelled_folder  # noqa: E402
from emdcli.model.backbone import load_model  # noqa: E402
from emdcli.tasks.classify import Classifier, Reject  # noqa: E402
from emdcli.tasks.fitted import load_fitted, save_fitted  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="emdcli-fitted-"))
    try:
        pools = [[c for c in sorted(s.iterdir()) if c.is_dir() and len(list(c.glob("*.png"))) >= a.shots]
                 for s in sorted(a.data.iterdir()) if s.is_dir()]  # fmt: skip
        picked: list[Path] = []  # the sets' classes in turn
        while len(picked) < a.classes and any(pools):
            for pool in pools:
                if pool and len(picked) < a.classes:
                    picked.append(pool.pop(0))
        for cls in picked:
            target = work / "support" / f"{cls.parent.name}_{cls.name}"
            target.mkdir(parents=True)
            for src in sorted(cls.glob("*.png"))[: a.shots]:
                os.symlink(src.resolve(), target / src.name)
        backbone = load_model()
        cache = FeatureCache.for_model(backbone.manifest, root=work / "cache", max_bytes=2**31)
        clf = Classifier(FeatureSource(backbone, cache=cache))
        folder = read_labelled_folder(work / "support")
        save_fitted(work / "s.emdfit", clf.fit(folder, reject=Reject()), clf, folder)  # warms the cache too
        size = (work / "s.emdfit").stat().st_size / 1e6
        print(f"# {command_line()}")
        print(f"# {len(folder.classes)} classes x {a.shots} examples, {backbone.manifest.name}; fitted file "
              f"{size:.1f} MB; --reject auto's calibration included in both")  # fmt: skip
        print("\n| round | fit from a warm cache (s) | load the fitted file (s) | load / fit |")
        print("|---|---|---|---|")
        ratios = []
        for r in range(a.rounds):
            times = {}
            for what in ("fit", "load") if r % 2 == 0 else ("load", "fit"):
                t0 = time.perf_counter()
                if what == "fit":
                    clf.fit(folder, reject=Reject())
                else:
                    load_fitted(work / "s.emdfit", clf, Reject())
                times[what] = time.perf_counter() - t0
            ratios.append(times["load"] / times["fit"])
            print(f"| {r + 1} | {times['fit']:.3f} | {times['load']:.3f} | {ratios[-1]:.3f} |", flush=True)
        print(f"\nmedian load / fit: {np.median(ratios):.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from common import publish

    with publish("fitted_speed"):
        main()
