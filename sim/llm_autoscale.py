"""LLM autoscaling policies in the simulated fleet: one table, policy name -> how it runs.

Each policy of ``kservebench.policies`` (``slo``, ``wva``, ``wva_v2``, ``llm_hpa``) plugs
into ``LlmFleet``'s controller hook through the same pipeline a cluster has:

    fleet tick (every ``scrape_s``, 15 s: vLLM's scrape interval and the HPA's sync)
      -> scrape: every ready replica's gauges, counters and histograms
      -> Prometheus view: the latest sample of each pod (``instant``) or the 1-minute
         peaks of KV usage and queue length (``peak``, WVA's ``max_over_time[1m]``); in
         both, a pod that is gone (drained or removed) keeps its last sample for
         ``ghost_s`` (60 s), as a range query still returns a deleted pod's series
      -> the policy's ``decide`` (every ``interval_s`` of its params: WVA V1 30 s, the
         others 15 s) on ``LlmInputs`` (pods from the fleet's replica list, the router's
         arrivals counter and held requests)
      -> for WVA: the HPA of its chart on ``wva_desired_replicas`` (AverageValue 1, the
         behavior of WVA's benchmark: up at once, down after 240 s, 10 pods per 150 s)
      -> ``LlmFleet.scale_to`` (with the pods a policy chose to remove, if any).

The fleet serves one variant, so a fleet is one variant's scale target: the policies are
multi-variant, and here each decides for a one-variant model.

The CPU an LLM replica uses, for the CPU HPA, is estimated (vLLM has no CPU metric, and
the engine model has no CPU): vLLM V1's engine-core process busy-loops one core while it
has requests (``CpuModel.engine_cores`` x the share of the period the engine had work,
``ReplicaSignals.busy_s_total``), the API server adds ``cpu_s_per_token`` per prompt and
output token it tokenizes and streams, and an idle server uses ``idle_cores``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from kservebench.errors import SpecError
from kservebench.llm.vllm_metrics import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS
from kservebench.policies import hpa, llm_hpa, slo, wva, wva_v2
from kservebench.policies.llm_signals import (
    Histogram,
    LlmInputs,
    ReplicaMetrics,
    ReplicaState,
    VariantSpec,
)
from kservebench.sim.llm_fleet import FleetSignals, LlmFleet, ReplicaSignals

GHOST_S = 60.0  # a gone pod's series stay in a 1-minute range query
PEAK_WINDOW_S = 60.0  # max_over_time(...[1m])


@dataclass(frozen=True)
class CpuModel:
    engine_cores: float = 1.0
    cpu_s_per_token: float = 20e-6
    idle_cores: float = 0.05

    def cores(self, busy_s: float, tokens: float, seconds: float) -> float:
        if seconds <= 0:
            return self.idle_cores
        return self.idle_cores + (self.engine_cores * busy_s + self.cpu_s_per_token * tokens) / (
            seconds
        )


def _histogram(bounds, buckets, count, total) -> Histogram:
    if not buckets:
        return Histogram.empty(bounds)
    return Histogram(tuple(bounds), tuple(buckets), total, count)


def to_metrics(
    s: ReplicaSignals,
    now_s: float,
    variant: str,
    before: tuple[float, ReplicaSignals] | None,
    cpu: CpuModel,
) -> ReplicaMetrics:
    """One scrape of a replica as Prometheus stores it (the CPU from the previous one)."""
    cores = None
    if before is not None:
        t0, b = before
        tokens = (s.prompt_tokens_total - b.prompt_tokens_total) + (
            s.generation_tokens_total - b.generation_tokens_total
        )
        cores = cpu.cores(s.busy_s_total - b.busy_s_total, tokens, now_s - t0)
    return ReplicaMetrics(
        pod=s.pod,
        sampled_s=now_s,
        variant=variant,
        running=s.running,
        waiting=s.waiting,
        kv_usage=s.kv_usage,
        kv_capacity_tokens=s.kv_capacity_tokens,
        prompt_tokens_total=s.prompt_tokens_total,
        generation_tokens_total=s.generation_tokens_total,
        request_success_total=s.request_success_total,
        preemptions_total=s.num_preemptions_total,
        request_prompt_tokens_sum=s.request_prompt_tokens_sum,
        request_generation_tokens_sum=s.request_generation_tokens_sum,
        ttft=_histogram(TTFT_BUCKETS, s.ttft_buckets, s.ttft_count, s.ttft_sum_s),
        itl=_histogram(ITL_BUCKETS, s.itl_buckets, s.itl_count, s.itl_sum_s),
        prefill=_histogram(
            REQUEST_LATENCY_BUCKETS, s.prefill_buckets, s.prefill_count, s.prefill_sum_s
        ),
        cpu_cores=cores,
    )


@dataclass
class Prometheus:
    """The scrapes of one fleet and the two views the policies query."""

    variant: str
    cpu: CpuModel = field(default_factory=CpuModel)
    ghost_s: float = GHOST_S
    outage: tuple[float, float] | None = None  # (from, to): queries fail in between
    history: list[tuple[float, dict[str, ReplicaMetrics]]] = field(default_factory=list)
    _raw: dict[str, tuple[float, ReplicaSignals]] = field(default_factory=dict)

    def scrape(self, signals: FleetSignals) -> None:
        now = signals.now_s
        sample = {}
        for s in signals.replicas:
            if s.state != "ready":  # a loading or terminating pod is no scrape target
                continue
            sample[s.pod] = to_metrics(s, now, self.variant, self._raw.get(s.pod), self.cpu)
            self._raw[s.pod] = (now, s)
        self.history.append((now, sample))
        keep = now - max(self.ghost_s, PEAK_WINDOW_S) - 1e-9
        while self.history and self.history[0][0] < keep:
            self.history.pop(0)

    def down(self, now_s: float) -> bool:
        return self.outage is not None and self.outage[0] <= now_s < self.outage[1]

    def instant(self, now_s: float) -> tuple[ReplicaMetrics, ...] | None:
        """Each pod's latest sample; a gone pod's for ``ghost_s`` after its last scrape."""
        if self.down(now_s):
            return None
        latest: dict[str, ReplicaMetrics] = {}
        for t, sample in self.history:
            if t >= now_s - self.ghost_s - 1e-9:
                latest.update(sample)
        return tuple(latest.values())

    def peak(self, now_s: float) -> tuple[ReplicaMetrics, ...] | None:
        """``max_over_time[1m]`` of KV usage and queue per pod (the latest counters)."""
        if self.down(now_s):
            return None
        out: dict[str, ReplicaMetrics] = {}
        for t, sample in self.history:
            if t < now_s - PEAK_WINDOW_S - 1e-9:
                continue
            for pod, m in sample.items():
                old = out.get(pod)
                if old is None:
                    out[pod] = m
                else:
                    out[pod] = replace(
                        m,
                        kv_usage=max(old.kv_usage, m.kv_usage),
                        waiting=max(old.waiting, m.waiting),
                    )
        return tuple(out.values())


def replica_states(signals: FleetSignals, variant: str) -> tuple[ReplicaState, ...]:
    return tuple(
        ReplicaState(s.pod, variant, s.state, s.created_s, s.ready_s) for s in signals.replicas
    )


def variant_spec(fleet: LlmFleet, min_replicas: int = 1, max_replicas: int = 10) -> VariantSpec:
    """The fleet's variant as the policies see it (the engine settings it runs with)."""
    v, cfg = fleet.variant, fleet.config
    return VariantSpec(
        name=v.name,
        accelerator=v.hardware.name,
        gpus_per_replica=v.gpus,
        cost_per_hour=v.cost_per_hour,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        kv_capacity_tokens=cfg.num_gpu_blocks * cfg.block_size,
        max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
    )


