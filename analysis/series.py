"""Tidy series tables: loading them and the arithmetic every metric needs.

All functions here are pure (frames in, frames/numbers out). Counters are handled the way
Prometheus does: a drop in a counter is a reset (the process restarted), so the increase
across it is the new value, never a negative number. Gaps are left as gaps; NaN samples
are dropped before any arithmetic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kservebench.analysis.collect import COLLECTION_FILE, SERIES_DIR
from kservebench.results import files_of_run

BASE_COLUMNS = ("time_s", "value", "family")


def load_series(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Every ``series/<family>.parquet`` of a results folder (also below subfolders)."""
    frames: dict[str, list[pd.DataFrame]] = {}
    # The report's own files and a nested simulated projection are not this run's.
    for path in files_of_run(run_dir, f"{SERIES_DIR}/*.parquet", skip=("report",)):
        frames.setdefault(path.stem, []).append(pd.read_parquet(path))
    return {name: pd.concat(parts, ignore_index=True) for name, parts in frames.items()}


def load_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SERIES_DIR / COLLECTION_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def make_series(
    family: str,
    times: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    **labels: object,
) -> pd.DataFrame:
    """A tidy series table for one series (e.g. the replicas a local run started)."""
    frame = pd.DataFrame(
        {"time_s": np.asarray(times, dtype="float64"), "value": np.asarray(values, dtype="float64")}
    )
    frame["family"] = pd.Series(family, index=frame.index, dtype="string")
    for key, value in labels.items():
        frame[key] = pd.Series(str(value), index=frame.index, dtype="string")
    return frame


def write_series(run_dir: Path, family: str, frames: Iterable[pd.DataFrame]) -> Path:
    """Write ``series/<family>.parquet`` (several series of one family concatenated)."""
    path = Path(run_dir) / SERIES_DIR / f"{family}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(list(frames), ignore_index=True).to_parquet(path, index=False)
    return path


def label_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in BASE_COLUMNS]


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop NaN samples and sort by series, then time."""
    frame = frame[np.isfinite(frame["value"].to_numpy(dtype="float64"))]
    return frame.sort_values([*label_columns(frame), "time_s"], kind="stable")


def counter_increases(frame: pd.DataFrame, born_after_s: float | None = None) -> pd.DataFrame:
    """Per-sample increase of each counter series (identity = all its labels).

    The first sample of a series contributes nothing (its history is unknown) unless it
    comes after ``born_after_s``: client libraries create a labelled series at its first
    observation, so a series first seen inside the window started from zero in it. After
    a reset the increase is the new value.
    """
    frame = clean(frame)
    labels = label_columns(frame)
    values = frame["value"].to_numpy(dtype="float64")
    delta = np.diff(values, prepend=np.nan)
    if labels:
        same = (frame[labels].shift() == frame[labels]).all(axis=1).to_numpy()
    else:
        same = np.ones(len(frame), dtype=bool)
    if len(same):
        same[0] = False
    increase = np.where(delta < 0, values, delta)
    first = ~same
    born = (
        first & (frame["time_s"].to_numpy() > born_after_s)
        if born_after_s is not None
        else first & False
    )
    increase = np.where(same, increase, np.where(born, values, 0.0))
    out = frame[["time_s", *labels]].copy()
    out["increase"] = increase
    return out


def binned_increase(
    frame: pd.DataFrame, by: list[str], window_s: float, origin_s: float
) -> pd.DataFrame:
    """Counter increase per (time window, ``by`` labels); window start in ``time_s``."""
    inc = counter_increases(frame, born_after_s=origin_s)
    inc["time_s"] = origin_s + np.floor((inc["time_s"] - origin_s) / window_s) * window_s
    keys = ["time_s", *[b for b in by if b in inc.columns]]
    return inc.groupby(keys, as_index=False, observed=True)["increase"].sum()


def total_increase(
    frame: pd.DataFrame, by: list[str], start_s: float, end_s: float
) -> pd.DataFrame:
    """Counter increase over (start, end] per ``by`` labels."""
    inc = counter_increases(frame, born_after_s=start_s)
    inc = inc[(inc["time_s"] > start_s) & (inc["time_s"] <= end_s)]
    keys = [b for b in by if b in inc.columns]
    if not keys:
        return pd.DataFrame({"increase": [inc["increase"].sum()]})
    return inc.groupby(keys, as_index=False, observed=True)["increase"].sum()


def histogram_quantile(q: float, upper_bounds: np.ndarray, cumulative: np.ndarray) -> float:
    """Prometheus-style quantile from cumulative bucket counts (``le`` sorted, +Inf last).

    Linear interpolation inside the bucket holding the rank; the lowest bucket starts at 0;
    a rank in the +Inf bucket answers the highest finite bound.
    """
    if len(upper_bounds) < 2 or not math.isinf(upper_bounds[-1]):
        return math.nan
    counts = np.maximum.accumulate(np.nan_to_num(cumulative, nan=0.0))
    total = counts[-1]
    if total <= 0:
        return math.nan
    rank = q * total
    i = int(np.searchsorted(counts, rank, side="left"))
    i = min(i, len(counts) - 1)
    if i == len(counts) - 1:
        return float(upper_bounds[-2])
    lower = 0.0 if i == 0 else float(upper_bounds[i - 1])
    below = 0.0 if i == 0 else float(counts[i - 1])
    upper = float(upper_bounds[i])
    in_bucket = counts[i] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


def bucket_matrix(increases: pd.DataFrame, row_keys: list[str]) -> pd.DataFrame:
    """Rows = ``row_keys`` groups, columns = sorted ``le`` bounds, cells = increases."""
    frame = increases.copy()
    frame["le_f"] = frame["le"].astype("float64")
    wide = frame.pivot_table(
        index=row_keys, columns="le_f", values="increase", aggfunc="sum", fill_value=0.0
    )
    return wide.reindex(sorted(wide.columns), axis=1)


def quantiles_from_matrix(wide: pd.DataFrame, qs: list[float]) -> pd.DataFrame:
    bounds = wide.columns.to_numpy(dtype="float64")
    rows = wide.to_numpy(dtype="float64")
    out = {f"p{round(q * 100):g}": [histogram_quantile(q, bounds, r) for r in rows] for q in qs}
    return pd.DataFrame(out, index=wide.index)


def step_function(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """A gauge as a step function: the sum over series at each sample time, sorted."""
    if frame.empty:
        return np.array([]), np.array([])
    frame = frame[np.isfinite(frame["value"].to_numpy(dtype="float64"))]
    summed = frame.groupby("time_s")["value"].sum().sort_index()
    return summed.index.to_numpy(dtype="float64"), summed.to_numpy(dtype="float64")


def value_at(times: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Step-function value at each of ``at`` (the last sample at or before; NaN before any)."""
    idx = np.searchsorted(times, at, side="right") - 1
    out = np.where(idx >= 0, values[np.clip(idx, 0, None)] if len(values) else np.nan, np.nan)
    return out.astype("float64")


