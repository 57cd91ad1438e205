"""Where a batch run's rows go (DEST): Parquet parts in a folder (:mod:`emdcli.io.parquet`), or one
CSV/JSONL file through the result sink (:mod:`emdcli.io.sink`: atomic, an unfinished run keeps
``DEST.partial``); with ``--resume``, the rows an earlier run left there, checked to be the job's.

    out = Destination(Path("predictions"), "parquet")   # checks DEST now (UsageError)
    done = out.start(job, resume=True, source="photos") # the paths DEST already holds
    with out.writing(job, tally, table, summary_line) as write:
        write(rows)                                     # per finished batch

The library prints nothing: the lines a run ends with (the summary, the rows kept after a failure)
go to ``note``, and how rows look (the table, the summary line) is the caller's to pass in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import DatasetError
from ..io.parquet import PartFolder, need_pyarrow
from ..io.records import Record, read_earlier
from ..io.sink import Layout, Sink
from .batch import BatchJob, RunTally

if TYPE_CHECKING:
    from rich.console import RenderableType

#: The settings beside Parquet parts that must be the job's for ``--resume`` to add to them.
RESUME_SETTINGS = ("model_sha256", "metric", "kshot", "global_weight", "shortlist", "top_k", "classes", "columns",
                   "reject")  # fmt: skip


class Destination:
    """DEST: Parquet parts in a folder, or one CSV/JSONL file through the sink (atomic, .partial).

    Made before any work, so that a bad DEST is a usage error at once. note: where its lines go, one
    each (the summary line unless ``quiet``; the rows kept after a failure); None to hear nothing.
    """

    def __init__(self, path: Path, fmt: str, quiet: bool = False, note: Callable[[str], None] | None = None) -> None:
        self.path, self.fmt, self.quiet, self.note = path, fmt, quiet, note
        if fmt == "parquet":
            need_pyarrow()
            self.parts = PartFolder(path)
        else:
            self.sink = Sink(path, fmt, quiet=quiet, note=note)
        self._prior: list[Record] = []

    def start(self, job: BatchJob, *, resume: bool, source: str) -> set[str]:
        """Prepare DEST for ``job``; with ``resume``, the paths it already holds."""
        settings = {"command": "batch", "emdcli": __version__, **job.header(), "columns": list(job.columns),
                    "input": source}  # fmt: skip
        if self.fmt == "parquet":
            self.parts.start(settings, resume=resume, compare=RESUME_SETTINGS)
            return self.parts.done_paths() if resume else set()
        if resume:
            self._prior = earlier_rows(self.path, self.fmt, job)
        return {str(r["path"]) for r in self._prior}

    def writing(
        self,
        job: BatchJob,
        tally: RunTally,
        table: Callable[[list[Record]], RenderableType],
        summary_line: Callable[[dict[str, Any]], str],
    ) -> AbstractContextManager[Callable[[list[Record]], None]]:
        """``with out.writing(job, tally, table, summary_line) as write:`` call ``write(rows)`` per finished
        batch. A CSV or JSONL file gets the rows it held first (``--resume``); on failure what was
        written is kept. table: rows -> what a table format draws; summary_line: ``tally.summary()`` ->
        the line said at the end."""

        @contextlib.contextmanager
        def parquet() -> Iterator[Callable[[list[Record]], None]]:
            writer = self.parts.writer(job.columns)
            try:
                yield writer.add
            except BaseException:
                writer.close()
                if writer.written and not self.quiet and self.note:
                    self.note(f"{writer.written} rows of this run were kept in {self.path}; "
                              "run the same command with `resume` to finish it")  # fmt: skip
                raise
            writer.close()
            if not self.quiet and tally.rows and self.note:
                self.note(summary_line(tally.summary()))

        @contextlib.contextmanager
        def through_sink() -> Iterator[Callable[[list[Record]], None]]:
            layout = Layout("batch", job.columns, table, summary_line=summary_line, resumable=True)
            with self.sink.open(layout, {}, tally.summary) as emit:
                for row in self._prior:
                    emit(row)

                def write(rows: list[Record]) -> None:
                    for row in rows:
                        emit(row)

                yield write

        return parquet() if self.fmt == "parquet" else through_sink()


def earlier_rows(path: Path, fmt: str, job: BatchJob) -> list[Record]:
    """The rows an earlier run left in the CSV/JSONL file ``path`` (or its .partial), checked to be
    ``job``'s (the same columns and model). DatasetError otherwise."""
    earlier = read_earlier(path, fmt, "batch")
    if earlier is None:
        return []
    records, columns = earlier.records, earlier.columns
    found = tuple(columns) if columns is not None else tuple(records[0]) if records else job.columns
    if found != job.columns or any(str(r.get("model_sha256")) != job.model_sha256 for r in records):
        raise DatasetError(
            f"{earlier.path} was written by another model or support set (its columns or model_sha256 differ); "
            "cannot resume it",
            hint="resume with the same SUPPORT and `model`, or write to a new file",
        )
    return records
