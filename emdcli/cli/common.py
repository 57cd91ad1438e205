"""What every command shares: the option definitions, stderr messages, and the session set-up
(settings, backbone, feature source, matcher, progress bars).

Only light modules are imported here, so that ``emdcli --help`` stays fast.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_type_hints

import typer

from .. import defaults
from ..config import Settings, load_settings
from ..defaults import DeviceName, FormatName, KshotName, MetricName, PrecisionName
from ..io.sorting import SortAction
from .stderr import note, stderr_console, warn

if TYPE_CHECKING:
    from rich.progress import Progress

    from ..features.source import FeatureSource
    from ..io.sink import Sink
    from ..matching.support import Matcher
    from ..model.backbone import Backbone
    from ..tasks.classify import Reject

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")


# stderr -------------------------------------------------------------------------------------


# options ------------------------------------------------------------------------------------


# fmt: off
def _option(*names: str, default: str | None = None, **kwargs: Any) -> Any:
    """``typer.Option`` for a shared option, whose value is None unless given (the config file may set
    it): ``default`` is the built-in default, in words, that --help shows as ``[default: ...]``."""
    return typer.Option(*names, show_default=False if default is None else default, **kwargs)


ConfigOpt = Annotated[Path | None, _option("--config", metavar="FILE", dir_okay=False, help=(
    "YAML file of option values; flags win."),
    default="$EMDCLI_CONFIG, else ~/.config/emdcli/config.yaml (under $XDG_CONFIG_HOME when set)")]
ModelOpt = Annotated[str | None, _option("--model", metavar="MODEL", help=(
    "A bundled model's name (emdcli info lists them), a model manifest (.json), its .onnx, or a folder holding "
    "one."), default="the bundled EfficientNet-Lite0")]
FormatOpt = Annotated[FormatName | None, _option("--format", "-f", metavar="FORMAT", help=(
    "table (for people), csv, json or jsonl."),
    default="from the --output file's suffix, else table on a terminal and csv in a pipe")]
OutputOpt = Annotated[Path | None, _option("--output", "-o", metavar="FILE", dir_okay=False, help=(
    "Write results to FILE; it appears only when complete (a failed run keeps its finished rows in "
    "FILE.partial)."), default="stdout")]
CacheOpt = Annotated[bool | None, _option("--cache/--no-cache", help=(
    "Reuse image features from earlier runs (kept under $EMDCLI_CACHE_DIR or ~/.cache/emdcli, keyed by file "
    "content, model and preprocessing)."), default="on")]
ProgressOpt = Annotated[bool | None, _option("--progress/--no-progress", help=(
    "Progress bars on stderr (only on a terminal)."), default="on")]
QuietOpt = Annotated[bool | None, _option("--quiet", "-q", help="No progress, warnings or summary on stderr.")]
PrecisionOpt = Annotated[PrecisionName | None, _option("--precision", metavar="PRECISION", help=(
    "fp32 or int8: int8 runs the model's 8-bit variant (NAME_int8.json beside it; 'emdcli export --precision "
    "int8' makes one). Its speed and the accuracy it costs: docs/benchmarks.md, 'INT8 backbone'."),
    default="int8 for the bundled model, any other as named")]
DeviceOpt = Annotated[DeviceName | None, _option("--device", metavar="DEVICE", help=(
    "auto, cpu or cuda. auto: CUDA when onnxruntime has it, else CPU; cuda: fail if CUDA is missing."),
    default=defaults.DEVICE)]
BatchSizeOpt = Annotated[int | None, _option("--batch-size", metavar="N", min=1, help=(
    "Images per backbone call."), default="4 on CPU, 16 on CUDA")]
DecodeThreadsOpt = Annotated[int | None, _option("--decode-threads", metavar="N", min=1, help=(
    "Threads decoding images while the backbone runs."), default="one per CPU core")]
MetricOpt = Annotated[MetricName | None, _option("--metric", metavar="METRIC", help=(
    "Node cost: cosine (1 - cos, as DeepEMD) or l2."), default=defaults.METRIC)]
KshotOpt = Annotated[KshotName | None, _option("--kshot", metavar="MODE", help=(
    "A class with several examples is matched through their mean feature map (mean) or a node set fitted to "
    f"them by DeepEMD's SFC (sfc; used up to {defaults.SFC_MAX_PAIRS:,} examples x classes)."),
    default=defaults.KSHOT)]
GlobalWeightOpt = Annotated[float | None, _option("--global-weight", metavar="FLOAT", min=0.0, help=(
    "Add this times the global cosine (SimpleShot: pooled features, centred, normalised) to each class's EMD "
    "score; 0 for pure DeepEMD."),
    default=f"{defaults.GLOBAL_WEIGHT:g}, or {defaults.SFC_GLOBAL_WEIGHT:g} for classes fitted by SFC")]
ShortlistOpt = Annotated[int | None, _option("--shortlist", metavar="N", min=0, help=(
    "With more classes than N, match by EMD only the N closest by global cosine (others get no score); "
    "0: match every class."), default=str(defaults.SHORTLIST))]
TransductiveOpt = Annotated[bool | None, _option("--transductive/--no-transductive", help=(
    "Match a set of queries together: they move each class toward where it lies in their domain (not "
    "done when their predictions are lopsided, as in a folder mostly of one class). "
    f"classify takes sets of up to {defaults.TRANSDUCTIVE_SET:,} queries, batch one set per task; "
    "--no-transductive matches each query on its own."),
    default="on; off for - (stdin)")]
#: The episode shape of evaluate and train (each command has its own default).
WayOpt = Annotated[int, typer.Option("--way", "-n", metavar="N", min=2, help="Classes per episode.")]
ShotOpt = Annotated[int, typer.Option("--shot", metavar="N", min=1, help="Support images per class.")]
TopKOpt = Annotated[int | None, _option("--top-k", "-k", metavar="N", min=1, help=(
    "How many ranked classes to list per query."), default=str(defaults.TOP_K))]
RejectOpt = Annotated[str | None, _option("--reject", metavar="MODE", help=(
    "Answer --unknown-label for a query unlike every class: auto calibrates the threshold on SUPPORT (see "
    "--sensitivity); a number is a threshold on the open_set_score column; none gives every query a class. Why "
    "it is not the default: docs/benchmarks.md, \"Open-set rejection\"."), default=defaults.REJECT)]
SensitivityOpt = Annotated[float | None, _option("--sensitivity", metavar="P", help=(
    "The share of in-set queries --reject auto may reject, 0.01 to 0.5 (more rejects more foreign ones too); "
    "the transductive step sets aside the queries it judges foreign either way."),
    default=f"{defaults.REJECT_SENSITIVITY:g}")]
UnknownLabelOpt = Annotated[str | None, _option("--unknown-label", metavar="NAME", help=(
    "The answer of a query rejected by --reject."), default=defaults.UNKNOWN_LABEL)]
NullOpt = Annotated[bool, _option("--null", "-0", help=(
    "Paths read from stdin ('-') end with a NUL byte, as find -print0 and xargs -0 use, not a newline."))]
# fmt: on


def report_option(contents: str) -> Any:
    """``--report FILE`` (classify, evaluate): one HTML page of the run; ``contents`` says what the page shows."""
    return typer.Option(
        "--report",
        metavar="FILE",
        help="Also write one self-contained HTML page of the run to FILE (at its end, whole or not at all): "
        + contents,
        dir_okay=False,
        show_default="none",
    )


#: The options commands share, by parameter name: each is a Settings field (``fmt`` sets ``format``)
#: except ``output`` and ``config``, which the session keeps as they are.
SHARED_OPTIONS: dict[str, Any] = {
    "fmt": FormatOpt, "output": OutputOpt, "top_k": TopKOpt, "metric": MetricOpt, "kshot": KshotOpt,
    "global_weight": GlobalWeightOpt, "transductive": TransductiveOpt, "shortlist": ShortlistOpt, "model": ModelOpt,
    "device": DeviceOpt, "precision": PrecisionOpt, "reject": RejectOpt,
    "sensitivity": SensitivityOpt, "unknown_label": UnknownLabelOpt,
    "batch_size": BatchSizeOpt, "decode_threads": DecodeThreadsOpt, "cache": CacheOpt, "progress": ProgressOpt,
    "quiet": QuietOpt, "config": ConfigOpt,
}  # fmt: skip


#: The shared options of the commands that classify (classify and batch): matching, rejection, model.
CLASSIFYING = ("top_k", "metric", "kshot", "global_weight", "transductive", "shortlist", "reject", "sensitivity",
               "unknown_label", "model", "precision", "device")  # fmt: skip


def with_session(*names: str) -> Callable[[F], F]:
    """Add the shared options ``names`` to a command (after its own) and call it with
    ``session=Session`` made from them, as sqlite-utils' output options decorator does."""

    def decorate(func: F) -> F:
        hints = get_type_hints(func, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(func).parameters.values()]
        own = [p for p in own if p.name != "session"]
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=SHARED_OPTIONS[n])
                 for n in names]  # fmt: skip

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in names}
            config, output = given.pop("config", None), given.pop("output", None)
            flags = {("format" if n == "fmt" else n): v for n, v in given.items()}
            return func(*args, session=Session.start(config, output, **flags), **kwargs)

        params = own + extra
        command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        return command  # type: ignore[return-value]

    return decorate


