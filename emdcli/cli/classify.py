"""``emdcli classify SUPPORT QUERIES...``: few-shot classification, one row per query."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    CLASSIFYING,
    MinConfidenceOpt,
    NullOpt,
    Session,
    SortActionOpt,
    SortIntoOpt,
    SupportOrFittedArg,
    advance,
    argument,
    report_option,
    with_session,
)

if TYPE_CHECKING:
    from ..tasks.classify_run import ClassifyRun

NAME = "classify"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli classify support/ queries/\n\n"
    "  emdcli classify support/ queries/ --format csv > predictions.csv\n\n"
    "  find photos -name '*.jpg' | emdcli classify support/ - --format jsonl | jq -r .predicted\n\n"
    "Exit codes: 0 done (unreadable queries are reported and skipped), 1 runtime failure "
    "(model, device, or no query readable), 2 usage error (bad option or path), 130 interrupted (143 on SIGTERM)."
)


QueriesOpt = Annotated[
    list[str],
    argument(
        "Images to classify: files, folders (searched recursively), or - to read one path per line "
        "from stdin. A query inside a folder named like a class counts toward the accuracy."
    ),
]

ExplainDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--explain-dir",
        metavar="DIR",
        help="Also draw each query's match with the closest example of its predicted class, as "
        "DIR/<query path> (.png added unless a .png, .jpg or .webp), named in the column 'picture' "
        "(see 'emdcli explain').",
        file_okay=False,
        show_default="none",
    ),
]

ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="With --output FILE: keep the rows of an earlier, interrupted run "
        "(FILE.partial, or FILE) and classify only the queries they lack.",
    ),
]

DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="With --sort-into: say what would go where (on stderr and in the rows), changing nothing."
    ),
]

SuggestOpt = Annotated[
    int,
    typer.Option(
        "--suggest",
        metavar="N",
        min=0,
        help="Also name the N queries to label next (uncertain and unlike one another, as emdcli review suggests): "
        "on stderr, and in the summary's 'suggested' (-f json: jq -r '.summary.suggested[]').",
    ),
]

ReportOpt = Annotated[
    Path | None,
    report_option(
        "the support classes with thumbnails, then the queries by predicted class, wrong and rejected ones "
        "marked, linked to their --explain-dir pictures."
    ),
]


@with_session("fmt", "output", *CLASSIFYING, "batch_size", "decode_threads", "cache", "progress", "quiet", "config")
def run(
    support: SupportOrFittedArg,
    queries: QueriesOpt,
    explain_dir: ExplainDirOpt = None,
    resume: ResumeOpt = False,
    sort_into: SortIntoOpt = None,
    sort_action: SortActionOpt = None,
    min_confidence: MinConfidenceOpt = None,
    dry_run: DryRunOpt = False,
    report: ReportOpt = None,
    suggest: SuggestOpt = 0,
    null: NullOpt = False,
    *,
    session: Session,
) -> None:
    """Classify query images by their Earth Mover's Distance to each class of SUPPORT."""
    from ..errors import Terminated, UsageError
    from ..tasks.classify import Classifier
    from ..tasks.classify_run import ClassifyRun, ResumeFrom, SortInto
    from .reports import classify_layout, support_warnings

    sink = session.sink()
    if resume and (session.output is None or sink.fmt == "table"):
        raise UsageError("--resume needs --output FILE with --format csv, json or jsonl")
    if sort_into is None and (sort_action or min_confidence is not None or dry_run):
        raise UsageError("--sort-action, --min-confidence and --dry-run need --sort-into DIR")
    if report is not None:  # checked before any work (exit 2); written only at the end of a run that succeeded
        from ..render.report import check_report_path

        check_report_path(report, taken=(session.output,))
    sort = None if sort_into is None else SortInto(sort_into, sort_action or "copy", min_confidence, dry_run)
    stdin = _stdin_lines(null) if "-" in queries else None
    earlier = ResumeFrom(session.output, sink.fmt) if resume and session.output else None
    run_ = ClassifyRun.open(support, queries, top_k=session.settings.top_k, reject=session.reject(), stdin=stdin,
                            explain_dir=explain_dir, sort=sort, resume=earlier, suggest=suggest,
                            keep_records=report is not None)  # fmt: skip
    for line in support_warnings(run_.folder):
        session.warn(line)
    clf = Classifier(session.source, session.matcher(stream=run_.from_stdin))
    with session.progress() as bars:
        run_.fit(clf, None if run_.fitted_file else advance(bars, "Support", run_.folder.image_count))
    _before_the_queries(run_, session)
    layout = classify_layout(run_.classes, run_.top, pictures=explain_dir is not None, open_set=run_.open_set,
                             sorting=run_.sorter is not None)  # fmt: skip
    sink.keep_head = not run_.from_stdin
    note = _noter(session)
    try:
        with sink.open(layout, run_.header, run_.summary) as emit, session.progress() as bars:
            total = None if run_.from_stdin else len(run_.queries)  # type: ignore[arg-type]
            run_.execute(emit, advance(bars, "Queries", total), note)
            _after_the_queries(run_, session, sort_into)
    except (KeyboardInterrupt, Terminated):
        if run_.stopped_while_embedding():  # no new row yet: say what the cache keeps
            again = "are in the feature cache, so --resume will not embed them again" if clf.source.cache else (
                "will be embedded again (--no-cache)")  # fmt: skip
            of = "" if run_.from_stdin else f" of {len(run_.queries)}"  # type: ignore[arg-type]
            session.inform(f"stopped after embedding {run_.embedded}{of} queries; their features {again}")
        raise
    run_.check_outcome()
    if report is not None:
        run_.write_report(report)
        session.inform(f"wrote the report {report}")


