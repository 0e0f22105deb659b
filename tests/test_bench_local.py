"""``kservebench bench`` on the local target, end to end, with real servers.

A short spec (one small model, two short patterns, ~20 s of traffic) runs through the real
CLI: KServe ModelServer, Prometheus and Locust-driven loadgen as child processes. Then a
run is interrupted mid-pattern like Ctrl-C would, and must leave a consistent folder and
no servers behind.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest
import requests
import yaml

from kservebench.procs import kservebench_argv
from kservebench.records import read_records

pytestmark = pytest.mark.slow
MODEL = "sklearn-small"
SHORT = {
    "name": "short",
    "mode": "hpa",
    "models": [{"name": MODEL, "protocol": "v1"}],
    "scaling": {"minReplicas": 1, "maxReplicas": 3, "metric": "cpu", "target": 70},
    "patterns": [
        {"type": "constant", "rate": 10, "duration": "8s"},
        {"type": "spike", "baseline": 5, "spike_rate": 25, "spike_at": "3s",
         "spike_duration": "3s", "duration": "8s"},
    ],
    "warmup": "2s",
    "cooldown": "2s",
    "slo": {"latency_ms": 250},
}  # fmt: skip


def bench(tmp_path, trained_dir, spec, **popen):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    argv = [*kservebench_argv("bench"), str(spec_file), "--target", "local",
            "--results", str(tmp_path / "results"), "--trained", str(trained_dir)]  # fmt: skip
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)  # fmt: skip


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """Empty at first: the bench trains the one model it needs (a second run reuses it)."""
    return tmp_path_factory.mktemp("trained")


def only_run_dir(tmp_path):
    (run_dir,) = (tmp_path / "results").iterdir()
    return run_dir


def server_is_down(url):
    try:
        requests.get(url, timeout=1)
    except requests.ConnectionError:
        return True
    return False


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs the prometheus binary")
def test_a_short_experiment_end_to_end(tmp_path, trained_dir):
    process = bench(tmp_path, trained_dir, SHORT)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, f"{out}\n{err}"
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name.startswith("short-") and run_dir.name.endswith("Z")
    assert f"finished: {run_dir}" in out

    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["kind"] == "bench"
    assert run["spec"]["name"] == "short" and run["slo_ms"] == 250
    assert run["replicas"] == "autoscaled by the local HPA (live control plane)"
    assert run["local"]["models"][MODEL]["replicas"]["ready_after_s"][0] > 0
    assert run["local"]["models"][MODEL]["autoscaler"] == "hpa"
    assert (trained_dir / MODEL).is_dir()  # trained because it was missing
    assert run["started_at"] < run["traffic_started_at"] < run["traffic_ended_at"]
    assert run["traffic_ended_at"] <= run["ended_at"]
    assert run["versions"]["kserve"] and run["git_revision"]

    # One loadgen folder per pattern, records carrying model and pattern; warm-up kept apart.
    loads = sorted(p.name for p in (run_dir / "loads" / MODEL).iterdir())
    assert loads == ["0-constant", "1-spike"]
    records = read_records(run_dir / "loads")
    assert set(records["model"]) == {MODEL}
    assert set(records["pattern"]) == {"0-constant", "1-spike"}  # the spec's labels
    assert records["ok"].mean() > 0.95
    # ~8 s x 10/s + ~8 s x (5..25)/s of Poisson arrivals: loose bounds on a busy machine.
    assert 80 < len(records) < 260
    assert (run_dir / "warmup" / MODEL / "warmup-records.csv").exists()
    assert not (run_dir / "warmup" / MODEL / "records.csv").exists()

    # Series from the real Prometheus: the plane's replica counts (under kube-state-metrics'
    # names) and the replicas' own histograms.
    replicas = pd.read_parquet(run_dir / "series" / "replicas_ready.parquet")
    assert set(replicas["model"]) == {MODEL} and replicas["value"].max() >= 1.0
    manifest = json.loads((run_dir / "series" / "collection.json").read_text())
    assert manifest["sources"]["replicas_ready"] == "kube-state-metrics"
    assert manifest["sources"]["cpu_cores"] == "cadvisor"
    assert (run_dir / "series" / "predict_seconds_count.parquet").exists()

    report = (run_dir / "report" / "report.md").read_text()
    assert (run_dir / "report" / "report.html").exists()
    assert MODEL in report and "spike" in report
    assert run["report"] == "report"

    # The simulated HPA projection, calibrated from this run, beside the measured data:
    # the same patterns row by row, and the measured records left alone.
    projection = run["simulated_projection"]
    assert "error" not in projection and projection["control_plane"] == "HPA"
    simulated = read_records(run_dir / "simulated")
    assert set(simulated["pattern"]) == {"0-constant", "1-spike"}
    # The same arrivals (the bench's seeds), so the same requests per pattern.
    per_pattern = records.groupby("pattern").size()
    assert simulated.groupby("pattern").size().to_dict() == per_pattern.to_dict()
    assert (run_dir / "simulated" / "series" / "replicas_ready.parquet").exists()
    assert "## Simulated HPA projection (calibrated from this run)" in report
    assert f"| {MODEL} | 1-spike |" in report.split("## Simulated HPA")[1]
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["requests"] == len(records)
    assert summary["simulated_projection"]["summary"]["requests"] == len(simulated)


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs the prometheus binary")
def test_an_interrupted_run_is_consistent_and_stops_its_servers(tmp_path, trained_dir):
    spec = {**SHORT, "warmup": "0s",
            "patterns": [{"type": "constant", "rate": 10, "duration": "60s"}]}  # fmt: skip
    process = bench(tmp_path, trained_dir, spec)
    try:
        deadline = time.monotonic() + 120
        records = None
        while time.monotonic() < deadline:
            found = list((tmp_path / "results").glob(f"*/loads/{MODEL}/0-constant/records.csv"))
            if found and found[0].stat().st_size > 500:  # traffic is flowing
                records = found[0]
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.5)
        assert records is not None, "the load never started"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, f"{out}\n{err}"
    run_dir = only_run_dir(tmp_path)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "interrupted"
    assert run["ended_at"] > run["started_at"]
    # The load generator wrote its summary; what was sent so far is kept and reported.
    load_run = json.loads((records.parent / "run.json").read_text())
    assert load_run["status"] == "interrupted"
    assert len(read_records(records)) > 5
    assert isinstance(run["series"], dict)
    assert (run_dir / "report" / "report.md").exists()
    # Every server the run started is gone.
    assert server_is_down(run["local"]["models"][MODEL]["router"])
    for replica in run["local"]["models"][MODEL]["replicas"]["pods"]:
        assert server_is_down(f"http://127.0.0.1:{replica['port']}")
    assert server_is_down(run["local"]["prometheus_url"])
