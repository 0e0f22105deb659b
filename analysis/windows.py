"""Where each pattern ran, where a model idled, and what a series amounted to there.

Comparing serving modes is only fair like for like: the same pattern of the same model in
each run, over the same stretch of that pattern's own clock. A pattern's window starts at
its first intended send and lasts its planned duration (run.json's ``plan`` for a bench
run, the spec's ``patterns`` for a simulated one); without either it ends at the last
intended send. A model's idle windows are the gaps between its consecutive patterns (the
bench's cooldowns): what a mode costs while nothing arrives is what scale to zero saves.
Pure functions of records, run.json and tidy series.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from kservebench.analysis.series import integrate_series, step_function, value_at
from kservebench.errors import SpecError
from kservebench.loadgen.units import parse_duration

WINDOW_COLUMNS = ["model", "pattern", "start_s", "end_s"]
IDLE_COLUMNS = ["model", "after", "start_s", "end_s"]
ANY_MODEL = ""  # a duration known for a pattern label whatever the model (spec patterns)


def planned_durations(run: dict[str, Any]) -> dict[tuple[str, str], float]:
    """(model, pattern label) -> planned seconds; model ``""`` when it holds for every model.

    The bench's plan names each load phase's folder ``loads/<model>/<label>[-repN]``;
    a simulated run has no plan, but its spec lists the same patterns (label
    ``<index>-<type>``, as the bench names them)."""
    out: dict[tuple[str, str], float] = {}
    for phase in run.get("plan") or []:
        if not isinstance(phase, dict) or phase.get("kind") != "load":
            continue
        parts = PurePosixPath(str(phase.get("folder") or "")).parts
        duration = phase.get("duration_s")
        if len(parts) >= 3 and isinstance(duration, int | float) and duration > 0:
            out[(parts[-2], re.sub(r"-rep\d+$", "", parts[-1]))] = float(duration)
    if out:
        return out
    spec = run.get("spec")
    patterns = spec.get("patterns") if isinstance(spec, dict) else None
    for i, pattern in enumerate(patterns if isinstance(patterns, list) else []):
        if not isinstance(pattern, dict) or "type" not in pattern or "duration" not in pattern:
            continue
        try:
            seconds = parse_duration(pattern["duration"], f"patterns[{i}].duration")
        except SpecError:
            continue
        if seconds > 0:
            out[(ANY_MODEL, f"{i}-{pattern['type']}")] = seconds
    return out


def pattern_windows(records: pd.DataFrame, run: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per model and pattern run: model, pattern, start_s, end_s, sorted by start.

    Repetitions of an experiment reuse a pattern's label: a silence longer than the
    planned pattern starts the next run of it."""
    if records.empty:
        return pd.DataFrame(columns=WINDOW_COLUMNS).astype({"start_s": float, "end_s": float})
    durations = planned_durations(run or {})
    times = records["intended_s"].fillna(records["sent_s"]).to_numpy(dtype="float64")
    frame = pd.DataFrame(
        {"model": records["model"].astype(str), "pattern": records["pattern"].astype(str),
         "t": times}
    )  # fmt: skip
    frame = frame[np.isfinite(frame["t"])]
    rows = []
    for (model, pattern), group in frame.groupby(["model", "pattern"], sort=False):
        t = np.sort(group["t"].to_numpy())
        planned = durations.get((model, pattern), durations.get((ANY_MODEL, pattern)))
        splits = np.flatnonzero(np.diff(t) > planned) + 1 if planned else []
        for chunk in np.split(t, splits):
            start = float(chunk[0])
            end = start + planned if planned else float(chunk[-1])
            rows.append({"model": model, "pattern": pattern, "start_s": start, "end_s": end})
    out = pd.DataFrame(rows, columns=WINDOW_COLUMNS)
    return out.sort_values(["model", "start_s"], ignore_index=True)


def idle_windows(windows: pd.DataFrame) -> pd.DataFrame:
    """The gaps between consecutive pattern windows of each model (overlaps leave none)."""
    rows = []
    for model, group in windows.groupby("model", sort=True):
        group = group.sort_values("start_s")
        reach = -math.inf  # the latest end so far: overlapping patterns leave no gap
        after = ""
        for row in group.itertuples(index=False):
            if math.isfinite(reach) and row.start_s > reach:
                rows.append({"model": model, "after": after, "start_s": reach,
                             "end_s": float(row.start_s)})  # fmt: skip
            if row.end_s > reach:
                reach, after = float(row.end_s), str(row.pattern)
    return pd.DataFrame(rows, columns=IDLE_COLUMNS)


def model_span(windows: pd.DataFrame, model: str) -> tuple[float, float]:
    """First pattern start -> last pattern end of ``model`` (NaN when it has none)."""
    mine = windows[windows["model"] == model]
    if mine.empty:
        return math.nan, math.nan
    return float(mine["start_s"].min()), float(mine["end_s"].max())


def integral(frame: pd.DataFrame | None, start_s: float, end_s: float) -> float:
    """Integral over [start, end] of a gauge summed over its series (pods): replica-
    seconds from replicas_ready, CPU-seconds from cpu_cores. NaN without a series."""
    if frame is None or frame.empty or not (math.isfinite(start_s) and math.isfinite(end_s)):
        return math.nan
    return integrate_series(frame, start_s, end_s)


def maximum(frame: pd.DataFrame | None, start_s: float, end_s: float) -> float:
    """Largest value of a summed gauge over [start, end], counting the one held at start."""
    if frame is None or frame.empty or not (math.isfinite(start_s) and math.isfinite(end_s)):
        return math.nan
    times, values = step_function(frame)
    held = value_at(times, values, np.array([start_s]))
    inside = values[(times > start_s) & (times <= end_s)]
    candidates = np.concatenate([held[np.isfinite(held)], inside[np.isfinite(inside)]])
    return float(candidates.max()) if len(candidates) else math.nan


def in_window(
    records: pd.DataFrame, model: str, start_s: float, end_s: float, pattern: str | None = None
) -> pd.DataFrame:
    """Records of ``model`` (and ``pattern``) intended to be sent in [start, end]."""
    t = records["intended_s"].fillna(records["sent_s"])
    keep = (records["model"] == model) & (t >= start_s) & (t <= end_s)
    if pattern is not None:
        keep &= records["pattern"] == pattern
    return records[keep]
