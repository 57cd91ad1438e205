"""Defaults of the classifier, chosen by measurement (see docs/benchmarks.md); no heavy imports."""

#: How a class with several examples gets its node set: ``"sfc"`` (fitted by SFC) or ``"mean"`` (mean map).
KSHOT = "sfc"
#: Weight of the global (SimpleShot) cosine added to every class's EMD score.
GLOBAL_WEIGHT = 0.5
