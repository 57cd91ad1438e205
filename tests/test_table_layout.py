"""The table for people fits the terminal without cutting what matters.

At any width from 60 columns: every query path is shown whole (relative to the queries' common
folder, named in the title), broken only after a separator when it must wrap; class names are
never cut mid-word; numbers never wrap or truncate; the optional columns (top K, the true class
of a wrong prediction, the runner-up) give way first. A table written to a file is as wide as its
content, so nothing in it wraps.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from emdcli.cli import app
from emdcli.cli.reports import evaluate_layout, search_layout

from .conftest import make_folder

runner = CliRunner()

#: Class names as long as real ones get (``signs_and_symbols_clocks_and_watches``...).
LONG = {c: f"{c}_signs_and_symbols_clocks_and_watches_long_name" for c in ("red", "green", "blue")}
SEPARATORS = ("/", "_", "-", " ")


def long_named(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """make_folder with each class folder renamed to its long name."""
    make_folder(root, counts, seed)
    for short, long in LONG.items():
        if (root / short).exists():
            (root / short).rename(root / long)
    return root


@pytest.fixture()
def long_sets(tmp_path: Path) -> tuple[Path, Path]:
    """A support set with long class names, and queries two folders deeper, in two sessions."""
    support = long_named(tmp_path / "support", {"red": 2, "green": 2, "blue": 2})
    queries = tmp_path / "queries"
    long_named(queries / "camera_roll-2024" / "session_one_morning", {"red": 1, "green": 1, "blue": 1}, seed=7)
    long_named(queries / "phone-pictures" / "session-two_evening", {"red": 1, "green": 1}, seed=8)
    return support, queries


def classify(model: Path, support: Path, queries: Path, *rest: str, columns: int | None = None) -> tuple[str, list]:
    """The table's text and the JSON records of the same run."""
    env = {"COLUMNS": str(columns)} if columns else {}
    res = runner.invoke(app, ["classify", str(support), str(queries), "--model", str(model), "-f", "table", *rest],
                        env=env)  # fmt: skip
    assert res.exit_code == 0, res.output
    res_json = runner.invoke(app, ["classify", str(support), str(queries), "--model", str(model), "-f", "jsonl"])
    return res.stdout, [json.loads(line) for line in res_json.stdout.splitlines()]


def header(text: str) -> str:
    return next(line for line in text.splitlines() if re.match(r"^ query +predicted ", line))


def table_rows(text: str) -> list[dict[str, list[str]]]:
    """Each row of a classify table: the pieces of its query and predicted cells, one per line, and
    the rest of its first line."""
    lines = text.splitlines()
    head = lines.index(header(text))
    q0, p0 = lines[head].index("query"), lines[head].index("predicted")
    rows: list[dict[str, list[str]]] = []
    for line in lines[head + 2 :]:
        if not line.strip():
            break
        if re.search(r"\s-?\d+\.\d+\s+\d+%", line[p0:]) or line[p0:].startswith("skipped:"):  # a row starts
            rows.append({"query": [], "predicted": [], "rest": [line[p0:]]})
        query, predicted = line[q0:p0].strip(), line[p0:].split()[0] if line[p0 : p0 + 1].strip() else ""
        rows[-1]["query"] += [query] if query else []
        rows[-1]["predicted"] += [predicted] if predicted else []
    return rows


def assert_folded_at_separators(pieces: list[str]) -> None:
    assert all(piece.endswith(SEPARATORS) for piece in pieces[:-1]), f"cut mid-word: {pieces}"


def check_table(text: str, records: list, queries: Path, width: int) -> None:
    assert max(len(line) for line in text.splitlines()) <= width  # Rich drew it at the terminal's width
    assert "…" not in text  # nothing truncated
    assert str(queries) in text.replace("\n", "")  # the common folder is named in the title (folded at /)
    rows = table_rows(text)
    assert len(rows) == len(records)
    expected = {str(Path(r["path"]).relative_to(queries)): r for r in records}
    for row in rows:
        path = "".join(row["query"])
        assert path in expected, f"query path not whole: {row['query']}"
        rec = expected.pop(path)
        assert_folded_at_separators(row["query"])
        if rec["status"] != "ok":  # the reason it was skipped wraps as prose
            assert row["rest"][0].startswith("skipped:")
            continue
        assert "".join(row["predicted"]) == rec["predicted"]
        assert_folded_at_separators(row["predicted"])
        rest = row["rest"][0]
        assert re.search(rf"\s{rec['score']:.3f}\s+{100 * rec['confidence']:.0f}%", rest)
        if m := re.search(r"(\S+) \((-?\d\.\d{3})\)", rest):  # the runner-up, when shown, is whole
            assert (m[1], m[2]) == (rec["runner_up"], f"{rec['runner_up_score']:.3f}")
        if m := re.search(r"✗ (\S+)", rest):  # so is the true class of a wrong prediction
            assert m[1] == rec["true_label"]
    assert not expected


@pytest.mark.parametrize("width", [60, 80, 150])
def test_long_names_and_deep_paths_fit_every_width(tiny_model: Path, long_sets: tuple[Path, Path], width: int) -> None:
    support, queries = long_sets
    text, records = classify(tiny_model, support, queries, "--top-k", "3", columns=width)
    check_table(text, records, queries, width)
    if width == 150:
        assert max(len(line) for line in text.splitlines()) > 100  # the width is used
    if width < 150:  # the optional columns gave way, and the table says so
        assert "runner-up" not in header(text) and "top 3" in text.replace("\n", " ").split("left out")[1]


