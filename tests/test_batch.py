"""``emdcli batch`` with the local engine: the same rows as classify, every input kind and output
format, error rows, resume, the worker's refusal of a mismatched job, and the exit codes of bad
INPUT and DEST. The Ray engine is tested in test_batch_ray.py."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from emdcli.cli import app
from emdcli.io.files import sha256_file

from .conftest import make_folder

pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow: pip install 'emdcli[ray]'")
pq = pytest.importorskip("pyarrow.parquet")

runner = CliRunner()


def run(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def batch(tiny_model: Path, support: Path, source: Path | str, dest: Path, *rest: Any) -> Any:
    return run("batch", support, source, "-o", dest, "--model", tiny_model, *rest)


def parquet_rows(dest: Path) -> list[dict[str, Any]]:
    return sorted(pq.read_table(dest).to_pylist(), key=lambda r: r["path"])


def csv_rows(text: str) -> list[dict[str, str]]:
    return sorted(csv.DictReader(io.StringIO(text)), key=lambda r: r["path"])


def as_text(value: Any) -> str:
    """A value as classify's CSV writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_rows_are_classify_rows_plus_the_model_sha256(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    listed = run("classify", support_dir, query_dir, "--model", tiny_model, "-f", "csv", "--top-k", "3")
    assert listed.exit_code == 0, listed.output
    res = batch(tiny_model, support_dir, query_dir, tmp_path / "out.csv", "--top-k", "3")  # one set, as classify's
    assert res.exit_code == 0, res.output
    mine = csv_rows((tmp_path / "out.csv").read_text())
    theirs = csv_rows(listed.stdout)
    assert len(mine) == len(theirs) == 6
    sha = sha256_file(tiny_model.with_suffix(".onnx"))
    for row, expected in zip(mine, theirs, strict=True):
        assert row.pop("model_sha256") == sha
        assert row == expected
    assert {r["correct"] for r in mine} == {"true"}  # the tiny model separates the colours
    streamed = batch(tiny_model, support_dir, query_dir, tmp_path / "each.csv", "--top-k", "3", "--task-size", "4",
                     "--no-transductive")  # fmt: skip
    assert streamed.exit_code == 0, streamed.output
    assert "with --no-transductive the local engine streams every image" in streamed.stderr


