"""Comparison plots: one figure per question, one line (or row) per results folder.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot state, no
display needed) and returned as PNG bytes. Time axes are seconds since each run's start,
so runs taken at different times line up.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from kservebench.analysis import latency
from kservebench.analysis.series import step_function
from kservebench.analysis.summary import RunData


@dataclass
class PlotInput:
    data: RunData
    summary: dict
    over_time: pd.DataFrame  # latency.over_time of the records
    start_s: float
    projection: bool = False  # a measured run's simulated projection, not a run of its own


def prepare(data: RunData, summary: dict, window_s: float, projection: bool = False) -> PlotInput:
    start = summary["window"]["start_s"]
    frame = latency.over_time(data.records, window_s, start if math.isfinite(start) else None)
    return PlotInput(data, summary, frame, start, projection)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def _figure(rows: int = 1, height: float = 3.2) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(9, height * rows))
    axes = [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]
    return fig, axes


def _finish(fig: Figure, axes: list[Axes], xlabel: str = "seconds since run start") -> bytes:
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
    axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    return _png(fig)


def latency_over_time(runs: list[PlotInput]) -> bytes | None:
    if not any(len(r.over_time) for r in runs):
        return None
    fig, (ax,) = _figure()
    for i, run in enumerate(runs):
        color = f"C{i}"
        x = run.over_time["time_s"] - run.start_s
        for key, style in (("p50", ":"), ("p95", "-"), ("p99", "--")):
            ax.plot(x, run.over_time[key], style, color=color, label=f"{run.data.label} {key}")
        buckets = run.data.series.get("predict_seconds_bucket")
        if buckets is not None and len(buckets):
            window = float(np.median(np.diff(run.over_time["time_s"]))) if len(x) > 1 else 10.0
            server = latency.server_quantiles_over_time(buckets, window, run.start_s, 0.95)
            total = server.groupby("time_s")["value"].max() * 1000.0
            ax.plot(
                total.index - run.start_s,
                total.values,
                "-.",
                color=color,
                alpha=0.6,
                label=f"{run.data.label} server p95",
            )
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Latency percentiles over time (client; server p95 from the histogram)")
    return _finish(fig, [ax])


def throughput_vs_offered(runs: list[PlotInput]) -> bytes | None:
    if not any(len(r.over_time) for r in runs):
        return None
    fig, (ax, err) = _figure(2, 2.6)
    for i, run in enumerate(runs):
        x = run.over_time["time_s"] - run.start_s
        ax.plot(
            x, run.over_time["offered_rps"], ":", color=f"C{i}", label=f"{run.data.label} offered"
        )
        ax.plot(
            x,
            run.over_time["throughput_rps"],
            "-",
            color=f"C{i}",
            label=f"{run.data.label} achieved",
        )
        err.plot(x, run.over_time["error_rate"] * 100.0, color=f"C{i}", label=run.data.label)
    ax.set_ylabel("requests/s")
    ax.set_title("Throughput vs offered load")
    err.set_ylabel("errors (%)")
    return _finish(fig, [ax, err])


def _series_plot(
    runs: list[PlotInput],
    families: list[tuple[str, str]],
    ylabel: str,
    title: str,
    scale: float = 1.0,
) -> bytes | None:
    if not any(f in r.data.series for r in runs for f, _ in families):
        return None
    fig, (ax,) = _figure()
    for i, run in enumerate(runs):
        for family, style in families:
            frame = run.data.series.get(family)
            if frame is None or frame.empty:
                continue
            t, v = step_function(frame)
            models = frame["model"].nunique() if "model" in frame.columns else 1
            total = f" (sum of {models} models)" if models > 1 else ""
            ax.step(
                t - run.start_s,
                v * scale,
                style,
                where="post",
                color=f"C{i}",
                label=f"{run.data.label} {family}{total}",
            )
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _finish(fig, [ax])


def replicas_vs_load(runs: list[PlotInput]) -> bytes | None:
    """One panel per model and run, scale events marked (``plots_scaling``)."""
    from kservebench.analysis.plots_scaling import replicas_per_model  # it imports this module

    return replicas_per_model(runs)


def cpu_memory(runs: list[PlotInput]) -> bytes | None:
    cpu = _series_plot(runs, [("cpu_cores", "-")], "CPU cores", "CPU used")
    mem = _series_plot(runs, [("memory_bytes", "-")], "MiB", "Memory used", 1 / 2**20)
    if cpu is None and mem is None:
        return None
    return _stack([p for p in (cpu, mem) if p is not None])


def _stack(pngs: list[bytes]) -> bytes:
    import matplotlib.image as mpimg

    images = [mpimg.imread(io.BytesIO(p), format="png") for p in pngs]
    width = max(img.shape[1] for img in images)
    padded = [
        np.pad(img, ((0, 0), (0, width - img.shape[1]), (0, 0)), constant_values=1.0)
        for img in images
    ]
    buffer = io.BytesIO()
    mpimg.imsave(buffer, np.concatenate(padded, axis=0), format="png")
    return buffer.getvalue()


def cold_start_timeline(runs: list[PlotInput]) -> bytes | None:
    if not any(r.summary["cold_starts"]["count"] for r in runs):
        return None
    fig, (ax,) = _figure(height=0.6 * len(runs) + 1.6)
    for i, run in enumerate(runs):
        for e in run.summary["cold_starts"]["episodes"]:
            begin = e["first_waiting_s"] - run.start_s
            length = e["length_s"] if math.isfinite(e["length_s"]) else 0.0
            ax.barh(i, length, left=begin, height=0.5, color=f"C{i}")
            ax.text(begin + length, i, f" {length:.1f}s", va="center", fontsize=8)
    ax.set_yticks(range(len(runs)), [r.data.label for r in runs])
    ax.set_title("Cold starts: first waiting request -> first response")
    return _finish(fig, [ax])


def pattern_latency(runs: list[PlotInput]) -> bytes | None:
    """p95 latency per (model, pattern), one bar per run."""
    tables = [pd.DataFrame(r.summary["by_model_pattern"]) for r in runs]
    keys = sorted(
        {(m, p) for t in tables if len(t) for m, p in zip(t["model"], t["pattern"], strict=True)}
    )
    if not keys:
        return None
    fig, (ax,) = _figure(height=3.6)
    width = 0.8 / len(runs)
    for i, (run, table) in enumerate(zip(runs, tables, strict=True)):
        values = []
        for key in keys:
            row = (
                table[(table["model"] == key[0]) & (table["pattern"] == key[1])]
                if len(table)
                else table
            )
            values.append(float(row["p95_ms"].iloc[0]) if len(row) else math.nan)
        ax.bar(np.arange(len(keys)) + i * width, values, width, label=run.data.label, color=f"C{i}")
    ax.set_xticks(
        np.arange(len(keys)) + 0.4 - width / 2, [f"{m}\n{p}" for m, p in keys], fontsize=7
    )
    ax.set_ylabel("p95 latency (ms)")
    ax.set_title("Latency p95 per model and pattern")
    return _finish(fig, [ax], xlabel="model / pattern")


# name -> (caption, builder). Order is the report's order.
PLOTS: dict[str, tuple[str, Callable[[list[PlotInput]], bytes | None]]] = {
    "latency_over_time": ("Latency percentiles over time", latency_over_time),
    "throughput": ("Throughput vs offered load", throughput_vs_offered),
    "replicas": ("Replicas against offered load, per model", replicas_vs_load),
    "cold_starts": ("Cold-start timeline", cold_start_timeline),
    "cpu_memory": ("CPU and memory", cpu_memory),
    "pattern_latency": ("Latency p95 per model and pattern", pattern_latency),
}
