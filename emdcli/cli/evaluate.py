"""``emdcli evaluate DATASET``: few-shot accuracy on N-way K-shot episodes, every method on the same ones."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import defaults
from .common import Session, advance, argument, with_session

NAME = "evaluate"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli evaluate photos/ --way 5 --shot 1\n\n"
    "  emdcli evaluate photos/ --shot 5 --methods proto,emd,emd-sfc,emd-best-shot --format json\n\n"
    "Methods: proto (SimpleShot baseline), default (exactly what classify runs with its defaults), emd, "
    "emd-uniform, emd-episode-centre, emd-pyramid, emd+global, emd-uniform+global; with --shot 2 or more also "
    "emd-sfc, emd-sfc+global, emd-best-shot, emd-mean-shot. See docs/benchmarks.md for what each measured.\n\n"
    "Exit codes: 0 done, 1 runtime failure, 2 usage error (bad option, path, or a set too small "
    "for the episode shape)."
)


@with_session("fmt", "output", "model", "device", "cache", "progress", "quiet", "config")
def run(
    dataset: Annotated[
        Path,
        argument("Labelled image set: DATASET/CLASS_NAME/image.jpg, one folder per class.", "DATASET"),
    ],  # fmt: skip
    way: Annotated[int, typer.Option("--way", "-n", metavar="N", min=2, help="Classes per episode.")] = defaults.WAY,
    shot: Annotated[int, typer.Option("--shot", metavar="N", min=1, help="Support images per class.")] = defaults.SHOT,
    query: Annotated[int, typer.Option("--query", metavar="N", min=1, help="Query images per class.")] = defaults.QUERY,
    episodes: Annotated[
        int, typer.Option("--episodes", "-e", metavar="N", min=1, help="Episodes to sample.")
    ] = defaults.EPISODES,
    seed: Annotated[
        int, typer.Option("--seed", metavar="N", help="Seed of the episode sampler (same seed, same episodes).")
    ] = defaults.SEED,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            metavar="LIST",
            help="Comma-separated methods, all scored on the same episodes; differences are paired against proto.",
        ),
    ] = ",".join(defaults.METHODS),  # fmt: skip
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", metavar="N", min=1, help="Threads scoring episodes.", show_default="one per CPU"),
    ] = None,  # fmt: skip
    *,
    session: Session,
) -> None:
    """Measure few-shot accuracy on a labelled set: N-way K-shot episodes, every method on the same ones."""
    from ..errors import UsageError
    from ..io.folders import read_labelled_folder
    from ..tasks.evaluate import check_methods, evaluate
    from .reports import evaluate_layout, evaluation_records

    sink = session.sink()
    names = check_methods([m.strip() for m in methods.split(",") if m.strip()], shot)
    if not names:
        raise UsageError("--methods is empty", hint="for example --methods proto,emd")
    folder = read_labelled_folder(dataset)
    started = time.perf_counter()
    with session.progress() as bars:
        result = evaluate(
            folder, way=way, shot=shot, query=query, episodes=episodes, seed=seed, methods=names,
            source=session.source, workers=jobs, on_embedded=advance(bars, "Embedding", folder.image_count),
            on_episode=advance(bars, "Episodes", episodes),
        )  # fmt: skip
    session.report_skipped(result.data.skipped)
    small = [folder.classes[i].name for i in result.plan.too_small]
    if small:
        session.warn(f"{len(small)} of {len(folder.classes)} classes have fewer than {shot + query} readable images "
                    f"and are never drawn: {', '.join(small[:8])}{' ...' if len(small) > 8 else ''}")  # fmt: skip
    header = {
        "dataset": str(dataset), "model": session.backbone.manifest.name, "model_sha256": session.backbone.check.actual,
        "way": way, "shot": shot, "query": query, "episodes": episodes, "seed": seed,
        "images": len(result.data.paths), "unreadable": len(result.data.skipped),
        "classes": len(result.plan.eligible), "classes_too_small": small,
    }  # fmt: skip
    records = evaluation_records(result.evaluation)
    title = (f"{dataset.name}: {way}-way {shot}-shot, {query} queries per class, {episodes} episodes (seed {seed}), "
             "accuracy ± 95% CI")  # fmt: skip

    def summary() -> dict[str, Any]:
        best = max(records, key=lambda r: r["accuracy"])
        return {"methods": len(records), "best": best["method"], "seconds": round(time.perf_counter() - started, 3)}

    with sink.open(evaluate_layout(title), header, summary) as emit:
        for record in records:
            emit(record)
