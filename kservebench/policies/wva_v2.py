"""llm-d's Workload Variant Autoscaler, V2 token-based analyzer and cost-aware optimizer.

Reimplemented from its documented rules (../shared/WVA.md section 3; the default analyzer
from WVA v0.9, whose loop runs every 15 s). Per replica, in KV tokens:

* k1 = KV capacity x kvCacheThreshold (0.8): the memory bound;
* k2, the compute bound, from the first source that has it: observed (the tokens in use
  of a replica whose queue reached queueLengthThreshold), the rolling average (10) of
  those observations per accelerator and output-length bucket, the engine settings
  (N = min(B x O / (I + O), S) sequences of I + O/2 tokens), else k1;
* capacity = min(k1, k2); demand = tokens in use + queue x mean input tokens (WVA v0.5;
  ``queue_demand="input_output"`` takes input + output, the later rule).

Per variant the capacity of a replica is the median over its ready replicas (a variant
without replicas uses its last known capacity, else the one its settings give); over the
model, with the gateway's queue as demand too:

* required = max(0, demand / scaleUpThreshold (0.85) - (ready + pending) x capacity);
* spare = max(0, ready x capacity - demand / scaleDownBoundary (0.70)).

The cost-aware optimizer (unlimited mode) then adds ``ceil(required / capacity)`` replicas
to the variants in order of cost per unit of capacity (several at once; pending replicas
do not exclude a variant, zero-capacity variants are skipped; bounded by maxReplicas,
the rest spills to the next variant), or removes ``floor(spare / capacity)`` from the
most expensive variants first, keeping one replica on the cheapest only when no other
variant has any. WVA's enforcer (``wva.enforce``) follows. No metrics: hold.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from kservebench.policies.llm_signals import (
    READY,
    Decision,
    LlmInputs,
    ReplicaMetrics,
    VariantSpec,
    counter_deltas,
    fraction,
    require,
)
from kservebench.policies.wva import SaturationConfig, enforce, metrics_or_hold

HISTORY_LENGTH = 10  # rolling average of observed k2
TOKENS_WINDOW_S = 300.0  # rate(...[5m]) for the mean input and output tokens
CAPACITY_STALE_S = 1800.0  # a variant's last known capacity is stale after 30 min


@dataclass(frozen=True)
class WvaV2Params:
    saturation: SaturationConfig = field(default_factory=SaturationConfig)
    scale_up_threshold: float = 0.85
    scale_down_boundary: float = 0.70
    queue_demand: str = "input"  # "input" (v0.5) | "input_output" (later releases)
    interval_s: float = 15.0
    scale_to_zero: bool = False
    retention_s: float = 600.0
    ignore_deleted_pods: bool = False

    def __post_init__(self) -> None:
        up, down = self.scale_up_threshold, self.scale_down_boundary
        require("scaleUpThreshold", up, fraction(up), "must be in (0, 1]")
        require("scaleDownBoundary", down, fraction(down), "must be in (0, 1]")
        require("scaleUpThreshold", up, up > down, "must be above scaleDownBoundary")
        require(
            "queue_demand",
            self.queue_demand,
            self.queue_demand in ("input", "input_output"),
            "must be input or input_output",
        )
        require("interval_s", self.interval_s, self.interval_s > 0, "must be > 0")
        require("retention_s", self.retention_s, self.retention_s > 0, "must be > 0")


def estimate_capacity_from_params(
    max_batched_tokens: float, max_num_seqs: float, avg_input: float, avg_output: float
) -> float:
    """k2 from the engine settings: N = min(B x O / (I + O), S) sequences of I + O/2."""
    if avg_input + avg_output <= 0:
        return 0.0
    sequences = min(max_batched_tokens * avg_output / (avg_input + avg_output), max_num_seqs)
    return sequences * (avg_input + avg_output / 2)


def output_bucket(avg_output: float) -> str:
    return "short" if avg_output < 100 else "medium" if avg_output < 500 else "long"


@dataclass(frozen=True)
class ReplicaCapacity:
    pod: str
    variant: str
    k1: float
    k2: float
    k2_source: str  # observed | history | params | k1
    capacity: float
    demand: float
    saturated: bool


@dataclass(frozen=True)
class Workload:
    avg_input: float = 0.0
    avg_output: float = 0.0


def replica_capacity(
    m: ReplicaMetrics,
    variant: VariantSpec,
    workload: Workload,
    history: dict[str, tuple[float, ...]],
    cfg: SaturationConfig,
    queue_demand: str = "input",
) -> tuple[ReplicaCapacity | None, tuple[str, float] | None]:
    """One replica's capacity and demand, and an observed k2 to remember (key, tokens)."""
    total = m.kv_capacity_tokens
    if total <= 0:
        return None, None
    k1 = total * cfg.kv_cache_threshold
    tokens = m.tokens_in_use
    key = f"{variant.accelerator or variant.name}|{output_bucket(workload.avg_output)}"
    observed = None
    if m.waiting >= int(cfg.queue_length_threshold) and tokens > 0:
        k2, source = float(tokens), "observed"
        observed = (key, float(tokens))
    elif history.get(key):
        k2, source = sum(history[key]) / len(history[key]), "history"
    elif workload.avg_input + workload.avg_output > 0:
        k2 = estimate_capacity_from_params(
            variant.max_num_batched_tokens,
            variant.max_num_seqs,
            workload.avg_input,
            workload.avg_output,
        )
        source = "params"
    else:
        k2, source = k1, "k1"
    per_queued = workload.avg_input
    if queue_demand == "input_output":
        per_queued += workload.avg_output
    demand = tokens + m.waiting * per_queued
    capacity = min(k1, k2)
    rc = ReplicaCapacity(m.pod, variant.name, k1, k2, source, capacity, demand, demand >= capacity)
    return rc, observed