def integrate_step(
    times: np.ndarray, values: np.ndarray, start_s: float, end_s: float, max_gap_s: float = 30.0
) -> float:
    """Integral of a step function over [start, end]; a sample holds for at most
    ``max_gap_s`` (a gap in scraping is unknown, not the last value forever)."""
    if len(times) == 0 or end_s <= start_s:
        return 0.0
    times = np.asarray(times, dtype="float64")
    # Each sample holds until the next one, for at most max_gap_s after its own time (a
    # sample long before the window does not hold across it).
    stop = np.minimum(np.append(times[1:], end_s), times + max_gap_s)
    dt = np.clip(np.clip(stop, start_s, end_s) - np.clip(times, start_s, end_s), 0.0, None)
    ok = np.isfinite(values)
    return float(np.sum(values[ok] * dt[ok]))


def integrate_series(frame: pd.DataFrame, start_s: float, end_s: float) -> float:
    """Integral over [start, end] of a gauge summed over its series, each integrated on its
    own: a series that stops (a pod deleted, its CPU series gone) holds its last value for
    one of its sampling steps, not until another pod's next sample."""
    frame = frame[np.isfinite(frame["value"].to_numpy(dtype="float64"))]
    if frame.empty or end_s <= start_s:
        return 0.0
    labels = label_columns(frame)
    groups = frame.groupby(labels, observed=True, dropna=False) if labels else [((), frame)]
    total = 0.0
    for _, one in groups:
        one = one.sort_values("time_s")
        t, v = one["time_s"].to_numpy(dtype="float64"), one["value"].to_numpy(dtype="float64")
        step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
        total += integrate_step(np.append(t, t[-1] + step), np.append(v, 0.0), start_s, end_s)
    return total


def per_model(frame: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Split a series table by its ``model`` label ("" when it has none)."""
    if frame is None or frame.empty:
        return {}
    if "model" not in frame.columns:
        return {"": frame}
    return {str(m): g for m, g in frame.groupby("model", observed=True)}
