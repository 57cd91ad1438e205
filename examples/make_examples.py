"""Re-create examples/ from the public-domain openclipart set (not needed to use emdcli).

    python examples/make_examples.py ../shared/data/openclipart

Picks, with a fixed seed, 4 support and 4 query images for each of 5 classes.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

CLASSES = ["animals_birds", "food_fruit", "recreation_music", "signs_and_symbols_clocks", "animals_fish"]
SHOTS, QUERIES, SEED = 4, 4, 0


def main(source: Path) -> None:
    here = Path(__file__).resolve().parent
    rng = random.Random(SEED)
    for name in CLASSES:
        files = sorted((source / name).glob("*.png"))
        picked = rng.sample(files, SHOTS + QUERIES)
        for part, chosen in (("support", picked[:SHOTS]), ("queries", picked[SHOTS:])):
            dest = here / part / name
            dest.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copyfile(f, dest / f.name)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
