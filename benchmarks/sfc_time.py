"""Time DeepEMD's SFC fit (emdcli.matching.sfc.fit_sfc) on real 5-way 5-shot support sets.

Embeds one set with the bundled model (through the feature cache), draws seeded 5-way
5-shot episodes and prints the median and 90th-percentile wall time of one fit, and the
support-set loss before and after.

    python benchmarks/sfc_time.py --data ../shared/data/openclipart --episodes 20
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from emdcli.features.cache import FeatureCache  # noqa: E402
from emdcli.features.source import FeatureSource  # noqa: E402
from emdcli.io.folders import read_labelled_folder  # noqa: E402
from emdcli.matching.sfc import SFC_STEPS, fit_sfc  # noqa: E402
from emdcli.model.backbone import Backbone  # noqa: E402
from emdcli.model.manifest import resolve_model_path  # noqa: E402
from emdcli.tasks.episodes import sample_episodes  # noqa: E402
from emdcli.tasks.fewshot import nodes_of  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/openclipart")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--shot", type=int, default=5)
    args = ap.parse_args()
    backbone = Backbone(resolve_model_path(None))
    source = FeatureSource(backbone, cache=FeatureCache.for_model(backbone.manifest))
    data = source.labelled(read_labelled_folder(args.data))
    assert data.features is not None, f"{args.data}: no readable image"
    maps, labels = data.features, data.labels
    plan = sample_episodes(labels, args.way, args.shot, 1, args.episodes, seed=0)
    times, before, after = [], [], []
    for ep in plan.episodes:
        shots = np.stack([[nodes_of(f) for f in maps[row]] for row in ep.support])
        t0 = time.perf_counter()
        fit_sfc(shots)
        times.append(time.perf_counter() - t0)
        check = fit_sfc(shots, final_loss=True)
        before.append(check.losses[0])
        after.append(check.losses[-1])
    t = np.array(times)
    print(f"{args.data.name}: {args.way}-way {args.shot}-shot SFC fit ({SFC_STEPS} steps), {len(t)} episodes: "
          f"median {1000 * np.median(t):.0f} ms, p90 {1000 * np.quantile(t, 0.9):.0f} ms; "
          f"support loss {np.mean(before):.3f} -> {np.mean(after):.3f} nats")  # fmt: skip
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("sfc_time"):
        raise SystemExit(main())
