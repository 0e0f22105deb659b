"""An LLM workload for the simulated fleet: arrival times and each request's token counts.

Arrivals come from the load generator's own patterns and open-loop arrival processes
(``kservebench.loadgen.arrivals.arrival_offsets``: poisson or constant), so a simulated and
a measured run offer the same traffic. Token counts come from a length sampler, any
``(rng, n) -> (prompt_tokens, max_tokens)`` callable (a dataset's length distribution, a
replayed trace); ``fixed_lengths`` is the trivial one. ``max_tokens`` are generated exactly
(ignore_eos), as the engine model does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kservebench.errors import SpecError
from kservebench.llm.engine import EngineConfig
from kservebench.llm.request import RequestResult
from kservebench.loadgen.arrivals import arrival_offsets
from kservebench.records import LLM_COLUMNS, RECORD_COLUMNS, coerce_records

# After the shared record columns, the load generator's streaming ones (records.LLM_COLUMNS:
# ttft_ms, itl_ms = mean gap between tokens, tpot_ms = (e2e - ttft) / (output_tokens - 1),
# token counts), then what only a simulation knows: the time held at the router (no
# replica ready) and the engine's preemptions of the request.
LLM_EXTRA_COLUMNS = ("router_wait_ms", "num_preemptions")
LLM_RECORD_COLUMNS = (*RECORD_COLUMNS, *LLM_COLUMNS, *LLM_EXTRA_COLUMNS)

LengthSampler = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def fixed_lengths(prompt_tokens: int = 256, max_tokens: int = 128) -> LengthSampler:
    """Every request the same: ``prompt_tokens`` in, ``max_tokens`` out."""

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full(n, prompt_tokens, dtype=np.int64), np.full(n, max_tokens, dtype=np.int64)

    return sample


@dataclass(frozen=True)
class LlmWorkload:
    """Requests in arrival order: seconds from the start and token counts (one per request).

    ``duration_s`` is how long the traffic lasts (the pattern's duration; default the last
    arrival); ``pattern`` and ``phases`` label the records as the load generator does."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    max_tokens: np.ndarray
    duration_s: float | None = None
    pattern: str = ""
    phases: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrival = np.asarray(self.arrival_s, dtype=float).reshape(-1)
        prompt = np.asarray(self.prompt_tokens).reshape(-1)
        output = np.asarray(self.max_tokens).reshape(-1)
        n = len(arrival)
        for name, values in (("prompt_tokens", prompt), ("max_tokens", output)):
            if len(values) != n:
                raise SpecError(f"workload.{name}", len(values), f"need one per arrival ({n})")
            if n and (not np.all(values == np.round(values)) or values.min() < 1):
                raise SpecError(f"workload.{name}", values.min(), "must be integers >= 1")
        if n and (not np.all(np.isfinite(arrival)) or arrival.min() < 0):
            raise SpecError("workload.arrival_s", arrival.min(), "must be finite and >= 0")
        if n > 1 and np.any(np.diff(arrival) < 0):
            raise SpecError("workload.arrival_s", "unsorted", "must be in arrival order")
        if self.phases is not None and len(self.phases) != n:
            raise SpecError("workload.phases", len(self.phases), f"need one per arrival ({n})")
        object.__setattr__(self, "arrival_s", arrival)
        object.__setattr__(self, "prompt_tokens", prompt.astype(np.int64))
        object.__setattr__(self, "max_tokens", output.astype(np.int64))
        if self.duration_s is None:
            object.__setattr__(self, "duration_s", float(arrival[-1]) if n else 0.0)

    def __len__(self) -> int:
        return len(self.arrival_s)


def workload_from_pattern(
    pattern: Any,
    arrival: str = "poisson",
    lengths: LengthSampler | None = None,
    seed: int = 0,
) -> LlmWorkload:
    """The open-loop arrivals of a loadgen ``pattern`` with token counts from ``lengths``
    (default ``fixed_lengths()``). ``seed`` drives the arrivals (as ``arrival_offsets``)
    and, through a stream of its own, the lengths."""
    times = arrival_offsets(pattern, arrival, seed)
    sampler = lengths or fixed_lengths()
    prompt, output = sampler(np.random.default_rng([seed, 1]), len(times))
    phases = np.array([pattern.phase(float(t)) for t in times.tolist()], dtype=object)
    return LlmWorkload(
        arrival_s=times,
        prompt_tokens=prompt,
        max_tokens=output,
        duration_s=float(pattern.duration_s),
        pattern=str(getattr(pattern, "name", "")),
        phases=phases,
    )


