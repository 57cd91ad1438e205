"""The frozen trunk's views: every image once through the trunk (the parent up to the block before
``train_from``, as ONNX) in ``views`` views (centre, flipped, zoomed, zoomed and flipped), the maps
cached on disk like any features."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import EmdcliError
from ...features.cache import FeatureCache
from ...features.source import FeatureSource, Progress, Skipped
from ...io.files import display_path
from ...io.folders import LabelledFolder
from ...model import trainable
from .settings import VIEWS, TrainSettings

#: Side of the central square a zoomed view keeps, as a fraction of the input.
ZOOM = 0.875


class ViewExtractor:
    """The trunk on one view of each input: (B, 3, S, S) -> (B, C, H, W), as a FeatureExtractor."""

    def __init__(self, trunk: Any, view: str) -> None:
        self.trunk = trunk
        self.view = view
        self.lanes = getattr(trunk, "lanes", 1)
        self.batch_size = getattr(trunk, "batch_size", 4)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.trunk(view_of(batch, self.view)))


def view_of(batch: np.ndarray, view: str) -> np.ndarray:
    """``batch`` (B, 3, S, S) float32 seen as ``view``: flipped left-right and/or the central
    ``ZOOM`` square scaled back to S x S (bilinear)."""
    out = batch
    if view.startswith("zoom"):
        torch = trainable.require_torch()
        size = batch.shape[-1]
        keep = round(size * ZOOM)
        lo = (size - keep) // 2
        crop = torch.from_numpy(np.ascontiguousarray(batch[..., lo : lo + keep, lo : lo + keep]))
        out = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False).numpy()
    if view.endswith("flip"):
        out = out[..., ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def trunk_maps(
    folder: LabelledFolder,
    settings: TrainSettings,
    parent: trainable.Parent,
    device: str,
    cache: bool,
    on_embedded: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[Skipped, ...]]:
    """(V, N, C, H, W) float32 trunk maps (``parent`` up to ``train_from``) of every readable image in
    ``views`` views, their (N,) labels, and the unreadable images."""
    from ...model.backbone import Backbone

    manifest_path = trainable.export_trunk(settings.train_from, parent)
    trunk = Backbone(manifest_path, device=device)
    views = []
    labels: np.ndarray | None = None
    skipped: tuple[Skipped, ...] = ()
    for view in VIEWS[: settings.views]:
        namespace = f"{trunk.manifest.sha256}/{trunk.manifest.preprocess.key()}/{view}"
        source = FeatureSource(
            ViewExtractor(trunk, view), trunk.manifest.preprocess, cache=FeatureCache(namespace) if cache else None
        )
        if labels is None:
            found = source.labelled(folder, on_embedded)
            if found.features is None:
                raise EmdcliError(f"none of the {folder.image_count} images in {display_path(folder.root)} is readable")
            labels, skipped, paths = found.labels, found.skipped, list(found.paths)
            views.append(found.features)
        else:
            more = source.array(paths, on_embedded)
            if more.features is None or len(more.paths) != len(paths):
                raise EmdcliError("an image became unreadable while its views were made; run again")
            views.append(more.features)
    assert labels is not None
    return np.stack(views), labels, skipped