# --- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyKind:
    """How one policy runs: its decision, default params, Prometheus view, and the HPA in
    front of it (None: it scales the Deployment itself)."""

    decide: Callable[[LlmInputs, Any, Any], Any]
    params: Callable[[], Any]
    view: str  # instant | peak
    front_hpa: hpa.HpaParams | None = None
    label: str = ""


POLICIES: dict[str, PolicyKind] = {
    "hpa-cpu": PolicyKind(
        llm_hpa.decide_cpu, llm_hpa.CpuParams, "instant", label="HPA on CPU (80 % of 1 core)"
    ),
    "keda-waiting": PolicyKind(
        llm_hpa.decide_waiting,
        llm_hpa.WaitingParams,
        "instant",
        label="KEDA on sum(num_requests_waiting), 5 per replica",
    ),
    "wva-v1": PolicyKind(
        wva.decide, wva.WvaParams, "peak", llm_hpa.WVA_BENCHMARK_HPA, "WVA V1 saturation"
    ),
    "wva-v2": PolicyKind(
        wva_v2.decide, wva_v2.WvaV2Params, "peak", llm_hpa.WVA_BENCHMARK_HPA, "WVA V2 tokens"
    ),
    "slo": PolicyKind(slo.decide, slo.SloParams, "instant", label="ours: SLO/KV-aware"),
}


def get_policy(name: str) -> PolicyKind:
    try:
        return POLICIES[name]
    except KeyError:
        raise SpecError("policy", name, f"must be one of {', '.join(POLICIES)}") from None