def argument(help_text: str, metavar: str = "QUERIES") -> Any:
    """A required positional argument (the query list, a folder) with its metavar; help adds ``...``
    to the metavar of a list (``QUERIES...``)."""
    return typer.Argument(help=help_text, metavar=metavar, show_default=False)


#: SUPPORT of the commands that classify: a labelled folder, or a fitted file.
SupportOrFittedArg = Annotated[
    Path,
    argument(
        "Folder of labelled examples: SUPPORT/CLASS_NAME/image.jpg, two classes or more; or a file "
        "'emdcli fit' made of one (SUPPORT.emdfit).",
        "SUPPORT",
    ),
]

SortIntoOpt = Annotated[
    Path | None,
    typer.Option(
        "--sort-into",
        metavar="DIR",
        help="Also put each classified query into DIR/<predicted class>/ (a rejected one into DIR/unknown/, "
        "as --unknown-label names it), never overwriting (a taken name gets -2, -3, ...) nor touching a support "
        "image; the columns sorted_to and sort_action say where each went. Running it again does only "
        "what is left.",
        file_okay=False,
        show_default="none",
    ),
]

SortActionOpt = Annotated[
    SortAction | None,
    typer.Option(
        "--sort-action",
        metavar="ACTION",
        help="How --sort-into puts a query there: copy, link (a hard link; a symbolic link across file "
        "systems) or move.",
        show_default="copy",
    ),
]

