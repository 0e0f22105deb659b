"""The PromQL catalog against the metric names and labels each Knative release exports.

A real Prometheus scrapes small /metrics servers of our own that expose, for each
Knative Serving release, exactly the names, types and labels its autoscaler, activator
and queue-proxy export (read from knative/serving's sources at those tags: OpenCensus in
1.18; OpenTelemetry from 1.19, queue-proxy's names renamed in 1.19.8, 1.20.1 and 1.21.0),
with the target labels our cluster scrape config gives them. Each release sits in a
namespace of its own; the catalog's collection must find the same canonical families in
every one. kube-state-metrics HPAs named by KServe and by KEDA, and the resolution of
kube-state-metrics pod timestamps in the cold-start decomposition, are checked too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from kservebench.analysis import coldstart
from kservebench.analysis.catalog import queries_for
from kservebench.analysis.collect import collect, prometheus_range_query
from kservebench.analysis.prometheus_local import LocalPrometheus
from kservebench.errors import SpecError
from kservebench.procs import free_port

pytestmark = pytest.mark.slow

# Two InferenceServices per release: "m" scales on concurrency with containerConcurrency
# 0 (so queue-proxy exports no queue depth), "r" on requests per second.
REVISIONS = {"m": "m-predictor-00001", "r": "r-predictor-00001"}
READY, NOT_READY, DESIRED, REQUESTED = 2, 1, 5, 3  # desired is before max-scale (3)
STABLE_C, PANIC_C, STABLE_RPS, PANIC_RPS = 4.5, 6.0, 12.0, 20.0
ACTIVATOR_C = {"m": 1.0, "r": 0.5}
ACTIVATOR_COUNT, QUEUE_COUNT = {"m": 40.0, "r": 10.0}, {"m": 100.0, "r": 30.0}
OTEL_BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10")
RELEASES = {  # release -> namespace
    "1.18.0": "kn-1-18-0",
    "1.19.2": "kn-1-19-2",
    "1.19.8": "kn-1-19-8",
    "1.20.0": "kn-1-20-0",
    "1.21.0": "kn-1-21-0",
}


def opencensus(release: str) -> bool:
    return release.startswith("1.18.")


def queue_duration_name(release: str) -> str:
    """queue-proxy's request histogram: renamed in 1.19.8, 1.20.1 and 1.21.0."""
    old = release in ("1.19.2", "1.20.0")
    return "kn_queueproxy_app_duration_seconds" if old else "kn_serving_invocation_duration_seconds"


@dataclass(eq=False)  # a collector: registered by identity
class Exposition:
    """What one /metrics endpoint exposes: (family, [(labels, value)])."""

    gauges: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    histograms: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def gauge(self, name: str, labels: dict[str, str], value: float) -> None:
        self.gauges.setdefault(name, []).append((labels, value))

    def histogram(self, name: str, labels: dict[str, str], count: float) -> None:
        self.histograms.setdefault(name, []).append((labels, count))

    def collect(self) -> Iterator[Metric]:
        for name, samples in self.gauges.items():
            family = GaugeMetricFamily(name, name, labels=sorted(samples[0][0]))
            for labels, value in samples:
                family.add_metric([labels[k] for k in sorted(labels)], value)
            yield family
        for name, samples in self.histograms.items():
            family = HistogramMetricFamily(name, name, labels=sorted(samples[0][0]))
            for labels, count in samples:
                buckets = [(b, count / 2) for b in OTEL_BUCKETS] + [("+Inf", count)]
                family.add_metric([labels[k] for k in sorted(labels)], buckets, count * 0.02)
            yield family


def revision_labels(release: str, ns: str, model: str) -> dict[str, str]:
    """What identifies a revision: OpenCensus tags (<= 1.18) or OTel attributes (>= 1.19)."""
    config = f"{model}-predictor"  # KServe's ksvc and configuration: <isvc>-predictor
    if opencensus(release):
        return {"namespace_name": ns, "revision_name": REVISIONS[model],
                "configuration_name": config, "service_name": config}  # fmt: skip
    return {"k8s_namespace_name": ns, "kn_revision_name": REVISIONS[model],
            "kn_configuration_name": config, "kn_service_name": config}  # fmt: skip


