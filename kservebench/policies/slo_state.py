"""What the SLO policy (``slo``) is given and carries between passes: its parameters
(``SloParams``, checked when built), its state (``SloState``, returned with every decision
and passed back in the next pass), and how one pass's scrapes become new state rows
(``observe_pass``: latency points, work rows, start-up times).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from kservebench.policies.llm_signals import (
    READY,
    LlmInputs,
    ReplicaMetrics,
    counter_deltas,
    fraction,
    positive,
    require,
)
from kservebench.policies.slo_model import LatencyPoint

MIN_TOKENS_PER_POINT = 20  # ITL gaps a pass needs on a replica to count as an observation
MAX_POINTS = 240  # latency observations kept (all variants)
MAX_STARTUPS = 20  # start-up times kept


@dataclass(frozen=True)
class SloParams:
    ttft_ms: float = 1000.0
    itl_ms: float = 50.0
    e2e_ms: float | None = None
    headroom: float = 0.2
    kv_target: float = 0.8
    scale_down_margin: float = 0.15
    scale_down_stabilization_s: float = 180.0
    interval_s: float = 15.0
    fit_window_s: float = 600.0
    fit_min_points: int = 3
    rate_window_s: float = 60.0
    trend_window_s: float = 120.0
    max_trend_factor: float = 4.0
    backlog_drain_s: float = 60.0
    cold_start_s: float = 120.0
    cold_start_quantile: float = 0.9
    stale_after_s: float = 60.0
    scale_to_zero: bool = False
    retention_s: float = 600.0

    def __post_init__(self) -> None:
        for f in fields(self):
            check, problem = _RULES.get(f.name, (positive, "must be > 0"))
            require(f.name, getattr(self, f.name), check(getattr(self, f.name)), problem)


# Parameter checks that are not "a number > 0": field -> (check, what it must be).
_RULES = {
    "headroom": (lambda v: fraction(v, low_open=False) and v < 1, "must be in [0, 1)"),
    "scale_down_margin": (lambda v: fraction(v, low_open=False) and v < 1, "must be in [0, 1)"),
    "kv_target": (fraction, "must be in (0, 1]"),
    "cold_start_quantile": (fraction, "must be in (0, 1]"),
    "fit_min_points": (lambda v: isinstance(v, int) and v >= 2, "must be an integer >= 2"),
    "scale_to_zero": (lambda v: isinstance(v, bool), "must be true or false"),
    "e2e_ms": (lambda v: v is None or positive(v), "must be > 0"),
    "max_trend_factor": (lambda v: positive(v) and v >= 1, "must be >= 1"),
    "scale_down_stabilization_s": (lambda v: v == 0 or positive(v), "must be >= 0"),
}


@dataclass(frozen=True)
class SloState:
    desired: tuple[tuple[str, int], ...] = ()
    last_metrics: tuple[ReplicaMetrics, ...] = ()
    points: tuple[LatencyPoint, ...] = ()
    arrivals: tuple[tuple[float, float], ...] = ()  # (time, arrivals_total)
    # (time, variant, prompt tokens, output tokens, finished, saturated token rate or nan)
    work: tuple[tuple[float, str, float, float, float, float], ...] = ()
    startups: tuple[tuple[str, float], ...] = ()  # (pod, seconds created -> ready)
    demands: tuple[tuple[float, float], ...] = ()  # (time, demand in requests/s)
    last_traffic_s: float | None = None


def observe_pass(
    inputs: LlmInputs, state: SloState, metrics: dict[str, ReplicaMetrics], params: SloParams
):
    """New latency points and work rows of this pass (per ready replica with a previous
    sample), and the updated start-up times."""
    now = inputs.now_s
    before = {m.pod: m for m in state.last_metrics}
    for r in inputs.replicas:
        # A pod that became ready since the last pass: its counters started at zero.
        fresh = r.ready_s is not None and now - r.ready_s <= 2 * params.interval_s
        if r.pod not in before and r.state == READY and fresh:
            before[r.pod] = ReplicaMetrics(r.pod, r.ready_s)
    deltas = counter_deltas(before, metrics)
    variant_of = {r.pod: r.variant for r in inputs.replicas}
    ready = {r.pod for r in inputs.replicas if r.state == READY}
    points, work = [], []
    for pod, d in deltas.items():
        if pod not in ready:
            continue
        m, b = metrics[pod], before[pod]
        variant = variant_of[pod]
        batch = (m.running + b.running) / 2
        if d.itl is not None and d.itl.count >= MIN_TOKENS_PER_POINT and d.itl.mean:
            # The first token without the queue: vLLM's prefill time (scheduled -> first
            # token), else TTFT over a pass without a queue. Queueing is what sizing removes.
            queue_free = m.waiting == 0 and b.waiting == 0
            ttft = None
            if d.prefill is not None and d.prefill.count > 0:
                ttft = d.prefill.mean
            elif d.ttft is not None and d.ttft.count > 0 and queue_free:
                ttft = d.ttft.mean
            points.append(
                LatencyPoint(now, variant, batch, d.itl.mean, math.nan if ttft is None else ttft)
            )
        saturated = m.waiting > 0 and b.waiting > 0
        rate = d.generation_tokens / d.seconds if saturated and d.seconds > 0 else math.nan
        work.append(
            (now, variant, d.request_prompt_tokens, d.request_generation_tokens, d.successes, rate)
        )
    known = dict(state.startups)
    for r in inputs.replicas:
        if r.ready_s is not None and r.pod not in known:
            known[r.pod] = r.ready_s - r.created_s
    startups = tuple(list(known.items())[-MAX_STARTUPS:])
    return points, work, startups
