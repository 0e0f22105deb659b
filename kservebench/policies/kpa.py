"""The Knative Pod Autoscaler (KPA) as a pure decision, one call per 2 s tick.

Two parts, as in Knative Serving:

* the decider (autoscaler): observed concurrency (or rps) of the whole revision is averaged
  over the stable window (60 s) and the panic window (10 % of it, 6 s) from 1 s buckets;
  desired = ceil(observed / per-pod target), where the per-pod target is
  max(0.01, target * utilization) (70 % by default), kept within
  [floor(ready / max-scale-down-rate), ceil(max-scale-up-rate * ready)] with ready counted
  as at least 1. Panic starts when the panic-window desire reaches the panic threshold
  (200 %) of the ready pods, extends while it stays there, and ends once a full stable
  window passed without it; while panicking desired = max(stable, panic) and never shrinks.
  scale-down-delay keeps the maximum desire over that trailing window;
* the scaler (PodAutoscaler reconciler): min/max scale bounds, and scale to zero: a desire
  of zero first marks the revision inactive (the activator goes into the request path),
  and only after max(scale-to-zero grace period, pod retention) inactive is zero applied.

The excess burst capacity, floor(ready * per-pod total - target burst capacity (211) -
panic value), decides whether the activator stays in the request path (when negative).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kservebench.operator.scaling import KnativeScaling

# Per-revision defaults come from the same place as the annotations the operator writes.
_REVISION = KnativeScaling()

TICK_S = 2.0  # the autoscaler's tick, hard-coded in Knative


@dataclass(frozen=True)
class KpaParams:
    metric: str = "concurrency"  # concurrency | rps
    target: float = 100.0  # the target annotation (container-concurrency-target-default)
    target_utilization: float = 0.70  # target-utilization-percentage / 100
    container_concurrency: int = 0  # hard limit; caps the concurrency target when > 0
    stable_window_s: float = _REVISION.window_s
    panic_window_percentage: float = _REVISION.panic_window_percentage
    panic_threshold_percentage: float = _REVISION.panic_threshold_percentage
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_down_delay_s: float = _REVISION.scale_down_delay_s
    min_scale: int = 0
    max_scale: int = 0  # 0 = unlimited
    initial_scale: int = _REVISION.initial_scale
    enable_scale_to_zero: bool = True
    scale_to_zero_grace_s: float = 30.0
    scale_to_zero_retention_s: float = _REVISION.scale_to_zero_retention_s
    # -1: activator always in the path; 0: never
    target_burst_capacity: float = _REVISION.target_burst_capacity
    tick_s: float = TICK_S

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100.0

    @property
    def pod_total(self) -> float:
        """What one pod can carry: the target, capped by containerConcurrency."""
        total = self.target
        if self.metric == "concurrency" and self.container_concurrency > 0:
            total = min(total, float(self.container_concurrency))
        return total

    @property
    def pod_target(self) -> float:
        """Per-pod target value: the share of ``pod_total`` the autoscaler aims at."""
        return max(0.01, self.pod_total * self.target_utilization)


@dataclass(frozen=True)
class KpaObservation:
    now_s: float
    ready_pods: int
    stable_value: float  # revision total, averaged over the stable window
    panic_value: float  # revision total, averaged over the panic window
    current_scale: int  # the deployment's spec.replicas


@dataclass(frozen=True)
class KpaState:
    panic_since_s: float | None = None  # last time the panic threshold was crossed
    max_panic_pods: int = 0
    delay_window: tuple[tuple[float, int], ...] = ()  # (time, desire) for scale-down-delay
    active: bool = True  # PodAutoscaler Active condition
    active_since_s: float = 0.0
    inactive_since_s: float | None = None


@dataclass(frozen=True)
class KpaDecision:
    desired_pods: int  # what the decider asks for (the autoscaler_desired_pods metric)
    scale: int  # what the scaler applies to the deployment
    panicking: bool
    stable_desire: int
    panic_desire: int
    over_threshold: bool  # the panic-window desire reached the panic threshold
    excess_burst_capacity: float  # < 0: the activator stays in the request path


def window_average(buckets: Sequence[float], first_bucket_s: float, now_s: float, window_s: float):
    """Average of the trailing 1 s buckets within ``window_s``.

    ``buckets[i]`` covers second ``first_bucket_s + i``. As Knative's timed buckets do, the
    average is over the buckets since the first sample when that is shorter than the window.
    """
    n = len(buckets)
    if n == 0:
        return 0.0
    width = max(1, round(window_s))
    span = min(width, n, int(now_s - first_bucket_s) + 1)
    if span <= 0:
        return 0.0
    return float(sum(buckets[n - span :])) / span


def _decider(
    obs: KpaObservation, state: KpaState, params: KpaParams
) -> tuple[int, int, int, bool, bool, KpaState]:
    now = obs.now_s
    ready = max(1.0, float(obs.ready_pods))
    max_up = math.ceil(params.max_scale_up_rate * ready)
    max_down = math.floor(ready / params.max_scale_down_rate)
    stable_desire = math.ceil(obs.stable_value / params.pod_target)
    panic_desire = math.ceil(obs.panic_value / params.pod_target)
    stable_pods = int(min(max(stable_desire, max_down), max_up))
    panic_pods = int(min(max(panic_desire, max_down), max_up))

    over_threshold = panic_desire / ready >= params.panic_threshold_percentage / 100.0
    panic_since, max_panic = state.panic_since_s, state.max_panic_pods
    if over_threshold:
        panic_since = now  # starts or extends the panic
    elif panic_since is not None and panic_since + params.stable_window_s < now:
        panic_since, max_panic = None, 0  # the surge is now in the stable average

    desired = stable_pods
    if panic_since is not None:
        # Provision for the larger of the two, and never scale down while panicking.
        max_panic = max(max_panic, stable_pods, panic_pods)
        desired = max_panic

    delay_window = state.delay_window
    if params.scale_down_delay_s > 0:
        recent = [(t, d) for t, d in delay_window if t > now - params.scale_down_delay_s]
        delay_window = (*recent, (now, desired))
        desired = max(d for _, d in delay_window)

    new_state = replace(
        state, panic_since_s=panic_since, max_panic_pods=max_panic, delay_window=delay_window
    )
    panicking = panic_since is not None
    return desired, stable_desire, panic_desire, panicking, over_threshold, new_state


def _scaler(desired: int, obs: KpaObservation, state: KpaState, params: KpaParams):
    """Bounds and the scale-to-zero protocol: (scale to apply, new state)."""
    now = obs.now_s
    scale = max(desired, params.min_scale)
    if params.max_scale > 0:
        scale = min(scale, params.max_scale)
    if scale != 0:
        if not state.active:
            state = replace(state, active=True, active_since_s=now, inactive_since_s=None)
        return scale, state
    if not params.enable_scale_to_zero:
        return 1, state
    if state.active:
        if now - state.active_since_s >= params.stable_window_s:
            # Desire zero: go inactive (activator into the path) but keep the pods for now.
            state = replace(state, active=False, inactive_since_s=now)
            return obs.current_scale, state
        return 1, state  # at most one pod for the rest of the stable window
    assert state.inactive_since_s is not None
    hold = max(params.scale_to_zero_grace_s, params.scale_to_zero_retention_s)
    if now - state.inactive_since_s >= hold:
        return 0, state
    return obs.current_scale, state


def excess_burst_capacity(obs: KpaObservation, params: KpaParams) -> float:
    """Spare capacity beyond the target burst capacity, from the panic-window value."""
    if params.target_burst_capacity == 0:
        return 0.0
    if params.target_burst_capacity < 0:
        return -1.0
    capacity = obs.ready_pods * params.pod_total
    return float(math.floor(capacity - params.target_burst_capacity - obs.panic_value))


def decide(obs: KpaObservation, state: KpaState, params: KpaParams) -> tuple[KpaDecision, KpaState]:
    desired, stable_desire, panic_desire, panicking, over, state = _decider(obs, state, params)
    scale, state = _scaler(desired, obs, state, params)
    ebc = excess_burst_capacity(obs, params)
    decision = KpaDecision(desired, scale, panicking, stable_desire, panic_desire, over, ebc)
    return decision, state


def params_from_scaling(scaling: Any) -> KpaParams:
    """The KPA of the revision a ModelDeployment's ``scaling`` block
    (kservebench.operator.spec) creates in knative mode."""
    k = scaling.knative
    return KpaParams(
        metric=str(scaling.metric),
        target=float(scaling.target),
        target_utilization=scaling.target_utilization_percentage / 100.0,
        container_concurrency=scaling.container_concurrency,
        stable_window_s=k.window_s,
        panic_window_percentage=k.panic_window_percentage,
        panic_threshold_percentage=k.panic_threshold_percentage,
        scale_down_delay_s=k.scale_down_delay_s,
        min_scale=scaling.min_replicas,
        max_scale=scaling.max_replicas,
        initial_scale=k.initial_scale,
        scale_to_zero_retention_s=k.scale_to_zero_retention_s,
        target_burst_capacity=k.target_burst_capacity,
    )


def initial_scale(params: KpaParams) -> int:
    """Pods a new revision starts with: initial-scale, within min/max scale."""
    scale = max(params.initial_scale, params.min_scale)
    return min(scale, params.max_scale) if params.max_scale > 0 else scale


def initial_state(params: KpaParams) -> KpaState:
    """The state of a revision's decider right after it was created."""
    scale = initial_scale(params)
    if scale == 0:
        # Created at zero: inactive from the start, the activator in the path.
        return KpaState(active=False, inactive_since_s=-math.inf)
    if scale > 1:
        # Knative starts a decider in panic mode when it finds more than one pod, so a
        # restart without metric history does not scale down.
        return KpaState(panic_since_s=0.0, max_panic_pods=scale)
    return KpaState()


@dataclass
class KpaController:
    """Holds the KPA's state between ticks for the simulator's event loop."""

    params: KpaParams
    state: KpaState = field(default_factory=KpaState)

    @property
    def period_s(self) -> float:
        return self.params.tick_s

    def step(self, obs: KpaObservation) -> KpaDecision:
        decision, self.state = decide(obs, self.state, params=self.params)
        return decision
