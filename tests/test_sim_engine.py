"""The simulator's event loop: queueing theory, cold starts, scale to zero, HPA in the loop."""

import math

import numpy as np
import pytest

from kservebench.loadgen.arrivals import arrival_offsets
from kservebench.loadgen.patterns import parse_pattern
from kservebench.policies import hpa, kpa
from kservebench.sim.controllers import FixedScale, HpaAutoscaler, KpaAutoscaler
from kservebench.sim.distributions import Constant
from kservebench.sim.engine import Cluster, ReplicaSpec, Routing


def erlang_c_wait(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Mean waiting time in queue of M/M/c (Erlang C)."""
    load = arrival_rate / service_rate
    rho = load / servers
    below = sum(load**k / math.factorial(k) for k in range(servers))
    top = load**servers / math.factorial(servers) / (1 - rho)
    return top / (below + top) / (servers * service_rate - arrival_rate)


@pytest.mark.parametrize(("servers", "rho"), [(1, 0.5), (3, 0.7), (8, 0.75)])
def test_fixed_replicas_match_erlang_c(servers, rho):
    mean_service = 0.05
    rate = rho * servers / mean_service
    n = 300_000  # waits are autocorrelated: fewer requests leave a few % of noise
    rng = np.random.default_rng(0)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    service = rng.exponential(mean_service, n)
    cluster = Cluster(ReplicaSpec(slots=1), Routing("first_free"), FixedScale(servers), seed=1)
    result = cluster.run(arrivals, service, until_s=float(arrivals[-1]))
    assert (result.status == 200).all()
    wait = float(np.mean(result.start_s - result.arrival_s))
    expected = erlang_c_wait(rate, 1 / mean_service, servers)
    assert wait == pytest.approx(expected, rel=0.05)


def _arrivals(spec: dict, seed: int = 0, start: float = 0.0) -> np.ndarray:
    return arrival_offsets(parse_pattern(spec), "poisson", seed) + start


def _first_time(series, family: str, predicate, after: float = 0.0) -> float:
    rows = series[(series["family"] == family) & (series["time_s"] > after)]
    hits = rows[predicate(rows["value"])]
    return float(hits["time_s"].iloc[0]) if len(hits) else math.inf


def _knative(cold_s: float = 3.0, timeout_s: float = 300.0, **params) -> Cluster:
    params = {"target": 1.0, "target_utilization": 1.0, **params}
    return Cluster(
        ReplicaSpec(cold_start_s=Constant(cold_s)),
        Routing("first_free", activator=True, activator_timeout_s=timeout_s),
        KpaAutoscaler(kpa.KpaParams(**params)),
        seed=3,
    )


def test_kpa_scales_to_zero_a_stable_window_plus_grace_after_the_last_request():
    arrivals = _arrivals({"type": "constant", "rate": 5, "duration": "10s"})
    cluster = _knative()
    result = cluster.run(arrivals, np.full(len(arrivals), 0.05), until_s=200.0)
    last_done = float(np.nanmax(result.end_s))
    zero_at = _first_time(result.series, "replicas_ready", lambda v: v == 0)
    # 60 s stable window + 30 s grace, on a 2 s tick with 1 s metric buckets.
    assert last_done + 89.0 <= zero_at <= last_done + 95.0


def test_requests_at_zero_replicas_wait_for_a_cold_start_and_are_cold():
    # Idle from the start (initial scale 0): the first requests meet a cold start.
    arrivals = np.array([5.0, 5.5, 6.0, 20.0])
    cluster = _knative(cold_s=3.0, initial_scale=0)
    result = cluster.run(arrivals, np.full(4, 0.01), until_s=30.0)
    assert (result.status == 200).all()
    assert result.cold.tolist() == [True, True, True, False]
    latency = result.end_s - result.arrival_s
    # The activator pokes the autoscaler at once; the pod then takes 3 s to be ready.
    assert latency[0] == pytest.approx(3.01)
    assert latency[3] == pytest.approx(0.01)


def test_activator_times_out_requests_held_too_long():
    arrivals = np.array([1.0, 1.1])
    cluster = _knative(cold_s=20.0, timeout_s=5.0, initial_scale=0)
    result = cluster.run(arrivals, np.full(2, 0.01), until_s=40.0)
    assert result.status.tolist() == [504, 504]
    assert result.cold.all()


def test_kpa_panics_on_a_burst_and_scales_past_the_stable_desire():
    arrivals = np.concatenate(
        [
            _arrivals({"type": "constant", "rate": 5, "duration": "60s"}),
            _arrivals({"type": "constant", "rate": 300, "duration": "20s"}, seed=1, start=60.0),
        ]
    )
    cluster = _knative(cold_s=1.0, initial_scale=1, min_scale=1, target=10.0)
    result = cluster.run(arrivals, np.full(len(arrivals), 0.1), until_s=200.0)
    history = cluster.autoscaler.history
    first = next(i for i, (_, d) in enumerate(history) if d.panicking)
    t_panic, decision = history[first]
    assert 60.0 < t_panic < 66.0  # within the 6 s panic window of the burst
    ready = result.series.query("family == 'replicas_ready'").set_index("time_s")["value"]
    ready_then = max(1, int(ready[ready.index <= t_panic].iloc[-1]))
    assert decision.panic_desire / ready_then >= 2.0
    assert decision.scale > decision.stable_desire
    # Panic ends only once a full stable window passed without crossing the threshold.
    last_over = max(t for t, d in history if d.over_threshold)
    end = next(t for t, d in history if t > t_panic and not d.panicking)
    assert last_over + 60.0 < end <= last_over + 62.0


def test_hpa_follows_cpu_with_metric_lag_and_drains_on_scale_down():
    # 20 req/s of 0.1 s CPU work = 2 cores; target 50 % of a 1-core request -> 4 pods.
    arrivals = np.concatenate(
        [
            _arrivals({"type": "constant", "rate": 20, "duration": "150s"}),
            _arrivals({"type": "constant", "rate": 2, "duration": "400s"}, seed=1, start=150.0),
        ]
    )
    params = hpa.HpaParams(min_replicas=1, max_replicas=10, target_utilization=50)
    cluster = Cluster(
        ReplicaSpec(cold_start_s=Constant(5.0)), Routing("random"), HpaAutoscaler(params), seed=5
    )
    result = cluster.run(arrivals, np.full(len(arrivals), 0.1), until_s=550.0)
    series = result.series
    first_up = _first_time(series, "replicas_desired", lambda v: v > 1)
    assert first_up >= 15.0  # no sample before metrics-server's first window
    # 4 pods carry the load; one more may come from the backlog built while scaling.
    at_150 = series.query("family == 'replicas_desired' and time_s == 150.0")["value"].iloc[0]
    assert 4 <= at_150 <= 5
    # Scale-down waits for the 300 s stabilization window after the load drops.
    down = _first_time(series, "replicas_desired", lambda v: v < 4, after=150.0)
    assert 150.0 + 300.0 - 15.0 <= down <= 150.0 + 300.0 + 30.0
    # Terminating pods finish what they hold: every request is answered.
    assert (result.status == 200).all()
