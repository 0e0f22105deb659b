"""HPA baselines for LLM replicas, on the Kubernetes HPA of ``kservebench.policies.hpa``.

* ``waiting``: KEDA (or an HPA on an External metric) on ``sum(vllm:num_requests_waiting)``
  over a variant's pods with an AverageValue target: desired = ceil(sum / target), within
  the HPA's tolerance, stabilization windows and scaling policies. This is what the
  operator's ``mode: hpa`` does for ``kind: llm`` (target 5, WVA's queue threshold).
  KEDA's own scale to zero is not modelled: the vLLM metric has no series at zero
  replicas, so activation needs a gateway metric; minReplicas must be >= 1.
* ``cpu``: the HPA on CPU utilization of the pods' CPU requests. What the CPU of an LLM
  replica measures is the inputs' ``cpu_cores`` (the simulator estimates it from the
  time the engine loop was busy, see ``sim/llm_autoscale.py``).
* ``follow_external``: the same AverageValue calculation for any external metric, e.g.
  WVA's ``wva_desired_replicas`` with averageValue 1 (the HPA then follows WVA's count).

The AverageValue calculation reuses the HPA's utilization calculator unchanged: a target
of 100 % over ``current`` pods that each request one unit and use ``sum / (target x
current)`` of it gives ratio = sum / (target x current), the tolerance test on it, and
ceil(ratio x current) = ceil(sum / target), as the controller's external-metric path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from kservebench.policies import hpa
from kservebench.policies.llm_signals import (
    DRAINING,
    PENDING,
    READY,
    Decision,
    LlmInputs,
    positive,
    require,
)

# The HPA KEDA creates: Kubernetes' default behavior (kservebench.policies.hpa), 1..10.
KEDA_HPA = hpa.HpaParams(min_replicas=1, max_replicas=10)
# The HPA of WVA-B's docs/benchmark.md in front of WVA: up without stabilization and
# down after 240 s, both at most 10 pods per 150 s.
WVA_BENCHMARK_HPA = hpa.HpaParams(
    min_replicas=1,
    max_replicas=10,
    scale_up=hpa.ScalingRules(0.0, (hpa.Policy("Pods", 10, 150.0),)),
    scale_down=hpa.ScalingRules(240.0, (hpa.Policy("Pods", 10, 150.0),)),
)
# A relative nudge below the exact per-pod share, so float rounding in ratio x pods never
# lifts an exact multiple of the target to one replica more.
_NUDGE = 1.0 - 1e-12


def follow_external(
    total: float,
    target: float,
    current: int,
    now_s: float,
    state: hpa.HpaState,
    params: hpa.HpaParams,
) -> tuple[hpa.HpaDecision, hpa.HpaState]:
    """One HPA sync on an External metric summing to ``total``, AverageValue ``target``."""
    if current <= 0:
        # The HPA does nothing at zero replicas (scaling disabled); min >= 1 lifts it.
        current = 0
    share = max(0.0, total) / (target * current) * _NUDGE if current else 0.0
    pods = tuple(
        hpa.PodSample(
            request_cores=1.0,
            started_s=-math.inf,
            ready_changed_s=-math.inf,
            usage_cores=share,
            sample_s=now_s,
        )
        for _ in range(current)
    )
    obs = hpa.HpaObservation(now_s, current, pods)
    return hpa.decide(obs, state, replace(params, target_utilization=100.0))


@dataclass(frozen=True)
class WaitingParams:
    target: float = 5.0  # averageValue of sum(vllm:num_requests_waiting) per replica
    hpa: hpa.HpaParams = field(default_factory=lambda: KEDA_HPA)

    def __post_init__(self) -> None:
        require("target", self.target, positive(self.target), "must be > 0")
        require(
            "hpa.minReplicas",
            self.hpa.min_replicas,
            self.hpa.min_replicas >= 1,
            "must be >= 1 (scale to zero on this metric is not modelled)",
        )

    @property
    def interval_s(self) -> float:
        return self.hpa.sync_period_s


@dataclass(frozen=True)
class CpuParams:
    cpu_request_cores: float = 1.0  # the predictor container's CPU request
    metrics_window_s: float = 15.0  # metrics-server's sample window
    hpa: hpa.HpaParams = field(default_factory=lambda: KEDA_HPA)  # target 80 % by default

    def __post_init__(self) -> None:
        require(
            "cpu_request_cores",
            self.cpu_request_cores,
            positive(self.cpu_request_cores),
            "must be > 0",
        )

    @property
    def interval_s(self) -> float:
        return self.hpa.sync_period_s


@dataclass(frozen=True)
class HpaPerVariant:
    """One HPA per variant's scale target."""

    states: tuple[tuple[str, hpa.HpaState], ...] = ()


