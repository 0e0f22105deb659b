"""A simulated fleet of LLM replicas: one ``kservebench.llm`` engine per replica, a router,
replica start-up and draining, and a controller hook for autoscalers.

Time moves at step granularity with no event per token: the only events are arrivals,
replica start-ups, scale actions, samples (every ``sample_s``) and controller ticks (every
``interval_s``), kept in one heap; between them each engine is brought up to date with
``Engine.advance_to``, which runs its steps and fast-forwards decode runs. An engine is
advanced only when something reads it: at an arrival when the routing policy reads
gauges, at samples and ticks, and when the fleet scales. The event loop is a plain heap,
not simpy: there are no processes to suspend, and it is much cheaper per event.

Gauges read at time t are those after every step that started before t (a step in flight
at t counts as done, at most one step early, ~10-100 ms), which is also when a real
router's last scrape would be at its freshest.

Replica life cycle: pending (created, loading the model for ``startup_s``) -> ready
(receives requests) -> draining (taken out of the router; finishes what it holds) -> gone
(removed once idle). Requests that arrive while no replica is ready wait at the router,
like Knative's activator, and are dispatched when one becomes ready; their TTFT and
latency count from the arrival, so they include the start-up delay.

Every arrival gets exactly one record: finished (status 200), or ``unfinished`` (status 0)
when the drain timeout ends the run first.

The replica states, the signals a controller reads and the result frames are in
``sim.llm_fleet_signals``, which also says how the latency histograms are observed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from kservebench.errors import SpecError
from kservebench.llm.engine import Engine
from kservebench.llm.request import RequestOverheads, RequestResult
from kservebench.llm.variants import Variant, get_variant
from kservebench.sim.distributions import Constant, Distribution
from kservebench.sim.llm_fleet_signals import (
    DRAINING,
    GONE,
    PENDING,
    READY,
    REPLICA_COUNT_COLUMNS,
    SERIES_COLUMNS,
    Controller,
    FleetSignals,
    LlmFleetResult,
    LlmReplica,
    ReplicaSignals,
    _series_frame,
)
from kservebench.sim.llm_routing import get_routing
from kservebench.sim.llm_workload import LlmWorkload, build_records, check_fits

# The signal and result types moved to llm_fleet_signals; callers still import them here.
__all__ = [
    "DRAINING",
    "GONE",
    "PENDING",
    "READY",
    "REPLICA_COUNT_COLUMNS",
    "SERIES_COLUMNS",
    "Controller",
    "FleetSignals",
    "LlmFleet",
    "LlmFleetResult",
    "LlmReplica",
    "ReplicaSignals",
]

# Timer kinds, in the order they run when due at the same instant (before any arrival then).
_SCALE, _READY, _SAMPLE, _CONTROL, _END = range(5)


class LlmFleet:
    """Replicas of one ``variant`` behind one router; ``run`` feeds it a workload once.

    ``replicas`` start ready at time 0. ``startup_s`` is the model-load delay of a replica
    created later (seconds or a ``sim.distributions`` distribution, drawn with ``seed``).
    ``engine_overrides`` go to ``Variant.engine_config`` (the step log is off by default:
    nothing here reads per-token times). ``controller`` is called every ``interval_s``."""

    def __init__(
        self,
        variant: Variant | str,
        replicas: int = 1,
        *,
        routing: str = "round_robin",
        startup_s: float | Distribution = 60.0,
        controller: Controller | None = None,
        interval_s: float = 15.0,
        sample_s: float = 1.0,
        engine_overrides: Mapping[str, Any] | None = None,
        overheads: RequestOverheads | None = None,
        model: str | None = None,
        seed: int = 0,
    ) -> None:
        self.variant = get_variant(variant) if isinstance(variant, str) else variant
        if not isinstance(replicas, int) or replicas < 0:
            raise SpecError("replicas", replicas, "must be an integer >= 0")
        for name, value in (("interval_s", interval_s), ("sample_s", sample_s)):
            if not value > 0:
                raise SpecError(name, value, "must be > 0")
        self.routing = get_routing(routing)
        self.startup = (
            Constant(float(startup_s)) if isinstance(startup_s, int | float) else startup_s
        )
        self.controller = controller
        self.interval_s = float(interval_s)
        self.sample_s = float(sample_s)
        self.config = self.variant.engine_config(
            **{"keep_step_log": False, **(engine_overrides or {})}
        )
        self.step_time = self.variant.step_time_model()
        self.overheads = overheads
        self.model = model or self.variant.model.name
        self.rng = np.random.default_rng(seed)
        self.now_s = 0.0
        self.desired = replicas
        self.all: list[LlmReplica] = []  # every replica ever created
        self.live: list[LlmReplica] = []  # not gone
        self.ready: list[LlmReplica] = []
        self._timers: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._counts: list[tuple[float, int, int, int, int]] = []
        self._ran = False
        for _ in range(replicas):
            self._ready(self._create(0.0), 0.0)

    # -- replicas -------------------------------------------------------------------------

    def scale_to(
        self, replicas: int, at_s: float | None = None, prefer: tuple[str, ...] = ()
    ) -> None:
        """Ask for ``replicas`` replicas at ``at_s`` (default now; a later time is scheduled).
        More: new ones start, ready after ``startup_s``. Fewer: the pods named in
        ``prefer`` go first, then pending ones (newest first), then ready ones with the
        fewest requests drain."""
        if not isinstance(replicas, int | np.integer) or replicas < 0:
            raise SpecError("replicas", replicas, "must be an integer >= 0")
        at = self.now_s if at_s is None else float(at_s)
        if at > self.now_s or not self._ran:
            self._push(at, _SCALE, (int(replicas), tuple(prefer)))
            return
        self._apply_scale(self.now_s, int(replicas), tuple(prefer))

    def _apply_scale(self, now: float, replicas: int, prefer: tuple[str, ...] = ()) -> None:
        self.desired = replicas
        active = [r for r in self.live if r.state in (PENDING, READY)]
        for _ in range(replicas - len(active)):
            replica = self._create(now)
            delay = float(self.startup.sample(self.rng, 1)[0])
            self._push(now + max(0.0, delay), _READY, replica)
        if replicas < len(active):
            for r in self.ready:
                r.engine.advance_to(now)
            victims = sorted(
                active,
                key=lambda r: (
                    r.name not in prefer,
                    r.state == READY,
                    r.num_requests,
                    -r.created_s,
                    -r.index,
                ),
            )
            for r in victims[: len(active) - replicas]:
                if r.state == PENDING:
                    self._remove(r, now)
                else:
                    self.ready.remove(r)
                    r.state, r.drain_s = DRAINING, now
                    self._collect(r)
                    if not r.engine.has_work:
                        self._remove(r, now)
        self._log_counts(now)

    def _create(self, now: float) -> LlmReplica:
        engine = Engine(self.config, self.step_time, self.overheads)
        replica = LlmReplica(len(self.all), f"{self.model}-sim-{len(self.all)}", engine, now)
        self.all.append(replica)
        self.live.append(replica)
        return replica

    def _ready(self, replica: LlmReplica, now: float) -> None:
        replica.state, replica.ready_s = READY, now
        self.ready.append(replica)

    def _remove(self, replica: LlmReplica, now: float) -> None:
        replica.state = GONE
        replica.removed_s = max(
            now if replica.drain_s is None else replica.drain_s, replica.last_finish_s
        )
        self.live.remove(replica)

    def _log_counts(self, now: float) -> None:
        states = [r.state for r in self.live]
        counts = (self.desired, states.count(PENDING), states.count(READY))
        row = (now, *counts, states.count(DRAINING))
        if not self._counts or self._counts[-1][1:] != row[1:]:
            self._counts.append(row)

    # -- timers ---------------------------------------------------------------------------

    def _push(self, at: float, kind: int, value: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, kind, self._seq, value))

    # -- the run --------------------------------------------------------------------------

    def run(
        self, workload: LlmWorkload, until_s: float | None = None, drain_timeout_s: float = 300.0
    ) -> LlmFleetResult:
        """Serve ``workload`` until ``until_s`` (default its duration; never before the last
        arrival), then while requests are in flight, at most ``drain_timeout_s`` more."""
        if self._ran:
            raise SpecError("fleet", "run", "a fleet runs one workload; build a new one")
        self._ran = True
        check_fits(workload, self.config)
        n = len(workload)
        arrival = workload.arrival_s.tolist()
        self._prompt = workload.prompt_tokens.tolist()
        self._output = workload.max_tokens.tolist()
        last = arrival[-1] if n else 0.0
        until = max(workload.duration_s if until_s is None else float(until_s), last)
        self._results: list[RequestResult | None] = [None] * n
        self._dispatch_s = [math.nan] * n
        self._pod = [-1] * n
        self._cold = [False] * n
        self._finished = 0
        self._turn = 0
        held: list[int] = []  # at the router: no replica was ready
        rows: dict[str, list] = {c: [] for c in SERIES_COLUMNS}
        calls = 0
        self._log_counts(0.0)
        self._push(0.0, _SAMPLE, 0)
        controller = self.controller
        if controller is not None:
            self._push(self.interval_s, _CONTROL, 1)
        self._push(until + drain_timeout_s, _END)
        timers = self._timers
        i = 0
        while True:
            t_arrival = arrival[i] if i < n else math.inf
            if timers[0][0] > t_arrival:  # an arrival (timers due at the same time go first)
                self.now_s = t_arrival
                if self.ready:
                    self._dispatch(i, t_arrival)
                else:
                    held.append(i)
                    self._cold[i] = True
                i += 1
                continue
            now, kind, _, value = heapq.heappop(timers)
            self.now_s = now
            if kind == _SAMPLE:
                self._advance_all(now)
                self._sample(now, rows)
                if now >= until and i >= n and self._finished == n:
                    break
                self._push((value + 1) * self.sample_s, _SAMPLE, value + 1)
            elif kind == _CONTROL:
                self._advance_all(now)
                signals = FleetSignals(
                    now, self.desired, len(held), i, tuple(r.signals() for r in self.live)
                )
                calls += 1
                desired = controller(now, signals) if controller else None
                if isinstance(desired, tuple):
                    self.scale_to(int(desired[0]), now, tuple(desired[1]))
                elif desired is not None:
                    self.scale_to(int(desired), now)
                self._push((value + 1) * self.interval_s, _CONTROL, value + 1)
            elif kind == _SCALE:
                self._apply_scale(now, *value)
            elif kind == _READY:
                starting = [value]
                while timers[0][0] == now and timers[0][1] == _READY:  # ready at once too:
                    starting.append(heapq.heappop(timers)[3])  # the held requests spread
                for replica in starting:
                    if replica.state == PENDING:
                        self._ready(replica, now)
                self._log_counts(now)
                if self.ready:
                    for k in held:
                        self._dispatch(k, now)
                    held.clear()
            else:  # the drain timeout: what is still in flight stays unfinished
                self._advance_all(now)
                break
        records = build_records(
            workload,
            self._results,
            self._dispatch_s,
            [self.all[p].name if p >= 0 else "" for p in self._pod],
            self._cold,
            self.model,
        )
        return LlmFleetResult(
            records=records,
            series=_series_frame(rows),
            replica_counts=pd.DataFrame(self._counts, columns=list(REPLICA_COUNT_COLUMNS)),
            steps=sum(r.engine.steps for r in self.all),
            end_time_s=self.now_s,
            controller_calls=calls,
            replicas=[
                {
                    "pod": r.name,
                    "created_s": r.created_s,
                    "ready_s": r.ready_s,
                    "drain_s": r.drain_s,
                    "removed_s": r.removed_s,
                }
                for r in self.all
            ],
        )

    def _dispatch(self, k: int, now: float) -> None:
        ready = self.ready
        if len(ready) == 1:
            replica = ready[0]
        else:
            if self.routing.reads_gauges:
                for r in ready:
                    r.engine.advance_to(now)
            replica = ready[self.routing.choose(ready, self._turn)]
        self._turn += 1
        replica.engine.add_request(str(k), self._prompt[k], self._output[k], now)
        self._pod[k] = replica.index
        self._dispatch_s[k] = now

    def _collect(self, replica: LlmReplica) -> None:
        for res in replica.engine.take_finished():
            replica.observe_finished(res)
            self._results[int(res.req_id)] = res
            self._finished += 1
            if res.finished_s is not None and res.finished_s > replica.last_finish_s:
                replica.last_finish_s = res.finished_s

    def _advance_all(self, now: float) -> None:
        gone = False
        for r in self.live:
            if r.state == PENDING:
                continue
            r.engine.advance_to(now)
            self._collect(r)
            if r.state == DRAINING and not r.engine.has_work:
                r.state, gone = GONE, True
        if gone:  # idle draining replicas leave; removed when their last request finished
            for r in [r for r in self.live if r.state == GONE]:
                self._remove(r, now)
            self._log_counts(now)

    def _sample(self, now: float, rows: dict[str, list]) -> None:
        for r in self.live:
            e = r.engine
            if r.state != PENDING and now > 0:
                r.observe_period(self.sample_s)
            rows["time_s"].append(now)
            rows["pod"].append(r.name)
            rows["state"].append(r.state)
            rows["ready"].append(r.state == READY)
            rows["running"].append(e.num_running)
            rows["waiting"].append(e.num_waiting)
            rows["kv_usage"].append(e.kv_cache_usage)
