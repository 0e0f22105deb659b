"""The PromQL catalog: one entry per metric family, with alternatives per source.

A family is what the analysis reads (``replicas_ready``, ``predict_seconds_bucket``...);
its queries are tried in order and the first that returns data wins, so the canonical
families come out under one name whether kube-state-metrics, Knative (<= 1.18
OpenCensus names or >= 1.19 OpenTelemetry names), cAdvisor or a local model server's
own /metrics produced them. Every query adds a ``model`` label (the InferenceService
name, cut from the deployment/revision/pod name) so stages can join on it.

Placeholders filled in by ``render``: ``$NS`` (namespace regex), ``$RATE`` (rate window),
``$JOB`` (local scrape-job regex).
"""

from __future__ import annotations

from dataclasses import dataclass

from kservebench.errors import SpecError

# KServe names predictor workloads <isvc>-predictor[-00001-deployment-<hash>-<hash>].
_MODEL_FROM = r'"model", "$1", "{label}", "(.+?)-predictor.*"'


def _model(expr: str, label: str) -> str:
    return f"label_replace({expr}, {_MODEL_FROM.format(label=label)})"


@dataclass(frozen=True)
class Query:
    source: str  # where it comes from: kserve, kube-state-metrics, knative<=1.18, ...
    promql: str
    target: str = "cluster"  # "cluster", "local" or "any"


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # gauge | counter | histogram (cumulative bucket counters) | timestamp
    unit: str
    queries: tuple[Query, ...]
    help: str = ""


def _kserve_hist(metric: str) -> tuple[Query, ...]:
    # The ModelServer labels its histograms model_name; keep every other label (pod,
    # instance, le) so counter resets are handled per series before summing.
    relabel = '"model", "$1", "model_name", "(.*)"'
    return (
        Query("kserve", f'label_replace({metric}{{namespace=~"$NS"}}, {relabel})'),
        Query("kserve-local", f'label_replace({metric}{{job=~"$JOB"}}, {relabel})', "local"),
    )


def _ksm(
    metric: str, name_label: str, agg: str = "sum", by: str = "namespace, model", extra: str = ""
) -> Query:
    selector = f'{metric}{{namespace=~"$NS", {name_label}=~".+-predictor.*"{extra}}}'
    return Query("kube-state-metrics", f"{agg} by ({by}) ({_model(selector, name_label)})")


def _hpa(metric: str) -> Query:
    selector = f'{metric}{{namespace=~"$NS"}}'
    expr = _model(selector, "horizontalpodautoscaler")
    return Query("hpa", f"sum by (namespace, model) ({expr})")


def _kn19(metric: str, agg: str = "sum") -> Query:
    selector = f'{metric}{{k8s_namespace_name=~"$NS"}}'
    return Query("knative>=1.19", f"{agg} by (model) ({_model(selector, 'kn_revision_name')})")


def _kn18(metric: str, agg: str = "sum", source: str = "knative<=1.18") -> Query:
    selector = f'{metric}{{namespace_name=~"$NS"}}'
    return Query(source, f"{agg} by (model) ({_model(selector, 'revision_name')})")


def _local(metric: str, agg: str = "sum") -> Query:
    # Written by the bench for local runs (replicas are fixed there).
    return Query("kservebench-local", f"{agg} by (model) ({metric})", "local")


def _process(expr: str) -> Query:
    model = f'label_replace({expr}, "model", "$1", "job", "(.*)")'
    return Query(
        "process-local", f'label_replace({model}, "pod", "$1", "instance", "(.*)")', "local"
    )


_CONTAINER = 'namespace=~"$NS", container!="", container!="POD", pod=~".+-predictor.*"'


def _cadvisor(expr: str) -> Query:
    return Query("cadvisor", f"sum by (namespace, model, pod) ({_model(expr, 'pod')})")


