"""Autoscaling responsiveness, provisioning and resource efficiency (pure functions).

- A load step is a change of the offered request rate by at least ``min_ratio`` between
  the ``window_s`` before and after a moment; responsiveness is the time from the step
  to the first replica change and to the last change before the next step (settled).
- Provisioning compares ready replicas with what the offered load needed at the
  per-replica target rate: replica-seconds above (over) and below (under) that need.
- Efficiency: CPU/memory used vs requested, CPU-seconds per 1000 requests.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kservebench.analysis.series import (
    integrate_series,
    integrate_step,
    per_model,
    step_function,
    value_at,
)


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is zero or either is NaN (an absent request is not infinity)."""
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return math.nan
    return a / b


def offered_rps(records: pd.DataFrame, bin_s: float = 1.0) -> pd.Series:
    """Intended sends per second in ``bin_s`` bins, indexed by bin start (gaps filled 0)."""
    if records.empty:
        return pd.Series(dtype="float64")
    t = records["intended_s"].fillna(records["sent_s"]).to_numpy(dtype="float64")
    t = t[np.isfinite(t)]
    origin = math.floor(t.min())
    bins = np.floor((t - origin) / bin_s).astype("int64")
    counts = np.bincount(bins) / bin_s
    return pd.Series(counts, index=origin + np.arange(len(counts)) * bin_s, dtype="float64")


def detect_load_steps(
    offered: pd.Series, window_s: float = 10.0, min_ratio: float = 1.5, min_delta_rps: float = 1.0
) -> list[float]:
    """Times where the mean rate over the next window differs from the previous window by
    ``min_ratio`` (up or down) and ``min_delta_rps``; one per ``window_s`` at most."""
    if len(offered) < 3:
        return []
    bin_s = float(np.median(np.diff(offered.index.to_numpy(dtype="float64"))))
    w = max(1, round(window_s / bin_s))
    rate = offered.to_numpy(dtype="float64")
    csum = np.concatenate([[0.0], np.cumsum(rate)])
    idx = np.arange(w, len(rate) - w + 1)
    if len(idx) == 0:
        return []
    before = (csum[idx] - csum[idx - w]) / w
    after = (csum[idx + w] - csum[idx]) / w
    delta = np.abs(after - before)
    low = np.minimum(before, after)
    ratio = np.where(low > 0, np.maximum(before, after) / np.where(low > 0, low, 1), np.inf)
    candidate = (ratio >= min_ratio) & (delta >= min_delta_rps)
    steps: list[float] = []
    order = np.argsort(-delta, kind="stable")
    taken: list[int] = []
    for k in order:
        if not candidate[k]:
            continue
        if all(abs(idx[k] - j) >= w for j in taken):
            taken.append(int(idx[k]))
    times = offered.index.to_numpy(dtype="float64")
    steps = sorted(float(times[j]) for j in taken)
    return steps


def responsiveness(
    replicas: pd.DataFrame, steps: list[float], end_s: float
) -> list[dict[str, float]]:
    """Per load step: replicas before, time to first change, time to settle, settled count."""
    times, values = step_function(replicas)
    out = []
    for i, step in enumerate(steps):
        stop = steps[i + 1] if i + 1 < len(steps) else end_s
        before = value_at(times, values, np.array([step]))[0]
        inside = (times > step) & (times <= stop)
        t_in, v_in = times[inside], values[inside]
        changed = np.nonzero(v_in != before)[0]
        row = {"step_s": step, "replicas_before": float(before)}
        if len(changed):
            change_points = np.nonzero(np.diff(np.concatenate([[before], v_in])) != 0)[0]
            row["first_change_s"] = float(t_in[changed[0]] - step)
            row["settled_s"] = float(t_in[change_points[-1]] - step)
            row["settled_replicas"] = float(v_in[-1])
        else:
            row.update(first_change_s=math.nan, settled_s=math.nan, settled_replicas=float(before))
        out.append(row)
    return out


def provisioning(
    replicas: pd.DataFrame,
    offered: pd.Series,
    rps_per_replica: float | None,
    start_s: float,
    end_s: float,
) -> dict[str, float]:
    """Replica-seconds in total, and over/under what ceil(offered / target) needed."""
    times, values = step_function(replicas)
    total = integrate_step(times, values, start_s, end_s)
    out = {
        "replica_seconds": total,
        "over_replica_seconds": math.nan,
        "under_replica_seconds": math.nan,
        "needed_replica_seconds": math.nan,
    }
    if not rps_per_replica or offered.empty or len(times) == 0:
        return out
    grid = offered.index.to_numpy(dtype="float64")
    keep = (grid >= start_s - 1) & (grid <= end_s)
    grid, load = grid[keep], offered.to_numpy(dtype="float64")[keep]
    if len(grid) < 2:
        return out
    dt = np.diff(np.append(grid, grid[-1] + np.median(np.diff(grid))))
    needed = np.ceil(load / rps_per_replica)
    have = value_at(times, values, grid)
    have = np.where(np.isfinite(have), have, 0.0)
    out["over_replica_seconds"] = float(np.sum(np.maximum(have - needed, 0) * dt))
    out["under_replica_seconds"] = float(np.sum(np.maximum(needed - have, 0) * dt))
    out["needed_replica_seconds"] = float(np.sum(needed * dt))
    return out


def gauge_stats(frame: pd.DataFrame | None, start_s: float, end_s: float) -> dict[str, float]:
    """Mean/p95/max of a gauge summed over its series (pods) at each sample time."""
    nan = {"mean": math.nan, "p95": math.nan, "max": math.nan}
    if frame is None or frame.empty:
        return nan
    frame = frame[(frame["time_s"] >= start_s) & (frame["time_s"] <= end_s)]
    _, values = step_function(frame)
    if len(values) == 0:
        return nan
    return {
        "mean": float(values.mean()),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
    }


def utilization(
    series: dict[str, pd.DataFrame], requests_by_model: dict[str, int], start_s: float, end_s: float
) -> dict[str, dict[str, float]]:
    """Per model: CPU cores and memory used (mean/p95/max), requested, CPU-s per 1k req."""
    out: dict[str, dict[str, float]] = {}
    cpu, mem = per_model(series.get("cpu_cores")), per_model(series.get("memory_bytes"))
    cpu_req = per_model(series.get("cpu_requests_cores"))
    mem_req = per_model(series.get("memory_requests_bytes"))
    for model in sorted(set(cpu) | set(mem)):
        row: dict[str, float] = {}
        for key, frame in (("cpu_cores", cpu.get(model)), ("memory_bytes", mem.get(model))):
            for stat, v in gauge_stats(frame, start_s, end_s).items():
                row[f"{key}_{stat}"] = v
        row["cpu_requested_cores"] = gauge_stats(cpu_req.get(model), start_s, end_s)["mean"]
        row["memory_requested_bytes"] = gauge_stats(mem_req.get(model), start_s, end_s)["mean"]
        row["cpu_utilization"] = ratio(row["cpu_cores_mean"], row["cpu_requested_cores"])
        row["memory_utilization"] = ratio(row["memory_bytes_mean"], row["memory_requested_bytes"])
        cpu_seconds = math.nan
        if model in cpu:  # per pod: a deleted pod's CPU stops with its series
            cpu_seconds = integrate_series(cpu[model], start_s, end_s)
        row["cpu_seconds"] = cpu_seconds
        n = requests_by_model.get(model, requests_by_model.get("", 0))
        row["cpu_seconds_per_1k"] = ratio(cpu_seconds, n / 1000.0)
        out[model] = row
    return out
