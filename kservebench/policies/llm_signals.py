"""What an LLM autoscaler sees and what it answers: the shared inputs of the LLM policies.

Every LLM policy (``slo``, ``wva``, ``wva_v2``, ``llm_hpa``) is
``decide(inputs, state, params) -> Decision``: one control-loop pass of one model, whose
replicas may be spread over several *variants* (a way to serve the model: accelerator,
GPUs per replica, cost per hour, replica bounds).

Inputs are plain values a thin shell fills from Prometheus and the Kubernetes API (the
operator), from the local control plane, or from the simulator (``sim/llm_autoscale.py``):

* ``ReplicaState``: the pods of the scale targets as the API lists them (pending: created,
  not ready; ready; draining: terminating). A pod that is not listed no longer exists.
* ``ReplicaMetrics``: one pod's vLLM series as last scraped (gauges, counters, TTFT and
  ITL histograms, the CPU the pod used). Series of pods that are not in the replica list
  (deleted pods whose samples linger in a range query) are dropped by ``known_metrics``.
* the gateway's view: requests arrived so far and requests held for lack of a ready
  replica (the EPP's flow-control queue, the activator's buffer, the sim's router).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kservebench.errors import SpecError

PENDING, READY, DRAINING = "pending", "ready", "draining"
REPLICA_STATES = (PENDING, READY, DRAINING)


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram as scraped: cumulative counts per upper bound (``le``).

    ``buckets[i]`` counts observations <= ``bounds[i]``; ``count`` is the +Inf bucket."""

    bounds: tuple[float, ...]
    buckets: tuple[int, ...]
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if len(self.buckets) != len(self.bounds):
            raise SpecError("histogram.buckets", len(self.buckets), "need one per bound")

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> Histogram:
        return cls(tuple(bounds), (0,) * len(bounds))

    def minus(self, earlier: Histogram | None) -> Histogram:
        """The observations since ``earlier`` (as ``increase()``); a reset (a restarted
        pod: some count went down) or other bounds make it the whole histogram."""
        if earlier is None or earlier.bounds != self.bounds or earlier.count > self.count:
            return self
        buckets = tuple(a - b for a, b in zip(self.buckets, earlier.buckets, strict=True))
        if any(b < 0 for b in buckets):
            return self
        return Histogram(self.bounds, buckets, self.sum - earlier.sum, self.count - earlier.count)

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """``histogram_quantile``: linear within the bucket holding the q-th observation;
        above the last finite bound, that bound."""
        if self.count <= 0:
            return None
        rank = q * self.count
        lower, below = 0.0, 0
        for bound, cumulative in zip(self.bounds, self.buckets, strict=True):
            if cumulative >= rank:
                inside = cumulative - below
                share = (rank - below) / inside if inside > 0 else 1.0
                return lower + (bound - lower) * share
            lower, below = bound, cumulative
        return self.bounds[-1] if self.bounds else None


@dataclass(frozen=True)
class ReplicaMetrics:
    """One pod's vLLM series at ``sampled_s`` (the scrape's time).

    Gauges: ``running``, ``waiting`` (vllm:num_requests_*), ``kv_usage``
    (vllm:kv_cache_usage_perc, 0..1); ``kv_capacity_tokens`` = num_gpu_blocks x block_size
    from vllm:cache_config_info. Counters are totals since the pod started. ``cpu_cores``:
    the pod's CPU usage averaged over the metrics window (metrics-server), None if unknown.
    """

    pod: str
    sampled_s: float
    variant: str = ""  # the scale target the pod belongs to (its labels), "" if unknown
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    kv_capacity_tokens: int = 0
    prompt_tokens_total: float = 0.0
    generation_tokens_total: float = 0.0
    request_success_total: float = 0.0
    preemptions_total: float = 0.0
    # _sum of vllm:request_prompt_tokens / request_generation_tokens (observed per
    # finished request; their _count is request_success_total)
    request_prompt_tokens_sum: float = 0.0
    request_generation_tokens_sum: float = 0.0
    ttft: Histogram | None = None  # vllm:time_to_first_token_seconds
    itl: Histogram | None = None  # vllm:inter_token_latency_seconds
    prefill: Histogram | None = None  # vllm:request_prefill_time_seconds
    cpu_cores: float | None = None

    @property
    def tokens_in_use(self) -> int:
        """KV tokens held: round(kv_usage x capacity), within [0, capacity] (as WVA)."""
        cap = max(0, self.kv_capacity_tokens)
        return min(cap, max(0, round(self.kv_usage * cap)))


