"""Rebuild the bundled models' reference banks (weights/NAME.bank.npz) from reference-bank/images.

python benchmarks/build_banks.py                      # every bundled model
python benchmarks/build_banks.py efficientnet_lite0_mixed
"""

from __future__ import annotations

import sys

from emdcli.features.source import FeatureSource
from emdcli.matching.rejection import reference_bank_path
from emdcli.model.backbone import Backbone
from emdcli.model.manifest import bundled_models, resolve_model_path
from emdcli.tasks.reference_bank import build_reference_bank, reference_images


def main() -> None:
    images = reference_images()
    if not images:
        sys.exit("reference-bank/images not found: run this from a checkout of the repository")
    for name in sys.argv[1:] or list(bundled_models()):
        manifest_path = resolve_model_path(name)
        backbone = Backbone(manifest_path, device="cpu")
        bank = build_reference_bank(FeatureSource(backbone), images)
        bank.save(reference_bank_path(manifest_path))
        print(f"{reference_bank_path(manifest_path)}: {len(bank.features)} images")


if __name__ == "__main__":
    main()
