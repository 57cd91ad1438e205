"""The option reference at the end of each page of docs/commands/ is generated from the commands' --help and
must not drift from it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import typer.main
import typer.rich_utils

from emdcli.cli import app
from emdcli.cli.reference import BEGIN, END, PROG, REGENERATE, WIDTH, check, main, render_sections, update_page

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "docs" / "commands"


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


def help_block(section: str) -> str:
    """The text block of a reference section."""
    found = re.search(r"^(`{3,})text\n(.*?)\n\1$", section, flags=re.M | re.S)
    assert found, section
    return found.group(2)


def test_reference_is_up_to_date() -> None:
    assert check(FOLDER, render_sections(app)) == [], f"docs/commands is out of date; regenerate it with: {REGENERATE}"


def test_a_changed_help_is_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sections are rendered from the live commands: editing one's help makes its page stale."""
    command = next(c for c in app.registered_commands if not c.hidden)
    monkeypatch.setattr(command, "help", "A help text that docs/commands does not have.")
    diff = check(FOLDER, render_sections(app))
    assert any(line.startswith("+") and "docs/commands does not have" in line for line in diff)


def test_every_command_has_a_section() -> None:
    names = visible_commands()
    top_level = [c for c in app.registered_commands if not c.hidden] + [
        g for g in app.registered_groups if not g.hidden
    ]
    assert len([name for name in names if " " not in name]) == len(top_level)
    sections = render_sections(app)
    assert list(sections) == ["index.md", *(f"{name.replace(' ', '-')}.md" for name in names)]  # registration order
    for name in names:
        assert f"Usage: {PROG} {name} " in help_block(sections[f"{name.replace(' ', '-')}.md"])
        text = (FOLDER / f"{name.replace(' ', '-')}.md").read_text(encoding="utf-8")
        assert text.count(BEGIN) == 1 and text.count(END) == 1, name
    assert "Usage: emdcli [OPTIONS] COMMAND" in help_block(sections["index.md"])


def test_rendering_ignores_the_callers_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("LINES", "10")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")
    narrow = render_sections(app)

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    # What TERMINAL_WIDTH, FORCE_COLOR or GITHUB_ACTIONS set when Typer was imported:
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 200)
    monkeypatch.setattr(typer.rich_utils, "FORCE_TERMINAL", True)
    monkeypatch.setattr(typer.rich_utils, "COLOR_SYSTEM", "truecolor")
    wide = render_sections(app)

    assert narrow == wide
    assert all("\x1b" not in section for section in wide.values())
    # the caller's settings are back afterwards
    assert os.environ["COLUMNS"] == "200"
    assert os.environ["FORCE_COLOR"] == "1"
    assert typer.rich_utils.MAX_WIDTH == 200
    assert typer.rich_utils.COLOR_SYSTEM == "truecolor"


def test_blocks_are_fixed_width_without_trailing_spaces() -> None:
    sections = render_sections(app)
    assert render_sections(app) == sections
    home = str(Path.home())
    for name, section in sections.items():
        lines = help_block(section).splitlines()
        assert max(len(line) for line in lines) == WIDTH, f"{name}: the panels span the fixed width"
        assert all(line == line.rstrip() for line in lines), name
        if len(home) > 1:
            assert home + os.sep not in section, "a path in this machine's home folder: write it as ~"


def test_update_keeps_the_hand_written_text() -> None:
    section = f"{BEGIN}\n\nnew\n\n{END}"
    page = f"# Title\n\nBy hand.\n\n{BEGIN}\n\nold\n\n{END}\n\nAfter.\n"
    assert update_page(page, section) == f"# Title\n\nBy hand.\n\n{section}\n\nAfter.\n"
    assert update_page("# Title\n", section) == f"# Title\n\n## Option reference\n\n{section}\n"


def test_write_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "commands"
    assert main(["--check", str(target)]) == 1  # missing
    shutil.copytree(FOLDER, target)
    assert main(["--check", str(target)]) == 0
    page = target / "classify.md"
    hand_written = page.read_text(encoding="utf-8")
    page.write_text(hand_written.replace("Usage:", "Usage :", 1), encoding="utf-8")
    capsys.readouterr()
    assert main(["--check", str(target)]) == 1
    out, err = capsys.readouterr()
    assert "- Usage : emdcli classify [OPTIONS]" in out
    assert "+ Usage: emdcli classify [OPTIONS]" in out
    assert "--write" in err
    assert main(["--write", str(target)]) == 0
    assert page.read_text(encoding="utf-8") == hand_written
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in FOLDER.iterdir())  # no temporary file
    assert check(target, render_sections(app)) == []
