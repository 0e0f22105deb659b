"""Control planes in the simulator's loop: each turns the cluster's state into the
observation its pure ``decide`` expects and returns the scale to apply.

The decisions themselves are in ``kservebench.policies`` (``hpa``, ``kpa``); here is only
what the real components would see: the HPA reads metrics-server samples and pod
conditions, the KPA reads 1 s concurrency (or request) buckets and the ready pod count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kservebench.policies import hpa, kpa

if TYPE_CHECKING:
    from kservebench.sim.engine import Cluster

# Replica states (kept in step with engine.py).
PENDING, LOADING, READY = 0, 1, 2


@dataclass
class FixedScale:
    """No autoscaler: the replica count the deployment was created with."""

    replicas: int
    period_s: float = 60.0
    history: list[tuple[float, int]] = field(default_factory=list)

    def initial_replicas(self) -> int:
        return self.replicas

    def tick(self, cluster: Cluster) -> int:
        return self.replicas


@dataclass
class HpaAutoscaler:
    params: hpa.HpaParams
    initial: int | None = None
    controller: hpa.HpaController = field(init=False)
    history: list[tuple[float, hpa.HpaDecision]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.controller = hpa.HpaController(self.params)
        self.period_s = self.params.sync_period_s

    def initial_replicas(self) -> int:
        return self.initial if self.initial is not None else self.params.min_replicas

    def tick(self, cluster: Cluster) -> int:
        now = cluster.env.now
        request = cluster.spec.cpu_request_cores
        pods = []
        for r in cluster.active:
            started = r.started_s if r.started_s is not None else r.created_s
            usage, sample_s = r.sample if r.sample is not None else (None, 0.0)
            pods.append(
                hpa.PodSample(
                    request_cores=request,
                    pending=r.state == PENDING,
                    ready=r.state == READY,
                    started_s=started,
                    ready_changed_s=r.ready_s if r.ready_s is not None else started,
                    usage_cores=usage,
                    sample_s=sample_s,
                    window_s=cluster.metrics_resolution_s,
                )
            )
        obs = hpa.HpaObservation(now, cluster.spec_replicas, tuple(pods))
        decision = self.controller.step(obs)
        self.history.append((now, decision))
        return decision.desired_replicas


@dataclass
class KpaAutoscaler:
    params: kpa.KpaParams
    controller: kpa.KpaController = field(init=False)
    history: list[tuple[float, kpa.KpaDecision]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.controller = kpa.KpaController(self.params, kpa.initial_state(self.params))
        self.period_s = self.params.tick_s

    def initial_replicas(self) -> int:
        return kpa.initial_scale(self.params)

    def tick(self, cluster: Cluster, poke: bool = False) -> int:
        now = cluster.env.now
        p = self.params
        buckets = cluster.rps_buckets if p.metric == "rps" else cluster.concurrency_buckets
        if poke:
            # The activator's stat for the request it now holds, not yet in a bucket.
            buckets = [*buckets, float(cluster.in_system)]
        stable = kpa.window_average(buckets, 1.0, now, p.stable_window_s)
        panic = kpa.window_average(buckets, 1.0, now, p.panic_window_s)
        obs = kpa.KpaObservation(now, len(cluster.ready), stable, panic, cluster.spec_replicas)
        decision = self.controller.step(obs)
        self.history.append((now, decision))
        # With enough spare capacity the activator leaves the path: requests go to the
        # pods through the Kubernetes service instead of waiting for a free one.
        cluster.direct = decision.excess_burst_capacity >= 0
        return decision.scale

    def poke(self, cluster: Cluster) -> int:
        """A request reached the activator at zero scale: decide now, not at the next
        tick (Knative's multiscaler pokes the decider when a revision at 0 gets traffic)."""
        return self.tick(cluster, poke=True)
