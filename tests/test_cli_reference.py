"""docs/cli.md is generated from the commands' --help and must not drift from it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import typer.main
import typer.rich_utils

from emdcli.cli import app
from emdcli.cli.reference import PROG, REGENERATE, WIDTH, check, main, render_reference

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "cli.md"


def visible_commands() -> list[str]:
    """``classify``, ``evaluate``, ... (``group sub`` for nested ones), in registration order."""
    names: list[str] = []

    def visit(command: object, prefix: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            if not sub.hidden:
                names.append(prefix + name)
                visit(sub, f"{prefix}{name} ")

    visit(typer.main.get_command(app), "")
    return names


def sections(text: str) -> dict[str, str]:
    """``## TITLE`` -> the text of the code block under it."""
    found = re.findall(r"^## ([^\n]+)\n\n(`{3,})text\n(.*?)\n\2$", text, flags=re.M | re.S)
    return {title: body for title, _, body in found}


def test_reference_is_up_to_date() -> None:
    expected = render_reference(app)
    current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    assert current == expected, f"docs/cli.md is out of date; regenerate it with: {REGENERATE}"


def test_a_changed_help_is_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page is rendered from the live commands: editing one's help makes docs/cli.md stale."""
    command = next(c for c in app.registered_commands if not c.hidden)
    monkeypatch.setattr(command, "help", "A help text that docs/cli.md does not have.")
    diff = check(REFERENCE, render_reference(app))
    assert any(line.startswith("+") and "docs/cli.md does not have" in line for line in diff)


def test_every_command_has_a_section() -> None:
    names = visible_commands()
    top_level = [c for c in app.registered_commands if not c.hidden] + [
        g for g in app.registered_groups if not g.hidden
    ]
    assert len([name for name in names if " " not in name]) == len(top_level)
    found = sections(render_reference(app))
    assert list(found) == [PROG, *(f"{PROG} {name}" for name in names)]  # registration order
    for name in names:
        assert f"Usage: {PROG} {name} " in found[f"{PROG} {name}"]
    assert "Usage: emdcli [OPTIONS] COMMAND" in found[PROG]


def test_rendering_ignores_the_callers_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("LINES", "10")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")
    narrow = render_reference(app)

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    # What TERMINAL_WIDTH, FORCE_COLOR or GITHUB_ACTIONS set when Typer was imported:
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 200)
    monkeypatch.setattr(typer.rich_utils, "FORCE_TERMINAL", True)
    monkeypatch.setattr(typer.rich_utils, "COLOR_SYSTEM", "truecolor")
    wide = render_reference(app)

    assert narrow == wide
    assert "\x1b" not in wide
    # the caller's settings are back afterwards
    assert os.environ["COLUMNS"] == "200"
    assert os.environ["FORCE_COLOR"] == "1"
    assert typer.rich_utils.MAX_WIDTH == 200
    assert typer.rich_utils.COLOR_SYSTEM == "truecolor"


def test_blocks_are_fixed_width_without_trailing_spaces() -> None:
    text = render_reference(app)
    assert render_reference(app) == text
    for title, body in sections(text).items():
        lines = body.splitlines()
        assert max(len(line) for line in lines) <= WIDTH, title
        assert max(len(line) for line in lines) == WIDTH, f"{title}: the panels span the fixed width"
        assert all(line == line.rstrip() for line in lines), title
    home = str(Path.home())
    if len(home) > 1:
        assert home + os.sep not in text, "a path in this machine's home folder: write it as ~"


def test_write_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "docs" / "cli.md"
    assert main(["--check", str(target)]) == 1  # missing
    assert main(["--write", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_reference(app)
    assert [p.name for p in target.parent.iterdir()] == ["cli.md"]  # no temporary file left
    assert main(["--check", str(target)]) == 0
    assert check(target, render_reference(app)) == []

    target.write_text(target.read_text(encoding="utf-8").replace("Usage:", "Usage :", 1), encoding="utf-8")
    capsys.readouterr()
    assert main(["--check", str(target)]) == 1
    out, err = capsys.readouterr()
    assert "- Usage : emdcli [OPTIONS]" in out
    assert "+ Usage: emdcli [OPTIONS]" in out
    assert "--write" in err
