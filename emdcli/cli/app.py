"""The ``emdcli`` Typer app: the entry point, error handling, signals and process environment.

Each command lives in its own module of this package and is registered here. Heavy modules
(numpy, onnxruntime, POT, Pillow) are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

# The matching's matrix products are small (tens of nodes): BLAS threads only add
# contention with onnxruntime's own threads. Set before numpy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import typer  # noqa: E402

from .. import __version__  # noqa: E402
from ..errors import (  # noqa: E402
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EmdcliError,
    Terminated,
    os_error,
)
from . import anomaly, batch, classify, evaluate, explain, export, fit, info, review, search, train, watch  # noqa: E402
from .help import EmdcliCommand, EmdcliGroup  # noqa: E402
from .stderr import print_error, stderr_console  # noqa: E402

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="emdcli",
    help=(
        "Classify images from a handful of labelled examples, by DeepEMD: the Earth Mover's "
        "Distance between the deep feature maps of a query and of each class.\n\n"
        "[bold]Start here:[/bold]  emdcli classify SUPPORT_DIR QUERY_DIR\n\n"
        "SUPPORT_DIR holds one sub-folder of example images per class. Results go to stdout "
        "(a table on a terminal, CSV in a pipe); progress, warnings and errors go to stderr."
    ),
    cls=EmdcliGroup,
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["--help", "-h"]},
)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _run_mapping_errors(func: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """``func(*args, **kwargs)``, every error mapped to one line on stderr and an exit code."""
    try:
        return func(*args, **kwargs)
    except EmdcliError as exc:
        if os.environ.get("EMDCLI_DEBUG"):
            raise
        print_error(exc)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        stderr_console().print("Interrupted.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Terminated:
        stderr_console().print("Terminated.")
        raise typer.Exit(EXIT_TERMINATED) from None
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except Exception as exc:
        if os.environ.get("EMDCLI_DEBUG"):
            raise
        known = os_error(exc)
        if known is not None:  # the machine's state (a full disk, a permission), not a bug
            print_error(known)
            raise typer.Exit(known.exit_code) from None
        print_error(EmdcliError(
            f"unexpected {type(exc).__name__}: {exc}",
            hint="this is a bug in emdcli; run again with EMDCLI_DEBUG=1 for the traceback and report it",
        ))  # fmt: skip
        raise typer.Exit(1) from None


def handle_errors(func: F) -> F:
    """Map errors to one line on stderr and an exit code; no traceback unless EMDCLI_DEBUG=1.

    SIGINT (Ctrl-C) exits 130 and SIGTERM 143, after the command's own clean-up ran; a closed
    stdout (``| head``) exits 141 quietly.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal

        from ..interrupts import handled, raise_terminated

        with handled({signal.SIGTERM: raise_terminated}):
            return _run_mapping_errors(func, args, kwargs)

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"emdcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", help="Print the version and exit.", callback=_version_callback, is_eager=True),
    ] = False,
) -> None:
    """emdcli: few-shot image classification by Earth Mover's Distance."""


for _module in (classify, fit, watch, review, batch, evaluate, search, anomaly, explain, train, info, export):
    app.command(name=_module.NAME, epilog=getattr(_module, "EPILOG", None), cls=EmdcliCommand)(
        handle_errors(_module.run)
    )


def main() -> None:
    """Console entry point."""
    try:
        app(prog_name="emdcli")
    except KeyboardInterrupt:  # pragma: no cover - raised outside a command
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # pragma: no cover
        _silence_stdout()
        sys.exit(EXIT_BROKEN_PIPE)
