"""The Kubernetes HorizontalPodAutoscaler (autoscaling/v2) as a pure decision.

One call of ``decide`` is one sync of the HPA controller (every 15 s by default) for a
Resource metric with a Utilization target (CPU here). It follows the documented algorithm
and the controller's behaviour:

1. replica calculation: pods are grouped as the controller groups them. Pending pods, and
   CPU samples from pods not ready or measured before one metric window after they became
   ready (within the 5 min CPU initialization period), are set aside as *unready*; running
   pods without a sample are *missing*. ratio = sum(usage) / sum(requests) / target over
   the remaining pods; within the tolerance (0.1) nothing changes; otherwise missing pods
   count as 100 % (scale down) or 0 % (scale up) and unready pods as 0 % (scale up only),
   and a recomputed ratio that flips direction or falls in the tolerance keeps the count;
2. stabilization: the recommendation is kept within [min over the scale-up window, max
   over the scale-down window (300 s)] of past recommendations;
3. behavior policies: scale-up limited by max(100 %, 4 pods) per 15 s by default and
   scale-down by 100 % per 15 s, counted against the scale events of each policy period;
4. min/max replicas.

State is an explicit value (past recommendations and scale events), so tests replay the
documented examples without a clock or a cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

CPU_INITIALIZATION_PERIOD_S = 300.0  # --horizontal-pod-autoscaler-cpu-initialization-period
INITIAL_READINESS_DELAY_S = 30.0  # --horizontal-pod-autoscaler-initial-readiness-delay


@dataclass(frozen=True)
class Policy:
    kind: str  # "Pods" | "Percent"
    value: int
    period_s: float


@dataclass(frozen=True)
class ScalingRules:
    stabilization_s: float
    policies: tuple[Policy, ...]
    select: str = "Max"  # "Max" | "Min" | "Disabled"


DEFAULT_SCALE_UP = ScalingRules(0.0, (Policy("Percent", 100, 15.0), Policy("Pods", 4, 15.0)))
DEFAULT_SCALE_DOWN = ScalingRules(300.0, (Policy("Percent", 100, 15.0),))


@dataclass(frozen=True)
class HpaParams:
    min_replicas: int = 1
    max_replicas: int = 10
    target_utilization: float = 80.0  # percent of the pod's CPU request
    tolerance: float = 0.1  # --horizontal-pod-autoscaler-tolerance
    sync_period_s: float = 15.0  # --horizontal-pod-autoscaler-sync-period
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN


def params_from_scaling(scaling: Any, sync_period_s: float = 15.0) -> HpaParams:
    """The HPA a ModelDeployment's ``scaling`` block (kservebench.operator.spec) creates:
    replica bounds, the CPU target and its stabilization windows, default policies."""
    from kservebench.errors import SpecError

    if str(scaling.metric) != "cpu":
        raise SpecError("scaling.metric", str(scaling.metric), "the HPA policy models cpu")
    up = ScalingRules(float(scaling.hpa.scale_up_stabilization_s), DEFAULT_SCALE_UP.policies)
    down = ScalingRules(float(scaling.hpa.scale_down_stabilization_s), DEFAULT_SCALE_DOWN.policies)
    return HpaParams(
        scaling.min_replicas,
        scaling.max_replicas,
        float(scaling.target),
        sync_period_s=sync_period_s,
        scale_up=up,
        scale_down=down,
    )


@dataclass(frozen=True)
class PodSample:
    """What the controller knows about one pod of the scale target."""

    request_cores: float
    pending: bool = False  # not yet running (scheduling, image pull)
    ready: bool = True
    started_s: float = 0.0  # pod start time
    ready_changed_s: float = 0.0  # last transition of the Ready condition
    usage_cores: float | None = None  # metrics-server sample; None = no metrics yet
    sample_s: float = 0.0  # sample timestamp (end of its window)
    window_s: float = 15.0  # sample window


@dataclass(frozen=True)
class HpaObservation:
    now_s: float
    spec_replicas: int  # the scale subresource's current replicas
    pods: tuple[PodSample, ...]


@dataclass(frozen=True)
class HpaState:
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, unstabilized recommendation)
    scale_events: tuple[tuple[float, int], ...] = ()  # (time, replica change: +up / -down)


@dataclass(frozen=True)
class HpaDecision:
    desired_replicas: int
    reason: str
    utilization: float | None = None  # percent, over the pods with samples
    calculated: int | None = None  # before stabilization and policies


def _group(pods: tuple[PodSample, ...], now_s: float) -> tuple[list[int], set[int], set[int]]:
    """Indices of pods with usable samples, unready pods, and pods missing samples."""
    measured: list[int] = []
    unready: set[int] = set()
    missing: set[int] = set()
    for i, pod in enumerate(pods):
        if pod.pending:
            unready.add(i)
        elif pod.usage_cores is None:
            missing.add(i)
        elif pod.started_s + CPU_INITIALIZATION_PERIOD_S > now_s:
            # Early in a pod's life its CPU (start-up work) says nothing about load.
            if not pod.ready or pod.sample_s < pod.ready_changed_s + pod.window_s:
                unready.add(i)
            else:
                measured.append(i)
        elif not pod.ready and pod.started_s + INITIAL_READINESS_DELAY_S > pod.ready_changed_s:
            unready.add(i)
        else:
            measured.append(i)
    return measured, unready, missing


def _utilization(usage: dict[int, float], pods: tuple[PodSample, ...]) -> float:
    requests = sum(pods[i].request_cores for i in usage)
    return 100.0 * sum(usage.values()) / requests


def calculate_replicas(
    obs: HpaObservation, target: float, tolerance: float
) -> tuple[int, float | None]:
    """The replica calculator: (replicas, utilization %) before behaviors are applied."""
    current = obs.spec_replicas
    measured, unready, missing = _group(obs.pods, obs.now_s)
    if not measured:
        return current, None  # no metrics at all: the controller keeps the scale
    usage = {i: obs.pods[i].usage_cores or 0.0 for i in measured}
    utilization = _utilization(usage, obs.pods)
    ratio = utilization / target
    scale_up_with_unready = bool(unready) and ratio > 1.0
    if not scale_up_with_unready and not missing:
        if abs(1.0 - ratio) <= tolerance:
            return current, utilization
        return math.ceil(ratio * len(usage)), utilization
    if missing:
        # Pessimistic guesses in the direction that dampens the change.
        for i in missing:
            if ratio < 1.0:
                usage[i] = obs.pods[i].request_cores * max(100.0, target) / 100.0
            elif ratio > 1.0:
                usage[i] = 0.0
    if scale_up_with_unready:
        for i in unready:
            usage[i] = 0.0
    new_ratio = _utilization(usage, obs.pods) / target
    if (
        abs(1.0 - new_ratio) <= tolerance
        or (ratio < 1.0 and new_ratio > 1.0)
        or (ratio > 1.0 and new_ratio < 1.0)
    ):
        return current, utilization
    replicas = math.ceil(new_ratio * len(usage))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return current, utilization
    return replicas, utilization


def _changes_in_period(events: tuple[tuple[float, int], ...], now_s: float, period_s: float):
    added = sum(c for t, c in events if c > 0 and t > now_s - period_s)
    deleted = sum(-c for t, c in events if c < 0 and t > now_s - period_s)
    return added, deleted


def _limit(rules: ScalingRules, current: int, events, now_s: float, up: bool) -> int:
    """The most (scale-up) or fewest (scale-down) replicas the policies allow now."""
    if rules.select == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        added, deleted = _changes_in_period(events, now_s, policy.period_s)
        start = current - added + deleted  # replicas at the start of the policy period
        if policy.kind == "Pods":
            proposals.append(start + policy.value if up else start - policy.value)
        elif up:  # rounded up, else a small deployment could never grow
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
        else:
            proposals.append(int(start * (1 - policy.value / 100)))
    # "Max" picks the policy allowing the biggest change, "Min" the smallest.
    biggest = max if up else min
    smallest = min if up else max
    return (biggest if rules.select == "Max" else smallest)(proposals)


def decide(obs: HpaObservation, state: HpaState, params: HpaParams) -> tuple[HpaDecision, HpaState]:
    now, current = obs.now_s, obs.spec_replicas
    if current == 0 and params.min_replicas > 0:
        return HpaDecision(0, "scaling disabled (scale target at zero)"), state
    if current > params.max_replicas:
        return HpaDecision(params.max_replicas, "above maxReplicas"), state
    if current < params.min_replicas:
        return HpaDecision(params.min_replicas, "below minReplicas"), state

    calculated, utilization = calculate_replicas(obs, params.target_utilization, params.tolerance)

    # Stabilization over past unstabilized recommendations (the current one included).
    up_cutoff = now - params.scale_up.stabilization_s
    down_cutoff = now - params.scale_down.stabilization_s
    up_rec = min([calculated] + [r for t, r in state.recommendations if t > up_cutoff])
    down_rec = max([calculated] + [r for t, r in state.recommendations if t > down_cutoff])
    stabilized = min(max(current, up_rec), down_rec)
    keep_from = min(up_cutoff, down_cutoff)
    recommendations = tuple((t, r) for t, r in state.recommendations if t > keep_from)
    recommendations += ((now, calculated),)

    desired, reason = stabilized, "within policies"
    if stabilized > current:
        limit = max(current, _limit(params.scale_up, current, state.scale_events, now, up=True))
        ceiling = min(params.max_replicas, limit)
        if stabilized > ceiling:
            desired = ceiling
            reason = "ScaleUpLimit" if limit < params.max_replicas else "TooManyReplicas"
    elif stabilized < current:
        limit = min(current, _limit(params.scale_down, current, state.scale_events, now, up=False))
        floor = max(params.min_replicas, limit)
        if stabilized < floor:
            desired = floor
            reason = "ScaleDownLimit" if limit > params.min_replicas else "TooFewReplicas"
    desired = min(max(desired, params.min_replicas), params.max_replicas)

    longest = max(
        [p.period_s for p in params.scale_up.policies + params.scale_down.policies] + [0.0]
    )
    events = tuple((t, c) for t, c in state.scale_events if t > now - longest)
    if desired != current:
        events += ((now, desired - current),)
    new_state = replace(state, recommendations=recommendations, scale_events=events)
    return HpaDecision(desired, reason, utilization, calculated), new_state


@dataclass
class HpaController:
    """Holds the HPA's state between syncs for the simulator's event loop."""

    params: HpaParams
    state: HpaState = field(default_factory=HpaState)

    @property
    def period_s(self) -> float:
        return self.params.sync_period_s

    def step(self, obs: HpaObservation) -> HpaDecision:
        decision, self.state = decide(obs, self.state, self.params)
        return decision
