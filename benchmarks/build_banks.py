"""Rebuild the bundled models' reference banks (weights/NAME.bank.npz) from reference-bank/images.

python benchmarks/build_banks.py                      # every bundled model
python benchmarks/build_banks.py efficientnet_lite0_mixed
"""

from __future__ import annotations

import sys

from emdcli.matching.rejection import reference_bank_path
from emdcli.model.manifest import bundled_models, resolve_model_path
from emdcli.tasks.reference_bank import write_bank_for


def main() -> None:
    for name in sys.argv[1:] or list(bundled_models()):
        manifest_path = resolve_model_path(name)
        bank = write_bank_for(manifest_path)
        if bank is None:
            sys.exit("reference-bank/images not found: run this from a checkout of the repository")
        print(f"{reference_bank_path(manifest_path)}: {len(bank.features)} images")


if __name__ == "__main__":
    main()
