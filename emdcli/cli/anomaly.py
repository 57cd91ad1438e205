"""``emdcli anomaly NORMAL_DIR QUERIES...``: how unlike a set of normal images each query is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import defaults
from ..errors import EXIT_ANOMALY
from .common import NullOpt, Session, argument, embed_folder, query_paths, with_session

NAME = "anomaly"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli anomaly normal/ incoming/\n\n"
    "  emdcli anomaly normal/ part.jpg --fail-on-anomaly && echo looks normal\n\n"
    "Score = mean EMD dissimilarity (1 - score) to the k most similar normal images. The threshold is "
    "calibrated on NORMAL_DIR itself: each normal image is scored against the others (leave-one-out) and "
    "the threshold is the (1 - contamination) quantile of those scores, unless --threshold is given.\n\n"
    f"Exit codes: 0 done (anomalies are results, not failures), {EXIT_ANOMALY} with --fail-on-anomaly when any "
    "query is anomalous, 1 runtime failure, 2 usage error."
)


NormalDirOpt = Annotated[
    Path,
    argument("Folder of normal images (searched recursively), 2 or more.", "NORMAL_DIR"),
]

KOpt = Annotated[
    int,
    typer.Option(
        "--neighbours",
        "--k",
        metavar="N",
        min=1,
        help="How many nearest normal images a score averages (at most all the others).",
    ),
]

ContaminationOpt = Annotated[
    float | None,
    typer.Option(
        "--contamination",
        metavar="FLOAT",
        min=0.0,
        max=0.99,
        help="Fraction of the normal images the calibrated threshold may flag (not with --threshold).",
        show_default=f"{defaults.CONTAMINATION:g}",
    ),
]

ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        metavar="FLOAT",
        help="Use this threshold instead of calibrating one.",
        show_default="calibrated on NORMAL_DIR",
    ),
]

FailOnAnomalyOpt = Annotated[
    bool, typer.Option("--fail-on-anomaly", help=f"Exit with code {EXIT_ANOMALY} when any query is anomalous.")
]


@with_session("fmt", "output", "model", "precision", "device", "cache", "progress", "quiet", "config")
def run(
    normal_dir: NormalDirOpt,
    queries: Annotated[list[str], argument("Images to judge: files, folders, or - to read paths from stdin.")],
    k: KOpt = defaults.ANOMALY_K,
    contamination: ContaminationOpt = None,
    threshold: ThresholdOpt = None,
    fail_on_anomaly: FailOnAnomalyOpt = False,
    null: NullOpt = False,
    *,
    session: Session,
) -> None:
    """Score how unlike the normal examples each query is, with a threshold calibrated on them."""
    import numpy as np

    from ..errors import EmdcliError, UsageError
    from ..tasks.anomaly import AnomalyDetector
    from .reports import anomaly_layout

    sink = session.sink()
    if threshold is not None and contamination is not None:
        hint = "--threshold sets the threshold; --contamination calibrates one on NORMAL_DIR"
        raise UsageError("--contamination and --threshold cannot be used together", hint=hint)
    contamination = defaults.CONTAMINATION if contamination is None else contamination
    paths = query_paths(queries, null)
    detector = embed_folder(session, normal_dir, "normal", lambda images, done: AnomalyDetector.fit(
        session.source, images, k=k, contamination=contamination, threshold=threshold, on_done=done))  # fmt: skip
    cal, size = detector.calibration, detector.normal.size
    if cal.source == "quantile" and size < defaults.CALIBRATION_IMAGES:
        session.warn(f"the threshold is calibrated on only {size} normal images, too few for a quantile to mean "
                    f"much; give {defaults.CALIBRATION_IMAGES} or more, or set --threshold")  # fmt: skip
    if cal.scores.size:
        q50, q95 = np.quantile(cal.scores, [0.5, 0.95])
        how = "given" if cal.source == "explicit" else f"the {100 * (1 - contamination):g}th percentile"
        session.inform(f"calibrated on {size} normal images (k={cal.k}): leave-one-out scores median {q50:.4f}, "
                     f"95th percentile {q95:.4f}, max {cal.scores.max():.4f}; threshold {cal.threshold:.4f} ({how}), "
                     f"flags {100 * cal.flagged_fraction:.0f}% of the normal images")  # fmt: skip
    counts = {"judged": 0, "anomalous": 0, "skipped": 0}
    header = {
        "normal_dir": str(normal_dir), "normal_images": size, "model": session.backbone.manifest.name,
        "model_sha256": session.backbone.check.actual, "k": cal.k, "threshold": round(cal.threshold, 6),
        "threshold_source": cal.source, "contamination": contamination,
    }  # fmt: skip
    layout = anomaly_layout(f"{normal_dir}: threshold {cal.threshold:.4f} ({size} normal images)")
    with sink.open(layout, header, lambda: dict(counts)) as emit:
        for judged in detector.judge(paths):
            if judged.verdict is None:
                counts["skipped"] += 1
                session.warn(f"skipped {judged.error}")
            else:
                counts["judged"] += 1
                counts["anomalous"] += int(judged.verdict.anomalous)
            emit(judged.to_record())
    if not counts["judged"] + counts["skipped"]:
        raise EmdcliError("no query images were given", hint="give image files, folders, or pipe paths into '-'")
    if not counts["judged"]:
        raise EmdcliError("none of the queries could be read", hint="see the warnings above")
    if fail_on_anomaly and counts["anomalous"]:
        raise typer.Exit(EXIT_ANOMALY)
