"""The HPA and the KPA as live loops over real replicas, around the shared pure policies.

Each loop only turns what the real component would see into the policy's observation and
applies the answer to a ``ReplicaSet``; the decisions are ``kservebench.policies.hpa`` and
``kservebench.policies.kpa``, the same calls the simulator makes.

* HPA: metrics-server scrapes every replica's CPU (cpuacct of its cgroup) once per metrics
  resolution and keeps the average usage over that window; every sync period the HPA reads
  those samples and the pods' states, and scales the ReplicaSet.
* KPA: every 2 s the decider reads the router's 1 s concurrency (or request) buckets, as
  Knative's autoscaler reads the activator's and queue-proxies' stats; a request that
  reaches the router at zero replicas pokes it at once (Knative's multiscaler poke).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kservebench.policies import hpa, kpa

MAX_BUCKETS = 3600  # an hour of 1 s buckets: far more than any window


@dataclass
class ScaleEvent:
    """One decision that changed the desired replicas (for run.json and the report)."""

    time_s: float
    model: str
    from_replicas: int
    to_replicas: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": round(self.time_s, 3),
            "model": self.model,
            "from": self.from_replicas,
            "to": self.to_replicas,
            "reason": self.reason,
        }


@dataclass
class _Loop:
    model: str
    replica_set: Any  # kservebench.local.replicas.ReplicaSet
    clock: Callable[[], float] = time.time
    events: list[ScaleEvent] = field(default_factory=list)
    decisions: int = 0

    async def _apply(self, desired: int, reason: str) -> None:
        current = self.replica_set.desired
        self.decisions += 1
        if desired != current:
            self.events.append(ScaleEvent(self.clock(), self.model, current, desired, reason))
            # Spawning or signalling processes must not stall the router on this loop.
            await asyncio.to_thread(self.replica_set.scale_to, desired)


@dataclass
class HpaLoop(_Loop):
    params: hpa.HpaParams = field(default_factory=hpa.HpaParams)
    request_cores: float = 1.0
    metrics_resolution_s: float = 15.0
    controller: hpa.HpaController = field(init=False)
    # metrics-server: last cumulative CPU reading and the latest windowed sample per pod
    readings: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: dict[str, tuple[float, float]] = field(default_factory=dict)
    last: hpa.HpaDecision | None = None

    def __post_init__(self) -> None:
        self.controller = hpa.HpaController(self.params)

    def scrape(self, now_s: float) -> None:
        """One metrics-server scrape: CPU cores each running replica used since the last."""
        alive = set()
        for replica in self.replica_set.replicas():
            if replica.state not in ("starting", "ready"):
                continue
            alive.add(replica.pod)
            cpu_s = self.replica_set.cpu_seconds(replica.pod)
            previous = self.readings.get(replica.pod)
            self.readings[replica.pod] = (cpu_s, now_s)
            if previous is not None and now_s > previous[1] and cpu_s >= previous[0]:
                self.samples[replica.pod] = ((cpu_s - previous[0]) / (now_s - previous[1]), now_s)
        for pod in set(self.readings) - alive:
            self.readings.pop(pod, None)
            self.samples.pop(pod, None)

    def observe(self, now_s: float) -> hpa.HpaObservation:
        pods = []
        for replica in self.replica_set.replicas():
            if replica.state in ("terminating", "gone"):
                continue  # the HPA counts the scale target's pods; deleted ones are leaving
            usage, sample_s = self.samples.get(replica.pod, (None, 0.0))
            started = replica.started_s or replica.created_s
            pods.append(
                hpa.PodSample(
                    request_cores=self.request_cores,
                    pending=replica.state == "pending",
                    ready=replica.state == "ready",
                    started_s=started,
                    ready_changed_s=replica.ready_s or started,
                    usage_cores=usage,
                    sample_s=sample_s,
                    window_s=self.metrics_resolution_s,
                )
            )
        return hpa.HpaObservation(now_s, self.replica_set.desired, tuple(pods))

    async def sync(self) -> hpa.HpaDecision:
        now = self.clock()
        decision = self.controller.step(self.observe(now))
        self.last = decision
        utilization = "-" if decision.utilization is None else f"{decision.utilization:.0f}%"
        await self._apply(decision.desired_replicas, f"{decision.reason}, cpu {utilization}")
        return decision

    async def run(self) -> None:
        """metrics-server scrapes and HPA syncs, each on its own period, until cancelled."""
        start = self.clock()
        next_scrape, next_sync = start, start + self.params.sync_period_s
        while True:
            now = self.clock()
            if now >= next_scrape:
                self.scrape(now)
                next_scrape += self.metrics_resolution_s
            if now >= next_sync:
                await self.sync()
                next_sync += self.params.sync_period_s
            await asyncio.sleep(max(0.0, min(next_scrape, next_sync) - self.clock()))


@dataclass
class KpaLoop(_Loop):
    params: kpa.KpaParams = field(default_factory=kpa.KpaParams)
    router: Any = None  # kservebench.local.router.Router
    controller: kpa.KpaController = field(init=False)
    concurrency: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    first_bucket_s: float | None = None
    last: kpa.KpaDecision | None = None
    last_observation: kpa.KpaObservation | None = None
    _poked: asyncio.Event | None = None

    def __post_init__(self) -> None:
        self.controller = kpa.KpaController(self.params, kpa.initial_state(self.params))

    def _drain_buckets(self, now_s: float) -> None:
        for second_s, average, arrived in self.router.take_buckets(now_s):
            if self.first_bucket_s is None:
                self.first_bucket_s = float(second_s)
            expected = self.first_bucket_s + len(self.concurrency)
            while second_s > expected + 0.5:  # seconds the router reported nothing: idle
                self.concurrency.append(0.0)
                self.arrivals.append(0.0)
                expected += 1.0
            self.concurrency.append(float(average))
            self.arrivals.append(float(arrived))
        excess = len(self.concurrency) - MAX_BUCKETS
        if excess > 0 and self.first_bucket_s is not None:
            del self.concurrency[:excess], self.arrivals[:excess]
            self.first_bucket_s += excess

    def observe(self, now_s: float, poke: bool = False) -> kpa.KpaObservation:
        self._drain_buckets(now_s)
        p = self.params
        buckets = self.arrivals if p.metric == "rps" else self.concurrency
        if poke:
            # The request the router now holds is not in a bucket yet.
            buckets = [*buckets, float(self.router.in_system)]
        first = self.first_bucket_s if self.first_bucket_s is not None else now_s
        stable = kpa.window_average(buckets, first, now_s, p.stable_window_s)
        panic = kpa.window_average(buckets, first, now_s, p.panic_window_s)
        ready = len(self.replica_set.ready())
        obs = kpa.KpaObservation(now_s, ready, stable, panic, self.replica_set.desired)
        self.last_observation = obs
        return obs

    async def tick(self, poke: bool = False) -> kpa.KpaDecision:
        decision = self.controller.step(self.observe(self.clock(), poke))
        self.last = decision
        why = "panic" if decision.panicking else "stable"
        reason = f"{'poke at zero, ' if poke else ''}{why}, desired {decision.desired_pods}"
        await self._apply(decision.scale, reason)
        return decision

    def poke(self) -> None:
        """Called on the loop by the router when a request arrives at zero replicas."""
        if self._poked is not None:
            self._poked.set()

    async def run(self) -> None:
        """A decision every tick (2 s), and at once when poked, until cancelled."""
        self._poked = asyncio.Event()
        next_tick = self.clock() + self.params.tick_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), max(0.0, next_tick - self.clock()))
            if self._poked.is_set():
                self._poked.clear()
                await self.tick(poke=True)
                continue
            await self.tick()
            next_tick += self.params.tick_s
            next_tick = max(next_tick, self.clock())
