"""Our SLO/KV-aware policy (``kservebench.policies.slo``) through its public decide():
latency fitted online, sizing in one step with look-ahead, the cheapest variant per unit of
capacity, scale-down with hysteresis and a chosen victim, fail-static, deleted pods'
series, scale to and from zero, and its parameter checks."""

from __future__ import annotations

import math

import pytest

from kservebench.errors import SpecError
from kservebench.policies import slo
from kservebench.policies.llm_signals import (
    Histogram,
    LlmInputs,
    ReplicaMetrics,
    ReplicaState,
    VariantSpec,
)
from kservebench.policies.slo_model import Line, fit_line

H100 = VariantSpec(
    "h100", cost_per_hour=4.0, max_replicas=20, kv_capacity_tokens=2_000_000, max_num_seqs=512
)
PROMPT, OUTPUT = 1000, 500


def hist(total: float, count: float) -> Histogram:
    return Histogram((100.0,), (round(count),), total, round(count))


class World:
    """Replicas whose vLLM counters grow as an engine's would, ITL(b) = base + slope x b."""

    def __init__(self, variants=(H100,), itl=None, params=None, ready=("h100-0",)):
        self.variants = variants
        self.itl = itl or {"h100": (0.006, 0.0001)}
        self.params = params or slo.SloParams()
        self.t = 0.0
        self.arrivals = 0.0
        self.replicas: dict[str, ReplicaState] = {}
        self.counters: dict[str, dict[str, float]] = {}
        self.state = None
        self.spec: dict[str, int] = {}
        for pod in ready:
            self.add(pod)

    def add(self, pod, variant=None, state="ready"):
        variant = variant or pod.rsplit("-", 1)[0]
        ready_s = self.t - 100 if state == "ready" else None
        self.replicas[pod] = ReplicaState(pod, variant, state, self.t - 200, ready_s)
        self.counters[pod] = dict.fromkeys(("gen", "ok", "rp", "rg", "itl", "n", "pf", "b"), 0.0)
        self.spec[variant] = self.spec.get(variant, 0) + (state != "draining")

    def remove(self, pod):
        r = self.replicas.pop(pod)
        self.spec[r.variant] -= 1

    def sample(self, pod, batch, dt, rate, waiting=0):
        r, c = self.replicas[pod], self.counters[pod]
        base, slope = self.itl[r.variant]
        mean_batch = (c["b"] + batch) / 2  # what the policy takes from two scrapes
        c["b"] = batch
        itl = base + slope * mean_batch
        tokens = mean_batch * dt / itl
        finished = rate * dt
        c["gen"] += tokens
        c["ok"] += finished
        c["rp"] += PROMPT * finished
        c["rg"] += OUTPUT * finished
        c["itl"] += itl * tokens
        c["n"] += tokens
        c["pf"] += 0.05 * finished
        return ReplicaMetrics(
            pod,
            self.t,
            variant=r.variant,
            running=batch,
            waiting=waiting,
            kv_usage=batch * (PROMPT + OUTPUT / 2) / 2_000_000,
            kv_capacity_tokens=2_000_000,
            prompt_tokens_total=c["rp"],
            generation_tokens_total=c["gen"],
            request_success_total=c["ok"],
            request_prompt_tokens_sum=c["rp"],
            request_generation_tokens_sum=c["rg"],
            itl=hist(c["itl"], c["n"]),
            prefill=hist(c["pf"], c["ok"]),
            ttft=hist(c["pf"], c["ok"]),
        )

    def step(self, rate, batch, dt=15.0, waiting=0, queued=0, extra=(), down=False, stale=()):
        """One control pass after ``dt`` seconds at ``rate`` req/s spread over the ready pods."""
        self.t += dt
        self.arrivals += rate * dt
        ready = [p for p, r in self.replicas.items() if r.state == "ready"]
        metrics = []
        for p in ready:
            b = batch(p) if callable(batch) else batch
            m = self.sample(p, b, dt, rate / len(ready), waiting)
            if p in stale:
                m = ReplicaMetrics(p, self.t - 120, running=b)
            metrics.append(m)
        inputs = LlmInputs(
            now_s=self.t,
            variants=self.variants,
            replicas=tuple(self.replicas.values()),
            metrics=None if down else (*metrics, *extra),
            spec_replicas=dict(self.spec),
            arrivals_total=self.arrivals,
            queued=queued,
        )
        d = slo.decide(inputs, self.state, self.params)
        self.state = d.state
        return d


