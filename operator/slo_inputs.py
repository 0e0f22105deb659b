"""Mode slo: Prometheus series and API objects -> the policy's ``LlmInputs``, no I/O.

The SLO loop (``slo_loop.py``) asks Prometheus two instant queries (``series_query``:
every vLLM series of the model's predictor pods; ``sampled_query``: when each pod was
last scraped) and lists the predictor pods and Deployment; the functions here turn the
answers into plain policy inputs:

* ``replica_metrics``: per pod, its vLLM gauges, counters (summed over labels such as
  ``finished_reason``), histograms (cumulative buckets by ``le``) and the KV capacity
  from ``vllm:cache_config_info`` (num_gpu_blocks x block_size).
* ``replica_states``: pods as the API lists them: pending (not Ready), ready, draining
  (deletionTimestamp); finished pods (Succeeded/Failed) do not count.
* ``build_inputs``: one pass; series of pods the API no longer lists (a deleted pod's
  samples linger in Prometheus for its lookback) are dropped and named.
"""

from __future__ import annotations

import datetime
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kservebench.policies.llm_signals import (
    DRAINING,
    PENDING,
    READY,
    Histogram,
    LlmInputs,
    ReplicaMetrics,
    ReplicaState,
    VariantSpec,
)

# vLLM metric -> ReplicaMetrics field (gauges and counters; several labels are summed).
SCALARS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:gpu_cache_usage_perc": "kv_usage",  # vLLM < 0.10's name
    "vllm:prompt_tokens_total": "prompt_tokens_total",
    "vllm:generation_tokens_total": "generation_tokens_total",
    "vllm:request_success_total": "request_success_total",
    "vllm:num_preemptions_total": "preemptions_total",
    "vllm:request_prompt_tokens_sum": "request_prompt_tokens_sum",
    "vllm:request_generation_tokens_sum": "request_generation_tokens_sum",
}
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": "ttft",
    "vllm:inter_token_latency_seconds": "itl",
    "vllm:request_prefill_time_seconds": "prefill",
}
CACHE_CONFIG = "vllm:cache_config_info"
SCRAPED = "vllm:num_requests_running"  # every vLLM exports it: its timestamp is the scrape's


def _names() -> list[str]:
    names = [*SCALARS, CACHE_CONFIG]
    for h in HISTOGRAMS:
        names += [f"{h}_bucket", f"{h}_sum", f"{h}_count"]
    return names


def pod_selector(namespace: str, name: str) -> str:
    """The label matchers of the model's predictor pods (KServe names them after the ISVC)."""
    return f'namespace="{namespace}",pod=~"{name}-predictor-.*"'


def series_query(namespace: str, name: str) -> str:
    names = "|".join(_names())
    return f'{{__name__=~"{names}",{pod_selector(namespace, name)}}}'


def sampled_query(namespace: str, name: str) -> str:
    return f"max by (pod) (timestamp({SCRAPED}{{{pod_selector(namespace, name)}}}))"


def _value(sample: Mapping[str, Any]) -> float:
    return float(sample["value"][1])


