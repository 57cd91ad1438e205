"""Reports of an :class:`~emdcli.evaluate.Evaluation`: a rich table, CSV rows, a JSON document."""

from __future__ import annotations

import csv
import json
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table

from .evaluate import Evaluation

CSV_COLUMNS = (
    "method", "way", "shot", "query", "episodes", "accuracy", "ci95",
    "vs_proto", "vs_proto_ci95", "seconds_per_episode",
)  # fmt: skip


def evaluation_document(evaluation: Evaluation, meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: ``meta`` (dataset, model, seed...), then ``results`` and ``paired``
    (accuracies, differences and intervals in percent / points, rounded to 0.01)."""
    return {
        **meta,
        "results": [
            {"method": r.method, "way": r.way, "shot": r.shot, "query": r.query, "episodes": r.episodes,
             "accuracy": round(r.accuracy, 2), "ci95": round(r.ci95, 2),
             "seconds_per_episode": round(r.seconds_per_episode, 5)}
            for r in evaluation.results
        ],
        "paired": [
            {"method": p.method, "baseline": p.baseline, "difference": round(p.difference, 2), "ci95": round(p.ci95, 2)}
            for p in evaluation.paired
        ],
    }  # fmt: skip


def write_json(stream: IO[str], evaluation: Evaluation, meta: dict[str, Any]) -> None:
    json.dump(evaluation_document(evaluation, meta), stream, indent=2)
    stream.write("\n")


def write_csv(stream: IO[str], evaluation: Evaluation) -> None:
    """One row per method; ``vs_proto`` columns are empty for proto itself (or without proto)."""
    paired = {p.method: p for p in evaluation.paired}
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in evaluation.results:
        p = paired.get(r.method)
        writer.writerow([
            r.method, r.way, r.shot, r.query, r.episodes, f"{r.accuracy:.2f}", f"{r.ci95:.2f}",
            f"{p.difference:.2f}" if p else "", f"{p.ci95:.2f}" if p else "", f"{r.seconds_per_episode:.5f}",
        ])  # fmt: skip


def render_evaluation(console: Console, evaluation: Evaluation, title: str) -> None:
    """A table: accuracy ± 95% CI per method, the paired difference to proto, time per episode."""
    paired = {p.method: p for p in evaluation.paired}
    table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left")
    table.add_column("method", style="bold")
    table.add_column("accuracy %", justify="right")
    table.add_column("vs proto (paired)", justify="right")
    table.add_column("ms / episode", justify="right")
    best = max(r.accuracy for r in evaluation.results)
    for r in evaluation.results:
        p = paired.get(r.method)
        acc = f"{r.accuracy:.1f} ± {r.ci95:.1f}"
        if r.accuracy == best:
            acc = f"[bold green]{acc}[/]"
        diff = "" if p is None else f"{p.difference:+.1f} ± {p.ci95:.1f}"
        table.add_row(r.method, acc, diff, f"{1000 * r.seconds_per_episode:.0f}")
    console.print(table)
