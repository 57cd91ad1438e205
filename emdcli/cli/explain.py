"""``emdcli explain SUPPORT_OR_IMAGE QUERY``: a picture of one DeepEMD match."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import defaults
from .common import Session, with_session

NAME = "explain"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli explain support/ query.jpg -o match.png     (closest example of the predicted class)\n\n"
    "  emdcli explain b.jpg a.jpg -o match.png --lines 20     (a.jpg is the query)\n\n"
    "The reference comes first, as in every command (classify SUPPORT QUERIES, search GALLERY QUERY). "
    "The picture shows both images as the model saw them (bright = heavy node weight, dimmed = light), and the "
    "strongest flows of the optimal plan as numbered lines; the caption says what the score is.\n\n"
    "Exit codes: 0 written, 1 unreadable image or model failure, 2 usage error."
)


TargetOpt = Annotated[
    Path,
    typer.Argument(
        help="An image to match the query with, or a support folder (SUPPORT/CLASS/image) or a file 'emdcli "
        "fit' made of one: then the query is classified and matched with the closest example of its predicted "
        "class.",
        metavar="SUPPORT_OR_IMAGE",
        exists=True,
        show_default=False,
    ),
]

OutputOpt = Annotated[
    Path,
    typer.Option("--output", "-o", metavar="FILE", help="Picture to write: .png, .jpg/.jpeg or .webp.", dir_okay=False),
]

LinesOpt = Annotated[int, typer.Option("--lines", metavar="N", min=0, help="How many of the strongest flows to draw.")]

PanelOpt = Annotated[
    int | None,
    typer.Option(
        "--panel",
        metavar="N",
        min=16,
        help="Side of each image in pixels.",
        show_default="the model's input size, upscaled by a whole factor to at least 320 px",
    ),
]


@with_session("metric", "model", "precision", "device", "cache", "config")
def run(
    target: TargetOpt,
    query: Annotated[Path, typer.Argument(help="The query image.", metavar="QUERY", exists=True, show_default=False)],
    output: OutputOpt = Path("match.png"),
    lines: LinesOpt = defaults.EXPLAIN_LINES,
    panel: PanelOpt = None,
    *,
    session: Session,
) -> None:
    """Draw the DeepEMD match between a query and an image (or its predicted class's closest example)."""
    from ..errors import EmdcliError, UsageError
    from ..io.files import display_path
    from ..io.images import load_image, model_view
    from ..render.explain import picture_format, render_match, save_picture
    from ..tasks.classify import Classifier
    from ..tasks.fitted import fit_or_load, is_fitted_file, support_folder

    if query.is_dir() or is_fitted_file(query):  # the order of emdcli 0.1: QUERY SUPPORT_OR_IMAGE
        raise UsageError("SUPPORT_OR_IMAGE comes first and QUERY is an image: emdcli explain SUPPORT_OR_IMAGE QUERY",
                         hint=f"emdcli explain {display_path(query)} {display_path(target)}")  # fmt: skip
    try:  # before any work: the picture's format comes from the --output suffix
        fmt = picture_format(output)
    except ValueError as exc:
        raise UsageError(f"--output {display_path(output.name)}: {exc}") from None
    if not output.parent.is_dir():
        raise UsageError(f"folder for --output does not exist: {output.parent}")
    backbone, prep = session.backbone, session.source.prep
    q_features = backbone(load_image(query, prep)[None])[0]
    class_score: float | None = None
    if target.is_dir() or is_fitted_file(target):
        clf = Classifier(session.source, session.matcher())
        support = fit_or_load(clf, target, support_folder(target), keep_examples=True)
        session.report_skipped(support.skipped, "support image ")
        ranking = clf.rank(support, q_features)
        label, class_score = ranking[0].label, ranking[0].score
        example, t_features = clf.closest_example(support, q_features, label)
        weight = clf.global_weight_for(support)
        caption = f"{query.name} -> predicted {label}; closest example {example.name}."
        if weight:
            caption += f" (The class score adds {weight:g} x the global cosine.)"
        verdict = f"predicted {label} (class score {class_score:.3f}), closest example {display_path(example)}"
    else:
        example = target
        t_features = backbone(load_image(target, prep)[None])[0]
        caption = f"{query.name} <-> {target.name}"
        verdict = f"{display_path(query)} vs {display_path(target)}"
    shown = render_match(
        model_view(query, prep), model_view(example, prep), q_features, t_features,
        lines=lines, panel=panel, caption=caption, metric=session.settings.metric,  # type: ignore[arg-type]
        class_score=class_score,
    )  # fmt: skip
    try:
        save_picture(shown, output, fmt)
    except (OSError, ValueError) as exc:
        raise EmdcliError(f"cannot write {output}: {exc}") from None
    what = "EMD score" if class_score is None else "EMD score with this example"
    typer.echo(f"{display_path(output)}: {what} {shown.score:.3f}; {verdict}")
