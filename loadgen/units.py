"""Units written in specs: durations (15s, 2m, 1h, 500ms, 1m30s or seconds) and rates.

Every stage reuses ``parse_duration`` so a duration means the same everywhere.
"""

from __future__ import annotations

import math
import re
from typing import Any

from kservebench.errors import SpecError

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(value: Any, field: str) -> float:
    """Seconds from ``15s``, ``2m``, ``1h``, ``500ms``, ``1m30s`` or a plain number."""
    if isinstance(value, bool):
        raise SpecError(field, value, "expected a duration such as 15s, 2m, 1h or seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise SpecError(
                    field, value, "expected a duration such as 15s, 2m, 1h or seconds"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise SpecError(field, value, "expected a duration such as 15s, 2m, 1h or seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise SpecError(field, value, "a duration must be a finite number >= 0")
    return seconds


def parse_rate(value: Any, field: str) -> float:
    """A request rate in requests/s: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SpecError(field, value, "expected a rate in requests/s (a number >= 0)")
    try:
        rate = float(value)
    except ValueError:
        raise SpecError(field, value, "expected a rate in requests/s (a number >= 0)") from None
    if not math.isfinite(rate) or rate < 0:
        raise SpecError(field, value, "a rate must be a finite number >= 0")
    return rate


def parse_positive_duration(value: Any, field: str) -> float:
    seconds = parse_duration(value, field)
    if seconds <= 0:
        raise SpecError(field, value, "must be longer than 0 s")
    return seconds
