"""The simulator against measurement: a local run with live autoscaling beside its own
simulated projection (``DIR/simulated/``), figure by figure.

Both ran the same plan with the same arrivals, but on different clocks (the simulator
starts each model's timeline on its own), so every figure is taken per model over that
model's span in each run: its first pattern's start to its last pattern's end
(``windows.model_span``). A run whose replicas were fixed has nothing to compare: its
replica series says what the bench started, not what an autoscaler did.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from kservebench.analysis import latency, windows
from kservebench.analysis.fmt import fmt, signed_pct
from kservebench.analysis.series import per_model, step_function
from kservebench.analysis.summary import RunData, episodes_of

# figure -> heading in the report's table
FIGURES = {
    "replica_seconds": "replica-seconds",
    "max_replicas": "max replicas",
    "cold_starts": "cold starts",
    "p95_ms": "p95 latency (ms)",
}
Triple = tuple[float, float, float]  # (measured, simulated, relative difference)


def has_live_replicas(data: RunData) -> bool:
    """Whether ``data``'s replica series is an autoscaler's (not a fixed count)."""
    fixed = str(data.run.get("replicas") or "").startswith("fixed")
    series = data.series.get("replicas_ready")
    return not fixed and series is not None and not series.empty


def rel_diff(measured: float, simulated: float) -> float:
    """(simulated - measured) / measured; 0 when both are 0, NaN when unknown."""
    if not (math.isfinite(measured) and math.isfinite(simulated)):
        return math.nan
    if measured == 0:
        return 0.0 if simulated == 0 else math.nan
    return (simulated - measured) / measured


def model_figures(data: RunData, slo_ms: float | None = None) -> dict[str, dict[str, float]]:
    """Per model of ``data``: replica-seconds and max ready replicas over its span, the
    cold starts in it and the p95 latency of its successful requests. (``slo_ms`` is
    accepted for symmetry with the verdict; no figure here depends on it.)"""
    spans = windows.pattern_windows(data.records, data.run)
    ready = per_model(data.series.get("replicas_ready"))
    episodes = episodes_of(data)
    out: dict[str, dict[str, float]] = {}
    for model in sorted(set(spans["model"])):
        start, end = windows.model_span(spans, model)
        recs = windows.in_window(data.records, model, start, end)
        ok = recs["ok"].to_numpy(dtype=bool)
        lat = recs["latency_ms"].to_numpy(dtype="float64")[ok]
        colds = [e for e in episodes if e.model == model and start <= e.first_waiting_s <= end]
        out[model] = {
            "replica_seconds": windows.integral(ready.get(model), start, end),
            "max_replicas": windows.maximum(ready.get(model), start, end),
            "cold_starts": float(len(colds)) if model in ready else math.nan,
            "p95_ms": latency.latency_percentiles(lat)["p95"],
        }
    return out


def compare_projection(
    measured: RunData, projected: RunData, slo_ms: float | None = None
) -> dict[str, dict[str, Triple]]:
    """model -> figure -> (measured, simulated, relative difference), for every model in
    both runs; figures are ``FIGURES``' keys."""
    got, sim = model_figures(measured, slo_ms), model_figures(projected, slo_ms)
    out: dict[str, dict[str, Triple]] = {}
    for model in sorted(set(got) & set(sim)):
        m, s = got[model], sim[model]
        out[model] = {f: (m[f], s[f], rel_diff(m[f], s[f])) for f in FIGURES}
    return out


def comparison_tables(comparison: dict[str, dict[str, Any]]) -> list[tuple[str, pd.DataFrame]]:
    """(model, table) per model: one row per figure, measured, simulated, difference."""
    out = []
    for model, figures in comparison.items():
        rows = []
        for figure, heading in FIGURES.items():
            m, s, d = (math.nan if v is None else v for v in figures[figure])
            digits = 0 if figure in ("replica_seconds", "max_replicas", "cold_starts") else 1
            rows.append(
                {"figure": heading, "measured": fmt(m, digits), "simulated": fmt(s, digits),
                 "difference": signed_pct(d)}
            )  # fmt: skip
        out.append((model, pd.DataFrame(rows)))
    return out


def aligned_replicas(data: RunData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model, ready replicas as (seconds since the model's first pattern start, value),
    so a measured and a simulated timeline overlay."""
    spans = windows.pattern_windows(data.records, data.run)
    out = {}
    for model, frame in per_model(data.series.get("replicas_ready")).items():
        start, end = windows.model_span(spans, model)
        if not math.isfinite(start):
            continue
        t, v = step_function(frame)
        keep = (t >= start - 15.0) & (t <= end + 15.0)
        out[model] = (t[keep] - start, v[keep])
    return out
