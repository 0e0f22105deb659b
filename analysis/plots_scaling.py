"""Replica trajectories: what the autoscaler did against the load it was offered.

One panel per model and run: ready replicas (solid) and desired replicas (dashed) as
step lines, a marker at every change of desired replicas (up ▲, down ▼), the model's
offered request rate on a second axis, and its patterns shaded and labelled. Summing
models into one line would hide each one's autoscaler, so models never share a panel.
The projection overlay sets a measured run's trajectories against its simulated
projection's on the model's own clock (measured solid, simulated dashed).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from kservebench.analysis import scaling, simcompare, windows
from kservebench.analysis.plots import PlotInput, _figure, _png
from kservebench.analysis.series import per_model, step_function
from kservebench.analysis.summary import RunData

OFFERED_BIN_S = 2.0
MARGIN_S = 20.0  # around a model's patterns, so its scale-down after the last one shows


def scale_events(frame: pd.DataFrame | None) -> list[tuple[float, float, int]]:
    """(time, new value, +1 up / -1 down) at every change of a replica step function."""
    if frame is None or frame.empty:
        return []
    t, v = step_function(frame)
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    changes = np.flatnonzero(np.diff(v) != 0) + 1
    return [(float(t[i]), float(v[i]), 1 if v[i] > v[i - 1] else -1) for i in changes]


def _offered(records: pd.DataFrame, model: str) -> pd.Series:
    mine = records[records["model"] == model] if len(records) else records
    return scaling.offered_rps(mine, OFFERED_BIN_S)


def _shade_patterns(ax: Axes, spans: pd.DataFrame, origin: float) -> None:
    for i, w in enumerate(spans.sort_values("start_s").itertuples()):
        ax.axvspan(w.start_s - origin, w.end_s - origin, color="0.5", alpha=0.08 + 0.04 * (i % 2))
        # Staggered, so labels of patterns that start together stay readable.
        ax.text(w.start_s - origin, 0.98 - 0.09 * (i % 3), f" {w.pattern}", va="top",
                transform=ax.get_xaxis_transform(), fontsize=7, color="0.3")  # fmt: skip


def _panel(ax: Axes, run: PlotInput, model: str, color: str) -> None:
    data, origin = run.data, run.start_s
    ready = per_model(data.series.get("replicas_ready")).get(model)
    desired = per_model(data.series.get("replicas_desired")).get(model)
    spans = windows.pattern_windows(data.records, data.run)
    spans = spans[spans["model"] == model]
    _shade_patterns(ax, spans, origin)
    for frame, style, name in ((ready, "-", "ready"), (desired, "--", "desired")):
        if frame is not None and len(frame):
            t, v = step_function(frame)
            ax.step(t - origin, v, style, where="post", color=color, label=f"{name} replicas")
    for t, v, way in scale_events(desired if desired is not None else ready):
        ax.plot(t - origin, v, "^" if way > 0 else "v", color="C2" if way > 0 else "C3",
                markersize=6, linestyle="none")  # fmt: skip
    ax.set_ylabel("replicas")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{data.label} — {model}", fontsize=9)
    offered = _offered(data.records, model)
    if len(offered):
        twin = ax.twinx()
        twin.fill_between(offered.index - origin, offered.to_numpy(), step="post",
                          color="0.3", alpha=0.15, label="offered req/s")  # fmt: skip
        twin.set_ylabel("offered req/s", fontsize=8)
        twin.set_ylim(bottom=0)
        ax.set_zorder(twin.get_zorder() + 1)  # the replica lines above the load
        ax.patch.set_visible(False)
        ax.plot([], [], color="0.3", alpha=0.3, lw=6, label="offered req/s (right)")
    if len(spans):
        start, end = windows.model_span(spans, model)
        ax.set_xlim(start - origin - MARGIN_S, end - origin + MARGIN_S)
    ax.plot([], [], "^", color="C2", label="scaled up")
    ax.plot([], [], "v", color="C3", label="scaled down")


def _finish_panels(fig: Figure, axes: list[Axes], xlabel: str) -> bytes:
    """One legend above all panels (inside one it would hide the pattern labels)."""
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    if handles:
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=len(handles), fontsize=8, frameon=False)  # fmt: skip
    return _png(fig)


def replicas_per_model(runs: list[PlotInput]) -> bytes | None:
    """Panels model by model (runs of one model next to each other); projections are
    left to their own overlay."""
    measured = [r for r in runs if not r.projection]
    panels = []
    for model in sorted({m for r in measured for m in _models(r.data)}):
        for i, run in enumerate(measured):
            if model in _models(run.data):
                panels.append((run, model, f"C{i}"))
    if not panels:
        return None
    fig, axes = _figure(len(panels), 2.4)
    for ax, (run, model, color) in zip(axes, panels, strict=True):
        _panel(ax, run, model, color)
    return _finish_panels(fig, axes, "seconds since run start")


def _models(data: RunData) -> set[str]:
    """Models with a replica series (ready or desired)."""
    names: set[str] = set()
    for family in ("replicas_ready", "replicas_desired"):
        names |= set(per_model(data.series.get(family)))
    return names


def projection_overlay(measured: RunData, projected: RunData) -> bytes | None:
    """Ready replicas, measured (solid) and simulated (dashed), one panel per model, on
    each model's own clock (0 = its first pattern's start)."""
    got, sim = simcompare.aligned_replicas(measured), simcompare.aligned_replicas(projected)
    models = sorted(set(got) & set(sim))
    if not models:
        return None
    fig, axes = _figure(len(models), 2.4)
    for ax, model in zip(axes, models, strict=True):
        for (t, v), style, name in ((got[model], "-", "measured"), (sim[model], "--", "simulated")):
            ax.step(t, v, style, where="post", color="C0" if name == "measured" else "C1",
                    label=f"{name} ready replicas")  # fmt: skip
        spans = windows.pattern_windows(measured.records, measured.run)
        spans = spans[spans["model"] == model]
        origin = spans["start_s"].min() if len(spans) else math.nan
        if math.isfinite(origin):
            _shade_patterns(ax, spans, origin)
        ax.set_ylabel("replicas")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{model}: measured vs simulated", fontsize=9)
    return _finish_panels(fig, axes, "seconds since the model's first pattern")
