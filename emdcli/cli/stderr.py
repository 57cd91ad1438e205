"""What the command line says on stderr: notes, warnings and errors (stdout is for results only)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from ..errors import EmdcliError

__all__ = ["note", "print_error", "stderr_console", "warn"]


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    """``Warning: message`` on stderr."""
    stderr_console().print(f"[yellow]Warning:[/yellow] {escape(message)}", soft_wrap=True)


def note(message: str) -> None:
    """An informational line on stderr (not a warning)."""
    stderr_console().print(escape(message), soft_wrap=True)


def print_error(exc: EmdcliError) -> None:
    """``Error: ...`` (and ``Hint: ...``) on stderr."""
    err = stderr_console()
    err.print(f"[bold red]Error:[/bold red] {escape(exc.message)}", soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]Hint:[/dim] {escape(exc.hint)}", soft_wrap=True)
