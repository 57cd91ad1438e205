"""Ctrl-C and SIGTERM during a run: complete rows, the right exit code, and --resume.

Real subprocesses and real signals. Paths are fed on stdin so the test decides when
emdcli is mid-run (waiting for more input) without any sleep-based timing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emdcli.cli import app

TIMEOUT = 60


def start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "emdcli", "classify", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def feed(proc: subprocess.Popen[bytes], paths: list[Path]) -> None:
    assert proc.stdin
    proc.stdin.write("".join(f"{p}\n" for p in paths).encode())
    proc.stdin.flush()


def wait_readable(proc: subprocess.Popen[bytes]) -> None:
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    assert ready, "emdcli wrote nothing"


def read_first_line(proc: subprocess.Popen[bytes]) -> str:
    """The first line of stdout, read from the pipe itself: a buffered readline() could take the next
    rows too, and communicate() (which reads the pipe, not the buffer) would then never see them."""
    assert proc.stdout
    line = b""
    while not line.endswith(b"\n"):
        wait_readable(proc)
        byte = os.read(proc.stdout.fileno(), 1)
        assert byte, "stdout closed before the first line ended"
        line += byte
    return line.decode()


def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture()
def query_paths(query_dir: Path) -> list[Path]:
    return sorted(query_dir.rglob("*.png"))


@pytest.mark.slow
def test_sigint_leaves_complete_jsonl_and_exits_130(
    tiny_model: Path, support_dir: Path, query_paths: list[Path]
) -> None:
    proc = start(str(support_dir), "-", "--model", str(tiny_model), "-f", "jsonl", "--batch-size", "1")
    feed(proc, query_paths[:3])
    first = read_first_line(proc)
    proc.send_signal(signal.SIGINT)
    code, rest, err = finish(proc)
    assert code == 130, err
    lines = (first + rest).splitlines(keepends=True)
    assert lines and all(line.endswith("\n") for line in lines)
    assert [json.loads(line)["path"] for line in lines] == [str(p) for p in query_paths[: len(lines)]]
    assert "Traceback" not in err and "Interrupted." in err


@pytest.mark.slow
def test_sigterm_leaves_a_valid_json_document_and_exits_143(
    tiny_model: Path, support_dir: Path, query_paths: list[Path]
) -> None:
    proc = start(str(support_dir), "-", "--model", str(tiny_model), "-f", "json", "--batch-size", "1")
    feed(proc, query_paths[:3])
    assert proc.stdout
    seen = b""
    while b'"path"' not in seen:
        wait_readable(proc)
        seen += proc.stdout.read1(65536)
    proc.send_signal(signal.SIGTERM)
    code, rest, err = finish(proc)
    assert code == 143, err
    doc = json.loads(seen.decode() + rest)
    assert 1 <= len(doc["rows"]) <= 3
    assert doc["summary"]["queries"] == len(doc["rows"])
    assert "Terminated." in err


@pytest.mark.slow
def test_interrupted_output_is_kept_aside_then_resumed(
    tiny_model: Path, support_dir: Path, query_dir: Path, query_paths: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "preds.csv"
    proc = start(str(support_dir), "-", "--model", str(tiny_model), "-o", str(out), "--batch-size", "1")
    feed(proc, query_paths[:3])

    def temp_rows() -> int:
        temps = list(tmp_path.glob(".preds.csv.*.tmp"))
        return len(temps[0].read_text().splitlines()) if temps else 0

    wait_for(lambda: temp_rows() >= 3, "two rows in the temporary file")
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    assert not out.exists()
    partial = out.with_name("preds.csv.partial")
    kept = list(csv.DictReader(io.StringIO(partial.read_text())))
    assert 2 <= len(kept) <= 3 and all(r["status"] == "ok" for r in kept)
    assert "--resume" in err
    assert list(tmp_path.glob(".preds.csv.*")) == []

    res = CliRunner().invoke(
        app, ["classify", str(support_dir), str(query_dir), "--model", str(tiny_model), "-o", str(out), "--resume"]
    )
    assert res.exit_code == 0, res.output
    assert f"resuming: {len(kept)} rows" in res.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in query_paths)
    assert rows[: len(kept)] == kept  # earlier rows first, unchanged
    assert all(r["correct"] == "true" for r in rows)
    assert not partial.exists()


def test_resume_refuses_rows_of_other_classes(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.jsonl"
    out.write_text(json.dumps({"path": "x.png", "status": "ok", "scores": {"cat": 0.5, "dog": 0.1}}) + "\n")
    res = CliRunner().invoke(
        app, ["classify", str(support_dir), str(query_dir), "--model", str(tiny_model), "-o", str(out), "--resume"]
    )
    assert res.exit_code == 2
    assert "was written for classes cat, dog" in res.stderr
    assert out.read_text().count("\n") == 1  # untouched


@pytest.mark.parametrize("extra", [[], ["-f", "table", "-o", "x.txt"]])
def test_resume_needs_a_structured_output_file(
    tiny_model: Path, support_dir: Path, query_dir: Path, extra: list[str]
) -> None:
    res = CliRunner().invoke(app, ["classify", str(support_dir), str(query_dir), "--resume", *extra])
    assert res.exit_code == 2
    assert "--resume needs --output FILE" in res.stderr


@pytest.mark.slow
def test_sigint_while_a_set_of_queries_is_read_writes_none_of_its_rows(
    tiny_model: Path, support_dir: Path, query_dir: Path, query_paths: list[Path], tmp_path: Path
) -> None:
    """--transductive reads stdin to its end as one set: stopped before that, no row of the set
    exists, none is written, and --resume then matches every query (as a fresh run does)."""
    out = tmp_path / "preds.csv"
    proc = start(str(support_dir), "-", "--transductive", "--model", str(tiny_model), "-o", str(out))
    feed(proc, query_paths[:3])
    wait_for(lambda: list(tmp_path.glob(".preds.csv.*.tmp")), "the temporary output file")
    time.sleep(0.5)  # the three images are read; the set waits for the end of stdin
    proc.send_signal(signal.SIGINT)
    code, stdout, err = finish(proc)
    assert code == 130, err
    assert not out.exists() and stdout == ""
    partial = out.with_name("preds.csv.partial")
    assert not partial.exists() or list(csv.DictReader(io.StringIO(partial.read_text()))) == []
    args = ["classify", str(support_dir), str(query_dir), "--model", str(tiny_model)]
    res = CliRunner().invoke(app, [*args, "-o", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    fresh = CliRunner().invoke(app, [*args, "-f", "csv"])
    assert out.read_text() == fresh.stdout


def test_a_signal_inside_deferred_acts_after_the_block() -> None:
    """What sink rows are written under: the block runs to its end, then the handler in place raises."""
    import os

    from emdcli.errors import Terminated
    from emdcli.interrupts import deferred, handled, raise_terminated

    done = []
    with handled({signal.SIGTERM: raise_terminated}):
        with pytest.raises(Terminated), deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler would have run by now
            done.append("the rest of the block")
        assert done == ["the rest of the block"]
        assert signal.getsignal(signal.SIGTERM) is raise_terminated  # put back
        with deferred():
            done.append("no signal, nothing raised")
    assert len(done) == 2


@pytest.mark.slow
def test_a_folder_stopped_while_embedding_resumes_from_the_cache_to_the_same_rows(
    tiny_model: Path, support_dir: Path, tmp_path: Path
) -> None:
    """A folder is matched as one set, so no row exists until all of it is embedded: a stop keeps the
    run's header in FILE.partial, every embedded query's features stay in the cache, and --resume
    embeds only the rest and gives the rows of an uninterrupted run (large PNGs: slow to decode)."""
    import os

    import numpy as np
    from PIL import Image

    folder = tmp_path / "inbox"
    for i in range(36):
        colour = [(200, 30, 30), (30, 190, 40), (30, 40, 210)][i % 3]
        arr = np.full((1200, 1200, 3), colour, np.uint8)
        arr[i::7, ::5] = 255  # every image different: the cache is keyed by content
        (folder / ["red", "green", "blue"][i % 3]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / ["red", "green", "blue"][i % 3] / f"big_{i:02d}.png")
    cache = Path(os.environ["EMDCLI_CACHE_DIR"])

    def entries() -> int:
        return len(list(cache.rglob("*.npy")))

    out = tmp_path / "preds.csv"
    args = [str(support_dir), str(folder), "--model", str(tiny_model), "--batch-size", "1", "--decode-threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "emdcli", "classify", *args, "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    wait_for(lambda: entries() >= 9 + 6, "six queries in the feature cache")  # 9: the support images
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    embedded = entries() - 9
    assert 6 <= embedded < 36, "the run was not stopped while embedding"
    said = " ".join(err.split())
    assert f"stopped after embedding {embedded} of 36 queries" in said and "--resume will not embed them" in said
    partial = out.with_name("preds.csv.partial")
    assert not out.exists() and partial.read_text().startswith("path,status,predicted,")
    assert list(csv.DictReader(io.StringIO(partial.read_text()))) == []
    assert "the run's header (no row yet) was kept in" in said

    res = CliRunner().invoke(app, ["classify", *args, "-o", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    assert f"{embedded} embedded by an earlier run (feature cache)" in " ".join(res.stderr.split())
    whole = CliRunner().invoke(app, ["classify", *args, "-f", "csv", "--no-cache"])
    assert whole.exit_code == 0, whole.output
    assert out.read_text() == whole.stdout  # the same rows, in the same order, as an uninterrupted run
    assert not partial.exists()
