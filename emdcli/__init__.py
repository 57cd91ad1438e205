"""emdcli: few-shot image classification by DeepEMD, from the terminal.

The library is importable without side effects and prints nothing:

- :mod:`emdcli.model`: the ONNX backbone and its manifest
- :mod:`emdcli.folders`, :mod:`emdcli.images`: reading labelled folders and images
- :mod:`emdcli.matching`, :mod:`emdcli.transport`: DeepEMD node matching, exact EMD
- :mod:`emdcli.classify`: support sets, predictions
- :mod:`emdcli.cache`: the support-feature cache
"""

from __future__ import annotations

#: The package version (the single source: pyproject.toml reads it from here).
__version__ = "0.1.0"

__all__ = ["__version__"]