@dataclass(frozen=True)
class VariantCapacity:
    """A variant for the optimizer: replicas, the capacity of one, cost and bound."""

    variant: str
    current: int
    capacity: float
    cost: float
    pending: int = 0
    ready: int | None = None  # None: current - pending
    demand: float = 0.0
    max_replicas: int = 10**6
    min_replicas: int = 0

    @property
    def ready_count(self) -> int:
        return self.current - self.pending if self.ready is None else self.ready


def required_and_spare(
    variants: Sequence[VariantCapacity], extra_demand: float, up: float, down: float
) -> tuple[float, float, dict[str, float]]:
    """(required capacity, spare capacity, the figures) over the model."""
    supply = sum(v.ready_count * v.capacity for v in variants)
    anticipated = sum(v.current * v.capacity for v in variants)
    demand = sum(v.demand for v in variants) + extra_demand
    required = max(0.0, demand / up - anticipated)
    spare = max(0.0, supply - demand / down)
    return required, spare, {"supply": supply, "anticipated": anticipated, "demand": demand}


def optimize(variants: Sequence[VariantCapacity], required: float, spare: float) -> dict[str, int]:
    """The cost-aware optimizer: targets per variant, starting from the current counts."""
    targets = {v.variant: v.current for v in variants}
    usable = [v for v in variants if v.capacity > 0]
    if required > 0:
        remaining = required
        for v in sorted(usable, key=lambda v: (v.cost / v.capacity, v.variant)):
            room = v.max_replicas - targets[v.variant]
            add = min(math.ceil(remaining / v.capacity), max(0, room))
            targets[v.variant] += add
            remaining -= add * v.capacity
            if remaining <= 0:
                break
    elif spare > 0:
        remaining = spare
        cheapest = min(variants, key=lambda v: (v.cost, v.variant)).variant
        for v in sorted(usable, key=lambda v: (-v.cost, v.variant)):
            others = any(n > 0 for name, n in targets.items() if name != v.variant)
            floor = max(v.min_replicas, 1 if v.variant == cheapest and not others else 0)
            remove = min(math.floor(remaining / v.capacity), targets[v.variant] - floor)
            if remove > 0:
                targets[v.variant] -= remove
                remaining -= remove * v.capacity
    return targets


@dataclass(frozen=True)
class WvaV2State:
    desired: tuple[tuple[str, int], ...] = ()
    k2_history: tuple[tuple[str, tuple[float, ...]], ...] = ()
    capacities: tuple[tuple[str, float, float], ...] = ()  # (variant, time, per replica)
    last_metrics: tuple[ReplicaMetrics, ...] = ()
    token_window: tuple[tuple[float, float, float, float], ...] = ()  # t, in, out, finished
    success_totals: tuple[tuple[str, float], ...] = ()
    last_success_s: float | None = None


def _workload(window: Sequence[tuple[float, float, float, float]]) -> Workload:
    finished = sum(w[3] for w in window)
    if finished <= 0:
        return Workload()
    return Workload(sum(w[1] for w in window) / finished, sum(w[2] for w in window) / finished)


