"""Human-readable reports: the rich table and the one-line summary."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .classify import Prediction
from .output import display_path


def common_folder(paths: Sequence[Path]) -> Path | None:
    """The deepest folder holding every path, or None when they share none but the root."""
    try:
        base = Path(os.path.commonpath([os.path.abspath(p.parent) for p in paths]))
    except ValueError:
        return None
    return None if base == Path(base.anchor) else base


def summary_line(summary: dict[str, Any]) -> str:
    parts = [f"{summary['queries']} queries", f"{summary['classified']} classified"]
    if summary["skipped"]:
        parts.append(f"{summary['skipped']} skipped")
    parts.append(f"{summary['classes']} classes from {summary['support_images']} examples")
    if summary["accuracy"] is not None:
        parts.append(
            f"accuracy {summary['correct']}/{summary['labelled']} = {100 * summary['accuracy']:.1f}% "
            "(queries in class-named folders)"
        )
    if summary["queries_per_second"]:
        parts.append(f"{summary['queries_per_second']:.1f} queries/s")
    parts.append(f"{summary['seconds']:.1f} s")
    return " · ".join(parts)


def render_table(
    console: Console, preds: Sequence[Prediction], classes: Sequence[str], top_k: int, summary: dict[str, Any]
) -> None:
    """One row per query: prediction, score, confidence, runner-up (and truth when known)."""
    labelled = any(p.true_label is not None for p in preds)
    base = common_folder([p.path for p in preds]) if preds else None
    where = f" in {escape(display_path(base))}" if base else ""
    table = Table(
        title=f"{len(preds)} queries{where}, {len(classes)} classes",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("query", overflow="fold", min_width=12)
    table.add_column("predicted", style="bold", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("conf.", justify="right", no_wrap=True)
    table.add_column("runner-up")
    if top_k > 2:
        table.add_column(f"top {top_k}")
    if labelled:
        table.add_column("truth", no_wrap=True)
    for p in preds:
        shown = os.path.relpath(os.path.abspath(p.path), base) if base else str(p.path)
        row = [escape(display_path(shown))]
        if p.ok:
            ru = p.runner_up
            row += [
                escape(p.predicted or ""),
                f"{p.score:.3f}",
                f"{100 * (p.confidence or 0):.0f}%",
                f"{escape(ru.label)} ({ru.score:.3f})" if ru else "",
            ]
            if top_k > 2:
                row.append(escape(", ".join(r.label for r in p.ranking[:top_k])))
        else:
            row += [f"[red]skipped: {escape(p.error or '')}[/red]", "", "", ""]
            if top_k > 2:
                row.append("")
        if labelled:
            if p.true_label is None or not p.ok:
                row.append("")
            else:
                row.append("[green]✓[/green]" if p.correct else f"[red]✗[/red] {escape(p.true_label)}")
        table.add_row(*row)
    console.print(table)
    console.print(summary_line(summary), soft_wrap=True)
