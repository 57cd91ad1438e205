"""What every command shares: the option definitions, stderr messages, and the session set-up
(settings, backbone, feature source, matcher, progress bars).

Only light modules are imported here, so that ``emdcli --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

from .. import defaults
from ..config import Settings, load_settings
from ..errors import EmdcliError

if TYPE_CHECKING:
    from rich.progress import Progress

    from ..features.source import FeatureSource
    from ..matching.support import Matcher
    from ..model.backbone import Backbone

DeviceName = Literal["auto", "cpu", "cuda"]
FormatName = Literal["table", "csv", "json", "jsonl"]
MetricName = Literal["cosine", "l2"]
KshotName = Literal["mean", "sfc"]


# stderr -------------------------------------------------------------------------------------


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    """``Warning: message`` on stderr."""
    stderr_console().print(f"[yellow]Warning:[/yellow] {escape(message)}", soft_wrap=True)


def note(message: str) -> None:
    """An informational line on stderr (not a warning)."""
    stderr_console().print(escape(message), soft_wrap=True)


def print_error(exc: EmdcliError) -> None:
    """``Error: ...`` (and ``Hint: ...``) on stderr."""
    err = stderr_console()
    err.print(f"[bold red]Error:[/bold red] {escape(exc.message)}", soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]Hint:[/dim] {escape(exc.hint)}", soft_wrap=True)


# options ------------------------------------------------------------------------------------

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file of option values (default: $EMDCLI_CONFIG, else ~/.config/emdcli/config.yaml, or under "
        "$XDG_CONFIG_HOME when set). Flags win.",
        show_default=False,
        dir_okay=False,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", help="Model manifest (.json), its .onnx, or a folder holding one. Default: the bundled "
        "EfficientNet-Lite0.", show_default=False,
    ),
]  # fmt: skip
FormatOpt = Annotated[
    FormatName | None,
    typer.Option(
        "--format", "-f", help="table (for people), csv, json or jsonl. Default: from the --output file's "
        "suffix, else table on a terminal and csv otherwise.", show_default=False,
    ),
]  # fmt: skip
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Write results to this file instead of stdout; it appears only when complete "
        "(a failed run keeps its finished rows in FILE.partial).", dir_okay=False, show_default=False,
    ),
]  # fmt: skip
CacheOpt = Annotated[
    bool | None,
    typer.Option(
        "--cache/--no-cache", help="Reuse image features from earlier runs (kept under $EMDCLI_CACHE_DIR or "
        "~/.cache/emdcli, keyed by file content, model and preprocessing). \\[default: cache]", show_default=False,
    ),
]  # fmt: skip
ProgressOpt = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Progress bars on stderr (only on a terminal).", show_default=False),
]
QuietOpt = Annotated[
    bool | None,
    typer.Option("--quiet", "-q", help="No progress, warnings or summary on stderr.", show_default=False),
]
DeviceOpt = Annotated[
    DeviceName | None,
    typer.Option(
        "--device", help="auto: CUDA when onnxruntime has it, else CPU. cuda: fail if CUDA is missing. "
        "\\[default: auto]", show_default=False,
    ),
]  # fmt: skip
BatchSizeOpt = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Images per backbone call. \\[default: 4 on CPU, 16 on CUDA]",
                 show_default=False),
]  # fmt: skip
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="Threads decoding images while the backbone runs. \\[default: 1]",
                 show_default=False),
]  # fmt: skip
MetricOpt = Annotated[
    MetricName | None,
    typer.Option("--metric", help=f"Node cost: cosine (1 - cos, as DeepEMD) or l2. \\[default: {defaults.METRIC}]",
                 show_default=False),
]  # fmt: skip
KshotOpt = Annotated[
    KshotName | None,
    typer.Option(
        "--kshot", help="A class with several examples is matched through their mean feature map (mean) or a "
        f"node set fitted to them by DeepEMD's SFC (sfc; used up to {defaults.SFC_MAX_PAIRS:,} examples x "
        f"classes). \\[default: {defaults.KSHOT}]", show_default=False,
    ),
]  # fmt: skip
GlobalWeightOpt = Annotated[
    float | None,
    typer.Option(
        "--global-weight", min=0.0, help="Add this times the global cosine (SimpleShot: pooled features, centred, "
        f"normalised) to each class's EMD score; 0 for pure DeepEMD. \\[default: {defaults.GLOBAL_WEIGHT:g}, or "
        f"{defaults.SFC_GLOBAL_WEIGHT:g} for classes fitted by SFC]", show_default=False,
    ),
]  # fmt: skip
ShortlistOpt = Annotated[
    int | None,
    typer.Option(
        "--shortlist", min=0, help="With more classes than this, match by EMD only the ones closest by global "
        f"cosine (others get no score). 0: match every class. \\[default: {defaults.SHORTLIST}]", show_default=False,
    ),
]  # fmt: skip


def query_argument(help_text: str, metavar: str = "QUERIES") -> Any:
    """The positional list of query sources (files, folders, ``-`` for stdin)."""
    return typer.Argument(help=help_text, metavar=metavar, show_default=False)


# the session --------------------------------------------------------------------------------


@dataclass
class Session:
    """One command's settings and the objects built from them, made when first needed."""

    settings: Settings

    @classmethod
    def start(cls, config: Path | None, **flags: Any) -> Session:
        """Defaults, then the config file, then the flags given (None = not given)."""
        return cls(load_settings(config, flags))

    @property
    def quiet(self) -> bool:
        return self.settings.quiet

    def say(self, message: str) -> None:
        """A warning on stderr, unless quiet."""
        if not self.quiet:
            warn(message)

    def tell(self, message: str) -> None:
        """An informational line on stderr, unless quiet."""
        if not self.quiet:
            note(message)

    @cached_property
    def backbone(self) -> Backbone:
        from ..model.backbone import load_model

        return load_model(self.settings.model, device=self.settings.device)

    @cached_property
    def source(self) -> FeatureSource:
        from ..features.cache import FeatureCache
        from ..features.source import FeatureSource

        cache = FeatureCache.for_model(self.backbone.manifest) if self.settings.cache else None
        return FeatureSource(
            self.backbone, batch_size=self.settings.batch_size, workers=self.settings.workers, cache=cache
        )

    def matcher(self) -> Matcher:
        from ..matching.support import Matcher

        s = self.settings
        return Matcher(metric=s.metric, kshot=s.kshot, global_weight=s.global_weight, shortlist=s.shortlist)  # type: ignore[arg-type]

    def progress(self) -> Progress:
        """Progress bars on stderr: transient, and shown only on a terminal when not quiet."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        shown = self.settings.progress and not self.quiet and sys.stderr.isatty()
        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=stderr_console(), transient=True, disable=not shown,
        )  # fmt: skip

    def report_skipped(self, skipped: Any, what: str = "") -> None:
        """One warning per unreadable image (``Skipped`` records)."""
        for skip in skipped:
            self.say(f"skipped {what}{skip.reason}")


def advance(bars: Progress, description: str, total: int | None) -> Callable[[int], None]:
    """A new bar and the callback that moves it on by n images."""
    task = bars.add_task(description, total=total)
    return lambda n: bars.advance(task, n)


def stdin_lines() -> Iterator[str]:
    """Lines of stdin; bytes that are not UTF-8 are kept as in file names (surrogateescape)."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:
        yield from sys.stdin
        return
    for line in raw:
        yield os.fsdecode(line.rstrip(b"\r\n"))


def query_paths(queries: list[str]) -> Iterator[Path]:
    """The query arguments as a lazy stream of paths (``-`` reads stdin). UsageError for a missing path."""
    from ..errors import DatasetError
    from ..io.images import iter_query_paths

    for src in queries:
        if src != "-" and not Path(src).exists():
            raise DatasetError(
                f"query path does not exist: {src}",
                hint="give image files, folders of images, or '-' to read paths from stdin",
            )
    if queries.count("-") > 1:
        raise DatasetError("'-' (read paths from stdin) may be given only once")
    return iter_query_paths(queries, stdin_lines() if "-" in queries else None)


def image_folder(folder: Path, what: str) -> list[Path]:
    """Every image below ``folder``, sorted. DatasetError when it is not a folder or holds none."""
    from ..errors import DatasetError
    from ..io.images import iter_image_files

    if not folder.is_dir():
        raise DatasetError(f"{what} folder does not exist or is not a folder: {folder}")
    paths = sorted(iter_image_files(folder))
    if not paths:
        raise DatasetError(f"no images found in {folder}", hint="image files end in .jpg, .jpeg, .png, ...")
    return paths