# Autoscaler gauges: (OpenCensus view name with its component prefix, OTel instrument
# name as exported: dots become underscores, {unit} annotations add nothing, /s adds
# _per_second).
AUTOSCALER_NAMES = {
    "desired": ("autoscaler_desired_pods", "kn_revision_pods_desired"),
    "requested": ("autoscaler_requested_pods", "kn_revision_pods_requested"),
    "ready": ("autoscaler_actual_pods", "kn_revision_pods_count"),
    "not_ready": ("autoscaler_not_ready_pods", "kn_revision_pods_not_ready_count"),
    "panic": ("autoscaler_panic_mode", "kn_revision_panic_mode"),
    "stable": ("autoscaler_stable_request_concurrency", "kn_revision_concurrency_stable"),
    "panic_c": ("autoscaler_panic_request_concurrency", "kn_revision_concurrency_panic"),
    "stable_rps": ("autoscaler_stable_requests_per_second", "kn_revision_rps_stable_per_second"),
    "panic_rps": ("autoscaler_panic_requests_per_second", "kn_revision_rps_panic_per_second"),
}


def autoscaler(release: str, ns: str) -> Exposition:
    """The autoscaler pod: the KPA's pod counts and the decider's gauges per revision."""
    out = Exposition()
    otel = not opencensus(release)
    scope = {"otel_scope_name": "knative.dev/serving/pkg/autoscaler"} if otel else {}
    for model in REVISIONS:
        labels = {**revision_labels(release, ns, model), **scope}
        rps = model == "r"
        gauges = {"desired": DESIRED, "requested": REQUESTED, "ready": READY,
                  "not_ready": NOT_READY, "panic": 0.0 if rps else 1.0}  # fmt: skip
        # The decider records either the RPS or the concurrency gauges, after the metric.
        if rps:
            gauges |= {"stable_rps": STABLE_RPS, "panic_rps": PANIC_RPS}
        else:
            gauges |= {"stable": STABLE_C, "panic_c": PANIC_C}
        for key, value in gauges.items():
            out.gauge(AUTOSCALER_NAMES[key][otel], labels, value)
    return out


def activator(release: str, ns: str) -> Exposition:
    out = Exposition()
    for model in REVISIONS:
        labels = revision_labels(release, ns, model)
        if opencensus(release):
            labels |= {"pod_name": "activator-abc", "container_name": "activator"}
            out.gauge("activator_request_concurrency", labels, ACTIVATOR_C[model])
            # An OpenCensus count: exported without _total.
            counted = {**labels, "response_code": "200", "response_code_class": "2xx"}
            out.gauge("activator_request_count", counted, ACTIVATOR_COUNT[model])
            continue
        labels["kn_activator_proxy"] = "true"
        scope = {"otel_scope_name": "knative.dev/serving/pkg/activator"}
        out.gauge("kn_revision_request_concurrency", labels | scope, ACTIVATOR_C[model])
        # otelhttp's server histogram, the revision attributes added by a labeler.
        http = {"http_request_method": "POST", "http_response_status_code": "200"}
        out.histogram("http_server_request_duration_seconds", labels | http, ACTIVATOR_COUNT[model])
    return out


def queue_proxy(release: str, ns: str, model: str) -> Exposition:
    """One pod's queue-proxy (port 9091). containerConcurrency 0: no queue depth at all."""
    out = Exposition()
    labels = revision_labels(release, ns, model)
    if opencensus(release):
        pod = {
            "pod_name": f"{REVISIONS[model]}-deployment-abc-xyz",
            "container_name": "queue-proxy",
        }
        code = {"response_code": "200", "response_code_class": "2xx"}
        out.gauge("revision_request_count", labels | pod | code, QUEUE_COUNT[model])
        return out
    # Namespace and revision live in the OTel resource: only target_info carries them.
    out.gauge("target_info", labels | {"service_name": f"{model}-predictor"}, 1.0)
    code = {"http_response_status_code": "200"}
    scope = {"otel_scope_name": "knative.dev/serving/pkg/queue"}
    out.histogram(queue_duration_name(release), scope | code, QUEUE_COUNT[model])
    # otelhttp around the whole handler: no revision attributes either.
    out.histogram("http_server_request_duration_seconds", code, QUEUE_COUNT[model])
    return out


def kube_state_metrics() -> Exposition:
    """HPAs named by KServe (<isvc>-predictor) and by KEDA (keda-hpa-<isvc>-predictor)."""
    out = Exposition()
    for name, desired, current in (("keda-hpa-llm-hpa-predictor", 4.0, 3.0),
                                   ("plain-predictor", 2.0, 2.0)):  # fmt: skip
        labels = {"namespace": "keda", "horizontalpodautoscaler": name}
        out.gauge("kube_horizontalpodautoscaler_status_desired_replicas", labels, desired)
        out.gauge("kube_horizontalpodautoscaler_status_current_replicas", labels, current)
    return out


@dataclass
class Cluster:
    prom: LocalPrometheus
    start_s: float
    end_s: float