def _stdin_lines(null: bool) -> Any:
    """The lines of stdin, one path each (``null``: NUL-separated)."""
    import sys

    from ..io.images import stdin_paths

    return stdin_paths(sys.stdin, null)


def _noter(session: Session) -> Any:
    """The library's ``note(kind, text)`` as the session's warnings and notes on stderr."""
    return lambda kind, text: session.warn(text) if kind == "warn" else session.inform(text)


def _before_the_queries(run_: ClassifyRun, session: Session) -> None:
    """What fitting found, and what the run will do, on stderr."""
    from ..io.files import display_path
    from .reports import rejection_notes, similar_classes_note

    clf, support = run_.fitted
    session.report_skipped(support.skipped, "support image ")
    for name in support.empty_classes:
        if name not in run_.folder.empty:
            session.warn(f"class {name!r} has no readable image; it is left out")
    if note := similar_classes_note(clf.matcher, support.nodes):
        session.inform(note)
    if run_.resumed is not None:
        n = len(run_.prior)
        session.warn(f"resuming: {n} {'row' if n == 1 else 'rows'} from {display_path(run_.resumed.path)}")
    for line in rejection_notes(support.rejection):
        session.inform(line)


def _after_the_queries(run_: ClassifyRun, session: Session, sort_into: Path | None) -> None:
    """What the run left out, sorted and decided, on stderr before its summary line."""
    from .reports import query_warnings, rejected_all_note, transductive_notes

    clf, support = run_.fitted
    for line in query_warnings(run_.tally, run_.not_images, run_.support_path, clf.source.prep.size):
        session.warn(line)
    sorter = run_.sorter
    if sorter is not None and sorter.left_out:
        session.inform(f"left out {sorter.left_out} queries already in the folders of --sort-into {sort_into}")
    if sorter is not None and sorter.counts:
        done = ", ".join(f"{n} {action}" for action, n in sorted(sorter.counts.items()))
        session.inform(f"{'dry run, nothing changed: ' if sorter.dry_run else ''}--sort-into {sort_into}: {done}")
    for line in transductive_notes(clf.sets):
        session.inform(line)
    if all_rejected := rejected_all_note(support.rejection, run_.tally):
        session.inform(all_rejected)
    if run_.suggested:
        session.inform(f"label next: {', '.join(run_.suggested)}")
