"""Our SLO- and KV-cache-aware LLM autoscaler (``mode: slo``) as a pure decision.

One call is one pass of the control loop for one model (every ``interval_s``, 15 s):

1. **Fail static.** No metrics, a ready pod without metrics, or metrics older than
   ``stale_after_s``: every variant keeps its last desired count (else its current one)
   and the reason says why (scaling from zero needs only the gateway's queue and still
   happens). Series of pods the API no longer lists are ignored.
2. **Latency model, fitted online.** Each pass gives, per ready replica, the mean ITL
   and the mean time to a first token without queueing (vLLM's prefill time, else TTFT
   of a pass without a queue) from the histogram deltas, against its batch (running
   requests, the mean of the two scrapes). Least-squares lines ``ITL(b) = a + c b`` and
   ``TTFT(b)`` over the last ``fit_window_s`` give the largest batch that meets each SLO
   scaled by ``1 - headroom``; queueing is what the sizing removes. Too few or too
   similar points: a line through the measured points with half their latency fixed.
3. **Capacity per replica**, per variant: the batch b* = min(SLO batches, the KV bound
   ``kv_target x KV tokens / (I + O/2)``, max_num_seqs less twice its square root: room
   for the batch's Poisson-like swings), and the rate one replica serves
   at it, b* / (TTFT(b*) + (O - 1) ITL(b*)) requests/s, capped by the measured
   compute-bound token rate (tokens/s of replicas that had a queue throughout a pass) / O.
   I and O are the mean prompt and output tokens of the requests finished recently.
4. **Demand, looked ahead.** The arrival rate over the last ``rate_window_s`` plus its
   rising trend (least squares over ``trend_window_s``) times the cold-start horizon: the
   ``cold_start_quantile`` of the start-up times measured on this model's pods (created ->
   ready), else ``cold_start_s``; plus the queued backlog (waiting in the engines and at
   the gateway) drained within ``backlog_drain_s``, and never below what is running now.
5. **Sizing in one step.** Missing capacity goes to the variants in order of cost per
   request/s (as many replicas as needed at once, up to maxReplicas, the rest to the next).
   Pending replicas count as capacity already bought; those the ready replicas no longer
   need (a backlog's surge that drained, a burst that passed) are cancelled at once.
6. **Scale-down with hysteresis.** Only with no pod pending or draining (one change at a
   time, so the next pass measures its effect), only while the remaining ready capacity
   still covers the highest demand of the last ``scale_down_stabilization_s`` times
   ``1 + scale_down_margin``, most expensive per unit first; the pods removed are the
   least loaded ones (pending first, then fewest requests, then fewest KV tokens), whose
   drain is shortest.
7. **Zero.** With ``scale_to_zero``, no traffic (arrivals, requests in flight or queued)
   for ``retention_s`` takes every variant to 0; at zero, a queued request (or a new
   arrival) brings up the cheapest variant per unit (enough for the queue when known).
   Without it, at least one replica stays on the cheapest.

The measurements (latency lines, capacity at the SLO, lengths, arrival trend) are in
``slo_model``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from kservebench.policies.llm_signals import (
    DRAINING,
    PENDING,
    READY,
    Decision,
    LlmInputs,
    ReplicaMetrics,
    cheapest,
    clamp,
    counter_deltas,
    fraction,
    positive,
    require,
)
from kservebench.policies.slo_model import (
    Capacity,
    LatencyPoint,
    Targets,
    arrival_rate,
    arrival_trend,
    capacity,
    censored_workload,
    mean_workload,
)

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


# --- the measurements -------------------------------------------------------------------------


def _observe(
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


def horizon_s(startups: Sequence[tuple[str, float]], params: SloParams) -> float:
    """The cold-start horizon: the measured start-up quantile (else the default) plus a pass."""
    seconds = [s for _, s in startups if s > 0]
    if not seconds:
        return params.cold_start_s + params.interval_s
    return float(np.quantile(seconds, params.cold_start_quantile)) + params.interval_s


def removal_order(inputs: LlmInputs, variant: str, metrics: dict[str, ReplicaMetrics]):
    """The variant's pods, cheapest to remove first: pending (newest first), then ready
    ones with the fewest requests, then the fewest KV tokens, then the newest."""

    def key(r):
        m = metrics.get(r.pod)
        load = (m.running + m.waiting, m.tokens_in_use) if m else (0.0, 0)
        return (r.state != PENDING, *load, -r.created_s)

    return [r.pod for r in sorted(inputs.pods(variant, PENDING, READY), key=key)]


# --- the decision -----------------------------------------------------------------------------


def _metrics_problem(
    inputs: LlmInputs, metrics: dict[str, ReplicaMetrics], params: SloParams
) -> str | None:
    if inputs.metrics is None:
        return "metrics unavailable"
    for r in inputs.replicas:
        if r.state != READY:
            continue
        m = metrics.get(r.pod)
        if m is None:
            return f"no metrics for ready pod {r.pod}"
        age = inputs.now_s - m.sampled_s
        if age > params.stale_after_s:
            return f"metrics of {r.pod} are stale ({age:.0f} s old)"
    return None


def _hold(inputs: LlmInputs, state: SloState, why: str) -> Decision:
    previous = dict(state.desired)
    held = {v.name: previous.get(v.name, inputs.current(v.name)) for v in inputs.variants}
    return Decision(held, f"fail static, {why}: no change", state, details={"held": True})


@dataclass
class _Plan:
    """The sizing of one pass, in one unit of capacity (requests/s, or concurrent
    requests before there is a latency model)."""

    unit: dict[str, float]  # capacity of one replica per variant (0: unknown)
    demand: float
    floor_demand: float  # what must remain after a scale-down
    mode: str  # rate | concurrency
    margin: float = 0.0
    notes: list[str] = field(default_factory=list)


def _allocate(
    inputs: LlmInputs, plan: _Plan, current: dict[str, int], can_down: bool
) -> dict[str, int]:
    targets = dict(current)
    variants = [v for v in inputs.variants if plan.unit[v.name] > 0]
    supply = sum(current[v.name] * plan.unit[v.name] for v in variants)
    ready = {v.name: min(current[v.name], len(inputs.pods(v.name, READY))) for v in variants}
    ready_supply = sum(ready[v.name] * plan.unit[v.name] for v in variants)
    pending = sum(current[v.name] - ready[v.name] for v in variants)
    if plan.demand > supply + 1e-9:
        deficit = plan.demand - supply
        for v in sorted(variants, key=lambda v: (v.cost_per_hour / plan.unit[v.name], v.name)):
            room = max(0, v.max_replicas - targets[v.name])
            add = min(math.ceil(deficit / plan.unit[v.name] - 1e-9), room)
            targets[v.name] += add
            deficit -= add * plan.unit[v.name]
            if deficit <= 1e-9:
                break
    elif pending > 0 and plan.mode == "rate":
        # Replicas still loading that the ready ones no longer need (the surge of a
        # backlog, or a burst that passed) are cancelled before they cost more.
        need = plan.demand * (1 + plan.margin) - ready_supply
        for v in sorted(variants, key=lambda v: (v.cost_per_hour / plan.unit[v.name], v.name)):
            keep = max(
                0, min(current[v.name] - ready[v.name], math.ceil(need / plan.unit[v.name] - 1e-9))
            )
            targets[v.name] = ready[v.name] + keep
            need -= keep * plan.unit[v.name]
    elif can_down:
        excess = supply - plan.floor_demand
        for v in sorted(variants, key=lambda v: (-v.cost_per_hour / plan.unit[v.name], v.name)):
            remove = min(math.floor(excess / plan.unit[v.name]), targets[v.name] - v.min_replicas)
            if remove > 0:
                targets[v.name] -= remove
                excess -= remove * plan.unit[v.name]
    return {v.name: clamp(targets[v.name], v) for v in inputs.variants}


def decide(inputs: LlmInputs, state: SloState | None, params: SloParams) -> Decision:
    state = state or SloState()
    now = inputs.now_s
    metrics = inputs.known_metrics()
    current = {v.name: inputs.current(v.name) for v in inputs.variants}
    at_zero = sum(current.values()) == 0

    arrivals = state.arrivals
    if inputs.arrivals_total is not None:
        keep = max(params.rate_window_s, params.trend_window_s) + 2 * params.interval_s
        arrivals = tuple(s for s in arrivals if s[0] >= now - keep)
        arrivals += ((now, float(inputs.arrivals_total)),)
    arrived = len(arrivals) >= 2 and arrivals[-1][1] > arrivals[-2][1]
    in_flight = sum(m.running + m.waiting for m in metrics.values())
    traffic = arrived or in_flight > 0 or inputs.queued > 0
    last_traffic = now if traffic or state.last_traffic_s is None else state.last_traffic_s

    problem = _metrics_problem(inputs, metrics, params)
    if problem and not (at_zero and inputs.queued > 0):
        return _hold(inputs, state, problem)

    points_new, work_new, startups = _observe(inputs, state, metrics, params)
    points = tuple(p for p in state.points if p.t > now - params.fit_window_s)
    points = (points + tuple(points_new))[-MAX_POINTS:]
    work_window = max(params.fit_window_s, params.trend_window_s)
    work = tuple(w for w in state.work if w[0] > now - work_window) + tuple(work_new)
    workload = mean_workload(work) or censored_workload(list(metrics.values()))

    scale = 1.0 - params.headroom
    targets = Targets(
        params.itl_ms / 1000 * scale,
        params.ttft_ms / 1000 * scale,
        None if params.e2e_ms is None else params.e2e_ms / 1000 * scale,
        params.kv_target,
        params.fit_min_points,
    )
    caps: dict[str, Capacity] = {}
    variant_of = {r.pod: r.variant for r in inputs.replicas}
    for v in inputs.variants:
        reported = [m.kv_capacity_tokens for p, m in metrics.items() if variant_of[p] == v.name]
        kv = max([*reported, v.kv_capacity_tokens])
        rates = [w[5] for w in work if w[1] == v.name and math.isfinite(w[5])]
        saturated = float(np.median(rates[-10:])) if rates else None
        caps[v.name] = capacity(v, points, workload, kv, saturated, targets)

    horizon = horizon_s(startups, params)
    rate = arrival_rate(arrivals, now, params.rate_window_s)
    slope = arrival_trend(arrivals, now, params.trend_window_s)
    if rate is None:  # no gateway counter: finished requests, a lagging stand-in
        finished = sum(w[4] for w in work if w[0] > now - params.rate_window_s)
        rate = finished / params.rate_window_s
    ahead = rate + max(0.0, slope) * (horizon + params.rate_window_s / 2)
    if rate > 0:
        ahead = min(ahead, rate * params.max_trend_factor)
    running = {v.name: 0.0 for v in inputs.variants}
    backlog = float(inputs.queued)
    for r in inputs.replicas:
        m = metrics.get(r.pod)
        if m is not None and r.state != PENDING:
            running[r.variant] += m.running
            backlog += m.waiting

    if any(c.rate for c in caps.values()):
        inflight = sum(running[n] / c.service_s for n, c in caps.items() if c.service_s)
        demand = max(ahead + backlog / params.backlog_drain_s, inflight)
        recent = [d for t, d in state.demands if t > now - params.scale_down_stabilization_s]
        plan = _Plan(
            {n: c.rate or 0.0 for n, c in caps.items()},
            demand,
            max([demand, *recent]) * (1 + params.scale_down_margin),
            "rate",
            params.scale_down_margin,
        )
        demands = (
            *((t, d) for t, d in state.demands if t > now - params.scale_down_stabilization_s),
            (now, demand),
        )
    else:
        demand = sum(running.values()) + backlog
        plan = _Plan({n: c.batch for n, c in caps.items()}, demand, math.inf, "concurrency")
        demands = state.demands

    moving = any(r.state in (PENDING, DRAINING) for r in inputs.replicas) or any(
        len(inputs.pods(n)) != c for n, c in current.items()
    )
    targets = _allocate(inputs, plan, current, can_down=plan.mode == "rate" and not moving)
    reason = _reason(inputs, current, targets, plan, caps, rate, slope, horizon)

    idle_s = now - last_traffic
    if params.scale_to_zero and idle_s >= params.retention_s:
        targets, reason = {n: 0 for n in targets}, f"no traffic for {idle_s:.0f} s: scale to zero"
    elif at_zero and params.scale_to_zero and not traffic:
        targets, reason = {n: 0 for n in targets}, "at zero, no traffic"
    elif sum(targets.values()) == 0:
        pick = min(
            inputs.variants,
            key=lambda v: (
                v.cost_per_hour / plan.unit[v.name] if plan.unit[v.name] else math.inf,
                v.cost_per_hour,
                v.name,
            ),
        )
        pick = pick if plan.unit[pick.name] else cheapest(inputs.variants)
        need = math.ceil(plan.demand / plan.unit[pick.name]) if plan.unit[pick.name] else 1
        targets[pick.name] = clamp(max(1, need), pick)
        reason = f"{reason}; at least one replica on {pick.name}"
    if at_zero and sum(targets.values()) > 0:
        reason = f"scale from zero ({inputs.queued} queued, {rate:.2f} req/s): {reason}"

    remove = {}
    for n, target in targets.items():
        if target < current[n]:
            remove[n] = tuple(removal_order(inputs, n, metrics)[: current[n] - target])
    ghosts = inputs.ghost_pods()
    if ghosts:
        reason += f" (ignored series of deleted pods: {', '.join(ghosts)})"
    new_state = SloState(
        desired=tuple(sorted(targets.items())),
        last_metrics=tuple(metrics.values()),
        points=points,
        arrivals=arrivals,
        work=work,
        startups=startups,
        demands=demands,
        last_traffic_s=last_traffic,
    )
    details = {
        "mode": plan.mode,
        "arrival_rate": rate,
        "trend": slope,
        "horizon_s": horizon,
        "demand": plan.demand,
        "backlog": backlog,
        "workload": workload,
        "capacity": {n: (c.batch, c.binding, c.rate) for n, c in caps.items()},
        "ignored_pods": ghosts,
    }
    return Decision(targets, reason, new_state, remove, details)


def _reason(inputs, current, targets, plan, caps, rate, slope, horizon) -> str:
    total_now, total = sum(current.values()), sum(targets.values())
    verb = "up" if total > total_now else "down" if total < total_now else "hold"
    changes = ", ".join(f"{n} {current[n]} -> {t}" for n, t in targets.items() if t != current[n])
    per = ", ".join(
        f"{n}: b*={c.batch:.0f} by {c.binding}" + (f", {c.rate:.2f} req/s" if c.rate else "")
        for n, c in caps.items()
    )
    unit = "req/s" if plan.mode == "rate" else "requests in flight"
    look = (
        f" (now {rate:.2f}, trend {slope:+.4f}/s over a {horizon:.0f} s horizon)"
        if plan.mode == "rate"
        else ""
    )
    head = f"{verb} {changes}" if changes else verb
    return f"{head}: demand {plan.demand:.2f} {unit}{look}; per replica {per}"