@dataclass
class PolicyController:
    """A policy as the fleet's controller: call it with (now_s, signals)."""

    kind: PolicyKind
    params: Any
    variant: VariantSpec
    prometheus: Prometheus
    state: Any = None
    front_state: hpa.HpaState = field(default_factory=hpa.HpaState)
    policy_desired: int | None = None
    last_run_s: float = -math.inf
    log: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, now_s: float, signals: FleetSignals):
        self.prometheus.scrape(signals)
        remove: tuple[str, ...] = ()
        interval = float(self.params.interval_s)
        if now_s - self.last_run_s >= interval - 1e-6:
            self.last_run_s = now_s
            view = self.prometheus.peak if self.kind.view == "peak" else self.prometheus.instant
            inputs = LlmInputs(
                now_s=now_s,
                variants=(self.variant,),
                replicas=replica_states(signals, self.variant.name),
                metrics=view(now_s),
                spec_replicas={self.variant.name: signals.desired},
                arrivals_total=float(signals.arrivals_total),
                queued=signals.router_queue,
            )
            decision = self.kind.decide(inputs, self.state, self.params)
            self.state = decision.state
            self.policy_desired = int(decision.desired[self.variant.name])
            remove = tuple(decision.remove.get(self.variant.name, ()))
            self.log.append(
                {"time_s": now_s, "policy_desired": self.policy_desired, "reason": decision.reason}
            )
        if self.policy_desired is None:
            return None
        desired = self.policy_desired
        if self.kind.front_hpa is not None:
            front = replace(
                self.kind.front_hpa,
                min_replicas=max(1, self.variant.min_replicas),
                max_replicas=self.variant.max_replicas,
            )
            out, self.front_state = llm_hpa.follow_external(
                float(desired), 1.0, signals.desired, now_s, self.front_state, front
            )
            desired = out.desired_replicas
        if desired == signals.desired:
            return None
        return (desired, remove) if remove else desired


def make_controller(
    name: str,
    fleet: LlmFleet,
    *,
    params: Any = None,
    min_replicas: int = 1,
    max_replicas: int = 10,
    outage: tuple[float, float] | None = None,
    cpu: CpuModel | None = None,
) -> PolicyController:
    """The controller for policy ``name`` on ``fleet`` (set it as ``fleet.controller``)."""
    kind = get_policy(name)
    spec = variant_spec(fleet, min_replicas, max_replicas)
    prom = Prometheus(spec.name, cpu or CpuModel(), outage=outage)
    return PolicyController(kind, params if params is not None else kind.params(), spec, prom)


# --- one run and its figures -------------------------------------------------------------------


@dataclass
class AutoscaledRun:
    policy: str
    result: Any  # LlmFleetResult
    controller: PolicyController
    variant_cost_per_hour: float
    gpus_per_replica: int


def run_policy(
    name: str,
    workload: Any,
    variant: Any = "llama-3.1-8b-h100",
    *,
    replicas: int = 1,
    startup_s: Any = 90.0,
    scrape_s: float = 15.0,
    routing: str = "least_requests",
    params: Any = None,
    min_replicas: int = 1,
    max_replicas: int = 10,
    seed: int = 0,
    outage: tuple[float, float] | None = None,
    drain_timeout_s: float = 300.0,
    **fleet_options: Any,
) -> AutoscaledRun:
    """``workload`` through a fleet of ``variant`` scaled by policy ``name``."""
    fleet = LlmFleet(
        variant,
        replicas,
        routing=routing,
        startup_s=startup_s,
        interval_s=scrape_s,
        seed=seed,
        **fleet_options,
    )
    controller = make_controller(
        name,
        fleet,
        params=params,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        outage=outage,
    )
    fleet.controller = controller
    result = fleet.run(workload, drain_timeout_s=drain_timeout_s)
    return AutoscaledRun(name, result, controller, fleet.variant.cost_per_hour, fleet.variant.gpus)


def replica_seconds(run: AutoscaledRun) -> float:
    """Replica time held, from creation (a loading pod holds its GPUs) to removal."""
    end = run.result.end_time_s
    total = 0.0
    for r in run.result.replicas:
        stop = r["removed_s"] if r["removed_s"] is not None else end
        total += max(0.0, min(stop, end) - r["created_s"])
    return total


def summarize(run: AutoscaledRun, slos: Mapping[str, float], duration_s: float) -> dict[str, Any]:
    """Goodput, SLO attainment, latency, failures and cost of one run."""
    from kservebench.analysis.llm import figures

    f = figures(run.result.records, slos, duration_s)
    hours = replica_seconds(run) / 3600
    counts = run.result.replica_counts
    active = counts["pending"] + counts["ready"]
    times = np.append(counts["time_s"].to_numpy(), run.result.end_time_s)
    mean_replicas = float(np.sum(active.to_numpy() * np.diff(times)) / max(times[-1], 1e-9))
    cost = hours * run.variant_cost_per_hour
    return {
        "policy": run.policy,
        "requests": f["requests"],
        "goodput_rps": f["goodput_rps"],
        "slo_attainment": f["slo_attainment"],
        "ttft_p90_ms": f["ttft_p90_ms"],
        "itl_p90_ms": f["itl_p90_ms"],
        "failed": f["failed"],
        "timed_out": f["timed_out"],
        "replica_hours": hours,
        "gpu_hours": hours * max(1, run.gpus_per_replica),
        "cost": cost,
        "goodput_per_cost": f["goodput_rps"] * duration_s / cost if cost > 0 else math.nan,
        "mean_replicas": mean_replicas,
        "max_replicas": int(active.max()),
    }


def summary_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows).set_index("policy")
