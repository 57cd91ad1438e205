"""emdcli: few-shot image classification by DeepEMD, from the terminal and from Python.

    from pathlib import Path
    from emdcli import Classifier, read_labelled_folder

    clf = Classifier()                                    # the bundled model, emdcli's defaults
    support = clf.fit(read_labelled_folder(Path("examples/support")))
    for pred in clf.predict(support, [Path("examples/queries/clock/clock06.png")]):
        print(pred.predicted, pred.confidence)

The library prints nothing and returns dataclasses. Its parts, by concern:

- :mod:`emdcli.io`: finding and decoding images, labelled folders, atomic files
- :mod:`emdcli.model`: the ONNX backbone, its manifest, exporting one
- :mod:`emdcli.features`: the feature source (batched inference, the feature cache)
- :mod:`emdcli.matching`: nodes and exact EMD, SimpleShot, SFC, class node sets (Matcher)
- :mod:`emdcli.tasks`: classify, evaluate, search, anomaly, explain
- :mod:`emdcli.cli`: the command line over all of it

The names below are imported on first use, so ``import emdcli`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: The package version (the single source: pyproject.toml reads it from here).
__version__ = "0.2.0"

#: Public name -> the module that defines it (``module:name`` where the names differ).
_EXPORTS = {
    "load_model": "emdcli.model.backbone",
    "Backbone": "emdcli.model.backbone",
    "read_labelled_folder": "emdcli.io.folders",
    "LabelledFolder": "emdcli.io.folders",
    "FeatureSource": "emdcli.features.source",
    "FeatureCache": "emdcli.features.cache",
    "Matcher": "emdcli.matching.support",
    "Classifier": "emdcli.tasks.classify",
    "SupportSet": "emdcli.tasks.classify",
    "Prediction": "emdcli.tasks.classify",
    "Ranked": "emdcli.tasks.classify",
    "evaluate": "emdcli.tasks.evaluate",
    "EvaluationRun": "emdcli.tasks.evaluate",
    "Evaluation": "emdcli.tasks.evaluate",
    "MethodResult": "emdcli.tasks.evaluate",
    "search": "emdcli.tasks.search",
    "Gallery": "emdcli.tasks.search",
    "QueryHits": "emdcli.tasks.search",
    "Hit": "emdcli.tasks.search",
    "anomaly": "emdcli.tasks.anomaly",
    "AnomalyDetector": "emdcli.tasks.anomaly",
    "Judged": "emdcli.tasks.anomaly",
    "Verdict": "emdcli.tasks.anomaly",
    "render_match": "emdcli.render.explain",
    "Explanation": "emdcli.render.explain",
    "EmdcliError": "emdcli.errors",
}

__all__ = [
    "__version__",
    "load_model",
    "Backbone",
    "read_labelled_folder",
    "LabelledFolder",
    "FeatureSource",
    "FeatureCache",
    "Matcher",
    "Classifier",
    "SupportSet",
    "Prediction",
    "Ranked",
    "evaluate",
    "EvaluationRun",
    "Evaluation",
    "MethodResult",
    "search",
    "Gallery",
    "QueryHits",
    "Hit",
    "anomaly",
    "AnomalyDetector",
    "Judged",
    "Verdict",
    "render_match",
    "Explanation",
    "EmdcliError",
]

if TYPE_CHECKING:
    from .errors import EmdcliError
    from .features.cache import FeatureCache
    from .features.source import FeatureSource
    from .io.folders import LabelledFolder, read_labelled_folder
    from .matching.support import Matcher
    from .model.backbone import Backbone, load_model
    from .render.explain import Explanation, render_match
    from .tasks.anomaly import AnomalyDetector, Judged, Verdict, anomaly
    from .tasks.classify import Classifier, Prediction, Ranked, SupportSet
    from .tasks.evaluate import Evaluation, EvaluationRun, MethodResult, evaluate
    from .tasks.search import Gallery, Hit, QueryHits, search


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'emdcli' has no attribute {name!r}")
    module, _, attr = where.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
