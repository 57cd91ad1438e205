"""How emdcli's ``--help`` pages and command-line errors look.

Typer 0.29 renders help from each parameter's Python type and Click's conventions, and
shows Pydantic's wording when a value is refused. Left as they are, a new user reads
``<bool>`` beside every flag, ``<list[str]>`` or ``<int range> [x>=1]`` in the type column,
``{SUPPORT} {QUERIES}...`` in the usage line, ``*`` and ``[required]`` beside arguments, and
``Value error, 'xml' is not one of 'table', ...``. The command classes here, passed to Typer
as ``cls=`` (see app.py), render the same panels by these rules instead:

- The usage line names required arguments bare, optional ones in ``[brackets]``, and
  repeatable ones with ``...``: ``emdcli classify [OPTIONS] SUPPORT QUERIES...``.
- Beside each option that takes a value: its metavar (``N``, ``FILE``, ``FORMAT`` ...); the
  choices are in the help text. A flag has none.
- **Defaults:** every option that takes a value shows ``[default: ...]`` after its help, in
  words where it is decided at run time (``typer.Option(show_default="...")``); an on/off
  pair (``--[no-]cache``) shows ``[default: on]`` or ``[default: off]``; a lone flag
  (``--quiet``) shows none: it is off unless given.
- Range limits read as words in the same brackets: ``[default: 2; at least 1]``.
- A usage error prints ``Error: Invalid value for '--format': 'xml' is not one of table,
  csv, json, jsonl.``, the usage line and ``Hint: see 'emdcli classify --help'`` on stderr,
  as every other emdcli error does, and exits 2.

Only light modules are imported here; Rich's layout classes are imported when help is shown.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ..errors import EXIT_USAGE

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    from typer._click import Command as ClickCommand
    from typer._click import Context, HelpFormatter, Parameter

STYLE_OPTION = "bold cyan"
STYLE_SWITCH = "bold green"
STYLE_METAVAR = "bold yellow"
STYLE_USAGE = "yellow"
STYLE_NOTE = "dim"  # [default: ...] and the description's later paragraphs
STYLE_BORDER = "dim"

#: ``--name`` and ``-x`` in help texts, highlighted as option names.
_OPTION_NAME = re.compile(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)")


# what each parameter shows --------------------------------------------------------------


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def range_words(param: Parameter) -> str | None:
    """``at least 1``, ``at most 0.99`` or ``0 to 0.99`` for a number option with limits."""
    if not isinstance(param, (TyperOption, TyperArgument)):
        return None
    low, high = param.min, param.max
    if low is not None and high is not None:
        return f"{_number(low)} to {_number(high)}"
    if low is not None:
        return f"at least {_number(low)}"
    if high is not None:
        return f"at most {_number(high)}"
    return None


def is_plain_flag(param: Parameter) -> bool:
    """A flag without an ``--no-`` twin (``--quiet``, ``--help``): off unless given, no default shown."""
    return isinstance(param, TyperOption) and param.is_flag and not param.secondary_opts


def default_text(param: Parameter, ctx: Context) -> str | None:
    """What ``[default: ...]`` says for ``param``, or None to show no default."""
    if is_plain_flag(param) or not isinstance(param, (TyperOption, TyperArgument)):
        return None
    if isinstance(param.show_default, str):
        return param.show_default
    if param.show_default is False or param.required:
        return None
    value = param.get_default(ctx, call=False)
    if value is None or callable(value):
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def metavar(param: Parameter) -> str:
    """The value's placeholder: the declared metavar, else the name in capitals; none for a flag."""
    if isinstance(param, TyperOption) and param.is_flag:
        return ""
    name = param.metavar or (param.name or "").upper()
    if isinstance(param, TyperArgument) and param.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name


