"""Every --help page and usage error reads as plain English, with no Typer, Click or Pydantic leftovers.

Typer draws the pages; emdcli/cli/help.py decides what each parameter shows. The rule for
defaults: every option that takes a value shows ``[default: ...]``, and so does every on/off pair
(``--cache  --no-cache``, ``[default: on]``); a lone flag (``--quiet``, ``--resume``) shows none:
it is off unless given. Required parameters (the arguments, batch's ``--output``) say
``[required]`` after their help.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.core
import typer.main
import typer.rich_utils
from typer.testing import CliRunner

from emdcli.cli import app
from tests.conftest import make_folder

runner = CliRunner()
ROOT = typer.main.get_command(app)
COMMANDS = [name for name, command in ROOT.commands.items() if not command.hidden]  # type: ignore[attr-defined]
PAGES = [[], *([name] for name in COMMANDS)]

#: What Typer 0.29, Click and Pydantic print by default and a help page must not.
LEFTOVERS = ("<bool>", "<list", "<str>", "<int>", "<float>", "<path>", "<file>", "<dir>", "range>", "x>=", "x<=",
             "Value error", "Input should", "(dynamic)", "[default: (")  # fmt: skip
#: A type label in angle brackets, such as ``<table|csv|json|jsonl>`` (``<query path>`` is prose).
TYPE_LABEL = re.compile(r"<[\w|\[\],.+-]+>")

#: One letter, one meaning: the short options and the long option each one stands for, on every command.
LETTERS = {"-k": "--top-k", "-n": "--way", "-f": "--format", "-o": "--output", "-q": "--quiet", "-0": "--null",
           "-j": "--jobs", "-e": "--episodes", "-V": "--version", "-h": "--help"}  # fmt: skip


def render_help(monkeypatch: pytest.MonkeyPatch, page: list[str], width: int) -> str:
    """``emdcli PAGE --help`` as printed on a terminal ``width`` columns wide, without colour (and
    without the spaces that pad each line to the width)."""
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", width)
    monkeypatch.setattr(typer.rich_utils, "COLOR_SYSTEM", None)
    monkeypatch.setattr(typer.rich_utils, "FORCE_TERMINAL", False)
    res = runner.invoke(app, [*page, "--help"], env={"COLUMNS": str(width)})
    assert res.exit_code == 0, res.output
    return "\n".join(line.rstrip() for line in res.stdout.splitlines()) + "\n"


def command(name: str) -> typer.core.TyperCommand:
    return ROOT.commands[name]  # type: ignore[attr-defined,no-any-return]


def options(name: str | None) -> list[typer.core.TyperOption]:
    """The options of ``emdcli NAME`` (of ``emdcli`` for None), --help included."""
    ctx = ROOT.make_context("emdcli", [], resilient_parsing=True)  # the app's help option names
    cmd = ROOT if name is None else command(name)
    if name is not None:
        ctx = cmd.make_context(name, [], parent=ctx, resilient_parsing=True)
    return [p for p in cmd.get_params(ctx) if isinstance(p, typer.core.TyperOption) and not p.hidden]


def row_label(option: typer.core.TyperOption) -> str:
    """How an option's row starts: its long names (``--neighbours,--k``)."""
    return ",".join(o for o in option.opts if o.startswith("--"))


def arguments(name: str | None) -> list[typer.core.TyperArgument]:
    cmd = ROOT if name is None else command(name)
    return [p for p in cmd.params if isinstance(p, typer.core.TyperArgument)]


def test_every_command_is_checked() -> None:
    assert COMMANDS == ["classify", "fit", "watch", "review", "batch", "evaluate", "search", "anomaly", "explain",
                        "train", "info", "export"]  # fmt: skip


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("page", PAGES, ids=lambda p: " ".join(p) or "emdcli")
def test_help_has_no_library_leftovers(monkeypatch: pytest.MonkeyPatch, page: list[str], width: int) -> None:
    text = render_help(monkeypatch, page, width)
    # each required parameter says so after its help, once (the arguments, batch's --output)
    name = page[0] if page else None
    required = [o for o in options(name) if o.required] + [a for a in arguments(name) if a.required]
    assert text.count("[required]") == len(required), (page, [o.opts for o in required])
    for leftover in LEFTOVERS:
        assert leftover not in text, leftover
    assert not TYPE_LABEL.search(text), TYPE_LABEL.search(text)
    usage = next(line.strip() for line in text.splitlines() if line.strip().startswith("Usage:"))
    assert "{" not in usage and "}" not in usage and "...}" not in usage
    assert usage.startswith(f"Usage: {' '.join(['emdcli', *page])} [OPTIONS]")
    assert max(len(line) for line in text.splitlines()) <= width


