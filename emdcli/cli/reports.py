"""The records and tables of each command: how library results become rows for the sink."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from ..io.files import display_path
from .sink import Layout, Record, simple_table

if TYPE_CHECKING:
    from ..tasks.classify import Prediction
    from ..tasks.evaluate import Evaluation

#: Decimal places of scores and confidences in every output.
SCORE_DIGITS = 6


def rounded(x: float | None, digits: int = SCORE_DIGITS) -> float | None:
    return None if x is None else round(float(x), digits)


# classify -----------------------------------------------------------------------------------


def prediction_record(pred: Prediction, classes: Sequence[str], top_k: int) -> Record:
    """The JSON object of one prediction (CSV flattens ``top`` and ``scores`` into columns)."""
    ru = pred.runner_up
    scores = pred.scores()
    return {
        "path": display_path(pred.path),
        "status": pred.status,
        "predicted": pred.predicted,
        "score": rounded(pred.score),
        "confidence": rounded(pred.confidence),
        "runner_up": ru.label if ru else None,
        "runner_up_score": rounded(ru.score) if ru else None,
        "true_label": pred.true_label,
        "correct": pred.correct,
        "top": [
            {"class": r.label, "score": rounded(r.score), "confidence": rounded(r.confidence)}
            for r in pred.ranking[:top_k]
        ],
        "scores": {c: rounded(scores.get(c)) for c in classes},  # None: not on the shortlist
        "error": pred.error,
    }


def prediction_from_record(rec: Record) -> Prediction:
    """A Prediction rebuilt from a record of an earlier output (for ``--resume``)."""
    import numpy as np

    from ..tasks.classify import Prediction, Ranked, ranking_from_scores

    scores = {str(c): float(v) for c, v in (rec.get("scores") or {}).items() if v not in (None, "")}
    ranking: tuple[Ranked, ...] = ()
    if rec.get("status") == "ok" and scores:
        ranking = ranking_from_scores(list(scores), np.array(list(scores.values())))
    status = "ok" if ranking else "error"
    error = rec.get("error") or (None if ranking else "no scores in the earlier output")
    return Prediction(Path(str(rec["path"])), status, ranking, rec.get("true_label") or None, error)


def common_folder(paths: Sequence[str]) -> Path | None:
    """The deepest folder holding every path, or None when they share none but the root."""
    try:
        base = Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))
    except ValueError:
        return None
    return None if base == Path(base.anchor) else base


def classify_summary_line(summary: dict[str, Any]) -> str:
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


def classify_layout(classes: Sequence[str], top_k: int, *, pictures: bool = False) -> Layout:
    """Columns: path, status, prediction, runner-up, truth, top_1..top_K, score:CLASS..., picture
    (with ``--explain-dir``), error."""
    head = ["path", "status", "predicted", "score", "confidence", "runner_up", "runner_up_score", "true_label"]
    tail = ("picture", "error") if pictures else ("error",)
    columns = (*head, "correct", *(f"top_{i}" for i in range(1, top_k + 1)), *(f"score:{c}" for c in classes), *tail)

    def flatten(rec: Record) -> list[Any]:
        tops = [t["class"] for t in rec["top"]]
        row = [rec[k] for k in head] + [rec["correct"]]
        row += [tops[i] if i < len(tops) else None for i in range(top_k)]
        return row + [rec["scores"].get(c) for c in classes] + [rec.get(k) for k in tail]

    def table(records: list[Record]) -> RenderableType:
        labelled = any(r["true_label"] is not None for r in records)
        base = common_folder([r["path"] for r in records])
        where = f" in {escape(display_path(base))}" if base else ""
        t = Table(title=f"{len(records)} queries{where}, {len(classes)} classes", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)  # fmt: skip
        t.add_column("query", overflow="fold", min_width=12)
        for name in ("predicted", "score", "conf.", "runner-up") + ((f"top {top_k}",) if top_k > 2 else ()):
            t.add_column(name, justify="right" if name in ("score", "conf.") else "left", no_wrap=name != "runner-up")
        if labelled:
            t.add_column("truth", no_wrap=True)
        for r in records:
            row = [escape(os.path.relpath(os.path.abspath(r["path"]), base) if base else r["path"])]
            if r["status"] == "ok":
                ru = f"{escape(r['runner_up'])} ({r['runner_up_score']:.3f})" if r["runner_up"] else ""
                row += [escape(r["predicted"]), f"{r['score']:.3f}", f"{100 * r['confidence']:.0f}%", ru]
                row += [escape(", ".join(t["class"] for t in r["top"]))] if top_k > 2 else []
            else:
                row += [f"[red]skipped: {escape(r['error'] or '')}[/red]", "", "", ""] + ([""] if top_k > 2 else [])
            if labelled:
                ok = r["true_label"] is not None and r["status"] == "ok"
                row.append(
                    "" if not ok else "[green]✓[/green]" if r["correct"] else f"[red]✗[/red] {escape(r['true_label'])}"
                )
            t.add_row(*row)
        return t

    return Layout("classify", columns, table, flatten, classify_summary_line, resumable=True)


# evaluate -----------------------------------------------------------------------------------

EVALUATE_COLUMNS = (
    "method", "way", "shot", "query", "episodes", "accuracy", "ci95", "vs_proto", "vs_proto_ci95",
    "seconds_per_episode",
)  # fmt: skip


def evaluation_records(evaluation: Evaluation) -> list[Record]:
    """One record per method: accuracy and interval in percent, the paired difference to the
    baseline in points (None for the baseline itself or without it), rounded to 0.01."""
    paired = {p.method: p for p in evaluation.paired}
    out = []
    for r in evaluation.results:
        p = paired.get(r.method)
        out.append({
            "method": r.method, "way": r.way, "shot": r.shot, "query": r.query, "episodes": r.episodes,
            "accuracy": round(r.accuracy, 2), "ci95": round(r.ci95, 2),
            "vs_proto": round(p.difference, 2) if p else None, "vs_proto_ci95": round(p.ci95, 2) if p else None,
            "seconds_per_episode": round(r.seconds_per_episode, 5),
        })  # fmt: skip
    return out


def evaluate_layout(title: str) -> Layout:
    def table(records: list[Record]) -> RenderableType:
        t = Table(title=escape(title), box=box.SIMPLE_HEAVY, title_justify="left")
        t.add_column("method", style="bold")
        for name in ("accuracy %", "vs proto (paired)", "ms / episode"):
            t.add_column(name, justify="right")
        best = max(r["accuracy"] for r in records)
        for r in records:
            acc = f"{r['accuracy']:.1f} ± {r['ci95']:.1f}"
            acc = f"[bold green]{acc}[/]" if r["accuracy"] == best else acc
            diff = "" if r["vs_proto"] is None else f"{r['vs_proto']:+.1f} ± {r['vs_proto_ci95']:.1f}"
            t.add_row(escape(r["method"]), acc, diff, f"{1000 * r['seconds_per_episode']:.0f}")
        return t

    return Layout("evaluate", EVALUATE_COLUMNS, table)


# search and anomaly -------------------------------------------------------------------------

SEARCH_COLUMNS = ("query", "rank", "path", "score", "global_score", "status", "error")
ANOMALY_COLUMNS = ("path", "status", "score", "threshold", "verdict", "error")


def search_layout(title: str) -> Layout:
    return Layout("search", SEARCH_COLUMNS, simple_table(title, SEARCH_COLUMNS))


def anomaly_layout(title: str) -> Layout:
    def line(summary: dict[str, Any]) -> str:
        return f"{summary['anomalous']} of {summary['judged']} queries anomalous"

    return Layout("anomaly", ANOMALY_COLUMNS, simple_table(title, ANOMALY_COLUMNS), summary_line=line)


def with_note(renderable: RenderableType, text: str) -> RenderableType:
    """A renderable followed by a line of text."""
    return Group(renderable, text)
