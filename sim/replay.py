"""Replay a measured run's own send times through the simulator (fixed replicas).

The check of the model against reality: the same arrivals a local run sent, service
times drawn from a calibration, the same number of replicas; the simulated latencies
should match the measured ones. Also what a bench can put next to a local run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kservebench.errors import SpecError
from kservebench.records import coerce_records
from kservebench.sim.calibrate import Calibration
from kservebench.sim.controllers import FixedScale
from kservebench.sim.engine import Cluster, ReplicaSpec, Routing


def replay_records(
    records: pd.DataFrame,
    calibration: Calibration,
    replicas: int = 1,
    slots: int = 1,
    seed: int = 0,
) -> pd.DataFrame:
    """Simulated records for the requests in ``records`` (one model), sent when they were."""
    models = records["model"].unique()
    if len(models) != 1:
        raise SpecError("records.model", list(models), "replay one model at a time")
    model = str(models[0])
    if model not in calibration.service_time_s:
        raise SpecError("calibration", model, "has no service-time distribution for this model")
    sent = records["sent_s"].to_numpy(dtype=float)
    order = np.argsort(sent, kind="stable")
    start = float(sent[order[0]])
    arrivals = sent[order] - start
    service = calibration.service_time_s[model].sample(np.random.default_rng(seed), len(sent))
    cluster = Cluster(ReplicaSpec(slots=slots), Routing("first_free"), FixedScale(replicas), seed)
    result = cluster.run(arrivals, service, until_s=float(arrivals[-1]))
    source = records.iloc[order].reset_index(drop=True)
    return coerce_records(
        pd.DataFrame(
            {
                "intended_s": source["intended_s"],
                "sent_s": start + result.arrival_s,
                "send_lag_ms": source["send_lag_ms"],
                "latency_ms": (result.end_s - result.arrival_s) * 1000.0,
                "status": result.status,
                "ok": result.status == 200,
                "model": model,
                "pattern": source["pattern"],
                "phase": source["phase"],
                "pod": [f"{model}-sim-{p}" if p >= 0 else "" for p in result.pod],
                "unfinished": result.status == 0,
                "cold": False,
            }
        )
    )