def warm(world, passes=6, rate=4.0, batches=(20, 60, 100, 140, 40, 120)):
    """A few passes at ``rate`` whose batches vary, so the latency line can be fitted."""
    d = None
    for k in range(passes):
        d = world.step(rate, batches[k % len(batches)])
    return d


def test_the_latency_line_is_fitted_and_sizes_the_batch_to_the_itl_slo():
    d = warm(World())
    batch, binding, rate = d.details["capacity"]["h100"]
    # ITL target 50 ms x (1 - 0.2) = 40 ms on 6 ms + 0.1 ms per sequence: b* = 340
    assert binding == "itl" and batch == pytest.approx(340, abs=1)
    itl_at = 0.006 + 0.0001 * batch
    assert rate == pytest.approx(batch / (0.05 + (OUTPUT - 1) * itl_at), rel=0.05)


def test_too_few_points_give_a_conservative_line_through_them():
    line = fit_line([50.0], [0.011], min_points=3)
    assert line == Line(0.0055, 0.0055 / 50, "one point")
    assert line.batch_within(0.04) < (0.04 - 0.006) / 0.0001  # fewer than the true 340
    assert fit_line([], [], 3) is None


def test_a_burst_is_met_in_one_step_not_one_replica_per_pass():
    w = World(ready=("h100-0", "h100-1"))
    warm(w, rate=4.0)
    d = w.step(40.0, 200)
    rate = d.details["capacity"]["h100"][2]
    assert d.desired["h100"] == math.ceil(d.details["demand"] / rate) >= 4
    assert d.reason.startswith("up h100 2 -> ")


def test_a_rising_arrival_rate_is_looked_ahead_over_the_measured_start_up():
    pods = ("h100-0", "h100-1", "h100-2")
    flat, rising = World(ready=pods), World(ready=pods)
    warm(flat, rate=40.0)
    warm(rising, rate=10.0)
    for k in range(8):  # 10 -> 40 req/s over two minutes vs 40 req/s throughout
        flat.step(40.0, 200)
        rising.step(10.0 + 30.0 * (k + 1) / 8, 200)
    d_flat = flat.step(40.0, 200)
    d_rising = rising.step(40.0, 200)
    assert d_rising.details["demand"] > 1.5 * d_flat.details["demand"]
    assert d_flat.desired["h100"] == 3
    assert d_rising.desired["h100"] > d_flat.desired["h100"]
    assert d_rising.details["horizon_s"] == pytest.approx(100 + 15)  # measured start-up


def test_capacity_goes_to_the_cheapest_variant_per_unit_not_per_replica():
    a100 = VariantSpec(
        "a100", cost_per_hour=3.0, max_replicas=20, kv_capacity_tokens=2_000_000, max_num_seqs=512
    )
    w = World(
        variants=(H100, a100),
        itl={"h100": (0.006, 0.0001), "a100": (0.009, 0.0004)},
        ready=("h100-0", "a100-0"),
    )
    warm(w, rate=6.0)
    d = w.step(60.0, 150)
    caps = d.details["capacity"]
    assert caps["h100"][2] / 4.0 > caps["a100"][2] / 3.0  # more req/s per dollar on H100
    assert d.desired["a100"] == 1 and d.desired["h100"] > 3


def test_scale_down_waits_for_the_stabilization_and_removes_the_least_loaded_pods():
    w = World(ready=("h100-0", "h100-1", "h100-2", "h100-3", "h100-4"))
    warm(w, rate=60.0, batches=(150, 200, 250, 180, 220, 160))
    assert w.state.desired == (("h100", 5),)
    loads = {"h100-0": 40, "h100-1": 10, "h100-2": 30, "h100-3": 5, "h100-4": 20}
    decisions = [w.step(2.0, lambda p: loads[p]) for _ in range(15)]  # 225 s at 2 req/s
    first_down = next(k for k, d in enumerate(decisions) if d.desired["h100"] < 5)
    # the highest demand of the last 180 s counts, and the last minute of 60 req/s is in it
    assert (first_down + 1) * 15 >= w.params.scale_down_stabilization_s
    assert decisions[first_down].remove["h100"] == ("h100-3",)  # the least loaded
    # (this fake fleet never applies a decision: each pass still sees 5 replicas)
    last = decisions[-1]
    assert last.desired["h100"] == 1  # all that is no longer needed at once
    assert last.remove["h100"] == ("h100-3", "h100-1", "h100-4", "h100-2")


