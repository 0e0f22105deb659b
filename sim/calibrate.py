"""Calibration: service-time and cold-start distributions measured in a real run.

``calibrate_from_run(run_dir)`` reads a results folder of a local run:

* service time per model from its request records. A local replica is one KServe
  ModelServer whose synchronous ``predict`` runs on its event loop, so it serves one
  request at a time, first come first served. Then Lindley's recursion runs backwards:
  a request's service began when it arrived or when the previous one finished, whichever
  was later, so service_i = done_i - max(sent_i, done_{i-1}). That removes the queueing
  a loaded run adds to its latencies (what is left includes the HTTP round trip, which
  the client sees as part of every request too). With several replicas the records
  cannot be untangled this way and raw latencies are used (an upper bound), unless the
  records name the serving replica (``pod``): then each replica's requests are untangled
  on their own.
  A request buffered while its replica started (Knative at zero) cannot have begun its
  service before that replica was ready: the pods' ready times in run.json bound it, or
  its cold-start wait would count as service time.
* cold start: process start -> ready of the local model server (``ready_after_s``, the
  models helper's ``LocalModelServer``), found anywhere in the run's ``run.json`` files
  (also ``cold_start_s``); else pod created -> ready from a cluster run's kube-state-metrics
  series (``series/pod_created.parquet`` and ``series/pod_ready.parquet``). A local run's
  control plane lists them per model in the order they happened: each model's projection
  replays its own (``Replay``), the pooled values are the fallback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kservebench.errors import SpecError
from kservebench.records import read_records
from kservebench.results import RUN_FILE, files_of_run
from kservebench.sim.distributions import Distribution, Empirical, Replay

COLD_START_KEYS = ("ready_after_s", "cold_start_s")
MIN_REQUESTS = 20  # fewer ok requests than this say little about a distribution


@dataclass(frozen=True)
class Calibration:
    service_time_s: dict[str, Distribution] = field(default_factory=dict)  # by model name
    cold_start_s: Distribution | None = None  # pooled over models
    cold_start_by_model: dict[str, Distribution] = field(default_factory=dict)
    source: str = ""

    def cold_start_for(self, model: str) -> Distribution | None:
        return self.cold_start_by_model.get(model) or self.cold_start_s

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "service_time_s": {m: d.describe() for m, d in self.service_time_s.items()},
            "cold_start_s": self.cold_start_s.describe() if self.cold_start_s else None,
            "cold_start_by_model": {m: d.describe() for m, d in self.cold_start_by_model.items()},
        }


def service_times_fifo(
    sent_s: np.ndarray, latency_s: np.ndarray, ready_s: float = -np.inf
) -> np.ndarray:
    """Service times of a single FIFO server from send times and latencies (Lindley);
    no service starts before the server was ready at ``ready_s``."""
    order = np.argsort(sent_s, kind="stable")
    sent = np.asarray(sent_s, dtype=float)[order]
    done = sent + np.asarray(latency_s, dtype=float)[order]
    # Completions of a FIFO single server are in arrival order; the running maximum
    # guards against client-side reordering of nearly simultaneous responses.
    done = np.maximum.accumulate(done)
    previous = np.concatenate([[-np.inf], done[:-1]])
    return done - np.maximum(np.maximum(sent, previous), min(ready_s, float(done[0])))


def _model_service_times(
    records: pd.DataFrame, single_server: bool, ready_s: float = -np.inf
) -> np.ndarray:
    if single_server:
        # Lindley needs every request that occupied the server, errors included.
        served = records[records["latency_ms"].notna()]
        if served.empty:
            return np.empty(0)
        sent, latency = served["sent_s"].to_numpy(), served["latency_ms"] / 1000.0
        times = service_times_fifo(sent, latency, ready_s)
        return times[served.sort_values("sent_s", kind="stable")["ok"].to_numpy()]
    ok = records[records["ok"] & records["latency_ms"].notna()]
    return ok["latency_ms"].to_numpy() / 1000.0


def _json_values(node: Any, keys: tuple[str, ...]) -> Iterator[float]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys:
                values = value if isinstance(value, list) else [value]
                yield from (float(v) for v in values if isinstance(v, int | float))
            else:
                yield from _json_values(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _json_values(item, keys)


def cold_starts_in(run_dir: Path) -> list[float]:
    values: list[float] = []
    for path in files_of_run(run_dir, RUN_FILE):
        try:
            values.extend(_json_values(json.loads(path.read_text()), COLD_START_KEYS))
        except (OSError, ValueError):
            continue
    return [v for v in values if v > 0]


def cold_starts_in_series(run_dir: Path) -> list[float]:
    """Pod created -> ready (kube-state-metrics timestamps) from a cluster run's series."""
    folder = Path(run_dir) / "series"
    created, ready = folder / "pod_created.parquet", folder / "pod_ready.parquet"
    if not (created.exists() and ready.exists()):
        return []
    # Each sample's value is a timestamp; the latest one per pod is its (last) transition.
    born = pd.read_parquet(created).groupby("pod")["value"].max()
    up = pd.read_parquet(ready).groupby("pod")["value"].max()
    both = pd.concat([born.rename("created"), up.rename("ready")], axis=1).dropna()
    return [float(v) for v in (both["ready"] - both["created"]) if v > 0]


