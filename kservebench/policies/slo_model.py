"""The measurements behind ``slo``: latency lines fitted online, what one replica holds
at the SLO, the workload's lengths, and the arrival rate and its trend. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kservebench.policies.llm_signals import ReplicaMetrics, VariantSpec


@dataclass(frozen=True)
class LatencyPoint:
    t: float
    variant: str
    batch: float
    itl_s: float
    ttft_s: float  # first token without queueing; nan: not measured in this pass


@dataclass(frozen=True)
class Line:
    """latency(b) = base + per_seq x b, in seconds."""

    base: float
    per_seq: float
    source: str  # fit | one point

    def at(self, batch: float) -> float:
        return self.base + self.per_seq * batch

    def batch_within(self, target_s: float) -> float:
        if self.per_seq <= 0:
            return math.inf if self.base <= target_s else 0.0
        return (target_s - self.base) / self.per_seq


def fit_line(batch: Sequence[float], latency: Sequence[float], min_points: int) -> Line | None:
    """Least squares of latency on batch; a conservative line through the mean point when
    the points are too few, too close together, or slope downwards."""
    b, y = np.asarray(batch, float), np.asarray(latency, float)
    keep = np.isfinite(b) & np.isfinite(y) & (y > 0)
    b, y = b[keep], y[keep]
    if len(b) == 0:
        return None
    spread = b.max() - b.min()
    if len(b) >= min_points and spread >= max(2.0, 0.2 * b.mean()):
        slope, intercept = np.polyfit(b, y, 1)
        if slope > 0 and intercept > 0:
            return Line(float(intercept), float(slope), "fit")
    # Half the latency fixed, half per sequence, through the highest-batch points: this
    # overstates the slope of a memory-bound decode, so it errs towards more replicas.
    top = b >= np.quantile(b, 0.5)
    y0, b0 = float(y[top].mean()), max(1.0, float(b[top].mean()))
    return Line(0.5 * y0, 0.5 * y0 / b0, "one point")


@dataclass(frozen=True)
class Capacity:
    """One replica of a variant at the SLO."""

    batch: float  # b*
    binding: str  # what bounds b*: itl | ttft | e2e | kv | max_num_seqs
    rate: float | None  # requests/s at b* (None: no latency model or workload yet)
    service_s: float | None
    itl: Line | None
    ttft: Line | None


@dataclass(frozen=True)
class Targets:
    """The latencies to size for (the SLOs less the headroom, seconds) and the KV share."""

    itl_s: float
    ttft_s: float
    e2e_s: float | None = None
    kv_target: float = 0.8
    min_points: int = 3


def mean_workload(work: Sequence[tuple], variant: str | None = None) -> tuple[float, float] | None:
    """Mean prompt and output tokens of the finished requests in ``work``."""
    rows = [w for w in work if variant is None or w[1] == variant]
    finished = sum(w[4] for w in rows)
    if finished <= 0:
        return None
    return sum(w[2] for w in rows) / finished, max(1.0, sum(w[3] for w in rows) / finished)


def censored_workload(metrics: Sequence[ReplicaMetrics]) -> tuple[float, float] | None:
    """Before any request finished: lengths from the requests in flight. Arrivals spread
    over the time since they started are on average half-way, so the outputs are taken
    as twice the tokens generated per running request, a lower bound while none ends;
    the prompt as the KV tokens per running request less those generated."""
    running = sum(m.running for m in metrics)
    if running <= 0 or any(m.request_success_total > 0 for m in metrics):
        return None
    generated = sum(m.generation_tokens_total for m in metrics) / running
    context = sum(m.tokens_in_use for m in metrics) / running
    return max(1.0, context - generated), max(1.0, 2 * generated)


def capacity(
    v: VariantSpec,
    points: Sequence[LatencyPoint],
    workload: tuple[float, float] | None,
    kv_tokens: float,
    saturated_rate: float | None,
    targets: Targets,
) -> Capacity:
    """What one replica of ``v`` holds at the SLO (``kv_tokens``: its KV capacity)."""
    mine = [p for p in points if p.variant == v.name]
    itl = fit_line([p.batch for p in mine], [p.itl_s for p in mine], targets.min_points)
    qf = [p for p in mine if math.isfinite(p.ttft_s)]
    ttft = fit_line([p.batch for p in qf], [p.ttft_s for p in qf], targets.min_points)
    # A mean batch at max_num_seqs would queue half the time: the batch of Poisson-like
    # traffic fluctuates by about its square root, so keep two of those below the limit.
    bounds = {"max_num_seqs": max(1.0, v.max_num_seqs - 2 * math.sqrt(v.max_num_seqs))}
    if workload is not None and kv_tokens > 0:
        prompt, output = workload
        bounds["kv"] = targets.kv_target * kv_tokens / (prompt + output / 2)
    if itl is not None:
        bounds["itl"] = itl.batch_within(targets.itl_s)
    if ttft is not None:
        bounds["ttft"] = ttft.batch_within(targets.ttft_s)
    if targets.e2e_s is not None and itl is not None and ttft is not None and workload:
        gaps = workload[1] - 1
        base = ttft.base + gaps * itl.base
        slope = ttft.per_seq + gaps * itl.per_seq
        bounds["e2e"] = Line(base, slope, "sum").batch_within(targets.e2e_s)
    binding = min(bounds, key=lambda k: bounds[k])
    batch = max(1.0, math.floor(bounds[binding]))
    if itl is None or workload is None:
        return Capacity(batch, binding, None, None, itl, ttft)
    first = ttft.at(batch) if ttft is not None else itl.at(batch)
    service = first + (workload[1] - 1) * itl.at(batch)
    rate = batch / service
    if saturated_rate is not None and saturated_rate > 0:
        rate = min(rate, saturated_rate / workload[1])
    return Capacity(batch, binding, rate, service, itl, ttft)


def arrival_rate(samples: Sequence[tuple[float, float]], now: float, window_s: float):
    """Requests/s over the last ``window_s`` (from the oldest sample inside it)."""
    inside = [s for s in samples if s[0] >= now - window_s - 1e-9]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    (t0, a0), (t1, a1) = inside[0], inside[-1]
    return max(0.0, (a1 - a0) / (t1 - t0))


def arrival_trend(samples: Sequence[tuple[float, float]], now: float, window_s: float) -> float:
    """Slope (requests/s per s) of the per-pass arrival rates over ``window_s``."""
    inside = [s for s in samples if s[0] >= now - window_s - 1e-9]
    if len(inside) < 4:
        return 0.0
    t = np.array([s[0] for s in inside])
    a = np.array([s[1] for s in inside])
    mid, rates = (t[1:] + t[:-1]) / 2, np.diff(a) / np.maximum(np.diff(t), 1e-9)
    return float(np.polyfit(mid, rates, 1)[0])
