"""``emdcli classify SUPPORT QUERIES...``: few-shot classification, one row per query."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..io.sorting import SortAction
from .common import CLASSIFYING, NullOpt, Session, advance, argument, query_paths, report_option, with_session

if TYPE_CHECKING:
    from ..io.sorting import Sorter
    from ..tasks.prediction import Prediction

NAME = "classify"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli classify support/ queries/\n\n"
    "  emdcli classify support/ queries/ --format csv > predictions.csv\n\n"
    "  find photos -name '*.jpg' | emdcli classify support/ - --format jsonl | jq -r .predicted\n\n"
    "Exit codes: 0 done (unreadable queries are reported and skipped), 1 runtime failure "
    "(model, device, or no query readable), 2 usage error (bad option or path), 130 interrupted (143 on SIGTERM)."
)


@with_session("fmt", "output", *CLASSIFYING, "batch_size", "decode_threads", "cache", "progress", "quiet", "config")
def run(
    support: Annotated[
        Path,
        argument(
            "Folder of labelled examples: SUPPORT/CLASS_NAME/image.jpg, two classes or more; or a file "
            "'emdcli fit' made of one (SUPPORT.emdfit).",
            "SUPPORT",
        ),
    ],  # fmt: skip
    queries: Annotated[
        list[str],
        argument(
            "Images to classify: files, folders (searched recursively), or - to read one path per line "
            "from stdin. A query inside a folder named like a class counts toward the accuracy."
        ),
    ],  # fmt: skip
    explain_dir: Annotated[
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
    ] = None,  # fmt: skip
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="With --output FILE: keep the rows of an earlier, interrupted run "
            "(FILE.partial, or FILE) and classify only the queries they lack.",
        ),
    ] = False,  # fmt: skip
    sort_into: Annotated[
        Path | None,
        typer.Option(
            "--sort-into",
            metavar="DIR",
            help="Also put each classified query into DIR/<predicted class>/ (a rejected one into DIR/unknown/, "
            "as --unknown-label names it), never overwriting (a taken name gets -2, -3, ...) nor touching a support "
            "image; the columns sorted_to and sort_action say where each went. Running it again does only "
            "what is left.",
            file_okay=False,
            show_default="none",
        ),
    ] = None,  # fmt: skip
    sort_action: Annotated[
        SortAction | None,
        typer.Option(
            "--sort-action",
            metavar="ACTION",
            help="How --sort-into puts a query there: copy, link (a hard link; a symbolic link across file "
            "systems) or move.",
            show_default="copy",
        ),
    ] = None,  # fmt: skip
    min_confidence: Annotated[
        float | None,
        typer.Option(
            "--min-confidence",
            metavar="P",
            min=0.0,
            max=1.0,
            help="With --sort-into: a query whose confidence is below P goes to DIR/_review/ instead.",
            show_default="none",
        ),
    ] = None,  # fmt: skip
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="With --sort-into: say what would go where (on stderr and in the rows), changing nothing."
        ),
    ] = False,  # fmt: skip
    report: Annotated[
        Path | None,
        report_option(
            "the support classes with thumbnails, then the queries by predicted class, wrong and rejected ones "
            "marked, linked to their --explain-dir pictures."
        ),
    ] = None,
    null: NullOpt = False,
    *,
    session: Session,
) -> None:
    """Classify query images by their Earth Mover's Distance to each class of SUPPORT."""
    from ..errors import DatasetError, EmdcliError, Terminated, UsageError
    from ..interrupts import deferred
    from ..io.files import display_path
    from ..io.folders import read_labelled_folder
    from ..io.sorting import Sorter
    from ..tasks.classify import Classifier, SupportOverlap, Tally
    from ..tasks.pictures import MatchPictures
    from ..tasks.prediction import read_resumed, run_header
    from .reports import (
        classify_layout,
        query_warnings,
        rejected_all_note,
        rejection_notes,
        similar_classes_note,
        support_warnings,
        transductive_notes,
    )

    settings, output = session.settings, session.output
    sink = session.sink()
    if resume and (output is None or sink.fmt == "table"):
        raise UsageError("--resume needs --output FILE with --format csv, json or jsonl")
    if sort_into is None and (sort_action or min_confidence is not None or dry_run):
        raise UsageError("--sort-action, --min-confidence and --dry-run need --sort-into DIR")
    if report is not None:  # checked before any work (exit 2); written only at the end of a run that succeeded
        from ..render.report import check_report_path

        check_report_path(report, taken=(output,))
    reported: list[dict[str, Any]] = []  # the records the page of --report is made of
    from ..tasks.fitted import is_fitted_file, load_fitted, read_meta, recorded_folder

    fitted_file = is_fitted_file(support)
    folder = recorded_folder(read_meta(support)) if fitted_file else read_labelled_folder(support)
    reject = session.reject()
    sorter = None
    if sort_into is not None:  # its folder checked before any work (exit 2)
        label = reject.label if reject else None
        sorter = Sorter.for_support(sort_into, folder, sort_action or "copy", min_confidence=min_confidence,
                                    dry_run=dry_run, unknown_label=label, queries=queries)  # fmt: skip
    from_stdin = "-" in queries
    not_images: list[Path] = []  # files in the query folders that are not images
    texts: dict[Path, str] = {}  # each query path as given (a Path drops a leading ./): the rows keep it
    paths: Any = query_paths(queries, null, not_images, texts)
    if sorter is not None:  # what an earlier run sorted into DIR is not a query again
        paths = sorter.outside(paths)
    if not from_stdin:
        paths = list(paths)
        if not paths:
            from ..io.images import IMAGE_NAMES_HINT

            raise DatasetError(f"no images found in {', '.join(queries)}", hint=IMAGE_NAMES_HINT)
    for line in support_warnings(folder):
        session.warn(line)
    clf = Classifier(session.source, session.matcher(stream=from_stdin))
    started = time.perf_counter()
    if fitted_file:
        support_set = load_fitted(support, clf, reject, keep_examples=bool(explain_dir)).support
    else:
        with session.progress() as bars:
            support_set = clf.fit(folder, advance(bars, "Support", folder.image_count),
                                  keep_examples=bool(explain_dir), reject=reject)  # fmt: skip
    session.report_skipped(support_set.skipped, "support image ")
    for name in support_set.empty_classes:
        if name not in folder.empty:
            session.warn(f"class {name!r} has no readable image; it is left out")
    if note := similar_classes_note(clf.matcher, support_set.nodes):
        session.inform(note)
    classes = support_set.classes
    earlier = read_resumed(output, sink.fmt, classes) if resume and output is not None else None
    prior: tuple[Prediction, ...] = ()
    if earlier is not None:
        prior, done = earlier.predictions, earlier.done
        texts.update((Path(t), t) for t in done)  # the earlier rows keep their text too
        paths = (p for p in paths if display_path(texts.get(p, p)) not in done)
        paths = paths if from_stdin else list(paths)
        session.warn(f"resuming: {len(prior)} {'row' if len(prior) == 1 else 'rows'} from {display_path(earlier.path)}")
    top = min(settings.top_k, len(classes))
    rejection = support_set.rejection
    header = run_header(clf.model_name, session.backbone.check.actual, clf.matcher, support_set.nodes,
                        rejection=rejection)  # fmt: skip
    for line in rejection_notes(rejection):
        session.inform(line)
    tally = Tally(overlap=SupportOverlap(folder))
    query_started = time.perf_counter()

    support_hits = clf.source.cache_hits  # what the queries read from the cache is counted from here
    embedded = [0]  # queries embedded (or read from the cache) so far, for the note of a stopped run

    def summary() -> dict[str, Any]:
        now = time.perf_counter()
        found = tally.summary(support_set, clf.sets, resumed=len(prior), not_images=len(not_images),
                              seconds=now - started, query_seconds=now - query_started,
                              from_cache=clf.source.cache_hits - support_hits)  # fmt: skip
        if sorter is not None:
            found["sorted"] = dict(sorter.counts)
        return found if rejection is None else {**found, "rejected": tally.rejected}

    pictures = MatchPictures(clf, support_set, explain_dir, session.warn) if explain_dir else None
    layout = classify_layout(classes, top, pictures=pictures is not None, open_set=rejection is not None,
                             sorting=sorter is not None)  # fmt: skip
    sink.keep_head = not from_stdin
    try:
        with sink.open(layout, header, summary) as emit, session.progress() as bars:
            shown = advance(bars, "Queries", None if from_stdin else len(paths))

            def on_query(n: int) -> None:
                embedded[0] += n
                shown(n)

            new = clf.predict(support_set, paths, on_query, pictures)
            for pred, resumed in itertools.chain(((p, True) for p in prior), ((p, False) for p in new)):
                if not pred.ok and not resumed:  # an earlier run's skips were reported by that run
                    session.warn(f"skipped {pred.error}")
                given = texts.pop(pred.path, None)
                record = pred.to_record(classes, top, None if given is None else display_path(given),
                                        open_set=rejection is not None)  # fmt: skip
                if pictures is not None:
                    record["picture"] = pictures.drawn.pop(pred.path, None)
                if sorter is not None:
                    record.update(_sort(sorter, pred, earlier.sorted_to.get(pred.path) if earlier else None, session))
                with deferred():  # a row and its count go together: a signal waits for both
                    emit(record)
                    tally.add(pred)
                if report is not None:
                    reported.append(record)
            for line in query_warnings(tally, not_images, support, clf.source.prep.size):  # before the summary line
                session.warn(line)
            if sorter is not None and sorter.left_out:
                session.inform(f"left out {sorter.left_out} queries already in the folders of --sort-into {sort_into}")
            if sorter is not None and sorter.counts:
                done_ = ", ".join(f"{n} {action}" for action, n in sorted(sorter.counts.items()))
                session.inform(f"{'dry run, nothing changed: ' if dry_run else ''}--sort-into {sort_into}: {done_}")
            for line in transductive_notes(clf.sets):
                session.inform(line)
            if all_rejected := rejected_all_note(rejection, tally):
                session.inform(all_rejected)
    except (KeyboardInterrupt, Terminated):
        if tally.total == len(prior) and embedded[0]:  # stopped while embedding: no new row yet
            again = "are in the feature cache, so --resume will not embed them again" if clf.source.cache else (
                "will be embedded again (--no-cache)")  # fmt: skip
            of = "" if from_stdin else f" of {len(paths)}"
            session.inform(f"stopped after embedding {embedded[0]}{of} queries; their features {again}")
        raise
    if tally.total == 0:
        raise DatasetError("no query paths were given on stdin", hint="pipe one image path per line into '-'")
    if tally.ok == 0:
        what = "the query" if tally.total == 1 else f"none of the {tally.total} queries"
        raise EmdcliError(f"{what} could not be read" if tally.total == 1 else f"{what} could be read",
                          hint="see the warnings above")  # fmt: skip
    if report is not None:
        from ..render.report import write_report

        write_report(report, reported, folder)
        session.inform(f"wrote the report {report}")


def _sort(sorter: Sorter, pred: Prediction, earlier: Path | None, session: Session) -> dict[str, Any]:
    """Sort one query by its prediction; the row's sorted_to and sort_action (empty for a skip)."""
    from ..io.files import display_path

    if not pred.ok or pred.predicted is None:
        return {"sorted_to": None, "sort_action": None}
    placed = sorter.place(pred.path, pred.predicted, pred.confidence, rejected=pred.rejected_as is not None,
                          earlier=earlier)  # fmt: skip
    shown = display_path(pred.path)
    if placed.action == "kept" or placed.action == "failed":
        session.warn(f"not sorted {shown}: {placed.reason}")
    elif sorter.dry_run and placed.target is not None:
        session.inform(f"{placed.action} {shown} -> {display_path(placed.target)}")
    return placed.record()
