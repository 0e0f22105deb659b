"""Synthetic results folders with a known ground truth, for tests, fixtures and benchmarks.

Not a simulator (that is ``kservebench.sim``): a deterministic generator of request
records and tidy series shaped like a real run, so the report can be exercised at any
size. Arrivals are Poisson at a piecewise-constant rate per (model, pattern); replicas
follow the load with a fixed delay; while a model has zero replicas its requests wait
until the replica is ready (a cold start); the server histogram counts the service times.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kservebench.analysis.collect import COLLECTION_FILE, SERIES_DIR
from kservebench.analysis.series import make_series, write_series
from kservebench.records import RECORD_COLUMNS, RECORDS_FILE, coerce_records

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass
class SyntheticSpec:
    start_s: float = 1_700_000_000.0
    duration_s: float = 120.0
    models: tuple[str, ...] = ("sklearn-small",)
    patterns: tuple[str, ...] = ("steady",)
    rps: float = 5.0  # per (model, pattern); the "step" pattern triples it halfway
    service_ms: float = 20.0  # median service time
    rps_per_replica: float = 4.0
    scale_delay_s: float = 10.0
    # (zero_from_s, ready_at_s) relative to start: replicas 0 in between, then >= 1.
    zero_stretches: tuple[tuple[float, float], ...] = ()
    kind: str = "bench"
    name: str = "synthetic"
    mode: str | None = None  # run.json's serving mode (hpa, knative); None leaves it out
    extra_families: int = 0  # filler gauges for size benchmarks
    skip_families: tuple[str, ...] = ()
    seed: int = 7
    rates: dict[str, float] = field(default_factory=dict)


def _rate(pattern: str, spec: SyntheticSpec, t: np.ndarray) -> np.ndarray:
    base = spec.rates.get(pattern, spec.rps)
    if pattern == "step":
        return np.where(t < spec.duration_s / 2, base, 3 * base)
    return np.full_like(t, base)


def _arrivals(rng: np.random.Generator, pattern: str, spec: SyntheticSpec) -> np.ndarray:
    """Poisson arrivals (relative seconds) by thinning at the pattern's peak rate."""
    peak = float(_rate(pattern, spec, np.array([spec.duration_s])).max()) or 1.0
    n = rng.poisson(peak * spec.duration_s)
    t = np.sort(rng.uniform(0, spec.duration_s, n))
    keep = rng.uniform(0, peak, n) < _rate(pattern, spec, t)
    return t[keep]


def generate_records(spec: SyntheticSpec) -> pd.DataFrame:
    rng = np.random.default_rng(spec.seed)
    parts = []
    for model in spec.models:
        for pattern in spec.patterns:
            t = _arrivals(rng, pattern, spec)
            service = rng.lognormal(math.log(spec.service_ms), 0.35, len(t))
            wait = np.zeros(len(t))
            for zero_from, ready_at in spec.zero_stretches:
                held = (t >= zero_from) & (t < ready_at)
                wait[held] = (ready_at - t[held]) * 1000.0
            lag = rng.exponential(0.5, len(t))
            failed = rng.uniform(size=len(t)) < 0.002
            parts.append(
                pd.DataFrame(
                    {
                        "intended_s": spec.start_s + t,
                        "sent_s": spec.start_s + t + lag / 1000.0,
                        "send_lag_ms": lag,
                        "latency_ms": wait + service,
                        "status": np.where(failed, 503, 200),
                        "ok": ~failed,
                        "error": np.where(failed, "HTTP 503", ""),
                        "bytes": 40,
                        "model": model,
                        "pattern": pattern,
                        "phase": np.where(t < spec.duration_s / 2, "first", "second"),
                        "pod": f"{model}-0",
                        "unfinished": False,
                        "cold": wait > 0,
                        "service_ms": service,
                    }
                )
            )
    return pd.concat(parts, ignore_index=True).sort_values("sent_s", ignore_index=True)