def test_parquet_csv_and_jsonl_hold_the_same_rows(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    for dest in ("parts", "out.csv", "out.jsonl"):
        assert batch(tiny_model, support_dir, query_dir, tmp_path / dest).exit_code == 0
    parts = parquet_rows(tmp_path / "parts")
    jsonl = sorted((json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()),
                   key=lambda r: r["path"])  # fmt: skip
    assert parts == jsonl
    assert [{k: as_text(v) for k, v in r.items()} for r in parts] == csv_rows((tmp_path / "out.csv").read_text())
    schema = pq.read_schema(next((tmp_path / "parts").glob("part-*.parquet")))
    assert schema.field("score").type == pa.float64() and schema.field("correct").type == pa.bool_()
    settings = json.loads((tmp_path / "parts" / "_emdcli.json").read_text())
    assert settings["command"] == "batch" and settings["classes"] == ["blue", "green", "red"]
    assert settings["columns"] == list(parts[0])


def test_an_unreadable_image_is_an_error_row_not_a_failure(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    (query_dir / "red" / "broken.png").write_bytes(b"not a png")
    (query_dir / "notes.txt").write_text("not an image, not listed")
    res = batch(tiny_model, support_dir, query_dir, tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "left out: 1 file in" in res.stderr and "that is not an image (.txt 1)" in res.stderr
    rows = {Path(r["path"]).relative_to(query_dir).as_posix(): r for r in parquet_rows(tmp_path / "out")}
    assert len(rows) == 7
    broken = rows.pop("red/broken.png")
    assert broken["status"] == "error" and broken["predicted"] is None and "broken.png" in broken["error"]
    assert all(r["status"] == "ok" for r in rows.values())
    assert "skipped" in res.stderr and "1 skipped (status=error)" in res.stderr


def test_a_list_a_csv_and_a_parquet_manifest_give_the_same_rows(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    paths = sorted(str(p) for p in query_dir.rglob("*.png"))
    listing = tmp_path / "paths.txt"
    listing.write_text("# queries\n" + "\n".join([*paths, paths[0]]) + "\n\n")  # a comment, a duplicate, a blank
    manifest_csv = tmp_path / "manifest.csv"
    manifest_csv.write_text("id,path\n" + "".join(f"{i},{p}\n" for i, p in enumerate(paths)))
    pq.write_table(pa.table({"path": paths, "size": list(range(len(paths)))}), tmp_path / "manifest.parquet")
    results = {}
    for source in (query_dir, listing, manifest_csv, tmp_path / "manifest.parquet"):
        dest = tmp_path / f"out-{source.name.replace('.', '-')}"
        res = batch(tiny_model, support_dir, source, dest)
        assert res.exit_code == 0, res.output
        results[source.name] = parquet_rows(dest)
        if source == listing:
            said = f"Warning: 1 path listed more than once in {listing} ({paths[0]}): each is classified once"
            assert said in " ".join(res.stderr.split()), res.stderr
    first = results.pop(query_dir.name)
    assert len(first) == 6 and all(rows == first for rows in results.values())


def test_relative_paths_are_read_from_the_current_folder(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(query_dir)
    (tmp_path / "rel.txt").write_text("red/img_0.png\nblue/img_1.png\n")
    assert batch(tiny_model, support_dir, tmp_path / "rel.txt", tmp_path / "out").exit_code == 0
    rows = parquet_rows(tmp_path / "out")
    assert [(r["path"], r["predicted"], r["true_label"]) for r in rows] == [
        ("blue/img_1.png", "blue", "blue"),
        ("red/img_0.png", "red", "red"),
    ]


def test_uris_are_read_through_pyarrow_filesystems(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    """file:// URIs go through the same code as s3:// or gs:// ones (pyarrow's filesystems)."""
    assert batch(tiny_model, support_dir, query_dir, tmp_path / "local").exit_code == 0
    expected = {Path(r.pop("path")).as_uri(): r for r in parquet_rows(tmp_path / "local")}
    res = batch(tiny_model, support_dir, query_dir.as_uri(), tmp_path / "folder-uri")
    assert res.exit_code == 0, res.output
    assert {r.pop("path"): r for r in parquet_rows(tmp_path / "folder-uri")} == expected
    listing = tmp_path / "uris.csv"
    missing = (query_dir / "red" / "gone.png").as_uri()
    listing.write_text("path\n" + "".join(f"{u}\n" for u in [*expected, missing, "nosuch://bucket/x.png"]))
    res = batch(tiny_model, support_dir, listing, tmp_path / "list-uri")
    assert res.exit_code == 0, res.output
    rows = {r.pop("path"): r for r in parquet_rows(tmp_path / "list-uri")}
    assert rows.pop(missing)["status"] == rows.pop("nosuch://bucket/x.png")["status"] == "error"
    assert rows == expected
    bad = batch(tiny_model, support_dir, "nosuch://bucket/photos/", tmp_path / "bad")
    assert bad.exit_code == 2 and "cannot open nosuch://bucket/photos/" in bad.stderr


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "INPUT does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no images found in"),
        (lambda d: (d / "blank.txt").write_text("\n") and d / "blank.txt", "no paths listed in"),
        (lambda d: (d / "m.csv").write_text("file\na.png\n") and d / "m.csv", "has no 'path' column"),
        (lambda d: (d / "m.parquet").write_text("not parquet") and d / "m.parquet", "cannot read"),
    ],
    ids=["missing", "empty-folder", "empty-list", "csv-without-path", "bad-parquet"],
)
def test_bad_input_exits_2(tiny_model: Path, support_dir: Path, tmp_path: Path, make: Any, message: str) -> None:
    res = batch(tiny_model, support_dir, make(tmp_path), tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    assert not (tmp_path / "out").exists()


def test_bad_dest_and_options_exit_2(tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    held = tmp_path / "held"
    held.mkdir()
    (held / "notes.txt").write_text("mine")
    cases = {
        "is a file; Parquet output is a folder": (tmp_path / "file", []),
        "folder for --output does not exist": (tmp_path / "no" / "out", []),
        "already holds 1 file(s)": (held, []),
        "expected a number N or a range MIN-MAX": (tmp_path / "o1", ["--workers", "many"]),
        "need 1 <= MIN <= MAX": (tmp_path / "o2", ["--workers", "3-2"]),
        "a range is for --engine ray": (tmp_path / "o3", ["--workers", "1-2"]),
    }
    for message, (dest, extra) in cases.items():
        res = batch(tiny_model, support_dir, query_dir, dest, *extra)
        assert res.exit_code == 2, (message, res.output)
        assert message in res.stderr, (message, res.stderr)
    assert (held / "notes.txt").read_text() == "mine" and sorted(p.name for p in held.iterdir()) == ["notes.txt"]
    res = batch(tiny_model, support_dir, query_dir, held, "--resume")
    assert res.exit_code == 2 and "not the output of emdcli batch" in res.stderr
    missing_output = run("batch", support_dir, query_dir, "--model", tiny_model)
    assert missing_output.exit_code == 2 and "--output" in missing_output.stderr


def test_engine_ray_without_ray_says_what_to_install(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = batch(tiny_model, support_dir, query_dir, tmp_path / "out", "--engine", "ray")
    assert res.exit_code == 2
    assert "--engine ray needs ray, which is not installed" in res.stderr and "pip install 'emdcli[ray]'" in res.stderr
    assert not (tmp_path / "out").exists()


def test_resume_classifies_only_what_is_missing(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    paths = sorted(str(p) for p in query_dir.rglob("*.png"))
    (tmp_path / "half.txt").write_text("\n".join(paths[:2]) + "\n")
    (tmp_path / "all.txt").write_text("\n".join(paths) + "\n")
    assert batch(tiny_model, support_dir, tmp_path / "all.txt", tmp_path / "full", "--no-transductive").exit_code == 0
    assert batch(tiny_model, support_dir, tmp_path / "half.txt", tmp_path / "out", "--no-transductive").exit_code == 0
    res = batch(tiny_model, support_dir, tmp_path / "all.txt", tmp_path / "out", "--resume", "--no-transductive")
    assert res.exit_code == 0, res.output
    assert "resuming: 2 of 6 paths are already in" in res.stderr and "4 rows" in res.stderr
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 2
    assert parquet_rows(tmp_path / "out") == parquet_rows(tmp_path / "full")
    again = batch(tiny_model, support_dir, tmp_path / "all.txt", tmp_path / "out", "--resume", "--no-transductive")
    assert again.exit_code == 0 and "nothing to do" in again.stderr
    other = batch(
        tiny_model, support_dir, tmp_path / "all.txt", tmp_path / "out", "--resume", "--top-k", "3", "--no-transductive"
    )
    assert other.exit_code == 2 and "other settings (top_k, columns)" in other.stderr


def test_resume_of_a_csv_from_its_partial_file(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    full, out = tmp_path / "full.csv", tmp_path / "out.csv"
    assert batch(tiny_model, support_dir, query_dir, full, "--no-transductive").exit_code == 0
    lines = full.read_text().splitlines(keepends=True)
    (tmp_path / "out.csv.partial").write_text("".join(lines[:3]))  # the header and two rows
    res = batch(tiny_model, support_dir, query_dir, out, "--resume", "--no-transductive")
    assert res.exit_code == 0, res.output
    assert csv_rows(out.read_text()) == csv_rows(full.read_text())
    assert not (tmp_path / "out.csv.partial").exists()
    (tmp_path / "out.csv.partial").write_text(full.read_text())  # every row done: resuming completes the file
    out.unlink()
    res = batch(tiny_model, support_dir, query_dir, out, "--resume", "--no-transductive")
    assert res.exit_code == 0 and "nothing to do" in res.stderr and "6 resumed" in res.stderr
    assert out.read_text() == full.read_text() and not (tmp_path / "out.csv.partial").exists()
    other = make_folder(tmp_path / "other", {"red": 2, "green": 2})
    (tmp_path / "out.csv.partial").write_text("".join(lines[:3]))
    res = batch(tiny_model, other, query_dir, out, "--resume", "--no-transductive")
    assert res.exit_code == 2 and "cannot resume it" in res.stderr


def test_a_worker_refuses_a_job_of_another_version_or_model(tiny_model: Path, support_dir: Path) -> None:
    from emdcli.errors import WorkerMismatchError
    from emdcli.features.source import FeatureSource
    from emdcli.io.folders import read_labelled_folder
    from emdcli.matching.support import Matcher
    from emdcli.model.backbone import load_model
    from emdcli.tasks.batch import BatchScorer, fit_job

    backbone = load_model(tiny_model)
    job, _ = fit_job(read_labelled_folder(support_dir), FeatureSource(backbone), Matcher(), backbone.check, top_k=2)
    assert set(job.model_files or {}) == {"tiny.onnx", "emdcli-model.json"}  # a custom model travels
    scorer = BatchScorer(job)
    assert scorer.backbone.onnx_path != backbone.onnx_path  # loaded from the job, not from the driver's file
    assert scorer.backbone.check.actual == backbone.check.actual
    with pytest.raises(WorkerMismatchError, match=r"this worker runs emdcli .*, the driver 0\.0\.0"):
        BatchScorer(replace(job, emdcli="0.0.0"))
    with pytest.raises(WorkerMismatchError, match="has sha256"):
        BatchScorer(replace(job, model_sha256="0" * 64))


def jsonl_rows(path: Path) -> list[dict[str, Any]]:
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["path"])


def test_sigint_keeps_the_rows_so_far_and_resume_completes_them(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    """A named pipe among the inputs holds the run mid-way (its decoding waits for a writer); the
    signal comes once the rows before it are written, with no timing guesswork."""
    paths = sorted(str(p) for p in query_dir.rglob("*.png"))
    fifo = tmp_path / "held.png"
    os.mkfifo(fifo)
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join([*paths[:4], str(fifo), *paths[4:]]) + "\n")
    dest = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "emdcli", "batch", str(support_dir), str(listing), "-o", str(dest),
           "--no-transductive", "--model", str(tiny_model), "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    released = threading.Event()

    def hold() -> None:  # the pipe stays open, and empty, until the signal has been sent
        with open(fifo, "wb"):
            released.wait(60)

    threading.Thread(target=hold, daemon=True).start()

    def rows_written() -> int:  # in the hidden file the output is written to until it is complete
        return sum(len(p.read_text().splitlines()) for p in tmp_path.glob(".out.jsonl.*.tmp"))

    deadline = time.monotonic() + 60
    while rows_written() < 4:
        assert time.monotonic() < deadline and proc.poll() is None, "the rows before the pipe never came"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    # the pipe is released once the signal is handled (or the run waits on the pipe): released at once, a
    # loaded machine could let the run read it, skip it and finish before the signal was handled
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    released.set()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "4 rows computed so far were kept in" in err.decode() and "--resume" in err.decode()
    assert [r["path"] for r in jsonl_rows(tmp_path / "out.jsonl.partial")] == paths[:4]
    fifo.unlink()
    make_folder(tmp_path / "swap", {"red": 1})
    os.replace(tmp_path / "swap" / "red" / "img_0.png", fifo)  # now a readable image
    resumed = batch(tiny_model, support_dir, listing, dest, "--resume", "--no-transductive")
    assert resumed.exit_code == 0 and "resuming: 4 of 7 paths" in resumed.stderr
    assert batch(tiny_model, support_dir, listing, tmp_path / "full.jsonl", "--no-transductive").exit_code == 0
    assert jsonl_rows(dest) == jsonl_rows(tmp_path / "full.jsonl")
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_a_ray_task_is_at_most_256_images_and_each_worker_gets_four() -> None:
    from types import SimpleNamespace

    from emdcli.matching.support import Matcher
    from emdcli.tasks.batch import task_images

    job: Any = SimpleNamespace(matcher=Matcher(transductive=False))
    assert task_images(job, 10**6, 8) == 256  # a large input: the measured size
    assert task_images(job, 2000, 2) == 250  # 8 tasks of 250 for 2 workers, not 7 of 256 and one of 208
    assert task_images(job, 100, 2) == 13
    assert task_images(job, 3, 2) == 1
    assert task_images(job, 3, 2, batch_size=64) == 64


def test_a_transductive_task_is_one_set_whatever_the_workers() -> None:
    from types import SimpleNamespace

    from emdcli.matching.support import Matcher
    from emdcli.tasks.batch import query_sets, task_images

    job: Any = SimpleNamespace(matcher=Matcher())
    assert task_images(job, 2000, 2) == task_images(job, 2000, 16) == 256
    sets = query_sets(list(range(300)), 256)
    assert [len(s) for s in sets] == [150, 150] and [x for s in sets for x in s] == list(range(300))
    assert [len(s) for s in query_sets(list(range(1000)), 256)] == [250] * 4
    assert [len(s) for s in query_sets(list(range(257)), 256)] == [129, 128]
    assert [len(s) for s in query_sets(list(range(5)), 256)] == [5]
    assert query_sets([], 256) == []


def test_a_worker_decodes_with_one_thread_per_core_it_has(tiny_model: Path, support_dir: Path) -> None:
    """A Ray actor (one CPU: 1 lane x 1 thread) decodes on one thread; a local worker whose layout
    is left to the machine decodes with one per core (FeatureSource's default)."""
    from emdcli.features.source import FeatureSource, decode_workers
    from emdcli.io.folders import read_labelled_folder
    from emdcli.matching.support import Matcher
    from emdcli.model.backbone import load_model
    from emdcli.tasks.batch import BatchScorer, fit_job

    backbone = load_model(tiny_model)
    job, _ = fit_job(read_labelled_folder(support_dir), FeatureSource(backbone), Matcher(), backbone.check, top_k=2)
    assert BatchScorer(job.with_layout(threads=1, lanes=1)).decoding_threads == 1
    assert BatchScorer(job.with_layout(threads=2, lanes=2)).decoding_threads == 4
    assert BatchScorer(job.with_layout(threads=None, lanes=None)).decoding_threads == decode_workers()
