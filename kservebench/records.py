"""The per-request record: one row per request, the unit every stage agrees on.

Load generation writes these rows (``records.csv``, flushed at least every second so a
crash keeps everything up to then); the simulator writes the same rows for simulated
requests; analysis reads every ``records.csv`` below a results folder. Times are
epoch seconds (float) so records from different processes line up with Prometheus.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kservebench.results import files_of_run

RECORDS_FILE = "records.csv"

# column -> pandas dtype. Order is the CSV column order.
RECORD_COLUMNS: dict[str, str] = {
    "intended_s": "float64",  # when the pattern meant the request to be sent
    "sent_s": "float64",  # when it was actually sent
    "send_lag_ms": "float64",  # (sent - intended) * 1000: load-generator lag
    "latency_ms": "float64",  # send -> full response; NaN when unfinished
    "status": "int64",  # HTTP status; 0 when no response (connection error, unfinished)
    "ok": "bool",
    "error": "string",  # empty when ok
    "bytes": "int64",  # response body length
    "model": "string",
    "pattern": "string",
    "phase": "string",  # the pattern's phase at the intended time (e.g. "burst", "idle")
    "pod": "string",  # serving replica, when a response header names it
    "unfinished": "bool",  # still in flight when the run's drain timeout expired
    "cold": "bool",  # waited for a replica to start (known in simulation; else False)
}


def empty_records() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in RECORD_COLUMNS.items()})


def coerce_records(frame: pd.DataFrame) -> pd.DataFrame:
    """Give a frame exactly the record columns and dtypes (missing ones get defaults)."""
    defaults = {"float64": float("nan"), "int64": 0, "bool": False, "string": ""}
    out = pd.DataFrame(index=frame.index)
    for column, dtype in RECORD_COLUMNS.items():
        if column in frame:
            out[column] = _fill(frame[column], dtype, defaults[dtype])
        else:
            out[column] = pd.Series(defaults[dtype], index=frame.index).astype(dtype)
    return out


def _fill(values: pd.Series, dtype: str, default: object) -> pd.Series:
    if dtype == "float64":
        return pd.to_numeric(values, errors="coerce").astype(dtype)
    if dtype == "string":
        return values.astype("string").fillna(default)
    # Missing ints and bools take their default; go through a nullable dtype so pandas
    # never has to downcast an object column.
    nullable = "Int64" if dtype == "int64" else "boolean"
    return values.astype(nullable).fillna(default).astype(dtype)


def read_records(path: Path) -> pd.DataFrame:
    """Records from one CSV file, or from every ``records.csv`` of a results folder
    (not those of its nested simulated projection)."""
    path = Path(path)
    files = [path] if path.is_file() else files_of_run(path, RECORDS_FILE)
    # Only an empty field is missing: an error text such as "NA" stays text.
    frames = [pd.read_csv(f, keep_default_na=False, na_values=[""]) for f in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_records()
    return coerce_records(pd.concat(frames, ignore_index=True))
