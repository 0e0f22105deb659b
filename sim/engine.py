"""The simpy model of one scaled deployment: replicas, routing, cold starts, control plane.

Speed matters (an hour at 500 req/s is 1.8 million requests), so requests are not simpy
processes: an arrival is a timeout whose callback schedules the next arrival, a service is
a timeout whose callback frees the slot, and per-request results live in flat lists that
become numpy arrays at the end. Only the slow loops (series sampling, metrics-server
scrapes, autoscaler ticks, activator timeouts) are simpy processes.

Replica life cycle: pending (scheduling, image pull) -> loading (container started, model
loading) -> ready -> terminating (no new requests; drains what it holds) -> gone.

Routing (how a request reaches a slot):

* ``first_free``: a request takes any free slot, else waits in one FIFO queue shared by all
  replicas: the Knative activator / queue-proxy holding requests for capacity, and the
  M/M/c queue of queueing theory;
* ``random``: a request goes to a uniformly chosen ready replica and queues there:
  kube-proxy spreading connections over a Service's endpoints (also Knative's path when
  the autoscaler takes the activator out of it: ``direct``).

While no replica is ready, requests wait in the activator when one is in the path
(Knative; they are counted ``cold``) and fail with 503 otherwise; the activator fails
requests it held longer than its timeout with 504.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import simpy

from kservebench.sim.distributions import Constant, Distribution

PENDING, LOADING, READY, TERMINATING, GONE = range(5)


@dataclass(frozen=True)
class ReplicaSpec:
    slots: int = 1  # requests one replica serves at once (model-server concurrency)
    cpu_request_cores: float = 1.0
    cpu_per_busy_slot: float = 1.0  # cores a request in service keeps busy
    cpu_idle_cores: float = 0.0
    cpu_loading_cores: float = 1.0  # while the model loads
    cold_start_s: Distribution = field(default_factory=lambda: Constant(5.0))
    scheduling_s: float = 0.0  # pod created -> scheduled
    image_pull_s: float = 0.0  # scheduled -> container started


@dataclass(frozen=True)
class Routing:
    policy: str = "first_free"  # first_free | random
    activator: bool = False  # Knative: requests wait while no replica is ready
    activator_timeout_s: float = 300.0  # revision timeout: held longer -> 504


class Replica:
    __slots__ = (
        "busy",
        "busy_integral",
        "created_s",
        "id",
        "last_change_s",
        "queue",
        "ready_s",
        "sample",
        "scrape_integral",
        "scrape_s",
        "slots",
        "started_s",
        "state",
    )

    def __init__(self, replica_id: int, slots: int, now: float) -> None:
        self.id = replica_id
        self.slots = slots
        self.state = PENDING
        self.busy = 0
        self.queue: deque[int] = deque()
        self.busy_integral = 0.0  # slot-seconds in service, up to last_change_s
        self.last_change_s = now
        self.created_s = now
        self.started_s: float | None = None
        self.ready_s: float | None = None
        self.sample: tuple[float, float] | None = None  # metrics-server (cores, time)
        self.scrape_integral = 0.0
        self.scrape_s = now

    def integral(self, now: float) -> float:
        return self.busy_integral + self.busy * (now - self.last_change_s)


class Autoscaler(Protocol):
    """A control plane in the loop: ticks every ``period_s`` and returns the new scale."""

    period_s: float

    def initial_replicas(self) -> int: ...

    def tick(self, cluster: Cluster) -> int: ...


@dataclass
class SimResult:
    arrival_s: np.ndarray
    start_s: np.ndarray  # NaN when never served
    end_s: np.ndarray  # NaN when unfinished
    status: np.ndarray  # 200, 503 (no endpoints), 504 (activator timeout), 0 unfinished
    cold: np.ndarray
    pod: np.ndarray  # replica id, -1 when never served
    series: pd.DataFrame  # time_s (from timeline start), family, value, pod (replica id or "")
    end_time_s: float


class Cluster:
    """One deployment under one autoscaler, fed a precomputed arrival stream."""

    def __init__(
        self,
        replica: ReplicaSpec,
        routing: Routing,
        autoscaler: Autoscaler,
        seed: int = 0,
        metrics_resolution_s: float = 15.0,
    ) -> None:
        self.env = simpy.Environment()
        self.spec = replica
        self.routing = routing
        self.autoscaler = autoscaler
        self.rng = np.random.default_rng(seed)
        self.metrics_resolution_s = metrics_resolution_s
        self.replicas: list[Replica] = []  # not yet gone (gone ones are pruned each second)
        self.created = 0
        self.ready: list[Replica] = []
        self.free: list[Replica] = []  # one entry per free slot of a ready replica
        self.central: deque[int] = deque()
        self.spec_replicas = 0
        self.direct = False  # activator out of the path (Knative, enough burst capacity)
        self.in_system = 0
        self.system_integral = 0.0
        self.system_changed_s = 0.0
        self.arrived = 0
        # Per-second history the KPA reads (concurrency average, arrivals).
        self.concurrency_buckets: list[float] = []
        self.rps_buckets: list[float] = []

    # --- requests ------------------------------------------------------------------------

    def _system(self, delta: int) -> None:
        now = self.env.now
        self.system_integral += self.in_system * (now - self.system_changed_s)
        self.system_changed_s = now
        self.in_system += delta

    def _arrive(self, event: simpy.Event) -> None:
        k = event._value
        env = self.env
        if k + 1 < self._n:
            nxt = env.timeout(self._arrival[k + 1] - env.now, k + 1)
            nxt.callbacks.append(self._arrive)
        self.arrived += 1
        now = env.now  # in-system bookkeeping inlined: this runs once per request
        self.system_integral += self.in_system * (now - self.system_changed_s)
        self.system_changed_s = now
        self.in_system += 1
        if not self.ready:
            if self.routing.activator:
                self._cold[k] = True
                self.central.append(k)
                poke = getattr(self.autoscaler, "poke", None)
                if self.spec_replicas == 0 and poke is not None:
                    self.scale_to(poke(self))
            else:
                self._fail(k, 503)
            return
        if self._first_free and not self.direct:
            free = self.free
            while free:
                replica = free.pop()
                if replica.state == READY:
                    self._start(replica, k)
                    return
            self.central.append(k)
        else:
            replica = self.ready[int(self._uniform[k] * len(self.ready))]
            if replica.busy < replica.slots:
                self._start(replica, k)
            else:
                replica.queue.append(k)

    def _start(self, replica: Replica, k: int) -> None:
        now = self.env.now
        replica.busy_integral += replica.busy * (now - replica.last_change_s)
        replica.last_change_s = now
        replica.busy += 1
        self._start_s[k] = now
        self._pod[k] = replica.id
        done = self.env.timeout(self._service[k], (replica, k))
        done.callbacks.append(self._finish)

    def _finish(self, event: simpy.Event) -> None:
        replica, k = event._value
        now = self.env.now
        self._end_s[k] = now
        self._status[k] = 200
        self.system_integral += self.in_system * (now - self.system_changed_s)
        self.system_changed_s = now
        self.in_system -= 1
        replica.busy_integral += replica.busy * (now - replica.last_change_s)
        replica.last_change_s = now
        replica.busy -= 1
        if replica.queue:
            self._start(replica, replica.queue.popleft())
        elif replica.state == READY:
            if self.central:
                self._start(replica, self.central.popleft())
            else:
                self.free.append(replica)
        elif replica.state == TERMINATING and replica.busy == 0:
            replica.state = GONE

    def _fail(self, k: int, status: int) -> None:
        self._status[k] = status
        self._end_s[k] = self.env.now
        self._system(-1)

    # --- replicas ------------------------------------------------------------------------

    @property
    def active(self) -> list[Replica]:
        """Replicas the deployment counts: not terminating."""
        return [r for r in self.replicas if r.state in (PENDING, LOADING, READY)]

    def scale_to(self, replicas: int) -> None:
        self.spec_replicas = replicas
        active = self.active
        for _ in range(replicas - len(active)):
            self._create()
        if replicas < len(active):
            # Like the ReplicaSet controller: unready pods go first, then the least busy.
            victims = sorted(
                active, key=lambda r: (r.state == READY, r.busy + len(r.queue), -r.created_s)
            )
            for replica in victims[: len(active) - replicas]:
                self._terminate(replica)

    def _create(self, ready_now: bool = False) -> None:
        now = self.env.now
        replica = Replica(self.created, self.spec.slots, now)
        self.created += 1
        self.replicas.append(replica)
        if ready_now:
            replica.started_s = replica.ready_s = now
            self._ready(replica)
            return
        self.env.process(self._boot(replica))

    def _boot(self, replica: Replica):
        delay = self.spec.scheduling_s + self.spec.image_pull_s
        if delay > 0:
            yield self.env.timeout(delay)
        if replica.state != PENDING:
            return
        replica.state = LOADING
        replica.started_s = replica.scrape_s = self.env.now
        yield self.env.timeout(float(self.spec.cold_start_s.sample(self.rng, 1)[0]))
        if replica.state != LOADING:
            return
        replica.ready_s = self.env.now
        self._ready(replica)

    def _ready(self, replica: Replica) -> None:
        replica.state = READY
        replica.last_change_s = self.env.now
        self.ready.append(replica)
        for _ in range(replica.slots):
            if self.central:
                self._start(replica, self.central.popleft())
            else:
                self.free.append(replica)
        if not self._first_free:
            # The activator forwards everything it still holds.
            while self.central:
                replica.queue.append(self.central.popleft())

    def _terminate(self, replica: Replica) -> None:
        if replica.state == READY:
            self.ready.remove(replica)
            busy = replica.busy or replica.queue
            replica.state = TERMINATING if busy else GONE
        else:
            replica.state = GONE

    # --- slow loops ----------------------------------------------------------------------

    def _control(self):
        while True:
            yield self.env.timeout(self.autoscaler.period_s)
            self.scale_to(self.autoscaler.tick(self))

    def _scrape(self):
        """metrics-server: CPU cores per running pod, averaged over its resolution."""
        yield self.env.timeout(self.metrics_resolution_s / 2)  # phase: half a period of lag
        while True:
            yield self.env.timeout(self.metrics_resolution_s)
            now = self.env.now
            for r in self.replicas:
                if r.state in (LOADING, READY, TERMINATING) and r.started_s is not None:
                    integral = r.integral(now)
                    if r.state == LOADING:
                        r.sample = (self.spec.cpu_loading_cores, now)
                    elif r.scrape_s < now and r.started_s <= now - self.metrics_resolution_s:
                        cores = (integral - r.scrape_integral) / (now - r.scrape_s)
                        cores = cores * self.spec.cpu_per_busy_slot + self.spec.cpu_idle_cores
                        r.sample = (cores, now)
                    r.scrape_integral, r.scrape_s = integral, now

    def _activator_timeouts(self):
        timeout = self.routing.activator_timeout_s
        while True:
            yield self.env.timeout(1.0)
            now = self.env.now
            while self.central and now - self._arrival[self.central[0]] > timeout:
                self._fail(self.central.popleft(), 504)

    def _sample(self, rows: list[tuple]):
        """Once a second: the series families and the KPA's 1 s metric buckets."""
        last_integral, last_arrived = 0.0, 0
        pod_integrals: dict[int, float] = {}
        while True:
            yield self.env.timeout(1.0)
            now = self.env.now
            self.replicas = [r for r in self.replicas if r.state != GONE or r.id in pod_integrals]
            integral = self.system_integral + self.in_system * (now - self.system_changed_s)
            self.concurrency_buckets.append(integral - last_integral)
            self.rps_buckets.append(float(self.arrived - last_arrived))
            last_integral, last_arrived = integral, self.arrived
            rows.append((now, "replicas_ready", float(len(self.ready)), ""))
            rows.append((now, "replicas_desired", float(self.spec_replicas), ""))
            rows.append((now, "requests_in_flight", float(self.in_system), ""))
            for r in self.replicas:
                if r.state == GONE and r.id not in pod_integrals:
                    continue
                integral_r = r.integral(now)
                if r.state == LOADING:
                    cores = self.spec.cpu_loading_cores
                else:
                    busy = integral_r - pod_integrals.get(r.id, integral_r)
                    cores = busy * self.spec.cpu_per_busy_slot + self.spec.cpu_idle_cores
                if r.state == GONE:
                    del pod_integrals[r.id]
                elif r.state != PENDING:
                    pod_integrals[r.id] = integral_r
                    rows.append((now, "cpu_cores", cores, str(r.id)))

    # --- run -----------------------------------------------------------------------------

    def run(
        self,
        arrival_s: np.ndarray,
        service_s: np.ndarray,
        until_s: float,
        drain_timeout_s: float = 300.0,
    ) -> SimResult:
        """Serve ``arrival_s`` (sorted seconds) with ``service_s``; stop at ``until_s`` or,
        when requests are still in flight then, when they finish (at most the drain timeout)."""
        n = len(arrival_s)
        self._n = n
        self._arrival = np.asarray(arrival_s, dtype=float).tolist()
        self._service = np.asarray(service_s, dtype=float).tolist()
        self._uniform = self.rng.random(n).tolist()
        self._first_free = self.routing.policy == "first_free"
        nan = float("nan")
        self._start_s = [nan] * n
        self._end_s = [nan] * n
        self._status = [0] * n
        self._cold = [False] * n
        self._pod = [-1] * n
        rows: list[tuple] = []

        for _ in range(self.autoscaler.initial_replicas()):
            self._create(ready_now=True)
        self.spec_replicas = self.created
        env = self.env
        if n:
            first = env.timeout(self._arrival[0], 0)
            first.callbacks.append(self._arrive)
        env.process(self._control())
        env.process(self._sample(rows))
        env.process(self._scrape())
        if self.routing.activator:
            env.process(self._activator_timeouts())
        env.run(until=max(until_s, self._arrival[-1] if n else 0.0) + 1e-9)
        deadline = env.now + drain_timeout_s
        while self.in_system and env.now < deadline:
            env.run(until=min(env.now + 1.0, deadline))

        series = pd.DataFrame(rows, columns=["time_s", "family", "value", "pod"])
        return SimResult(
            arrival_s=np.asarray(self._arrival),
            start_s=np.asarray(self._start_s),
            end_s=np.asarray(self._end_s),
            status=np.asarray(self._status, dtype=np.int64),
            cold=np.asarray(self._cold, dtype=bool),
            pod=np.asarray(self._pod, dtype=np.int64),
            series=series,
            end_time_s=float(env.now),
        )
