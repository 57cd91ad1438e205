"""Values as every output row writes them, and the rows of an earlier output read back (``--resume``)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .files import earlier_output

Record = dict[str, Any]

#: Decimal places of scores and confidences in every output.
SCORE_DIGITS = 6


def rounded(x: float | None, digits: int = SCORE_DIGITS) -> float | None:
    """``x`` rounded to ``digits`` places as a plain float (None stays None)."""
    return None if x is None else round(float(x), digits)


@dataclass(frozen=True)
class Earlier:
    """What an earlier run left for ``--resume``: the file read (``FILE.partial`` or ``FILE``),
    its records, and its CSV header (None for JSON formats)."""

    path: Path
    records: list[Record]
    columns: list[str] | None


def read_earlier(output: Path, fmt: str, command: str) -> Earlier | None:
    """The rows an earlier (possibly unfinished) run of ``command`` left for ``output`` in ``fmt``
    (its ``.partial`` first), or None when there is none. DatasetError when it cannot be read as such."""
    path = earlier_output(output)
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} to resume from it ({exc})") from None
    bad = DatasetError(
        f"{path} is not {fmt} output of emdcli {command}; cannot resume from it",
        hint="remove the file, or pass the `format` it was written with",
    )
    try:
        if fmt == "csv":
            reader = csv.DictReader(io.StringIO(text))
            return Earlier(path, list(reader), list(reader.fieldnames or []))
        if fmt == "jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:  # a .partial document is complete too: the sink closes it before keeping it
            doc = json.loads(text)
            if doc.get("command") != command:
                raise bad
            records = doc["rows"]
        if not all(isinstance(r, dict) and "path" in r for r in records):
            raise bad
        return Earlier(path, records, None)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise bad from None
