"""A results folder -> its metrics (the content of ``report/summary.json``).

``load_run`` is the I/O (run.json, every records.csv, series/*.parquet); ``summarize``
is a pure function of what it loaded. Keys every summary has: requests, latency_ms
(p50/p90/p95/p99/max/mean), throughput_rps, error_rate, slo_attainment, server_latency_ms,
cold_starts (count, p50_s, max_s, ...), replica_seconds, cpu_seconds_per_1k,
by_model_pattern, missing_families, simulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kservebench.analysis import coldstart, inflight, latency, scaling
from kservebench.analysis.catalog import CANONICAL
from kservebench.analysis.series import load_manifest, load_series, per_model
from kservebench.errors import SpecError
from kservebench.records import read_records
from kservebench.results import read_run

DEFAULT_SLO_MS = 100.0
DEFAULT_WINDOW_S = 10.0
# What the report's sections read; any of these absent is listed as missing.
EXPECTED_FAMILIES = (*CANONICAL, "predict_seconds_bucket")
LIFECYCLE_FAMILIES = coldstart.LIFECYCLE


@dataclass
class RunData:
    path: Path
    run: dict[str, Any]
    records: pd.DataFrame
    series: dict[str, pd.DataFrame] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        return self.run.get("kind") == "simulate" or self.run.get("simulated") is True

    @property
    def label(self) -> str:
        name = self.run.get("name") or self.path.resolve().name
        return f"{name} (simulated)" if self.simulated else str(name)

    def window(self) -> tuple[float, float]:
        """run.json's started_at/ended_at, else the records' span, else the series' span.

        A simulation's clock is not the wall clock: its run.json names the span it
        simulated (``simulated_span``), which is the window then."""
        start, end = self.run.get("started_at"), self.run.get("ended_at")
        span = self.run.get("simulated_span")
        if isinstance(span, list) and len(span) == 2:
            start, end = span
        if isinstance(start, int | float) and isinstance(end, int | float) and end > start:
            return float(start), float(end)
        r_start, r_end = latency.run_window(self.records)
        if math.isfinite(r_start) and r_end > r_start:
            return r_start, r_end
        times = [f["time_s"] for f in self.series.values() if len(f)]
        if times:
            all_t = pd.concat(times)
            return float(all_t.min()), float(all_t.max())
        return math.nan, math.nan


def load_run(path: Path) -> RunData:
    path = Path(path)
    if not path.is_dir():
        raise SpecError("DIR", str(path), "not a results folder")
    records = read_records(path)  # a nested simulated projection is a run of its own
    series, manifest = load_series(path), load_manifest(path)
    if inflight.FAMILY not in series and len(records):
        series, manifest = with_derived_in_flight(records, series, manifest)
    return RunData(path, read_run(path), records, series, manifest)


def with_derived_in_flight(
    records: pd.DataFrame, series: dict[str, pd.DataFrame], manifest: dict[str, Any]
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Add ``requests_in_flight`` counted from the records (the local target exports
    none), and say so in the manifest: its source is "records", not Prometheus."""
    frame = inflight.in_flight_from_records(records)
    if frame.empty:
        return series, manifest
    manifest = dict(manifest)
    manifest["sources"] = {**(manifest.get("sources") or {}), inflight.FAMILY: inflight.SOURCE}
    if inflight.FAMILY in (manifest.get("missing") or []):
        manifest["missing"] = [f for f in manifest["missing"] if f != inflight.FAMILY]
    return {**series, inflight.FAMILY: frame}, manifest