MinConfidenceOpt = Annotated[
    float | None,
    typer.Option(
        "--min-confidence",
        metavar="P",
        min=0.0,
        max=1.0,
        help="With --sort-into: a query whose confidence is below P goes to DIR/_review/ instead.",
        show_default="none",
    ),
]


# the session --------------------------------------------------------------------------------


@dataclass
class Session:
    """One command's settings and the objects built from them, made when first needed."""

    settings: Settings
    output: Path | None = None
    config: Path | None = None

    @classmethod
    def start(cls, config: Path | None, output: Path | None = None, **flags: Any) -> Session:
        """Defaults, then the config file, then the flags given (None = not given)."""
        return cls(load_settings(config, flags), output, config)

    def sink(self) -> Sink:
        """The command's result sink: ``--output`` (checked now) in the chosen ``--format``."""
        from ..io.sink import Sink, choose_format

        return Sink(self.output, choose_format(self.settings.format, self.output), quiet=self.quiet, note=note)

    @property
    def quiet(self) -> bool:
        return self.settings.quiet

    def warn(self, message: str) -> None:
        """A warning on stderr, unless quiet."""
        if not self.quiet:
            warn(message)

    def inform(self, message: str) -> None:
        """An informational line on stderr, unless quiet."""
        if not self.quiet:
            note(message)

    @cached_property
    def backbone(self) -> Backbone:
        from ..model.backbone import load_model

        return load_model(self.settings.model, device=self.settings.device, precision=self.settings.precision)

    @cached_property
    def source(self) -> FeatureSource:
        from ..features.cache import FeatureCache
        from ..features.source import FeatureSource

        cache = FeatureCache.for_model(self.backbone.manifest) if self.settings.cache else None
        return FeatureSource(
            self.backbone, batch_size=self.settings.batch_size, workers=self.settings.decode_threads, cache=cache
        )

    def matcher(self, *, stream: bool = False) -> Matcher:
        """The matcher of the settings; ``stream``: the queries come one by one (stdin), which by
        default turns the transductive step off."""
        from ..matching.support import Matcher

        s = self.settings
        transductive = s.transductive if s.transductive is not None else not stream
        return Matcher(metric=s.metric, kshot=s.kshot, global_weight=s.global_weight, shortlist=s.shortlist,  # type: ignore[arg-type]
                       transductive=transductive)  # fmt: skip

    def reject(self) -> Reject | None:
        """What ``--reject`` and ``--unknown-label`` ask for: None for none."""
        from ..config import reject_threshold, rejects
        from ..tasks.classify import Reject
        from ..tasks.open_set import check_sensitivity

        s = self.settings
        sensitivity = check_sensitivity(s.sensitivity)
        if not rejects(s.reject):
            return None
        return Reject(threshold=reject_threshold(s.reject), sensitivity=sensitivity, label=s.unknown_label)

    def progress(self) -> Progress:
        """Progress bars on stderr: transient, and shown only on a terminal when not quiet."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            """Images (or rows) per second, as Rich estimates it over the last 30 s."""

            def render(self, task: Task) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.1f}/s" if speed else "", style="progress.data.speed")

        shown = self.settings.progress and not self.quiet and sys.stderr.isatty()
        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=stderr_console(), transient=True, disable=not shown,
        )  # fmt: skip

    def report_skipped(self, skipped: Any, what: str = "") -> None:
        """One warning per unreadable image (``Skipped`` records)."""
        for skip in skipped:
            self.warn(f"skipped {what}{skip.reason}")


def advance(bars: Progress, description: str, total: int | None) -> Callable[[int], None]:
    """A new bar and the callback that moves it on by n images."""
    task = bars.add_task(description, total=total)
    return lambda n: bars.advance(task, n)


def query_paths(
    queries: list[str], null: bool = False, not_images: list[Path] | None = None, texts: dict[Path, str] | None = None
) -> Iterator[Path]:
    """The query arguments as a lazy stream of paths; ``-`` reads stdin (``null``: NUL-separated); ``texts``:
    each path's text as given (:func:`emdcli.io.images.iter_query_paths`)."""
    from ..io.images import query_paths as paths
    from ..io.images import stdin_paths

    return paths(queries, stdin_paths(sys.stdin, null) if "-" in queries else None, not_images, texts)


def embed_folder(
    session: Session, folder: Path, what: str, build: Callable[[list[Path], Callable[[int], None]], R]
) -> R:
    """``build(images, on_done)`` on every image of ``folder`` (the gallery of search, the normal set
    of anomaly) under a progress bar, then a warning per unreadable image (``result.skipped``), named
    as ``what`` says (``skipped gallery image ...``)."""
    from ..io.images import image_folder

    images = image_folder(folder, what)
    with session.progress() as bars:
        built = build(images, advance(bars, what.capitalize(), len(images)))
    session.report_skipped(getattr(built, "skipped", ()), f"{what} image ")
    return built


def write_bank(manifest_path: Path) -> None:
    """Write the reference bank of open-set rejection beside a new model, or say why not."""
    from ..matching.rejection import reference_bank_path
    from ..tasks.reference_bank import NO_REFERENCE_IMAGES, write_bank_for

    with stderr_console().status("Embedding the reference bank..."):
        bank = write_bank_for(manifest_path)
    if bank is None:
        note(NO_REFERENCE_IMAGES)
    else:
        note(f"wrote {reference_bank_path(manifest_path)} ({len(bank.features)} reference images)")
