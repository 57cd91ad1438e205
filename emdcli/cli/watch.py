"""``emdcli watch SUPPORT INBOX``: classify each image as it arrives in a folder, until stopped."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    CLASSIFYING,
    MinConfidenceOpt,
    Session,
    SortActionOpt,
    SortIntoOpt,
    SupportOrFittedArg,
    advance,
    argument,
    with_session,
)

NAME = "watch"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli watch support/ inbox/ -o rows.csv\n\n"
    "  emdcli fit support/ -o animals.emdfit && emdcli watch animals.emdfit inbox/ --sort-into sorted/ "
    "--sort-action move\n\n"
    "  emdcli watch support/ inbox/ --once -o rows.csv     (from cron: what is there now, then exit)\n\n"
    "An image counts once it is whole: moved (renamed) in, or, on Linux, closed by the program writing it; "
    "otherwise once its size has not changed for half a second. Files are watched by the watchdog library "
    "(inotify on Linux), or by polling (--poll). The images there at the start are matched as one set, as "
    "classify matches a folder; later ones that are ready together are matched as a set, one arriving alone on "
    "its own (docs/benchmarks.md, 'watch', measures the accuracy that gives up).\n\n"
    "Exit codes: 0 stopped by Ctrl-C or SIGTERM (or done, with --once), 1 runtime failure (model, folder gone), "
    "2 usage error (bad option or path, --output of another kind)."
)


OnceOpt = Annotated[
    bool,
    typer.Option(
        "--once",
        help="Classify the images there now (waiting for any still being written), then exit; 0 also when "
        "there are none.",
    ),
]

OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        dir_okay=False,
        show_default="stdout",
        help="Append each row to FILE as it comes, whole and flushed (.csv or .jsonl). A FILE from an earlier "
        "watch is kept: the images it has rows for are not classified again.",
    ),
]

FmtOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        metavar="FORMAT",
        show_default="from the --output suffix, else table on a terminal and csv in a pipe",
        help="csv, jsonl, or table: one line per image, for people (stdout only).",
    ),
]

PollOpt = Annotated[
    float | None,
    typer.Option(
        "--poll",
        metavar="SECONDS",
        min=0.05,
        show_default="native file events",
        help="Look at the folder every SECONDS instead of using file events (network file systems).",
    ),
]


@with_session(*CLASSIFYING, "batch_size", "decode_threads", "cache", "quiet", "config")
def run(
    support: SupportOrFittedArg,
    inbox: Annotated[Path, argument("Folder to watch (and its subfolders); it may be empty.", "INBOX")],
    sort_into: SortIntoOpt = None,
    sort_action: SortActionOpt = None,
    min_confidence: MinConfidenceOpt = None,
    once: OnceOpt = False,
    output: OutputOpt = None,
    fmt: FmtOpt = None,
    poll: PollOpt = None,
    *,
    session: Session,
) -> None:
    """Classify each image that arrives in INBOX, appending its row as it comes; stop with Ctrl-C."""
    from ..errors import UsageError
    from ..io.files import display_path
    from ..io.sink import RowLog, choose_format
    from ..io.sorting import Sorter
    from ..tasks.classify import Classifier
    from ..tasks.fitted import fit_or_load, is_fitted_file, support_folder
    from ..tasks.watch import Inbox, watch_predictions
    from .classify import _noter
    from .reports import classify_layout, plural, rejection_notes, support_warnings

    if not inbox.is_dir():
        raise UsageError(f"INBOX is not a folder: {display_path(inbox)}", hint=f"create it: mkdir -p {inbox}")
    if sort_into is None and (sort_action or min_confidence is not None):
        raise UsageError("--sort-action and --min-confidence need --sort-into DIR")
    if fmt is not None and fmt not in ("csv", "jsonl", "table"):
        raise UsageError(f"--format must be csv, jsonl or table, got {fmt!r}")
    log = RowLog(output, choose_format(fmt or session.settings.format, output), line=_line)
    folder = support_folder(support)
    reject = session.reject()
    sorter = None
    if sort_into is not None:
        label = reject.label if reject else None
        sorter = Sorter.for_support(sort_into, folder, sort_action or "copy", min_confidence=min_confidence,
                                    unknown_label=label, queries=[str(inbox)])  # fmt: skip
    for line in support_warnings(folder):
        session.warn(line)
    clf = Classifier(session.source, session.matcher())
    with session.progress() as bars:  # a fitted file is read, nothing embedded: no bar
        bar = None if is_fitted_file(support) else advance(bars, "Support", folder.image_count)
        support_set = fit_or_load(clf, support, folder, bar, reject=reject)
    session.report_skipped(support_set.skipped, "support image ")
    rejection, classes = support_set.rejection, support_set.classes
    top = min(session.settings.top_k, len(classes))
    for line in rejection_notes(rejection):
        session.inform(line)
    earlier = log.open(classify_layout(classes, top, open_set=rejection is not None, sorting=sorter is not None))
    done = {Path(r["path"]) for r in earlier if r.get("sort_action") != "moved"}  # a moved one's name is free again
    if earlier:
        session.inform(f"{plural(len(earlier), 'row')} already in {display_path(output or '')}: "
                       "their images are not classified again")  # fmt: skip
    started = time.monotonic()
    note, watched = _noter(session), Inbox(inbox, poll=poll, skip=sorter.holds if sorter else lambda p: False)
    tally = _watch(session, watched, once, lambda w: watch_predictions(clf, support_set, w, done=done, once=once),
                   lambda pred: _row(pred, classes, top, rejection is not None, sorter, note), log)  # fmt: skip
    minutes = (time.monotonic() - started) / 60
    rejected = f" ({tally.rejected} rejected)" if rejection is not None else ""
    session.inform(f"{'done' if once else 'stopped'}: {plural(tally.ok, 'image')} classified{rejected}, "
                   f"{tally.errors} skipped, in {minutes:.1f} min")  # fmt: skip


def _row(pred: Any, classes: tuple[str, ...], top: int, open_set: bool, sorter: Any, note: Any) -> dict[str, Any]:
    """The row of one prediction, sorted first when the run sorts."""
    from ..tasks.classify_run import sort_prediction

    record: dict[str, Any] = pred.to_record(classes, top, open_set=open_set)
    if sorter is not None:
        record.update(sort_prediction(sorter, pred, None, note))
    return record


def _watch(session: Session, inbox: Any, once: bool, predictions: Any, row: Any, log: Any) -> Any:
    """Watch ``inbox`` until stopped (or, with ``once``, until what is there is done): each prediction's
    ``row`` appended to ``log``, counted; the Tally."""
    from ..errors import EmdcliError, Terminated
    from ..io.files import display_path
    from ..tasks.tally import Tally

    tally = Tally()
    try:
        with inbox as watched:
            if not once:
                session.inform(f"watching {display_path(inbox.folder)} ({watched.how}); Ctrl-C stops")
            for pred in predictions(watched):
                if not pred.ok:
                    session.warn(f"skipped {pred.error}")
                record = row(pred)
                log.emit(record)
                tally.add(pred)
                if log.output is not None and pred.ok:
                    session.inform(_line(record))
    except (KeyboardInterrupt, Terminated):
        pass  # the way a watch ends: every row so far is written whole
    except FileNotFoundError as exc:  # the inbox removed while watched
        again = "every row so far is written; create the folder and start again"
        raise EmdcliError(f"cannot watch {display_path(inbox.folder)}: {exc.strerror}", hint=again) from None
    finally:
        log.close()
    return tally


def _line(record: dict[str, Any]) -> str:
    """One row for people: ``path -> class (93%)``, a rejected one with its nearest class."""
    if record["status"] != "ok":
        return f"{record['path']}: skipped ({record['error']})"
    nearest = f", nearest {record['best_class']}" if record.get("best_class", record["predicted"]) != record[
        "predicted"] else ""  # fmt: skip
    sorted_to = f" -> {record['sorted_to']}" if record.get("sorted_to") else ""
    return f"{record['path']} -> {record['predicted']} ({100 * record['confidence']:.0f}%{nearest}){sorted_to}"
