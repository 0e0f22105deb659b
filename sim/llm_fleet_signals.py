"""What an LLM fleet (``sim.llm_fleet``) shows its controller and returns: the replica
life-cycle states, one replica's engine with its vLLM-style counters and histograms
(``LlmReplica``), the signals a ``Controller`` reads (``ReplicaSignals``,
``FleetSignals``) and a run's result (``LlmFleetResult``, ``SERIES_COLUMNS``,
``REPLICA_COUNT_COLUMNS``).

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

import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import pandas as pd

from kservebench.llm.engine import Engine
from kservebench.llm.request import RequestResult
from kservebench.llm.vllm_metrics import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS

# Replica life cycle (see ``sim.llm_fleet``).
PENDING, READY, DRAINING, GONE = "pending", "ready", "draining", "gone"

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
