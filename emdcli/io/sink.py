"""The one result sink of every command (the CSV/JSON/JSON Lines/table sibling of
:mod:`emdcli.io.parquet`): format choice, streamed rows, the Rich table, the JSON
envelope, atomic ``--output`` with ``.partial`` and the summary on stderr (an earlier output is
read back for ``--resume`` by :func:`emdcli.io.records.read_earlier`).

Every command's output has one shape. CSV: a header row, then one row per record. JSON Lines:
one object per record. JSON: one document::

    {"command": "classify", "emdcli": "0.2.0", <header fields>, "rows": [<record>, ...], "summary": {...}}

Rows are written and flushed as they come. Nothing is written before the first row (an empty run
leaves stdout empty); the table is drawn once at the end with every row computed. :class:`RowLog`
is the sink of a run with no end (``watch``): rows appended to a file that outlives the run, each whole.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console, RenderableType

from .. import __version__
from ..errors import UsageError
from ..interrupts import deferred
from .files import AtomicFile, display_path, partial_path, require_output_folder
from .records import Record

#: The widest a table written to a file gets. A file has no screen: its table is as wide as its
#: content, so that each row is one line (grep finds it whole); only beyond this does it give way as
#: on a terminal this wide. (A terminal uses its own width.)
FILE_TABLE_WIDTH = 1000


#: The output format each file suffix means (for every command's --output, and batch's DEST).
FORMAT_BY_SUFFIX = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "table"}


def format_from_suffix(path: Path) -> str | None:
    """The format :data:`FORMAT_BY_SUFFIX` gives ``path``'s suffix (any case), or None."""
    return FORMAT_BY_SUFFIX.get(path.suffix.lower())


