"""Classification of very many images: a job fitted once, scored in batches by any number of workers.

    job, support = fit_job(folder, source, matcher, backbone.check, top_k=2)   # on the driver
    scorer = BatchScorer(job)                                # on each worker: checks version and model
    rows = scorer.score(["a.jpg", "b.jpg"])                  # one flat row per path, in order

The job carries the fitted class node sets (not the support images), the matching settings, the
emdcli version and the model's sha256, and a custom model's files, so that a worker on another
machine needs nothing but emdcli installed. :func:`run_local` runs the same :class:`BatchScorer`
in this process; :mod:`emdcli.tasks.ray_engine` runs it on a Ray actor pool. Rows have the columns
of classify's CSV (:func:`~emdcli.tasks.prediction.prediction_columns`) plus ``model_sha256``.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar, cast

from .. import __version__, defaults
from ..errors import DatasetError, WorkerMismatchError
from ..features.source import FeatureSource, Progress
from ..io.files import display_path
from ..io.folders import LabelledFolder
from ..io.images import IMAGE_NAMES_HINT, RemoteImage, is_uri
from ..matching.rejection import Rejection
from ..matching.support import ClassNodes, Matcher
from ..model.manifest import ModelCheck, bundled_model_dir, resolve_model_path
from .classify import Classifier, Reject, SupportSet, batches
from .prediction import Prediction, flat_row, prediction_columns, run_header

T = TypeVar("T")

#: The name a custom model's manifest gets on a worker (beside its ONNX file, as the manifest names it).
MANIFEST_NAME = "emdcli-model.json"


@dataclass(frozen=True)
class BatchJob:
    """Everything a worker needs to classify images as the driver would.

    classes: the fitted class node sets. matcher: how queries are scored. top_k: ranked classes
    per row. model_sha256: the sha256 of the driver's ONNX file. model_files: file name -> bytes of
    a custom model (manifest and ONNX), None for the bundled one (each worker uses its own
    installed copy, checked against ``model_sha256``). emdcli: the driver's version. base_dir: the
    folder relative paths are read from (the driver's working folder). device: onnxruntime device.
    threads, lanes: the backbone layout per worker (None: the defaults for the worker's cores).
    """

    classes: ClassNodes
    matcher: Matcher
    top_k: int
    model_sha256: str
    model_name: str
    model_files: dict[str, bytes] | None = field(default=None, repr=False)
    emdcli: str = __version__
    base_dir: str = field(default_factory=os.getcwd)
    device: str = "cpu"
    threads: int | None = None
    lanes: int | None = None
    rejection: Rejection | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of every row, in order."""
        return (*prediction_columns(self.classes.classes, self.top_k, self.rejection is not None), "model_sha256")

    @property
    def global_weight(self) -> float:
        return self.matcher.weight_for(self.classes)

    def header(self) -> dict[str, Any]:
        """The job's settings as written beside its output (and checked on ``--resume``)."""
        return run_header(self.model_name, self.model_sha256, self.matcher, self.classes, self.top_k, self.rejection)

    def with_layout(self, threads: int | None, lanes: int | None) -> BatchJob:
        from dataclasses import replace

        return replace(self, threads=threads, lanes=lanes)


def fit_job(
    folder: LabelledFolder,
    source: FeatureSource,
    matcher: Matcher,
    model: ModelCheck,
    *,
    top_k: int,
    device: str = "cpu",
    on_done: Progress | None = None,
    reject: Reject | None = None,
) -> tuple[BatchJob, SupportSet]:
    """Fit ``folder`` (through ``source`` and its cache) into a job for workers; also the support set
    (its skipped images and empty classes, for the report). A model outside emdcli's bundled folder
    travels in the job; so does the open-set rejection, with ``reject``."""
    support = Classifier(source, matcher).fit(folder, on_done, reject=reject)
    bundled = model.onnx_path.resolve().parent == bundled_model_dir().resolve()
    files = None
    if not bundled:
        files = {model.manifest.file: model.onnx_path.read_bytes(), MANIFEST_NAME: model.manifest_path.read_bytes()}
    job = BatchJob(
        classes=support.nodes, matcher=matcher, top_k=min(top_k, len(support.classes)), model_sha256=model.actual,
        model_name=model.manifest.name, model_files=files, device=device, rejection=support.rejection,
    )  # fmt: skip
    return job, support


class BatchScorer:
    """A worker: the job's model loaded once, then :meth:`score` for each batch of paths.

    Raises WorkerMismatchError when this process's emdcli version or model sha256 differs from the job's.
    """

    def __init__(self, job: BatchJob) -> None:
        from ..model.backbone import Backbone

        if job.emdcli != __version__:
            raise WorkerMismatchError(
                f"emdcli worker refused the job: this worker runs emdcli {__version__}, the driver {job.emdcli}",
                hint="install the same emdcli version on every machine of the cluster",
            )
        self.job = job
        self._model_dir: tempfile.TemporaryDirectory[str] | None = None
        manifest = resolve_model_path(None)
        if job.model_files is not None:  # a custom model: written where this worker can load it
            self._model_dir = tempfile.TemporaryDirectory(prefix="emdcli-model-")
            for name, data in job.model_files.items():
                target = Path(self._model_dir.name, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            manifest = Path(self._model_dir.name, MANIFEST_NAME)
        self.backbone = Backbone(manifest, device=job.device, threads=job.threads, lanes=job.lanes)
        if self.backbone.check.actual != job.model_sha256:
            raise WorkerMismatchError(
                f"emdcli worker refused the job: its model {self.backbone.onnx_path.name} has sha256 "
                f"{self.backbone.check.actual[:12]}..., the driver's {job.model_sha256[:12]}...",
                hint="install the same emdcli version on every machine, or pass the model with --model",
            )
        self._classifier = Classifier(FeatureSource(self.backbone, workers=1), job.matcher)
        self._support = SupportSet(nodes=job.classes, rejection=job.rejection)

    def score(self, paths: Iterable[str], on_done: Progress | None = None) -> Iterator[dict[str, Any]]:
        """One flat row per path (``job.columns``), in input order; an unreadable image is a
        ``status=error`` row. ``paths`` are as listed by :func:`list_inputs`."""
        texts: list[str] = []

        def local(items: Iterable[str]) -> Iterator[Path]:
            for text in items:
                texts.append(text)
                # an image in object storage goes down the same path as a file: only decoding tells them apart
                yield cast(Path, RemoteImage(text)) if is_uri(text) else Path(self.job.base_dir, text)

        names = self.job.classes.classes
        for i, pred in enumerate(self._classifier.predict(self._support, local(paths), on_done)):
            open_set = self.job.rejection is not None
            record = _labelled(pred, texts[i], names).to_record(names, self.job.top_k, texts[i], open_set)
            row = flat_row(record, names, self.job.top_k)
            row["model_sha256"] = self.job.model_sha256
            yield row

    def __call__(self, paths: Sequence[str]) -> list[dict[str, Any]]:
        return list(self.score(paths))


def _labelled(pred: Prediction, text: str, classes: Sequence[str]) -> Prediction:
    """``pred`` with its true label taken from ``text`` (the parent folder's name, when a class) and
    its error naming ``text`` rather than the resolved path."""
    from dataclasses import replace

    parent = text.replace("\\", "/").rstrip("/").split("/")[-2:-1]
    label = parent[0] if parent and parent[0] in classes else None
    error = pred.error
    if error is not None:
        error = error.replace(str(pred.path), text)
    return replace(pred, true_label=label, error=error)


# inputs ------------------------------------------------------------------------------------------


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
    from ..io.images import iter_image_files

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
    from ..io.images import is_image_name, remote_filesystem

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
    from ..io.parquet import need_pyarrow

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


# the local engine --------------------------------------------------------------------------------


def query_sets(paths: Sequence[T], size: int) -> list[Sequence[T]]:
    """``paths`` in ``ceil(n / size)`` consecutive sets whose sizes differ by at most one (the larger
    first): how a transductive job's paths are matched, one set per task on either engine (the
    partition Ray Data's ``from_items`` makes into that many blocks)."""
    count = max(1, -(-len(paths) // max(1, size)))
    base, extra = divmod(len(paths), count)
    bounds = [i * base + min(i, extra) for i in range(count + 1)]
    return [paths[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def task_images(job: BatchJob, images: int, workers: int, batch_size: int | None = None) -> int:
    """Images per task: ``batch_size`` when given; for a transductive job BATCH_TASK_SIZE (a task is
    one set of queries, so its size may not depend on the workers); else BATCH_TASK_SIZE, or fewer
    so that each of ``workers`` gets BATCH_TASKS_PER_WORKER tasks of a small input."""
    if batch_size:
        return batch_size
    if job.matcher.transductive:
        return defaults.BATCH_TASK_SIZE
    spread = -(-images // (workers * defaults.BATCH_TASKS_PER_WORKER))
    return max(1, min(defaults.BATCH_TASK_SIZE, spread))


def run_local(
    job: BatchJob, paths: Sequence[str], on_done: Progress | None = None, batch_size: int | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The job in this process: one :class:`BatchScorer` (the code a Ray worker runs). Transductive:
    the rows of each set of :func:`query_sets`, as a Ray task makes them; else every path scored as
    one stream (the pipeline never drains), yielding the rows of each backbone call; in input order."""
    scorer = BatchScorer(job)
    if job.matcher.transductive:
        for part in query_sets(paths, task_images(job, len(paths), 1, batch_size)):
            yield list(scorer.score(part, on_done))
        return
    yield from batches(scorer.score(paths, on_done), scorer.backbone.batch_size)
