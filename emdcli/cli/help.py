"""What emdcli's ``--help`` pages show and how its usage errors read.

Typer draws the help pages (``typer.rich_utils``). What it would draw from each parameter's
Python type (``<bool>``, ``<list[str]>``, ``[x>=1]``, ``{SUPPORT}``, ``(dynamic)``) is replaced,
through the parameter hooks Typer's renderer calls, by:

- a metavar beside each option that takes a value (``N``, ``FILE``, ``FORMAT``); none for a flag;
- a usage line that names required arguments bare: ``emdcli classify [OPTIONS] SUPPORT QUERIES...``;
- ``[default: ...]`` after every option that takes a value, in words where it is decided at
  run time (``typer.Option(show_default="...")``), ``on``/``off`` for a ``--x/--no-x`` pair and
  none for a lone flag; range limits in words in the same brackets: ``[default: 2; at least 1]``.

A usage error prints ``Error: Invalid value for '--format': 'xml' is not one of table, csv,
json, jsonl.``, the usage line and ``Hint: see 'emdcli classify --help'`` on stderr, as every
other emdcli error does, and exits 2. The hooks are Typer's own methods, so typer is pinned to
the tested minor version in pyproject.toml.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ..errors import EXIT_USAGE

if TYPE_CHECKING:
    from typer._click import Command as ClickCommand
    from typer._click import Context, Parameter


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def range_words(low: float | None, high: float | None) -> str | None:
    """``at least 1``, ``at most 0.99`` or ``0 to 0.99``; None without limits."""
    if low is not None and high is not None:
        return f"{_number(low)} to {_number(high)}"
    if low is not None:
        return f"at least {_number(low)}"
    return None if high is None else f"at most {_number(high)}"


def _default_words(param: TyperOption | TyperArgument, value: Any) -> str:
    """What ``[default: ...]`` says: the declared words, ``on``/``off``, or the value."""
    if isinstance(param.show_default, str):
        return param.show_default
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "" if value is None or callable(value) else str(value)


class ShownOption(TyperOption):
    """An option as emdcli's help shows it (see the module docstring)."""

    def display_type_rich(self, ctx: Context) -> str | None:
        return None if self.is_flag else self.metavar or (self.name or "").upper()

    def _get_number_range_help_str(self) -> str | None:
        return None  # said with the default

    def _get_default_string(self, *, ctx: Context, show_default_is_str: bool, default_value: Any) -> str:
        if self.is_flag and not self.secondary_opts:
            return ""  # a lone flag is off unless given
        words = _default_words(self, default_value)
        limits = range_words(self.min, self.max)
        return "; ".join(w for w in (words, limits) if w)


class ShownArgument(TyperArgument):
    """An argument as emdcli's help shows it: its name, no type; bare in the usage line when required."""

    def display_type_rich(self, ctx: Context) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


def _shown(params: list[Parameter]) -> list[Parameter]:
    """``params`` with Typer's parameter classes swapped for the ones above (same state, other hooks)."""
    swap: dict[type, type] = {TyperOption: ShownOption, TyperArgument: ShownArgument}
    for param in params:
        param.__class__ = swap.get(type(param), type(param))
    return params


def usage_line(ctx: Context) -> str:
    """``Usage: emdcli classify [OPTIONS] SUPPORT QUERIES...``, on one line."""
    return f"Usage: {ctx.command_path} {' '.join(ctx.command.collect_usage_pieces(ctx))}".rstrip()


# usage errors -----------------------------------------------------------------------------


def plain_reason(error: Mapping[str, Any], param: Parameter | None, ctx: Context | None) -> str:
    """A value refused by Pydantic's validation (Typer 0.29 converts values with it), in plain words."""
    kind, given, limits = str(error.get("type", "")), error.get("input"), error.get("ctx") or {}
    if kind == "greater_than_equal" and "ge" in limits:
        return f"{given} is below the minimum of {_number(limits['ge'])}."
    if kind == "less_than_equal" and "le" in limits:
        return f"{given} is above the maximum of {_number(limits['le'])}."
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{given!r} is not a whole number."
    if kind in ("float_parsing", "float_type"):
        return f"{given!r} is not a number."
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    if kind == "value_error" and " is not one of " in message and param is not None and ctx is not None:
        choices = [str(item.value) for item in param.shell_complete(ctx, "")]
        if choices:
            return f"{given!r} is not one of {', '.join(choices)}."
    return message if message.endswith(".") else f"{message}."


