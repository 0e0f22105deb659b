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

Latency histograms for autoscalers (``ReplicaSignals``, vLLM's buckets): TTFT (dispatch to
first token, as the server measures it), prefill time (first scheduled to first token) and
the token sums of finished requests are observed when a request finishes (vLLM observes
TTFT at the first token). Inter-token latency is observed at each sample: every token of
a sample period in which the replica had work at both ends counts as one gap of the
period's mean step time (vLLM observes each gap; here a period's gaps are summarized by
their mean). ``busy_s_total`` counts sample periods with work at both ends, and half of
those with work at one end: the time vLLM's engine loop spent stepping, which a CPU
estimate starts from.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np
import pandas as pd

from kservebench.errors import SpecError
from kservebench.llm.engine import Engine
from kservebench.llm.request import RequestOverheads, RequestResult
from kservebench.llm.variants import Variant, get_variant
from kservebench.llm.vllm_metrics import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS
from kservebench.sim.distributions import Constant, Distribution
from kservebench.sim.llm_routing import get_routing
from kservebench.sim.llm_workload import LlmWorkload, build_records, check_fits

PENDING, READY, DRAINING, GONE = "pending", "ready", "draining", "gone"

# Timer kinds, in the order they run when due at the same instant (before any arrival then).
_SCALE, _READY, _SAMPLE, _CONTROL, _END = range(5)

SERIES_COLUMNS = ("time_s", "pod", "state", "ready", "running", "waiting", "kv_usage")
REPLICA_COUNT_COLUMNS = ("time_s", "desired", "pending", "ready", "draining")


@dataclass(frozen=True, slots=True)
class ReplicaSignals:
    """One replica as an autoscaler sees it: vLLM's gauges and counters, and its state."""

    pod: str
    state: str  # pending | ready | draining
    ready: bool
    running: int  # vllm:num_requests_running
    waiting: int  # vllm:num_requests_waiting (the scheduler's queue, preempted included)
    kv_usage: float  # vllm:kv_cache_usage_perc, 0..1
    kv_capacity_tokens: int  # num_gpu_blocks * block_size
    prompt_tokens_total: int  # vllm:prompt_tokens_total
    generation_tokens_total: int  # vllm:generation_tokens_total
    request_success_total: int  # vllm:request_success_total
    num_preemptions_total: int  # vllm:num_preemptions_total
    created_s: float
    ready_s: float | None
    # cumulative counts per bound of vLLM's TTFT / ITL / request-latency buckets (le)
    ttft_buckets: tuple[int, ...] = ()
    ttft_count: int = 0
    ttft_sum_s: float = 0.0
    itl_buckets: tuple[int, ...] = ()
    itl_count: int = 0
    itl_sum_s: float = 0.0
    prefill_buckets: tuple[int, ...] = ()  # vllm:request_prefill_time_seconds
    prefill_count: int = 0
    prefill_sum_s: float = 0.0
    request_prompt_tokens_sum: int = 0  # of finished requests (vllm:request_prompt_tokens)
    request_generation_tokens_sum: int = 0  # vllm:request_generation_tokens
    busy_s_total: float = 0.0


@dataclass(frozen=True, slots=True)
class FleetSignals:
    """What the controller hook gets every ``interval_s``."""

    now_s: float
    desired: int  # the replica count last asked for
    router_queue: int  # requests held at the router because no replica was ready
    arrivals_total: int  # requests that have arrived so far
    replicas: tuple[ReplicaSignals, ...]  # every replica not gone, in creation order

    @property
    def ready(self) -> int:
        return sum(r.ready for r in self.replicas)


# (now_s, signals) -> the replica count to scale to, or (count, pods to remove first), or
# None to leave it.
Controller = Callable[[float, FleetSignals], int | tuple[int, tuple[str, ...]] | None]


