"""A folder of Parquet part files written atomically, with the run's settings beside them.

    parts = PartFolder(dest)                     # DEST/part-000000.parquet, ..., DEST/_emdcli.json
    parts.start(settings, resume=False)          # refuses a folder that holds another run's output
    writer = parts.writer(columns)
    writer.add(rows)                             # a part is written every PART_ROWS rows / PART_SECONDS
    writer.close()                               # the rest; Ctrl-C: call close() too, nothing is lost

Each part appears under its final name only when complete (written to a hidden file, then renamed),
so a reader (or ``--resume``) never sees half a part. ``_emdcli.json`` starts with ``_`` so that
pyarrow, pandas, Spark and DuckDB skip it when they read the folder as one dataset.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DatasetError, UsageError, import_extra
from .files import TMP_SUFFIX, atomic_write, display_path, require_output_folder

#: Rows per part file, at most (a part is also written after PART_SECONDS with fewer rows).
PART_ROWS = 50_000
#: Seconds after which the rows gathered so far are written as a part, so an interrupted or killed
#: run loses at most this much work.
PART_SECONDS = 30.0
#: The run's settings, beside the parts.
SETTINGS_NAME = "_emdcli.json"
PART_GLOB = "part-*.parquet"

#: Columns that hold numbers or a truth value; every other column is text.
_FLOAT_COLUMNS = ("score", "confidence", "runner_up_score")


def need_pyarrow() -> Any:
    """The pyarrow module (with ``pyarrow.parquet`` loaded), or a UsageError saying how to install it."""
    import_extra("pyarrow.parquet", "Parquet", "pip install 'emdcli[ray]', or choose `format` csv or jsonl")
    import pyarrow

    return pyarrow


def schema_for(columns: Sequence[str]) -> Any:
    """The Arrow schema of batch rows: float64 scores, bool ``correct``, text elsewhere (all nullable)."""
    pa = need_pyarrow()

    def kind(name: str) -> Any:
        if name in _FLOAT_COLUMNS or name.startswith("score:"):
            return pa.float64()
        return pa.bool_() if name == "correct" else pa.string()

    return pa.schema([(c, kind(c)) for c in columns])


class PartFolder:
    """DEST: the Parquet parts of one run (and of the runs resuming it) and its settings file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        if folder.is_file():
            raise UsageError(f"`output` {display_path(folder)} is a file; Parquet output is a folder",
                             hint="give a folder name, or a .csv/.jsonl file with `format` csv or jsonl")  # fmt: skip
        require_output_folder(folder)

    @property
    def settings_path(self) -> Path:
        return self.folder / SETTINGS_NAME

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob(PART_GLOB)) if self.folder.is_dir() else []

    def start(self, settings: dict[str, Any], *, resume: bool, compare: Sequence[str]) -> None:
        """Make the folder and write ``settings``; with ``resume``, check that the earlier run's
        settings agree on the keys ``compare``. UsageError for a folder that holds something else."""
        held = [p for p in self.folder.iterdir() if not p.name.startswith(".")] if self.folder.is_dir() else []
        if held and not resume:
            raise UsageError(
                f"`output` {display_path(self.folder)} already holds {len(held)} file(s)",
                hint="pass `resume` to finish the run that wrote them, or choose an empty or new folder",
            )
        if held:
            earlier = self.read_settings()
            if earlier is None:
                raise DatasetError(f"{display_path(self.folder)} holds files but no {SETTINGS_NAME}; "
                                   "it is not the output of emdcli batch, so it cannot be resumed",
                                   hint="choose an empty or new folder")  # fmt: skip
            differ = [k for k in compare if earlier.get(k) != settings.get(k)]
            if differ:
                raise DatasetError(
                    f"{display_path(self.folder)} was written with other settings ({', '.join(differ)}); "
                    "cannot resume it",
                    hint="resume with the same SUPPORT, `model` and matching options, or choose a new folder",
                )
        self.folder.mkdir(exist_ok=True)
        for stale in self.folder.glob(f".part-*{TMP_SUFFIX}"):  # a part being written when a run was killed
            stale.unlink(missing_ok=True)
        with atomic_write(self.settings_path) as fh:
            json.dump(settings, fh, indent=2, ensure_ascii=False)
            fh.write("\n")

    def read_settings(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def done_paths(self) -> set[str]:
        """The ``path`` of every row in the folder's complete parts."""
        pq = need_pyarrow().parquet
        done: set[str] = set()
        for part in self.parts():
            try:
                done.update(str(p) for p in pq.read_table(part, columns=["path"]).column("path").to_pylist())
            except Exception as exc:  # a damaged part: its rows are classified again
                raise DatasetError(
                    f"cannot read {display_path(part)} ({exc})",
                    hint="delete that part and resume again: its rows will be redone",
                ) from None
        return done

    def writer(self, columns: Sequence[str]) -> PartWriter:
        numbers = [int(n) for p in self.parts() if (n := p.stem.removeprefix("part-")).isdigit()]
        return PartWriter(self.folder, columns, first_index=max(numbers, default=-1) + 1)


class PartWriter:
    """Gathers rows and writes them as Parquet parts ``part-NNNNNN.parquet`` of at most ``part_rows``
    rows, or of what came within ``part_seconds``."""

    def __init__(
        self,
        folder: Path,
        columns: Sequence[str],
        *,
        first_index: int = 0,
        part_rows: int = PART_ROWS,
        part_seconds: float = PART_SECONDS,
    ) -> None:
        self.folder, self.columns = folder, tuple(columns)
        self.schema = schema_for(self.columns)
        self.index, self.part_rows, self.part_seconds = first_index, part_rows, part_seconds
        self.written = 0  # rows in the parts written by this writer
        self._rows: list[dict[str, Any]] = []
        self._since = time.monotonic()

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        self._rows.extend(rows)
        if len(self._rows) >= self.part_rows or time.monotonic() - self._since >= self.part_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the rows gathered so far as one part (nothing when there are none)."""
        if self._rows:
            pa = need_pyarrow()
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(self._rows, schema=self.schema)
            target = self.folder / f"part-{self.index:06d}.parquet"
            with atomic_write(target, binary=True) as fh:
                pq.write_table(table, fh)
            self.index += 1
            self.written += len(self._rows)
            self._rows = []
        self._since = time.monotonic()

    def close(self) -> None:
        self.flush()
