"""``emdcli batch --engine ray``: one local Ray cluster for these tests (started once, shut down at the
end), the same rows as the local engine, a Parquet manifest as INPUT, the workers' refusal of a
mismatched job, a worker killed mid-batch, and an interrupted run resumed.

Named pipes among the inputs hold a batch mid-way (its image is read only when the test writes
it), so the tests act mid-run without timing guesses. Each test has a timeout, so a hang fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from emdcli.cli import app

from .conftest import make_folder

ray = pytest.importorskip("ray", reason="the Ray engine needs Ray: pip install 'emdcli[ray]'")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds Ray's workers through /proc (Linux)"),
]
runner = CliRunner()
WAIT = 120.0
#: The process title of a Ray Data actor running emdcli's scorer.
WORKER_TITLE = "ray::MapWorker(MapBatches(RayScorer))"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster (2 worker CPUs and one for Ray Data's read tasks); its address."""
    before = signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=3, include_dashboard=False, object_store_memory=128 * 1024**2, log_to_driver=False)
    signal.signal(signal.SIGTERM, before)  # ray.init replaces it
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, before)


def batch(tiny_model: Path, support: Path, source: Path, dest: Path, *rest: Any) -> Any:
    """batch in many small tasks (of 2 images, each a set of queries), on either engine; the fault and
    resume tests match each query alone (--no-transductive), so that their rows compare with an
    undisturbed run's whatever the sets."""
    mode = [] if "--transductive" in rest else ["--no-transductive"]
    args = ["batch", support, source, "-o", dest, "--model", tiny_model, "--task-size", "2", *mode, *rest]
    return runner.invoke(app, [str(a) for a in args])


def start(tiny_model: Path, support: Path, source: Path, dest: Path, address: str, *rest: str) -> Any:
    """The CLI in a subprocess, on the test cluster."""
    cmd = [sys.executable, "-m", "emdcli", "batch", str(support), str(source), "-o", str(dest),
           "--model", str(tiny_model), "--task-size", "2", "--engine", "ray", "--address", address,
           "--no-transductive", *rest]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def rows_of(dest: Path) -> list[dict[str, Any]]:
    return sorted(pq.read_table(dest).to_pylist(), key=lambda r: r["path"])


