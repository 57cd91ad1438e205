"""``emdcli classify SUPPORT QUERIES...``: few-shot classification, one row per query."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..io.sorting import SortAction
from .common import CLASSIFYING, NullOpt, Session, advance, argument, query_paths, with_session

if TYPE_CHECKING:
    from ..io.folders import LabelledFolder
    from ..io.sorting import Sorter
    from ..tasks.classify import Classifier, Prediction, SetReport, SupportSet, Tally
    from .sink import Layout

NAME = "classify"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli classify support/ queries/\n\n"
    "  emdcli classify support/ queries/ --format csv > predictions.csv\n\n"
    "  find photos -name '*.jpg' | emdcli classify support/ - --format jsonl | jq -r .predicted\n\n"
    "Exit codes: 0 done (unreadable queries are reported and skipped), 1 runtime failure "
    "(model, device, or no query readable), 2 usage error (bad option or path), 130 interrupted (143 on SIGTERM)."
)


@with_session("fmt", "output", *CLASSIFYING, "batch_size", "workers", "cache", "progress", "quiet", "config")
def run(
    support: Annotated[
        Path,
        argument("Folder of labelled examples: SUPPORT/CLASS_NAME/image.jpg, two classes or more.", "SUPPORT"),
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
        typer.Option(
            "--report",
            metavar="FILE",
            help="Also write one self-contained HTML page of the run to FILE (at its end, whole or not at all): "
            "the support classes with thumbnails, then the queries by predicted class, wrong and rejected ones "
            "marked, linked to their --explain-dir pictures.",
            dir_okay=False,
            show_default="none",
        ),
    ] = None,  # fmt: skip
    null: NullOpt = False,
    *,
    session: Session,
) -> None:
    """Classify query images by their Earth Mover's Distance to each class of SUPPORT."""
    from ..errors import DatasetError, EmdcliError, UsageError
    from ..io.folders import read_labelled_folder
    from ..tasks.classify import Classifier, SupportOverlap, Tally
    from ..tasks.prediction import run_header
    from .reports import classify_layout, query_warnings, similar_classes_note, support_warnings, transductive_notes

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
    folder = read_labelled_folder(support)
    sorter = None if sort_into is None else _sorter(sort_into, sort_action, min_confidence, dry_run, folder,
                                                    queries, session)  # fmt: skip
    from_stdin = "-" in queries
    not_images: list[Path] = []  # files in the query folders that are not images
    paths: Any = query_paths(queries, null, not_images)
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
    with session.progress() as bars:
        support_set = clf.fit(folder, advance(bars, "Support", folder.image_count), keep_examples=bool(explain_dir),
                              reject=session.reject())  # fmt: skip
    session.report_skipped(support_set.skipped, "support image ")
    for name in support_set.empty_classes:
        if name not in folder.empty:
            session.warn(f"class {name!r} has no readable image; it is left out")
    note = similar_classes_note(clf.matcher, support_set.nodes)
    if note:
        session.inform(note)
    classes = support_set.classes
    prior: list[Prediction] = []
    sorted_before: dict[Path, Path] = {}  # query -> where an earlier run's row says it went (--resume)
    if resume and output is not None:
        prior, paths = _resume(output, sink.fmt, classes, paths, from_stdin, session, sorted_before)
    top = min(settings.top_k, len(classes))
    rejection = support_set.rejection
    header = run_header(clf.model_name, session.backbone.check.actual, clf.matcher, support_set.nodes,
                        rejection=rejection)  # fmt: skip
    if rejection is not None and rejection.leak is not None:
        session.inform(f"--reject auto: open-set threshold {rejection.threshold:.3f}, calibrated on "
                       f"{rejection.calibrated_on} support images scored against the other classes")  # fmt: skip
    tally = Tally(overlap=SupportOverlap(folder))
    query_started = time.perf_counter()

    def summary() -> dict[str, Any]:
        found = _summary(tally, len(prior), support_set, len(not_images), started, query_started, clf.sets)
        if sorter is not None:
            found["sorted"] = dict(sorter.counts)
        return found if rejection is None else {**found, "rejected": tally.rejected}

    pictures: dict[Path, str] = {}  # query -> the picture drawn of its match (--explain-dir)
    layout = classify_layout(classes, top, pictures=explain_dir is not None, open_set=rejection is not None)
    if sorter is not None:
        layout = _sorting_layout(layout, classes, top)
    with sink.open(layout, header, summary) as emit, session.progress() as bars:
        observe = _explainer(clf, support_set, explain_dir, pictures, session.warn) if explain_dir else None
        new = clf.predict(support_set, paths, advance(bars, "Queries", None if from_stdin else len(paths)), observe)
        earlier_rows = ((pred, True) for pred in prior)
        for pred, earlier in itertools.chain(earlier_rows, ((pred, False) for pred in new)):
            tally.add(pred)
            if not pred.ok and not earlier:  # an earlier run's skips were reported by that run
                session.warn(f"skipped {pred.error}")
            record = pred.to_record(classes, top, open_set=rejection is not None)
            if explain_dir is not None:
                record["picture"] = pictures.pop(pred.path, None)
            if sorter is not None:
                record.update(_sort(sorter, pred, sorted_before.get(pred.path), session))
            emit(record)
            if report is not None:
                reported.append(record)
        for line in query_warnings(tally, not_images, support):  # before the summary line
            session.warn(line)
        if sorter is not None and sorter.left_out:
            session.inform(f"left out {sorter.left_out} queries already in the folders of --sort-into {sort_into}")
        if sorter is not None and sorter.counts:
            done = ", ".join(f"{n} {action}" for action, n in sorted(sorter.counts.items()))
            session.inform(f"{'dry run, nothing changed: ' if dry_run else ''}--sort-into {sort_into}: {done}")
        for line in transductive_notes(clf.sets):
            session.inform(line)
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