def _fallback_capacity(v: VariantSpec, workload: Workload, cfg: SaturationConfig) -> float:
    """A variant without replicas or a recent record: its settings' k2 within its k1."""
    if v.kv_capacity_tokens <= 0:
        return 0.0
    k1 = v.kv_capacity_tokens * cfg.kv_cache_threshold
    k2 = estimate_capacity_from_params(
        v.max_num_batched_tokens, v.max_num_seqs, workload.avg_input, workload.avg_output
    )
    return min(k1, k2) if k2 > 0 else k1


def decide(inputs: LlmInputs, state: WvaV2State | None, params: WvaV2Params) -> Decision:
    state = state or WvaV2State()
    now = inputs.now_s
    cfg = params.saturation
    _, current, metrics, hold = metrics_or_hold(inputs, state, params.ignore_deleted_pods)
    if hold is not None:
        return hold
    names = [v.name for v in inputs.variants]

    by_pod = {m.pod: m for m in metrics}
    deltas = counter_deltas({m.pod: m for m in state.last_metrics}, by_pod)
    window = [w for w in state.token_window if w[0] > now - TOKENS_WINDOW_S]
    if deltas:
        window.append(
            (
                now,
                sum(d.request_prompt_tokens for d in deltas.values()),
                sum(d.request_generation_tokens for d in deltas.values()),
                sum(d.successes for d in deltas.values()),
            )
        )
    workload = _workload(window)

    listed = {r.pod: r.variant for r in inputs.replicas}
    history = {k: tuple(v) for k, v in state.k2_history}
    per_variant: dict[str, list[ReplicaCapacity]] = {v: [] for v in names}
    for m in metrics:
        name = listed.get(m.pod) or m.variant or names[0]
        rc, observed = replica_capacity(
            m, inputs.variant(name), workload, history, cfg, params.queue_demand
        )
        if observed is not None:
            key, tokens = observed
            history[key] = (*history.get(key, ()), tokens)[-HISTORY_LENGTH:]
        if rc is not None:
            per_variant[name].append(rc)

    store = {v: (t, c) for v, t, c in state.capacities if t > now - CAPACITY_STALE_S}
    caps = []
    for v in inputs.variants:
        ready_pods = {r.pod for r in inputs.pods(v.name, READY)}
        reps = per_variant[v.name]
        ready_caps = [r.capacity for r in reps if r.pod in ready_pods] or [r.capacity for r in reps]
        if ready_caps:
            per_replica = statistics.median(ready_caps)
            store[v.name] = (now, per_replica)
        elif v.name in store:
            per_replica = store[v.name][1]
        else:
            per_replica = _fallback_capacity(v, workload, cfg)
        ready = len(ready_pods)
        caps.append(
            VariantCapacity(
                v.name,
                current[v.name],
                per_replica,
                v.cost_per_hour,
                pending=max(0, current[v.name] - ready),
                demand=sum(r.demand for r in reps),
                max_replicas=v.max_replicas,
                min_replicas=v.min_replicas,
            )
        )
    queue_demand = inputs.queued * (workload.avg_input + workload.avg_output)
    required, spare, figures = required_and_spare(
        caps, queue_demand, params.scale_up_threshold, params.scale_down_boundary
    )
    targets = optimize(caps, required, spare)
    if required > 0:
        reason = f"required {required:.0f} tokens of capacity"
    elif spare > 0 and targets != current:
        reason = f"spare {spare:.0f} tokens of capacity"
    else:
        reason = "steady"

    totals = tuple((m.pod, m.request_success_total) for m in metrics)
    before = dict(state.success_totals)
    last_success = state.last_success_s if state.last_success_s is not None else now
    if any(m.request_success_total > before.get(m.pod, 0.0) for m in metrics):
        last_success = now
    targets, note = enforce(targets, inputs, now - last_success, params)
    new_state = WvaV2State(
        tuple(sorted(targets.items())),
        tuple(sorted(history.items())),
        tuple((v, t, c) for v, (t, c) in sorted(store.items())),
        tuple(metrics),
        tuple(window),
        totals,
        last_success,
    )
    details = {
        "required": required,
        "spare": spare,
        **figures,
        "avg_input": workload.avg_input,
        "avg_output": workload.avg_output,
        "capacity": {c.variant: c.capacity for c in caps},
    }
    return Decision(targets, f"{reason}; {note}" if note else reason, new_state, details=details)
