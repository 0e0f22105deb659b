"""The simulator against the local control plane on one short scenario: a real Knative-mode
run (scale from zero twice) and its simulated projection, calibrated from that run, must
agree on what a user decides from: replica-seconds within 15 %, the same cold starts, p95
within 25 % (issue 9, deliverable 7)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import TrainedModels

from kservebench.analysis.simcompare import compare_projection
from kservebench.analysis.summary import load_run
from kservebench.procs import kservebench_argv

# Idle longer than the stable window (6 s) + Knative's 30 s scale-to-zero grace + ticks,
# so the second pattern starts cold as the first does (initialScale 0).
SCENARIO = {
    "name": "agree",
    "mode": "knative",
    "models": [{"name": "sklearn-small", "protocol": "v1"}],
    "scaling": {
        "minReplicas": 0,
        "maxReplicas": 2,
        "metric": "concurrency",
        "target": 1,
        "containerConcurrency": 2,
        "knative": {"window": "6s", "initialScale": 0},
    },
    "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
    "arrival": "poisson",
    "patterns": [
        {"type": "constant", "rate": 5, "duration": "12s"},
        {"type": "constant", "rate": 5, "duration": "12s"},
    ],
    "cooldown": "45s",
    "slo": {"latency_ms": 100},
}


@pytest.mark.slow
def test_the_projection_agrees_with_the_measured_knative_run(
    trained_models: TrainedModels, tmp_path: Path
) -> None:
    spec = tmp_path / "agree.yaml"
    spec.write_text(yaml.safe_dump(SCENARIO))
    results = tmp_path / "results"
    argv = kservebench_argv(
        "bench", str(spec), "--results", str(results),
        "--trained", str(trained_models["sklearn-small"].parent), "--no-progress",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = results.glob("agree-*")
    run = json.loads((run_dir / "run.json").read_text())
    assert "error" not in run["simulated_projection"], run["simulated_projection"]

    figures = compare_projection(load_run(run_dir), load_run(run_dir / "simulated"))
    got = figures["sklearn-small"]
    summary = {name: tuple(round(v, 3) for v in triple) for name, triple in got.items()}
    measured_colds, simulated_colds, _ = got["cold_starts"]
    assert measured_colds == 2, summary  # the scenario did what it is for
    assert simulated_colds == measured_colds, summary
    assert abs(got["replica_seconds"][2]) <= 0.15, summary
    assert abs(got["p95_ms"][2]) <= 0.25, summary