@dataclass(frozen=True)
class ReplicaState:
    """One pod of a variant's scale target, as the Kubernetes API lists it."""

    pod: str
    variant: str
    state: str = READY  # pending | ready | draining
    created_s: float = 0.0
    ready_s: float | None = None

    def __post_init__(self) -> None:
        if self.state not in REPLICA_STATES:
            raise SpecError("replica.state", self.state, f"must be one of {REPLICA_STATES}")


@dataclass(frozen=True)
class VariantSpec:
    """A way to serve the model: what a replica costs, holds and may number.

    ``kv_capacity_tokens`` (0: not known before a replica reports it), ``max_num_seqs``
    and ``max_num_batched_tokens`` are the engine's settings, used to estimate the
    capacity of a variant that has no replica yet. The default cost is WVA's
    ``DefaultVariantCost`` (10)."""

    name: str
    accelerator: str = ""
    gpus_per_replica: int = 1
    cost_per_hour: float = 10.0
    min_replicas: int = 0
    max_replicas: int = 10
    kv_capacity_tokens: int = 0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192

    def __post_init__(self) -> None:
        where = f"variants[{self.name}]"
        if not self.name:
            raise SpecError("variants.name", self.name, "must not be empty")
        if not isinstance(self.gpus_per_replica, int) or self.gpus_per_replica < 0:
            raise SpecError(f"{where}.gpusPerReplica", self.gpus_per_replica, "must be >= 0")
        if not (isinstance(self.cost_per_hour, int | float) and self.cost_per_hour >= 0):
            raise SpecError(f"{where}.costPerHour", self.cost_per_hour, "must be >= 0")
        if not isinstance(self.min_replicas, int) or self.min_replicas < 0:
            raise SpecError(f"{where}.minReplicas", self.min_replicas, "must be an integer >= 0")
        if not isinstance(self.max_replicas, int) or self.max_replicas < max(1, self.min_replicas):
            raise SpecError(
                f"{where}.maxReplicas", self.max_replicas, "must be >= 1 and >= minReplicas"
            )
        for name in ("kv_capacity_tokens", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "kv_capacity_tokens" else 1):
                raise SpecError(f"{where}.{name}", value, "must be a positive integer")


@dataclass(frozen=True)
class LlmInputs:
    """One control-loop pass of one model.

    ``metrics`` is None when the metrics source failed (Prometheus down, query error).
    ``spec_replicas`` is each variant's scale subresource (what was last asked for); a
    variant missing from it counts its pending and ready pods. ``arrivals_total`` counts
    requests that reached the gateway (None: not measured); ``queued`` is how many the
    gateway holds because no replica is ready."""

    now_s: float
    variants: tuple[VariantSpec, ...]
    replicas: tuple[ReplicaState, ...] = ()
    metrics: tuple[ReplicaMetrics, ...] | None = ()
    spec_replicas: Mapping[str, int] = field(default_factory=dict)
    arrivals_total: float | None = None
    queued: int = 0

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if not names or len(set(names)) != len(names):
            raise SpecError("variants", names, "need at least one, with distinct names")
        for r in self.replicas:
            if r.variant not in names:
                raise SpecError("replicas.variant", r.variant, f"must be one of {names}")

    def variant(self, name: str) -> VariantSpec:
        return next(v for v in self.variants if v.name == name)

    def pods(self, variant: str, *states: str) -> list[ReplicaState]:
        wanted = states or (PENDING, READY)
        return [r for r in self.replicas if r.variant == variant and r.state in wanted]

    def current(self, variant: str) -> int:
        """The variant's replica count: its scale subresource, else its live pods."""
        if variant in self.spec_replicas:
            return int(self.spec_replicas[variant])
        return len(self.pods(variant))

    def known_metrics(self) -> dict[str, ReplicaMetrics]:
        """Metrics of pods the API still lists, by pod; series of deleted pods are dropped."""
        if self.metrics is None:
            return {}
        listed = {r.pod for r in self.replicas}
        return {m.pod: m for m in self.metrics if m.pod in listed}

    def ghost_pods(self) -> list[str]:
        """Pods with series but no longer in the replica list (deleted, series lingering)."""
        listed = {r.pod for r in self.replicas}
        return sorted({m.pod for m in self.metrics or () if m.pod not in listed})


