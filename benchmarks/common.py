"""Shared by the benchmarks (run as scripts from this folder): `publish`, which records a run's
output in benchmarks/results/, and the setup of the retrieval and anomaly benchmarks."""

from __future__ import annotations

import contextlib
import io
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

if TYPE_CHECKING:
    from emdcli.features.source import FeatureSource
    from emdcli.model.backbone import Backbone

#: The repository's root (this file is benchmarks/common.py).
REPO = Path(__file__).resolve().parents[1]
#: Environment variable naming another folder for the results files (tests use it).
RESULTS_DIR_ENV = "EMDCLI_RESULTS_DIR"


def cached_source() -> tuple[Backbone, FeatureSource]:
    """The bundled model on one CPU thread, and a feature source over it that caches the
    features of every image it embeds (up to 2 GiB)."""
    from emdcli.features.cache import FeatureCache
    from emdcli.features.source import FeatureSource
    from emdcli.model.backbone import Backbone
    from emdcli.model.manifest import resolve_model_path

    backbone = Backbone(resolve_model_path(None), device="cpu", threads=1)
    cache = FeatureCache.for_model(backbone.manifest, max_bytes=2**31)
    return backbone, FeatureSource(backbone, cache=cache)


def set_names(data: Path, subset: str) -> list[str]:
    """The image sets under ``data`` (folders), or those of them in comma-separated ``subset``."""
    names = sorted(p.name for p in data.iterdir() if p.is_dir())
    return [n for n in names if n in subset.split(",")] if subset else names


def embed_set(source: FeatureSource, root: Path) -> tuple[tuple[Path, ...], np.ndarray, np.ndarray]:
    """Paths, labels (N,) and (N, C, H, W) feature maps of the readable images under ``root``."""
    from emdcli.io.folders import read_labelled_folder

    data = source.labelled(read_labelled_folder(root))
    if data.skipped:
        print(f"# {root.name}: {len(data.skipped)} unreadable image(s) left out", file=sys.stderr)
    assert data.features is not None, f"{root}: no readable image"
    return data.paths, data.labels, data.features


def difference_text(x: np.ndarray) -> str:
    """Mean of paired differences ``x`` (fractions) ± its 95% half-interval, in points."""
    from emdcli.tasks.evaluate import mean_ci95

    mean, half = mean_ci95(x)
    return f"{100 * mean:+.1f} ± {100 * half:.1f}"


def earlier_tree(revision: str, into: Path) -> tuple[Path, str]:
    """The ``emdcli`` package of an earlier commit, extracted under ``into/before`` with the checkout's
    ``weights`` linked beside it (run it with ``PYTHONPATH`` set to the folder), and the commit's short
    name. Its bytecode and this checkout's are compiled, so that neither tree pays for compiling in a
    timed run (``PYTHONDONTWRITEBYTECODE`` would otherwise make every run compile)."""
    repo = Path(__file__).resolve().parents[1]
    before = into / "before"
    before.mkdir()
    archive = subprocess.run(["git", "archive", revision, "emdcli"], cwd=repo, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    (before / "weights").symlink_to(repo / "weights")
    short = subprocess.run(["git", "rev-parse", "--short", revision], cwd=repo, check=True, capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    for tree in (before, repo):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "emdcli")], check=True)
    return before, short


