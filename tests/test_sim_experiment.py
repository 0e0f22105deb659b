"""`kservebench simulate` and the calibration: results layout, records, series, summary."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from kservebench.bench.spec import parse_experiment
from kservebench.errors import SpecError
from kservebench.records import RECORD_COLUMNS, read_records
from kservebench.results import PROJECTION_DIR, read_run, start_run
from kservebench.sim.calibrate import (
    calibrate_from_run,
    cold_starts_in_series,
    service_times_fifo,
)
from kservebench.sim.distributions import Replay
from kservebench.sim.experiment import SimOptions, simulate_experiment
from kservebench.sim.plan import WARMUP, plan_segments
from kservebench.sim.projection import project_run

SPEC = {
    "name": "sim-test",
    "mode": "knative",
    "models": [{"name": "sklearn-small"}, {"name": "xgboost-small"}],
    "scaling": {
        "minReplicas": 0,
        "maxReplicas": 4,
        "metric": "concurrency",
        "target": 2,
        "knative": {"window": "10s"},
    },
    "resources": {"requests": {"cpu": "1"}},
    "arrival": "poisson",
    "patterns": [
        {"type": "constant", "rate": 10, "duration": "5s"},
        {
            "type": "spike",
            "baseline": 5,
            "spike_rate": 40,
            "spike_at": "2s",
            "spike_duration": "2s",
            "duration": "6s",
        },
    ],
    "warmup": "2s",
    "cooldown": "60s",
    "simulation": {"service_time": 20, "cold_start": "2s"},
}


def _experiment(**changes):
    return parse_experiment({**SPEC, **changes})


def test_simulate_writes_the_results_layout(tmp_path):
    out = tmp_path / "run"
    summary = simulate_experiment(_experiment(), out)
    run = read_run(out)
    assert run["kind"] == "simulate" and run["simulated"] is True
    assert run["status"] == "finished"

    records = read_records(out)
    assert list(pd.read_csv(out / "records.csv", nrows=1).columns) == list(RECORD_COLUMNS)
    assert set(records["model"]) == {"sklearn-small", "xgboost-small"}
    assert set(records["pattern"]) == {"0-constant", "1-spike"}  # warm-up not recorded
    assert {"burst", "baseline", "steady"} <= set(records["phase"])
    assert records["ok"].all()
    # The 60 s cooldown outlasts the 10 s window + 30 s grace: the spike starts cold.
    spike = records[records["pattern"] == "1-spike"]
    assert spike.groupby("model")["cold"].any().all()
    assert not records[records["pattern"] == "0-constant"]["cold"].any()
    # Models run one after the other, like the bench does.
    spans = records.groupby("model")["intended_s"].agg(["min", "max"]).sort_values("min")
    assert spans["min"].iloc[1] > spans["max"].iloc[0]

    for family in ("replicas_ready", "replicas_desired", "requests_in_flight", "cpu_cores"):
        frame = pd.read_parquet(out / "series" / f"{family}.parquet")
        assert {"time_s", "value", "family", "model"} <= set(frame.columns)
        assert (frame["family"] == family).all()
    ready = pd.read_parquet(out / "series" / "replicas_ready.parquet")
    assert ready["value"].min() == 0 and ready["value"].max() >= 1
    cpu = pd.read_parquet(out / "series" / "cpu_cores.parquet")
    assert set(records["pod"]) <= set(cpu["pod"])  # the same replica names
    # One busy slot is one core of a 1-core request.
    assert cpu["value"].between(0, 1 + 1e-9).all()

    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary, default=str))
    load = saved["loads"]["sklearn-small/1-spike"]
    assert load["simulated"] and load["cold_requests"] > 0
    assert saved["overall"]["requests"] == len(records)


def test_measured_times_need_a_calibration(tmp_path):
    experiment = _experiment(simulation={"service_time": "measured", "cold_start": "2s"})
    with pytest.raises(SpecError) as err:
        simulate_experiment(experiment, tmp_path / "run")
    assert err.value.field == "simulation.service_time"
    assert read_run(tmp_path / "run")["status"] == "failed"


def test_calibration_recovers_service_times_from_a_loaded_fifo_run(tmp_path):
    # A measured-looking run: one replica at 80 % load, constant 20 ms of service.
    run = tmp_path / "local"
    experiment = _experiment(
        mode="hpa",
        scaling={"minReplicas": 1, "maxReplicas": 1, "metric": "cpu", "target": 80},
        patterns=[{"type": "constant", "rate": 40, "duration": "30s"}],
    )
    simulate_experiment(experiment, run, options=SimOptions(fixed_replicas=1))
    start_run(run / "server", "serve", {}, ready_after_s=2.5)  # where a cold start lands
    latency = read_records(run)["latency_ms"]
    assert latency.quantile(0.95) > 40  # queueing is in the latencies...

    calibration = calibrate_from_run(run)
    service = calibration.service_time_s["sklearn-small"].describe()
    # Epoch-second timestamps in the CSV keep about a microsecond of precision.
    assert service["p50"] == pytest.approx(0.020, abs=1e-5)
    assert service["p95"] == pytest.approx(0.020, abs=1e-5)
    assert calibration.cold_start_s.describe()["mean"] == 2.5  # ...and out of the estimate

    # The calibrated simulation of the same spec reproduces the measured latencies.
    measured = experiment.raw | {
        "simulation": {"service_time": "measured", "cold_start": "measured"}
    }
    projected = tmp_path / "projected"
    simulate_experiment(
        parse_experiment(measured), projected, calibration, SimOptions(fixed_replicas=1)
    )
    again = read_records(projected)["latency_ms"]
    assert again.quantile(0.5) == pytest.approx(latency.quantile(0.5), rel=0.01)

    # The bench's projection of the run: the spec's own control plane (HPA here), nested
    # in the run's folder, and invisible to whoever reads the measured records after it.
    entry = project_run(run, parse_experiment(measured))
    assert entry["folder"] == PROJECTION_DIR and entry["control_plane"] == "HPA"
    assert entry["title"] == "Simulated HPA projection (calibrated from this run)"
    assert entry["requests"] == len(read_records(run / PROJECTION_DIR)) > 0
    assert read_run(run / PROJECTION_DIR)["simulated"] is True
    assert len(read_records(run)) == len(latency)


def test_the_simulated_plan_is_the_bench_plan():
    # A ramp first: the bench warms up at its mean rate (22.5/s), not at its rate(0).
    experiment = _experiment(
        patterns=[{"type": "ramp", "start_rate": 5, "end_rate": 40, "duration": "10s"},
                  {"type": "ramp", "start_rate": 40, "end_rate": 5, "duration": "10s"}],
        repetitions=2,
    )  # fmt: skip
    segments = plan_segments(experiment)
    assert [s.label for s in segments] == [WARMUP, "0-ramp", "1-ramp"]
    assert [s.start_s for s in segments] == [0.0, 2.0, 2.0 + 10.0 + 60.0]
    warm = segments[0].pattern
    assert warm.name == "constant" and warm.duration_s == 2.0 and warm.rate(0) == 22.5
    # The bench's arrival seeds: the projection of a run offers that run's request times.
    assert [s.seed for s in segments] == [999, 0, 1]
    assert [s.seed for s in plan_segments(experiment, repetition=1)] == [1999, 1000, 1001]


def test_lindley_inversion_of_a_single_server():
    sent = np.array([0.0, 0.01, 0.5])
    # service 0.1 each: the second waits 0.09 for the first.
    latency = np.array([0.1, 0.19, 0.1])
    assert service_times_fifo(sent, latency) == pytest.approx([0.1, 0.1, 0.1])


def test_a_request_buffered_at_zero_starts_its_service_when_the_pod_is_ready():
    # Two requests wait 3 s for a cold replica (ready at 3.0), then take 0.1 s each: their
    # wait is not service time.
    sent = np.array([0.0, 0.5, 5.0])
    latency = np.array([3.1, 2.7, 0.1])
    assert service_times_fifo(sent, latency, ready_s=3.0) == pytest.approx([0.1, 0.1, 0.1])
    assert service_times_fifo(sent, latency)[0] == pytest.approx(3.1)  # the old bound


def test_replay_hands_out_cold_starts_in_measured_order():
    replay = Replay([5.2, 3.4, 3.6])
    rng = np.random.default_rng(0)
    drawn = [float(replay.sample(rng, 1)[0]) for _ in range(4)]
    assert drawn == [5.2, 3.4, 3.6, 5.2]
    assert replay.describe()["kind"].startswith("replay")


def test_cli_reports_spec_errors_without_a_traceback(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "simulation": {"service_time": "measured"}}))
    code = "from kservebench.cli import main; main()"
    argv = [sys.executable, "-c", code, "simulate", str(spec), "--out", str(tmp_path / "o")]
    out = subprocess.run(argv, capture_output=True, text=True)
    assert out.returncode == 2
    assert "simulation.service_time" in out.stderr and "Traceback" not in out.stderr

    spec.write_text(yaml.safe_dump(SPEC))
    out = subprocess.run(argv, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "simulated" in out.stdout and (tmp_path / "o" / "records.csv").exists()


def test_cluster_cold_starts_come_from_pod_lifecycle_series(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    created = pd.DataFrame(
        {"time_s": [1.0, 2.0, 2.0], "value": [100.0, 100.0, 200.0], "pod": ["a", "a", "b"]}
    )
    ready = pd.DataFrame({"time_s": [5.0, 9.0], "value": [104.5, 207.0], "pod": ["a", "b"]})
    for frame, name in ((created, "pod_created"), (ready, "pod_ready")):
        frame.assign(family=name).to_parquet(series / f"{name}.parquet")
    assert sorted(cold_starts_in_series(tmp_path)) == [4.5, 7.0]


def test_overload_shows_as_client_timeouts_like_the_load_generator_records(tmp_path):
    # 100 req/s of 20 ms on one replica: twice its capacity, the queue only grows.
    experiment = _experiment(
        mode="hpa",
        scaling={"minReplicas": 1, "maxReplicas": 1, "metric": "cpu", "target": 80},
        patterns=[{"type": "constant", "rate": 100, "duration": "10s"}],
        warmup="0s",
    )
    options = SimOptions(fixed_replicas=1, request_timeout_s=1.0)
    simulate_experiment(experiment, tmp_path / "run", options=options)
    records = read_records(tmp_path / "run")
    late = records[~records["ok"]]
    assert len(late) > len(records) / 3
    assert (late["status"] == 0).all() and (late["latency_ms"] == 1000.0).all()
    assert late["error"].str.startswith("Timeout").all()
    assert (records.loc[records["ok"], "latency_ms"] <= 1000.0).all()
