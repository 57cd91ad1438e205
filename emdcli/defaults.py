"""Defaults of the classifier, chosen by measurement (docs/benchmarks.md); no heavy imports."""

#: How a class with several examples gets its node set: ``"sfc"`` (fitted by SFC) or ``"mean"`` (mean map).
KSHOT = "sfc"
#: Weight of the global (SimpleShot) cosine added to the EMD score of a class matched through one
#: example or the mean feature map of its examples.
GLOBAL_WEIGHT = 0.5
#: The same for a class whose node set was fitted by SFC (the global term lowered its accuracy there).
SFC_GLOBAL_WEIGHT = 0.0


def global_weight_for(kshot: str) -> float:
    """The default global weight for classes whose node sets were made by ``kshot`` (``"mean"`` or ``"sfc"``)."""
    return SFC_GLOBAL_WEIGHT if kshot == "sfc" else GLOBAL_WEIGHT