def find_setting(obj: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a nested run.json (spec layouts differ)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        children = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        found = find_setting(child, key)
        if found is not None:
            return found
    return None


def slo_from_run(run: dict[str, Any]) -> float | None:
    """The latency SLO a run's spec names: ``slo_ms``, ``slo_latency_ms`` or
    ``slo: {latency_ms: ...}`` (the bench spec's form)."""
    for key in ("slo_ms", "slo_latency_ms"):
        value = find_setting(run, key)
        if isinstance(value, int | float):
            return float(value)
    slo = find_setting(run, "slo")
    if isinstance(slo, dict) and isinstance(slo.get("latency_ms"), int | float):
        return float(slo["latency_ms"])
    return None


def mode_of(run: dict[str, Any]) -> str | None:
    """The serving mode a run measured (``hpa``, ``knative``...): run.json's ``mode``, else
    the spec's. None when neither names one (then no verdict compares it)."""
    mode = run.get("mode")
    if not isinstance(mode, str) or not mode:
        spec = run.get("spec")
        mode = spec.get("mode") if isinstance(spec, dict) else None
    return mode if isinstance(mode, str) and mode else None


def episodes_of(data: RunData) -> list[coldstart.Episode]:
    """The run's cold-start episodes, from replicas_ready, the records, in-flight requests
    and (where collected) the pod-lifecycle timestamps that decompose them."""
    series = data.series
    lifecycle = {n: series[n] for n in LIFECYCLE_FAMILIES if n in series}
    return coldstart.cold_start_episodes(
        series.get("replicas_ready"), data.records, series.get("requests_in_flight"), lifecycle
    )


def _requests_by_model(records: pd.DataFrame) -> dict[str, int]:
    counts = records.groupby("model", observed=True).size()
    out = {str(m): int(n) for m, n in counts.items()}
    out[""] = len(records)
    return out


def summarize(
    data: RunData,
    slo_ms: float | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    rps_per_replica: float | None = None,
) -> dict[str, Any]:
    slo = float(slo_ms or slo_from_run(data.run) or DEFAULT_SLO_MS)
    rps_target = rps_per_replica or find_setting(data.run, "rps_per_replica")
    start, end = data.window()
    records, series = data.records, data.series
    client = latency.client_summary(records, slo)

    # Server-side counters: everything collected after the start counts (the collection
    # already ends a scrape or two after the run, so the last responses are included).
    server: dict[str, dict[str, float]] = {}
    if "predict_seconds_bucket" in series and math.isfinite(start):
        quantiles = latency.server_quantiles(series["predict_seconds_bucket"], start, math.inf)
        server = {
            str(m): {k: v * 1000.0 for k, v in row.items()}
            for m, row in quantiles.to_dict(orient="index").items()
        }
    server_requests = math.nan
    if "predict_seconds_count" in series and math.isfinite(start):
        server_requests = latency.server_request_count(
            series["predict_seconds_count"], start, math.inf
        )

    episodes = episodes_of(data)

    offered = scaling.offered_rps(records)
    steps = scaling.detect_load_steps(offered, window_s=window_s)
    replicas = per_model(series.get("replicas_ready"))
    provisioning = {
        m: scaling.provisioning(f, offered_for(records, m), rps_target, start, end)
        for m, f in replicas.items()
    }
    # Each model answers the steps of its own offered load (models take turns in a bench
    # run: another model's steps say nothing about this one's autoscaler).
    responsive = {
        m: scaling.responsiveness(
            f, scaling.detect_load_steps(offered_for(records, m), window_s=window_s), end
        )
        for m, f in (per_model(series.get("replicas_desired")) or replicas).items()
    }
    replica_seconds = (
        sum(p["replica_seconds"] for p in provisioning.values()) if provisioning else math.nan
    )
    usage = scaling.utilization(series, _requests_by_model(records), start, end)
    cpu_total = sum(u["cpu_seconds"] for u in usage.values()) if usage else math.nan
    table = latency.by_model_pattern(records, slo)
    missing = [f for f in EXPECTED_FAMILIES if f not in series]
    return {
        "label": data.label,
        "path": str(data.path),
        "kind": data.run.get("kind"),
        "mode": mode_of(data.run),
        "simulated": data.simulated,
        "status": data.run.get("status"),
        "target": data.run.get("target"),
        "replicas": data.run.get("replicas"),  # e.g. "fixed (local target): ..."
        "window": {"start_s": start, "end_s": end, "duration_s": end - start},
        **client,
        "server_latency_ms": server,
        "server_requests": server_requests,
        "cold_starts": {
            **coldstart.summarize(episodes),
            "episodes": [e.as_dict() for e in episodes],
        },
        "replica_seconds": replica_seconds,
        "provisioning": provisioning,
        "rps_per_replica": rps_target,
        "load_steps_s": steps,
        "responsiveness": responsive,
        "utilization": usage,
        "cpu_seconds_per_1k": scaling.ratio(cpu_total, len(records) / 1000.0),
        "by_model_pattern": table.to_dict(orient="records"),
        "missing_families": missing,
        "collection": data.manifest,
    }


def offered_for(records: pd.DataFrame, model: str) -> pd.Series:
    if model and "model" in records.columns:
        records = records[records["model"] == model]
    return scaling.offered_rps(records)


def jsonable(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so summary.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    return obj
