"""``emdcli review SUPPORT QUERIES...``: a local page where a person fixes predictions, the fixes become
examples, and the rest is re-scored."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import Session, advance, argument, with_session

NAME = "review"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli review support/ inbox/            (prints the page's address; Ctrl-C stops)\n\n"
    "  emdcli review support/ inbox/ --open     (and opens it in the browser)\n\n"
    "The page shows the queries by predicted class, least certain first, the rejected ones apart, and the "
    "suggested ones framed. Keys: j/k move, a or Enter accept, 1-9 correct to that class, c a class by name "
    "(a new one too), n none of these, s skip, u undo. An accepted or corrected image is copied into "
    "SUPPORT/CLASS/ (never over a file) and the classes are refitted; nothing is embedded again. Every "
    "decision is first appended to SUPPORT.review.jsonl beside the folder, so a restart goes on where it was. "
    "The server listens on 127.0.0.1 only and needs the token of its address on every request.\n\n"
    "Exit codes: 0 stopped by Ctrl-C or SIGTERM, 1 runtime failure, 2 usage error."
)

SupportOpt = Annotated[
    Path, argument("Folder of labelled examples: SUPPORT/CLASS_NAME/image.jpg; corrections are added here.", "SUPPORT")
]
QueriesOpt = Annotated[
    list[str] | None,
    argument("Images to review: files or folders (searched recursively); none with --undo or --replay."),
]
PortOpt = Annotated[
    int, typer.Option("--port", metavar="N", min=0, max=65535, help="Port on 127.0.0.1 (0: a free one).")
]
OpenOpt = Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")]
UndoOpt = Annotated[
    bool,
    typer.Option("--undo", help="Take back the journal's last standing decision (its copy removed if unchanged), "
                 "then exit; no model is loaded."),
]  # fmt: skip
ReplayOpt = Annotated[
    bool,
    typer.Option("--replay", help="Copy again every accepted or corrected image the journal records that is missing "
                 "from SUPPORT (a folder restored from a backup, say), then exit; no model is loaded."),
]  # fmt: skip


@with_session("metric", "kshot", "reject", "sensitivity", "unknown_label", "model", "precision", "device", "cache",
              "progress", "quiet", "config")  # fmt: skip
def run(
    support: SupportOpt,
    queries: QueriesOpt = None,
    port: PortOpt = 0,
    open_page: OpenOpt = False,
    undo: UndoOpt = False,
    replay_: ReplayOpt = False,
    *,
    session: Session,
) -> None:
    """Review predictions on a local page: accept, correct, reject; corrections become examples."""
    from ..errors import DatasetError, Terminated, UsageError
    from ..io.folders import read_labelled_folder
    from ..io.images import IMAGE_NAMES_HINT, query_paths
    from ..tasks.classify import Classifier
    from ..tasks.review import Review
    from ..tasks.review_server import ReviewServer

    folder = read_labelled_folder(support)  # checked before any work (exit 2)
    if undo or replay_:
        return _journal_only(support, undo, session)
    if not queries:
        raise UsageError("give the QUERIES to review", hint="for example: emdcli review support/ inbox/")
    paths = list(query_paths(queries))
    if not paths:
        raise DatasetError(f"no images found in {', '.join(queries)}", hint=IMAGE_NAMES_HINT)
    clf = Classifier(session.source, session.matcher())
    with session.progress() as bars:
        review = Review.start(clf, support, paths, reject=session.reject(),
                              on_done=advance(bars, "Embedding", folder.image_count + len(paths)))  # fmt: skip
    server = ReviewServer(review, port)
    typer.echo(server.url)
    session.inform(f"{len(review.items())} queries to review, {len(review.decided)} decided before; "
                   f"journal {review.journal.path}; Ctrl-C stops")  # fmt: skip
    if open_page:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, Terminated):
        pass  # the way a review ends: every decision is in the journal already
    finally:
        server.httpd.server_close()
    session.inform(f"stopped: {len(review.decided)} decided, {len(review.items())} left")


def _journal_only(support: Path, undo: bool, session: Session) -> None:
    """``--undo`` or ``--replay``: work on the journal and the support folder alone."""
    from ..tasks.review import Journal, journal_path, replay, undo_last

    journal = Journal(journal_path(support))
    if undo:
        undone = undo_last(support, journal)
        if undone is None:
            session.inform(f"nothing to undo in {journal.path}")
            return
        last = undone[0]
        what = f" ({last['label']})" if last.get("label") else ""
        session.inform(f"undid decision {last['seq']}: {last['action']}{what} of {last['query']}")
        return
    session.inform(f"replayed {journal.path}: {replay(support, journal)} image(s) copied again")
