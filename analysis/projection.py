"""A measured run's simulated projection (``DIR/simulated/``, written by the bench's local
target through ``kservebench.sim.project_run``), summarized to sit beside the measured data.

The measured run's run.json says whether a projection was made (``simulated_projection``:
its folder, or the error that prevented it); a folder without that entry is picked up too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kservebench.analysis.series import per_model, step_function
from kservebench.analysis.summary import RunData, load_run, summarize
from kservebench.results import PROJECTION_DIR, projection_title

RUN_KEY = "simulated_projection"  # in the measured run's run.json and report/summary.json


@dataclass
class Projection:
    entry: dict[str, Any]  # what run.json says, plus the title
    data: RunData | None = None  # None: missing (the error says why)
    summary: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``simulated_projection`` key of report/summary.json."""
        return {**self.entry, "summary": self.summary}


def find_projection(data: RunData) -> dict[str, Any] | None:
    """run.json's entry about the projection, or one for a projection folder found."""
    entry = data.run.get(RUN_KEY)
    if isinstance(entry, dict):
        return dict(entry)
    if (data.path / PROJECTION_DIR / "run.json").exists():
        return {"folder": PROJECTION_DIR, "mode": data.run.get("mode")}
    return None


def load_projection(
    data: RunData,
    slo_ms: float | None,
    window_s: float,
    rps_per_replica: float | None,
) -> Projection | None:
    """The projection of ``data`` loaded and summarized; None if the run has none."""
    entry = find_projection(data)
    if entry is None:
        return None
    mode = str(entry.get("mode") or data.run.get("mode") or "")
    entry.setdefault("title", projection_title(mode))
    if entry.get("error"):
        return Projection(entry)
    folder = data.path / str(entry.get("folder") or PROJECTION_DIR)
    try:
        projected = load_run(folder)
    except Exception as err:  # a broken projection must not cost the measured report
        return Projection({**entry, "error": f"unreadable {folder}: {err}"})
    # Named after the measured run, so tables and plot legends say whose projection it is.
    name = data.run.get("name") or data.path.resolve().name
    projected.run["name"] = f"{name} {entry.get('control_plane') or mode} projection"
    summary = summarize(projected, slo_ms, window_s, rps_per_replica)
    summary["replicas_by_pattern"] = replicas_by_pattern(
        projected.records, projected.series.get("replicas_ready"),
        projected.series.get("replicas_desired"),
    )  # fmt: skip
    return Projection(entry, projected, summary)


def replicas_by_pattern(
    records: pd.DataFrame,
    ready: pd.DataFrame | None,
    desired: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """Replicas over time, one row per model and pattern: what the autoscaler kept ready
    while the pattern's requests arrived (time-weighted mean, min, max, replica-seconds)
    and the most it asked for."""
    rows: list[dict[str, Any]] = []
    if ready is None or ready.empty or records.empty:
        return rows
    ready_by_model, desired_by_model = per_model(ready), per_model(desired)
    spans = records.groupby(["model", "pattern"], sort=False, observed=True)["intended_s"]
    for (model, pattern), times in spans:
        start, end = float(times.min()), float(times.max())
        frame = ready_by_model.get(str(model))
        if frame is None or end <= start:
            continue
        t, v = step_function(frame)
        stats = _step_stats(t, v, start, end)
        wanted = desired_by_model.get(str(model))
        most_desired = math.nan
        if wanted is not None:
            td, vd = step_function(wanted)
            most_desired = _step_stats(td, vd, start, end)["max"]
        rows.append(
            {
                "model": str(model),
                "pattern": str(pattern),
                "from_s": start,
                "to_s": end,
                "replicas_mean": stats["mean"],
                "replicas_min": stats["min"],
                "replicas_max": stats["max"],
                "desired_max": most_desired,
                "replica_seconds": stats["integral"],
            }
        )
    return rows


def _step_stats(times: Any, values: Any, start: float, end: float) -> dict[str, float]:
    """Time-weighted statistics of a step function (value holds until the next sample)
    over [start, end]."""
    frame = pd.DataFrame({"t": times, "v": values}).sort_values("t")
    before = frame[frame["t"] <= start].tail(1)
    inside = frame[(frame["t"] > start) & (frame["t"] < end)]
    steps = pd.concat([before.assign(t=start), inside], ignore_index=True)
    if steps.empty:
        return {"mean": math.nan, "min": math.nan, "max": math.nan, "integral": math.nan}
    widths = (steps["t"].shift(-1).fillna(end) - steps["t"]).clip(lower=0.0)
    integral = float((steps["v"] * widths).sum())
    return {
        "mean": integral / (end - start),
        "min": float(steps["v"].min()),
        "max": float(steps["v"].max()),
        "integral": integral,
    }