def check_fits(workload: LlmWorkload, config: EngineConfig) -> None:
    """Refuse, before a run, a request no replica of ``config`` could ever hold (the engine
    would refuse it only when it arrives)."""
    cfg = config
    total = workload.prompt_tokens + workload.max_tokens
    if cfg.max_model_len is not None and len(total) and total.max() > cfg.max_model_len:
        k = int(np.argmax(total > cfg.max_model_len))
        raise SpecError(
            f"workload.max_tokens[{k}]",
            int(workload.max_tokens[k]),
            f"prompt + max_tokens exceeds max_model_len {cfg.max_model_len}",
        )
    blocks = -(-(total - 1) // cfg.block_size)
    if len(blocks) and blocks.max() > cfg.num_gpu_blocks:
        k = int(np.argmax(blocks > cfg.num_gpu_blocks))
        raise SpecError(
            f"workload.max_tokens[{k}]",
            int(workload.max_tokens[k]),
            f"the request needs {int(blocks[k])} KV blocks, a replica has {cfg.num_gpu_blocks}",
        )


def build_records(
    workload: LlmWorkload,
    results: Sequence[RequestResult | None],
    dispatch_s: Sequence[float],
    pods: Sequence[str],
    cold: Sequence[bool],
    model: str,
) -> pd.DataFrame:
    """One record row per arrival (``LLM_RECORD_COLUMNS``; times in seconds from the start
    of the workload). ``results[k]`` is the engine's result of request k, None if it did not
    finish; the engine saw it at ``dispatch_s[k]``, the client sent it at its arrival, and
    every latency here counts from the arrival."""
    n = len(workload)
    nan = math.nan
    latency, ttft, itl, tpot, output = ([nan] * n for _ in range(5))
    preemptions = [0] * n
    sent_s = workload.arrival_s.tolist()
    for k, res in enumerate(results):
        if res is None or res.finished_s is None or res.first_token_s is None:
            continue
        sent = sent_s[k]
        latency[k] = (res.finished_s - sent) * 1000.0
        ttft[k] = (res.first_token_s - sent) * 1000.0
        output[k] = res.output_tokens
        preemptions[k] = res.num_preemptions
        if res.output_tokens > 1 and res.last_token_s is not None:
            gaps = res.output_tokens - 1
            itl[k] = (res.last_token_s - res.first_token_s) * 1000.0 / gaps
            tpot[k] = (res.finished_s - res.first_token_s) * 1000.0 / gaps
    done = np.array([r is not None and r.finished_s is not None for r in results], dtype=bool)
    arrival = workload.arrival_s
    frame = coerce_records(
        pd.DataFrame(
            {
                "intended_s": arrival,
                "sent_s": arrival,
                "send_lag_ms": 0.0,
                "latency_ms": latency,
                "status": np.where(done, 200, 0),
                "ok": done,
                "error": np.where(done, "", "unfinished"),
                "bytes": 0,
                "model": model,
                "pattern": workload.pattern,
                "phase": "" if workload.phases is None else workload.phases,
                "pod": pods,
                "unfinished": ~done,
                "cold": np.asarray(cold, dtype=bool),
                "ttft_ms": ttft,
                "itl_ms": itl,
                "tpot_ms": tpot,
                "prompt_tokens": workload.prompt_tokens,  # sent, so known even if unfinished
                "output_tokens": output,  # unknown (<NA>) when unfinished
            }
        ),
        llm=True,
    )
    frame["router_wait_ms"] = (np.asarray(dispatch_s, dtype=float) - arrival) * 1000.0
    frame["num_preemptions"] = np.asarray(preemptions, dtype=np.int64)
    return frame
