"""The figures the docs quote come from recorded benchmark runs (benchmarks/results/), the recorded
runs name no path of the machine they ran on, and the benchmarks page stays short.

A figure is a number with a decimal point (``52.1``), a percentage (``5%``, ``68.5%``) or a ratio
(``1.85x``), found in the prose and tables of README.md and docs/**/*.md: fenced code blocks, inline
``code`` spans, link targets, URLs and HTML comments hold commands and example output and are left
out. Not figures: integers, dotted versions with two dots or more (``0.2.0``), and a number with one
dot right after one of the words in ``VERSION_WORDS`` (``Python 3.11``, ``emdcli 0.1``). A figure is
found in a results file when the same characters appear there with no digit right before or after
them (``0.5`` is not found in ``10.5`` nor in ``0.52``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS_PAGE = REPO / "docs" / "benchmarks.md"
MAX_BENCHMARKS_PAGE_LINES = 400

#: Words after which a number with one dot is a version, not a figure.
VERSION_WORDS = ("Python", "version", "release", "emdcli", "onnxruntime", "v")

NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)*)(%|x(?![A-Za-z0-9]))?")
AFTER_VERSION_WORD = re.compile(r"(?:\b(?:" + "|".join(VERSION_WORDS) + r")\s?)$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK_TARGET = re.compile(r"\]\([^)]*\)")
URL = re.compile(r"https?://\S+")
COMMENT = re.compile(r"<!--.*?-->", re.S)

#: An absolute path of a machine: the top folders a run or a checkout may sit under.
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:tmp|work|root|home|check|Users|mnt|scratch|private|var/folders)/")
RARER_MACHINE_PATH = re.compile(r"(?<![\w.])/(?:check|Users|mnt|scratch|private|var/folders)/")


def prose(markdown: str) -> str:
    """``markdown`` without its fenced code blocks, inline code spans, link targets, URLs and comments."""
    kept, fence = [], None
    for line in markdown.splitlines():
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
        elif fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence = None
        else:
            kept.append(line)
    text = COMMENT.sub(" ", "\n".join(kept))
    text = CODE_SPAN.sub(" ", text)
    text = LINK_TARGET.sub("]", text)
    return URL.sub(" ", text)


def figures(markdown: str) -> list[str]:
    """The figures of ``markdown``'s prose and tables, in order (see the module's docstring)."""
    text, found = prose(markdown), []
    for m in NUMBER.finditer(text):
        number, suffix = m.group(1), m.group(2)
        if number.count(".") > 1:
            continue
        if suffix:
            found.append(number + suffix)
        elif "." in number and not AFTER_VERSION_WORD.search(text[: m.start()]):
            found.append(number)
    return found


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/, not following links (docs/results is one)."""
    found = [REPO / "README.md"]
    for root, dirs, files in os.walk(REPO / "docs", followlinks=False):
        dirs[:] = sorted(d for d in dirs if not (Path(root) / d).is_symlink())
        found += [Path(root) / f for f in sorted(files) if f.endswith(".md")]
    return [p for p in found if p.is_file() and not p.is_symlink()]


def results_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(RESULTS.glob("*.md")))


def missing_figures(markdown: str, corpus: str) -> list[str]:
    return [
        f for f in dict.fromkeys(figures(markdown)) if not re.search(r"(?<![\d.])" + re.escape(f) + r"(?!\d)", corpus)
    ]


def test_the_figure_rule() -> None:
    text = (
        "Default +6.64 points, 5% of queries, 1.85x faster (`--sensitivity 0.05`), Python 3.11, emdcli 0.2.0,\n"
        "v1.2, blocks.6, 3x3 cells, 2 x 1, 1,000 images, [link](results/a_1.5.md), 0.5 x the cosine.\n"
        "| set | accuracy |\n|---|---|\n| icons | 52.1 ± 1.0 |\n\n```text\n74.9 in a block\n```\n"
    )
    assert figures(text) == ["6.64", "5%", "1.85x", "0.5", "52.1", "1.0"]
    assert missing_figures("gain 0.5 and 2.3% and 1.2x", "10.5 0.52 12.3% 1.2x") == ["0.5", "2.3%"]


def test_every_figure_of_the_docs_is_in_a_results_file() -> None:
    corpus = results_text()
    assert corpus, "no results file"
    missing = {
        p.relative_to(REPO).as_posix(): m
        for p in pages()
        if (m := missing_figures(p.read_text(encoding="utf-8"), corpus))
    }
    assert missing == {}, f"figures found in no file of benchmarks/results: {missing}"


def test_the_results_files_hold_no_path_of_a_machine() -> None:
    """Results files, and the docs pages in docs/'s subfolders (tests/test_docs.py checks README.md
    and docs/*.md for /tmp/, /work/, /root/ and /home/; here the rarer top folders too)."""
    files = sorted(RESULTS.glob("*.md"))
    assert files
    found = {}
    for path in files + pages():
        in_test_docs = path.parent in (REPO, REPO / "docs")
        pattern = (
            re.compile(r"(?<![\w.])/(?:check|Users|mnt|scratch|private|var/folders)/") if in_test_docs else MACHINE_PATH
        )
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if pattern.search(line)]
        if lines:
            found[path.relative_to(REPO).as_posix()] = lines
    assert found == {}


def test_the_benchmarks_page_is_short() -> None:
    lines = BENCHMARKS_PAGE.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_BENCHMARKS_PAGE_LINES


def test_the_docs_link_to_the_results_through_docs_results() -> None:
    link = REPO / "docs" / "results"
    assert link.is_symlink() and os.readlink(link) == "../benchmarks/results"
    for name in re.findall(r"\]\(results/([^)#]+)", BENCHMARKS_PAGE.read_text(encoding="utf-8")):
        assert (RESULTS / name).is_file(), name