def serve(exposition: Exposition, servers: list[Any]) -> str:
    registry = CollectorRegistry()
    registry.register(exposition)
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    servers.append(server)
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    servers: list[Any] = []
    jobs: dict[str, list[Any]] = {"knative-serving": [], "knative-queue-proxy": [],
                                  "kube-state-metrics": []}  # fmt: skip
    try:
        for release, ns in RELEASES.items():
            for component, exposition in (("autoscaler", autoscaler(release, ns)),
                                          ("activator", activator(release, ns))):  # fmt: skip
                address = serve(exposition, servers)
                labels = {"component": component, "pod": f"{component}-{ns}"}
                jobs["knative-serving"].append((address, labels))
            for model, revision in REVISIONS.items():
                address = serve(queue_proxy(release, ns, model), servers)
                # The target labels the knative-queue-proxy scrape job sets.
                labels = {"model": model, "revision": revision, "namespace": ns,
                          "pod": f"{revision}-deployment-abc-xyz"}  # fmt: skip
                jobs["knative-queue-proxy"].append((address, labels))
        jobs["kube-state-metrics"].append(serve(kube_state_metrics(), servers))
        with LocalPrometheus(jobs, data_dir=tmp_path_factory.mktemp("prom")) as prom:
            for job in jobs:
                prom.wait_for_scrape(job, timeout_s=60)
            # From here on every target has samples (collection floors the window's start
            # to a whole second, so one more); a few more scrapes of each.
            start = time.time() + 1.0
            time.sleep(4.0)
            yield Cluster(prom, start, time.time())
    finally:
        for server in servers:
            server.shutdown()


KNATIVE_FAMILIES = ("replicas_ready", "replicas_desired", "panic_mode", "requests_in_flight",
                    "stable_concurrency", "panic_concurrency", "stable_rps", "panic_rps",
                    "activator_requests", "queue_proxy_requests")  # fmt: skip


def values(frame: pd.DataFrame) -> dict[str, set[float]]:
    return {m: set(g["value"]) for m, g in frame.groupby("model", observed=True)}


@pytest.mark.parametrize("release", list(RELEASES))
def test_every_knative_release_maps_onto_the_canonical_families(
    cluster: Cluster, release: str
) -> None:
    ns = RELEASES[release]
    query = prometheus_range_query(cluster.prom.url)
    for version in (None, release):  # every generation tried, or only this release's names
        got = collect(query, cluster.start_s, cluster.end_s, "1s", target="cluster",
                      families=KNATIVE_FAMILIES, namespace=ns, knative=version)  # fmt: skip
        assert not got.errors, got.errors
        assert not got.missing, got.missing
        found = {family: values(frame) for family, frame in got.frames.items()}
        assert found == {
            # READY pods (kn_revision_pods_count is the ready count too), not ready - not_ready
            "replicas_ready": {"m": {READY}, "r": {READY}},
            # the KPA's request after bounds, not its unbounded desired_pods
            "replicas_desired": {"m": {REQUESTED}, "r": {REQUESTED}},
            "panic_mode": {"m": {1.0}, "r": {0.0}},
            # m: the autoscaler's panic-window concurrency (no queue depth with cc 0);
            # r scales on rps, has no concurrency gauge: the activator's count
            "requests_in_flight": {"m": {PANIC_C}, "r": {ACTIVATOR_C["r"]}},
            "stable_concurrency": {"m": {STABLE_C}},
            "panic_concurrency": {"m": {PANIC_C}},
            "stable_rps": {"r": {STABLE_RPS}},
            "panic_rps": {"r": {PANIC_RPS}},
            "activator_requests": {m: {v} for m, v in ACTIVATOR_COUNT.items()},
            "queue_proxy_requests": {m: {v} for m, v in QUEUE_COUNT.items()},
        }, (release, version)
        generation = "knative<=1.18" if opencensus(release) else "knative>=1.19"
        queue = queue_duration_name(release).split("_")[1]  # queueproxy | serving
        expected = dict.fromkeys(KNATIVE_FAMILIES, generation)
        if not opencensus(release):
            expected["queue_proxy_requests"] = f"knative>=1.19 (kn_{queue})"
        assert got.sources == expected


def test_every_namespace_at_once_counts_only_revision_series(cluster: Cluster) -> None:
    # ".*" also matches series without the label: queue-proxy's own OTel HTTP histogram
    # has the activator's name, no revision attributes, and our scrape job's model label.
    got = collect(prometheus_range_query(cluster.prom.url), cluster.start_s, cluster.end_s,
                  "1s", target="cluster", families=list(KNATIVE_FAMILIES))  # fmt: skip
    assert not got.missing and not got.errors
    # The first alternative with data wins: the four OpenTelemetry releases' activators.
    assert values(got.frames["activator_requests"]) == {
        m: {4 * count} for m, count in ACTIVATOR_COUNT.items()
    }