def _finish(inputs: LlmInputs, results: dict[str, tuple[hpa.HpaDecision, hpa.HpaState]]):
    desired = {v: d.desired_replicas for v, (d, _) in results.items()}
    reason = "; ".join(
        f"{v}: {d.reason}"
        + ("" if d.utilization is None else f" (metric {d.utilization:.0f} % of target)")
        for v, (d, _) in results.items()
    )
    state = HpaPerVariant(tuple((v, s) for v, (_, s) in results.items()))
    return Decision(desired, reason, state, details={v: d for v, (d, _) in results.items()})


def decide_waiting(
    inputs: LlmInputs, state: HpaPerVariant | None, params: WaitingParams
) -> Decision:
    """KEDA on sum(vllm:num_requests_waiting) per variant (instant query: live pods only)."""
    states = dict((state or HpaPerVariant()).states)
    metrics = inputs.known_metrics()
    results = {}
    for v in inputs.variants:
        pods = inputs.pods(v.name, READY)
        total = sum(metrics[p.pod].waiting for p in pods if p.pod in metrics)
        current = inputs.current(v.name)
        hpa_params = replace(params.hpa, max_replicas=min(params.hpa.max_replicas, v.max_replicas))
        if inputs.metrics is None:
            # KEDA's scaler errors: the HPA keeps the scale (no fallback configured).
            results[v.name] = (
                hpa.HpaDecision(current, "metric unavailable: keep"),
                states.get(v.name, hpa.HpaState()),
            )
            continue
        results[v.name] = follow_external(
            total,
            params.target,
            current,
            inputs.now_s,
            states.get(v.name, hpa.HpaState()),
            hpa_params,
        )
    return _finish(inputs, results)


def decide_cpu(inputs: LlmInputs, state: HpaPerVariant | None, params: CpuParams) -> Decision:
    """The CPU HPA per variant: pods as the controller groups them (terminating pods are
    not counted; loading pods are unready; pods without a sample are missing)."""
    states = dict((state or HpaPerVariant()).states)
    metrics = inputs.known_metrics()
    results = {}
    for v in inputs.variants:
        samples = []
        for p in inputs.replicas:
            if p.variant != v.name or p.state == DRAINING:
                continue
            m = metrics.get(p.pod)
            samples.append(
                hpa.PodSample(
                    request_cores=params.cpu_request_cores,
                    pending=p.state == PENDING,
                    ready=p.state == READY,
                    started_s=p.created_s,
                    ready_changed_s=p.ready_s if p.ready_s is not None else p.created_s,
                    usage_cores=None if m is None else m.cpu_cores,
                    sample_s=inputs.now_s if m is None else m.sampled_s,
                    window_s=params.metrics_window_s,
                )
            )
        obs = hpa.HpaObservation(inputs.now_s, inputs.current(v.name), tuple(samples))
        hpa_params = replace(params.hpa, max_replicas=min(params.hpa.max_replicas, v.max_replicas))
        results[v.name] = hpa.decide(obs, states.get(v.name, hpa.HpaState()), hpa_params)
    return _finish(inputs, results)
