"""How fast the simulator runs: one simulated hour at 500 req/s (1.8 million requests).

Traffic is a sinusoid between 250 and 750 req/s (mean 500) so the autoscaler works the
whole hour; lognormal service times (median 50 ms) on one-slot replicas need up to ~50
replicas at the peak. Prints the time of the event loop alone and of the full
``simulate_experiment`` (records.csv, series parquet, summary). Target: < 60 s.

    python benchmarks/sim_speed.py [--mode knative|hpa] [--minutes 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from kservebench.bench.spec import parse_experiment
from kservebench.loadgen.arrivals import arrival_offsets
from kservebench.loadgen.patterns import parse_pattern
from kservebench.sim.calibrate import Calibration
from kservebench.sim.distributions import Constant, LogNormal
from kservebench.sim.experiment import build_cluster, simulate_experiment

TARGET_S = 60.0


def spec(mode: str, minutes: float) -> dict:
    scaling = (
        {
            "minReplicas": 1,
            "maxReplicas": 50,
            "metric": "concurrency",
            "target": 1,
            "containerConcurrency": 1,
        }
        if mode == "knative"
        else {"minReplicas": 20, "maxReplicas": 50, "metric": "cpu", "target": 80}
    )
    return {
        "name": "sim-speed",
        "mode": mode,
        "models": [{"name": "sklearn-small"}],
        "scaling": scaling,
        "resources": {"requests": {"cpu": "1"}},
        "arrival": "poisson",
        "patterns": [
            {
                "type": "sinusoidal",
                "min_rate": 250,
                "max_rate": 750,
                "period": "20m",
                "duration": f"{minutes}m",
            }
        ],
        "simulation": {"service_time": "measured", "cold_start": "measured"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("knative", "hpa"), default="knative")
    parser.add_argument("--minutes", type=float, default=60.0)
    args = parser.parse_args()

    experiment = parse_experiment(spec(args.mode, args.minutes))
    calibration = Calibration(
        service_time_s={"sklearn-small": LogNormal(0.050, 0.3)},
        cold_start_s=Constant(3.0),
        source="benchmark",
    )
    pattern = parse_pattern(experiment.patterns[0].spec)

    start = time.perf_counter()
    arrivals = arrival_offsets(pattern, "poisson", 0)
    cluster, service = build_cluster(
        experiment, "sklearn-small", calibration, options=_options(), seed=0
    )
    service_s = service.sample(np.random.default_rng(1), len(arrivals))
    prepared = time.perf_counter()
    result = cluster.run(arrivals, service_s, pattern.duration_s)
    loop_s = time.perf_counter() - prepared
    ready = result.series.query("family == 'replicas_ready'")["value"]
    print(
        f"mode {args.mode}: {len(arrivals):,} requests over {pattern.duration_s:.0f} s, "
        f"replicas {ready.min():.0f}-{ready.max():.0f}"
    )
    print(f"arrivals + service draws: {prepared - start:.1f} s")
    print(
        f"event loop:               {loop_s:.1f} s "
        f"({len(arrivals) / loop_s / 1000:.0f} k requests/s)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = simulate_experiment(experiment, Path(tmp) / "run", calibration)
        total_s = time.perf_counter() - start
    latency = summary["overall"]["latency_ms"]
    print(
        f"simulate_experiment:      {total_s:.1f} s (with records.csv, series, summary; "
        f"p50 {latency['p50']} ms, p95 {latency['p95']} ms)"
    )
    verdict = "OK" if total_s < TARGET_S else "TOO SLOW"
    print(f"target < {TARGET_S:.0f} s: {verdict}")


def _options():
    from kservebench.sim.experiment import SimOptions

    return SimOptions()


if __name__ == "__main__":
    main()
