"""The local control plane end to end: real replicas, router, live autoscalers, Prometheus."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml
from conftest import TrainedModels

from kservebench.bench.spec import parse_experiment
from kservebench.errors import SpecError
from kservebench.local.plane import ControlPlane
from kservebench.local.settings import parse_local
from kservebench.procs import kservebench_argv


def _spec(**overrides: object) -> dict:
    spec = {
        "name": "plane",
        "mode": "knative",
        "models": [{"name": "sklearn-small", "protocol": "v1"}],
        "scaling": {
            "minReplicas": 0,
            "maxReplicas": 2,
            "metric": "concurrency",
            "target": 1,
            "containerConcurrency": 1,
            "knative": {"window": "6s", "initialScale": 0},
        },
        "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
        "patterns": [{"type": "constant", "rate": 5, "duration": "5s"}],
        "local": {"restartBackoff": "1s"},
    }
    spec.update(overrides)
    return spec


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (
            {"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "64"}}},
            "resources.limits.cpu",
        ),
        ({"local": {"hpaSyncPeriod": "-5s"}}, "local.hpaSyncPeriod"),
        ({"local": {"restartBackoff": "soon"}}, "local.restartBackoff"),
        ({"local": {"cgroups": "maybe"}}, "local.cgroups"),
        ({"local": {"replicas": 0}}, "local.replicas"),
        (
            {"scaling": {**_spec()["scaling"], "knative": {"window": "-10s"}}},
            "scaling.knative.window",
        ),
    ],
)
def test_bad_control_plane_settings_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(SpecError) as err:
        experiment = parse_experiment(_spec(**overrides))
        ControlPlane(experiment, experiment.local, {}, Path("/tmp/unused"))
    assert err.value.field == field, err.value


def test_cpu_limit_above_the_machine_names_its_cores() -> None:
    cores = os.cpu_count() or 1
    spec = _spec(resources={"requests": {"cpu": "1"}, "limits": {"cpu": str(cores + 1)}})
    experiment = parse_experiment(spec)
    with pytest.raises(SpecError, match=f"{cores} CPU cores"):
        ControlPlane(experiment, experiment.local, {}, Path("/tmp/unused"))


def test_local_block_defaults() -> None:
    settings = parse_local(None)
    assert settings.cgroups == "auto" and settings.fixed_replicas is None
    assert settings.hpa_sync_period_s == 15.0 and settings.restart_backoff_s == 10.0


@pytest.mark.slow
def test_buffering_at_zero_loses_no_request_and_no_cgroups_runs_unlimited(
    trained_models: TrainedModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At zero replicas the router holds every request, the KPA is poked and scales from
    zero, every held request is answered; without writable cgroups limits are off and
    the plane says so."""
    monkeypatch.setenv("KSERVEBENCH_CGROUP_ROOT", str(tmp_path / "no-cgroups"))
    experiment = parse_experiment(_spec())
    dirs = {"sklearn-small": trained_models["sklearn-small"]}
    with ControlPlane(experiment, experiment.local, dirs, tmp_path) as plane:
        plane.start()
        unit = plane.models["sklearn-small"]
        assert unit.replica_set.ready() == []  # initialScale 0: created at zero
        url = f"{plane.endpoint('sklearn-small')}/v1/models/sklearn-small:predict"
        body = {"instances": [[0.1] * 20]}
        with ThreadPoolExecutor(20) as pool:
            responses = list(
                pool.map(lambda _: requests.post(url, json=body, timeout=120), range(20))
            )
        assert [r.status_code for r in responses] == [200] * 20
        assert all(
            r.headers["x-serving-pod"].startswith("sklearn-small-predictor-") for r in responses
        )
        assert sum(unit.router.requests_total.values()) == 20
        assert unit.router.buffered == 0
        described = plane.describe()
        assert any(e["from"] == 0 and e["to"] >= 1 for e in described["scale_events"])
        assert described["limits"]["enforced"] is False and described["limits"]["reason"]


def _bench_spec(tmp_path: Path) -> Path:
    spec = {
        "name": "kill",
        "mode": "hpa",
        "models": [{"name": "sklearn-small", "protocol": "v1"}],
        "scaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "cpu", "target": 70},
        "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
        "patterns": [{"type": "constant", "rate": 20, "duration": "20s"}],
        "local": {"restartBackoff": "1s"},
    }
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _kill(marker: bytes, *also: bytes) -> bool:
    """SIGKILL the process whose argv holds ``marker`` and every one of ``also``."""
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = path.read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in argv and all(a in argv for a in also):
            os.kill(int(path.parent.name), signal.SIGKILL)
            return True
    return False


def _crash_things(results: Path, stop: threading.Event, killed: dict[str, float]) -> None:
    """While the load runs, SIGKILL the run's own replica (as an OOM kill would), then its
    Prometheus. Other tests' servers may still be running: both are found by the ports
    run.json names."""
    while not stop.is_set() and len(killed) < 2:
        runs = list(results.glob("kill-*/loads/*/*/records.csv"))
        size = runs[0].stat().st_size if runs else 0
        if size > 2000 and "replica" not in killed:
            run = json.loads((runs[0].parents[3] / "run.json").read_text())
            pods = run["local"]["models"]["sklearn-small"]["replicas"]["pods"]
            if _kill(b"serve", b"--port", str(pods[0]["port"]).encode()):
                killed["replica"] = time.time()
        elif size > 15000 and "replica" in killed and "prometheus" not in killed:
            run = json.loads((runs[0].parents[3] / "run.json").read_text())
            address = run["local"]["prometheus_url"].removeprefix("http://")
            if _kill(f"--web.listen-address={address}".encode()):
                killed["prometheus"] = time.time()
        time.sleep(0.2)


@pytest.mark.slow
def test_a_replica_and_prometheus_killed_mid_load_are_restarted_and_the_run_says_so(
    trained_models: TrainedModels, tmp_path: Path
) -> None:
    import subprocess

    trained_dir = trained_models["sklearn-small"].parent
    results = tmp_path / "results"
    stop = threading.Event()
    killed: dict[str, float] = {}
    killer = threading.Thread(target=_crash_things, args=(results, stop, killed), daemon=True)
    killer.start()
    argv = kservebench_argv(
        "bench", str(_bench_spec(tmp_path)), "--results", str(results), "--trained",
        str(trained_dir), "--no-project", "--no-progress",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    stop.set()
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = results.glob("kill-*")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "finished with incidents"
    crashed = [i for i in run["incidents"] if "crashed" in i["what"]]
    assert crashed and crashed[0]["pod"].startswith("sklearn-small-predictor-")
    assert run["local"]["restarts"] >= 1
    records = [r for r in (run_dir / "loads").rglob("records.csv")]
    text = "".join(p.read_text() for p in records)
    assert ",False," in text  # the requests the crash cost are recorded as errors

    # Prometheus was restarted on its TSDB: series from before and after its crash.
    assert set(killed) == {"replica", "prometheus"}
    (restarted,) = [i for i in run["incidents"] if i["what"].startswith("prometheus exited")]
    assert restarted["action"] == "restarted on the same TSDB"
    ready = pd.read_parquet(run_dir / "series" / "replicas_ready.parquet")
    assert ready["time_s"].min() < killed["prometheus"] - 3
    assert ready["time_s"].max() > killed["prometheus"] + 3
