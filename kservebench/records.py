"""The per-request record: one row per request, the unit every stage agrees on.

Load generation writes these rows (``records.csv``, flushed at least every second so a
crash keeps everything up to then); the simulator writes the same rows for simulated
requests; analysis reads every ``records.csv`` below a results folder. Times are
epoch seconds (float) so records from different processes line up with Prometheus.

Streaming LLM runs (OpenAI protocol) add the ``LLM_COLUMNS`` after the shared ones. A
frame keeps them only when its rows came with them: a tabular run never grows empty
token columns, and a folder mixing both kinds leaves them missing (NaN / <NA>) on the
tabular rows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
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


# Streaming extras, after the shared columns. Token counts are nullable: a failed request
# or a server that sends no ``usage`` leaves them unknown, which is not zero.
LLM_COLUMNS: dict[str, str] = {
    "ttft_ms": "float64",  # send -> first token
    "itl_ms": "float64",  # mean gap between consecutive token events
    "tpot_ms": "float64",  # (e2e - ttft) / (output_tokens - 1); NaN below 2 tokens
    "prompt_tokens": "Int64",
    "output_tokens": "Int64",
}


def tpot_ms(e2e_ms: Any, ttft_ms: Any, output_tokens: Any) -> float:
    """Time per output token after the first: (e2e - ttft) / (output_tokens - 1).

    NaN when a value is missing or there are fewer than two tokens (no gap to time)."""
    try:
        e2e, ttft, tokens = float(e2e_ms), float(ttft_ms), float(output_tokens)
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(e2e) and math.isfinite(ttft) and math.isfinite(tokens)) or tokens < 2:
        return math.nan
    return (e2e - ttft) / (tokens - 1)


def tpot_series(e2e_ms: pd.Series, ttft_ms: pd.Series, output_tokens: pd.Series) -> pd.Series:
    """``tpot_ms`` of every row (vectorised)."""
    tokens = pd.to_numeric(output_tokens, errors="coerce").astype("float64")
    e2e = pd.to_numeric(e2e_ms, errors="coerce").astype("float64")
    ttft = pd.to_numeric(ttft_ms, errors="coerce").astype("float64")
    return ((e2e - ttft) / (tokens - 1)).where(tokens >= 2).astype("float64")


def has_llm_columns(frame: pd.DataFrame) -> bool:
    return any(c in frame.columns for c in LLM_COLUMNS)


def empty_records(llm: bool = False) -> pd.DataFrame:
    columns = {**RECORD_COLUMNS, **(LLM_COLUMNS if llm else {})}
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})


def coerce_records(frame: pd.DataFrame, llm: bool | None = None) -> pd.DataFrame:
    """Give a frame exactly the record columns and dtypes (missing ones get defaults).

    ``llm``: keep the LLM columns (True), drop them (False), or keep them when the frame
    has any of them (None). A kept frame without ``tpot_ms`` (written before it existed)
    gets it from e2e latency, TTFT and output tokens."""
    defaults = {"float64": float("nan"), "int64": 0, "bool": False, "string": ""}
    out = pd.DataFrame(index=frame.index)
    for column, dtype in RECORD_COLUMNS.items():
        if column in frame:
            out[column] = _fill(frame[column], dtype, defaults[dtype])
        else:
            out[column] = pd.Series(defaults[dtype], index=frame.index).astype(dtype)
    if not (has_llm_columns(frame) if llm is None else llm):
        return out
    for column, dtype in LLM_COLUMNS.items():
        values = frame[column] if column in frame else pd.Series(np.nan, index=frame.index)
        out[column] = _fill(values, dtype, None)
    if "tpot_ms" not in frame:
        out["tpot_ms"] = tpot_series(out["latency_ms"], out["ttft_ms"], out["output_tokens"])
    return out


def _fill(values: pd.Series, dtype: str, default: object) -> pd.Series:
    if dtype == "float64":
        return pd.to_numeric(values, errors="coerce").astype(dtype)
    if dtype == "Int64":  # a count: anything not a whole number is unknown, not rounded
        number = pd.to_numeric(values, errors="coerce").astype("float64")
        whole = np.isfinite(number) & (number == np.round(number))
        return number.where(whole).astype("Int64")
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
    llm = any(has_llm_columns(f) for f in frames)
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_records(llm)
    return coerce_records(pd.concat(frames, ignore_index=True), llm)
