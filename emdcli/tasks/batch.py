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

import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from .. import __version__, defaults
from ..errors import WorkerMismatchError
from ..features.source import FeatureSource, Progress
from ..io.folders import LabelledFolder
from ..io.images import RemoteImage, is_uri
from ..matching.rejection import Rejection
from ..matching.support import ClassNodes, Matcher
from ..model.manifest import ModelCheck, bundled_model_dir, resolve_model_path
from .classify import Classifier, Reject, SupportSet, batches
from .prediction import Prediction, flat_row, prediction_columns, record_rejected, run_header
from .tally import Tally

T = TypeVar("T")

#: The name a custom model's manifest gets on a worker (beside its ONNX file, as the manifest names it).
MANIFEST_NAME = "emdcli-model.json"


@dataclass(frozen=True)
class BatchJob:
    """Everything a worker needs to classify images as the driver would.

    classes: the fitted class node sets. matcher: how queries are scored. top_k: ranked classes
    per row. model_sha256: the sha256 of the driver's ONNX file. model_files: file name -> bytes of
    a custom model (manifest and ONNX), None for a bundled one (each worker uses its own
    installed copy, checked against ``model_sha256``). bundled_model: that bundled model's name
    (the stem of its manifest in ``weights/``). emdcli: the driver's version. base_dir: the
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
    bundled_model: str | None = None
    outliers: Rejection | None = field(default=None, repr=False)

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
    folder: LabelledFolder | Path,
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
    travels in the job; so does the open-set rejection, with ``reject``. A Path for ``folder`` is a
    fitted file (:mod:`emdcli.tasks.fitted`), read instead of fitting."""
    clf = Classifier(source, matcher)
    if isinstance(folder, Path):
        from .fitted import load_fitted

        support = load_fitted(folder, clf, reject).support
    else:
        support = clf.fit(folder, on_done, reject=reject)
    bundled = model.onnx_path.resolve().parent == bundled_model_dir().resolve()
    files = None
    if not bundled:
        files = {model.manifest.file: model.onnx_path.read_bytes(), MANIFEST_NAME: model.manifest_path.read_bytes()}
    job = BatchJob(
        classes=support.nodes, matcher=matcher, top_k=min(top_k, len(support.classes)), model_sha256=model.actual,
        model_name=model.manifest.name, model_files=files, device=device, rejection=support.rejection,
        bundled_model=model.manifest_path.stem if bundled else None, outliers=support.outliers,
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
        manifest = resolve_model_path(None)  # the default bundled model, unless the job names another
        if job.bundled_model is not None:
            manifest = bundled_model_dir() / f"{job.bundled_model}.json"
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
                hint="install the same emdcli version on every machine, or pass the model with `model`",
            )
        decoders = job.threads * job.lanes if job.threads and job.lanes else None  # one per core of the worker
        self._classifier = Classifier(FeatureSource(self.backbone, workers=decoders), job.matcher)
        self._support = SupportSet(nodes=job.classes, rejection=job.rejection, outliers=job.outliers)

    @property
    def decoding_threads(self) -> int:
        """How many threads decode this worker's images."""
        return self._classifier.source.workers

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


# a run's rows ------------------------------------------------------------------------------------

#: The rate after start-up (from the first rows received to the last) is reported only over at least
#: this many seconds: rows arrive a batch at a time, so a shorter span says nothing.
MIN_STEADY_SECONDS = 1.0


class RunTally:
    """The counts over the rows of a batch run (a :class:`~emdcli.tasks.tally.Tally`),
    and when the rows came (for start-up and throughput)."""

    def __init__(self, resumed: int, engine: str, open_set: bool = False) -> None:
        self.resumed, self.engine, self.open_set = resumed, engine, open_set
        self.counts = Tally()
        self.first_rows = 0
        self.workers: int | None = None  # None: the engine's default
        self.engine_started = time.perf_counter()
        self.first_row_at: float | None = None
        self.last_row_at: float | None = None

    @property
    def rows(self) -> int:
        return self.counts.total

    def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Count one finished batch of flat rows."""
        now = time.perf_counter()
        if self.first_row_at is None:
            self.first_row_at, self.first_rows = now, len(rows)
        for row in rows:
            score = row.get("open_set_score")
            self.counts.count(row["status"] == "ok", row["correct"], record_rejected(row),
                              None if score in (None, "") else float(score))  # fmt: skip
        self.last_row_at = now

    def summary(self) -> dict[str, Any]:
        end = time.perf_counter()
        after = self.rows - self.first_rows
        steady = (self.last_row_at or end) - (self.first_row_at or end)
        c = self.counts
        return {
            "rows": c.total, "classified": c.ok, "skipped": c.errors,
            "resumed": self.resumed, "engine": self.engine, "workers": self.workers,
            "labelled": c.labelled, "correct": c.correct,
            "accuracy": None if c.accuracy is None else round(c.accuracy, 6),
            "startup_seconds": round(self.first_row_at - self.engine_started, 3) if self.first_row_at else None,
            "rows_per_second": round(after / steady, 2) if after and steady >= MIN_STEADY_SECONDS else None,
            "seconds": round(end - self.engine_started, 3),
            **({"rejected": c.rejected} if self.open_set else {}),
        }  # fmt: skip
