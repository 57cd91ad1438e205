"""``emdcli fit SUPPORT -o FILE.emdfit``: fit a support folder once, into one file that classify and batch take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import Session, advance, argument, with_session

NAME = "fit"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli fit support/ -o animals.emdfit\n\n"
    "  emdcli classify animals.emdfit photos/\n\n"
    "The file holds the class node sets, the pooled features behind the global term, the transductive step and "
    "--reject, the model's sha256 and where each example came from; no pickle. classify and batch give the same "
    "rows from it as from the folder, with the same model and matching options (another model is refused).\n\n"
    "Exit codes: 0 written, 1 runtime failure (model, no example readable), 2 usage error (bad option or path)."
)


SupportOpt = Annotated[
    Path, argument("Folder of labelled examples: SUPPORT/CLASS_NAME/image.jpg, two classes or more.", "SUPPORT")
]

OutputOpt = Annotated[
    Path,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        dir_okay=False,
        help="Where to write the fitted support set (FILE.emdfit, written whole or not at all).",
    ),
]


@with_session("kshot", "metric", "model", "precision", "device", "cache", "progress", "quiet", "config")
def run(
    support: SupportOpt,
    output: OutputOpt,
    *,
    session: Session,
) -> None:
    """Fit a support folder once, into a file that classify and batch take in place of the folder."""
    from ..errors import UsageError
    from ..io.files import display_path, require_output_folder
    from ..io.folders import read_labelled_folder
    from ..tasks.classify import Classifier
    from ..tasks.fitted import SUFFIX, save_fitted
    from .reports import plural, support_warnings

    if output.suffix != SUFFIX:
        raise UsageError(
            f"--output must end in {SUFFIX}, got {display_path(output)}", hint=f"for example -o support{SUFFIX}"
        )
    require_output_folder(output)
    folder = read_labelled_folder(support)
    for line in support_warnings(folder):
        session.warn(line)
    clf = Classifier(session.source, session.matcher())
    with session.progress() as bars:
        fitted = clf.fit(folder, advance(bars, "Support", folder.image_count))
    session.report_skipped(fitted.skipped, "support image ")
    save_fitted(output, fitted, clf, folder)
    size = output.stat().st_size / 1e6
    made = f"{plural(len(fitted.classes), 'class')} from {plural(sum(fitted.shots), 'example')}"
    session.inform(f"wrote {display_path(output)} ({size:.1f} MB): {made}, {fitted.kshot} node sets, "
                   f"model {clf.model_name}")  # fmt: skip
