"""Results are bit-for-bit repeatable: the same inputs and settings give the same numbers whatever
the feature cache holds, however the queries arrive, and from one run to the next."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emdcli.cli import app
from emdcli.features.cache import FeatureCache
from emdcli.features.source import FeatureSource
from emdcli.io.folders import read_labelled_folder
from emdcli.model.backbone import Backbone
from emdcli.tasks.classify import Classifier
from tests.conftest import make_folder


def scores(clf: Classifier, support_dir: Path, queries: object) -> list[tuple[str, float]]:
    """Every (class, score) of every query, at full precision."""
    support = clf.fit(read_labelled_folder(support_dir))
    return [(r.label, r.score) for p in clf.predict(support, queries) for r in p.ranking]  # type: ignore[arg-type]


def test_cold_warm_partial_and_no_cache_give_identical_scores(tiny_model: Path, tmp_path: Path) -> None:
    support_dir = make_folder(tmp_path / "support", {"red": 3, "green": 3, "blue": 3})  # SFC: 3 shots
    queries = sorted(make_folder(tmp_path / "q", {"red": 2, "green": 2, "blue": 2}, seed=5).rglob("*.png"))
    backbone = Backbone(tiny_model)
    cache = FeatureCache.for_model(backbone.manifest, root=tmp_path / "cache")

    def run(with_cache: bool) -> list[tuple[str, float]]:
        return scores(Classifier(FeatureSource(backbone, cache=cache if with_cache else None)), support_dir, queries)

    cold = run(True)
    warm = run(True)
    support_files = sorted(support_dir.rglob("*.png"))
    for path in support_files[1::2]:  # half the entries gone: cached and embedded images interleave
        cache.entry_path(cache._digest(path)).unlink()
    partial = run(True)
    assert cold == warm == partial == run(False)


def test_scores_do_not_depend_on_how_the_queries_arrive(tiny_model: Path, tmp_path: Path) -> None:
    support_dir = make_folder(tmp_path / "support", {"red": 2, "green": 2})
    queries = sorted(make_folder(tmp_path / "q", {"red": 3, "green": 3}, seed=6).rglob("*.png"))
    clf = Classifier(FeatureSource(Backbone(tiny_model), batch_size=4))

    def trickle() -> Iterator[Path]:  # pauses longer than the pipeline's stall: batches of 1-2 images
        for i, path in enumerate(queries):
            if i % 2:
                time.sleep(0.15)
            yield path

    assert scores(clf, support_dir, trickle()) == scores(clf, support_dir, list(queries))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_two_identical_runs_write_identical_bytes(tiny_model: Path, tmp_path: Path, fmt: str) -> None:
    support = make_folder(tmp_path / "support", {"red": 3, "green": 3, "blue": 3})
    queries = make_folder(tmp_path / "q", {"red": 2, "green": 2, "blue": 2}, seed=8)
    args = ["classify", str(support), str(queries), "--model", str(tiny_model), "-f", fmt, "-q"]
    first, second = (CliRunner().invoke(app, args) for _ in range(2))  # cold, then warm cache
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout and first.stdout
