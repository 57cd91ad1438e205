"""batch on Ray Data: the job's :class:`~emdcli.tasks.batch.BatchScorer` on an actor pool of 1-CPU workers.

    with ray_cluster(address=None, workers=2) as cluster:      # a local cluster, or RAY_ADDRESS / address
        for rows in run_ray(job, paths, cluster.workers):        # each finished batch's rows
            ...

Each worker holds the model once and classifies a task of at most 256 paths at a time
(:func:`~emdcli.tasks.batch.task_images`). Ray restarts a worker that dies and retries its task (``max_restarts=-1`` and
``max_task_retries=-1`` on the pool, Ray Data's defaults, kept), so a lost worker loses no row and
duplicates none. Rows come in the order
batches finish, not in input order. Needs ``pip install 'emdcli[ray]'``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EmdcliError, WorkerMismatchError, import_extra
from .batch import BatchJob, BatchScorer, query_sets, task_images

#: Object store of a local cluster started by emdcli, in bytes: rows are small, images never enter it.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2
#: Actors that may die while starting, one after another, before the job fails (a worker that
#: refuses the job, or cannot load the model, fails every time: stop early).
MAX_ACTOR_INIT_DEATHS = 2
#: What the driver looks for in a failure to tell a refusing worker from other errors.
_REFUSED = "emdcli worker refused the job"


def need_ray() -> Any:
    """The ray module (with ``ray.data`` loaded), or a UsageError (exit 2) saying how to install it."""
    import_extra("ray.data", "`engine` ray", "pip install 'emdcli[ray]', or use `engine` local")
    import ray

    return ray


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster a job runs on: its address, whether emdcli started it, and the workers to use."""

    address: str
    started_here: bool
    workers: tuple[int, int]
    cpus: float


@contextlib.contextmanager
def ray_cluster(address: str | None = None, workers: tuple[int, int] | None = None) -> Iterator[Cluster]:
    """Connect to the cluster at ``address`` (else ``$RAY_ADDRESS``), or start a local one for this run.

    A local cluster gets one logical CPU more than it has workers, so that Ray Data's read tasks
    never wait behind the 1-CPU actors (ray-project/ray#44687). workers: (min, max) actors; None:
    one per usable core (local) or per CPU of the cluster but one. The SIGTERM handler in place
    before (``ray.init`` replaces it) is put back, so SIGTERM still stops the run cleanly.
    """
    from ..model.backbone import usable_cores

    ray = need_ray()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None

    def restore_sigterm() -> None:
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)

    started_here = False
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS")
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
        try:
            if target:
                ray.init(address=target, **quiet)
            else:
                size = workers[1] if workers else usable_cores()
                ray.init(num_cpus=size + 1, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                         **quiet)  # fmt: skip
                started_here = True
        except BaseException as exc:  # also Ctrl-C or SIGTERM half-way: stop what was started
            started = _descendants()
            with contextlib.suppress(Exception):
                ray.shutdown()
            _kill(started)  # the raylet's agents outlive a half-started cluster's shutdown
            restore_sigterm()
            if in_main and isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:
                signal.raise_signal(signal.SIGTERM)  # ray.init's own handler exits 15: the one before decides
            if isinstance(exc, Exception) and target:
                raise EmdcliError(
                    f"cannot connect to the Ray cluster at {target} ({_first_line(exc)})",
                    hint="check the address ('ray status' on the head node prints it)",
                ) from None
            raise
        restore_sigterm()
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    if workers is None:
        n = usable_cores() if started_here else max(1, int(cpus) - 1)
        workers = (n, n)
    try:
        yield Cluster(ray.get_runtime_context().gcs_address, started_here, workers, cpus)
    finally:
        if started_here:
            ray.shutdown()
            restore_sigterm()


class RayScorer:
    """The callable class Ray Data puts on each actor: a :class:`BatchScorer` for the job in the
    object store (Ray does not resolve a reference given inside constructor kwargs, so it is
    fetched here)."""

    def __init__(self, job_ref: list[Any]) -> None:
        import ray

        job: BatchJob = ray.get(job_ref[0])
        self.scorer = BatchScorer(job.with_layout(threads=1, lanes=1))  # one CPU per actor
        from ..io.parquet import schema_for

        self.schema = schema_for(job.columns)

    def __call__(self, batch: Any) -> Any:
        """A pyarrow table with a ``path`` column -> a table of the rows (``job.columns``)."""
        import pyarrow as pa

        rows = self.scorer(batch.column("path").to_pylist())
        return pa.Table.from_pylist(rows, schema=self.schema)


def run_ray(
    job: BatchJob, paths: Sequence[str], workers: tuple[int, int], batch_size: int | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The job on Ray Data, inside :func:`ray_cluster`: yields the rows of each finished batch.

    Raises WorkerMismatchError when the workers refuse the job, EmdcliError when Ray fails otherwise.
    """
    ray = need_ray()
    from ray.data import ActorPoolStrategy, DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.max_consecutive_actor_init_deaths = MAX_ACTOR_INIT_DEATHS
    if not paths:
        return
    job_ref = ray.put(job)
    size = task_images(job, len(paths), workers[1], batch_size)
    blocks = len(query_sets(paths, size))  # Ray splits the items into blocks as query_sets does
    low, high = workers
    pool = ActorPoolStrategy(size=low) if low == high else ActorPoolStrategy(min_size=low, max_size=high)
    dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks).map_batches(
        RayScorer,
        fn_constructor_kwargs={"job_ref": [job_ref]},
        compute=pool,
        num_cpus=1,
        batch_size=None,  # a task is one block: batch_size rows at most (Ray would otherwise join two short blocks)
        batch_format="pyarrow",
    )
    try:
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            yield table.to_pylist()
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as exc:
        if os.environ.get("EMDCLI_DEBUG"):
            raise
        text = str(exc)
        if _REFUSED in text:
            line = next(line for line in text.splitlines() if _REFUSED in line)
            raise WorkerMismatchError(line[line.index(_REFUSED) :].strip()) from None
        raise EmdcliError(f"the Ray job failed: {_first_line(exc)}",
                          hint="run again with EMDCLI_DEBUG=1 for Ray's traceback") from None  # fmt: skip


def _descendants() -> set[int]:
    """The pids of every process started by this one (children, their children ...); empty where the
    system has no /proc."""
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with (
                    contextlib.suppress(OSError, ValueError, IndexError),
                    open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh,
                ):
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _kill(pids: set[int]) -> None:
    """SIGKILL to each of ``pids`` still running."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