def choose_format(fmt: str | None, output: Path | None) -> str:
    """``fmt`` when given; else from the ``output`` suffix (.csv, .json, .jsonl, .txt for a table);
    else a table on a terminal and CSV otherwise. UsageError for an output suffix no format has."""
    if fmt:
        return fmt
    if output is not None:
        found = format_from_suffix(output)
        if found is not None:
            return found
        if output.suffix:
            raise UsageError(
                f"cannot tell the format from the suffix of {display_path(output)}",
                hint="name the file .csv, .json, .jsonl or .txt (a table), or pass `format`",
            )
        return "csv"
    return "table" if sys.stdout.isatty() else "csv"


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _csv_line(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


@dataclass(frozen=True)
class Layout:
    """How one command's records are shown.

    columns: the CSV header. flatten: record -> CSV values in ``columns`` order (default: the
    record's values of those keys). table: records -> the Rich renderable drawn for people.
    summary_line: the summary dict -> the line printed on stderr at the end (None: no line).
    resumable: whether the command takes ``--resume`` (the message after a failure says so).
    """

    command: str
    columns: tuple[str, ...]
    table: Callable[[list[Record]], RenderableType]
    flatten: Callable[[Record], list[Any]] | None = None
    summary_line: Callable[[dict[str, Any]], str] | None = None
    resumable: bool = False

    def csv_values(self, record: Record) -> list[Any]:
        values = self.flatten(record) if self.flatten else [record.get(c) for c in self.columns]
        return [_csv_cell(v) for v in values]


@dataclass
class Sink:
    """Where a command's rows go: stdout, or ``output`` written atomically.

    Made before any work, so that a bad ``--output`` is a usage error (exit 2) at once. note: where
    its messages go (the summary line, unless ``quiet``; the rows kept after a failure), one line
    each; the command line passes stderr, a library caller may pass None to hear nothing.
    """

    output: Path | None
    fmt: str
    quiet: bool = False
    note: Callable[[str], None] | None = field(default=None, repr=False)
    rows: int = 0
    #: On a failure before any row, keep ``FILE.partial`` with the document's head (CSV columns, or the
    #: JSON header with no rows) so that the stopped run is on record for ``--resume``.
    keep_head: bool = False
    _kept: list[Record] = field(default_factory=list, repr=False)
    _file: AtomicFile | None = field(default=None, repr=False)
    _started: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.output is None:
            return
        if self.output.is_dir():
            raise UsageError(f"`output` is a folder: {display_path(self.output)}", hint="give a file name")
        require_output_folder(self.output)

    @property
    def stream(self) -> IO[str]:
        return self._file.stream if self._file else sys.stdout

    @contextmanager
    def open(
        self, layout: Layout, header: dict[str, Any], summary: Callable[[], dict[str, Any]]
    ) -> Iterator[Callable[[Record], None]]:
        """``with sink.open(layout, header, summary) as emit:`` call ``emit(record)`` per row.

        On success the document is closed with ``summary()``, the table drawn, the file committed
        and the summary line printed on stderr. On failure (Ctrl-C included) the rows so far are
        completed the same way and kept in ``FILE.partial``, the summary line printed, and the
        error goes on.
        """
        self.layout, self.header = layout, header
        if self.output is not None:
            self._file = AtomicFile(self.output)
        try:
            yield self._emit
        except BaseException as exc:
            closed = isinstance(exc, BrokenPipeError)  # stdout is gone: nothing more to write or say
            final = None if closed else summary()  # once, so the document and the line agree
            if final is not None and not self.rows and self.keep_head and self._file and self.fmt in ("csv", "json"):
                self._start()
            if final is not None:
                self._finish(final)
            self._abort()
            if final is not None:
                self._summary_line(final)
            raise
        final = summary()
        self._finish(final)
        if self._file and self.output is not None:
            if self.rows:  # an earlier run's .partial is a part of what was just written
                self._file.commit()
                partial_path(self.output).unlink(missing_ok=True)
            else:  # no row, no file: the command reports why
                self._file.abort(keep=False)
        self._summary_line(final)

    def _summary_line(self, summary: dict[str, Any]) -> None:
        if self.layout.summary_line and self.rows and not self.quiet and self.note:
            self.note(self.layout.summary_line(summary))

    def _start(self) -> None:
        """The CSV header or the JSON document's head, written with the first row."""
        self._started = True
        if self.fmt == "csv":
            self._csv(list(self.layout.columns))
        elif self.fmt == "json":
            head = {"command": self.layout.command, "emdcli": __version__, **self.header}
            self.stream.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "rows": [')
            self.stream.flush()

    def _csv(self, values: list[Any]) -> None:
        self.stream.write(_csv_line(values))
        self.stream.flush()

    def _emit(self, record: Record) -> None:
        if self.fmt == "table":
            self._kept.append(record)
            self.rows += 1
            return
        if self.fmt == "csv":
            body = _csv_line(self.layout.csv_values(record))
        else:
            body = json.dumps(record, ensure_ascii=False)
        with deferred():  # Ctrl-C or SIGTERM waits for the block: a row is written whole, and counted
            if self.rows == 0:
                self._start()
            if self.fmt == "json":
                body = ("\n  " if self.rows == 0 else ",\n  ") + body
            elif self.fmt == "jsonl":
                body += "\n"
            self.stream.write(body)
            self.stream.flush()
            self.rows += 1

    def _finish(self, summary: dict[str, Any]) -> None:
        """Complete the document with what was computed (nothing at all when there is no row nor head)."""
        if not self.rows and not self._started:
            return
        if self.fmt == "json":
            self.stream.write(f'\n], "summary": {json.dumps(summary, ensure_ascii=False)}}}\n')
            self.stream.flush()
        elif self.fmt == "table":
            table = self.layout.table(self._kept)
            if self._file is None:
                Console(file=self.stream, highlight=False).print(table)
            else:
                console = Console(file=self.stream, highlight=False, no_color=True, width=FILE_TABLE_WIDTH)
                console.width = console.measure(table).maximum  # as wide as the content needs
                with console.capture() as drawn:
                    console.print(table)
                self.stream.write("".join(line.rstrip() + "\n" for line in drawn.get().splitlines()))

    def _abort(self) -> None:
        if self._file is None:
            return
        kept = self._file.abort(keep=self.rows > 0 or self._started)
        if kept is not None and self.note:
            then = "; run the same command with `resume` to finish it" if self.layout.resumable else ""
            rows = "1 row computed so far was" if self.rows == 1 else f"{self.rows} rows computed so far were"
            if not self.rows:
                rows = "the run's header (no row yet) was"
            self.note(f"{rows} kept in {display_path(kept)}{then}")


@dataclass
class RowLog:
    """Rows appended as they come to ``output`` (kept between runs) or stdout, each written whole and
    flushed: what ``watch`` writes. CSV (a header once) or JSON Lines; ``table`` prints each row as one
    line made by ``line`` (stdout only).

    Made before any work (a bad ``output`` or format is a UsageError at once). :meth:`open` returns the
    records an earlier run left in ``output``; a last line cut short (a crash mid-write) is removed
    first, and a CSV file whose header is not the ``layout``'s is refused (UsageError).
    """

    output: Path | None
    fmt: str
    line: Callable[[Record], str] | None = field(default=None, repr=False)
    rows: int = 0
    layout: Layout | None = field(default=None, init=False)
    _stream: IO[str] | None = field(default=None, repr=False)
    _header_due: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.fmt == "json" or (self.fmt == "table" and self.output is not None):
            raise UsageError(
                "rows are appended as they come: `format` must be csv or jsonl"
                + (" with `output`" if self.output else ""),
                hint="name the file .csv or .jsonl",
            )
        if self.output is not None:
            if self.output.is_dir():
                raise UsageError(f"`output` is a folder: {display_path(self.output)}", hint="give a file name")
            require_output_folder(self.output)

    def open(self, layout: Layout) -> list[Record]:
        """Start writing rows of ``layout``; the records already in ``output`` (none for stdout or a new file)."""
        self.layout = layout
        if self.output is None:
            self._stream, self._header_due = sys.stdout, self.fmt == "csv"
            return []
        earlier = self._read_earlier()
        self._stream = open(self.output, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed by close()
        self._header_due = self.fmt == "csv" and self.output.stat().st_size == 0
        return earlier

    def _read_earlier(self) -> list[Record]:
        assert self.output is not None and self.layout is not None
        try:
            data = self.output.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise UsageError(f"cannot read {display_path(self.output)} ({exc.strerror})") from None
        if data and not data.endswith(b"\n"):  # a row cut short: its query is classified again
            with open(self.output, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
            data = data[: data.rfind(b"\n") + 1]
        other = UsageError(
            f"{display_path(self.output)} holds rows of another kind (other columns: another command, other "
            "classes or other options); rows are only appended to a file of the same kind",
            hint="give another `output` file, or the options it was written with",
        )
        try:
            text = data.decode("utf-8")
            if self.fmt == "csv":
                reader = csv.DictReader(io.StringIO(text))
                records = list(reader)
                if reader.fieldnames is not None and list(reader.fieldnames) != list(self.layout.columns):
                    raise other
                return records
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (UnicodeDecodeError, ValueError):
            raise other from None
        if not all(isinstance(r, dict) and "path" in r for r in records):
            raise other
        return records

    def emit(self, record: Record) -> None:
        """Write one row whole and flush it (SIGINT and SIGTERM wait for it)."""
        assert self._stream is not None and self.layout is not None, "open() first"
        if self.fmt == "table":
            body = (self.line or str)(record) + "\n"
        elif self.fmt == "csv":
            body = _csv_line(self.layout.csv_values(record))
        else:
            body = json.dumps(record, ensure_ascii=False) + "\n"
        with deferred():
            if self._header_due:
                body, self._header_due = _csv_line(list(self.layout.columns)) + body, False
            self._stream.write(body)
            self._stream.flush()
            self.rows += 1

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
        self._stream = None
