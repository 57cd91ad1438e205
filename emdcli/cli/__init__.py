"""The ``emdcli`` command line: one module per command, thin over the library.

- :mod:`.app`: the Typer app, the entry point, error handling, signals
- :mod:`.common`: shared options, stderr messages, the session set-up
- :mod:`.reports`: each command's records and table
- one module per command: classify, evaluate, search, anomaly, explain, info, export
"""

from .app import app, main

__all__ = ["app", "main"]