def test_usage_lines_name_arguments_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {
        "classify": "Usage: emdcli classify [OPTIONS] SUPPORT QUERIES...",
        "batch": "Usage: emdcli batch [OPTIONS] SUPPORT INPUT",
        "evaluate": "Usage: emdcli evaluate [OPTIONS] DATASET",
        "search": "Usage: emdcli search [OPTIONS] GALLERY QUERY...",
        "anomaly": "Usage: emdcli anomaly [OPTIONS] NORMAL_DIR QUERIES...",
        "explain": "Usage: emdcli explain [OPTIONS] SUPPORT_OR_IMAGE QUERY",
        "fit": "Usage: emdcli fit [OPTIONS] SUPPORT",
        "watch": "Usage: emdcli watch [OPTIONS] SUPPORT INBOX",
        "review": "Usage: emdcli review [OPTIONS] SUPPORT [QUERIES]...",
        "info": "Usage: emdcli info [OPTIONS] [FILE.emdfit]",
        "export": "Usage: emdcli export [OPTIONS]",
    }
    for name, usage in expected.items():
        assert f" {usage}\n" in render_help(monkeypatch, [name], 120), name
    assert " Usage: emdcli [OPTIONS] COMMAND [ARGS]...\n" in render_help(monkeypatch, [], 120)


@pytest.mark.parametrize("name", [None, *COMMANDS], ids=lambda n: n or "emdcli")
def test_every_option_shows_its_default_unless_a_lone_flag(monkeypatch: pytest.MonkeyPatch, name: str | None) -> None:
    """Wide enough that each row is one line: the row is found by the option's names."""
    text = render_help(monkeypatch, [] if name is None else [name], 400)
    for option in options(name):
        label = row_label(option)
        rows = [line for line in text.splitlines() if re.match(rf"│ \*?\s*{re.escape(label)}\s", line)]
        assert len(rows) == 1, (name, label, rows)
        row = rows[0]
        # names, short names, the --no- twin, the metavar (none for a flag), then the help text
        shorts = ",".join(o for o in option.opts if not o.startswith("--"))
        metavar = "" if option.is_flag else (option.metavar or "")
        twin = ",".join(option.secondary_opts)
        cells = [re.escape(cell) for cell in (label, shorts, twin, metavar, (option.help or "").split()[0]) if cell]
        assert re.match(r"│ \*?\s*" + r"\s+".join(cells), row), (name, label, row)
        assert row.startswith("│ *") == option.required, (name, label, "Typer's mark of a required option")
        if option.is_flag and not option.secondary_opts:
            assert "[default:" not in row, (name, label)  # a lone flag: off unless given
        elif option.is_flag:
            assert re.search(r"\[default: (on|off)[;\]]", row), (name, label, row)  # "on; off for ..." qualifies
        elif option.required:
            assert row.rstrip(" │").endswith("[required]") and "[default:" not in row, (name, label, row)
        else:
            assert re.search(r"\[default: [^\]]+\]", row), (name, label, row)
            assert option.metavar and option.metavar.isupper(), (name, label, "a plain metavar: N, FILE ...")
        assert row.count("[default:") <= 1, (name, label, row)