def option_names(param: Parameter) -> tuple[str, str]:
    """The long names (``--top-k``; ``--[no-]cache`` for an on/off pair) and the short ones (``-k``)."""
    longs = [o for o in param.opts if o.startswith("--")]
    shorts = [o for o in param.opts if not o.startswith("--")]
    if param.secondary_opts and len(longs) == 1 and param.secondary_opts == [f"--no-{longs[0][2:]}"]:
        longs = [f"--[no-]{longs[0][2:]}"]
    else:
        longs += [o for o in param.secondary_opts if o.startswith("--")]
        shorts += [o for o in param.secondary_opts if not o.startswith("--")]
    return ", ".join(longs), ", ".join(shorts)


def usage_pieces(command: ClickCommand, ctx: Context) -> list[str]:
    """``[OPTIONS] SUPPORT QUERIES...``: required arguments bare, optional ones in brackets."""
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.get_params(ctx):
        if param.param_type_name == "argument":
            name = metavar(param)
            pieces.append(name if param.required else f"[{name}]")
    return pieces


def usage_line(ctx: Context) -> str:
    """``Usage: emdcli classify [OPTIONS] SUPPORT QUERIES...``, on one line."""
    return f"Usage: {ctx.command_path} {' '.join(ctx.command.collect_usage_pieces(ctx))}".rstrip()


# rendering --------------------------------------------------------------------------------


def _console() -> Console:
    """Typer's help console: its width, colour and terminal settings (typer.rich_utils)."""
    import typer.rich_utils

    make = getattr(typer.rich_utils, "_get_rich_console", None)
    if callable(make):
        console: Console = make()
        return console
    from rich.console import Console

    return Console(width=typer.rich_utils.MAX_WIDTH, color_system=typer.rich_utils.COLOR_SYSTEM)


def _highlight(text: Text) -> Text:
    for found in _OPTION_NAME.finditer(text.plain):
        name = found.group(1)
        text.stylize(STYLE_OPTION if name.startswith("--") else STYLE_SWITCH, found.start(1), found.end(1))
    return text


def _prose(text: str, style: str = "") -> Text:
    """Rich markup, paragraphs kept (blank lines), single line breaks joined; ``\\b`` keeps a block as is."""
    from rich.text import Text

    paragraphs = [p if p.startswith("\b") else p.replace("\n", " ") for p in inspect.cleandoc(text).split("\n\n")]
    return _highlight(Text.from_markup("\n\n".join(p.strip("\b\n") for p in paragraphs), style=style))


def parameter_help(param: Parameter, ctx: Context) -> Text:
    """The help text, then ``[default: ...; at least 1]`` (or ``[required]`` for a required option)."""
    from rich.text import Text

    text = _prose(param.help) if isinstance(param, (TyperOption, TyperArgument)) and param.help else Text()
    notes = []
    default = default_text(param, ctx)
    if default is not None:
        notes.append(f"default: {default}")
    limits = range_words(param)
    if limits:
        notes.append(limits)
    if param.required and param.param_type_name == "option":
        notes.append("required")
    if notes:
        text.append(" " if text.plain else "")
        text.append(f"[{'; '.join(notes)}]", style=STYLE_NOTE)
    return text


def _table() -> Table:
    from rich.table import Table

    return Table(show_header=False, box=None, expand=True, padding=(0, 1), pad_edge=False, highlight=False)


def _panel(title: str, table: Table) -> Any:
    from rich.panel import Panel

    return Panel(table, title=title, title_align="left", border_style=STYLE_BORDER)


