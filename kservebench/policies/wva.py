"""llm-d's Workload Variant Autoscaler, V1 saturation analyzer, as a pure decision.

Reimplemented from its documented rules (../shared/WVA.md section 2, WVA v0.5, the default
through v0.8); one call is one pass of its 30 s loop for one model:

1. per replica (the 1-minute peaks of ``vllm:kv_cache_usage_perc`` and
   ``vllm:num_requests_waiting``, as its Prometheus queries take them): saturated iff
   kv >= kvCacheThreshold (0.8) or queue >= queueLengthThreshold (5); a non-saturated
   replica has spare kv = threshold - kv and spare queue = threshold - queue;
2. over the model (all variants): the mean spares over the non-saturated replicas only
   (0 if none). Scale up iff mean spare kv < kvSpareTrigger (0.1) or mean spare queue <
   queueSpareTrigger (3). Scale-down is safe iff at least 2 replicas are non-saturated and
   their load spread over one replica fewer still leaves both spares at the triggers;
3. targets: if any variant is in transition (its last desired differs from its current
   replicas, or fewer or more pods report metrics than it has), every variant keeps its
   desired or current count: no cascade. Otherwise +1 on the cheapest variant without
   pending replicas, or -1 on the most expensive one above 1 replica;
4. the enforcer: every variant to 0 after a retention period without a successful
   request (scale to zero, off by default), else at least 1 replica on the cheapest.

Failing static: with no metrics at all the last desired counts (or the current ones) are
kept. Like WVA v0.5, series of deleted pods still in the 1-minute window are counted
(``ignore_deleted_pods`` turns that off), which is what made it oscillate in its issue
#368. Upstream does not bound the desired count (the HPA in front of it does); here it is
kept within the variant's maxReplicas so a desired count the HPA cannot reach does not
block every later pass as a transition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kservebench.policies.llm_signals import (
    READY,
    Decision,
    LlmInputs,
    ReplicaMetrics,
    cheapest,
    fraction,
    require,
)

MIN_NON_SATURATED_FOR_SCALE_DOWN = 2  # MinNonSaturatedReplicasForScaleDown


@dataclass(frozen=True)
class SaturationConfig:
    """The ConfigMap's ``capacityScaling.default`` (WVA's shipped values)."""

    kv_cache_threshold: float = 0.80
    queue_length_threshold: float = 5.0
    kv_spare_trigger: float = 0.10
    queue_spare_trigger: float = 3.0

    def __post_init__(self) -> None:
        require(
            "kvCacheThreshold",
            self.kv_cache_threshold,
            fraction(self.kv_cache_threshold, low_open=False),
            "must be in [0, 1]",
        )
        require(
            "kvSpareTrigger",
            self.kv_spare_trigger,
            fraction(self.kv_spare_trigger, low_open=False),
            "must be in [0, 1]",
        )
        require(
            "kvCacheThreshold",
            self.kv_cache_threshold,
            self.kv_cache_threshold >= self.kv_spare_trigger,
            "must be >= kvSpareTrigger",
        )
        for name, value in (
            ("queueLengthThreshold", self.queue_length_threshold),
            ("queueSpareTrigger", self.queue_spare_trigger),
        ):
            require(name, value, isinstance(value, int | float) and value >= 0, "must be >= 0")


@dataclass(frozen=True)
class WvaParams:
    saturation: SaturationConfig = field(default_factory=SaturationConfig)
    interval_s: float = 30.0  # WVA-A's hard-coded polling interval
    scale_to_zero: bool = False  # WVA_SCALE_TO_ZERO
    retention_s: float = 600.0  # retention_period, 10 min
    ignore_deleted_pods: bool = False  # True: drop series of pods no longer listed

    def __post_init__(self) -> None:
        require("interval_s", self.interval_s, self.interval_s > 0, "must be > 0")
        require("retention_s", self.retention_s, self.retention_s > 0, "must be > 0")


@dataclass(frozen=True)
class PodSaturation:
    pod: str
    variant: str
    kv: float  # 1-minute peak of kv_cache_usage_perc
    queue: float  # 1-minute peak of num_requests_waiting


@dataclass(frozen=True)
class Analysis:
    total_replicas: int
    non_saturated: int
    avg_spare_kv: float
    avg_spare_queue: float
    should_scale_up: bool
    scale_down_safe: bool
    per_variant: dict[str, int]  # pods reporting metrics, per variant


def is_saturated(pod: PodSaturation, cfg: SaturationConfig) -> bool:
    return pod.kv >= cfg.kv_cache_threshold or pod.queue >= cfg.queue_length_threshold


def analyze(pods: Sequence[PodSaturation], cfg: SaturationConfig) -> Analysis:
    """Steps 1-2: saturation per replica, spares and the two verdicts over the model."""
    spare = [
        (cfg.kv_cache_threshold - p.kv, cfg.queue_length_threshold - p.queue)
        for p in pods
        if not is_saturated(p, cfg)
    ]
    n = len(spare)
    avg_kv = sum(s[0] for s in spare) / n if n else 0.0
    avg_q = sum(s[1] for s in spare) / n if n else 0.0
    up = avg_kv < cfg.kv_spare_trigger or avg_q < cfg.queue_spare_trigger
    safe = False
    if n >= MIN_NON_SATURATED_FOR_SCALE_DOWN:
        # The non-saturated replicas' load spread over one replica fewer.
        spread = n / (n - 1)
        kv_after = (cfg.kv_cache_threshold - avg_kv) * spread
        q_after = (cfg.queue_length_threshold - avg_q) * spread
        safe = (
            cfg.kv_cache_threshold - kv_after >= cfg.kv_spare_trigger
            and cfg.queue_length_threshold - q_after >= cfg.queue_spare_trigger
        )
    per_variant: dict[str, int] = {}
    for p in pods:
        per_variant[p.variant] = per_variant.get(p.variant, 0) + 1
    return Analysis(len(pods), n, avg_kv, avg_q, up, safe, per_variant)


@dataclass(frozen=True)
class VariantReplicaState:
    """A variant as the analyzer sees it (WVA's VariantReplicaState)."""

    variant: str
    current: int
    desired: int = 0  # the last pass's desired (status.desiredOptimizedAlloc); 0: none
    pending: int = 0
    cost: float = 10.0
    metrics_pods: int | None = None  # pods reporting metrics; None: as many as current


def calculate_targets(
    analysis: Analysis, states: Sequence[VariantReplicaState]
) -> tuple[dict[str, int], str]:
    """Step 3: per-variant targets and why."""
    moving = [
        s.variant
        for s in states
        if (s.desired != 0 and s.desired != s.current)
        or (s.current if s.metrics_pods is None else s.metrics_pods) != s.current
    ]
    if moving:
        held = {
            s.variant: s.desired if s.desired != 0 and s.desired != s.current else s.current
            for s in states
        }
        return held, f"transition in progress ({', '.join(sorted(moving))}): hold"
    targets = {s.variant: s.current if s.metrics_pods is None else s.metrics_pods for s in states}
    if analysis.should_scale_up:
        candidates = [s for s in states if s.pending == 0]
        if candidates:
            pick = min(candidates, key=lambda s: (s.cost, s.variant))
            targets[pick.variant] += 1
            return targets, f"saturated: +1 on {pick.variant} (cheapest)"
        return targets, "saturated, but every variant has pending replicas"
    if analysis.scale_down_safe:
        candidates = [s for s in states if targets[s.variant] > 1]
        if candidates:
            # The most expensive; ties to the alphabetically last.
            pick = max(candidates, key=lambda s: (s.cost, s.variant))
            targets[pick.variant] -= 1
            return targets, f"spare capacity: -1 on {pick.variant} (most expensive)"
    return targets, "steady"


@dataclass(frozen=True)
class WvaState:
    desired: tuple[tuple[str, int], ...] = ()
    success_totals: tuple[tuple[str, float], ...] = ()  # per pod, the last pass's counter
    last_success_s: float | None = None  # when a request last succeeded (seen)


def enforce(
    targets: dict[str, int], inputs: LlmInputs, idle_s: float, params: Any
) -> tuple[dict[str, int], str]:
    """Step 4 (WVA's enforcer): scale to zero, or keep one replica on the cheapest."""
    if params.scale_to_zero and idle_s >= params.retention_s:
        return {v: 0 for v in targets}, f"no request for {idle_s:.0f} s: scale to zero"
    if params.scale_to_zero and sum(targets.values()) == 0:
        return targets, ""
    if sum(targets.values()) == 0:
        targets = dict(targets)
        targets[cheapest(inputs.variants).name] = 1
        return targets, "at least one replica (on the cheapest variant)"
    return targets, ""


def _variant_of(m: ReplicaMetrics, inputs: LlmInputs, listed: dict[str, str]) -> str:
    if m.pod in listed:
        return listed[m.pod]
    return m.variant or inputs.variants[0].name


def _activity(inputs: LlmInputs, state: WvaState) -> tuple[float | None, tuple]:
    """When a request last succeeded, from the per-pod success counters."""
    before = dict(state.success_totals)
    last = state.last_success_s
    totals = []
    for m in inputs.metrics or ():
        totals.append((m.pod, m.request_success_total))
        if m.request_success_total > before.get(m.pod, 0.0):
            last = inputs.now_s
    if last is None:
        last = inputs.now_s  # the retention period counts from the first pass
    return last, tuple(totals)


def current_replicas(inputs: LlmInputs, variant: str) -> int:
    """status.replicas (pending + ready pods), or spec.replicas when that is 0."""
    pods = len(inputs.pods(variant))
    return pods if pods else inputs.current(variant)


def metrics_or_hold(
    inputs: LlmInputs, state: Any, ignore_deleted_pods: bool
) -> tuple[dict[str, int], dict[str, int], list[Any], Decision | None]:
    """What both WVA versions start from: the last desired counts, the current ones, the
    metrics they read (WVA counts a deleted pod's lingering series unless told not to),
    and, when there are none, the Decision that holds every variant where it is."""
    previous = dict(state.desired)
    names = [v.name for v in inputs.variants]
    current = {v: current_replicas(inputs, v) for v in names}
    metrics = list(inputs.metrics or ())
    if ignore_deleted_pods:
        metrics = list(inputs.known_metrics().values())
    if metrics:
        return previous, current, metrics, None
    held = {v: previous.get(v) or current[v] for v in names}
    why = "metrics unavailable" if inputs.metrics is None else "no metrics for the model"
    return previous, current, metrics, Decision(held, f"{why}: hold", state, details={"held": True})


def decide(inputs: LlmInputs, state: WvaState | None, params: WvaParams) -> Decision:
    state = state or WvaState()
    previous, current, metrics, hold = metrics_or_hold(inputs, state, params.ignore_deleted_pods)
    if hold is not None:
        return hold

    last_success, totals = _activity(inputs, state)
    listed = {r.pod: r.variant for r in inputs.replicas}
    pods = [
        PodSaturation(m.pod, _variant_of(m, inputs, listed), m.kv_usage, m.waiting) for m in metrics
    ]
    analysis = analyze(pods, params.saturation)
    states = []
    for v in inputs.variants:
        ready = len(inputs.pods(v.name, READY))
        states.append(
            VariantReplicaState(
                v.name,
                current[v.name],
                previous.get(v.name, 0),
                max(0, current[v.name] - ready),
                v.cost_per_hour,
                analysis.per_variant.get(v.name, 0),
            )
        )
    targets, reason = calculate_targets(analysis, states)
    targets = {v.name: min(targets[v.name], v.max_replicas) for v in inputs.variants}
    idle_s = inputs.now_s - (last_success if last_success is not None else inputs.now_s)
    targets, note = enforce(targets, inputs, idle_s, params)
    new_state = WvaState(tuple(sorted(targets.items())), totals, last_success)
    details = {
        "non_saturated": analysis.non_saturated,
        "replicas_with_metrics": analysis.total_replicas,
        "avg_spare_kv": analysis.avg_spare_kv,
        "avg_spare_queue": analysis.avg_spare_queue,
        "scale_up": analysis.should_scale_up,
        "scale_down_safe": analysis.scale_down_safe,
    }
    return Decision(targets, f"{reason}; {note}" if note else reason, new_state, details=details)
