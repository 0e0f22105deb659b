"""Cell formatting for the report's tables, and leaving out what has nothing to show.

A number that is absent (no series, no request) prints as a dash, never as 0 or NaN; a
row or column of dashes tells the reader nothing, so ``prune`` drops it, and a table left
without rows or value columns is dropped with its heading.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

DASH = "–"
# A cell is empty when nothing but dashes, slashes, separators and blanks remain.
_EMPTY = re.compile(r"^[\s–—\-/|,;:]*$")


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        if not math.isfinite(value):
            return DASH
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def pct(value: Any) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value * 100:.2f}%"


def signed_pct(value: Any) -> str:
    """A relative difference: +12.3% / -4.0%, a dash when unknown."""
    return DASH if value is None or not math.isfinite(value) else f"{value * 100:+.1f}%"


def is_missing(value: Any) -> bool:
    """None, NaN, or text made of dashes and separators only ("–", "– / –")."""
    if value is None:
        return True
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return bool(_EMPTY.match(value))
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def prune(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``frame`` without the rows and the value columns (those not in ``keys``) whose
    every value is missing; empty when no value is left at all."""
    if frame.empty:
        return frame
    values = [c for c in frame.columns if c not in keys]
    if not values:
        return frame.iloc[0:0]
    missing = frame[values].map(is_missing)
    frame = frame[~missing.all(axis=1)]
    keep = [c for c in values if not missing.loc[frame.index, c].all()]
    if frame.empty or not keep:
        return frame.iloc[0:0]
    return frame[[c for c in frame.columns if c in keys or c in keep]].reset_index(drop=True)