class LlmReplica:
    """One replica: an engine and its place in the life cycle."""

    __slots__ = ("created_s", "drain_s", "engine", "index", "last_finish_s", "name")
    __slots__ += ("ready_s", "removed_s", "state")
    __slots__ += ("busy_s", "had_work", "itl", "itl_sum", "seen_gen", "seen_steps", "ttft")
    __slots__ += ("ttft_sum", "req_prompt", "req_gen", "prefill", "prefill_sum")

    def __init__(self, index: int, name: str, engine: Engine, now_s: float) -> None:
        self.index = index
        self.name = name
        self.engine = engine
        self.state = PENDING
        self.created_s = now_s
        self.ready_s: float | None = None
        self.drain_s: float | None = None
        self.removed_s: float | None = None
        self.last_finish_s = -math.inf
        self.ttft = [0] * (len(TTFT_BUCKETS) + 1)  # per bucket, the last one +Inf
        self.itl = [0] * (len(ITL_BUCKETS) + 1)
        self.prefill = [0] * (len(REQUEST_LATENCY_BUCKETS) + 1)
        self.ttft_sum = self.itl_sum = self.prefill_sum = self.busy_s = 0.0
        self.req_prompt = self.req_gen = 0
        self.seen_steps = self.seen_gen = 0
        self.had_work = False

    def observe_finished(self, res: RequestResult) -> None:
        if res.first_token_s is not None:
            ttft = res.first_token_s - res.arrival_s
            self.ttft[bisect_left(TTFT_BUCKETS, ttft)] += 1
            self.ttft_sum += ttft
        prefill = res.prefill_time_s
        if prefill is not None:
            self.prefill[bisect_left(REQUEST_LATENCY_BUCKETS, prefill)] += 1
            self.prefill_sum += prefill
        self.req_prompt += res.prompt_tokens
        self.req_gen += res.output_tokens

    def observe_period(self, period_s: float) -> None:
        """A sample period ended: its inter-token gaps and busy time (see the module)."""
        e = self.engine
        work = e.has_work
        steps, generated = e.steps - self.seen_steps, e.generation_tokens_total - self.seen_gen
        if self.had_work and work and steps > 0 and generated > 0:
            gap = period_s / steps
            self.itl[bisect_left(ITL_BUCKETS, gap)] += generated
            self.itl_sum += gap * generated
        self.busy_s += period_s * (self.had_work + work) / 2
        self.seen_steps, self.seen_gen, self.had_work = e.steps, e.generation_tokens_total, work

    @property
    def num_requests(self) -> int:
        e = self.engine
        return e.num_running + e.num_waiting + e.num_pending

    @property
    def kv_usage(self) -> float:
        return self.engine.kv_cache_usage

    def signals(self) -> ReplicaSignals:
        e = self.engine
        return ReplicaSignals(
            pod=self.name,
            state=self.state,
            ready=self.state == READY,
            running=e.num_running,
            waiting=e.num_waiting,
            kv_usage=e.kv_cache_usage,
            kv_capacity_tokens=e.config.num_gpu_blocks * e.config.block_size,
            prompt_tokens_total=e.prompt_tokens_total,
            generation_tokens_total=e.generation_tokens_total,
            request_success_total=e.request_success_total,
            num_preemptions_total=e.num_preemptions,
            created_s=self.created_s,
            ready_s=self.ready_s,
            ttft_buckets=tuple(accumulate(self.ttft[:-1])),
            ttft_count=sum(self.ttft),
            ttft_sum_s=self.ttft_sum,
            itl_buckets=tuple(accumulate(self.itl[:-1])),
            itl_count=sum(self.itl),
            itl_sum_s=self.itl_sum,
            prefill_buckets=tuple(accumulate(self.prefill[:-1])),
            prefill_count=sum(self.prefill),
            prefill_sum_s=self.prefill_sum,
            request_prompt_tokens_sum=self.req_prompt,
            request_generation_tokens_sum=self.req_gen,
            busy_s_total=self.busy_s,
        )


@dataclass
class LlmFleetResult:
    """What a run produced (times in seconds from the start of the workload).

    ``records``: one row per arrival (``llm_workload.LLM_RECORD_COLUMNS``); ``series``:
    every replica not gone, every ``sample_s`` (``SERIES_COLUMNS``); ``replica_counts``:
    a row whenever the counts change (``REPLICA_COUNT_COLUMNS``, a step function; a
    drained replica's exit shows at the next sample or tick); ``steps``: engine steps over
    all replicas; ``replicas``: each replica's life cycle, with the exact ``removed_s``
    (its last request's end, or the drain start if it was idle)."""

    records: pd.DataFrame
    series: pd.DataFrame
    replica_counts: pd.DataFrame
    steps: int
    end_time_s: float
    controller_calls: int = 0
    replicas: list[dict[str, Any]] = field(default_factory=list)  # pod, created/ready/removed


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


def _series_frame(rows: dict[str, list]) -> pd.DataFrame:
    dtypes = {
        "time_s": "float64",
        "pod": "string",
        "state": "string",
        "ready": "bool",
        "running": "int64",
        "waiting": "int64",
        "kv_usage": "float64",
    }
    return pd.DataFrame({c: pd.Series(rows[c], dtype=dtypes[c]) for c in SERIES_COLUMNS})
