"""Files: atomic writes (the one implementation), content digests, printable paths."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: Bytes read at a time when hashing a file.
CHUNK_BYTES = 1 << 20
#: Suffix of the hidden temporary file an atomic write goes to before it is renamed into place.
TMP_SUFFIX = ".tmp"
#: Suffix added to an output's name to keep the rows of a run that did not finish.
PARTIAL_SUFFIX = ".partial"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of the file's bytes as 64 hex digits, read in 1 MiB chunks. Raises OSError."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as printable text: undecodable bytes of a file name become ``\\xNN``."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def require_output_folder(path: Path) -> None:
    """UsageError (exit 2) when the folder that is to hold ``path`` (``--output``) does not exist or
    this user cannot create files in it."""
    from ..errors import UsageError

    parent = path.parent
    if not parent.is_dir():
        raise UsageError(
            f"folder for `output` does not exist: {display_path(parent)}", hint=f"create it: mkdir -p {parent}"
        )
    try:  # the one sure test: make a file there (permissions, read-only or special file systems)
        with tempfile.TemporaryFile(dir=parent, prefix=".emdcli-check-"):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot write into the folder for `output`: {display_path(parent)} ({exc.strerror or exc})",
            hint="give `output` a file in a folder you can write to",
        ) from None


def earlier_output(path: Path) -> Path | None:
    """What an earlier run writing ``path`` left: its ``.partial`` when there is one, else ``path``
    when it exists, else None (for ``--resume``)."""
    partial = partial_path(path)
    return partial if partial.exists() else path if path.exists() else None


def partial_path(path: Path) -> Path:
    """Where the rows of an unfinished run writing ``path`` are kept: ``<path>.partial``."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


class AtomicFile:
    """A file that appears at ``path`` only when :meth:`commit` is called.

    Until then everything goes to a hidden temporary file in the same folder (so the
    rename is atomic). :meth:`abort` can keep what was written as ``<path>.partial`` so no
    computed row is lost; it never touches ``path`` itself. ``binary`` opens the stream
    in bytes mode, else text (UTF-8, no newline translation).
    """

    def __init__(self, path: str | os.PathLike[str], *, binary: bool = False) -> None:
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=TMP_SUFFIX)
        self._tmp = Path(tmp)
        self.stream: IO[Any] = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")

    def commit(self, *, fsync: bool = True) -> Path:
        """Close the stream and rename the file into place (readable by all); returns ``path``."""
        try:
            self.stream.flush()
            if fsync:
                os.fsync(self.stream.fileno())
            self.stream.close()
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort(keep=False)
            raise
        return self.path

    def abort(self, keep: bool = True) -> Path | None:
        """Close; with ``keep``, save a non-empty file as ``<path>.partial`` and return that path."""
        with contextlib.suppress(OSError, ValueError):
            if not self.stream.closed:
                self.stream.flush()
                self.stream.close()
        if keep and self._tmp.exists() and self._tmp.stat().st_size > 0:
            partial = partial_path(self.path)
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, partial)
            return partial
        with contextlib.suppress(OSError):
            self._tmp.unlink()
        return None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, binary: bool = False, fsync: bool = True) -> Iterator[IO[Any]]:
    """``with atomic_write(path) as fh:`` writes ``path`` whole or not at all (nothing is kept on failure)."""
    target = AtomicFile(path, binary=binary)
    try:
        yield target.stream
    except BaseException:
        target.abort(keep=False)
        raise
    target.commit(fsync=fsync)


def default_cache_dir() -> Path:
    """``$EMDCLI_CACHE_DIR``, else ``$XDG_CACHE_HOME/emdcli``, else ``~/.cache/emdcli``."""
    explicit = os.environ.get("EMDCLI_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "emdcli"
