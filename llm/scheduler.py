"""The scheduler of the vLLM V1 engine model: continuous batching, chunked prefill, paged KV.

Each step the scheduler fills a token budget (``max_num_batched_tokens``) in vLLM V1's
order: one token for every running request that is decoding, then the next chunk of running
requests still prefilling, then (only if nothing was preempted this step) new requests from
the head of the waiting queue while fewer than ``max_num_seqs`` run and their first chunk's
KV blocks are free. A request holds ceil(tokens / block_size) blocks and takes a new one
when its next token starts a block; if none is free, the most recently admitted running
request is preempted (recomputation: its blocks are freed and it goes back to the front of
the waiting queue, to be prefilled again over its prompt and the tokens it already
produced). The step's duration comes from a ``StepTimeModel``; its tokens appear at its end.

Divergences from vLLM, on purpose: no prefix caching, no speculative decoding, no
asynchronous scheduling, no null block (all ``num_gpu_blocks`` are usable); decode tokens
are scheduled before every prefill chunk (V1 walks running requests in admission order,
which is the same thing whenever only the newest requests are still prefilling).

Speed (a simulated hour of many replicas has millions of steps): decoding requests are not
touched each step. They all advance by one token per step, so the engine keeps their sums
(count, context tokens), a histogram of their positions within a block (which tells how
many new KV blocks a step needs in O(1)) and a heap of the steps at which they finish. A
run of pure-decode steps up to the next finish, arrival, KV shortage or time limit is then a
loop over step times only (``advance_to``); ``step`` does one step and lists its requests.
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque
from dataclasses import dataclass

from kservebench.errors import SpecError
from kservebench.llm.request import (
    DECODE,
    FINISHED,
    PREFILL,
    WAITING,
    Request,
    RequestOverheads,
)
from kservebench.llm.roofline import StepTimeModel


@dataclass(frozen=True)
class EngineConfig:
    """vLLM's scheduler and cache settings (the flags of the same names)."""

    num_gpu_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    # vLLM V1's `vllm serve` default on large-memory GPUs is 8192 (2048 on smaller ones)
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None  # None: only the KV cache bounds a request
    long_prefill_token_threshold: int = 0  # cap on one request's chunk per step (0: none)
    keep_step_log: bool = True  # step end times, from which every token's time follows
    fast_forward: bool = True  # batch runs of pure-decode steps (same results, faster)

    def __post_init__(self) -> None:
        for name in ("num_gpu_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SpecError(f"engine.{name}", value, "must be an integer >= 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # vLLM refuses this too: every running request must get its decode token
            raise SpecError(
                "engine.max_num_batched_tokens",
                self.max_num_batched_tokens,
                f"must be >= max_num_seqs ({self.max_num_seqs})",
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise SpecError("engine.max_model_len", self.max_model_len, "must be >= 2")
        if self.long_prefill_token_threshold < 0:
            raise SpecError(
                "engine.long_prefill_token_threshold",
                self.long_prefill_token_threshold,
                "must be >= 0",
            )


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step: what it computed and which requests it gave a token, finished or preempted.

    ``token_req_ids`` lists every request that got an output token at ``end_s`` (decodes,
    then prompts whose prefill completed); ``first_token_req_ids`` is the subset for which
    it was the first. An idle step (nothing to schedule) has ``num_seqs == 0``."""

    start_s: float
    duration_s: float
    num_seqs: int
    prefill_tokens: int
    decode_tokens: int
    token_req_ids: tuple[str, ...] = ()
    first_token_req_ids: tuple[str, ...] = ()
    finished_req_ids: tuple[str, ...] = ()
    preempted_req_ids: tuple[str, ...] = ()

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


class Scheduler:
    """The engine's state and its step mechanics; ``Engine`` adds the public interface."""

    def __init__(
        self,
        config: EngineConfig,
        step_time: StepTimeModel,
        overheads: RequestOverheads | None = None,
    ) -> None:
        self.config = config
        self.step_time = step_time
        self.overheads = overheads or RequestOverheads()
        self._step_fn = step_time.compile()
        self._bs = config.block_size
        self._total_blocks = config.num_gpu_blocks
        self._used_blocks = 0
        self._pending: list[tuple[float, int, Request]] = []  # not yet in the scheduler
        self._waiting: deque[Request] = deque()
        self._running: dict[str, Request] = {}  # insertion order = admission order
        self._prefilling: dict[str, Request] = {}  # the running ones still prefilling
        self._requests: dict[str, Request] = {}
        self._finished: list[Request] = []
        # aggregates of the decoding requests (valid as of self.steps)
        self._n_dec = 0
        self._dec_ctx = 0  # sum of their computed (cached) tokens
        self._block_pos = [0] * self._bs  # count by (computed - sync_step) % block_size
        self._finish_heap: list[tuple[int, int, int, Request]] = []  # (step, seq, version, r)
        self._dec_alloc_step = -1  # step whose decode blocks are already allocated
        self._seq = 0
        self._step_log = array("d")
        self.steps = 0  # steps executed
        self.clock_s = 0.0  # end of the last step: when the next one may start
        self._last_end_s = 0.0
        # vLLM counters (vllm:*_total)
        self.num_preemptions = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.request_success_total = 0

    # -- the scheduler --------------------------------------------------------------------

    def _release_pending(self, now_s: float) -> None:
        pending = self._pending
        while pending and pending[0][0] <= now_s:
            self._waiting.append(heapq.heappop(pending)[2])

    def _run_step(self, start: float, collect: bool) -> StepResult | None:
        cfg = self.config
        bs = self._bs
        budget = cfg.max_num_batched_tokens
        threshold = cfg.long_prefill_token_threshold
        preempted: list[Request] = []
        chunks: list[Request] = []
        chunk_ctx = chunk_pairs = prefill = 0

        # 1. one decode token for every decoding request
        need = self._block_pos[-self.steps % bs]
        if self._used_blocks + need <= self._total_blocks:
            self._used_blocks += need
        else:
            self._allocate_decodes_with_preemption(preempted)
        self._dec_alloc_step = self.steps
        budget -= self._n_dec

        # 2. the next chunk of running requests still prefilling
        for r in list(self._prefilling.values()):
            if budget <= 0:
                break
            if r.state != PREFILL:
                continue  # preempted by an earlier request's allocation in this loop
            q = min(r.prompt_tokens + r.generated - r.computed, budget)
            if threshold:
                q = min(q, threshold)
            new_blocks = -(-(r.computed + q) // bs) - r.blocks
            while self._used_blocks + new_blocks > self._total_blocks:
                victim = next(reversed(self._running.values()))
                self._preempt(victim, preempted)
                if victim is r:
                    break
            if r.state != PREFILL:
                break  # it preempted itself: it was the newest, nothing runs after it
            self._used_blocks += new_blocks
            r.blocks += new_blocks
            chunk_ctx += r.computed
            chunk_pairs += q * r.computed + q * (q + 1) // 2
            r.computed += q
            budget -= q
            prefill += q
            chunks.append(r)

        # 3. new requests, FCFS, only when nothing was preempted (as vLLM V1)
        if not preempted:
            waiting = self._waiting
            while waiting and budget > 0 and len(self._running) < cfg.max_num_seqs:
                r = waiting[0]
                q = min(r.prompt_tokens + r.generated, budget)
                if threshold:
                    q = min(q, threshold)
                blocks = -(-q // bs)
                if self._used_blocks + blocks > self._total_blocks:
                    break  # head-of-line: wait for blocks to be freed
                waiting.popleft()
                self._seq += 1
                r.seq = self._seq
                r.state = PREFILL
                self._running[r.req_id] = r
                self._prefilling[r.req_id] = r
                self._used_blocks += blocks
                r.blocks = blocks
                r.computed = q
                if r.scheduled_s is None:
                    r.scheduled_s = start
                chunk_pairs += q * (q + 1) // 2
                budget -= q
                prefill += q
                chunks.append(r)

        n_dec = self._n_dec
        seqs = n_dec + len(chunks)
        if seqs == 0:
            return None
        ctx = self._dec_ctx + chunk_ctx
        duration = self._step_fn(seqs, prefill, n_dec, ctx, self._dec_ctx + n_dec + chunk_pairs)
        end = start + duration
        token_ids = (
            [r.req_id for r in self._running.values() if r.state == DECODE] if collect else []
        )
        self._end_step(end)
        if n_dec:
            self._dec_ctx += n_dec
            self.generation_tokens_total += n_dec

        first_ids: list[str] = []
        finished: list[Request] = []
        for r in chunks:
            if r.state != PREFILL or r.computed < r.prompt_tokens + r.generated:
                continue  # a middle chunk of a long prompt: no token yet
            r.generated += 1
            self.generation_tokens_total += 1
            if collect:
                token_ids.append(r.req_id)
            if r.first_token_s is None:
                r.first_token_s = end
                self.prompt_tokens_total += r.prompt_tokens
                if collect:
                    first_ids.append(r.req_id)
            del self._prefilling[r.req_id]
            if r.generated >= r.max_tokens:
                r.segments.append((self.steps - 1, self.steps))
                self._finish(r, r.blocks, end)
                finished.append(r)
            else:
                self._join_decode(r)
        finished += self._pop_finishes(end)
        if not collect:
            return None
        return StepResult(
            start,
            duration,
            seqs,
            prefill,
            n_dec,
            tuple(token_ids),
            tuple(first_ids),
            tuple(r.req_id for r in finished),
            tuple(r.req_id for r in preempted),
        )

    def _allocate_decodes_with_preemption(self, preempted: list[Request]) -> None:
        """Decode allocation when the free blocks do not cover it: walk the decoding requests
        in admission order, preempting the newest running request while one needs a block."""
        bs = self._bs
        step = self.steps
        allocated = 0
        for r in list(self._running.values()):
            if r.state != DECODE:
                continue
            computed = r.prompt_tokens + r.gen_sync + step - r.sync_step - 1
            if computed % bs:
                continue  # its next token fits in the block it has
            while self._used_blocks + allocated >= self._total_blocks:
                victim = next(reversed(self._running.values()))
                self._preempt(victim, preempted)
                if victim is r:
                    break
            if r.state != DECODE:
                break
            allocated += 1
        self._used_blocks += allocated

    def _decode_run(self, limit_s: float) -> bool:
        """Run consecutive pure-decode steps that start before ``limit_s`` as one loop over
        step times; False when the next step is not pure decode (or needs a preemption)."""
        n = self._n_dec
        if not n or self._prefilling:
            return False
        bs, total = self._bs, self._total_blocks
        pos = self._block_pos
        step0 = self.steps
        used = self._used_blocks + pos[-step0 % bs]
        if used > total:
            return False
        waiting = self._waiting
        if waiting and len(self._running) < self.config.max_num_seqs:
            head = waiting[0]
            q = min(head.prompt_tokens + head.generated, self.config.max_num_batched_tokens - n)
            if self.config.long_prefill_token_threshold:
                q = min(q, self.config.long_prefill_token_threshold)
            if used + -(-q // bs) <= total:
                return False  # the head of the queue is admitted this step
        heap = self._finish_heap
        while heap[0][2] != heap[0][3].version:
            heapq.heappop(heap)
        steps_left = heap[0][0] - step0
        fn = self._step_fn
        log_append = self._step_log.append if self.config.keep_step_log else None
        ctx = self._dec_ctx
        t = self.clock_s
        j = 0
        used = self._used_blocks
        while j < steps_left and t < limit_s:
            need = pos[-(step0 + j) % bs]
            if used + need > total:
                break
            used += need
            t += fn(n, 0, n, ctx, ctx + n)
            if log_append is not None:
                log_append(t)
            ctx += n
            j += 1
        if j == 0:
            return False
        self.steps += j
        self._used_blocks = used
        self._dec_ctx = ctx
        self.generation_tokens_total += n * j
        self.clock_s = self._last_end_s = t
        self._pop_finishes(t)
        return True

    # -- state changes --------------------------------------------------------------------

    def _end_step(self, end: float) -> None:
        self.steps += 1
        self.clock_s = self._last_end_s = end
        if self.config.keep_step_log:
            self._step_log.append(end)

    def _join_decode(self, r: Request) -> None:
        """``r`` got a token at the end of the step just done and decodes from now on."""
        r.state = DECODE
        r.sync_step = self.steps
        r.gen_sync = r.generated
        self._block_pos[(r.computed - self.steps) % self._bs] += 1
        self._n_dec += 1
        self._dec_ctx += r.computed
        heapq.heappush(
            self._finish_heap,
            (self.steps + r.max_tokens - r.generated, r.seq, r.version, r),
        )

    def _leave_decode(self, r: Request) -> None:
        """Bring ``r``'s counters up to date and take it out of the decoding aggregates."""
        elapsed = self.steps - r.sync_step
        r.generated = r.gen_sync + elapsed
        r.computed = r.prompt_tokens + r.generated - 1
        r.blocks = -(-r.computed // self._bs)
        r.last_token_s = self._last_end_s
        r.segments.append((r.sync_step - 1, self.steps))
        self._block_pos[(r.computed - self.steps) % self._bs] -= 1
        self._n_dec -= 1
        self._dec_ctx -= r.computed
        r.version += 1

    def _pop_finishes(self, end: float) -> list[Request]:
        heap = self._finish_heap
        done: list[Request] = []
        while heap and heap[0][0] <= self.steps:
            _, _, version, r = heapq.heappop(heap)
            if version != r.version:
                continue  # preempted since the entry was pushed
            self._leave_decode(r)
            self._finish(r, r.blocks, end)
            done.append(r)
        return done

    def _finish(self, r: Request, blocks: int, end: float) -> None:
        del self._running[r.req_id]
        self._used_blocks -= blocks
        r.blocks = 0
        r.state = FINISHED
        r.last_token_s = r.finished_s = end
        self.request_success_total += 1
        self._finished.append(r)

    def _preempt(self, r: Request, preempted: list[Request]) -> None:
        if r.state == DECODE:
            self._leave_decode(r)
            blocks = r.blocks
            if self._dec_alloc_step == self.steps and r.computed % self._bs == 0:
                blocks += 1  # the block allocated for this step's token, not used now
        else:
            blocks = r.blocks
            del self._prefilling[r.req_id]
        del self._running[r.req_id]
        self._used_blocks -= blocks
        r.state = WAITING
        r.computed = r.blocks = 0
        r.num_preemptions += 1
        self.num_preemptions += 1
        self._waiting.appendleft(r)
        preempted.append(r)