def test_range_limits_read_as_words(monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate = render_help(monkeypatch, ["evaluate"], 400)
    assert re.search(r"│ --way\s+-n\s+N\s+Classes per episode\. \[default: 5; at least 2\]", evaluate)
    anomaly = render_help(monkeypatch, ["anomaly"], 400)
    assert "[default: 0.05; 0 to 0.99]" in anomaly
    assert "[default: 3; at least 1]" in anomaly


COMPLETION = ("--install-completion", "--show-completion")


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("emdcli cla", ["classify"]),
        ("emdcli classify --rej", ["--reject"]),
        ("emdcli classify S Q --format ", ["table", "csv", "json", "jsonl"]),
    ],
)
def test_shell_completion_completes_commands_options_and_choices(words: str, expected: list[str]) -> None:
    """What bash's completion function asks for: the words so far, the index of the one completed."""
    cword = len(words.split()) if words.endswith(" ") else len(words.split()) - 1
    env = {**os.environ, "_EMDCLI_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    out = subprocess.run([sys.executable, "-m", "emdcli"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == expected


def test_the_completion_script_is_offered() -> None:
    # Typer finds the shell among the process's parents (shellingham): run under bash, as a user would
    # (``; exit $?`` keeps bash from replacing itself with the command), so that an orphaned test run finds it too
    command = f"{shlex.quote(sys.executable)} -m emdcli --show-completion; exit $?"
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "_emdcli_completion" in out.stdout and "complete " in out.stdout


def test_one_letter_one_meaning() -> None:
    for name in COMMANDS:
        for option in options(name):
            for short in (o for o in option.opts if not o.startswith("--")):
                assert short in LETTERS, (name, short)
                assert LETTERS[short] in option.opts, (name, short, option.opts)
    for option in options(None):
        if option.opts[0] in COMPLETION:
            continue
        assert all(o in LETTERS or o in LETTERS.values() for o in option.opts), option.opts
    way = [name for name in COMMANDS if any("-n" in o.opts for o in options(name))]
    assert way == ["evaluate", "train"]
    top_k = [name for name in COMMANDS if any("-k" in o.opts for o in options(name))]
    assert top_k == ["classify", "watch", "batch", "search"]
    neighbours = next(o for o in options("anomaly") if "--neighbours" in o.opts)
    assert neighbours.opts == ["--neighbours", "--k"]  # --k: the old name, still accepted and shown


# usage errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["classify", "S", "Q", "--format", "xml"],
         "Invalid value for '--format': 'xml' is not one of table, csv, json, jsonl."),
        (["classify", "S", "Q", "-f", "xml"],
         "Invalid value for '--format': 'xml' is not one of table, csv, json, jsonl."),
        (["classify", "S", "Q", "--top-k", "0"], "Invalid value for '--top-k': 0 is below the minimum of 1."),
        (["search", "G", "Q", "-k", "0"], "Invalid value for '--top-k': 0 is below the minimum of 1."),
        (["evaluate", "D", "--way", "1"], "Invalid value for '--way': 1 is below the minimum of 2."),
        (["evaluate", "D", "--way", "x"], "Invalid value for '--way': 'x' is not a whole number."),
        (["anomaly", "N", "Q", "--contamination", "2"],
         "Invalid value for '--contamination': 2 is above the maximum of 0.99."),
        (["anomaly", "N", "Q", "--k", "0"], "Invalid value for '--neighbours': 0 is below the minimum of 1."),
        (["classify", "S", "Q", "--global-weight", "much"],
         "Invalid value for '--global-weight': 'much' is not a number."),
        (["info", "--format", "csv"], "Invalid value for '--format': 'csv' is not one of table, json."),
        (["export", "--resize", "stretch"], "Invalid value for '--resize': 'stretch' is not one of squash, crop."),
        (["classify", "S"], "Missing argument 'QUERIES'."),
        (["search"], "Missing argument 'GALLERY'."),
    ],
)  # fmt: skip
def test_usage_errors_are_plain(args: list[str], message: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    assert lines[0] == f"Error: {message}"
    path = "emdcli " + args[0]
    assert lines[1].startswith(f"Usage: {path} [OPTIONS]")
    assert lines[2] == f"Hint: see '{path} --help'"
    for leftover in ("Value error", "Input should", "╭", "{", "' / '"):
        assert leftover not in res.output, leftover
    assert res.stdout == ""


def test_unknown_command_and_option() -> None:
    res = runner.invoke(app, ["clasify"])
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [
        "Error: No such command 'clasify'. Did you mean 'classify'?",
        "Usage: emdcli [OPTIONS] COMMAND [ARGS]...",
        "Hint: see 'emdcli --help'",
    ]
    res = runner.invoke(app, ["classify", "S", "Q", "-f"])
    assert res.exit_code == 2
    assert res.stderr.splitlines()[0] == "Error: Option '-f' requires an argument."
    assert res.stderr.splitlines()[2] == "Hint: see 'emdcli classify --help'"


def test_no_arguments_still_prints_the_help() -> None:
    res = runner.invoke(app, [])
    assert "Usage: emdcli [OPTIONS] COMMAND [ARGS]..." in res.output
    assert "Error" not in res.output


# anomaly --neighbours --------------------------------------------------------------------------


def test_anomaly_neighbours(tiny_model: Path, tmp_path: Path) -> None:
    normal = make_folder(tmp_path / "normal", {"red": 6})
    queries = make_folder(tmp_path / "queries", {"red": 1, "blue": 1}, seed=5)
    common = ["anomaly", str(normal), str(queries), "--model", str(tiny_model), "-f", "json", "-q"]
    res = runner.invoke(app, [*common, "--neighbours", "2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["k"] == 2
    assert len(doc["rows"]) == 2
    old = runner.invoke(app, [*common, "--k", "2"])  # the old name, still accepted
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout)["rows"] == doc["rows"]
