"""``emdcli evaluate DATASET``: few-shot accuracy on N-way K-shot episodes, every method on the same ones."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import defaults
from .common import Session, ShotOpt, WayOpt, advance, argument, report_option, with_session

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..io.folders import LabelledFolder
    from ..io.records import Record
    from ..io.sink import Layout
    from ..tasks.evaluate import EvaluationRun
    from ..tasks.open_set import OpenSetRun

#: --methods when not given: every method of the default comparison.
ALL_METHODS = ",".join(defaults.METHODS)
NAME = "evaluate"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli evaluate photos/ --way 5 --shot 1\n\n"
    "  emdcli evaluate photos/ --shot 5 --methods proto,emd,emd-sfc,emd-best-shot --format json\n\n"
    "  emdcli evaluate photos/ --way 5 --open-set 2 --sensitivity 0.05\n\n"
    "  emdcli evaluate photos/ --report evaluation.html\n\n"
    "Methods: proto (SimpleShot baseline), default (exactly what classify runs with its defaults), emd, "
    "emd-uniform, emd-episode-centre, emd-pyramid, emd+global, emd-uniform+global; with --shot 2 or more also "
    "emd-sfc, emd-sfc+global, emd-best-shot, emd-mean-shot. See docs/benchmarks.md for what each measured.\n\n"
    "Exit codes: 0 done, 1 runtime failure, 2 usage error (bad option, path, or a set too small "
    "for the episode shape)."
)


DatasetOpt = Annotated[
    Path,
    argument("Labelled image set: DATASET/CLASS_NAME/image.jpg, one folder per class.", "DATASET"),
]

EpisodesOpt = Annotated[int, typer.Option("--episodes", "-e", metavar="N", min=1, help="Episodes to sample.")]

SeedOpt = Annotated[
    int, typer.Option("--seed", metavar="N", help="Seed of the episode sampler (same seed, same episodes).")
]

MethodsOpt = Annotated[
    str,
    typer.Option(
        "--methods",
        metavar="LIST",
        help="Comma-separated methods, all scored on the same episodes; differences are paired against proto.",
    ),
]

OpenSetOpt = Annotated[
    int,
    typer.Option(
        "--open-set",
        metavar="M",
        min=0,
        help="Score open-set rejection instead: each episode adds M classes the support set lacks, --query "
        "queries each, and the default method matches all queries as one set, rejecting as classify --reject "
        "auto does (AUROC, in-set accuracy with and without rejection, shares rejected). 0: off.",
    ),
]

JobsOpt = Annotated[
    int | None,
    typer.Option("--jobs", "-j", metavar="N", min=1, help="Threads scoring episodes.", show_default="one per CPU"),
]

ReportOpt = Annotated[
    Path | None,
    report_option(
        "the accuracy table, then each method's confusion matrix (true against predicted class, over all "
        "episodes) with its most confused pairs; with --open-set, its measures."
    ),
]


@with_session("fmt", "output", "sensitivity", "model", "precision", "device", "cache", "progress", "quiet", "config")
def run(
    dataset: DatasetOpt,
    way: WayOpt = defaults.WAY,
    shot: ShotOpt = defaults.SHOT,
    query: Annotated[int, typer.Option("--query", metavar="N", min=1, help="Query images per class.")] = defaults.QUERY,
    episodes: EpisodesOpt = defaults.EPISODES,
    seed: SeedOpt = defaults.SEED,
    methods: MethodsOpt = ALL_METHODS,
    open_set: OpenSetOpt = 0,
    jobs: JobsOpt = None,
    report: ReportOpt = None,
    *,
    session: Session,
) -> None:
    """Measure few-shot accuracy on a labelled set: N-way K-shot episodes, every method on the same ones."""
    from ..io.folders import read_labelled_folder
    from ..tasks.evaluate import evaluate
    from ..tasks.open_set import check_sensitivity, evaluate_open_set
    from .reports import evaluate_layout

    sink = session.sink()
    sensitivity = check_sensitivity(session.settings.sensitivity)
    names = _checked_methods(dataset, methods, shot, open_set, report, session.output)
    folder = read_labelled_folder(dataset)
    started = time.perf_counter()
    with session.progress() as bars:
        common: dict[str, Any] = dict(
            way=way, shot=shot, query=query, episodes=episodes, seed=seed, source=session.source, workers=jobs,
            on_embedded=advance(bars, "Embedding", folder.image_count), on_episode=advance(bars, "Episodes", episodes),
        )  # fmt: skip
        run: OpenSetRun | EvaluationRun
        confusion = None  # the confusion matrices of --report (none for an open-set run)
        if open_set:
            opened = evaluate_open_set(folder, unseen=open_set, sensitivity=sensitivity, **common)
            run, records = opened, [opened.result.to_record()]
        else:
            closed = evaluate(folder, methods=names, **common)
            run, records, confusion = closed, closed.evaluation.to_records(), closed.evaluation.confusion
    session.report_skipped(run.data.skipped)
    sizes = [int((run.data.labels == i).sum()) for i in run.plan.too_small]
    small = never_drawn(session, folder, run.plan.too_small, shot, query, sizes)
    header = {
        "dataset": str(dataset), "model": session.backbone.manifest.name, "model_sha256": session.backbone.check.actual,
        "way": way, "shot": shot, "query": query,
        **({"open_set": open_set, "sensitivity": sensitivity} if open_set else {}),
        "episodes": episodes, "seed": seed, "images": len(run.data.paths), "unreadable": len(run.data.skipped),
        "classes": len(run.plan.eligible), "classes_too_small": small,
    }  # fmt: skip
    shape = f"{dataset.name}: {way}-way {shot}-shot, {query} queries per class"
    if open_set:
        layout = open_set_layout(f"{shape}, {open_set} unseen {'class' if open_set == 1 else 'classes'}, "
                                 f"{episodes} episodes (seed {seed}), mean ± 95% CI")  # fmt: skip
    else:
        layout = evaluate_layout(f"{shape}, {episodes} episodes (seed {seed}), accuracy ± 95% CI")

    def summary() -> dict[str, Any]:
        seconds = round(time.perf_counter() - started, 3)
        if open_set:
            return {"episodes": records[0]["episodes"], "seconds": seconds}
        best = max(records, key=lambda r: r["accuracy"])
        return {"methods": len(records), "best": best["method"], "seconds": seconds}

    with sink.open(layout, header, summary) as emit:
        for record in records:
            emit(record)
    if report is not None:
        from ..render.evaluation_report import write_evaluation_report

        write_evaluation_report(report, header, records, confusion, run.data.classes)
        session.inform(f"wrote the report {report}")


def _checked_methods(
    dataset: Path, methods: str, shot: int, open_set: int, report: Path | None, output: Path | None
) -> list[str]:
    """The methods to score, every option checked before any work (UsageError, exit 2)."""
    from ..errors import UsageError
    from ..tasks.evaluate import check_methods
    from ..tasks.fitted import is_fitted_file

    names: list[str] = []
    if open_set and methods != ALL_METHODS:
        raise UsageError("--open-set scores the default method only", hint="leave out --methods")
    if not open_set:
        names = check_methods([m.strip() for m in methods.split(",") if m.strip()], shot)
        if not names:
            raise UsageError("--methods is empty", hint="for example --methods proto,emd")
    if report is not None:  # written only at the end of a run that succeeded
        from ..render.report import check_report_path

        check_report_path(report, taken=(output,))
    if is_fitted_file(dataset):
        raise UsageError(
            f"{dataset.name} is a fitted support set: evaluate draws each episode's support images from a labelled "
            "folder, which a fitted file does not hold",
            hint=f"to measure its accuracy, classify labelled images: emdcli classify {dataset} LABELLED_FOLDER",
        )
    return names


def never_drawn(
    session: Session, folder: LabelledFolder, too_small: tuple[int, ...], shot: int, query: int, sizes: list[int]
) -> list[str]:
    """The names of the classes too small to be drawn (``sizes``: their readable images), warned about on
    stderr with the episode shape that would draw them too."""
    from ..tasks.episodes import drawn_too

    small = [folder.classes[i].name for i in too_small]
    if small:
        session.warn(f"{len(small)} of {len(folder.classes)} classes have fewer than {shot + query} readable images "
                     f"and are never drawn: {', '.join(small[:8])}{' ...' if len(small) > 8 else ''}; "
                     f"{drawn_too(min(sizes), shot)}")  # fmt: skip
    return small


def open_set_layout(title: str) -> Layout:
    """``evaluate --open-set``'s row: CSV and JSON as they are; the table one line per measure."""
    from rich.text import Text

    from ..io.sink import Layout
    from ..render.evaluation_report import OPEN_SET_MEASURES
    from ..tasks.open_set import OpenSetResult
    from .tables import NUMBER, Col, FitTable

    shorter = {".4f": ".3f", ".2f": ".1f"}  # a terminal's table shows one decimal fewer than the report

    def table(records: list[Record]) -> RenderableType:
        level = ", ".join(sorted({f"{r['sensitivity']:g}" for r in records}))
        names = [(f"{label} (calibrated at sensitivity {level})" if key == "threshold" else label, key, shorter[fmt])
                 for label, key, fmt in OPEN_SET_MEASURES]  # fmt: skip
        cols = [Col("measure", [Text(n) for n, _, _ in names], style="bold")]
        for r in records:
            cells = [Text(f"{r[key]:{f}} ± {r[key + '_ci95']:{f}}") for _, key, f in names]
            cols.append(Col("mean ± 95% CI", cells, NUMBER, justify="right"))
        return FitTable(title, cols)

    return Layout("evaluate", OpenSetResult.COLUMNS, table)