def _local_models(run_dir: Path) -> dict[str, Any]:
    try:
        run = json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    models = (run.get("local") or {}).get("models") or {}
    return models if isinstance(models, dict) else {}


def pod_ready_times(run_dir: Path) -> dict[tuple[str, str], float]:
    """(model, pod) -> when the pod last became ready, from a local run's control plane."""
    out: dict[tuple[str, str], float] = {}
    for model, entry in _local_models(run_dir).items():
        for pod in ((entry or {}).get("replicas") or {}).get("pods") or []:
            if isinstance(pod.get("ready_s"), int | float):
                out[(str(model), str(pod.get("pod")))] = float(pod["ready_s"])
    return out


def cold_starts_by_model(run_dir: Path) -> dict[str, list[float]]:
    """Each model's measured cold starts in the order they happened (local runs)."""
    out: dict[str, list[float]] = {}
    for model, entry in _local_models(run_dir).items():
        values = ((entry or {}).get("replicas") or {}).get("ready_after_s") or []
        values = [float(v) for v in values if isinstance(v, int | float) and v > 0]
        if values:
            out[str(model)] = values
    return out


def replicas_in(run_dir: Path) -> int:
    """Replicas per model of a local run, as the bench's run.json says (1 if it does not)."""
    path = Path(run_dir) / RUN_FILE
    try:
        found = list(_json_values(json.loads(path.read_text()), ("replicas_per_model",)))
    except (OSError, ValueError):
        found = []
    return int(found[0]) if found else 1


def calibrate_from_run(run_dir: Path | str, replicas: int | None = None) -> Calibration:
    """Distributions measured in ``run_dir``, a local run with ``replicas`` per model
    (default: what its run.json says)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpecError("calibration", str(run_dir), "is not a results folder")
    if replicas is None:
        replicas = replicas_in(run_dir)
    records = read_records(run_dir)  # not a simulated projection's
    if records.empty:
        raise SpecError("calibration", str(run_dir), "has no request records")
    services: dict[str, Distribution] = {}
    ready = pod_ready_times(run_dir)
    for model, group in records.groupby("model"):
        if (group["pod"] != "").all():
            # Each replica is a single FIFO server: untangle its own requests.
            parts = [
                _model_service_times(g, True, ready.get((str(model), str(pod)), -np.inf))
                for pod, g in group.groupby("pod")
            ]
            times = np.concatenate(parts) if parts else np.empty(0)
        else:
            times = _model_service_times(group, single_server=replicas == 1)
        if np.isfinite(times).sum() >= MIN_REQUESTS:
            services[str(model)] = Empirical.of(times)
    if not services:
        raise SpecError(
            "calibration", str(run_dir), f"no model has {MIN_REQUESTS} successful requests"
        )
    colds = cold_starts_in(run_dir) or cold_starts_in_series(run_dir)
    return Calibration(
        service_time_s=services,
        cold_start_s=Empirical.of(colds) if colds else None,
        cold_start_by_model={m: Replay(v) for m, v in cold_starts_by_model(run_dir).items()},
        source=str(run_dir),
    )