def replica_metrics(
    series: Iterable[Mapping[str, Any]], sampled: Iterable[Mapping[str, Any]]
) -> dict[str, ReplicaMetrics]:
    """Prometheus vector results (``{"metric": labels, "value": [t, "v"]}``) -> per pod.

    ``sampled`` gives each pod's last scrape time; a pod without one is left out (it
    reports nothing the policy could date)."""
    when = {s["metric"].get("pod"): _value(s) for s in sampled}
    scalars: dict[str, dict[str, float]] = defaultdict(dict)
    buckets: dict[str, dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    sums: dict[str, dict[str, float]] = defaultdict(dict)
    counts: dict[str, dict[str, float]] = defaultdict(dict)
    kv: dict[str, int] = {}
    for s in series:
        labels, value = s["metric"], _value(s)
        pod, metric = labels.get("pod"), labels.get("__name__", "")
        if not pod or not math.isfinite(value):
            continue
        if metric in SCALARS:
            field = SCALARS[metric]
            scalars[pod][field] = scalars[pod].get(field, 0.0) + value
        elif metric == CACHE_CONFIG:
            blocks, size = labels.get("num_gpu_blocks", ""), labels.get("block_size", "")
            if blocks.isdigit() and size.isdigit():
                kv[pod] = int(blocks) * int(size)
        else:
            for base, field in HISTOGRAMS.items():
                if metric == f"{base}_bucket" and "le" in labels:
                    le = float(labels["le"])
                    per_le = buckets[pod][field]
                    per_le[le] = per_le.get(le, 0.0) + value
                elif metric == f"{base}_sum":
                    sums[pod][field] = sums[pod].get(field, 0.0) + value
                elif metric == f"{base}_count":
                    counts[pod][field] = counts[pod].get(field, 0.0) + value
    out = {}
    for pod in set(scalars) | set(buckets) | set(kv):
        if pod not in when:
            continue
        histograms = {}
        for field, per_le in buckets[pod].items():
            finite = sorted(le for le in per_le if math.isfinite(le))
            total = counts[pod].get(field, per_le.get(math.inf, 0.0))
            histograms[field] = Histogram(
                tuple(finite),
                tuple(int(per_le[le]) for le in finite),
                sums[pod].get(field, 0.0),
                int(total),
            )
        out[pod] = ReplicaMetrics(
            pod=pod,
            sampled_s=when[pod],
            kv_capacity_tokens=kv.get(pod, 0),
            **scalars[pod],
            **histograms,
        )
    return out


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def replica_states(pods: Iterable[Mapping[str, Any]], variant: str) -> tuple[ReplicaState, ...]:
    """Pods (API objects as dicts) -> their policy states, oldest first."""
    out = []
    for pod in pods:
        metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        created = parse_time(metadata.get("creationTimestamp")) or 0.0
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        is_ready = ready is not None and ready.get("status") == "True"
        ready_s = parse_time(ready.get("lastTransitionTime")) if is_ready and ready else None
        state = DRAINING if metadata.get("deletionTimestamp") else READY if is_ready else PENDING
        out.append(ReplicaState(metadata["name"], variant, state, created, ready_s))
    return tuple(sorted(out, key=lambda r: (r.created_s, r.pod)))


@dataclass(frozen=True)
class Pass:
    """One pass's inputs and the series it dropped (pods that no longer exist)."""

    inputs: LlmInputs
    ignored_pods: tuple[str, ...] = ()


def build_inputs(
    now_s: float,
    variant: VariantSpec,
    pods: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, ReplicaMetrics] | None,
    spec_replicas: int | None,
) -> Pass:
    """The policy's inputs for one pass; ``metrics`` None: Prometheus did not answer."""
    replicas = replica_states(pods, variant.name)
    listed = {r.pod for r in replicas}
    kept: tuple[ReplicaMetrics, ...] | None = None
    ignored: tuple[str, ...] = ()
    if metrics is not None:
        kept = tuple(
            replace(m, variant=variant.name) for pod, m in sorted(metrics.items()) if pod in listed
        )
        ignored = tuple(sorted(set(metrics) - listed))
    inputs = LlmInputs(
        now_s=now_s,
        variants=(variant,),
        replicas=replicas,
        metrics=kept,
        spec_replicas={} if spec_replicas is None else {variant.name: spec_replicas},
    )
    return Pass(inputs, ignored)


DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
REMOVE_FIRST_COST = "-1000"  # below the default 0: the ReplicaSet removes these pods first


def deletion_cost_patches(remove: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per pod the policy chose to remove, the merge patch that makes the ReplicaSet take
    it first on the next scale-down (pods with a lower deletion cost go first)."""
    patch = {"metadata": {"annotations": {DELETION_COST: REMOVE_FIRST_COST}}}
    return {pod: patch for pod in remove}