#: Options renamed so that each name means one thing across commands (emdcli 0.2): command -> old -> new.
#: The old spelling is a usage error that names the new one.
RENAMED_OPTIONS: dict[str, dict[str, str]] = {
    "classify": {"--workers": "--decode-threads"},
    "watch": {"--workers": "--decode-threads"},
    "batch": {"--batch-size": "--task-size"},
    "search": {"--shortlist": "--rerank-top"},
}


def plain_message(exc: typer.TyperException) -> str:
    """``exc``'s message with an option named once (``'--format'``, not ``'--format' / '-f'``),
    a refused value explained in plain words, and a renamed option's new name."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoSuchOption" and ctx is not None and ctx.command.name:  # Typer's own Click
        old = str(getattr(exc, "option_name", ""))
        new = RENAMED_OPTIONS.get(ctx.command.name, {}).get(old)
        if new is not None:
            return f"{old} is now {new} (each option name means one thing in every command)"
    if isinstance(exc, typer.BadParameter) and exc.param is not None:
        param = exc.param
        if exc.param_hint is None and param.param_type_name == "option" and param.opts:
            exc.param_hint = f"'{next((o for o in param.opts if o.startswith('--')), param.opts[0])}'"
        errors = getattr(exc.__cause__, "errors", None)
        found = errors() if callable(errors) else None
        if found:
            exc.message = plain_reason(found[0], param, exc.ctx)
    return exc.format_message()


def report_usage_error(exc: typer.TyperException, ctx: Context | None = None) -> None:
    """``Error: ...``, the usage line and ``Hint: see '... --help'`` on stderr (``ctx``: the
    command's, when the error carries none)."""
    from rich.markup import escape

    from .stderr import stderr_console

    err = stderr_console()
    err.print(f"[bold red]Error:[/bold red] {escape(plain_message(exc))}", soft_wrap=True)
    ctx = getattr(exc, "ctx", None) or ctx
    if ctx is None:
        return
    err.print(escape(usage_line(ctx)), soft_wrap=True)
    if ctx.command.get_help_option(ctx) is not None:
        help_name = max(ctx.help_option_names, key=len)
        err.print(f"[dim]Hint:[/dim] see '{escape(ctx.command_path)} {help_name}'", soft_wrap=True)


@contextlib.contextmanager
def usage_errors(ctx: Context) -> Iterator[None]:
    """Report a usage error (Click's exit code 2) while parsing ``ctx``'s command line as emdcli
    reports its own errors, and exit 2."""
    try:
        yield
    except typer.TyperException as exc:
        # NoArgsIsHelpError has printed the help page already (Typer checks it by name, too).
        if exc.exit_code != EXIT_USAGE or type(exc).__name__ == "NoArgsIsHelpError":
            raise
        report_usage_error(exc, ctx)
        raise typer.Exit(EXIT_USAGE) from None


class _Shown:
    """What both command classes share: the parameters shown by emdcli's rules, usage errors in its words."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _shown(super().get_params(ctx))  # type: ignore[misc]

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        with usage_errors(ctx):
            return super().parse_args(ctx, args)  # type: ignore[misc,no-any-return]


class EmdcliCommand(_Shown, TyperCommand):
    """A command whose help and usage errors follow the rules in this module's docstring."""


class EmdcliGroup(_Shown, TyperGroup):
    """The ``emdcli`` group: the same help and errors as :class:`EmdcliCommand`."""

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, ClickCommand | None, list[str]]:
        with usage_errors(ctx):
            return super().resolve_command(ctx, args)