def _parameter_panels(params: Sequence[Parameter], ctx: Context) -> Iterator[Any]:
    """The Arguments panel(s), then the Options panel(s), by ``rich_help_panel``; help columns aligned."""
    from rich.text import Text

    shown = [p for p in params if not getattr(p, "hidden", False)]
    options = [p for p in shown if p.param_type_name == "option"]
    arguments = [p for p in shown if p.param_type_name == "argument"]
    # an option's row: long names, short names, metavar, help; a column no option uses is left out
    cells = {p: (*option_names(p), metavar(p)) for p in options}
    widths = [max((len(c[i]) for c in cells.values()), default=0) for i in range(3)]
    used = [i for i in range(3) if widths[i]]
    # an argument's name spans the options' name columns (and the two spaces between each two)
    left_width = max(sum(widths) + 2 * (len(used) - 1), *(len(metavar(p)) for p in arguments), 0)
    styles = (STYLE_OPTION, STYLE_SWITCH, STYLE_METAVAR)

    for kind in ("Arguments", "Options"):
        panels: dict[str, list[Parameter]] = {}
        for param in arguments if kind == "Arguments" else options:
            panels.setdefault(getattr(param, "rich_help_panel", None) or kind, []).append(param)
        for title, members in panels.items():
            table = _table()
            if kind == "Arguments":
                table.add_column(no_wrap=True, width=left_width)
                table.add_column(ratio=1)
                for param in members:
                    table.add_row(Text(metavar(param), style=STYLE_METAVAR), parameter_help(param, ctx))
            else:
                for i in used:
                    table.add_column(no_wrap=True, width=widths[i])
                table.add_column(ratio=1)
                for param in members:
                    table.add_row(*(Text(cells[param][i], style=styles[i]) for i in used), parameter_help(param, ctx))
            yield _panel(title, table)


def _commands_panel(group: TyperGroup, ctx: Context) -> Any | None:
    from rich.text import Text

    commands = [c for c in (group.get_command(ctx, n) for n in group.list_commands(ctx)) if c and not c.hidden]
    if not commands:
        return None
    table = _table()
    table.add_column(no_wrap=True, style=STYLE_OPTION)
    table.add_column(ratio=1)
    for command in commands:
        first = inspect.cleandoc(command.short_help or command.help or "").split("\n\n")[0]
        table.add_row(Text(command.name or ""), _prose(first))
    return _panel("Commands", table)


def render_help(command: ClickCommand, ctx: Context) -> None:
    """Print ``command``'s help page to stdout by the rules in this module's docstring."""
    from rich.padding import Padding
    from rich.text import Text

    console = _console()
    usage = Text("Usage: ", style=STYLE_USAGE)
    usage.append(usage_line(ctx).removeprefix("Usage: "), style="bold")
    console.print(Padding(usage, 1))
    if command.help:
        first, _, rest = inspect.cleandoc(command.help).partition("\n\n")
        text = _prose(first)
        if rest.strip():
            text.append("\n\n")
            text.append_text(_prose(rest, style=STYLE_NOTE))
        console.print(Padding(text, (0, 1, 1, 1)))
    for panel in _parameter_panels(command.get_params(ctx), ctx):
        console.print(panel)
    if isinstance(command, TyperGroup):
        commands = _commands_panel(command, ctx)
        if commands is not None:
            console.print(commands)
    if command.epilog:
        console.print(Padding(_prose(command.epilog), 1))


# usage errors -----------------------------------------------------------------------------


def _choices(param: Parameter, ctx: Context | None) -> list[str]:
    """The values a choice option accepts (as its shell completion offers them)."""
    if ctx is None:
        return []
    return [str(item.value) for item in param.shell_complete(ctx, "")]


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
    if kind == "value_error" and " is not one of " in message and param is not None:
        choices = _choices(param, ctx)
        if choices:
            return f"{given!r} is not one of {', '.join(choices)}."
    return message if message.endswith(".") else f"{message}."


def plain_message(exc: typer.TyperException) -> str:
    """``exc``'s message with an option named once (``'--format'``, not ``'--format' / '-f'``)
    and a refused value explained in plain words."""
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


class EmdcliCommand(TyperCommand):
    """A command whose help and usage errors follow the rules in this module's docstring."""

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        return usage_pieces(self, ctx)

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        render_help(self, ctx)

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        with usage_errors(ctx):
            return super().parse_args(ctx, args)


class EmdcliGroup(TyperGroup):
    """The ``emdcli`` group: the same help and errors as :class:`EmdcliCommand`."""

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        return [*usage_pieces(self, ctx), self.subcommand_metavar]

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        render_help(self, ctx)

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        with usage_errors(ctx):
            return super().parse_args(ctx, args)

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, ClickCommand | None, list[str]]:
        with usage_errors(ctx):
            return super().resolve_command(ctx, args)
