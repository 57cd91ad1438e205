"""``emdcli info``: the model in use, its sha256 check, execution providers, config and cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from .common import Session, with_session

NAME = "info"
EPILOG = "Exit codes: 0 the model loads and its sha256 matches its manifest, 1 it does not (the report says why)."


FittedOpt = Annotated[
    Path | None,
    typer.Argument(
        help="A file 'emdcli fit' wrote: describe it instead of the model.",
        metavar="FILE.emdfit",
        show_default=False,
    ),
]

FmtOpt = Annotated[Literal["table", "json"], typer.Option("--format", "-f", metavar="FORMAT", help="table or json.")]


@with_session("model", "precision", "device", "config")
def run(
    fitted: FittedOpt = None,
    fmt: FmtOpt = "table",
    *,
    session: Session,
) -> None:
    """Show the model in use (source, licence, sha256 check), execution providers, config and cache; or what
    a fitted support file holds."""
    import os

    import onnxruntime as ort

    from .. import __version__
    from ..config import default_config_path
    from ..errors import ModelError
    from ..io.files import default_cache_dir
    from ..io.png import decoder_name
    from ..model.backbone import available_providers, with_precision
    from ..model.manifest import bundled_models, check_model, resolve_model_path

    if fitted is not None:
        return show(describe_fitted(fitted), fmt)
    check = check_model(with_precision(resolve_model_path(session.settings.model), session.settings.precision))
    m = check.manifest
    env_config = os.environ.get("EMDCLI_CONFIG")
    cfg = session.config or (Path(env_config) if env_config else default_config_path())
    data: dict[str, Any] = {
        "emdcli": __version__, "model": m.name, "manifest": str(check.manifest_path), "onnx": str(check.onnx_path),
        "sha256": check.expected, "sha256_file": check.actual, "sha256_verified": check.ok,
        "layer": m.layer, "input": f"{m.input_size}x{m.input_size} ({m.resize})",
        "feature_map": f"{m.channels} x {m.grid[0]} x {m.grid[1]} ({m.grid[0] * m.grid[1]} nodes)",
        "source": m.source, "licence": m.licence, "onnxruntime": ort.__version__,
        "providers_available": available_providers(),
    }  # fmt: skip
    data["precision"] = m.precision
    if m.quantization is not None:
        data["quantized"] = quantization_summary(m.quantization)
    if m.training is not None:
        data["trained"] = training_summary(m.training)
    if check.ok:
        backbone = session.backbone
        data["providers_used"] = backbone.active_providers
        data["inference"] = (f"{backbone.lanes} call(s) at once x {backbone.threads or 'default'} thread(s), "
                             f"{session.settings.batch_size or backbone.batch_size} images per call")  # fmt: skip
    data["png_decoder"] = decoder_name()
    data["bundled_models"] = list(bundled_models())
    data["config"] = f"{cfg} ({'found' if cfg.is_file() else 'not found'})"
    data["feature_cache"] = str(default_cache_dir())
    show(data, fmt)
    if not check.ok:
        raise ModelError(
            f"{check.onnx_path}: sha256 {check.actual[:16]}... does not match the manifest's {check.expected[:16]}...",
            hint="reinstall emdcli, or rebuild the model with `emdcli export`",
        )


def show(data: dict[str, Any], fmt: str) -> None:
    """``data`` on stdout: one JSON document, or a two-column table."""
    import json

    if fmt == "json":
        typer.echo(json.dumps({"command": NAME, **data}, indent=2))  # the envelope's header; info has no rows
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in data.items():
        table.add_row(key.replace("_", " "), escape(", ".join(value) if isinstance(value, list) else str(value)))
    Console(highlight=False).print(table)


def describe_fitted(path: Path) -> dict[str, Any]:
    """What ``info FILE.emdfit`` shows: the file's format, model, settings, classes and examples."""
    from ..tasks.fitted import read_meta

    meta = read_meta(path)
    model = meta["model"]
    return {
        "fitted_file": str(path), "format_version": meta["format_version"], "made_by_emdcli": meta["emdcli"],
        "model": model["name"], "model_sha256": model["sha256"], "precision": model["precision"],
        "matching": ", ".join(f"{k} {v}" for k, v in meta["matcher"].items()), "node_sets": meta["made_by"],
        "classes": [f"{c} ({n})" for c, n in zip(meta["classes"], meta["shots"], strict=True)],
        "examples": len(meta["examples"]), "fitted_from": meta["root"],
        "support_similarity": meta["similarity"], "skipped_examples": len(meta["skipped"]),
        "open_set_anchor": meta["rejection_anchor"],
    }  # fmt: skip


def training_summary(training: dict[str, Any]) -> str:
    """One line on a model written by ``emdcli train``: base set, episodes kept, validation before/after."""
    try:
        base, settings = training["base_set"], training["settings"]
        before, kept = training["validation_before"]["accuracy"], training["validation_kept"]["accuracy"]
        return (f"{settings['train_from']} onward on {base['train_classes']} classes ({base['images']} images); kept "
                f"episode {training['kept_episode']} of {settings['episodes']}; held-out {settings['way']}-way "
                f"{settings['shot']}-shot default {before['default']:.1f}% -> {kept['default']:.1f}%")  # fmt: skip
    except (KeyError, TypeError):
        return "by emdcli train (its record in the manifest is incomplete)"


def quantization_summary(record: dict[str, Any]) -> str:
    """One line on an int8 model: what it was quantized from and how it was calibrated."""
    try:
        source, calibration = record["source"], record["calibration"]
        return (f"from {source['name']} (sha256 {str(source['sha256'])[:12]}...), {record['method']} calibration on "
                f"{calibration['images']} images ({calibration['chosen']})")  # fmt: skip
    except (KeyError, TypeError):
        return "by emdcli export --precision int8 (its record in the manifest is incomplete)"