@pytest.mark.parametrize("width", [60, 80])
def test_short_names_at_narrow_widths(tiny_model: Path, support_dir: Path, query_dir: Path, width: int) -> None:
    text, records = classify(tiny_model, support_dir, query_dir, columns=width)
    check_table(text, records, query_dir, width)
    assert "runner-up" in text and "truth" in text and "✓" in text  # room enough to keep them


def test_a_skipped_query_wraps_its_reason_not_the_paths(tiny_model: Path, long_sets: tuple[Path, Path]) -> None:
    support, queries = long_sets
    broken = queries / "camera_roll-2024" / "session_one_morning" / "a_file_that_is_not_an_image.png"
    broken.write_bytes(b"not a png")
    text, records = classify(tiny_model, support, queries, columns=80)
    check_table(text, records, queries, 80)
    assert sum(r["status"] != "ok" for r in records) == 1


def test_table_file_is_as_wide_as_its_content(tiny_model: Path, long_sets: tuple[Path, Path], tmp_path: Path) -> None:
    support, queries = long_sets
    out = tmp_path / "t.txt"
    res = runner.invoke(
        app, ["classify", str(support), str(queries), "--model", str(tiny_model), "--top-k", "3", "-o", str(out)],
        env={"COLUMNS": "60"},
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    _, records = classify(tiny_model, support, queries)
    lines = out.read_text().splitlines()
    for rec in records:  # one line per row, with the path and every class name whole
        rel = str(Path(rec["path"]).relative_to(queries))
        (line,) = [line for line in lines if rel in line]
        words = line.split()
        assert rec["predicted"] in words and f"{rec['score']:.3f}" in words and rec["runner_up"] in words
        assert ", ".join(t["class"] for t in rec["top"]) in line
    assert "…" not in out.read_text() and "left out" not in out.read_text()


def render(renderable: object, width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True).print(renderable)
    return buf.getvalue()


def test_search_table_keeps_paths_whole_at_60_columns() -> None:
    gallery = "/data/photo_library-2024/holidays/summer_trip_to_the_mountains"
    records = [
        {"query": "queries/a_query_image_with_a_long_name.png", "rank": k, "path": f"{gallery}/{name}", "score": s,
         "global_score": 0.5, "status": "ok", "error": None}
        for k, (name, s) in enumerate([("day_one/IMG_20240611_093015_panorama.jpg", 1.368271),
                                       ("day-two/another_very_long_file_name_here.jpg", 0.967763)], 1)
    ]  # fmt: skip
    text = render(search_layout(f"{gallery}: 2 images, re-ranked by emd+global").table(records), 60)
    assert max(len(line) for line in text.splitlines()) <= 60 and "…" not in text
    assert f"path in {gallery}" in re.sub(r" *\n", " ", text).replace("/ ", "/")  # the common folder
    body = text.splitlines()
    start = next(i for i, line in enumerate(body) if "━" in line) + 1
    col = body[start - 2].index("path")
    pieces: list[list[str]] = []
    for line in body[start:]:
        if not line.strip():
            break
        if re.search(r"\s\d+\s", line[:col]):  # the rank starts a row
            pieces.append([])
        if piece := line[col:].split()[0] if line[col : col + 1].strip() else "":
            pieces[-1].append(piece)
    assert ["".join(p) for p in pieces] == [
        "day_one/IMG_20240611_093015_panorama.jpg",
        "day-two/another_very_long_file_name_here.jpg",
    ]
    for p in pieces:
        assert_folded_at_separators(p)
    assert "1.368271" in text and "0.967763" in text  # numbers whole


def test_evaluate_table_numbers_never_wrap() -> None:
    records = [
        {"method": "proto", "accuracy": 66.67, "ci95": 0.0, "vs_proto": None, "vs_proto_ci95": None,
         "seconds_per_episode": 0.002},
        {"method": "emd-uniform", "accuracy": 75.0, "ci95": 14.2, "vs_proto": 8.33, "vs_proto_ci95": 14.2,
         "seconds_per_episode": 0.643},
    ]  # fmt: skip
    for width in (60, 50):  # at 50 the headers of the numbers and the method's name wrap, not the numbers
        text = render(evaluate_layout("support: 3-way 1-shot, 2 queries per class").table(records), width)
        assert max(len(line) for line in text.splitlines()) <= width and "…" not in text
        for cell in ("66.7 ± 0.0", "75.0 ± 14.2", "+8.3 ± 14.2", "emd-" if width == 50 else "emd-uniform", "643"):
            assert cell in text


def test_a_file_name_that_cannot_break_stays_whole_while_other_columns_wrap() -> None:
    name = "PXL20240611093015123panorama.jpg"  # nowhere to break it
    records = [
        {"query": "queries/a_query_image_with_a_long_name.png", "rank": k, "path": f"/data/{day}/{file}", "score": s,
         "global_score": 0.5, "status": "ok", "error": None}
        for k, (day, file, s) in enumerate([("day_one", name, 1.5), ("day-two", "another_long_file_name.jpg", 0.9)], 1)
    ]  # fmt: skip
    text = render(search_layout("gallery").table(records), 80)
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert name in text.splitlines()[4]  # whole, on the first row's first line; the query wraps instead
