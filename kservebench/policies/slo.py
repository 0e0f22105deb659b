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
``slo_model``; the parameters, the state kept between passes and how a pass's scrapes
become state are in ``slo_state``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

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
)
from kservebench.policies.slo_model import (
    Capacity,
    Targets,
    arrival_rate,
    arrival_trend,
    capacity,
    censored_workload,
    mean_workload,
)
from kservebench.policies.slo_state import (
    MAX_POINTS,
    MAX_STARTUPS,
    MIN_TOKENS_PER_POINT,
    SloParams,
    SloState,
    observe_pass,
)

# The parameter and state types moved to slo_state; callers still import them from here.
__all__ = [
    "MAX_POINTS",
    "MAX_STARTUPS",
    "MIN_TOKENS_PER_POINT",
    "SloParams",
    "SloState",
    "decide",
    "horizon_s",
    "removal_order",
]


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

    points_new, work_new, startups = observe_pass(inputs, state, metrics, params)
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
