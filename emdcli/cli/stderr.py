"""What the command line says on stderr: notes, warnings and errors (stdout is for results only).

The library names a setting in backquotes as its Python name (`` `sort_into` ``); what goes out
here names the command line's option instead (``--sort-into``), so that no module outside ``cli/``
knows a flag and renaming one changes only the CLI.
"""

from __future__ import annotations

import functools
import re

from rich.console import Console
from rich.markup import escape

from ..errors import EmdcliError

__all__ = ["as_flags", "note", "print_error", "stderr_console", "warn"]

_NAMED = re.compile(r"`([a-z][a-z0-9_]*)`")


@functools.lru_cache(maxsize=1)
def _options() -> frozenset[str]:
    """The long options of every command, as the library names them: ``sort_into`` for ``--sort-into``."""
    import typer.main

    from .app import app

    group = typer.main.get_command(app)
    commands = getattr(group, "commands", {}).values()
    opts = (o for c in commands for p in c.params for o in (*p.opts, *getattr(p, "secondary_opts", ())))
    return frozenset(o[2:].replace("-", "_") for o in opts if o.startswith("--"))


def as_flags(text: str) -> str:
    """``text`` with each setting the library names in backquotes as the option of the command line
    (`` `sort_into` `` -> ``--sort-into``); other backquoted words are left as they are."""
    if "`" not in text:
        return text
    known = _options()
    return _NAMED.sub(lambda m: "--" + m[1].replace("_", "-") if m[1] in known else m[0], text)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    """``Warning: message`` on stderr."""
    stderr_console().print(f"[yellow]Warning:[/yellow] {escape(as_flags(message))}", soft_wrap=True)


def note(message: str) -> None:
    """An informational line on stderr (not a warning)."""
    stderr_console().print(escape(as_flags(message)), soft_wrap=True)


def print_error(exc: EmdcliError) -> None:
    """``Error: ...`` (and ``Hint: ...``) on stderr."""
    err = stderr_console()
    err.print(f"[bold red]Error:[/bold red] {escape(as_flags(exc.message))}", soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]Hint:[/dim] {escape(as_flags(exc.hint))}", soft_wrap=True)
