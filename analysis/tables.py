"""The report's per-run tables, as formatted frames built from a run's summary (pure).

Each builder returns every row it has; the report prunes rows and columns with nothing to
show (``fmt.prune``) with the key columns named in ``KEYS``, so a builder never has to
decide what is worth printing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pandas as pd

from kservebench.analysis.fmt import DASH, fmt, pct

# Identifying columns per table: never a reason to keep a row that has no value.
KEYS: dict[str, tuple[str, ...]] = {
    "overview": ("metric",),
    "pattern": ("model", "pattern"),
    "episodes": ("model", "pattern", "at (s)"),
    "scaling": ("model", "load step at (s)", "replicas before"),
    "resources": ("model",),
    "replicas": ("model", "pattern", "from / to (s)"),
}


def latency_cell(key: str, summary: dict[str, Any]) -> str:
    return fmt(summary["latency_ms"][key])


def overview_table(summaries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One column per run, one row per headline metric."""
    rows: dict[str, Callable[[dict[str, Any]], str]] = {
        "kind": lambda s: str(s.get("kind") or DASH) + (" (SIMULATED)" if s["simulated"] else ""),
        "mode": lambda s: str(s.get("mode") or DASH),
        "requests": lambda s: fmt(s["requests"]),
        **{
            f"latency {k} (ms)": partial(latency_cell, k)
            for k in ("p50", "p90", "p95", "p99", "max")
        },
        "throughput (req/s)": lambda s: fmt(s["throughput_rps"], 2),
        "error rate": lambda s: pct(s["error_rate"]),
        "SLO attainment": lambda s: f"{pct(s['slo_attainment'])} within {fmt(s['slo_ms'], 0)} ms",
        "server p95 (ms)": lambda s: (
            ", ".join(f"{m or 'all'} {fmt(v['p95'], 2)}" for m, v in s["server_latency_ms"].items())
            or DASH
        ),
        "cold starts": lambda s: str(s["cold_starts"]["count"]),
        "cold start p50 / max (s)": lambda s: (
            f"{fmt(s['cold_starts']['p50_s'])} / {fmt(s['cold_starts']['max_s'])}"
        ),
        "replica-seconds": lambda s: fmt(s["replica_seconds"], 0),
        "CPU-seconds per 1k requests": lambda s: fmt(s["cpu_seconds_per_1k"], 2),
    }
    data = {s["label"]: [fn(s) for fn in rows.values()] for s in summaries}
    return pd.DataFrame(data, index=list(rows)).rename_axis("metric").reset_index()


def pattern_table(summary: dict[str, Any]) -> pd.DataFrame:
    table = pd.DataFrame(summary["by_model_pattern"])
    if table.empty:
        return table
    out = table[["model", "pattern", "requests"]].copy()
    for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"):
        out[key] = table[key].map(fmt)
    out["throughput_rps"] = table["throughput_rps"].map(lambda v: fmt(v, 2))
    out["error_rate"] = table["error_rate"].map(pct)
    out["slo_attainment"] = table["slo_attainment"].map(pct)
    return out


def phases_cell(phases: dict[str, Any]) -> str:
    """``created→started 1.2, started→ready 2.3 (pod m-predictor-3)`` from the lifecycle."""
    steps = [
        f"{k.removesuffix('_s').replace('_to_', '→')} {fmt(v)}"
        for k, v in phases.items()
        if k != "pod"
    ]
    if not steps:
        return DASH
    return ", ".join(steps) + (f" (pod {phases['pod']})" if phases.get("pod") else "")


def episodes_table(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per scale-from-zero episode: when, how long, the requests that waited."""
    rows = []
    start = summary["window"]["start_s"]
    for e in summary["cold_starts"]["episodes"]:
        failed = e.get("waiting_failed", 0)
        rows.append(
            {
                "model": e["model"],
                "pattern": e.get("pattern") or DASH,
                "at (s)": fmt(e["first_waiting_s"] - start),
                "length (s)": fmt(e["length_s"], 2),
                "waiting requests": str(e["waiting_requests"])
                + (f" ({failed} failed)" if failed else ""),
                "waiting p50 / max (ms)": f"{fmt(e['cold_p50_ms'])} / "
                f"{fmt(e.get('cold_max_ms', math.nan))}",
                "warm p50 (ms)": fmt(e["warm_p50_ms"]),
                "penalty (ms)": fmt(e["penalty_ms"]),
                "pod phases (s)": phases_cell(e["phases_s"]),
            }
        )
    return pd.DataFrame(rows)


def scaling_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Per model and load step of its own offered load: how soon replicas followed. A step
    without any change has dashes only (the report leaves it out)."""
    rows = []
    start = summary["window"]["start_s"]
    for model, steps in summary["responsiveness"].items():
        for step in steps:
            changed = math.isfinite(step["first_change_s"])
            rows.append(
                {
                    "model": model or "all",
                    "load step at (s)": fmt(step["step_s"] - start),
                    "replicas before": fmt(step["replicas_before"], 0),
                    "first change after (s)": fmt(step["first_change_s"]),
                    "settled after (s)": fmt(step["settled_s"]),
                    "settled replicas": fmt(step["settled_replicas"], 0) if changed else DASH,
                }
            )
    return pd.DataFrame(rows)


def resources_table(summary: dict[str, Any]) -> pd.DataFrame:
    """CPU and memory used (where collected) and replica-seconds (where replicas were)."""
    rows = []
    usage, provisioning = summary["utilization"], summary["provisioning"]
    for model in sorted(set(usage) | set(provisioning)):
        u, p = usage.get(model) or {}, provisioning.get(model) or {}
        get = partial(_number, u)
        rows.append(
            {
                "model": model or "all",
                "CPU cores mean / p95": f"{fmt(get('cpu_cores_mean'), 3)} / "
                f"{fmt(get('cpu_cores_p95'), 3)}",
                "CPU requested": fmt(get("cpu_requested_cores"), 2),
                "memory MiB mean / max": f"{fmt(get('memory_bytes_mean') / 2**20)} / "
                f"{fmt(get('memory_bytes_max') / 2**20)}",
                "CPU-s per 1k req": fmt(get("cpu_seconds_per_1k"), 2),
                "replica-s": fmt(_number(p, "replica_seconds"), 0),
                "over / under replica-s": f"{fmt(_number(p, 'over_replica_seconds'), 0)} / "
                f"{fmt(_number(p, 'under_replica_seconds'), 0)}",
            }
        )
    return pd.DataFrame(rows)


def _number(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return math.nan if value is None else float(value)


def replicas_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Replicas over time, per model and pattern (a projection's ``replicas_by_pattern``)."""
    rows = []
    start = summary["window"]["start_s"]
    for r in summary.get("replicas_by_pattern") or []:
        rows.append(
            {
                "model": r["model"],
                "pattern": r["pattern"],
                "from / to (s)": f"{fmt(r['from_s'] - start, 0)} / {fmt(r['to_s'] - start, 0)}",
                "replicas mean": fmt(r["replicas_mean"], 2),
                "min / max": f"{fmt(r['replicas_min'], 0)} / {fmt(r['replicas_max'], 0)}",
                "most desired": fmt(r["desired_max"], 0),
                "replica-s": fmt(r["replica_seconds"], 0),
            }
        )
    return pd.DataFrame(rows)