def workers() -> list[int]:
    """The pids of the processes running emdcli's scorer as Ray actors."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith(WORKER_TITLE):
                found.append(int(entry.name))
    return found


def holder_of(path: Path) -> int | None:
    """The worker with ``path`` open, if any."""
    for pid in workers():
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == str(path):
                    return pid
            except OSError:
                continue
    return None


def wait_for(condition: Any, what: str, seconds: float = WAIT) -> Any:
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


@pytest.fixture()
def many(tmp_path: Path) -> list[str]:
    folder = make_folder(tmp_path / "many", {"red": 8, "green": 8, "blue": 8}, seed=3)
    return sorted(str(p) for p in folder.rglob("*.png"))


@pytest.mark.parametrize("mode", ["--transductive", "--no-transductive"])
def test_ray_rows_equal_the_local_engine_rows(
    cluster: str, tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path, mode: str
) -> None:
    """Transductive: the same sets of queries (tasks of 2) on both engines, so the same rows."""
    (query_dir / "red" / "broken.png").write_bytes(b"not a png")
    local = batch(tiny_model, support_dir, query_dir, tmp_path / "local", mode)
    on_ray = batch(tiny_model, support_dir, query_dir, tmp_path / "ray", "--engine", "ray", mode)
    assert local.exit_code == 0 and on_ray.exit_code == 0, on_ray.output
    assert "engine ray, 2 workers" in on_ray.stderr
    mine, theirs = rows_of(tmp_path / "ray"), rows_of(tmp_path / "local")
    assert len(mine) == 7 and len({r["path"] for r in mine}) == 7
    assert mine == theirs
    assert sum(r["status"] == "error" for r in mine) == 1


def test_a_parquet_manifest_on_ray(cluster: str, tiny_model: Path, support_dir: Path, many: list[str],
                                   tmp_path: Path) -> None:  # fmt: skip
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"path": many}), manifest)
    res = batch(tiny_model, support_dir, manifest, tmp_path / "out", "--engine", "ray", "--workers", "1-2")
    assert res.exit_code == 0, res.output
    rows = rows_of(tmp_path / "out")
    assert [r["path"] for r in rows] == many
    assert all(r["correct"] for r in rows)


def test_workers_refuse_a_job_of_another_version_fast(cluster: str, tiny_model: Path, support_dir: Path,
                                                      many: list[str]) -> None:  # fmt: skip
    from emdcli.errors import WorkerMismatchError
    from emdcli.features.source import FeatureSource
    from emdcli.io.folders import read_labelled_folder
    from emdcli.matching.support import Matcher
    from emdcli.model.backbone import load_model
    from emdcli.tasks.batch import fit_job
    from emdcli.tasks.ray_engine import run_ray

    backbone = load_model(tiny_model)
    job, _ = fit_job(read_labelled_folder(support_dir), FeatureSource(backbone), Matcher(), backbone.check, top_k=2)
    started = time.monotonic()
    with pytest.raises(WorkerMismatchError, match=r"worker refused the job: this worker runs emdcli .*driver 9\.9"):
        list(run_ray(replace(job, emdcli="9.9.9"), many, (2, 2), 2))
    assert time.monotonic() - started < 60
    with pytest.raises(WorkerMismatchError, match="has sha256"):
        list(run_ray(replace(job, model_sha256="f" * 64), many, (1, 1), 2))


def test_a_worker_killed_mid_batch_loses_and_repeats_nothing(
    cluster: str, tiny_model: Path, support_dir: Path, many: list[str], tmp_path: Path
) -> None:
    fifo = tmp_path / "held.png"
    os.mkfifo(fifo)
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join([*many[:6], str(fifo), *many[6:]]) + "\n")
    proc = start(tiny_model, support_dir, listing, tmp_path / "out", cluster)
    release = threading.Event()

    def hold() -> None:  # the pipe stays open, and empty, until released
        with open(fifo, "wb"):
            release.wait(WAIT)

    threading.Thread(target=hold, daemon=True).start()
    victim = wait_for(lambda: holder_of(fifo), "a worker to read the pipe")
    os.kill(victim, signal.SIGKILL)  # the worker dies in the middle of its batch
    retried = wait_for(lambda: holder_of(fifo) not in (None, victim) and holder_of(fifo), "the batch to be retried")
    release.set()
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err.decode()
    assert victim not in workers() and retried != victim
    rows = rows_of(tmp_path / "out")
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted([*many, str(fifo)])  # every input exactly once
    listing.with_name("undisturbed.txt").write_text("\n".join(many) + "\n")
    assert batch(tiny_model, support_dir, listing.with_name("undisturbed.txt"), tmp_path / "ref").exit_code == 0
    assert [r for r in rows if r["path"] != str(fifo)] == rows_of(tmp_path / "ref")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_ray_run_is_resumed_to_the_same_rows(
    cluster: str, tiny_model: Path, support_dir: Path, many: list[str], tmp_path: Path, sig: int, code: int
) -> None:
    fifo = tmp_path / "held.png"
    os.mkfifo(fifo)
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join([*many[:10], str(fifo), *many[10:]]) + "\n")
    dest = tmp_path / "out"
    proc = start(tiny_model, support_dir, listing, dest, cluster)
    release = threading.Event()

    def hold() -> None:
        with open(fifo, "wb"):
            release.wait(WAIT)

    threading.Thread(target=hold, daemon=True).start()
    wait_for(lambda: holder_of(fifo), "a worker to read the pipe")
    time.sleep(1.0)  # the batches before the pipe's reach the driver (if none did, the resume does them all)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=WAIT)
    release.set()
    assert proc.returncode == code, err.decode()
    kept = rows_of(dest) if list(dest.glob("part-*.parquet")) else []
    assert len(kept) < len(many) + 1 and str(fifo) not in {r["path"] for r in kept}
    assert not kept or f"{len(kept)} rows of this run were kept in" in err.decode()
    fifo.unlink()
    make_folder(tmp_path / "swap", {"red": 1}, seed=9)
    os.replace(tmp_path / "swap" / "red" / "img_0.png", fifo)  # now a readable image
    resumed = batch(tiny_model, support_dir, listing, dest, "--engine", "ray", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert f"{len(many) + 1 - len(kept)} rows" in resumed.stderr
    assert batch(tiny_model, support_dir, listing, tmp_path / "full").exit_code == 0
    assert rows_of(dest) == rows_of(tmp_path / "full")


def descendants(pid: int) -> dict[int, str]:
    """The processes below ``pid`` and their titles."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {p: titles.get(p, "") for p in found}


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_local_cluster_starts_leaves_no_process(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path, sig: int, code: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Ray's agents outlive ``ray.shutdown()`` of a half-started cluster; emdcli stops them itself."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cmd = [sys.executable, "-m", "emdcli", "batch", str(support_dir), str(query_dir), "-o", str(tmp_path / "out"),
           "--model", str(tiny_model), "--engine", "ray"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    agents = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
    started = wait_for(lambda: (d := descendants(proc.pid)) and any(t.startswith(agents) for t in d.values()) and d,
                       "the local cluster's agents to start")  # fmt: skip
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == code, err.decode()
    # at once: left alone, the agents notice the raylet is gone only after a minute or more
    wait_for(lambda: not any(_running(p) for p in started), "every process to end", seconds=10)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to read its status does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
