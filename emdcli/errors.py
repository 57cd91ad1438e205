"""emdcli's exceptions: one hierarchy, each carrying an exit code and a hint.

The library raises these; the CLI turns them into a one-line ``Error: ...`` on
stderr, an optional ``Hint: ...`` line, and the exit code.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
#: ``anomaly --fail-on-anomaly`` when a query is anomalous.
EXIT_ANOMALY = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
EXIT_TERMINATED = 143


class EmdcliError(Exception):
    """Base class: a failure the user can understand and act on."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(EmdcliError):
    """The command line or an input path cannot be used as given (exit code 2)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config file is missing, unreadable or holds an unknown or invalid key."""


class DatasetError(UsageError):
    """A support or query location does not hold what the command needs."""


class ModelError(EmdcliError):
    """The model file or its manifest is missing, corrupt or not a feature extractor."""


class DeviceError(EmdcliError):
    """The asked-for execution device is not available."""


class ImageError(EmdcliError):
    """One image could not be read or decoded (usually reported as a skip)."""


class TransportError(EmdcliError):
    """An optimal-transport problem was malformed or the solver did not reach the optimum."""


class ExportError(EmdcliError):
    """Building or exporting a backbone failed (optional ``export`` extra)."""


class WorkerMismatchError(EmdcliError):
    """A batch worker's emdcli version or model differs from the driver's: it refuses the job."""


def import_extra(module: str, needed_for: str, hint: str) -> object:
    """``module`` imported, or a UsageError (exit 2): ``needed_for`` needs it, and ``hint`` says
    what to install (an optional extra such as ``pip install 'emdcli[ray]'``)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{needed_for} needs {module.split('.')[0]}, which is not installed", hint=hint) from None


def os_error(exc: BaseException) -> EmdcliError | None:
    """What an OSError from the machine's state means to the user (exit 1), or None for any other
    exception: a full disk or quota, a permission denied, a read-only file system."""
    import errno

    if not isinstance(exc, OSError):
        return None
    where = f": {exc.filename}" if exc.filename else ""
    kept = "rows already written are kept (with `output`, in FILE.partial; `resume` finishes it)"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EmdcliError(f"no space left on the device{where}", hint=f"free some space and run again; {kept}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return EmdcliError(f"permission denied{where}", hint="check the file's and its folder's permissions")
    if exc.errno == errno.EROFS:
        return EmdcliError(f"read-only file system{where}", hint="write to another folder")
    return None


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (:mod:`emdcli.interrupts`), so that a run stops as cleanly
    as on Ctrl-C (exit 143)."""
