"""``classify --report FILE``: one self-contained HTML page (emdcli/render/report.py).

The page is parsed with :mod:`html.parser` (thumbnails, rows per predicted class, the marks of
wrong predictions, no network reference), then opened in a real headless browser (Debian's
``chromium``, skipped when it is not installed) to check what it renders.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emdcli.cli import app
from tests.conftest import COLOURS, make_image

runner = CliRunner()
SUPPORT_IMAGES = 9  # support_dir: 3 classes x 3
QUERIES = 7  # query_dir: 3 classes x 2, and one red image in green/


class Page(HTMLParser):
    """What the tests count in a page: images, query rows by class, marks, links."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.rows: Counter[str] = Counter()
        self.row_classes: list[list[str]] = []
        self.marks: Counter[str] = Counter()
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        css = found.get("class", "").split()
        if tag == "img":
            self.images.append(found)
        elif tag == "tr" and "query" in css:
            self.rows[found.get("data-class", "")] += 1
            self.row_classes.append(css)
        elif tag == "span" and "mark" in css:
            self.marks.update(c for c in css if c != "mark")
        elif tag == "a":
            self.links.append(found.get("href", ""))
        elif tag == "script":
            self.scripts += 1


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


@pytest.fixture()
def one_wrong(query_dir: Path) -> Path:
    """query_dir with a red image in green/: one prediction wrong on purpose."""
    make_image(query_dir / "green" / "actually_red.png", COLOURS["red"], seed=99)
    return query_dir


def classify_with_report(tiny_model: Path, support: Path, queries: Path, report: Path, *extra: str) -> str:
    args = ["classify", str(support), str(queries), "--model", str(tiny_model), "-f", "jsonl", "--report", str(report)]
    res = runner.invoke(app, [*args, *extra])
    assert res.exit_code == 0, res.output
    return report.read_text(encoding="utf-8")


def test_report_page_holds_support_and_queries_by_class(
    tiny_model: Path, support_dir: Path, one_wrong: Path, tmp_path: Path
) -> None:
    text = classify_with_report(tiny_model, support_dir, one_wrong, tmp_path / "report.html",
                                "--explain-dir", str(tmp_path / "matches"))  # fmt: skip
    page = parse(text)
    kinds = Counter(next(c for c in img["class"].split() if c != "thumb") for img in page.images)
    assert kinds == {"support": SUPPORT_IMAGES, "query": QUERIES}
    assert all(img["src"].startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) for img in page.images)
    assert page.rows == {"red": 3, "green": 2, "blue": 2}  # the red image in green/ is predicted red
    assert page.marks == {"wrong": 1}
    assert sum("wrong" in css for css in page.row_classes) == 1
    assert "http" not in text and 'src="http' not in text and page.scripts == 0
    # every query links to its explain picture, relative to the page's folder, and the picture is there
    assert len(page.links) == QUERIES
    assert all(not link.startswith("/") and (tmp_path / link).is_file() for link in page.links)


def test_rejected_queries_are_marked(tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path) -> None:
    text = classify_with_report(tiny_model, support_dir, query_dir, tmp_path / "r.html", "--reject", "0.9999")
    page = parse(text)
    assert page.marks["rejected"] == sum("rejected" in css for css in page.row_classes) > 0
    assert sum(page.rows.values()) == 6


def test_names_are_escaped(tiny_model: Path, tmp_path: Path) -> None:
    support = tmp_path / "s"
    for name, colour in (("<b>red", "red"), ('green"&', "green")):
        for i in range(2):
            make_image(support / name / f"<i>{i}.png", COLOURS[colour], seed=i)
    queries = tmp_path / "q"
    make_image(queries / "<script>x.png", COLOURS["red"], seed=5)
    text = classify_with_report(tiny_model, support, queries, tmp_path / "r.html")
    assert "<b>" not in text and "<i>" not in text and "<script" not in text
    assert "&lt;b&gt;red" in text and "&lt;i&gt;0.png" in text and "green&quot;&amp;" in text


def test_unwritable_report_is_a_usage_error_before_work(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    args = ["classify", str(support_dir), str(query_dir), "--model", str(tiny_model)]
    res = runner.invoke(app, [*args, "--report", str(tmp_path / "missing" / "r.html")])
    assert res.exit_code == 2 and "--report" in res.output
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "same.html"), "--report", str(tmp_path / "same.html")])
    assert res.exit_code == 2
    assert not (tmp_path / "same.html").exists()


def test_no_report_when_the_run_fails(tiny_model: Path, support_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not an image")
    report = tmp_path / "r.html"
    res = runner.invoke(
        app, ["classify", str(support_dir), str(bad), "--model", str(tiny_model), "--report", str(report)]
    )
    assert res.exit_code == 1
    assert not report.exists() and not list(tmp_path.glob(".r.html.*"))


CHROMIUM = shutil.which("chromium")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Run headless chromium with a fresh profile and no network of its own."""
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium): no browser test")
def test_report_renders_in_a_headless_browser(
    tiny_model: Path, support_dir: Path, one_wrong: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.html"
    classify_with_report(tiny_model, support_dir, one_wrong, report)
    url = report.resolve().as_uri()
    dumped = chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    page = parse(dumped.stdout)
    assert len(page.images) == SUPPORT_IMAGES + QUERIES
    assert page.rows == {"red": 3, "green": 2, "blue": 2}
    assert page.marks == {"wrong": 1}
    shot = tmp_path / "shot.png"
    drawn = chromium(f"--screenshot={shot}", "--window-size=1200,900", url, profile=tmp_path / "profile-shot")
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert shot.stat().st_size > 1000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