def timed_run(tree: Path, args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``python -m emdcli ARGS`` run from ``tree`` as a fresh process (output dropped)."""
    import time

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "emdcli", *args], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def command_line() -> str:
    """How this benchmark was run, quoted for a shell."""
    return " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv])


def results_dir() -> Path:
    """Where `publish` writes: benchmarks/results, or the folder $EMDCLI_RESULTS_DIR names."""
    return Path(os.environ.get(RESULTS_DIR_ENV) or REPO / "benchmarks" / "results")


def results_name(base: str, *variant: str, argv: list[str] | None = None) -> str:
    """``base`` with the run's variant appended: for each ``"--flag"`` given on the command line,
    ``_VALUE``; for ``"--flag=FORMAT"``, ``_`` + FORMAT with ``{}`` replaced by the value (a FORMAT
    without ``{}`` marks a flag without a value). Flags not given add nothing.

    >>> results_name("open_set", "--phase", "--shots={}shot", argv=["x.py", "--phase", "report", "--shots=1"])
    'open_set_report_1shot'
    """
    args = sys.argv[1:] if argv is None else argv[1:]
    parts = [base]
    for spec in variant:
        flag, _, fmt = spec.partition("=")
        fmt = fmt or "{}"
        for i, arg in enumerate(args):
            if "{}" not in fmt and arg == flag:
                parts.append(fmt)
            elif "{}" in fmt and arg.startswith(flag + "="):
                parts.append(fmt.format(arg.split("=", 1)[1]))
            elif "{}" in fmt and arg == flag and i + 1 < len(args):
                parts.append(fmt.format(args[i + 1]))
            else:
                continue
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts))


def scrub(text: str) -> str:
    """``text`` with the paths of this machine replaced: the repository's root by ``.``, the
    temporary folder by ``<tmp>``, the home folder by ``<home>``."""
    places = [(REPO, "."), (Path(tempfile.gettempdir()), "<tmp>"), (Path("/tmp"), "<tmp>"), (Path.home(), "<home>")]
    for path, placeholder in places:
        for form in dict.fromkeys((str(path), str(path.resolve()))):
            if len(form) > 1:
                text = re.sub(re.escape(form) + r"(?![\w.-])", placeholder, text)
    return text


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(*packages: str) -> str:
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
    return "not installed"


def run_header(name: str, argv: list[str] | None = None) -> str:
    """The header `publish` writes above a run's output: command, date, commit, machine, versions."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve() if argv and argv[0] else Path("?")
    shown = script.relative_to(REPO).as_posix() if script.is_relative_to(REPO) else script.name
    command = " ".join(shlex.quote(a) for a in ["python", shown, *argv[1:]])
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if commit != "unknown" and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+changes"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    system = f"{platform.system()} {platform.machine()}".strip()
    lines = [
        f"# {name}",
        "",
        f"- Command: `{command}`",
        f"- Recorded: {date}, commit {commit}",
        f"- Machine: {os.cpu_count()} cores, {_cpu_model()}, {system}",
        f"- Python {platform.python_version()}, onnxruntime {_version('onnxruntime', 'onnxruntime-gpu')}",
        "- Written by `benchmarks/common.py`'s `publish` from what the script printed on stdout; paths of "
        "the machine replaced (the repository's root by `.`, the temporary folder by `<tmp>`, the home "
        "folder by `<home>`)",
    ]
    return scrub("\n".join(lines)) + "\n"


def fenced(text: str) -> str:
    """``text`` in a fenced block whose fence is longer than any run of backticks in it."""
    runs = [len(m) for m in re.findall(r"`{3,}", text)]
    fence = "`" * max([3, *(n + 1 for n in runs)])
    body = text.rstrip("\n")
    return f"{fence}text\n{body}\n{fence}\n"


class _Tee(io.TextIOBase):
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


@contextlib.contextmanager
def publish(name: str, *variant: str) -> Iterator[None]:
    """Record what the block prints on stdout in benchmarks/results/NAME.md (``variant``: see
    `results_name`), under a header made by `run_header`. The output still goes to stdout as it
    comes. The file is written at the end, atomically, and only if the block ends normally or by
    ``SystemExit`` with status 0: a failed or interrupted run leaves the previous file in place.
    Output of child processes that write to the file descriptor directly is not captured."""
    name = results_name(name, *variant)
    tee = _Tee(sys.stdout)
    sys.stdout = tee  # type: ignore[assignment]
    ok = False
    try:
        yield
        ok = True
    except SystemExit as stop:
        ok = stop.code in (0, None)
        raise
    finally:
        sys.stdout = tee.stream
        if ok:
            folder = results_dir()
            folder.mkdir(parents=True, exist_ok=True)
            from emdcli.io.files import atomic_write

            with atomic_write(folder / f"{name}.md") as f:
                f.write(run_header(name) + "\n" + fenced(scrub(tee.copy.getvalue())))
            print(f"# results written to {scrub(str(folder / (name + '.md')))}", file=sys.stderr)
