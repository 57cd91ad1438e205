"""``evaluate --report FILE``: the confusion counts of an evaluation, and its HTML page
(emdcli/tasks/evaluate.py, emdcli/render/evaluation_report.py).

The counts are checked against methods whose predictions are known by construction and against
an independent count (truth from the set's own labels); the page is parsed with
:mod:`html.parser`, then opened in headless chromium (skipped when it is not installed) with the
helpers of tests/test_report.py.
"""

from __future__ import annotations

import csv
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from emdcli.cli import app
from emdcli.render.evaluation_report import MAX_NAMED, drawn_classes, most_confused, render_evaluation_report
from emdcli.tasks import fewshot
from emdcli.tasks.episodes import EpisodePlan, sample_episodes
from emdcli.tasks.evaluate import evaluate_episodes
from tests.conftest import COLOURS, make_folder, make_image
from tests.test_report import CHROMIUM, chromium

runner = CliRunner()
METHODS = ["proto", "emd", "default"]

# --- the confusion counts -------------------------------------------------------------


def _fake(name: str, pick: object) -> fewshot.FewShotMethod:
    """A method whose episode label for the i-th of ``n`` queries (of ``way`` classes) is ``pick(i, n, way)``."""

    def score(support: np.ndarray, query: np.ndarray, memo: object = None) -> np.ndarray:
        way, n = support.shape[0], query.shape[0]
        out = np.zeros((n, way))
        for i in range(n):
            out[i, pick(i, n, way)] = 1.0  # type: ignore[operator]
        return out

    return fewshot.FewShotMethod(name, "test", score)


