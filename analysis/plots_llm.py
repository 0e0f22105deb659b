"""vLLM's engine state per replica over time: one figure per model.

Top panel: KV-cache usage (%) of each replica. Bottom panel: its running (solid) and
waiting (dashed) requests, one colour per replica in both panels, so a replica whose
cache fills up can be followed to the queue that builds behind it. The model's patterns
are shaded and labelled as in the replica plots; the time axis is seconds since the run's
start, like every other plot of the report.
"""

from __future__ import annotations

import math

import pandas as pd

from kservebench.analysis import llm, windows
from kservebench.analysis.plots import _figure
from kservebench.analysis.plots_scaling import MARGIN_S, _finish_panels, _shade_patterns
from kservebench.analysis.summary import RunData

MAX_LEGEND_REPLICAS = 12  # more replicas than this: lines without a legend entry each


def kv_queue(
    tidy: pd.DataFrame, spans: pd.DataFrame, model: str, origin_s: float, label: str = ""
) -> bytes | None:
    """The figure of one model from ``llm.replica_series`` (None without its samples)."""
    mine = tidy[tidy["model"] == model]
    if mine.empty:
        return None
    spans = spans[spans["model"] == model] if len(spans) else spans
    fig, (kv, queue) = _figure(2, 2.6)
    replicas = sorted(set(mine["replica"]))
    for i, replica in enumerate(replicas):
        color = f"C{i % 10}"
        name = (replica or "replica") if len(replicas) <= MAX_LEGEND_REPLICAS else None
        one = mine[mine["replica"] == replica]
        for ax, metric, style, scale in (
            (kv, "kv_cache_usage", "-", 100.0),
            (queue, "requests_running", "-", 1.0),
            (queue, "requests_waiting", "--", 1.0),
        ):
            points = one[one["metric"] == metric].sort_values("time_s")
            if points.empty:
                continue
            # One legend entry per replica (its colour): the first line drawn for it.
            ax.step(points["time_s"] - origin_s, points["value"] * scale, style, where="post",
                    color=color, label=name)  # fmt: skip
            name = None
    for ax in (kv, queue):
        if len(spans):
            _shade_patterns(ax, spans, origin_s)
            start, end = windows.model_span(spans, model)
            ax.set_xlim(start - origin_s - MARGIN_S, end - origin_s + MARGIN_S)
        ax.set_ylim(bottom=0)
    kv.set_ylim(0, 105)
    kv.set_ylabel("KV cache (%)")
    queue.set_ylabel("requests")
    title = f"{label} — {model}" if label else model
    kv.set_title(f"{title}: KV-cache usage per replica", fontsize=9)
    queue.set_title("running (solid) and waiting (dashed) requests per replica", fontsize=9)
    return _finish_panels(fig, [kv, queue], "seconds since run start")


def kv_queue_plots(data: RunData, start_s: float) -> dict[str, bytes]:
    """model -> its figure, for every model with vLLM series (in model order)."""
    tidy = llm.replica_series(data.series)
    if tidy.empty:
        return {}
    spans = windows.pattern_windows(data.records, data.run)
    origin = start_s if math.isfinite(start_s) else float(tidy["time_s"].min())
    out = {}
    for model in sorted(set(tidy["model"])):
        png = kv_queue(tidy, spans, model, origin, data.label)
        if png is not None:
            out[model] = png
    return out
