"""The simulator against reality: a real KServe ModelServer driven by `kservebench loadgen`.

One replica serves a Poisson load; the run is calibrated (service times recovered from
its records) and its own send times are replayed through the simulator. Latency
percentiles must agree within 15 %. The load is moderate (about a third of capacity):
at higher load, the shared 2-core machine's bursts of contention make consecutive
service times correlated, which no i.i.d. service model reproduces.
"""

import subprocess
import sys

import numpy as np
import pytest

from kservebench.records import read_records
from kservebench.sim.calibrate import calibrate_from_run
from kservebench.sim.replay import replay_records

MODEL = "sklearn-medium"
SEEDS = 9  # median over seeds: the comparison is with the model, not with one draw


@pytest.mark.slow
def test_fixed_replica_run_and_its_simulation_agree(model_server, tmp_path):
    server = model_server(MODEL)
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-c",
        "from kservebench.cli import main; main()",
        "loadgen",
        "--url",
        server.url,
        "--model",
        MODEL,
        "--pattern",
        "constant",
        "--rate",
        "20",
        "--duration",
        "20s",
        "--arrival",
        "poisson",
        "--seed",
        "3",
        "--out",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

    measured = read_records(out)
    assert measured["ok"].all() and len(measured) > 300
    calibration = calibrate_from_run(out, replicas=1)
    simulated = np.array(
        [
            np.percentile(replay_records(measured, calibration, seed=s)["latency_ms"], [50, 95])
            for s in range(SEEDS)
        ]
    )
    p50, p95 = np.median(simulated, axis=0)
    real50, real95 = np.percentile(measured["latency_ms"], [50, 95])
    assert p50 == pytest.approx(real50, rel=0.15)
    assert p95 == pytest.approx(real95, rel=0.15)
