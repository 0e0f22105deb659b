"""Trace files for the ``trace`` pattern: where they are and what they hold.

A trace CSV has a ``rate`` column (requests/s, one row per second) or an ``offset_s``
column (send offsets in seconds). Shipped traces live in ``loadgen/traces/`` and can be
named without a path (``file: mmpp_example``); see ``mmpp.py`` for how they were made.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from kservebench.errors import SpecError
from kservebench.loadgen.units import parse_duration, parse_rate

TRACES_DIR = Path(__file__).resolve().parent / "traces"


def parse_offset(value: Any, field: str) -> float:
    return parse_duration(value, field)


def resolve_trace_file(value: Any, field: str, base_dir: Path | None) -> Path:
    """A trace path as written, relative to the spec's folder, or a shipped trace's name."""
    if not isinstance(value, str) or not value:
        raise SpecError(field, value, "expected a CSV file path")
    candidates = [Path(value)]
    if base_dir is not None and not Path(value).is_absolute():
        candidates.insert(0, Path(base_dir) / value)
    candidates.append(TRACES_DIR / value)
    candidates.append(TRACES_DIR / f"{value}.csv")
    for path in candidates:
        if path.is_file():
            return path
    shipped = ", ".join(sorted(p.stem for p in TRACES_DIR.glob("*.csv")))
    raise SpecError(field, value, f"no such trace file (shipped traces: {shipped})")


def read_trace_csv(path: Path, field: str) -> tuple[str, tuple[float, ...]]:
    """("rate", per-second rates) or ("offset_s", send offsets) from a trace CSV."""
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        kind = next((c for c in ("rate", "offset_s") if c in columns), None)
        if kind is None:
            raise SpecError(field, str(path), "the CSV needs a `rate` or an `offset_s` column")
        check = parse_rate if kind == "rate" else parse_offset
        values = tuple(
            check(row[kind], f"{field}[row {i + 2}].{kind}") for i, row in enumerate(reader)
        )
    return kind, values
