"""``emdcli train BASE_DIR --out MODEL_DIR``: meta-train the backbone's last block(s) with the EMD head
on a labelled set of the user's domain; the model folder it writes works with ``--model`` everywhere."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import defaults
from ..interrupts import handled, stop_error
from .common import Session, ShotOpt, WayOpt, advance, argument, with_session

NAME = "train"
#: Fewer held-out classes than this get a warning: too few to choose a state that holds on new
#: classes (docs/benchmarks.md, "train").
FEW_VAL_CLASSES = 10
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli train my-domain/ --out my-model\n\n"
    "  emdcli classify support/ queries/ --model my-model\n\n"
    "  emdcli train my-domain/ --out my-model --resume        (after Ctrl-C)\n\n"
    "  emdcli train more-of-it/ --out my-model-2 --model my-model   (start from a trained model)\n\n"
    "The classes of BASE_DIR are split by --seed: --val-classes of them are held out, and the held-out "
    "classes' accuracy (proto, emd, default) is measured before training and every --val-every episodes. "
    "The state exported has the best default accuracy among those whose gain over the start is significant "
    "(paired 95% interval above 0); without one, the starting model's weights are. Training starts from --model "
    "(the bundled model unless given): an EfficientNet-Lite export or a model written by emdcli train. "
    "The model is for new classes of the same "
    "domain: check it with emdcli evaluate --model MODEL_DIR on classes it was not trained on.\n\n"
    "Exit codes: 0 written, 1 runtime failure, 2 usage error (bad option or folder, torch not installed, "
    "a set too small for the episode shape), 130/143 interrupted (a checkpoint is kept: --resume)."
)


def _val_classes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither a count nor a fraction") from None
    if value <= 0 or (value >= 1 and value != int(value)):
        raise typer.BadParameter(f"{text!r}: give a fraction below 1 (e.g. 0.2) or a whole number of classes")
    return value


BaseDirOpt = Annotated[
    Path,
    argument("Labelled images of your domain: BASE_DIR/CLASS_NAME/image.jpg, one folder per class.", "BASE_DIR"),
]

OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        metavar="MODEL_DIR",
        help="Folder to write the trained model (ONNX + manifest) into.",
        show_default=False,
    ),
]

ValClassesOpt = Annotated[
    str,
    typer.Option(
        "--val-classes",
        metavar="N|FRACTION",
        help=("Base classes held out for validation: a count, or a fraction (at least --way classes)."),
    ),
]

EpisodesOpt = Annotated[int, typer.Option("--episodes", "-e", metavar="N", min=1, help="Training episodes.")]

QueryOpt = Annotated[int, typer.Option("--query", metavar="N", min=1, help="Query images per class and episode.")]

TrainFromOpt = Annotated[
    str,
    typer.Option(
        "--train-from",
        metavar="LAYER",
        help=(
            "First trained block: blocks.6 trains the last block on cached blocks.5 maps; blocks.5 .. blocks.1 "
            "train more (slower)."
        ),
    ),
]

ViewsOpt = Annotated[
    int,
    typer.Option(
        "--views",
        metavar="N",
        min=1,
        max=4,
        help=("Cached views per image: 1 centre, 2 + flipped, 3 + zoomed, 4 + zoomed and flipped."),
    ),
]

LrOpt = Annotated[float, typer.Option("--lr", metavar="FLOAT", help="Peak learning rate (cosine decay to 0).")]

ValEveryOpt = Annotated[int, typer.Option("--val-every", metavar="N", min=1, help="Validate every N episodes.")]

ValEpisodesOpt = Annotated[int, typer.Option("--val-episodes", metavar="N", min=1, help="Fixed validation episodes.")]

SeedOpt = Annotated[
    int, typer.Option("--seed", metavar="N", help="Seed of the class split, the episodes and the views.")
]

ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in MODEL_DIR (same options).")]


@with_session("model", "fmt", "output", "device", "cache", "progress", "quiet", "config")
def run(
    base_dir: BaseDirOpt,
    out: OutOpt,
    val_classes: ValClassesOpt = f"{defaults.VAL_CLASSES:g}",
    episodes: EpisodesOpt = defaults.TRAIN_EPISODES,
    way: WayOpt = defaults.TRAIN_WAY,
    shot: ShotOpt = defaults.TRAIN_SHOT,
    query: QueryOpt = defaults.TRAIN_QUERY,
    train_from: TrainFromOpt = defaults.TRAIN_FROM,
    views: ViewsOpt = defaults.TRAIN_VIEWS,
    lr: LrOpt = defaults.TRAIN_LR,
    val_every: ValEveryOpt = defaults.VAL_EVERY,
    val_episodes: ValEpisodesOpt = defaults.VAL_EPISODES,
    seed: SeedOpt = defaults.SEED,
    resume: ResumeOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the model or interrupted run in MODEL_DIR.")] = False,
    *,
    session: Session,
) -> None:
    """Adapt the backbone to your domain: meta-train its last block by EMD (needs: pip install 'emdcli\\[train]').

    Trains on the classes of BASE_DIR, writes MODEL_DIR (use it as --model with any command) and
    reports the held-out classes' accuracy before and after. Ctrl-C keeps a checkpoint for --resume.
    """
    from ..io.folders import read_labelled_folder
    from ..model.trainable import require_torch
    from ..tasks.train import TrainSettings, train

    settings = TrainSettings(
        way=way, shot=shot, query=query, episodes=episodes, lr=lr, train_from=train_from, views=views,
        val_classes=_val_classes(val_classes), val_every=val_every, val_episodes=val_episodes, seed=seed,
    )  # fmt: skip
    settings.check()
    require_torch()
    sink = session.sink()
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: stop now, without the checkpoint of the last episodes
            raise KeyboardInterrupt
        signals.append(signum)
        stop.set()

    with handled({signal.SIGINT: on_signal, signal.SIGTERM: on_signal}), session.progress() as bars:
        folder = read_labelled_folder(base_dir)
        moved = advance(bars, "Trunk maps", folder.image_count * views)

        def embedded(n: int) -> None:  # nothing is trained yet: a stop needs no checkpoint
            if stop.is_set():
                raise stop_error(signals[0])
            moved(n)

        task = bars.add_task("Training", total=episodes, start=False)

        def on_episode(stats: Any) -> None:
            bars.start_task(task)
            text = f"Training  loss {stats.loss:.3f}  acc {100 * stats.accuracy:.0f}%"
            bars.update(task, completed=stats.episode, description=text)

        def on_validation(v: Any) -> None:
            cells = "  ".join(f"{m} {v.accuracy[m]:.1f}" for m in v.accuracy)
            session.inform(f"validation after episode {v.episode}: {cells}  ({v.seconds:.1f} s)")

        result = train(
            folder, out, settings, resume=resume, force=force, model=session.settings.model,
            device=session.settings.device,
            cache=session.settings.cache, stop=stop, on_embedded=embedded, on_episode=on_episode,
            on_validation=on_validation,
        )  # fmt: skip
    session.report_skipped(result.skipped)
    if result.stopped:
        session.inform(f"stopped after episode {result.episodes_done} of {episodes}; checkpoint kept in {out}")
        session.inform(f"continue with: {continue_command(base_dir, out, settings, session.settings.model)}")
        raise stop_error(signals[0])
    _finished(session, result, out)
    _write_result(sink, result, base_dir, out, settings)


def _finished(session: Session, result: Any, out: Path) -> None:
    """A finished run: the reference bank beside the new model, and warnings about what was kept."""
    from .common import write_bank

    if result.manifest_path is not None:
        write_bank(result.manifest_path)
    if result.best.episode == 0:
        session.warn("no validation was significantly better than before training: the model written has the "
                    "starting model's weights (try another --lr, or more base classes)")  # fmt: skip
    elif len(result.split.val) < FEW_VAL_CLASSES:
        session.warn(f"only {len(result.split.val)} classes were held out: whether the gain carries to new classes "
                    f"is uncertain; measure it with emdcli evaluate NEW_CLASSES --model {out}")  # fmt: skip


def _write_result(sink: Any, result: Any, base_dir: Path, out: Path, settings: Any) -> None:
    """The validation rows of a finished run, with its header and summary, through the result sink."""
    from .reports import train_layout

    header = {
        "base_dir": str(base_dir), "model_dir": str(out), "manifest": str(result.manifest_path),
        "settings": settings.__dict__, "classes": len(result.class_names), "train_classes": len(result.split.train),
        "val_classes": [result.class_names[i] for i in result.split.val], "images": result.image_count,
        "unreadable": len(result.skipped), "max_abs_diff_onnx_torch": result.max_abs_diff,
    }  # fmt: skip

    def summary() -> dict[str, Any]:
        return {
            "kept_episode": result.best.episode, "before": result.before.accuracy, "kept": result.best.accuracy,
            "trunk_seconds": round(result.trunk_seconds, 1), "train_seconds": round(result.train_seconds, 1),
            "model": str(result.manifest_path),
        }  # fmt: skip

    val = len(result.split.val)
    title = (
        f"{base_dir.name}: validation on {val} held-out classes, {settings.way}-way {settings.shot}-shot, accuracy %"
    )
    with sink.open(train_layout(title), header, summary) as emit:
        for record in result.to_records():
            emit(record)


def continue_command(base_dir: Path, out: Path, settings: Any, model: str | None) -> str:
    """The command that resumes a stopped run: its folders, ``--resume``, and every setting that is not the
    default (a resumed run must have the same ones), quoted for a shell."""
    import shlex
    from dataclasses import fields

    from ..tasks.training.settings import TrainSettings

    words = ["emdcli", "train", str(base_dir), "--out", str(out)]
    if model:
        words += ["--model", model]
    default = TrainSettings()
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value != getattr(default, f.name):
            words += [f"--{f.name.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(shlex.quote(w) for w in [*words, "--resume"])