@dataclass(frozen=True)
class Decision:
    """A policy's answer: replicas per variant, why, and its state for the next pass.

    ``remove`` names, per variant that shrinks, the pods to take away first (the
    operator sets ``controller.kubernetes.io/pod-deletion-cost`` on them; the simulator
    drains them). ``details`` are the figures behind the reason, for logs and reports."""

    desired: Mapping[str, int]
    reason: str
    state: Any = None
    remove: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.desired.values())


@dataclass(frozen=True)
class CounterDelta:
    """One pod's counters between two passes (what ``increase()`` over them gives)."""

    pod: str
    seconds: float
    prompt_tokens: float  # vllm:prompt_tokens_total (tokens prefilled)
    generation_tokens: float  # vllm:generation_tokens_total (tokens produced)
    successes: float  # vllm:request_success_total
    request_prompt_tokens: float  # prompt tokens of the requests that finished
    request_generation_tokens: float  # output tokens of the requests that finished
    ttft: Histogram | None
    itl: Histogram | None
    prefill: Histogram | None


def _increase(now: float, before: float) -> float:
    return now - before if now >= before else now  # a reset: counted from zero


def counter_deltas(
    before: Mapping[str, ReplicaMetrics], now: Mapping[str, ReplicaMetrics]
) -> dict[str, CounterDelta]:
    """Per pod present in both samples (and newer now): the increase of its counters."""
    out = {}
    for pod, m in now.items():
        b = before.get(pod)
        if b is None or m.sampled_s <= b.sampled_s:
            continue
        out[pod] = CounterDelta(
            pod,
            m.sampled_s - b.sampled_s,
            _increase(m.prompt_tokens_total, b.prompt_tokens_total),
            _increase(m.generation_tokens_total, b.generation_tokens_total),
            _increase(m.request_success_total, b.request_success_total),
            _increase(m.request_prompt_tokens_sum, b.request_prompt_tokens_sum),
            _increase(m.request_generation_tokens_sum, b.request_generation_tokens_sum),
            None if m.ttft is None else m.ttft.minus(b.ttft),
            None if m.itl is None else m.itl.minus(b.itl),
            None if m.prefill is None else m.prefill.minus(b.prefill),
        )
    return out


def cheapest(variants: Sequence[VariantSpec]) -> VariantSpec:
    """The cheapest variant per replica-hour, ties to the alphabetically first (WVA's rule)."""
    return min(variants, key=lambda v: (v.cost_per_hour, v.name))


def clamp(value: int, variant: VariantSpec) -> int:
    return min(max(value, variant.min_replicas), variant.max_replicas)


def require(field_name: str, value: Any, ok: bool, problem: str) -> None:
    """Raise a SpecError naming ``field_name`` unless ``ok``: the params' one validator."""
    if not ok:
        raise SpecError(field_name, value, problem)


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def fraction(value: Any, low_open: bool = True) -> bool:
    """In (0, 1] (``low_open``) or [0, 1]."""
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return False
    return (0 < value <= 1) if low_open else (0 <= value <= 1)
