"""Setup shared by the retrieval and anomaly benchmarks (run as scripts from this folder)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np

from emdcli.features.cache import FeatureCache
from emdcli.features.source import FeatureSource
from emdcli.io.folders import read_labelled_folder
from emdcli.model.backbone import Backbone
from emdcli.model.manifest import resolve_model_path
from emdcli.tasks.evaluate import mean_ci95


def cached_source() -> tuple[Backbone, FeatureSource]:
    """The bundled model on one CPU thread, and a feature source over it that caches the
    features of every image it embeds (up to 2 GiB)."""
    backbone = Backbone(resolve_model_path(None), device="cpu", threads=1)
    cache = FeatureCache.for_model(backbone.manifest, max_bytes=2**31)
    return backbone, FeatureSource(backbone, cache=cache)


def set_names(data: Path, subset: str) -> list[str]:
    """The image sets under ``data`` (folders), or those of them in comma-separated ``subset``."""
    names = sorted(p.name for p in data.iterdir() if p.is_dir())
    return [n for n in names if n in subset.split(",")] if subset else names


def embed_set(source: FeatureSource, root: Path) -> tuple[tuple[Path, ...], np.ndarray, np.ndarray]:
    """Paths, labels (N,) and (N, C, H, W) feature maps of the readable images under ``root``."""
    data = source.labelled(read_labelled_folder(root))
    if data.skipped:
        print(f"# {root.name}: {len(data.skipped)} unreadable image(s) left out", file=sys.stderr)
    assert data.features is not None, f"{root}: no readable image"
    return data.paths, data.labels, data.features


def difference_text(x: np.ndarray) -> str:
    """Mean of paired differences ``x`` (fractions) ± its 95% half-interval, in points."""
    mean, half = mean_ci95(x)
    return f"{100 * mean:+.1f} ± {100 * half:.1f}"


def command_line() -> str:
    """How this benchmark was run, quoted for a shell."""
    return " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv])
