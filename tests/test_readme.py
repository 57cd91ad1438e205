"""The README as a new user reads it: short, and every command in it runs as written.

The commands are taken from the README itself (its ``bash`` blocks and the example column of its
command table) and run from a copy of the repository's ``examples/`` folder, in the README's
order (``watch`` uses the file ``fit`` wrote). Commands of an extra that is not installed skip.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
TIMEOUT = 300

#: Commands that need an extra, by their first word after ``emdcli``: the module that extra brings.
EXTRA_MODULE = {"train": "torch", "export": "torch"}
#: Commands that serve until stopped: started, checked, then stopped with Ctrl-C.
SERVING = {"review"}


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def readme_commands() -> list[str]:
    """Every ``emdcli ...`` command of the README's bash blocks and command table, in order."""
    found: list[tuple[int, str]] = []
    for block in re.finditer(r"^```bash\n(.*?)^```", README, flags=re.M | re.S):
        for line in block.group(1).splitlines():
            for part in line.split("&&"):
                if part.strip().startswith("emdcli "):
                    found.append((block.start(), part.strip()))
    for row in re.finditer(r"^\| `[a-z]+` \|[^|]*\| `(emdcli [^`]+)` \|$", README, flags=re.M):
        found.append((row.start(), row.group(1)))
    return [command for _, command in sorted(found)]


COMMANDS = readme_commands()


def test_the_readme_is_short_and_names_every_command() -> None:
    assert len(README.splitlines()) <= 200
    from typer.main import get_command

    from emdcli.cli import app

    visible = sorted(n for n, c in get_command(app).commands.items() if not c.hidden)  # type: ignore[attr-defined]
    assert sorted({shlex.split(c)[1] for c in COMMANDS}) == visible


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    return tmp_path


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    args = shlex.split(command)
    assert args[0] == "emdcli"
    return subprocess.run([sys.executable, "-m", "emdcli", *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ, "COLUMNS": "100"})  # fmt: skip


@pytest.mark.e2e
def test_every_core_command_of_the_readme_runs_as_written(workdir: Path) -> None:
    ran = []
    for command in COMMANDS:
        name = shlex.split(command)[1]
        if name in EXTRA_MODULE or name in SERVING:
            continue
        res = run(command, workdir)
        assert res.returncode == 0, f"{command}\n{res.stderr}"
        assert "Traceback" not in res.stderr, command
        ran.append(name)
    assert {"classify", "fit", "watch", "batch", "evaluate", "search", "anomaly", "explain", "info"} <= set(ran)
    assert (workdir / "clip.emdfit").is_file() and (workdir / "match.png").is_file()


@pytest.mark.e2e
def test_the_quick_start_prints_what_the_readme_shows(workdir: Path) -> None:
    """The rows the README shows (query, predicted class) and its summary's accuracy."""
    quick = next(c for c in COMMANDS if c.startswith("emdcli classify"))
    res = run(quick, workdir)  # in a pipe: CSV
    assert res.returncode == 0, res.stderr
    predicted = {row["path"]: row["predicted"] for row in csv.DictReader(io.StringIO(res.stdout))}
    shown = fenced_blocks(README, "text")[0]
    rows = re.findall(r"^ (\S+\.png) +(\S+) +\d", shown, flags=re.M)
    assert len(rows) >= 3
    for name, label in rows:
        assert predicted[f"examples/queries/{name}"] == label, name
    summary = re.search(r"^29 queries .*?accuracy (\d+/\d+ = [\d.]+%)", shown, flags=re.M)
    assert summary and f"accuracy {summary.group(1)}" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXTRA_MODULE))
def test_the_readme_commands_of_an_extra_run_as_written(name: str, workdir: Path) -> None:
    if importlib.util.find_spec(EXTRA_MODULE[name]) is None:
        pytest.skip(f"needs the {name} extra: pip install 'emdcli[{name}]'")
    command = next(c for c in COMMANDS if shlex.split(c)[1] == name)
    res = run(command, workdir)
    assert res.returncode == 0, f"{command}\n{res.stderr}"


@pytest.mark.slow
def test_the_readme_review_command_serves_its_page_until_ctrl_c(workdir: Path) -> None:
    command = next(c for c in COMMANDS if shlex.split(c)[1] == "review")
    proc = subprocess.Popen([sys.executable, "-m", "emdcli", *shlex.split(command)[1:]], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        assert ready, "review printed no address"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=60) as page:
            assert page.status == 200
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped: 0 decided, 29 left" in err
    finally:
        proc.kill()


@pytest.mark.e2e
def test_the_readme_python_example_runs(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (code,) = fenced_blocks(README, "python")
    monkeypatch.chdir(workdir)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    first = [p.name for p in sorted((workdir / "examples" / "queries").rglob("*.png"))[:3]]
    assert [line.split()[0] for line in lines] == first
    classes = {p.name for p in (workdir / "examples" / "support").iterdir()}
    for line in lines:
        _, label, confidence = line.split()
        assert label in classes and 0 <= float(confidence) <= 1, line


def test_the_changelog_has_a_dated_section_for_this_version() -> None:
    """Keep a Changelog: ``## [Unreleased]`` first, then ``## [X.Y.Z] - YYYY-MM-DD`` per version, newest first,
    each with Added / Changed / Fixed sections; the package's version is the newest."""
    import emdcli

    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", changelog, flags=re.M)
    assert headings[0] == ("Unreleased", "")
    versions = [v for v, _ in headings[1:]]
    assert versions[0] == emdcli.__version__
    assert all(date for _, date in headings[1:])
    assert versions == sorted(versions, key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True)
    for section in re.split(r"^## ", changelog, flags=re.M)[2:]:
        kinds = re.findall(r"^### (\w+)$", section, flags=re.M)
        assert kinds and set(kinds) <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds
