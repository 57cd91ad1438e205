"""The machine's state (a folder that cannot be written, a full disk) is the user's to fix: a one-line
error with the right exit code, never "a bug in emdcli"."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emdcli.cli import app
from emdcli.errors import os_error
from tests.conftest import make_folder

runner = CliRunner()


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this user cannot create files in (root ignores permission bits: /proc refuses it files)."""
    if os.geteuid() == 0:
        return Path("/proc")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_an_output_folder_that_cannot_be_written_is_a_usage_error_before_any_work(
    tiny_model: Path, tmp_path: Path
) -> None:
    support = make_folder(tmp_path / "support", {"red": 2, "blue": 2})
    out = unwritable_folder(tmp_path) / "out.csv"
    res = runner.invoke(
        app, ["classify", str(support), str(support / "red"), "--model", str(tiny_model), "-o", str(out)]
    )
    assert res.exit_code == 2, res.output
    assert "cannot write into the folder for --output" in res.stderr
    assert "bug" not in res.stderr and len(res.stderr.strip().splitlines()) == 2  # the error and its hint
    assert not out.exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_says_so_and_exits_1(tiny_model: Path, tmp_path: Path) -> None:
    support = make_folder(tmp_path / "support", {"red": 2, "blue": 2})
    cmd = [sys.executable, "-m", "emdcli", "classify", str(support), str(support / "red"), "--model", str(tiny_model),
           "-f", "csv"]  # fmt: skip
    with open("/dev/full", "w") as full:
        res = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "Error: no space left on the device" in res.stderr
    assert "bug" not in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.ENOSPC, "no space left on the device"), (errno.EDQUOT, "no space left on the device"),
     (errno.EACCES, "permission denied"), (errno.EPERM, "permission denied"), (errno.EROFS, "read-only file system")],
)  # fmt: skip
def test_os_errors_of_the_machine_become_messages_naming_the_file(code: int, words: str) -> None:
    found = os_error(OSError(code, os.strerror(code), "/some/file.csv"))
    assert found is not None and found.exit_code == 1
    assert found.message == f"{words}: /some/file.csv"


def test_other_errors_stay_unexpected() -> None:
    assert os_error(OSError(errno.EIO, "I/O error")) is None
    assert os_error(ValueError("no")) is None