def generate_series(spec: SyntheticSpec, records: pd.DataFrame) -> dict[str, list[pd.DataFrame]]:
    times = spec.start_s + np.arange(0, math.floor(spec.duration_s) + 1, 1.0)
    rel = times - spec.start_s
    out: dict[str, list[pd.DataFrame]] = {}

    def add(family: str, values: np.ndarray, **labels: object) -> None:
        out.setdefault(family, []).append(make_series(family, times, values, **labels))

    for model in spec.models:
        mine = records[records["model"] == model]
        rate = sum(_rate(p, spec, np.maximum(rel - spec.scale_delay_s, 0)) for p in spec.patterns)
        desired = np.maximum(1, np.ceil(rate / spec.rps_per_replica))
        ready = desired.copy()
        for zero_from, ready_at in spec.zero_stretches:
            ready[(rel >= zero_from) & (rel < ready_at)] = 0
            desired[(rel >= zero_from) & (rel < ready_at - 5)] = 0
        add("replicas_ready", ready, model=model)
        add("replicas_desired", desired, model=model)
        done = (mine["sent_s"] + mine["latency_ms"] / 1000.0).to_numpy()
        order = np.argsort(done)
        done, service_s = done[order], mine["service_ms"].to_numpy()[order] / 1000.0
        served = np.searchsorted(done, times, side="right")
        for pod in range(int(ready.max())):
            active = (ready > pod).astype(float)
            busy = 0.02 + 0.8 * rate / max(ready.max(), 1) * spec.service_ms / 1000.0
            labels = {"model": model, "pod": f"{model}-{pod}"}
            add("cpu_cores", active * busy, **labels)
            add("memory_bytes", active * 180e6, **labels)
        add("predict_seconds_count", served, model=model)
        for le in (*BUCKETS, math.inf):
            cum = np.concatenate([[0], np.cumsum(service_s <= le)])[served]
            add("predict_seconds_bucket", cum, model=model, le=str(le))
    rng = np.random.default_rng(spec.seed + 1)
    for i in range(spec.extra_families):
        name = f"extra_{i:02d}"
        add(name, rng.normal(1.0, 0.1, len(times)), model=spec.models[0])
    return {k: v for k, v in out.items() if k not in spec.skip_families}


def write_run(out_dir: Path, spec: SyntheticSpec) -> Path:
    """Write run.json, records (one file per model/pattern) and series/*.parquet."""
    records = generate_records(spec)
    run = {
        "kind": spec.kind,
        "name": spec.name,
        "status": "finished",
        "synthetic": True,
        "started_at": spec.start_s,
        "ended_at": spec.start_s + spec.duration_s,
        "spec": {
            "models": list(spec.models),
            "patterns": list(spec.patterns),
            "rps_per_replica": spec.rps_per_replica,
        },
    }
    if spec.mode is not None:
        run["mode"] = spec.mode
    series = generate_series(spec, records)
    return write_folder(out_dir, run, records, series, missing=spec.skip_families)


def write_folder(
    out_dir: Path,
    run: dict[str, Any],
    records: pd.DataFrame,
    series: dict[str, list[pd.DataFrame]],
    missing: Sequence[str] = (),
) -> Path:
    """A results folder from frames built by hand: run.json, one records file per model
    and pattern, series/*.parquet and the collection manifest (tests state exact inputs)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run.json").write_text(json.dumps(run, indent=2))
    for (model, pattern), group in records.groupby(["model", "pattern"]):
        load_dir = out_dir / "loads" / f"{model}-{pattern}"
        load_dir.mkdir(parents=True, exist_ok=True)
        coerce_records(group)[list(RECORD_COLUMNS)].to_csv(load_dir / RECORDS_FILE, index=False)
    series_dir = out_dir / SERIES_DIR
    series_dir.mkdir(exist_ok=True)
    for family, frames in series.items():
        write_series(out_dir, family, frames)
    manifest = {
        "sources": dict.fromkeys(series, "synthetic"),
        "missing": sorted(missing),
        "errors": {},
    }
    (series_dir / COLLECTION_FILE).write_text(json.dumps(manifest, indent=2))
    return out_dir