def test_no_scale_down_within_the_margin_and_pending_surplus_goes_first():
    w = World(ready=("h100-0", "h100-1"))
    warm(w, rate=15.5, batches=(100, 140, 60, 120, 80, 110))
    per_replica = w.step(15.5, 110).details["capacity"]["h100"][2]
    assert 15.5 < per_replica < 15.5 * 1.15  # one would do, but not with the 15 % margin
    for _ in range(15):
        d = w.step(15.5, 110)
    assert d.desired["h100"] == 2
    w.add("h100-2", state="pending")  # a surplus replica still loading
    d = w.step(15.5, 110)
    assert d.desired["h100"] == 2 and d.remove["h100"] == ("h100-2",)
    for _ in range(15):  # idle for longer than the stabilization: ready pods stay while
        d = w.step(0.5, 10)  # one is pending, only the pending one is taken away
    assert d.desired["h100"] == 2 and d.remove["h100"] == ("h100-2",)
    w.remove("h100-2")
    assert w.step(0.5, 10).desired["h100"] == 1


def test_missing_or_stale_metrics_fail_static_with_the_reason():
    w = World(ready=("h100-0", "h100-1"))
    warm(w)
    before = w.state.desired
    d = w.step(50.0, 300, down=True)
    assert d.desired == dict(before) and "metrics unavailable: no change" in d.reason
    d = w.step(50.0, 300, stale=("h100-1",))
    assert d.desired == dict(before) and "h100-1 are stale (120 s old)" in d.reason
    w.add("h100-9")  # listed as ready, no series yet
    d = slo.decide(
        LlmInputs(w.t, w.variants, tuple(w.replicas.values()), (), dict(w.spec)), w.state, w.params
    )
    assert "no metrics for ready pod h100-0" in d.reason


def test_series_of_deleted_pods_are_ignored():
    w = World(ready=("h100-0", "h100-1"))
    warm(w, rate=15.5)
    ghost = ReplicaMetrics("h100-7", w.t, variant="h100", running=256, waiting=500, kv_usage=1.0)
    d = w.step(15.5, 110, extra=(ghost,))
    assert d.desired == {"h100": 2}  # the ghost's queue would call for several more
    assert "ignored series of deleted pods: h100-7" in d.reason


def test_scale_to_zero_after_the_retention_and_back_on_a_queued_request():
    params = slo.SloParams(scale_to_zero=True, retention_s=120)
    w = World(params=params)
    warm(w)
    quiet = [w.step(0.0, 0) for _ in range(9)]
    assert [d.desired["h100"] for d in quiet][-1] == 0
    assert quiet[-1].reason.startswith("no traffic for 135 s")
    w.remove("h100-0")
    assert w.step(0.0, 0).desired == {"h100": 0}
    d = w.step(0.0, 0, queued=3)
    assert d.desired == {"h100": 1} and d.reason.startswith("scale from zero (3 queued")
    kept = World(params=slo.SloParams(retention_s=120))
    warm(kept)
    assert [kept.step(0.0, 0) for _ in range(9)][-1].desired == {"h100": 1}


def test_params_are_validated_naming_the_field():
    with pytest.raises(SpecError, match="headroom"):
        slo.SloParams(headroom=1.0)
    with pytest.raises(SpecError, match="itl_ms"):
        slo.SloParams(itl_ms=0)
    with pytest.raises(SpecError, match="kv_target"):
        slo.SloParams(kv_target=1.5)
    with pytest.raises(SpecError, match="fit_min_points"):
        slo.SloParams(fit_min_points=1)
    with pytest.raises(SpecError, match="max_trend_factor"):
        slo.SloParams(max_trend_factor=0.5)
    with pytest.raises(SpecError, match=r"variants\[x\]\.maxReplicas"):
        VariantSpec("x", min_replicas=3, max_replicas=2)
