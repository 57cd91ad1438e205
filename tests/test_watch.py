"""emdcli watch: images classified as they arrive, whole, once, and a restart that skips what was done."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emdcli.cli import app
from emdcli.tasks.classify import Prediction
from emdcli.tasks.watch import Inbox, watch_predictions
from tests.conftest import make_image, settled

runner = CliRunner()
TIMEOUT = 60


def wait_for(condition, what: str, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def take(inbox: Inbox, seconds: float) -> list[Path]:
    """Every path the inbox hands out within ``seconds``."""
    out: list[Path] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        out += inbox.wait(min(left, 0.1))
    return out


# the inbox: when a file counts as arrived -----------------------------------------------------------------


@pytest.mark.parametrize("poll", [None, 0.1], ids=["native", "polling"])
def test_a_file_written_slowly_is_handed_out_once_and_only_when_whole(tmp_path: Path, poll: float | None) -> None:
    data = make_image(tmp_path / "src.png", (200, 10, 10), seed=1).read_bytes()
    (tmp_path / "inbox").mkdir()
    with Inbox(tmp_path / "inbox", poll=poll, settle=0.4) as inbox:
        target = inbox.folder / "slow.png"
        with open(target, "wb") as f:
            for i in range(0, len(data), max(1, len(data) // 4)):
                f.write(data[i : i + max(1, len(data) // 4)])
                f.flush()
                time.sleep(0.15)  # shorter than settle: still being written
                assert inbox.wait(0.0) == [], "handed out while being written"
        got = take(inbox, 2.0)
    assert got == [target]


def test_a_file_moved_in_is_handed_out_at_once(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    src = make_image(tmp_path / "elsewhere.png", (10, 200, 10), seed=2)
    with Inbox(tmp_path / "inbox", settle=5.0) as inbox:  # a settle this long: only the move event can hand it out
        os.rename(src, inbox.folder / "in.png")
        got = take(inbox, 1.5)
    assert got == [inbox.folder / "in.png"]


def test_a_hard_link_with_no_write_is_handed_out_once_settled(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    src = make_image(tmp_path / "elsewhere.png", (10, 10, 200), seed=3)
    with Inbox(tmp_path / "inbox", settle=0.3) as inbox:
        os.link(src, inbox.folder / "linked.png")
        assert take(inbox, 0.15) == []
        got = take(inbox, 2.0)
    assert got == [inbox.folder / "linked.png"]


def test_hidden_files_other_files_and_skipped_folders_are_never_handed_out(tmp_path: Path) -> None:
    (tmp_path / "inbox" / "sorted").mkdir(parents=True)
    with Inbox(tmp_path / "inbox", settle=0.2, skip=lambda p: "sorted" in p.parts) as inbox:
        make_image(inbox.folder / ".hidden.png", (1, 2, 3), seed=4)
        (inbox.folder / "notes.txt").write_text("not an image")
        make_image(inbox.folder / "sorted" / "done.png", (1, 2, 3), seed=5)
        make_image(inbox.folder / "sub" / "new.png", (1, 2, 3), seed=6)
        got = take(inbox, 1.5)
    assert got == [inbox.folder / "sub" / "new.png"]


def test_the_backlog_is_in_folder_order_and_leaves_a_file_still_changing_pending(tmp_path: Path) -> None:
    inbox_dir = tmp_path / "inbox"
    old = [make_image(inbox_dir / name, (9, 9, 9), seed=i) for i, name in enumerate(["b.png", "a/c.png"])]
    settled(*old)
    fresh = make_image(inbox_dir / "fresh.png", (9, 9, 9), seed=9)
    with Inbox(inbox_dir, settle=0.3) as inbox:
        assert inbox.backlog() == [inbox_dir / "b.png", inbox_dir / "a" / "c.png"]  # as classify reads a folder
        assert take(inbox, 1.5) == [fresh]


class ReadTooEarly:
    """A classifier whose first read of a file finds it half-written (the writer appends after the read)."""

    def __init__(self, rest: bytes) -> None:
        self.rest, self.calls = rest, 0

    def predict(self, support: object, paths: list[Path]) -> Iterator[Prediction]:
        for path in paths:
            self.calls += 1
            if self.calls == 1:
                with open(path, "ab") as f:
                    f.write(self.rest)
                yield Prediction(path, "error", error=f"{path}: truncated")
            else:
                yield Prediction(path, "ok")


def test_an_image_read_while_still_changing_is_tried_again_not_reported(tmp_path: Path) -> None:
    inbox_dir = tmp_path / "inbox"
    data = make_image(tmp_path / "src.png", (50, 60, 70), seed=8).read_bytes()
    half = inbox_dir / "half.png"
    inbox_dir.mkdir()
    half.write_bytes(data[:40])
    settled(half)
    clf = ReadTooEarly(data[40:])
    with Inbox(inbox_dir, settle=0.2) as inbox:
        preds = watch_predictions(clf, None, inbox, wait_seconds=0.1)  # type: ignore[arg-type]
        first = next(preds)
    assert first.ok and first.path == half and clf.calls == 2 and half.read_bytes() == data


# the command ------------------------------------------------------------------------------------------------


def start_watch(*args: str, cwd: Path) -> tuple[subprocess.Popen[bytes], Path]:
    err = cwd / f"stderr-{time.monotonic_ns()}.txt"
    proc = subprocess.Popen([sys.executable, "-m", "emdcli", "watch", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=err.open("wb"))  # fmt: skip
    wait_for(lambda: "watching" in err.read_text() or proc.poll() is not None, "watch to start")
    assert proc.poll() is None, err.read_text()
    return proc, err


def rows_of(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open())) if path.exists() else []


@pytest.mark.slow
def test_watch_classifies_arrivals_stops_cleanly_and_a_restart_skips_what_it_did(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    inbox, rows = tmp_path / "inbox", tmp_path / "rows.csv"
    (inbox / "red").mkdir(parents=True)
    shutil.copy(query_dir / "red" / "img_0.png", inbox / "red" / "first.png")  # there before the start
    args = (str(support_dir), str(inbox), "-o", str(rows), "--model", str(tiny_model))
    proc, err = start_watch(*args, cwd=tmp_path)
    wait_for(lambda: len(rows_of(rows)) == 1, "the row of the image there at the start")

    data = (query_dir / "green" / "img_0.png").read_bytes()  # written slowly: no row until it is closed
    (inbox / "green").mkdir()
    with open(inbox / "green" / "slow.png", "wb") as f:
        f.write(data[:50])
        f.flush()
        time.sleep(0.8)
        assert len(rows_of(rows)) == 1, "a row for a file still being written"
        f.write(data[50:])
    wait_for(lambda: len(rows_of(rows)) == 2, "the slow file's row")

    moved = tmp_path / "staging.png"  # moved in
    shutil.copy(query_dir / "blue" / "img_0.png", moved)
    (inbox / "blue").mkdir()
    os.rename(moved, inbox / "blue" / "moved.png")
    wait_for(lambda: len(rows_of(rows)) == 3, "the moved file's row")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    said = err.read_text()
    assert "stopped: 3 images classified, 0 skipped" in said

    got = rows_of(rows)
    assert [(Path(r["path"]).name, r["predicted"], r["correct"]) for r in got] == [
        ("first.png", "red", "true"), ("slow.png", "green", "true"), ("moved.png", "blue", "true")]  # fmt: skip

    shutil.copy(query_dir / "red" / "img_1.png", inbox / "red" / "while-stopped.png")
    proc, err = start_watch(*args, cwd=tmp_path)
    wait_for(lambda: len(rows_of(rows)) == 4, "the row of the image that came while stopped")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(TIMEOUT) == 0
    assert "3 rows already in" in err.read_text()
    names = [Path(r["path"]).name for r in rows_of(rows)]
    assert names == ["first.png", "slow.png", "moved.png", "while-stopped.png"]


def test_watch_once_gives_the_rows_classify_gives_for_the_folder(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    settled(query_dir)
    common = ["--model", str(tiny_model), "-f", "csv", "--reject", "auto"]
    watched = runner.invoke(app, ["watch", str(support_dir), str(query_dir), "--once", *common])
    classified = runner.invoke(app, ["classify", str(support_dir), str(query_dir), *common])
    assert watched.exit_code == classified.exit_code == 0, watched.output
    assert watched.stdout == classified.stdout and len(watched.stdout.splitlines()) == 7
    assert "done: 6 images classified (0 rejected), 0 skipped" in watched.stderr


def test_an_empty_inbox_is_not_an_error(tiny_model: Path, support_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    res = runner.invoke(app, ["watch", str(support_dir), str(tmp_path / "inbox"), "--once", "--model",
                              str(tiny_model), "-o", str(tmp_path / "rows.csv")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "done: 0 images classified, 0 skipped" in res.stderr
    assert (tmp_path / "rows.csv").read_text() == ""


def test_watch_sorts_each_arrival_and_a_cut_short_last_row_is_dropped(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"path": "gone.png", "status": "ok"}\n{"path": "cut-sh')  # a crash mid-row
    args = ["watch", str(support_dir), str(query_dir), "--once", "--model", str(tiny_model), "-o", str(rows),
            "--sort-into", str(tmp_path / "sorted")]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = rows.read_text().splitlines()
    assert lines[0] == '{"path": "gone.png", "status": "ok"}' and len(lines) == 7
    assert "1 row already in" in res.stderr
    assert sorted(p.name for p in (tmp_path / "sorted" / "red").iterdir()) == ["img_0.png", "img_1.png"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["-o", "rows.json"], "--format must be csv or jsonl with --output"),
        (["-f", "json"], "--format must be csv, jsonl or table"),
        (["-o", "rows.csv"], "holds rows of another kind"),
        (["--sort-action", "move"], "--sort-action and --min-confidence need --sort-into DIR"),
    ],
)
def test_usage_errors_exit_2_before_any_work(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    args: list[str], said: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.csv").write_text("path,other\nx.png,1\n")
    res = runner.invoke(app, ["watch", str(support_dir), str(query_dir), "--once", "--model", str(tiny_model), *args])
    assert res.exit_code == 2
    assert said in " ".join(res.stderr.split())


def test_an_inbox_that_is_not_a_folder_exits_2(tiny_model: Path, support_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["watch", str(support_dir), str(tmp_path / "missing"), "--model", str(tiny_model)])
    assert res.exit_code == 2 and "INBOX is not a folder" in res.stderr


@pytest.mark.slow
def test_an_inbox_removed_while_watched_is_a_runtime_failure(
    tiny_model: Path, support_dir: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    proc, err = start_watch(str(support_dir), str(inbox), "--model", str(tiny_model), cwd=tmp_path)
    inbox.rmdir()
    assert proc.wait(TIMEOUT) == 1
    assert "cannot watch" in err.read_text() and "the folder is gone" in err.read_text()
