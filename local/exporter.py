"""The local control plane's state as Prometheus metrics, under a cluster's names.

What kube-state-metrics, cAdvisor, the HPA and Knative's autoscaler, activator and
queue-proxy export on a cluster, this collector exports for the local replicas, so the
analysis (``kservebench.analysis.catalog``) reads a local run with its cluster queries:
namespace ``local``, deployment ``<model>-predictor``, revision ``<model>-predictor-00001``,
pods ``<model>-predictor-<n>``. Values are read at scrape time; nothing is cached here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kservebench.procs import free_port

NAMESPACE = "local"
CONTAINER = "kserve-container"


def deployment_name(model: str) -> str:
    return f"{model}-predictor"


def revision_name(model: str) -> str:
    return f"{model}-predictor-00001"


class PlaneCollector:
    """A prometheus_client collector over the plane's models (see ``ControlPlane``)."""

    def __init__(self, plane: Any) -> None:
        self.plane = plane

    def collect(self) -> Iterator[Metric]:
        dep = ["namespace", "deployment"]
        spec = GaugeMetricFamily("kube_deployment_spec_replicas", "desired", labels=dep)
        ready = GaugeMetricFamily("kube_deployment_status_replicas_ready", "ready", labels=dep)
        total = GaugeMetricFamily("kube_deployment_status_replicas", "replicas", labels=dep)
        hpa_labels = ["namespace", "horizontalpodautoscaler"]
        hpa_desired = GaugeMetricFamily(
            "kube_horizontalpodautoscaler_status_desired_replicas", "HPA desired", labels=hpa_labels
        )
        hpa_current = GaugeMetricFamily(
            "kube_horizontalpodautoscaler_status_current_replicas", "HPA current", labels=hpa_labels
        )
        rev = ["namespace_name", "configuration_name", "revision_name"]
        kn = {
            name: GaugeMetricFamily(name, help_text, labels=rev)
            for name, help_text in (
                ("autoscaler_desired_pods", "KPA desired pods"),
                ("autoscaler_requested_pods", "pods the KPA asked for"),
                ("autoscaler_actual_pods", "ready pods"),
                ("autoscaler_panic_mode", "1 while panicking"),
                ("autoscaler_stable_request_concurrency", "stable-window concurrency"),
                ("autoscaler_panic_request_concurrency", "panic-window concurrency"),
                ("activator_request_concurrency", "requests the activator holds"),
                ("revision_queue_depth", "requests in the revision's replicas"),
            )
        }
        # Knative <= 1.18 names these counters without _total (OpenCensus): a gauge family
        # keeps the exact name, the analysis treats them as counters.
        activator_count = GaugeMetricFamily(
            "activator_request_count",
            "requests through the activator",
            labels=[*rev, "response_code"],
        )
        pod_count = GaugeMetricFamily(
            "revision_request_count",
            "requests served by a pod (queue-proxy)",
            labels=[*rev, "pod_name", "response_code"],
        )
        in_flight = GaugeMetricFamily(
            "kservebench_requests_in_flight",
            "requests in the router or a replica",
            labels=["model"],
        )
        pod = ["namespace", "pod"]
        stamps = {
            name: GaugeMetricFamily(name, name, labels=pod)
            for name in (
                "kube_pod_created",
                "kube_pod_status_scheduled_time",
                "kube_pod_start_time",
                "kube_pod_status_ready_time",
                "kube_pod_deletion_timestamp",
            )
        }
        container = [*pod, "container"]
        started = GaugeMetricFamily(
            "kube_pod_container_state_started", "container start", labels=container
        )
        restarts = CounterMetricFamily(
            "kube_pod_container_status_restarts", "container restarts", labels=container
        )
        pod_ready = GaugeMetricFamily(
            "kube_pod_status_ready", "Ready condition", labels=[*pod, "condition"]
        )
        cpu = CounterMetricFamily(
            "container_cpu_usage_seconds", "CPU seconds (cpuacct)", labels=container
        )
        memory = GaugeMetricFamily(
            "container_memory_working_set_bytes", "working set", labels=container
        )
        res = [*container, "resource", "unit"]
        requests = GaugeMetricFamily("kube_pod_container_resource_requests", "requests", labels=res)
        limits = GaugeMetricFamily("kube_pod_container_resource_limits", "limits", labels=res)

        for model, unit in self.plane.models.items():
            replica_set, router, loop = unit.replica_set, unit.router, unit.autoscaler
            d = [NAMESPACE, deployment_name(model)]
            replicas = replica_set.replicas()
            n_ready = sum(1 for r in replicas if r.state == "ready")
            spec.add_metric(d, replica_set.desired)
            ready.add_metric(d, n_ready)
            total.add_metric(d, len(replicas))
            if unit.mode in ("hpa", "slo"):  # slo: the scale target of an external HPA
                hpa_current.add_metric(d, replica_set.desired)
                desired = replica_set.desired
                if unit.mode == "hpa" and loop and loop.last:
                    desired = loop.last.desired_replicas
                hpa_desired.add_metric(d, desired)
                in_flight.add_metric([model], router.in_system)
            else:
                r = [NAMESPACE, deployment_name(model), revision_name(model)]
                decision = loop.last if loop is not None else None
                kn["autoscaler_desired_pods"].add_metric(
                    r, decision.desired_pods if decision else replica_set.desired
                )
                kn["autoscaler_requested_pods"].add_metric(r, replica_set.desired)
                kn["autoscaler_actual_pods"].add_metric(r, n_ready)
                kn["autoscaler_panic_mode"].add_metric(
                    r, float(bool(decision and decision.panicking))
                )
                obs = getattr(loop, "last_observation", None)
                kn["autoscaler_stable_request_concurrency"].add_metric(
                    r, obs.stable_value if obs else 0.0
                )
                kn["autoscaler_panic_request_concurrency"].add_metric(
                    r, obs.panic_value if obs else 0.0
                )
                kn["activator_request_concurrency"].add_metric(r, router.buffered)
                kn["revision_queue_depth"].add_metric(r, router.in_system - router.buffered)
                for code, count in list(router.requests_total.items()):
                    activator_count.add_metric([*r, str(code)], count)
                for name, stats in list(router.per_pod.items()):
                    for code, count in list(stats.requests_total.items()):
                        pod_count.add_metric([*r, name, str(code)], count)
            for replica in replicas:
                p = [NAMESPACE, replica.pod]
                c = [*p, CONTAINER]
                stamps["kube_pod_created"].add_metric(p, replica.created_s)
                stamps["kube_pod_status_scheduled_time"].add_metric(p, replica.created_s)
                if replica.started_s:
                    stamps["kube_pod_start_time"].add_metric(p, replica.started_s)
                    started.add_metric(c, replica.started_s)
                if replica.ready_s:
                    stamps["kube_pod_status_ready_time"].add_metric(p, replica.ready_s)
                if replica.deleted_s:
                    stamps["kube_pod_deletion_timestamp"].add_metric(p, replica.deleted_s)
                is_ready = replica.state == "ready"
                pod_ready.add_metric([*p, "true"], float(is_ready))
                pod_ready.add_metric([*p, "false"], float(not is_ready))
                restarts.add_metric(c, replica.restarts)
                cpu.add_metric(c, replica_set.cpu_seconds(replica.pod))
                mem = replica_set.memory_bytes(replica.pod)
                if mem is not None:
                    memory.add_metric(c, mem)
                requests.add_metric([*c, "cpu", "core"], unit.resources.cpu_request_cores)
                if unit.resources.cpu_limit_cores is not None:
                    limits.add_metric([*c, "cpu", "core"], unit.resources.cpu_limit_cores)
                if unit.resources.memory_limit_bytes is not None:
                    limits.add_metric([*c, "memory", "byte"], unit.resources.memory_limit_bytes)
        yield from (spec, ready, total, hpa_desired, hpa_current, *kn.values())
        yield from (activator_count, pod_count, in_flight, *stamps.values(), started, restarts)
        yield from (pod_ready, cpu, memory, requests, limits)


class Exporter:
    """The collector served on a free loopback port (a registry of its own: no process
    metrics of the bench posing as a replica's)."""

    def __init__(self, plane: Any) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(PlaneCollector(plane))
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, "127.0.0.1", self.registry)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
