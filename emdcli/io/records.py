"""Values as every output row writes them."""

from __future__ import annotations

#: Decimal places of scores and confidences in every output.
SCORE_DIGITS = 6


def rounded(x: float | None, digits: int = SCORE_DIGITS) -> float | None:
    """``x`` rounded to ``digits`` places as a plain float (None stays None)."""
    return None if x is None else round(float(x), digits)