def test_confusion_of_methods_with_known_predictions(monkeypatch: pytest.MonkeyPatch) -> None:
    """'first' labels every query as the episode's first class, 'next' each as the class after its own:
    the counts land on the set's class ids, not on the episode's labels."""
    monkeypatch.setitem(fewshot.METHODS, "first", _fake("first", lambda i, n, way: 0))
    monkeypatch.setitem(fewshot.METHODS, "next", _fake("next", lambda i, n, way: (i // (n // way) + 1) % way))
    labels = np.repeat(np.arange(5), 4)
    plan = sample_episodes(labels, way=3, shot=1, query=2, episodes=10, seed=3)
    features = np.zeros((len(labels), 2, 1, 1), dtype=np.float32)
    result = evaluate_episodes(features, plan, ["first", "next"])
    first, after = np.zeros((5, 5), dtype=np.int64), np.zeros((5, 5), dtype=np.int64)
    for ep in plan.episodes:
        a, b, c = (int(x) for x in ep.classes)
        for true, nxt in ((a, b), (b, c), (c, a)):
            first[true, a] += 2
            after[true, nxt] += 2
    assert result.confusion["first"].dtype == np.int64 and result.confusion["first"].shape == (5, 5)
    np.testing.assert_array_equal(result.confusion["first"], first)
    np.testing.assert_array_equal(result.confusion["next"], after)
    assert np.trace(result.confusion["next"]) == 0 and result.results[1].accuracy == 0.0
    assert np.trace(first) / first.sum() == pytest.approx(1 / 3)
    assert result.results[0].accuracy == pytest.approx(100 / 3)


def _feature_set(classes: int = 5, per_class: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes (signatures of scale 0.6 under unit noise): the methods make mistakes."""
    rng = np.random.default_rng(seed)
    sig = rng.normal(size=(classes, 8, 1, 1)) * 0.6
    labels = np.repeat(np.arange(classes), per_class)
    return (sig[labels] + rng.normal(size=(len(labels), 8, 3, 3))).astype(np.float32), labels


def independent_confusion(features: np.ndarray, labels: np.ndarray, plan: EpisodePlan, method: str) -> np.ndarray:
    """The counts of ``method``, made here: truth from the set's ``labels``, predictions through ep.classes."""
    side = int(labels.max()) + 1
    out = np.zeros((side, side), dtype=np.int64)
    for ep in plan.episodes:
        flat = ep.query.reshape(-1)
        predicted = fewshot.METHODS[method].score(features[ep.support], features[flat]).argmax(axis=1)
        for image, p in zip(flat, predicted, strict=True):
            out[labels[image], ep.classes[p]] += 1
    return out


def test_confusion_matches_an_independent_count_and_the_accuracy() -> None:
    features, labels = _feature_set()
    plan = sample_episodes(labels, way=3, shot=1, query=3, episodes=14, seed=2)
    names = ["proto", "emd"]
    one = evaluate_episodes(features, plan, names, workers=1)
    two = evaluate_episodes(features, plan, names, workers=2)
    drawn = np.bincount(np.concatenate([ep.classes for ep in plan.episodes]), minlength=5)
    for name in names:
        matrix = one.confusion[name]
        np.testing.assert_array_equal(matrix, independent_confusion(features, labels, plan, name), err_msg=name)
        np.testing.assert_array_equal(two.confusion[name], matrix, err_msg=name)
        np.testing.assert_array_equal(matrix.sum(axis=1), 3 * drawn)  # queries per class x episodes drawing it
        assert matrix.sum() == 14 * 3 * 3
        assert np.trace(matrix) / matrix.sum() == pytest.approx(one.per_episode[name].mean())
        assert np.count_nonzero(matrix - np.diag(np.diag(matrix))) > 0, name  # mistakes: the test can see them


def test_confusion_covers_every_class_of_the_labels() -> None:
    """Classes too small to be drawn keep their (empty) rows and columns; ``classes`` sets the side."""
    features, labels = _feature_set(classes=4)
    labels = np.concatenate([labels, [4]])  # class 4: one image, never drawn
    features = np.concatenate([features, features[:1]])
    plan = sample_episodes(labels, way=3, shot=1, query=2, episodes=6, seed=0)
    assert plan.too_small == (4,)
    matrix = evaluate_episodes(features, plan, ["proto"]).confusion["proto"]
    assert matrix.shape == (5, 5) and matrix[4].sum() == matrix[:, 4].sum() == 0
    assert drawn_classes(matrix).tolist() == [0, 1, 2, 3]
    assert evaluate_episodes(features, plan, ["proto"], classes=7).confusion["proto"].shape == (7, 7)
    with pytest.raises(ValueError, match="does not fit"):
        evaluate_episodes(features, plan, ["proto"], classes=4)


def test_most_confused_pairs() -> None:
    matrix = np.array([[5, 2, 0], [3, 4, 3], [0, 1, 9]])
    names = ["a", "b", "c"]
    assert most_confused(matrix, names) == [("b", "a", 3), ("b", "c", 3), ("a", "b", 2), ("c", "b", 1)]
    assert most_confused(matrix, names, top=1) == [("b", "a", 3)]
    assert most_confused(np.diag([1, 2]), ["x", "y"]) == []


class EvalPage(HTMLParser):
    """What the tests count in an evaluate page: method rows, confusion images, measures, scripts, pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.methods: list[str] = []
        self.images: list[dict[str, str]] = []
        self.measures: list[str] = []
        self.pairs = 0
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        css = found.get("class", "").split()
        if tag == "tr" and "method" in css:
            self.methods.append(found["data-method"])
        elif tag == "tr" and "measure" in css:
            self.measures.append(found["data-measure"])
        elif tag == "img":
            self.images.append(found)
        elif tag == "li" and "pair" in css:
            self.pairs += 1
        elif tag == "script":
            self.scripts += 1


def parse(text: str) -> EvalPage:
    page = EvalPage()
    page.feed(text)
    page.close()
    return page


def test_many_classes_are_not_named() -> None:
    n = MAX_NAMED + 5
    matrix = np.diag(np.full(n, 4)) + np.eye(n, k=1, dtype=np.int64)
    header = {"dataset": "d", "model": "m", "way": 5, "shot": 1, "query": 2, "episodes": 3, "seed": 0}
    record = {"method": "proto", "accuracy": 80.0, "ci95": 1.0, "vs_proto": None, "vs_proto_ci95": None,
              "seconds_per_episode": 0.001}  # fmt: skip
    names = [f"<c{i}>" for i in range(n)]
    text = render_evaluation_report(header, [record], {"proto": matrix}, names)
    assert f"{n} classes: too many to name on the axes" in text
    assert "<c0>" not in text and "&lt;c0&gt; -&gt; &lt;c1&gt;: 1" in text
    assert len(parse(text).images) == 1 and parse(text).pairs == 5


# --- the command ----------------------------------------------------------------------


@pytest.fixture()
def labelled_set(tmp_path: Path) -> Path:
    root = make_folder(tmp_path / "set", {"red": 5, "green": 5, "blue": 5})
    make_image(root / "green" / "reddish.png", COLOURS["red"], seed=77)  # a mislabelled image: some confusion
    return root


def evaluate(tiny_model: Path, dataset: Path, *rest: str) -> Result:
    args = ["evaluate", str(dataset), "--model", str(tiny_model), "--way", "3", "--query", "2", "--episodes", "8",
            "--methods", ",".join(METHODS), *rest]  # fmt: skip
    return runner.invoke(app, args)


def rows_without_timing(text: str) -> list[dict[str, str]]:
    """The CSV rows, less ``seconds_per_episode`` (a wall-clock time, different on every run)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and all(r.pop("seconds_per_episode") for r in rows)
    return rows


def test_report_page_has_the_table_and_a_matrix_per_method(
    tiny_model: Path, labelled_set: Path, tmp_path: Path
) -> None:
    report = tmp_path / "r.html"
    res = evaluate(tiny_model, labelled_set, "-f", "csv", "--report", str(report))
    assert res.exit_code == 0, res.output
    assert "wrote the report" in res.stderr
    text = report.read_text(encoding="utf-8")
    page = parse(text)
    assert page.methods == METHODS
    assert [img["alt"] for img in page.images] == [f"confusion matrix of {m}" for m in METHODS]
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    assert "http" not in text and page.scripts == 0
    for row in csv.DictReader(io.StringIO(res.stdout)):  # the table says what the rows say
        assert f"{float(row['accuracy']):.2f} ± {float(row['ci95']):.2f}" in text
        if row["vs_proto"]:
            assert f"{float(row['vs_proto']):+.2f} ± {float(row['vs_proto_ci95']):.2f}" in text
    assert "3-way 1-shot, 2 queries per class, 8 episodes, seed 0" in text
    assert not list(tmp_path.glob(".r.html.*"))  # no partial file left


def test_csv_is_the_same_with_and_without_report(tiny_model: Path, labelled_set: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    plain = evaluate(tiny_model, labelled_set, "-f", "csv")
    assert plain.exit_code == 0, plain.output
    after = sorted(p.name for p in tmp_path.iterdir() if p.name != "cache")  # the feature cache of the tests
    assert after == before and not list(tmp_path.rglob("*.html"))  # without --report nothing is written
    reported = evaluate(tiny_model, labelled_set, "-f", "csv", "--report", str(tmp_path / "r.html"))
    assert reported.exit_code == 0, reported.output
    assert plain.stdout.splitlines()[0] == reported.stdout.splitlines()[0]
    assert rows_without_timing(plain.stdout) == rows_without_timing(reported.stdout)


def test_bad_report_path_is_a_usage_error_before_any_work(
    tiny_model: Path, labelled_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import emdcli.io.folders

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was read before --report was checked")

    monkeypatch.setattr(emdcli.io.folders, "read_labelled_folder", no_work)
    res = evaluate(tiny_model, labelled_set, "--report", str(tmp_path / "missing" / "r.html"))
    assert res.exit_code == 2 and "--report" in res.output, res.output
    same = str(tmp_path / "same.csv")
    res = evaluate(tiny_model, labelled_set, "-o", same, "--report", same)
    assert res.exit_code == 2 and "same file" in res.output, res.output
    res = evaluate(tiny_model, labelled_set, "--report", str(tmp_path))  # a folder
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "same.csv").exists() and not (tmp_path / "missing").exists()


def test_no_report_when_the_run_fails(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    for name in ("a", "b", "c"):
        for i in range(3):
            (bad / name).mkdir(parents=True, exist_ok=True)
            (bad / name / f"{i}.png").write_bytes(b"not an image")
    report = tmp_path / "r.html"
    res = runner.invoke(app, ["evaluate", str(bad), "--model", str(tiny_model), "--way", "3", "--query", "2",
                              "--report", str(report)])  # fmt: skip
    assert res.exit_code == 1, res.output
    assert not report.exists() and not list(tmp_path.glob(".r.html.*"))


def test_open_set_report_shows_the_measures(tiny_model: Path, tmp_path: Path) -> None:
    dataset = make_folder(tmp_path / "set", {"red": 4, "green": 4, "blue": 4})
    report = tmp_path / "open.html"
    res = runner.invoke(app, ["evaluate", str(dataset), "--model", str(tiny_model), "--way", "2", "--open-set", "1",
                              "--query", "2", "--episodes", "4", "-f", "json", "--report", str(report)])  # fmt: skip
    assert res.exit_code == 0, res.output
    page = parse(report.read_text(encoding="utf-8"))
    assert page.measures == ["auroc", "accuracy", "accuracy_rejecting", "in_set_rejected", "unseen_rejected",
                             "threshold"]  # fmt: skip
    assert page.images == [] and page.methods == [] and page.scripts == 0


# --- in a browser ---------------------------------------------------------------------

#: Added to a copy of the page (the page itself has no script): once loaded, each image's decoded width
#: and how many of its pixels are in colour, drawn on a canvas (a PNG cut short keeps the width of its
#: header, but its pixels stay blank).
CHECK_IMAGES = """<script>
window.addEventListener('load', function () {
  for (const img of document.images) {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, canvas.width || 1, canvas.height || 1).data;
    let coloured = 0;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] > 0 && (px[i] !== px[i + 1] || px[i + 1] !== px[i + 2])) coloured++;
    }
    img.setAttribute('data-natural-width', String(img.naturalWidth));
    img.setAttribute('data-coloured', String(coloured));
  }
  document.body.setAttribute('data-checked', 'yes');
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium): no browser test")
def test_report_renders_in_a_headless_browser(tiny_model: Path, labelled_set: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    res = evaluate(tiny_model, labelled_set, "--report", str(report))
    assert res.exit_code == 0, res.output
    checked = tmp_path / "checked.html"
    checked.write_text(report.read_text(encoding="utf-8").replace("</body>", CHECK_IMAGES + "</body>"), "utf-8")
    dumped = chromium("--virtual-time-budget=5000", "--dump-dom", checked.resolve().as_uri(),
                      profile=tmp_path / "profile-dom")  # fmt: skip
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert 'data-checked="yes"' in dumped.stdout, dumped.stdout[-2000:]
    page = parse(dumped.stdout)
    assert page.methods == METHODS
    assert len(page.images) == len(METHODS)
    assert all(int(img["data-natural-width"]) > 0 and int(img["data-coloured"]) > 1000 for img in page.images), [
        {k: v for k, v in img.items() if k != "src"} for img in page.images
    ]
    shot = tmp_path / "shot.png"
    drawn = chromium(f"--screenshot={shot}", "--window-size=1200,1600", report.resolve().as_uri(),
                     profile=tmp_path / "profile-shot")  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert shot.stat().st_size > 1000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
