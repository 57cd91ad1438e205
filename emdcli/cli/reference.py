"""The command-line reference, docs/cli.md, generated from the commands' own ``--help``.

Nothing in docs/cli.md is written by hand: the page is every command's ``--help`` as
Typer renders it, at a fixed width and without colour, so that it cannot drift from
the code (``tests/test_cli_reference.py`` fails when it does). After changing a
command, its options or their help::

    python -m emdcli.cli.reference --write docs/cli.md     # regenerate
    python -m emdcli.cli.reference --check docs/cli.md     # exit 1 and a diff if stale
    python -m emdcli.cli.reference                         # print it

The text is the same on every machine and terminal: the help is rendered into a
buffer (never a tty), 100 columns wide, with no colour, whatever $COLUMNS, $LINES,
$NO_COLOR, $FORCE_COLOR, $TERMINAL_WIDTH, $TTY_COMPATIBLE, $TYPER_USE_RICH ... say; see
:func:`fixed_help_rendering`.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
import typer.core
import typer.main
import typer.rich_utils

WIDTH = 100
PROG = "emdcli"
MODULE = "emdcli.cli.reference"
DEFAULT_PATH = "docs/cli.md"
REGENERATE = f"python -m {MODULE} --write {DEFAULT_PATH}"

#: Environment variables that Rich, Typer or Click read while rendering help, and the
#: value each has while the reference is rendered (None: unset).
RENDER_ENV: dict[str, str | None] = {
    "COLUMNS": str(WIDTH),  # Rich's console width and Click's shutil.get_terminal_size
    "LINES": None,
    "NO_COLOR": None,
    "FORCE_COLOR": None,
    "PY_COLORS": None,
    "CLICOLOR_FORCE": None,
    "TTY_COMPATIBLE": None,
    "TTY_INTERACTIVE": None,
    "TERM": None,
    "COLORTERM": None,
    "JUPYTER_COLUMNS": None,
    "JUPYTER_LINES": None,
    "TERMINAL_WIDTH": None,  # read by typer.rich_utils at import: patched below as well
    "GITHUB_ACTIONS": None,  # idem (forces a terminal)
    "_TYPER_FORCE_DISABLE_TERMINAL": None,  # idem
    "TYPER_USE_RICH": None,  # read by typer.core at import: patched below as well
}

#: Module attributes of Typer that decide width, colour and rich rendering; they are
#: computed from the environment when Typer is imported, so they are set, not the env.
RENDER_ATTRS: tuple[tuple[Any, str, Any], ...] = (
    (typer.rich_utils, "MAX_WIDTH", WIDTH),
    (typer.rich_utils, "COLOR_SYSTEM", None),  # None: no colour, no style codes at all
    (typer.rich_utils, "FORCE_TERMINAL", False),  # never a terminal, even with FORCE_COLOR
    (typer.core, "HAS_RICH", True),  # the rich layout even under TYPER_USE_RICH=0
)


@contextlib.contextmanager
def _patched_attrs(attrs: tuple[tuple[Any, str, Any], ...]) -> Iterator[None]:
    missing = object()
    saved = [(obj, name, getattr(obj, name, missing)) for obj, name, _ in attrs]
    try:
        for obj, name, value in attrs:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, old in reversed(saved):
            if old is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def _patched_env(env: dict[str, str | None]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in env}
    try:
        _set_env(env)
        yield
    finally:
        _set_env(saved)


@contextlib.contextmanager
def _plain_consoles() -> Iterator[None]:
    """Typer's help consoles, minus what Rich still detects from the machine.

    Rich decides Jupyter output and the legacy Windows console (which swaps the
    panels' rounded corners for square ones) from the process, not the environment.
    """
    make = getattr(typer.rich_utils, "_get_rich_console", None)
    if make is None:  # a Typer without it: the attributes above still apply
        yield
        return

    def plain(*args: Any, **kwargs: Any) -> Any:
        console = make(*args, **kwargs)
        console.is_jupyter = False
        console.legacy_windows = False
        return console

    with _patched_attrs(((typer.rich_utils, "_get_rich_console", plain),)):
        yield


@contextlib.contextmanager
def fixed_help_rendering() -> Iterator[None]:
    """Within this block, Typer renders help 100 columns wide, without colour or terminal.

    Environment variables and Typer's module settings are restored on exit.
    """
    with _patched_env(RENDER_ENV), _patched_attrs(RENDER_ATTRS), _plain_consoles():
        yield


def _help_text(root: Any, path: list[str]) -> str:
    """``emdcli PATH... --help`` as printed, with trailing whitespace removed per line."""
    out, err = io.StringIO(), io.StringIO()  # not a tty; encoding utf-8 for Rich
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            root.main(
                args=[*path, "--help"], prog_name=PROG, standalone_mode=True,
                terminal_width=WIDTH, max_content_width=WIDTH,
            )  # fmt: skip
        except SystemExit as exc:
            code = exc.code
    if code not in (0, None):
        raise RuntimeError(f"'{PROG} {' '.join([*path, '--help'])}' exited {code}: {err.getvalue().strip()}")
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    return "\n".join(lines).strip("\n")


def _home_as_tilde(root: Any) -> None:
    """Write the user's home folder as ``~`` in help texts computed at import time.

    A default such as ``~/.config/emdcli/config.yaml`` expanded when the CLI was imported
    would otherwise put this machine's home folder into the page, and into its wrapping.
    """
    home = str(Path.home()).rstrip("/\\")
    if len(home) < 2:
        return
    pattern = re.compile(re.escape(home) + r"(?![\w.-])")
    for command in _walk(root):
        for attr in ("help", "epilog", "short_help"):
            text = getattr(command, attr, None)
            if isinstance(text, str):
                setattr(command, attr, pattern.sub("~", text))
        for param in getattr(command, "params", []):
            text = getattr(param, "help", None)
            if isinstance(text, str):
                param.help = pattern.sub("~", text)


def _walk(command: Any) -> Iterator[Any]:
    yield command
    for sub in getattr(command, "commands", {}).values():
        yield from _walk(sub)


def command_paths(root: Any) -> list[list[str]]:
    """Every visible command below ``root``, in registration order, groups before their commands."""
    paths: list[list[str]] = []

    def visit(command: Any, path: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():  # dicts keep registration order
            if getattr(sub, "hidden", False):
                continue
            paths.append([*path, name])
            visit(sub, [*path, name])

    visit(root, [])
    return paths


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    return "`" * max(3, longest + 1)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def render_reference(app: typer.Typer) -> str:
    """docs/cli.md: ``emdcli --help`` and every command's ``--help``, as Markdown."""
    root = typer.main.get_command(app)
    _home_as_tilde(root)
    with fixed_help_rendering():
        sections: list[tuple[list[str], str]] = [([], _help_text(root, []))]
        sections += [(path, _help_text(root, path)) for path in command_paths(root)]

    titles = [" ".join([PROG, *path]) for path, _ in sections]
    parts = [
        "# Command-line reference",
        "",
        f"<!-- Generated by `{REGENERATE}`: do not edit by hand. -->",
        "",
        f"This page is generated from the commands' own `--help` ({WIDTH} columns, no colour). "
        f"After changing a command, regenerate it with `{REGENERATE}`; "
        "`tests/test_cli_reference.py` fails while it is out of date.",
        "",
        *[f"- [`{title}`](#{_anchor(title)})" for title in titles],
    ]
    for title, (_, text) in zip(titles, sections, strict=True):
        fence = _fence(text)
        parts += ["", f"## {title}", "", f"{fence}text", text, fence]
    return "\n".join(parts) + "\n"


def check(path: Path, text: str) -> list[str]:
    """The unified diff from ``path`` to ``text``; empty when the file is up to date."""
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = ""
    if current == text:
        return []
    return list(
        difflib.unified_diff(
            current.splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile=f"{path} (on disk)", tofile=f"{path} (generated)",
        )
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description="Generate the command-line reference (docs/cli.md)."
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", metavar="FILE", type=Path, help="write the reference to FILE (atomically)")
    mode.add_argument("--check", metavar="FILE", type=Path, help="exit 1 with a diff if FILE is not up to date")
    args = parser.parse_args(argv)

    from emdcli.cli import app

    text = render_reference(app)
    if args.write is not None:
        from ..io.files import atomic_write

        args.write.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.write) as fh:
            fh.write(text)
        print(f"wrote {args.write}", file=sys.stderr)
        return 0
    if args.check is not None:
        diff = check(args.check, text)
        if not diff:
            return 0
        _print_utf8("".join(diff))
        print(
            f"\n{args.check} is out of date; regenerate it with: python -m {MODULE} --write {args.check}",
            file=sys.stderr,
        )
        return 1
    _print_utf8(text)
    return 0


def _print_utf8(text: str) -> None:
    """Write ``text`` to stdout as UTF-8 (the panels' box characters), whatever its encoding."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
    else:
        buffer.write(text.encode("utf-8"))
        buffer.flush()


if __name__ == "__main__":
    sys.exit(main())
