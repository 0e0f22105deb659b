"""Simulate an experiment spec (the same one ``kservebench bench`` runs) into a results folder.

The plan is the bench's own (``kservebench.bench.plan``): for each repetition and each
model, one deployment receives the warm-up, then every pattern in order with the cooldown
between them, and finally its requests drain. Arrival times come from the load generator's
own ``arrival_offsets``, so a simulated and a measured run offer the same traffic. The
folder has the bench's layout (docs/architecture.md): run.json (kind "simulate",
``simulated: true``), records.csv, series/<family>.parquet and summary.json.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kservebench.errors import SpecError
from kservebench.loadgen.arrivals import arrival_offsets
from kservebench.loadgen.summary import summarize
from kservebench.policies import hpa, kpa
from kservebench.records import RECORDS_FILE, coerce_records
from kservebench.results import finish_run, start_run
from kservebench.sim.calibrate import Calibration
from kservebench.sim.controllers import FixedScale, HpaAutoscaler, KpaAutoscaler
from kservebench.sim.distributions import Constant, Distribution, Replay
from kservebench.sim.engine import Cluster, ReplicaSpec, Routing, SimResult
from kservebench.sim.plan import WARMUP, Segment, plan_segments

SUMMARY_FILE = "summary.json"
SERIES_DIR = "series"


@dataclass(frozen=True)
class SimOptions:
    seed: int = 0
    slots: int = 1  # requests one replica serves at once (ModelServer, one worker)
    scheduling_s: float = 0.0  # pod created -> scheduled
    image_pull_s: float = 0.0  # scheduled -> container started
    activator_timeout_s: float = 300.0  # Knative revision timeout
    drain_timeout_s: float = 30.0  # like loadgen's --drain-timeout
    request_timeout_s: float = 60.0  # like loadgen's --timeout: the client gives up
    fixed_replicas: int | None = None  # simulate the local target: no autoscaler
    hpa_sync_period_s: float = 15.0  # --horizontal-pod-autoscaler-sync-period
    metrics_resolution_s: float = 15.0  # metrics-server's CPU samples
    # Cores a replica keeps busy while serving: its CPU limit where one is enforced (a
    # throttled replica uses exactly its quota), else one core (single-threaded server).
    busy_cores: float = 1.0


def load_spec(path: Path | str) -> Any:
    """The experiment spec, read by the bench's own loader."""
    from kservebench.bench.spec import load_experiment

    return load_experiment(path)


def cpu_cores(quantity: Any, where: str) -> float:
    """Kubernetes CPU quantity ("1", 2, "500m") in cores."""
    text = str(quantity).strip()
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise SpecError(where, quantity, "must be a CPU quantity like 1 or 500m") from None
    if cores <= 0:
        raise SpecError(where, quantity, "must be > 0")
    return cores


def _distribution(
    value: Any, measured: Distribution | None, where: str, scale: float, missing: str
) -> Distribution:
    if value == "measured":
        if measured is None:
            raise SpecError(where, value, missing)
        return measured
    return Constant(float(value) * scale)


def build_cluster(
    experiment: Any, model: str, calibration: Calibration | None, options: SimOptions, seed: int
) -> tuple[Cluster, Distribution]:
    """The simulated deployment of one model: replicas, routing and control plane."""
    cal = calibration or Calibration()
    if calibration is None:
        missing = "needs a measured run: kservebench simulate --calibrate RUN_DIR"
        service_missing = cold_missing = missing
    else:
        service_missing = f"the calibration run has no requests of model {model}"
        cold_missing = (
            "the calibration run has no cold-start times (ready_after_s in run.json or "
            "pod lifecycle series): give seconds instead, e.g. cold_start: 5s"
        )
    service = _distribution(
        experiment.simulation.service_time,
        cal.service_time_s.get(model),
        "simulation.service_time",
        1e-3,
        service_missing,
    )
    cold = _distribution(
        experiment.simulation.cold_start,
        cal.cold_start_for(model),
        "simulation.cold_start",
        1.0,
        cold_missing,
    )
    if isinstance(cold, Replay):  # each simulated deployment replays from the first start
        cold = Replay(cold.values)
    resources = experiment.resources
    requests = getattr(resources, "requests", None) or resources["requests"]
    request = cpu_cores(requests["cpu"], "resources.requests.cpu")
    slots = options.slots
    if experiment.mode == "knative" and experiment.scaling.container_concurrency > 0:
        # queue-proxy admits no more than containerConcurrency at once.
        slots = min(slots, experiment.scaling.container_concurrency)
    replica = ReplicaSpec(
        slots=slots,
        cpu_request_cores=request,
        cpu_per_busy_slot=options.busy_cores,
        cold_start_s=cold,
        scheduling_s=options.scheduling_s,
        image_pull_s=options.image_pull_s,
    )
    s = experiment.scaling
    if options.fixed_replicas is not None:
        control: Any = FixedScale(options.fixed_replicas)
        routing = Routing("first_free")
    elif experiment.mode == "hpa":
        control = HpaAutoscaler(hpa.params_from_scaling(s, options.hpa_sync_period_s))
        routing = Routing("random")  # kube-proxy spreads requests over the endpoints
    else:
        params = kpa.params_from_scaling(s)
        control = KpaAutoscaler(params)
        routing = Routing(
            "first_free", activator=True, activator_timeout_s=options.activator_timeout_s
        )
    cluster = Cluster(
        replica, routing, control, seed=seed, metrics_resolution_s=options.metrics_resolution_s
    )
    return cluster, service


