"""``emdcli batch SUPPORT INPUT --output DEST``: classify very many images, in this process or on a Ray
cluster, into Parquet parts (or one CSV/JSONL file), resumable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from .. import defaults
from .common import CLASSIFYING, Session, SupportOrFittedArg, argument, with_session

if TYPE_CHECKING:
    from ..tasks.batch import RunTally

NAME = "batch"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli batch support/ photos/ -o predictions/\n\n"
    "  emdcli batch support/ manifest.parquet -o predictions/ --engine ray --workers 8\n\n"
    "  RAY_ADDRESS=head-node:6379 emdcli batch support/ paths.txt -o out/ --engine ray --resume\n\n"
    "Rows have classify's CSV columns plus model_sha256; with --engine ray they come in the order "
    "batches finish. Exit codes: 0 done (unreadable images are status=error rows), 1 runtime failure "
    "(model, workers, cluster), 2 usage error (bad option, INPUT or DEST, Ray not installed), "
    "130 interrupted (143 on SIGTERM): what was written is kept; --resume finishes it."
)

EngineName = Literal["local", "ray"]
BatchFormat = Literal["parquet", "csv", "jsonl"]
#: Error rows reported one by one on stderr before they are only counted.
SHOWN_ERRORS = 10


SourceOpt = Annotated[
    str,
    argument(
        "The images: a folder (searched recursively), a text file of paths (one per line), or a "
        ".parquet/.csv manifest with a 'path' column. Relative paths are read from the current folder.",
        "INPUT",
    ),
]

OutputOpt = Annotated[
    Path,
    typer.Option(
        "--output",
        "-o",
        metavar="DEST",
        help="A folder for Parquet parts (part-NNNNNN.parquet, and _emdcli.json with the run's settings), "
        "or a .csv/.jsonl file, written atomically (an unfinished run keeps DEST.partial).",
        show_default=False,
    ),
]

EngineOpt = Annotated[
    EngineName,
    typer.Option(
        "--engine",
        metavar="ENGINE",
        help="local: in this process, no Ray needed; ray: a Ray Data actor pool "
        "(a local cluster, or --address / $RAY_ADDRESS).",
    ),
]

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        metavar="ADDR",
        help="The Ray cluster to run on (host:port, or ray://host:10001).",
        show_default="$RAY_ADDRESS, else a local cluster for this run",
    ),
]

WorkersOpt = Annotated[
    str | None,
    typer.Option(
        "--workers",
        metavar="N|MIN-MAX",
        help="ray: 1-CPU worker processes, a fixed number or an autoscaling range; local: backbone calls at once.",
        show_default="one per core (local cluster), the cluster's CPUs but one (--address)",
    ),
]

TaskSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--task-size",
        metavar="B",
        min=1,
        help="Images per task: one set of queries matched together (transductive, on either engine), "
        "and on --engine ray what a worker is handed at once (a lost worker redoes at most one task). "
        "--no-transductive --engine local streams every image through one worker.",
        show_default=f"{defaults.BATCH_TASK_SIZE}, in tasks of near-equal size",
    ),
]

FmtOpt = Annotated[
    BatchFormat | None,
    typer.Option(
        "--format",
        "-f",
        metavar="FORMAT",
        help="parquet, csv or jsonl.",
        show_default="csv or jsonl by DEST's suffix, else parquet",
    ),
]

ResumeOpt = Annotated[
    bool,
    typer.Option("--resume", help="Keep the rows DEST already holds and classify only the paths they lack."),
]


@with_session(*CLASSIFYING, "cache", "progress", "quiet", "config")
def run(
    support: SupportOrFittedArg,
    source: SourceOpt,
    output: OutputOpt,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    task_size: TaskSizeOpt = None,
    fmt: FmtOpt = None,
    resume: ResumeOpt = False,
    *,
    session: Session,
) -> None:
    """Classify many images into DEST: in this process, or on a Ray cluster; resumable."""
    from ..io.inputs import list_inputs
    from ..tasks import batch as batch_tasks
    from ..tasks.destination import Destination
    from .reports import similar_classes_note, support_warnings
    from .stderr import note
    from .tables import simple_table

    chosen = fmt or _format_for(output)
    span = _parse_workers(workers, engine)
    if task_size is not None and engine == "local" and session.settings.transductive is False:
        session.warn("--task-size is the size of a set of queries; with --no-transductive the local engine "
                    "streams every image through one worker")  # fmt: skip
    if engine == "ray":
        from ..tasks.ray_engine import need_ray

        need_ray()  # before any work: exit 2 with what to install
    out = Destination(output, chosen, session.quiet, note)  # checks DEST now (exit 2)
    from ..tasks.fitted import is_fitted_file, support_folder

    fitted_file, folder = is_fitted_file(support), support_folder(support)
    inputs = list_inputs(source)
    for line in support_warnings(folder):
        session.warn(line)
    _input_warnings(session, inputs, source)
    with session.progress() as bars:
        task = bars.add_task("Support", total=folder.image_count)
        job, support_set = batch_tasks.fit_job(
            support if fitted_file else folder, session.source, session.matcher(), session.backbone.check,
            top_k=session.settings.top_k, device=session.settings.device, on_done=lambda n: bars.advance(task, n),
            reject=session.reject(),
        )  # fmt: skip
    session.report_skipped(support_set.skipped, "support image ")
    if alike := similar_classes_note(job.matcher, job.classes):
        session.inform(alike)
    done = out.start(job, resume=resume, source=source)
    todo = [p for p in inputs.paths if p not in done]
    if done:
        session.inform(f"resuming: {len(done)} of {len(inputs.paths)} paths are already in {output}")
    if not todo:
        session.inform(f"nothing to do: every path of {source} is in {output}")
    tally = batch_tasks.RunTally(resumed=len(done), engine=engine, open_set=job.rejection is not None)
    with out.writing(job, tally, simple_table("batch", job.columns), summary_line) as write, session.progress() as bars:
        task = bars.add_task("Images", total=len(todo))
        tally.engine_started = time.perf_counter()
        if todo and engine == "local":
            tally.workers = span[1] if workers else None
            local_job = job.with_layout(threads=None, lanes=tally.workers)
            for rows in batch_tasks.run_local(local_job, todo, lambda n: bars.advance(task, n), task_size):
                _write_rows(rows, tally, write, session)
        elif todo:
            from ..tasks.ray_engine import ray_cluster, run_ray

            with ray_cluster(address, span if workers else None) as cluster:
                tally.workers = cluster.workers[1]
                for rows in run_ray(job, todo, cluster.workers, task_size):
                    bars.advance(task, len(rows))
                    _write_rows(rows, tally, write, session)


def _input_warnings(session: Session, inputs: Any, source: str) -> None:
    """What INPUT listed twice, and what it held that is not an image, on stderr."""
    from ..io.images import count_by_suffix
    from .reports import plural

    if inputs.duplicates:
        listed = ", ".join(inputs.duplicates[:3]) + (", ..." if len(inputs.duplicates) > 3 else "")
        session.warn(f"{plural(len(inputs.duplicates), 'path')} listed more than once in {source} ({listed}): "
                     "each is classified once")  # fmt: skip
    if inputs.not_images:
        n = len(inputs.not_images)
        what = "is not an image" if n == 1 else "are not images"
        session.warn(f"left out: {plural(n, 'file')} in {source} that {what} ({count_by_suffix(inputs.not_images)})")


def _write_rows(rows: list[dict[str, Any]], tally: RunTally, write: Any, session: Session) -> None:
    """Count ``rows`` (the first error rows said on stderr) and write them to DEST."""
    errors_before = tally.counts.errors
    tally.add(rows)
    failed = [row for row in rows if row["status"] != "ok"]
    for row in failed[: max(0, SHOWN_ERRORS - errors_before)]:
        session.warn(f"skipped {row['error']}")
    write(rows)


def summary_line(summary: dict[str, Any]) -> str:
    from .reports import plural

    parts = [plural(summary["rows"], "row"), f"{summary['classified']} classified"]
    if summary["skipped"]:
        parts.append(f"{summary['skipped']} skipped (status=error)")
    if summary["resumed"]:
        parts.append(f"{summary['resumed']} resumed")
    if "rejected" in summary:
        parts.append(f"{summary['rejected']} rejected as none of the classes")
    if summary["accuracy"] is not None:
        parts.append(f"accuracy {summary['correct']}/{summary['labelled']} = {100 * summary['accuracy']:.1f}%")
    workers = "" if summary["workers"] is None else f", {plural(summary['workers'], 'worker')}"
    parts.append(f"engine {summary['engine']}{workers}")
    if summary["startup_seconds"] is not None:
        parts.append(f"start-up {summary['startup_seconds']:.1f} s")
    if summary["rows_per_second"]:
        parts.append(f"{summary['rows_per_second']:.1f} rows/s after it")
    parts.append(f"{summary['seconds']:.1f} s")
    return " · ".join(parts)


def _format_for(output: Path) -> str:
    """csv or jsonl by DEST's suffix (sink's one table of suffixes), else a Parquet folder."""
    from ..io.sink import format_from_suffix

    found = format_from_suffix(output)
    return found if found in ("csv", "jsonl") else "parquet"


def _parse_workers(text: str | None, engine: str) -> tuple[int, int]:
    """``N`` or ``MIN-MAX`` -> (min, max); (1, 1) when not given. UsageError otherwise."""
    from ..errors import UsageError

    if text is None:
        return (1, 1)
    low, sep, high = text.partition("-")
    try:
        span = (int(low), int(high) if sep else int(low))
    except ValueError:
        raise UsageError(f"--workers {text}: expected a number N or a range MIN-MAX, such as 4 or 2-8") from None
    if span[0] < 1 or span[1] < span[0]:
        raise UsageError(f"--workers {text}: need 1 <= MIN <= MAX")
    if sep and engine == "local":
        raise UsageError(f"--workers {text}: a range is for --engine ray; give a number with --engine local")
    return span
