"""Requests inside the engine model and what comes out for each: timestamps and latencies.

A request is one object with counters, never one object per token: token times are kept as
index ranges into the engine's log of step end times (``segments``), so a simulated hour of
many replicas stays cheap and every token's time can still be recovered.
"""

from __future__ import annotations

from dataclasses import dataclass

WAITING, PREFILL, DECODE, FINISHED = range(4)


@dataclass(frozen=True)
class RequestOverheads:
    """Costs outside the engine's steps, per request (seconds; fitted like the step model).

    ``queue_entry_s`` + ``per_prompt_token_s`` * prompt: HTTP handling and tokenization
    before the scheduler sees the request (it cannot be scheduled earlier).
    ``token_delivery_s``: from a token's step end to the client (detokenize, stream); it
    moves TTFT and end-to-end latency, not the gaps between tokens.
    ``finish_s``: after the last token until the response is complete."""

    queue_entry_s: float = 0.0
    per_prompt_token_s: float = 0.0
    token_delivery_s: float = 0.0
    finish_s: float = 0.0

    def entry_delay_s(self, prompt_tokens: int) -> float:
        return self.queue_entry_s + self.per_prompt_token_s * prompt_tokens


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request of a workload: ``max_tokens`` are generated exactly (ignore_eos)."""

    req_id: str
    prompt_tokens: int
    max_tokens: int
    arrival_s: float


class Request:
    """Engine-side state of one request; the engine owns and mutates it.

    While decoding, ``generated`` and the computed-token count are not updated every step:
    they are ``gen_sync`` at ``sync_step`` plus one per step since (every decoding sequence
    gets exactly one token per step), materialized when the request changes state."""

    __slots__ = (
        "arrival_s",
        "blocks",
        "computed",
        "finished_s",
        "first_token_s",
        "gen_sync",
        "generated",
        "last_token_s",
        "max_tokens",
        "num_preemptions",
        "prompt_tokens",
        "queued_s",
        "req_id",
        "scheduled_s",
        "segments",
        "seq",
        "state",
        "sync_step",
        "version",
    )

    def __init__(
        self, req_id: str, prompt_tokens: int, max_tokens: int, arrival_s: float, queued_s: float
    ) -> None:
        self.req_id = req_id
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.arrival_s = arrival_s
        self.queued_s = queued_s  # enters the scheduler's waiting queue
        self.state = WAITING
        self.computed = 0  # tokens whose KV is in the cache (outside DECODE)
        self.generated = 0  # output tokens so far (outside DECODE)
        self.blocks = 0  # KV blocks held (outside DECODE)
        self.gen_sync = 0
        self.sync_step = 0
        self.version = 0  # bumps when a finish-heap entry becomes stale
        self.seq = 0  # admission order tiebreak
        self.scheduled_s: float | None = None
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.finished_s: float | None = None
        self.num_preemptions = 0
        # [first step index, end step index) runs of steps that each gave this request a token
        self.segments: list[tuple[int, int]] = []


@dataclass(frozen=True, slots=True)
class RequestResult:
    """What a client and vLLM's histograms see of one request (times in seconds).

    Client-visible times include ``RequestOverheads``; ``None`` where the request has not
    got that far. Names follow vLLM's metrics: queue time is waiting in the scheduler
    until first scheduled, prefill time is first scheduled until first token, decode time
    is first until last token."""

    req_id: str
    prompt_tokens: int
    max_tokens: int
    output_tokens: int
    arrival_s: float
    queued_s: float
    scheduled_s: float | None
    first_token_s: float | None
    last_token_s: float | None
    finished_s: float | None
    num_preemptions: int

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float | None:
        return None if self.finished_s is None else self.finished_s - self.arrival_s

    @property
    def queue_time_s(self) -> float | None:
        return None if self.scheduled_s is None else self.scheduled_s - self.queued_s

    @property
    def prefill_time_s(self) -> float | None:
        if self.scheduled_s is None or self.first_token_s is None:
            return None
        return self.first_token_s - self.scheduled_s

    @property
    def decode_time_s(self) -> float | None:
        if self.first_token_s is None or self.last_token_s is None:
            return None
        return self.last_token_s - self.first_token_s

    @property
    def tpot_s(self) -> float | None:
        """Mean gap between output tokens (vLLM's request_time_per_output_token)."""
        if self.output_tokens < 2 or self.decode_time_s is None:
            return None
        return self.decode_time_s / (self.output_tokens - 1)