def _resume(output: Path, fmt: str, classes: tuple[str, ...], paths: Any, from_stdin: bool, session: Session,
            sorted_to: dict[Path, Path] | None = None) -> Any:  # fmt: skip
    """The predictions an earlier run of this command left in ``output`` (or its .partial), and the
    query paths still to do; ``sorted_to`` gets where its rows say each query was sorted to."""
    from ..errors import DatasetError
    from ..io.files import display_path
    from ..io.records import read_earlier
    from ..tasks.prediction import Prediction, record_scores

    earlier = read_earlier(output, fmt, "classify")
    if earlier is None:
        return [], paths
    records = earlier.records
    found = list(record_scores(records[0])) if records else list(classes)
    if sorted(found) != sorted(classes):
        raise DatasetError(
            f"{earlier.path} was written for classes {', '.join(found)}, not {', '.join(classes)}; cannot resume",
            hint="remove it, or resume with the support folder it was made with",
        )
    prior = [Prediction.from_record(r) for r in records]
    if sorted_to is not None:
        sorted_to.update((p.path, Path(r["sorted_to"])) for p, r in zip(prior, records, strict=True)
                         if r.get("sorted_to"))  # fmt: skip
    done = {display_path(p.path) for p in prior}
    rest = (p for p in paths if display_path(p) not in done)
    session.warn(f"resuming: {len(prior)} {'row' if len(prior) == 1 else 'rows'} from {display_path(earlier.path)}")
    return prior, rest if from_stdin else list(rest)


def _sorter(into: Path, how: SortAction | None, min_confidence: float | None, dry_run: bool,
            folder: LabelledFolder, queries: list[str], session: Session) -> Sorter:  # fmt: skip
    """The Sorter of --sort-into, its folder checked before any work (exit 2)."""
    from ..io.sorting import Sorter, check_destination

    reject = session.reject()
    labels = (*folder.names, *((reject.label,) if reject else ()))
    check_destination(into, folder.root, labels, queries, dry_run=dry_run)
    support = frozenset(p.resolve() for c in folder.classes for p in c.files)
    return Sorter(into, how or "copy", min_confidence, support, dry_run, labels)


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


def _sorting_layout(layout: Layout, classes: tuple[str, ...], top: int) -> Layout:
    """classify's layout with the columns of --sort-into before error."""
    from dataclasses import replace

    from ..tasks.prediction import flat_row

    columns = (*layout.columns[:-1], "sorted_to", "sort_action", layout.columns[-1])
    return replace(layout, columns=columns, flatten=lambda rec: [flat_row(rec, classes, top).get(c) for c in columns])


def picture_path(folder: Path, query: Path) -> Path:
    """Where ``--explain-dir`` draws ``query``'s match: the query's path (relative to the working
    folder when inside it, else absolute) below ``folder``, under the query's own name when emdcli
    writes pictures of its suffix (.png, .jpg, .jpeg, .webp, in that format), else with ``.png``
    added; so every picture maps back to exactly one query."""
    import os

    from ..render.explain import PICTURE_FORMATS

    where = os.path.abspath(query)
    inside = os.path.relpath(where)
    rel = where.lstrip(os.sep) if inside.startswith(os.pardir) else inside
    return folder / (rel if query.suffix.lower() in PICTURE_FORMATS else f"{rel}.png")


def _explainer(
    clf: Classifier, support: SupportSet, folder: Path, pictures: dict[Path, str], say: Callable[[str], None]
) -> Callable[[Prediction, Any], None]:
    """An observer for ``Classifier.predict`` that draws each match into ``folder`` and notes the
    picture's path in ``pictures``."""
    from ..errors import EmdcliError
    from ..io.files import display_path
    from ..io.images import model_view
    from ..render.explain import render_match, save_picture

    folder.mkdir(parents=True, exist_ok=True)

    def draw(pred: Prediction, features: Any) -> None:
        label = pred.predicted or ""
        example, target = clf.closest_example(support, features, label)
        target_path = picture_path(folder, pred.path)
        try:
            target_path.parent.mkdir(parents=True, exist_ok=True)
            shown = render_match(
                model_view(pred.path, clf.source.prep), model_view(example, clf.source.prep), features, target,
                caption=f"{pred.path.name} -> {label} ({example.name})", metric=clf.matcher.metric,
                class_score=pred.score,
            )  # fmt: skip
            save_picture(shown, target_path)
            pictures[pred.path] = display_path(target_path)
        except (OSError, EmdcliError) as exc:
            say(f"could not draw {display_path(pred.path)}: {exc}")

    return draw


def _summary(
    tally: Tally,
    resumed: int,
    support: SupportSet,
    not_images: int,
    started: float,
    query_started: float,
    sets: list[SetReport],
) -> dict[str, Any]:
    now = time.perf_counter()
    new = tally.total - resumed
    return {
        "query_sets": len(sets), "transduced_sets": sum(s.ran for s in sets),
        "queries": tally.total, "classified": tally.ok, "skipped": tally.errors, "resumed": resumed,
        "labelled": tally.labelled, "correct": tally.correct, "support_images_as_queries": tally.support_images,
        "not_images": not_images,
        "accuracy": None if tally.accuracy is None else round(tally.accuracy, 6),
        "support_images": sum(support.shots), "support_skipped": len(support.skipped), "classes": len(support.classes),
        "seconds": round(now - started, 3),
        "queries_per_second": round(new / (now - query_started), 2) if new and now > query_started else None,
    }  # fmt: skip
