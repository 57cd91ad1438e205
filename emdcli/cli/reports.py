"""How each command shows its rows (columns, table, summary line) and what it says on stderr; the
rows themselves and their columns come from the library's results (``to_record``/``to_records``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import RenderableType
from rich.text import Text

from .. import defaults
from ..io.files import display_path
from ..io.images import count_by_suffix
from ..io.records import Record
from ..io.sink import Layout
from ..tasks.prediction import flat_row, prediction_columns
from .tables import CLASS, NUMBER, PATH, Col, FitTable, Prose, common_folder, simple_table

if TYPE_CHECKING:
    from ..io.folders import LabelledFolder
    from ..matching.rejection import Rejection
    from ..matching.support import ClassNodes, Matcher
    from ..tasks.classify import SetReport
    from ..tasks.tally import Tally

# classify -----------------------------------------------------------------------------------


def plural(n: int, word: str) -> str:
    """``"1 query"``, ``"2 queries"``, ``"3 classes"``, ``"4 images"``."""
    if n == 1:
        return f"{n} {word}"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return f"{n} {word[:-1]}ies"
    return f"{n} {word}es" if word.endswith(("s", "x", "ch", "sh")) else f"{n} {word}s"


def _listed(paths: Sequence[Path], most: int = 3) -> str:
    shown = ", ".join(display_path(p.name) for p in paths[:most])
    return shown + (", ..." if len(paths) > most else "")


def support_warnings(folder: LabelledFolder) -> list[str]:
    """What reading the support folder left out, one line per reason."""
    out = [f"class folder {name!r} holds no images; it is left out" for name in folder.empty]
    if folder.loose:
        out.append(f"not used: {plural(len(folder.loose), 'file')} directly in {display_path(folder.root)}, "
                   f"outside any class folder ({_listed(folder.loose)})")  # fmt: skip
    if folder.ignored:
        out.append(f"not used: {plural(len(folder.ignored), 'file')} in the class folders that "
                   f"{'is not an image' if len(folder.ignored) == 1 else 'are not images'} "
                   f"({count_by_suffix(folder.ignored)})")  # fmt: skip
    return out


def similar_classes_note(matcher: Matcher, classes: ClassNodes) -> str | None:
    """A line for stderr when the default dropped the global term because the classes look alike
    overall (``defaults.SIMILAR_CLASSES``); None otherwise."""
    from .. import defaults

    similarity = classes.similarity
    if matcher.global_weight is not None or similarity is None or not defaults.look_alike(classes.kshot, similarity):
        return None
    return (f"the classes look alike overall (similarity {similarity:.2f} >= {defaults.SIMILAR_CLASSES}): "
            "matching by EMD alone, without the global term (--global-weight sets it)")  # fmt: skip


def rejection_notes(rejection: Rejection | None) -> list[str]:
    """What ``--reject`` was set to, and whether its calibration is a rough one (before the queries)."""
    if rejection is None:
        return []
    if rejection.sensitivity is None:
        return [f"--reject {rejection.threshold:g}: queries whose open_set_score is below it are {rejection.label!r}"]
    lines = [f"--reject auto: open-set threshold {rejection.threshold:.3f}, calibrated to reject about "
             f"{100 * rejection.sensitivity:g}% of the queries that belong to a class (--sensitivity)"]  # fmt: skip
    if rejection.weak:
        lines.append(f"the calibration is rough with {rejection.weak}: the share rejected may be well off "
                     f"{100 * rejection.sensitivity:g}%; give every class 2 examples or more, and have 3 classes "
                     "or more")  # fmt: skip
    return lines


def rejected_all_note(rejection: Rejection | None, tally: Tally) -> str | None:
    """A note when rejection answered "none of these" for every classified query, else None."""
    if rejection is None or tally.ok == 0 or tally.rejected < tally.ok:
        return None
    fixed = rejection.sensitivity is None
    how = f"{rejection.threshold:g}" if fixed else "auto"
    fix = "lower it, or use --reject auto" if fixed else "are the queries of the kinds of SUPPORT's classes?"
    top = tally.highest_open_score
    best = "" if top is None else f" (the highest open_set_score was {top:.3f})"
    return f"--reject {how} rejected every query{best}: {fix}"


def transductive_notes(sets: Sequence[SetReport]) -> list[str]:
    """Lines for stderr about the sets of queries that were matched each query on its own because
    their predictions were too lopsided (``defaults.TRANSDUCTIVE_MIN_SPREAD``, ``TRANSDUCTIVE_MAX_SHARE``)."""
    kept = [s for s in sets if not s.ran]
    if not kept:
        return []
    if len(sets) == 1:
        s = kept[0]
        if s.queries < 2:
            return ["classified the one query on its own: matching queries together needs two or more"]
        return [
            "classified each query on its own, not together: most first guesses went to few classes, as when most "
            "images are of one class, and matching them together would pull the other classes toward those"
        ]
    return [f"classified the queries of {len(kept)} of {len(sets)} sets each on its own: most first guesses went to "
            "few classes, as when most images are of one class"]  # fmt: skip


def query_warnings(tally: Tally, not_images: Sequence[Path], support: Path, input_size: int) -> list[str]:
    """After a run: files left out of the query folders, queries far below the model's input size
    (``input_size`` px), and queries that are support images."""
    out = []
    if tally.small:
        named = ", ".join(display_path(p) for p in tally.small_examples) + (" ..." if tally.small > 3 else "")
        under = int(defaults.SMALL_IMAGE_SHARE * input_size)
        one = tally.small == 1
        out.append(f"{plural(tally.small, 'query')} under {under} px on the shorter side, far below the model's "
                   f"{input_size} px input, {'was' if one else 'were'} classified all the same; "
                   f"{'its prediction says' if one else 'their predictions say'} little: {named}")  # fmt: skip
    if not_images:
        out.append(f"left out: {plural(len(not_images), 'file')} in the query folders that "
                   f"{'is not an image' if len(not_images) == 1 else 'are not images'} "
                   f"({count_by_suffix(not_images)})")  # fmt: skip
    n = tally.support_images
    if n:
        are = "is also a support image" if n == 1 else "are also support images"
        what = (
            "every query is also a support image"
            if n == tally.total
            else f"{n} of {plural(tally.total, 'query')} {are}"
        )
        out.append(f"{what} (the same file content): their predictions and the accuracy say nothing "
                   "about unseen images; did you swap SUPPORT and QUERIES, or give the same folder twice?")  # fmt: skip
    elif tally.in_support_folders:
        out.append(f"{plural(tally.in_support_folders, 'query')} inside the support set's class folders "
                   f"({display_path(support)}/CLASS/...): did you swap SUPPORT and QUERIES?")  # fmt: skip
    return out


def classify_summary_line(summary: dict[str, Any]) -> str:
    parts = [plural(summary["queries"], "query"), f"{summary['classified']} classified"]
    if summary["skipped"]:
        parts.append(f"{summary['skipped']} skipped")
    parts.append(f"{plural(summary['classes'], 'class')} from {plural(summary['support_images'], 'example')}")
    if summary.get("support_images_as_queries"):
        parts.append(f"{summary['support_images_as_queries']} of them support images")
    if "rejected" in summary:
        parts.append(f"{summary['rejected']} rejected as none of the classes")
    if summary["accuracy"] is not None:
        parts.append(
            f"accuracy {summary['correct']}/{summary['labelled']} = {100 * summary['accuracy']:.1f}% "
            "(queries in class-named folders)"
        )
    if summary.get("queries_from_cache"):
        parts.append(f"{summary['queries_from_cache']} embedded by an earlier run (feature cache)")
    if summary["queries_per_second"]:
        parts.append(f"{summary['queries_per_second']:.1f} queries/s")
    parts.append(f"{summary['seconds']:.1f} s")
    return " · ".join(parts)


def classify_layout(classes: Sequence[str], top_k: int, *, pictures: bool = False, open_set: bool = False,
                    sorting: bool = False) -> Layout:  # fmt: skip
    """Columns: path, status, prediction, runner-up, truth, (best class and open-set score with
    ``--reject``), top_1..top_K, score:CLASS..., picture (with ``--explain-dir``), sorted_to and
    sort_action (with ``--sort-into``), error."""
    tail = (*(("picture",) if pictures else ()), *(("sorted_to", "sort_action") if sorting else ()), "error")
    columns = (*prediction_columns(classes, top_k, open_set)[:-1], *tail)

    def flatten(rec: Record) -> list[Any]:
        row = flat_row(rec, classes, top_k)
        return [row.get(c) for c in columns]

    def table(records: list[Record]) -> RenderableType:
        base = common_folder([r["path"] for r in records])
        done = [r for r in records if r["status"] == "ok"]

        def cells(text: Callable[[Record], str]) -> list[Text]:  # blank in a skipped row
            return [Text(text(r)) if r["status"] == "ok" else Text("") for r in records]

        def predicted(r: Record) -> Text:  # or why it was skipped (without its path again), wrapped as prose
            if r["status"] == "ok" and r.get("best_class", r["predicted"]) != r["predicted"]:  # rejected
                return Text(f"{r['predicted']} (nearest: {r['best_class']})", style="yellow")
            if r["status"] == "ok":
                return Text(r["predicted"])
            return Prose("skipped: " + str(r["error"] or "").removeprefix(f"{r['path']}: "), style="red")

        def mark(r: Record) -> Text:  # for a classified query in a class-named folder
            if r["status"] != "ok" or r["true_label"] is None:
                return Text("")
            return Text("✓", "green") if r["correct"] else Text("✗", "red")

        query = [Text(os.path.relpath(os.path.abspath(r["path"]), base) if base else r["path"]) for r in records]
        cols = [
            Col("query", query, PATH),
            Col("predicted", [predicted(r) for r in records], CLASS),
            Col("score", cells(lambda r: f"{r['score']:.3f}"), NUMBER, justify="right"),
            Col("conf.", cells(lambda r: f"{100 * r['confidence']:.0f}%"), NUMBER, justify="right"),
        ]
        # the optional columns give way when space is short: top K first, then the true class (✓ or ✗ stay),
        # then the runner-up
        if any(r["runner_up"] for r in done):
            runner_up = cells(lambda r: f"{r['runner_up']} ({r['runner_up_score']:.3f})" if r["runner_up"] else "")
            cols.append(Col("runner-up", runner_up, give_way=3))
        if top_k > 2:
            cols.append(Col(f"top {top_k}", cells(lambda r: ", ".join(t["class"] for t in r["top"])), give_way=1))
        if any(r["true_label"] is not None for r in done):
            marks = [mark(r) for r in records]
            truth = [m + f" {r['true_label']}" if m.plain == "✗" else m for m, r in zip(marks, records, strict=True)]
            cols.append(Col("truth", truth, give_way=2, shorter=marks))
        where = f" in {display_path(base)}" if base else ""
        title = f"{plural(len(records), 'query')}{where}, {plural(len(classes), 'class')}"
        return FitTable(title, cols, box=box.SIMPLE_HEAD, pad_edge=False)

    return Layout("classify", columns, table, flatten, classify_summary_line, resumable=True)


# evaluate -----------------------------------------------------------------------------------


def evaluate_layout(title: str) -> Layout:
    """The columns of :attr:`Evaluation.COLUMNS`; the table one row per method, the best accuracy in bold."""
    from ..tasks.evaluate import Evaluation

    def table(records: list[Record]) -> RenderableType:
        best = max(r["accuracy"] for r in records)
        accuracy = [Text(f"{r['accuracy']:.1f} ± {r['ci95']:.1f}", "bold green" if r["accuracy"] == best else "")
                    for r in records]  # fmt: skip
        paired = [Text("" if r["vs_proto"] is None else f"{r['vs_proto']:+.1f} ± {r['vs_proto_ci95']:.1f}")
                  for r in records]  # fmt: skip
        cols = [
            Col("method", [Text(r["method"]) for r in records], style="bold"),
            Col("accuracy %", accuracy, NUMBER, justify="right"),
            Col("vs proto (paired)", paired, NUMBER, justify="right"),
            Col("ms / episode", [Text(f"{1000 * r['seconds_per_episode']:.0f}") for r in records], NUMBER, "right"),
        ]
        return FitTable(title, cols)

    return Layout("evaluate", Evaluation.COLUMNS, table)


# train ----------------------------------------------------------------------------------------


def train_layout(title: str) -> Layout:
    """The columns of :attr:`TrainResult.COLUMNS`; the table one row per validation, the state kept in bold."""
    from ..tasks.training.settings import SELECT_BY, VAL_METHODS, TrainResult

    def table(records: list[Record]) -> RenderableType:
        cols = [Col("episode", [Text(str(r["episode"])) for r in records], NUMBER, justify="right")]
        for m in VAL_METHODS:
            cells = [Text(f"{r[m]:.1f} ± {r[m + '_ci95']:.1f}", "bold green" if r["kept"] and m == SELECT_BY else "")
                     for r in records]  # fmt: skip
            cols.append(Col(m, cells, NUMBER, justify="right"))
        gains = [Text("" if r["episode"] == 0 else f"{r['gain']:+.1f} ± {r['gain_ci95']:.1f}") for r in records]
        cols.append(Col("default vs before", gains, NUMBER, justify="right"))
        cols.append(Col("kept", [Text("kept" if r["kept"] else "") for r in records]))
        return FitTable(title, cols)

    def line(summary: dict[str, Any]) -> str:
        before, kept = summary["before"]["default"], summary["kept"]["default"]
        times = f"trunk maps {summary['trunk_seconds']:.0f} s, training {summary['train_seconds']:.0f} s"
        return (f"kept the state after episode {summary['kept_episode']}: default {before:.1f}% -> {kept:.1f}% on the "
                f"held-out classes; {times}; model: {summary['model']}")  # fmt: skip

    return Layout("train", TrainResult.COLUMNS, table, summary_line=line)


# search and anomaly -------------------------------------------------------------------------


def search_layout(title: str) -> Layout:
    from ..tasks.search import QueryHits

    return Layout("search", QueryHits.COLUMNS, simple_table(title, QueryHits.COLUMNS))


def anomaly_layout(title: str) -> Layout:
    from ..tasks.anomaly import Judged

    def line(summary: dict[str, Any]) -> str:
        return f"{summary['anomalous']} of {plural(summary['judged'], 'query')} anomalous"

    return Layout("anomaly", Judged.COLUMNS, simple_table(title, Judged.COLUMNS), summary_line=line)
