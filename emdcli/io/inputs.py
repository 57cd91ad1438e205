"""What ``batch``'s INPUT lists: a folder of images, a text file of paths, or a Parquet/CSV manifest,
on disk or at a URI that pyarrow reads."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import DatasetError
from .files import display_path
from .images import IMAGE_NAMES_HINT, is_uri


@dataclass(frozen=True)
class BatchInput:
    """What INPUT lists: the image paths (unique, in the order listed, as written), how INPUT was
    read (``folder``, ``list``, ``parquet`` or ``csv``), the paths listed more than once (each
    once, kept once), and files of a folder that are not images."""

    paths: tuple[str, ...]
    kind: str
    duplicates: tuple[str, ...] = ()
    not_images: tuple[Path, ...] = ()


def list_inputs(source: str) -> BatchInput:
    """The image paths INPUT names: a folder (searched recursively), a Parquet or CSV manifest with a
    ``path`` column, or a text file of paths (one per line, ``#`` starts a comment). INPUT and the
    paths may be URIs that pyarrow reads (``s3://bucket/photos/``). DatasetError when it names none."""
    from .images import iter_image_files

    not_images: list[Path] = []
    if is_uri(source):
        kind, listed = _remote_listing(source)
    else:
        where = Path(source)
        if not where.exists():
            raise DatasetError(
                f"INPUT does not exist: {source}",
                hint="give a folder of images, a text file of paths, or a .parquet/.csv manifest",
            )
        if where.is_dir():
            kind = "folder"
            listed = [display_path(p) for p in sorted(iter_image_files(where, not_images))]
        else:
            try:
                data = where.read_bytes()
            except OSError as exc:
                raise DatasetError(f"cannot read INPUT {source} ({exc.strerror or exc})") from None
            kind, listed = _manifest_paths(source, data)
    unique = tuple(dict.fromkeys(listed))
    if not unique:
        what = "no images found in" if kind == "folder" else "no paths listed in"
        raise DatasetError(f"{what} {source}", hint=IMAGE_NAMES_HINT)
    counts = Counter(listed)
    repeated = tuple(p for p in unique if counts[p] > 1)
    return BatchInput(unique, kind, repeated, tuple(not_images))


def _manifest_paths(name: str, data: bytes) -> tuple[str, list[str]]:
    """The kind of the manifest file ``name`` (by its suffix) and the paths its bytes list."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".parquet":
        return "parquet", _parquet_paths(name, data)
    text = data.decode("utf-8", errors="surrogateescape")
    if suffix == ".csv":
        return "csv", _csv_paths(name, text)
    return "list", [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _remote_listing(uri: str) -> tuple[str, list[str]]:
    """A folder or manifest in a filesystem of pyarrow's: its kind and the URIs of its images."""
    from .images import is_image_name, remote_filesystem

    filesystem, inner = remote_filesystem(uri)  # first: exit 2 with what to install when pyarrow is missing
    from pyarrow import fs

    scheme = uri.partition("://")[0]
    try:
        info = filesystem.get_file_info(inner)  # type: ignore[attr-defined]
        if info.type == fs.FileType.Directory:
            found = filesystem.get_file_info(fs.FileSelector(inner, recursive=True))  # type: ignore[attr-defined]
            files = sorted(f.path for f in found if f.type == fs.FileType.File)
            images = [f for f in files if is_image_name(Path(f)) and not PurePosixPath(f).name.startswith(".")]
            return "folder", [f"{scheme}://{f}" for f in images]
        if info.type == fs.FileType.NotFound:
            raise DatasetError(f"INPUT does not exist: {uri}")
        with filesystem.open_input_stream(inner) as stream:  # type: ignore[attr-defined]
            data = stream.readall()
    except DatasetError:
        raise
    except Exception as exc:  # pyarrow's errors: permissions, network ...
        raise DatasetError(f"cannot read INPUT {uri} ({exc})") from None
    return _manifest_paths(uri, data)


def _parquet_paths(name: str, data: bytes) -> list[str]:
    from .parquet import need_pyarrow

    pa = need_pyarrow()  # before any bare import: exit 2 with what to install
    try:
        table = pa.parquet.read_table(pa.BufferReader(data))
    except Exception as exc:  # pyarrow raises its own error types for a damaged file
        raise DatasetError(f"cannot read {name} as Parquet ({exc})") from None
    if "path" not in table.column_names:
        raise DatasetError(f"{name} has no 'path' column (columns: {', '.join(table.column_names)})",
                           hint="name the column of image paths 'path'")  # fmt: skip
    return [str(p) for p in table.column("path").to_pylist() if p]


def _csv_paths(name: str, text: str) -> list[str]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if "path" not in (reader.fieldnames or []):
            raise DatasetError(f"{name} has no 'path' column (header: {', '.join(reader.fieldnames or [])})",
                               hint="name the column of image paths 'path'")  # fmt: skip
        return [row["path"] for row in reader if row.get("path")]
    except csv.Error as exc:
        raise DatasetError(f"cannot read {name} as CSV ({exc})") from None
