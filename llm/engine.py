"""One vLLM engine (one replica) as a discrete-time model: its public interface.

The scheduling rules, the KV cache and the step mechanics are in ``kservebench.llm.
scheduler``; the step durations come from ``kservebench.llm.roofline``. Here: adding
requests, driving the engine (step by step in real time, or ``advance_to`` a time in a
simulation), the gauges and counters vLLM exports, and per-request results.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence

import numpy as np

from kservebench.errors import SpecError
from kservebench.llm.request import DECODE, Arrival, Request, RequestResult
from kservebench.llm.scheduler import EngineConfig, Scheduler, StepResult

__all__ = ["Engine", "EngineConfig", "StepResult", "run_until_idle"]


class Engine(Scheduler):
    """One vLLM engine (one replica) as a discrete-time model.

    Drive it either step by step (``step(now_s)``, for an emulator running in real time) or
    with ``advance_to(t_s)`` (a simulator: runs every step that starts before ``t_s``,
    jumping over idle time to the next request)."""

    # -- gauges ---------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        """Requests in the scheduler's waiting queue (new and preempted)."""
        return len(self._waiting)

    @property
    def num_pending(self) -> int:
        """Requests added but still in their entry delay (tokenization), not yet waiting."""
        return len(self._pending)

    @property
    def used_blocks(self) -> int:
        return self._used_blocks

    @property
    def kv_cache_usage(self) -> float:
        return self._used_blocks / self._total_blocks

    @property
    def has_work(self) -> bool:
        return bool(self._running or self._waiting or self._pending)

    @property
    def next_ready_s(self) -> float | None:
        """When the earliest pending request enters the scheduler (None if none pending)."""
        return self._pending[0][0] if self._pending else None

    # -- requests -------------------------------------------------------------------------

    def add_request(
        self, req_id: str, prompt_tokens: int, max_tokens: int, arrival_s: float
    ) -> None:
        """Queue a request that arrived at ``arrival_s``; exactly ``max_tokens`` are produced."""
        if req_id in self._requests:
            raise SpecError("req_id", req_id, "is already in the engine")
        if not isinstance(prompt_tokens, int) or prompt_tokens < 1:
            raise SpecError("prompt_tokens", prompt_tokens, "must be an integer >= 1")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise SpecError("max_tokens", max_tokens, "must be an integer >= 1")
        if not math.isfinite(arrival_s):
            raise SpecError("arrival_s", arrival_s, "must be a finite time")
        limit = self.config.max_model_len
        if limit is not None and prompt_tokens + max_tokens > limit:
            raise SpecError(
                "max_tokens", max_tokens, f"prompt + max_tokens exceeds max_model_len {limit}"
            )
        blocks = -(-(prompt_tokens + max_tokens - 1) // self._bs)
        if blocks > self._total_blocks:
            raise SpecError(
                "max_tokens",
                max_tokens,
                f"the request needs {blocks} KV blocks, the cache has {self._total_blocks}",
            )
        queued_s = arrival_s + self.overheads.entry_delay_s(prompt_tokens)
        r = Request(req_id, prompt_tokens, max_tokens, arrival_s, queued_s)
        self._requests[req_id] = r
        self._seq += 1
        heapq.heappush(self._pending, (queued_s, self._seq, r))

    def request(self, req_id: str) -> RequestResult:
        """The request's timestamps so far (client-visible, overheads included)."""
        r = self._requests.get(req_id)
        if r is None:
            raise SpecError("req_id", req_id, "is not in the engine")
        return self._result(r)

    def results(self) -> list[RequestResult]:
        """Every request the engine holds, in the order they were added."""
        return [self._result(r) for r in self._requests.values()]

    def take_finished(self) -> list[RequestResult]:
        """Requests finished since the last call, forgotten by the engine (bounded memory)."""
        done, self._finished = self._finished, []
        for r in done:
            self._requests.pop(r.req_id, None)
        return [self._result(r) for r in done]

    def token_times(self, req_id: str) -> np.ndarray:
        """Engine-side time of each output token of the request (step ends)."""
        if not self.config.keep_step_log:
            raise SpecError("engine.keep_step_log", False, "token times need the step log")
        r = self._requests[req_id]
        segments = list(r.segments)
        if r.state == DECODE:
            segments.append((r.sync_step - 1, self.steps))
        if not segments:
            return np.empty(0)
        return np.concatenate([np.array(self._step_log[a:b]) for a, b in segments])

    def itls(self, req_id: str) -> np.ndarray:
        """Gaps between consecutive output tokens (vLLM's inter_token_latency samples)."""
        return np.diff(self.token_times(req_id))

    def step_end_times(self) -> np.ndarray:
        return np.array(self._step_log)

    # -- driving --------------------------------------------------------------------------

    def step(self, now_s: float) -> StepResult:
        """Run one step starting at ``now_s`` (or when the previous one ended, if later)."""
        start = max(now_s, self.clock_s)
        self._release_pending(start)
        result = self._run_step(start, collect=True)
        return result or StepResult(start, 0.0, 0, 0, 0)

    def advance_to(self, t_s: float) -> None:
        """Run every step that starts before ``t_s``; when idle, jump to the next request."""
        while True:
            self._release_pending(self.clock_s)
            if not self._running and not self._waiting:
                if self._pending and self._pending[0][0] < t_s:
                    self.clock_s = max(self.clock_s, self._pending[0][0])
                    continue
                return
            if self.clock_s >= t_s:
                return
            limit = min(t_s, self._pending[0][0]) if self._pending else t_s
            if self.config.fast_forward and self._decode_run(limit):
                continue
            steps = self.steps
            self._run_step(self.clock_s, collect=False)
            if self.steps == steps:  # nothing scheduled: only right after a preemption
                self._run_step(self.clock_s, collect=False)
                if self.steps == steps:
                    raise RuntimeError("engine made no progress (a scheduler bug)")

    def _result(self, r: Request) -> RequestResult:
        oh = self.overheads
        generated, last = r.generated, r.last_token_s
        if r.state == DECODE:
            generated = r.gen_sync + self.steps - r.sync_step
            last = self._last_end_s
        delivery = oh.token_delivery_s
        return RequestResult(
            req_id=r.req_id,
            prompt_tokens=r.prompt_tokens,
            max_tokens=r.max_tokens,
            output_tokens=generated,
            arrival_s=r.arrival_s,
            queued_s=r.queued_s,
            scheduled_s=r.scheduled_s,
            first_token_s=None if r.first_token_s is None else r.first_token_s + delivery,
            last_token_s=None if last is None else last + delivery,
            finished_s=None if r.finished_s is None else r.finished_s + delivery + oh.finish_s,
            num_preemptions=r.num_preemptions,
        )


def run_until_idle(
    engine: Engine,
    arrivals: Iterable[Arrival | Sequence],
    until_s: float = math.inf,
) -> list[RequestResult]:
    """Feed a workload to ``engine`` and run it (time advancing by each step's duration,
    jumping over idle gaps) until every request finished or ``until_s``; one result per
    arrival, in the order given. Arrivals are ``Arrival`` or (req_id, prompt_tokens,
    max_tokens, arrival_s) tuples."""
    ids = []
    for a in arrivals:
        req_id, prompt_tokens, max_tokens, arrival_s = (
            (a.req_id, a.prompt_tokens, a.max_tokens, a.arrival_s) if isinstance(a, Arrival) else a
        )
        engine.add_request(req_id, int(prompt_tokens), int(max_tokens), float(arrival_s))
        ids.append(req_id)
    engine.advance_to(until_s)
    return [engine.request(i) for i in ids]
