"""emdcli: few-shot image classification by DeepEMD, from the terminal.

The library is importable without side effects and prints nothing:

- :mod:`emdcli.model`: the ONNX backbone and its manifest
- :mod:`emdcli.folders`, :mod:`emdcli.images`: reading labelled folders and images
- :mod:`emdcli.matching`, :mod:`emdcli.transport`: DeepEMD node matching, exact EMD
- :mod:`emdcli.classify`: support sets, predictions
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("emdcli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
