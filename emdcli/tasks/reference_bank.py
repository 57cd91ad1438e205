"""Building a model's reference bank: the pooled features of generic images that open-set rejection
measures queries against (:mod:`emdcli.matching.rejection`).

    bank = build_reference_bank(FeatureSource(load_model()), reference_images())
    bank.save(reference_bank_path(manifest_path))

The bundled models' banks are built from ``reference-bank/images`` of the repository: about 2,000
public-domain images from Debian packages, their provenance and licences in
``reference-bank/PROVENANCE.tsv`` and ``reference-bank/README.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..features.source import FeatureSource, Progress
from ..io.images import IMAGE_EXTENSIONS
from ..matching.rejection import ReferenceBank

#: Why open-set rejection cannot run on a model, and what to do about it.
NO_BANK = "the model has no reference bank (NAME.bank.npz beside its manifest), which open-set rejection needs"
NO_BANK_HINT = "build one: python benchmarks/build_banks.py MODEL, from a checkout of emdcli's repository"
#: What the bundled banks are made of, as recorded in each bank file.
BUNDLED_SOURCE = "reference-bank/images: public-domain images of Debian packages (reference-bank/PROVENANCE.tsv)"


def reference_images(root: Path | None = None) -> list[Path]:
    """The images of the repository's ``reference-bank/images`` (or of ``root``), sorted; empty when
    the folder is absent (an installed wheel does not carry it)."""
    folder = root or Path(__file__).resolve().parents[2] / "reference-bank" / "images"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def build_reference_bank(
    source: FeatureSource, images: list[Path], description: str = BUNDLED_SOURCE, on_done: Progress | None = None
) -> ReferenceBank:
    """The bank of ``images`` embedded by ``source``'s model (unreadable images left out).
    ValueError with too few readable images."""
    pooled = [item.features.mean(axis=(1, 2)) for item in source.embed_cached(images, on_done)
              if item.features is not None]  # fmt: skip
    manifest = getattr(source.extractor, "manifest", None)
    sha = str(getattr(manifest, "sha256", "unknown"))
    return ReferenceBank(np.array(pooled, dtype=np.float32).reshape(len(pooled), -1), sha, description)


def bank_for(extractor: object) -> ReferenceBank | None:
    """The reference bank of a feature extractor's model (``NAME.bank.npz`` beside its manifest), or
    None when it has none. ModelError for a bank that is unreadable or made with another model."""
    from ..errors import ModelError
    from ..matching.rejection import reference_bank_path

    manifest_path = getattr(extractor, "manifest_path", None)
    manifest = getattr(extractor, "manifest", None)
    if manifest_path is None or manifest is None:
        return None
    path = reference_bank_path(Path(manifest_path))
    if not path.is_file():
        return None
    try:
        return ReferenceBank.load(path, str(manifest.sha256))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path.name}: unusable reference bank ({exc})",
                         hint="rebuild it with python benchmarks/build_banks.py, or delete it") from exc  # fmt: skip


def write_bank_for(manifest_path: Path, device: str = "cpu") -> ReferenceBank | None:
    """Build and write the reference bank of the model at ``manifest_path`` from the repository's
    reference images; None (nothing written) where they are absent."""
    from ..matching.rejection import reference_bank_path
    from ..model.backbone import Backbone

    images = reference_images()
    if not images:
        return None
    bank = build_reference_bank(FeatureSource(Backbone(manifest_path, device=device)), images)
    bank.save(reference_bank_path(manifest_path))
    return bank


#: What export and train say when they could not write a bank.
NO_REFERENCE_IMAGES = (
    "no reference bank written: its images (reference-bank/images) are in emdcli's repository, not in an installed "
    "package; `reject` needs one (python benchmarks/build_banks.py MODEL, from a checkout)"
)