def test_keda_and_kserve_hpa_names_give_the_inference_service(cluster: Cluster) -> None:
    got = collect(prometheus_range_query(cluster.prom.url), cluster.start_s, cluster.end_s,
                  "1s", target="cluster", namespace="keda",
                  families=["replicas_desired", "hpa_current_replicas"])  # fmt: skip
    assert got.sources == {"replicas_desired": "hpa", "hpa_current_replicas": "hpa"}
    assert values(got.frames["replicas_desired"]) == {"llm-hpa": {4.0}, "plain": {2.0}}
    assert values(got.frames["hpa_current_replicas"]) == {"llm-hpa": {3.0}, "plain": {2.0}}


def test_a_knative_version_selects_its_own_names() -> None:
    def sources(family: str, version: str | None) -> list[str]:
        return [q.source for q in queries_for(family, "cluster", version)]

    queue = "queue_proxy_requests"
    assert sources(queue, "1.18") == ["knative<=1.18"]
    assert sources(queue, "1.19.7") == ["knative>=1.19 (kn_queueproxy)"]
    assert sources(queue, "1.20.1") == ["knative>=1.19 (kn_serving)"]
    assert sources(queue, "knative-v1.21.0") == ["knative>=1.19 (kn_serving)"]
    # A minor without a patch covers its patch releases: both names of 1.20.x.
    assert sources(queue, "1.20") == ["knative>=1.19 (kn_serving)", "knative>=1.19 (kn_queueproxy)"]
    assert sources(queue, None) == [*sources(queue, "1.20"), "knative<=1.18"]
    assert sources("replicas_ready", "1.18.3") == ["kube-state-metrics", "knative<=1.18"]
    assert sources("replicas_ready", "1.23") == ["kube-state-metrics", "knative>=1.19"]
    assert sources("cpu_cores", "1.19") == ["cadvisor"]
    for broken in ("1.19.0", "1.19.1"):  # the retracted OTel exporter's names
        with pytest.raises(SpecError, match=r"knative: .*1\.19\.2"):
            queries_for("replicas_ready", "cluster", broken)
    with pytest.raises(SpecError, match="knative"):
        queries_for("replicas_ready", "cluster", "latest")


# --- cold-start phases from kube-state-metrics timestamps ----------------------------------


def lifecycle(stamps: dict[str, float], pod: str = "c-predictor-00001-deployment-a-b") -> dict:
    frames = {}
    for family, stamp in stamps.items():
        row = {"time_s": stamp + 1.0, "value": stamp, "family": family, "model": "c", "pod": pod}
        frames[family] = pd.DataFrame([row])
    return frames


def test_cold_start_phases_keep_the_resolution_of_their_timestamps() -> None:
    ready = pd.DataFrame({"time_s": np.arange(0.0, 40.0), "family": "replicas_ready", "model": "c"})
    ready["value"] = np.where(ready["time_s"] >= 30, 1.0, 0.0)
    flight = pd.DataFrame({"time_s": np.arange(0.0, 40.0), "family": "requests_in_flight",
                           "model": "c"})  # fmt: skip
    flight["value"] = np.where((ready["time_s"] >= 10) & (ready["time_s"] < 30), 2.0, 0.0)
    # A cluster: kube-state-metrics stamps are whole seconds (metav1.Time).
    whole = {"pod_created": 12.0, "pod_scheduled": 12.0, "pod_started": 15.0, "pod_ready": 29.0}
    (episode,) = coldstart.cold_start_episodes(ready, None, flight, lifecycle(whole))
    assert episode.phases_resolution_s == 1.0
    steps = {k: v for k, v in episode.phases_s.items() if k != "pod"}
    assert steps == {"created_to_scheduled_s": 0, "scheduled_to_started_s": 3,
                     "started_to_ready_s": 14}  # fmt: skip
    assert all(isinstance(v, int) for v in steps.values())  # no sub-second digits claimed
    # The local plane: exact stamps, kept as they are.
    exact = {"pod_created": 12.25, "pod_scheduled": 12.25, "pod_started": 12.5, "pod_ready": 28.75}
    (episode,) = coldstart.cold_start_episodes(ready, None, flight, lifecycle(exact))
    assert episode.phases_resolution_s == 0.0
    assert episode.phases_s["started_to_ready_s"] == pytest.approx(16.25)
