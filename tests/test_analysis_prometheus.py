"""Analysis against a real Prometheus (the launcher's child process, 1 s scrapes).

- A real KServe ModelServer under a short load from ``kservebench loadgen``: the request
  count Prometheus scraped equals the records, and the server-side p95 from the histogram
  agrees with the records' p95 within the histogram's bucket resolution.
- Series with a known ground truth pushed through the remote-write receiver, in the
  cluster's metric names (kube-state-metrics, Knative): collection maps them onto the
  canonical families and the cold-start, responsiveness and provisioning functions find
  the episodes and durations to the second.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kservebench.analysis import coldstart, scaling
from kservebench.analysis.catalog import CATALOG
from kservebench.analysis.cli import analyze_app, report_app
from kservebench.analysis.collect import collect, prometheus_range_query
from kservebench.analysis.prometheus_local import (
    LocalPrometheus,
    encode_write_request,
    remote_write,
    wait_for_series,
)
from kservebench.records import coerce_records, read_records

pytestmark = pytest.mark.slow
MODEL = "sklearn-large"  # 300 deep trees: ~50 ms of predict, far above the HTTP overhead
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def bucket_index(seconds: float) -> int:
    """Index of the histogram bucket (upper bound inclusive) holding ``seconds``."""
    return int(np.searchsorted(BUCKETS, seconds, side="left"))


def test_scraped_model_server_agrees_with_records(model_server, tmp_path: Path) -> None:
    server = model_server(MODEL)
    job = MODEL
    with LocalPrometheus({job: [f"127.0.0.1:{server.port}"]}, data_dir=tmp_path / "prom") as prom:
        prom.wait_for_scrape(job)
        run_dir = tmp_path / "run"
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from kservebench.cli import main; sys.exit(main())",
             "loadgen", "--url", server.url, "--model", MODEL, "--out", str(run_dir),
             "--pattern", "constant", "--rate", "8", "--duration", "8s"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONSAFEPATH": "1"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        records = read_records(run_dir)
        assert len(records) > 50 and records["ok"].all()
        # The last responses reach Prometheus at the next scrape after they finished.
        time.sleep(2.5)
        result = CliRunner().invoke(
            analyze_app, [str(run_dir), "--prometheus", prom.url, "--target", "local",
                          "--job", job, "--rate-window", "5s"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        promql = "histogram_quantile(0.95, sum by (le) (request_predict_seconds_bucket))"
        (promql_p95,) = prom.query(promql)
    manifest = json.loads((run_dir / "series" / "collection.json").read_text())
    assert manifest["sources"]["predict_seconds_bucket"] == "kserve-local"
    assert manifest["sources"]["cpu_cores"] == "process-local"
    assert "replicas_ready" in manifest["missing"]  # locally only the bench writes those
    assert not manifest["errors"]

    result = CliRunner().invoke(report_app, [str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["server_requests"] == len(records)
    server_p95_s = summary["server_latency_ms"][MODEL]["p95"] / 1000.0
    client_p95_s = float(np.percentile(records["latency_ms"], 95)) / 1000.0
    # Our interpolation over the collected counters is PromQL's over the server's totals.
    assert server_p95_s == pytest.approx(float(promql_p95["value"][1]), rel=1e-9)
    # Bucket resolution: the client's p95 lies in the server p95's bucket, or the next one
    # up (the client also pays for HTTP and JSON, which the predict histogram does not see).
    server_bucket, client_bucket = bucket_index(server_p95_s), bucket_index(client_p95_s)
    assert server_bucket <= client_bucket <= server_bucket + 1, (server_p95_s, client_p95_s)
    assert summary["utilization"][MODEL]["memory_bytes_mean"] > 10e6
    assert summary["cpu_seconds_per_1k"] > 0


# --- remote-written ground truth --------------------------------------------------------------

# Relative seconds. The model "cold" is at zero replicas from 0 s; requests wait from 15 s;
# its pod is created at 62 s, scheduled 63 s, started 66 s, ready 75 s. The model "scale"
# gets a load step at 100 s: desired 1 -> 2 at 108 s, -> 3 at 111 s; ready follows 2 s later.
SPAN_S = 160


def _series(base: float) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
    t = np.arange(0, SPAN_S + 1, 1.0)
    ns = {"namespace": "bench"}
    cold_ready = np.where(t >= 75, 1.0, 0.0)
    waiting = np.where((t >= 15) & (t < 75), 4.0, 0.0)
    desired = np.where(t >= 111, 3.0, np.where(t >= 108, 2.0, 1.0))
    ready = np.where(t >= 113, 3.0, np.where(t >= 110, 2.0, 1.0))

    def samples(values: np.ndarray) -> list[tuple[float, float]]:
        return [(base + a, float(b)) for a, b in zip(t, values, strict=True)]

    pod = {**ns, "pod": "cold-predictor-00001-deployment-abc-xyz"}
    series = [
        ({"__name__": "kube_deployment_status_replicas_ready", **ns,
          "deployment": "cold-predictor-00001-deployment"}, samples(cold_ready)),
        ({"__name__": "kube_deployment_status_replicas_ready", **ns,
          "deployment": "scale-predictor"}, samples(ready)),
        ({"__name__": "kube_horizontalpodautoscaler_status_desired_replicas", **ns,
          "horizontalpodautoscaler": "scale-predictor"}, samples(desired)),
        ({"__name__": "activator_request_concurrency", "namespace_name": "bench",
          "revision_name": "cold-predictor-00001"}, samples(waiting)),
    ]  # fmt: skip
    # Namespace "otel" speaks only Knative >= 1.19 (OpenTelemetry) names: 2 ready pods
    # (kn_revision_pods_count counts ready ones), the KPA asks for 2 (its unbounded desire
    # is 5), the activator holds 3 requests.
    otel = {"k8s_namespace_name": "otel", "kn_revision_name": "otel-predictor-00001"}
    for name, value in (("kn_revision_pods_count", 2.0), ("kn_revision_pods_not_ready_count", 1.0),
                        ("kn_revision_pods_desired", 5.0), ("kn_revision_pods_requested", 2.0),
                        ("kn_revision_request_concurrency", 3.0)):  # fmt: skip
        series.append(({"__name__": name, **otel}, samples(np.full(len(t), value))))
    for name, at in (("kube_pod_created", 62), ("kube_pod_status_scheduled_time", 63),
                     ("kube_pod_start_time", 66), ("kube_pod_status_ready_time", 75)):  # fmt: skip
        alive = t >= at
        series.append(({"__name__": name, **pod},
                       [(base + a, base + at) for a in t[alive]]))  # fmt: skip
    return series


def _records(base: float) -> pd.DataFrame:
    rows = []
    # "cold": requests every 5 s from 15 s, answered 50 ms after the replica is ready.
    for s in np.arange(15.0, 75.0, 5.0):
        rows.append({"sent_s": base + s, "latency_ms": (75.05 - s) * 1000, "model": "cold"})
    for s in np.arange(80.0, 100.0, 1.0):
        rows.append({"sent_s": base + s, "latency_ms": 30.0, "model": "cold"})
    # "scale": 2 req/s until 100 s, then 10 req/s, evenly spaced (so the step is exact).
    sends = [*np.arange(70.0, 100.0, 0.5), *np.arange(100.0, 160.0, 0.1)]
    rows += [{"sent_s": base + s, "latency_ms": 20.0, "model": "scale"} for s in sends]
    frame = pd.DataFrame(rows)
    frame["intended_s"] = frame["sent_s"]
    frame["ok"], frame["status"], frame["pattern"] = True, 200, "step"
    return coerce_records(frame)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPrometheus, float]]:
    base = float(math.floor(time.time()) - 200)
    with LocalPrometheus(data_dir=tmp_path_factory.mktemp("prom")) as prom:
        remote_write(prom.url, _series(base))
        wait_for_series(prom, "kube_pod_status_ready_time", at=base + SPAN_S)
        yield prom, base


def test_remote_write_round_trip(pushed: tuple[LocalPrometheus, float]) -> None:
    prom, base = pushed
    (sample,) = prom.query('activator_request_concurrency{revision_name="cold-predictor-00001"}',
                           at=base + 20)  # fmt: skip
    assert float(sample["value"][1]) == 4.0
    assert encode_write_request([]) == encode_write_request([])
    old = [({"__name__": "backfill"}, [(base - 3 * 3600, 1.0)])]
    with pytest.raises(RuntimeError, match=r"out of bounds|out of order|too old"):
        remote_write(prom.url, old)
    # A past run's samples are accepted once the out-of-order window covers them.
    with LocalPrometheus(out_of_order_window="6h") as backfill:
        remote_write(backfill.url, [({"__name__": "recent"}, [(base, 1.0)])])
        remote_write(backfill.url, old)
        wait_for_series(backfill, "backfill", at=base - 3 * 3600 + 1)


def test_ground_truth_through_prometheus(pushed: tuple[LocalPrometheus, float]) -> None:
    prom, base = pushed
    got = collect(prometheus_range_query(prom.url), base, base + SPAN_S, "1s",
                  target="cluster", namespace="bench")  # fmt: skip
    assert not got.errors, got.errors  # every catalog query is valid PromQL
    assert got.sources["replicas_ready"] == "kube-state-metrics"
    assert got.sources["replicas_desired"] == "hpa"
    assert got.sources["requests_in_flight"] == "knative<=1.18"  # the activator's, here
    assert set(got.frames["replicas_ready"]["model"]) == {"cold", "scale"}
    assert "vllm_kv_cache_usage" in got.missing and "cpu_cores" in got.missing
    assert set(got.frames) | set(got.missing) == set(CATALOG)

    lifecycle = {n: got.frames[n] for n in coldstart.LIFECYCLE}
    # From series alone: first waiting at 15 s, replica ready at 75 s.
    (episode,) = coldstart.cold_start_episodes(
        got.frames["replicas_ready"], None, got.frames["requests_in_flight"], lifecycle
    )
    assert episode.model == "cold"
    assert episode.first_waiting_s - base == 15.0 and episode.ready_at_s - base == 75.0
    assert episode.length_s == 60.0
    assert episode.phases_s == {
        "pod": "cold-predictor-00001-deployment-abc-xyz", "created_to_scheduled_s": 1.0,
        "scheduled_to_started_s": 3.0, "started_to_ready_s": 9.0,
    }  # fmt: skip
    # With records: first waiting request 15 s -> first response 75.05 s.
    records = _records(base)
    (episode,) = coldstart.cold_start_episodes(got.frames["replicas_ready"], records)
    assert episode.length_s == pytest.approx(60.05)
    assert episode.waiting_requests == 12
    assert episode.penalty_ms == pytest.approx(
        np.median((75.05 - np.arange(15, 75, 5)) * 1000) - 30
    )

    scale = records[records["model"] == "scale"]
    offered = scaling.offered_rps(scale)
    assert scaling.detect_load_steps(offered) == [base + 100]
    desired = got.frames["replicas_desired"]
    (row,) = scaling.responsiveness(desired[desired["model"] == "scale"], [base + 100], base + 160)
    assert (row["first_change_s"], row["settled_s"], row["settled_replicas"]) == (8.0, 11.0, 3.0)
    ready = got.frames["replicas_ready"]
    prov = scaling.provisioning(
        ready[ready["model"] == "scale"], offered, 4.0, base + 70, base + 160
    )
    # needed 1 before 100 s, 3 after; ready 1 until 110 s, 2 until 113 s: 2x10 + 1x3 short
    assert prov["under_replica_seconds"] == pytest.approx(23.0)
    assert prov["over_replica_seconds"] == 0.0
    assert prov["replica_seconds"] == pytest.approx(40 * 1 + 3 * 2 + 47 * 3)


def test_knative_otel_names_map_to_canonical_families(
    pushed: tuple[LocalPrometheus, float],
) -> None:
    prom, base = pushed
    families = ["replicas_ready", "replicas_desired", "requests_in_flight"]
    got = collect(prometheus_range_query(prom.url), base, base + 20, "5s",
                  families=families, namespace="otel")  # fmt: skip
    assert got.sources == dict.fromkeys(families, "knative>=1.19")
    values = {f: set(got.frames[f]["value"]) for f in families}
    assert values == {"replicas_ready": {2.0}, "replicas_desired": {2.0},
                      "requests_in_flight": {3.0}}  # fmt: skip
    assert set(got.frames["replicas_ready"]["model"]) == {"otel"}