def _families() -> tuple[Family, ...]:
    # >= 1.19 has no ready-pod gauge: allocated pods minus the not-ready ones.
    pods, not_ready = _kn19("kn_revision_pods_count"), _kn19("kn_revision_pods_not_ready_count")
    kn19_ready = f"({pods.promql} - on (model) {not_ready.promql}) or {pods.promql}"
    activator19, queue19 = _kn19("kn_revision_request_concurrency"), _kn19("kn_serving_queue_depth")
    activator18, queue18 = _kn18("activator_request_concurrency"), _kn18("revision_queue_depth")
    fams = [
        # KServe ModelServer: server-side latency histograms and request counters.
        *(
            Family(
                f"{stage}_seconds_{suffix}",
                "histogram" if suffix == "bucket" else "counter",
                "requests" if suffix != "sum" else "seconds",
                _kserve_hist(f"request_{stage}_seconds_{suffix}"),
            )
            for stage in ("predict", "preprocess", "postprocess")
            for suffix in ("bucket", "count", "sum")
        ),
        # Canonical replica families: kube-state-metrics/HPA first, then Knative, then local.
        Family(
            "replicas_ready",
            "gauge",
            "replicas",
            (
                _ksm("kube_deployment_status_replicas_ready", "deployment"),
                Query(pods.source, kn19_ready),
                _kn18("autoscaler_actual_pods"),
                _local("kservebench_replicas_ready"),
            ),
        ),
        Family(
            "replicas_desired",
            "gauge",
            "replicas",
            (
                _hpa("kube_horizontalpodautoscaler_status_desired_replicas"),
                _kn19("kn_revision_pods_desired"),
                _kn18("autoscaler_desired_pods"),
                _local("kservebench_replicas_desired"),
            ),
        ),
        Family(
            "replicas_spec",
            "gauge",
            "replicas",
            (_ksm("kube_deployment_spec_replicas", "deployment"),),
        ),
        Family(
            "hpa_current_replicas",
            "gauge",
            "replicas",
            (_hpa("kube_horizontalpodautoscaler_status_current_replicas"),),
        ),
        # Requests buffered by the activator plus those queued in queue-proxy.
        Family(
            "requests_in_flight",
            "gauge",
            "requests",
            (
                Query(pods.source, f"{activator19.promql} + on (model) {queue19.promql}"),
                Query(activator18.source, f"{activator18.promql} + on (model) {queue18.promql}"),
                Query("knative>=1.19-activator", activator19.promql),
                Query("knative<=1.18-activator", activator18.promql),
                _local("kservebench_requests_in_flight"),
            ),
        ),
        Family(
            "panic_mode",
            "gauge",
            "bool",
            # Knative >= 1.19 exports no panic-mode gauge; its panic-window average is below.
            (_kn18("autoscaler_panic_mode", "max"),),
        ),
        Family(
            "panic_concurrency",
            "gauge",
            "requests",
            (
                _kn19("kn_revision_concurrency_panic"),
                _kn18("autoscaler_panic_request_concurrency"),
            ),
        ),
        Family(
            "stable_concurrency",
            "gauge",
            "requests",
            (
                _kn19("kn_revision_concurrency_stable"),
                _kn18("autoscaler_stable_request_concurrency"),
            ),
        ),
        Family(
            "activator_requests",
            "counter",
            "requests",
            (
                # >= 1.19: the activator's OpenTelemetry HTTP server metrics.
                _kn19("http_server_request_duration_seconds_count"),
                _kn18("activator_request_count"),
            ),
        ),
        Family(
            "queue_proxy_requests",
            "counter",
            "requests",
            (
                _kn19("kn_serving_invocation_duration_seconds_count"),
                _kn18("revision_request_count"),
            ),
        ),
        # Pod lifecycle: values are epoch seconds, one series per pod.
        *(
            Family(
                name, "timestamp", "epoch_s", (_ksm(metric, "pod", "max", "namespace, model, pod"),)
            )
            for name, metric in (
                ("pod_created", "kube_pod_created"),
                ("pod_scheduled", "kube_pod_status_scheduled_time"),
                ("pod_started", "kube_pod_start_time"),
                ("pod_container_started", "kube_pod_container_state_started"),
                ("pod_ready", "kube_pod_status_ready_time"),
                ("pod_deleted", "kube_pod_deletion_timestamp"),
            )
        ),
        # Canonical CPU and memory: cAdvisor on a cluster, the process's own /metrics locally.
        Family(
            "cpu_cores",
            "gauge",
            "cores",
            (
                _cadvisor(f"rate(container_cpu_usage_seconds_total{{{_CONTAINER}}}[$RATE])"),
                _process('rate(process_cpu_seconds_total{job=~"$JOB"}[$RATE])'),
            ),
        ),
        Family(
            "memory_bytes",
            "gauge",
            "bytes",
            (
                _cadvisor(f"container_memory_working_set_bytes{{{_CONTAINER}}}"),
                _process('process_resident_memory_bytes{job=~"$JOB"}'),
            ),
        ),
        Family(
            "cpu_requests_cores",
            "gauge",
            "cores",
            (
                _ksm(
                    "kube_pod_container_resource_requests",
                    "pod",
                    by="namespace, model, pod",
                    extra=', resource="cpu"',
                ),
            ),
        ),
        Family(
            "memory_requests_bytes",
            "gauge",
            "bytes",
            (
                _ksm(
                    "kube_pod_container_resource_requests",
                    "pod",
                    by="namespace, model, pod",
                    extra=', resource="memory"',
                ),
            ),
        ),
    ]
    # vLLM (V1 engine); where a metric was renamed the old name is the second alternative.
    vllm = 'label_replace({m}{{namespace=~"$NS"}}, "model", "$1", "model_name", "(.*)")'
    for name, kind, metrics in (
        ("vllm_requests_running", "gauge", ["vllm:num_requests_running"]),
        ("vllm_requests_waiting", "gauge", ["vllm:num_requests_waiting"]),
        ("vllm_kv_cache_usage", "gauge", ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]),
        ("vllm_prompt_tokens", "counter", ["vllm:prompt_tokens_total"]),
        ("vllm_generation_tokens", "counter", ["vllm:generation_tokens_total"]),
        ("vllm_request_success", "counter", ["vllm:request_success_total"]),
        ("vllm_preemptions", "counter", ["vllm:num_preemptions_total"]),
        ("vllm_ttft_seconds_bucket", "histogram", ["vllm:time_to_first_token_seconds_bucket"]),
        (
            "vllm_itl_seconds_bucket",
            "histogram",
            [
                "vllm:inter_token_latency_seconds_bucket",
                "vllm:time_per_output_token_seconds_bucket",
            ],
        ),
        ("vllm_e2e_seconds_bucket", "histogram", ["vllm:e2e_request_latency_seconds_bucket"]),
        ("vllm_queue_seconds_bucket", "histogram", ["vllm:request_queue_time_seconds_bucket"]),
    ):
        queries = tuple(Query("vllm", vllm.format(m=m), target="any") for m in metrics)
        fams.append(Family(name, kind, "", queries))
    return tuple(fams)


CATALOG: dict[str, Family] = {f.name: f for f in _families()}
CANONICAL = (
    "replicas_ready",
    "replicas_desired",
    "requests_in_flight",
    "cpu_cores",
    "memory_bytes",
)
TARGETS = ("cluster", "local", "auto")


def render(query: Query, namespace: str = ".*", rate_window: str = "30s", job: str = ".+") -> str:
    return query.promql.replace("$NS", namespace).replace("$RATE", rate_window).replace("$JOB", job)


def queries_for(family: str, target: str = "auto") -> tuple[Query, ...]:
    """The alternatives to try for ``family`` on ``target``, in order."""
    if family not in CATALOG:
        raise SpecError("families", family, f"unknown family; known: {', '.join(CATALOG)}")
    if target not in TARGETS:
        raise SpecError("target", target, f"expected one of {', '.join(TARGETS)}")
    queries = CATALOG[family].queries
    if target == "auto":
        return queries
    return tuple(q for q in queries if q.target in (target, "any"))
