"""`emdcli batch` on this machine: throughput, start-up and memory of --engine local vs ray; a worker killed
mid-run; a run interrupted and resumed.

Runs the installed `emdcli batch` as a user would (a fresh process each time) in a temporary folder
holding a 5-way 5-shot support set (5 classes of DATA/openclipart, 5 images each, seeded) and a query
folder of ``--images`` images drawn (seeded) from the other sets of DATA, all symlinks; the queries
have none of the support's classes (this measures speed, not accuracy). Every run gets a fresh DEST,
the same feature cache (EMDCLI_CACHE_DIR in the temporary folder: the support set is embedded once,
by an untimed local warm-up run, which also warms the file cache and is the reference output below),
and no RAY_ADDRESS (so --engine ray always starts its own local cluster: one 1-CPU actor per core).

1. Throughput and start-up: ``--rounds`` rounds of ``batch --engine local`` and ``batch --engine ray``
   (Parquet output), the order alternating from round to round; each engine runs on the first half
   of the images (a list) and on all of them (the folder). rows/s after start-up: the extra rows
   over the extra wall time of the whole process, so start-up, the support set and shutdown cancel
   out. Beside it, what the summary line on stderr gives: start-up (from the engine's start, after
   the support set, to the first rows; for ray it includes ``ray.init()`` and the actors loading the
   model) and its own rows/s after it; rows / wall time; the peak memory of the whole process tree
   (the CLI and every process it started, Ray's GCS, raylet and workers included, sampled every
   0.1 s from /proc): the sum of RSS (shared pages counted in each process) and of PSS (shared pages
   split between the processes sharing them). Then the medians per engine, and the ratio ray / local
   of rows/s after start-up, per round (the runs of one round) and its median.
2. Fault: one ``--engine ray`` run to a JSONL file; as soon as its first rows are in the file (the
   hidden temporary file beside DEST), one ``ray::MapWorker`` process is killed (SIGKILL). Its output
   must hold every input path once, with the rows of the undisturbed local run (sorted by path;
   scores equal within 1e-6).
3. Resume: for each engine, a Parquet run interrupted with SIGINT (to the CLI process alone) 40% of
   the way from its first row to its last (as timed in the rounds: the summary line's time, less its
   seconds after start-up), then the same command with ``--resume``; the union is checked as in 2.
   Once more with --engine ray interrupted within ``ray.init()`` (as soon as the raylet's agents appear).

Processes the CLI started that still run 2 s after it exited are reported (and killed); so are runs
that exit otherwise than expected, with their stderr. Total time with the defaults: about 6 minutes
on 2 cores.

    python benchmarks/batch_bench.py [--data ../shared/data] [--images 2000] [--rounds 3]

Smaller runs (to check the script, not for figures): --images 200 --rounds 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUPPORT_SET = "openclipart"
WAYS, SHOTS = 5, 5
#: Seconds between two samples of the process tree.
SAMPLE_SECONDS = 0.1
#: How far from the first row to the last the resume test interrupts a run.
INTERRUPT_AT = 0.4
#: The processes the raylet starts while ``ray.init()`` waits for it to register: the resume test
#: interrupts a run as soon as one of them appears.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
#: Two scores that differ by no more than this are equal.
TOLERANCE = 1e-6
MAP_WORKER = "ray::MapWorker"
#: Runs that ended otherwise than expected: (what happened, the lines that show it).
SURPRISES: list[tuple[str, list[str]]] = []
RAY_NOISE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [A-Z] \d+ \d+\] \w+\.cc:\d+:|^\(raylet\)")
SUMMARY = re.compile(r"^\d+ rows? · .*engine ")
STARTUP = re.compile(r"start-up ([\d.]+) s")
RATE = re.compile(r"([\d.]+) rows/s after it")
SECONDS = re.compile(r"· ([\d.]+) s$")


# inputs -----------------------------------------------------------------------------------------


def build_inputs(data: Path, root: Path, images: int, seed: int) -> list[str]:
    """``root/support/CLASS/*`` (WAYS x SHOTS of SUPPORT_SET) and ``root/queries/SET/CLASS/*`` (``images``
    drawn from the other sets), as symlinks; the query paths as the CLI lists them (relative to root)."""
    rng = random.Random(seed)
    classes = sorted(p for p in (data / SUPPORT_SET).iterdir() if p.is_dir() and len(list(p.glob("*.png"))) >= SHOTS)
    for folder in rng.sample(classes, WAYS):
        for src in rng.sample(sorted(folder.glob("*.png")), SHOTS):
            link = root / "support" / folder.name / src.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
    others = sorted(p.name for p in data.iterdir() if p.is_dir() and p.name != SUPPORT_SET)
    pool = [p for name in others for p in sorted((data / name).rglob("*.png"))]
    if images > len(pool):
        sys.exit(f"--images {images}: the sets {', '.join(others)} hold only {len(pool)} images")
    paths = []
    for src in rng.sample(pool, images):
        rel = Path("queries") / src.relative_to(data)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(src)
        paths.append(rel.as_posix())
    return sorted(paths)


# the process tree -------------------------------------------------------------------------------


def _stat(pid: str) -> tuple[int, str] | None:
    """(ppid, start time) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[19]


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _name(pid: int) -> str:
    """A process's title (its command line's first word), else its name, and its state when not running."""
    stat = _read(f"/proc/{pid}/stat")
    state = stat[stat.rindex(")") + 2 :].split()[0] if ")" in stat else "?"
    title = _read(f"/proc/{pid}/cmdline").split("\0")[0] or _read(f"/proc/{pid}/comm").strip()
    return f"{title[:60]} (state {state})" if state not in "RS" else title[:60]


def _kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


class TreeMonitor(threading.Thread):
    """Samples a process and all its descendants every SAMPLE_SECONDS: peak summed RSS and PSS, and the
    pids of Ray's MapWorker actors with when each was first seen. A process once seen stays tracked
    (by pid and start time) after its parent exits, so that a daemon re-parented to init still counts."""

    def __init__(self, root: int, t0: float) -> None:
        super().__init__(daemon=True)
        self.root, self.t0 = root, t0
        self.known: dict[int, str] = {}  # pid -> start time
        self.workers: dict[int, float] = {}  # MapWorker pid -> first seen (s since t0)
        self.agent_seen: float | None = None  # when a Ray agent was first seen (ray.init() under way)
        self.peak_rss = self.peak_pss = 0  # KiB
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def alive(self) -> dict[int, str]:
        """The tracked processes still running (same pid and start time), the root's descendants included."""
        stats = {int(d): s for d in os.listdir("/proc") if d.isdigit() and (s := _stat(d)) is not None}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo = [self.root] if self.root in stats else []
        while todo:
            pid = todo.pop()
            self.known.setdefault(pid, stats[pid][1])
            todo.extend(children.get(pid, ()))
        return {pid: start for pid, start in self.known.items() if pid in stats and stats[pid][1] == start}

    def sample(self) -> None:
        now = time.perf_counter() - self.t0
        rss = pss = 0
        for pid in self.alive():
            rss += _kib(_read(f"/proc/{pid}/status"), "VmRSS:")
            pss += _kib(_read(f"/proc/{pid}/smaps_rollup"), "Pss:")
            if pid not in self.workers:
                title = _read(f"/proc/{pid}/cmdline").split("\0")[0]
                if title.startswith(MAP_WORKER):
                    self.workers[pid] = now
                elif self.agent_seen is None and title in RAY_AGENTS:
                    self.agent_seen = now
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def live_workers(self) -> list[int]:
        alive = self.alive()
        return sorted(pid for pid in self.workers if pid in alive)


# one run of the CLI -----------------------------------------------------------------------------


@dataclass
class Run:
    """One `emdcli batch` process: its exit code, wall time, stderr lines (seconds since start, text),
    the summary line's figures, the tree's peak memory, MapWorker pids, leftover processes."""

    args: list[str]
    proc: subprocess.Popen[bytes]
    t0: float
    monitor: TreeMonitor
    lines: list[tuple[float, str]] = field(default_factory=list)
    code: int | None = None
    wall: float = 0.0
    leftover: int = 0
    leftover_names: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append((time.perf_counter() - self.t0, raw.decode(errors="replace").rstrip()))

    def finish(self) -> Run:
        """Wait for the end; then count (and kill) what the CLI started and still runs 2 s later (zombies
        left out)."""
        self.code = self.proc.wait()
        self.wall = time.perf_counter() - self.t0
        if self.reader is not None:
            self.reader.join()
        self.monitor.stop()
        for _ in range(20):
            left = [pid for pid in self.monitor.alive() if pid != self.proc.pid and "(state Z)" not in _name(pid)]
            if not left:
                break
            time.sleep(0.1)
        self.leftover = len(left)
        self.leftover_names = sorted(_name(pid) for pid in left)
        for pid in left:  # started by this run, outlived it
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return self

    @property
    def summary(self) -> tuple[float, str] | None:
        return next(((t, s) for t, s in self.lines if SUMMARY.match(s)), None)

    def figure(self, pattern: re.Pattern[str]) -> float | None:
        found = self.summary and pattern.search(self.summary[1])
        return float(found.group(1)) if found else None

    @property
    def rows_window(self) -> tuple[float, float] | None:
        """(first row, last row) in seconds since the start: the summary line's time less its seconds
        after start-up, and the summary line's time."""
        seconds, startup = self.figure(SECONDS), self.figure(STARTUP)
        if self.summary is None or seconds is None or startup is None:
            return None
        return self.summary[0] - (seconds - startup), self.summary[0]

    def noise(self) -> list[str]:
        return [s for _, s in self.lines if s and not SUMMARY.match(s)]

    def expect(self, what: str, *codes: int) -> Run:
        """Note this run for the end of the report when its exit code is not one of ``codes`` (with its
        stderr but Ray's noise), or when processes it started outlived it (with their titles)."""
        if self.code not in codes:
            lines = [s for s in self.noise() if not RAY_NOISE.search(s)]
            SURPRISES.append((f"{what}: exit {self.code}, expected {' or '.join(map(str, codes))}; its stderr:", lines))
        if self.leftover:
            SURPRISES.append((f"{what}: exit {self.code}; still running 2 s after it exited:", self.leftover_names))
        return self


def emdcli_exe() -> str:
    exe = Path(sys.executable).with_name("emdcli")
    return str(exe) if exe.exists() else sys.exit(f"no emdcli next to {sys.executable}: pip install -e . first")


def start(root: Path, args: list[str]) -> Run:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["EMDCLI_CACHE_DIR"] = str(root / "cache")
    cmd = [emdcli_exe(), "batch", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    monitor = TreeMonitor(proc.pid, t0)
    monitor.start()
    run = Run(args, proc, t0, monitor)
    run.reader = threading.Thread(target=run.read_stderr, daemon=True)
    run.reader.start()
    return run


def batch_args(engine: str, dest: str, batch_size: int | None, *extra: str, source: str = "queries") -> list[str]:
    size = ["--task-size", str(batch_size)] if batch_size and engine == "ray" else []  # Ray's task size
    return ["support", source, "-o", dest, "--engine", engine, *size, *extra]


# outputs ----------------------------------------------------------------------------------------


def read_rows(dest: Path) -> list[dict[str, Any]]:
    """The rows of a Parquet folder (its parts) or a JSONL file (or its .partial)."""
    if dest.suffix == ".jsonl":
        text = dest.read_text(encoding="utf-8") if dest.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    import pyarrow.parquet as pq

    return [row for part in sorted(dest.glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= TOLERANCE
    return bool(a == b)


def compare(rows: list[dict[str, Any]], reference: list[dict[str, Any]], paths: list[str]) -> dict[str, int]:
    """Rows, distinct paths, input paths missing, paths not in the input, duplicate rows, and rows that
    differ from the reference's row for their path (any column; scores within TOLERANCE)."""
    by_path: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: str(r["path"])):
        by_path.setdefault(str(row["path"]), row)
    ref = {str(r["path"]): r for r in reference}
    differ = 0
    for path, row in by_path.items():
        other = ref.get(path)
        if other is None or row.keys() != other.keys() or not all(same(row[k], other[k]) for k in row):
            differ += 1
    expected = set(paths)
    return {
        "rows": len(rows), "distinct": len(by_path), "missing": len(expected - by_path.keys()),
        "extra": len(by_path.keys() - expected), "duplicates": len(rows) - len(by_path), "differ": differ,
    }  # fmt: skip


def verdict(c: dict[str, int], total: int) -> str:
    ok = c["distinct"] == total and not (c["missing"] or c["extra"] or c["duplicates"] or c["differ"])
    return "complete, identical" if ok else "**NOT complete or not identical**"


# the measurements -------------------------------------------------------------------------------


CHECKS = ("rows", "distinct paths", "missing", "not in input", "duplicates", "differ from local run")


def head(*columns: str) -> None:
    """A Markdown table's header and separator."""
    print(f"| {' | '.join(columns)} |")
    print("|" + "---|" * len(columns))


def row(*cells: Any) -> None:
    """A Markdown table's row."""
    print(f"| {' | '.join(str(c) for c in cells)} |", flush=True)


def checks(c: dict[str, int]) -> list[int]:
    """The cells of CHECKS."""
    return [c["rows"], c["distinct"], c["missing"], c["extra"], c["duplicates"], c["differ"]]


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def median(values: list[float | None]) -> float | None:
    have = [v for v in values if v is not None]
    return statistics.median(have) if have else None


def throughput(root: Path, rounds: int, batch_size: int | None, paths: list[str]) -> dict[str, list[Run]]:
    n, half = len(paths), len(paths) // 2
    (root / "half.txt").write_text("".join(f"{p}\n" for p in paths[:half]))
    print(f"\n## 1. Throughput, start-up and memory, local vs ray ({n} images, Parquet output)\n")
    print(
        f"Each engine runs on the first {half} images (a list) and on all {n} (the folder), one fresh process "
        f"each. rows/s after start-up: the extra {n - half} rows over the extra wall time of the whole process "
        "(start-up, the support set and shutdown cancel out); the summary line's own figure (rows after the "
        "first batch received over the time to the last) is beside it. Start-up: from the summary line (engine "
        "start to the first rows; for ray, ray.init() and the workers loading the model). Peak memory: the "
        f"process tree of the {n}-image run, RSS summed (shared pages in every process) and PSS summed, MiB.\n"
    )
    head("round", "engine", "exit", f"wall s, {half}", f"wall s, {n}", "start-up s", "rows/s after start-up",
         "summary's rows/s after it", "rows/s end to end", "peak RSS MiB", "peak PSS MiB",
         "ray / local rows/s after start-up")  # fmt: skip
    runs: dict[str, list[Run]] = {"local": [], "ray": []}
    halves: dict[str, list[Run]] = {"local": [], "ray": []}
    marginal: dict[str, list[float | None]] = {"local": [], "ray": []}
    for rnd in range(1, rounds + 1):
        order = ("local", "ray") if rnd % 2 else ("ray", "local")
        for i, engine in enumerate(order):
            part = start(root, batch_args(engine, f"r{rnd}-{engine}-half", batch_size, source="half.txt")).finish()
            part.expect(f"round {rnd}, --engine {engine}, {half} images", 0)
            run = start(root, batch_args(engine, f"r{rnd}-{engine}", batch_size)).finish()
            run.expect(f"round {rnd}, --engine {engine}", 0)
            runs[engine].append(run)
            halves[engine].append(part)
            extra = run.wall - part.wall
            marginal[engine].append((n - half) / extra if extra > 0 else None)
            ratio = ""
            if i == 1:
                local, ray = marginal["local"][-1], marginal["ray"][-1]
                ratio = fmt(ray / local, ".2f") if local and ray else "-"
            row(rnd, engine, run.code, f"{part.wall:.1f}", f"{run.wall:.1f}", fmt(run.figure(STARTUP)),
                fmt(marginal[engine][-1]), fmt(run.figure(RATE)), f"{n / run.wall:.1f}",
                f"{run.monitor.peak_rss / 1024:.0f}", f"{run.monitor.peak_pss / 1024:.0f}", ratio)  # fmt: skip
    print(f"\nMedians over {rounds} round(s):\n")
    head("engine", f"wall s, {half}", f"wall s, {n}", "start-up s", "rows/s after start-up",
         "summary's rows/s after it", "rows/s end to end", "peak RSS MiB", "peak PSS MiB")  # fmt: skip
    for engine, done in runs.items():
        row(engine, fmt(median([r.wall for r in halves[engine]])), fmt(median([r.wall for r in done])),
            fmt(median([r.figure(STARTUP) for r in done])), fmt(median(marginal[engine])),
            fmt(median([r.figure(RATE) for r in done])), fmt(median([n / r.wall for r in done])),
            fmt(median([r.monitor.peak_rss / 1024 for r in done]), ".0f"),
            fmt(median([r.monitor.peak_pss / 1024 for r in done]), ".0f"))  # fmt: skip
    ratios = [ray / local for local, ray in zip(marginal["local"], marginal["ray"], strict=True) if local and ray]
    med = median(ratios)
    goal = "" if med is None else (" (goal >= 0.9: met)" if med >= 0.9 else " (goal >= 0.9: NOT met)")
    print(f"\nMedian ratio ray / local of rows/s after start-up (per round): {fmt(med, '.2f')}{goal}")
    return runs


def fault(root: Path, batch_size: int | None, reference: list[dict[str, Any]], paths: list[str]) -> None:
    print("\n## 2. Fault: one Ray worker killed (SIGKILL) once the first rows are written\n")
    dest = root / "fault.jsonl"
    run = start(root, batch_args("ray", dest.name, batch_size))
    killed, at, rows_then = None, None, 0
    while run.proc.poll() is None and killed is None:
        tmp = next(iter(root.glob(f".{dest.name}.*.tmp")), None)
        rows_then = _read(str(tmp)).count("\n") if tmp else 0
        workers = run.monitor.live_workers()
        if rows_then and workers:
            killed, at = workers[0], time.perf_counter() - run.t0
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    run.finish().expect("fault test, --engine ray", 0)
    new = sorted(pid for pid, seen in run.monitor.workers.items() if at is not None and seen > at)
    c = compare(read_rows(dest), reference, paths)
    head("killed pid", "at s", "rows written then", "restarted (new MapWorker pids)", "exit", "wall s", *CHECKS,
         "leftover processes")  # fmt: skip
    restarted = f"yes ({', '.join(map(str, new))})" if new else "no"
    row(killed or "none (the run ended first)", fmt(at), rows_then, restarted, run.code, f"{run.wall:.1f}",
        *checks(c), run.leftover)  # fmt: skip
    print(f"\nOutput of {len(paths)} input paths: {verdict(c, len(paths))}.")


def resume(
    root: Path, batch_size: int | None, reference: list[dict[str, Any]], paths: list[str], runs: dict[str, list[Run]]
) -> None:
    print("\n## 3. Resume: a run interrupted by SIGINT, then the same command with --resume\n")
    print(
        f"SIGINT goes to the CLI process alone. Mid-run: {INTERRUPT_AT:.0%} of the way from the first row to the "
        "last as timed in the rounds of section 1 (medians: the first row at the summary line's time less its "
        "seconds after start-up, the last at the summary line's time). In ray.init(): as soon as the raylet's "
        f"agents ({', '.join(RAY_AGENTS)}) appear. Leftover processes: what the CLI started and "
        "still ran 2 s after it exited (interrupted run + resume).\n"
    )
    head("engine", "SIGINT", "at s", "exit", "wall s", "rows kept", "resume exit", "rows added", *CHECKS,
         "leftover processes", "result")  # fmt: skip
    cases: list[tuple[str, str, float | None]] = []
    for engine, done in runs.items():
        windows = [w for r in done if (w := r.rows_window) is not None]
        first, last = median([w[0] for w in windows]), median([w[1] for w in windows])
        if first is None or last is None:
            row(engine, "mid-run", "no summary line in the rounds to time it", *[""] * 14)
        else:
            cases.append((engine, "mid-run", first + INTERRUPT_AT * (last - first)))
    cases.append(("ray", "in ray.init()", None))
    for i, (engine, moment, when) in enumerate(cases):
        dest = root / f"resume-{i}-{engine}"
        run = start(root, batch_args(engine, dest.name, batch_size))
        sent = None
        while run.proc.poll() is None and sent is None:
            now = time.perf_counter() - run.t0
            if (when is not None and now >= when) or (when is None and run.monitor.agent_seen is not None):
                run.proc.send_signal(signal.SIGINT)
                sent = now
            time.sleep(0.02)
        what = f"resume test, --engine {engine}, SIGINT {moment}"
        run.finish().expect(f"{what}, the run interrupted", 130)
        kept = len(read_rows(dest))
        again = start(root, batch_args(engine, dest.name, batch_size, "--resume")).finish()
        again.expect(f"{what}, --resume", 0)
        rows = read_rows(dest)
        c = compare(rows, reference, paths)
        row(engine, moment, fmt(sent), run.code, f"{run.wall:.1f}", kept, again.code, len(rows) - kept, *checks(c),
            f"{run.leftover} + {again.leftover}", verdict(c, len(paths)))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--images", type=int, default=2000, help="query images, drawn from the sets but openclipart")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of --engine local and ray")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="--engine ray's --task-size, images per task (default: the CLI's)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="seed of the choice of support and query images")
    ap.add_argument("--skip-fault", action="store_true", help="leave out the fault test (2)")
    ap.add_argument("--skip-resume", action="store_true", help="leave out the resume test (3)")
    args = ap.parse_args()
    if args.images < 1 or args.rounds < 1:
        ap.error("--images and --rounds must be at least 1")
    cmd = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    with tempfile.TemporaryDirectory(prefix="emdcli-batch-bench-") as tmp:
        root = Path(tmp)
        paths = build_inputs(args.data.resolve(), root, args.images, args.seed)
        print(f"`{cmd}`\n")
        print(
            f"Machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable); {args.images} query images "
            f"(symlinks, drawn from the sets but {SUPPORT_SET}), {WAYS}-way {SHOTS}-shot support ({SUPPORT_SET}); "
            f"{args.rounds} round(s); batch size {args.batch_size or 'the CLI default'}; seed {args.seed}.",
            flush=True,
        )
        warm = start(root, batch_args("local", "reference", args.batch_size)).finish()
        reference = read_rows(root / "reference")
        if warm.code != 0 or len(reference) != len(paths):
            sys.exit(f"the warm-up (reference) run failed: exit {warm.code}\n" + "\n".join(s for _, s in warm.lines))
        runs = throughput(root, args.rounds, args.batch_size, paths)
        if not args.skip_fault:
            fault(root, args.batch_size, reference, paths)
        if not args.skip_resume:
            resume(root, args.batch_size, reference, paths, runs)
        noise = sorted({re.sub(r"\d", "N", s)[:110] for rs in runs.values() for r in rs for s in r.noise()})
        if noise:
            print("\nOther lines on stderr in section 1 (digits as N, cut at 110 characters):\n")
            print("\n".join(f"    {line}" for line in noise))
        if SURPRISES:
            print("\nRuns that ended otherwise than expected:")
            for what, lines in SURPRISES:
                print(f"\n- {what}\n")
                print("\n".join(f"      {line}" for line in lines) or "      (nothing)")
    return 0


if __name__ == "__main__":
    from common import publish

    with publish("batch_bench", "--batch-size=tasks{}"):
        raise SystemExit(main())