def _pod_names(model: str, pods: np.ndarray) -> np.ndarray:
    names = np.array([f"{model}-sim-{i}" for i in range(int(pods.max(initial=-1)) + 1)] + [""])
    return names[pods]  # -1 (never served) picks the trailing ""


def write_records(records: pd.DataFrame, path: Path) -> None:
    """records.csv through Arrow's writer: ~10x pandas' for the millions of rows of a
    long simulation; pandas reads its true/false and empty (missing) fields back."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    pa_csv.write_csv(pa.Table.from_pandas(records, preserve_index=False), path)


def _records(
    result: SimResult, segments: list[Segment], model: str, base_s: float, timeout_s: float
) -> pd.DataFrame:
    """Record rows (kservebench.records schema) for every recorded segment's requests.

    Errors read as the load generator writes them: ``HTTP 503``/``HTTP 504`` from the
    serving side, and status 0 for a client that gave up after its request timeout (the
    replica still serves such a request, as a real one would)."""
    arrival = result.arrival_s
    status = result.status.copy()
    unfinished = status == 0
    latency = (result.end_s - arrival) * 1000.0  # NaN when unfinished
    gave_up = (status == 200) & (latency > timeout_s * 1000.0)
    status[gave_up] = 0
    latency[gave_up] = timeout_s * 1000.0
    error = np.full(len(arrival), "", dtype=object)
    error[(status >= 400)] = [f"HTTP {c}" for c in status[status >= 400]]
    error[gave_up] = f"Timeout: no response within {timeout_s:g} s"
    frame = pd.DataFrame(
        {
            "intended_s": base_s + arrival,
            "sent_s": base_s + arrival,
            "send_lag_ms": 0.0,
            "latency_ms": latency,
            "status": status,
            "ok": status == 200,
            "error": error,
            "bytes": 0,
            "model": model,
            "pattern": "",
            "phase": "",
            "pod": _pod_names(model, result.pod),
            "unfinished": unfinished,
            "cold": result.cold,
        }
    )
    labels = np.empty(len(arrival), dtype=object)
    phases = np.empty(len(arrival), dtype=object)
    bounds = [s.start_s for s in segments[1:]] + [math.inf]
    for segment, end in zip(segments, bounds, strict=True):
        index = np.flatnonzero((arrival >= segment.start_s) & (arrival < end))
        labels[index] = segment.label
        phase = segment.pattern.phase
        phases[index] = [phase(t) for t in (arrival[index] - segment.start_s).tolist()]
    frame["pattern"], frame["phase"] = labels, phases
    return coerce_records(frame[frame["pattern"] != WARMUP].reset_index(drop=True))


def simulate_model(
    experiment: Any,
    model: str,
    calibration: Calibration | None,
    options: SimOptions,
    base_s: float,
    seed: int,
    repetition: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """(records, series, seconds simulated) of one model's timeline starting at ``base_s``.

    ``seed`` drives service times and routing; the arrivals are the bench's own (its
    seeds, offset by ``options.seed``)."""
    segments = plan_segments(experiment, repetition)
    cluster, service = build_cluster(experiment, model, calibration, options, seed)
    arrivals = [
        arrival_offsets(seg.pattern, experiment.arrival, options.seed + seg.seed) + seg.start_s
        for seg in segments
    ]
    arrival = np.concatenate(arrivals) if arrivals else np.empty(0)
    service_s = service.sample(np.random.default_rng(seed + 7919), len(arrival))
    until = segments[-1].start_s + segments[-1].pattern.duration_s
    result = cluster.run(arrival, service_s, until, drain_timeout_s=options.drain_timeout_s)
    series = result.series.copy()
    series["time_s"] += base_s
    series["model"] = model
    named = series["pod"] != ""
    series.loc[named, "pod"] = f"{model}-sim-" + series.loc[named, "pod"]  # as in records
    records = _records(result, segments, model, base_s, options.request_timeout_s)
    return records, series, result.end_time_s


def _load_summaries(records: pd.DataFrame, series: pd.DataFrame, experiment: Any) -> dict:
    durations = {p.label: p.duration_s for p in experiment.patterns}
    ready = series[series["family"] == "replicas_ready"]
    loads: dict[str, Any] = {}
    for (model, label), group in records.groupby(["model", "pattern"], sort=False):
        start, end = group["intended_s"].min(), group["intended_s"].max()
        window = ready[(ready["model"] == model) & ready["time_s"].between(start, end + 1.0)]
        ok = group[group["ok"]]
        loads[f"{model}/{label}"] = summarize(
            group,
            duration_s=durations.get(str(label), float(end - start)),
            simulated=True,
            cold_requests=int(group["cold"].sum()),
            slo_latency_ms=experiment.slo_latency_ms,
            slo_attainment=round(
                float((ok["latency_ms"] <= experiment.slo_latency_ms).sum()) / max(1, len(group)), 4
            ),
            replica_seconds=float(window["value"].sum()),  # 1 s samples
            max_replicas_ready=float(window["value"].max()) if len(window) else None,
        )
    return loads


def write_series(series: pd.DataFrame, out_dir: Path) -> list[str]:
    """One tidy parquet file per family (time_s, value, family, labels)."""
    folder = Path(out_dir) / SERIES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for family, group in series.groupby("family", sort=True):
        columns = ["time_s", "value", "family", "model"] + (
            ["pod"] if family == "cpu_cores" else []
        )
        frame = (
            group[columns]
            .reset_index(drop=True)
            .astype(
                {"time_s": "float64", "value": "float64", "family": "string", "model": "string"}
            )
        )
        if "pod" in frame:
            frame["pod"] = frame["pod"].astype("string")
        frame.to_parquet(folder / f"{family}.parquet", index=False)
        written.append(str(family))
    return written


def simulate_experiment(
    experiment: Any,
    out_dir: Path | str,
    calibration: Calibration | None = None,
    options: SimOptions | None = None,
    on_model: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Simulate ``experiment`` into ``out_dir``; returns the summary written there."""
    options = options or SimOptions()
    out_dir = Path(out_dir)
    if experiment.arrival not in ("poisson", "constant"):
        raise SpecError("arrival", experiment.arrival, "the simulator replays open-loop arrivals")
    run = start_run(
        out_dir,
        "simulate",
        experiment.raw,
        simulated=True,
        options=asdict(options),
        calibration=calibration.describe() if calibration else None,
    )
    try:
        base = run["started_at"]
        all_records, all_series = [], []
        for repetition in range(experiment.repetitions):
            for m, model in enumerate(experiment.models):
                if on_model:
                    on_model(model.name, repetition)
                seed = options.seed + 1000 * repetition + 100 * m
                records, series, span = simulate_model(
                    experiment, model.name, calibration, options, base, seed, repetition
                )
                all_records.append(records)
                all_series.append(series)
                base += math.ceil(span) + 1.0  # the next deployment starts after this one
        records = pd.concat(all_records, ignore_index=True)
        series = pd.concat(all_series, ignore_index=True)
        write_records(records, out_dir / RECORDS_FILE)
        families = write_series(series, out_dir)
        summary = {
            "simulated": True,
            "mode": "fixed" if options.fixed_replicas is not None else experiment.mode,
            "overall": summarize(records, duration_s=float(base - run["started_at"])),
            "loads": _load_summaries(records, series, experiment),
        }
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    except BaseException:
        finish_run(out_dir, run, status="failed")
        raise
    finish_run(
        out_dir,
        run,
        simulated_span=[run["started_at"], base],
        series_families=families,
        summary_file=SUMMARY_FILE,
        wall_s=time.time() - run["started_at"],
    )
    return summary
