"""``emdcli search GALLERY QUERY...``: retrieval by a global shortlist, then DeepEMD re-ranking."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import defaults
from ..defaults import RerankName
from .common import NullOpt, Session, argument, embed_folder, query_paths, with_session

NAME = "search"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli search photos/ query.jpg --top-k 5\n\n"
    "  emdcli search photos/ queries/ --format csv > hits.csv\n\n"
    "The reference set comes first, as in every command (classify SUPPORT QUERIES, anomaly NORMAL QUERIES). "
    "Two stages: the whole gallery is ranked by global cosine (pooled features), then the --rerank-top best "
    "are re-ranked by DeepEMD. Gallery features are cached, so a second search over the same gallery does "
    "not embed it again. A query that is itself in the gallery is not returned as its own hit.\n\n"
    "Exit codes: 0 done, 1 runtime failure (or no query readable), 2 usage error."
)


QueriesOpt = Annotated[list[str], argument("Query images: files, folders, or - to read paths from stdin.", "QUERY")]

TopKOpt = Annotated[int, typer.Option("--top-k", "-k", metavar="N", min=1, help="Hits per query.")]

RerankTopOpt = Annotated[
    int,
    typer.Option("--rerank-top", metavar="N", min=0, help="How many global-cosine hits DeepEMD re-ranks (0: all)."),
]

RerankOpt = Annotated[
    RerankName,
    typer.Option(
        "--rerank",
        metavar="SCORE",
        help="Re-ranking score: emd+global (EMD score + global cosine; measured the safest), "
        "emd, or none (global cosine only).",
    ),
]


@with_session("fmt", "output", "model", "precision", "device", "cache", "progress", "quiet", "config")
def run(
    gallery: Annotated[Path, argument("Folder of images to search (recursively).", "GALLERY")],
    queries: QueriesOpt,
    top_k: TopKOpt = defaults.SEARCH_TOP_K,
    rerank_top: RerankTopOpt = defaults.SEARCH_SHORTLIST,
    rerank: RerankOpt = defaults.RERANK,  # type: ignore[assignment]  # fmt: skip
    null: NullOpt = False,
    *,
    session: Session,
) -> None:
    """Find the gallery images most like each query: global shortlist, then DeepEMD re-ranking."""
    from ..errors import EmdcliError, UsageError
    from ..io.files import display_path
    from ..tasks.search import Gallery
    from .reports import search_layout

    if gallery.is_file() and Path(queries[-1]).is_dir():  # the order of emdcli 0.1: QUERY... GALLERY
        swapped = " ".join([display_path(queries[-1]), display_path(gallery), *queries[:-1]])
        raise UsageError("GALLERY comes first and is a folder: emdcli search GALLERY QUERY...",
                         hint=f"emdcli search {swapped}")  # fmt: skip
    sink = session.sink()
    paths = query_paths(queries, null)
    found = embed_folder(session, gallery, "gallery", lambda images, done: Gallery.build(session.source, images, done))
    counts = {"ok": 0, "error": 0}

    def rows() -> Iterator[dict[str, Any]]:
        for result in found.search(paths, top_k=top_k, shortlist=rerank_top, rerank=rerank):
            counts["ok" if result.error is None else "error"] += 1
            if result.error is not None:
                session.warn(f"skipped {result.error}")
            yield from result.to_records()

    header = {
        "gallery": str(gallery), "gallery_images": found.index.size, "model": session.backbone.manifest.name,
        "model_sha256": session.backbone.check.actual, "rerank_top": rerank_top, "rerank": rerank, "top_k": top_k,
    }  # fmt: skip
    layout = search_layout(f"{gallery}: {found.index.size} images, re-ranked by {rerank}")
    with sink.open(
        layout, header, lambda: {"queries": counts["ok"] + counts["error"], "skipped": counts["error"]}
    ) as emit:
        for row in rows():
            emit(row)
    if not counts["ok"] + counts["error"]:
        raise EmdcliError("no query images were given", hint="give image files, folders, or pipe paths into '-'")
    if not counts["ok"]:
        raise EmdcliError("none of the queries could be read", hint="see the warnings above")
