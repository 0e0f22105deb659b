"""Fit the engine model's step coefficients and request overheads to a measured vLLM run.

Pure: records in (a DataFrame with the loadgen record columns), a ``Calibration`` out.
Holds the fit (``calibrate``, ``Calibration``, ``FitDiagnostics``, ``default_free``); the
measured run and its replay (``EngineSettings``, ``Trace``, ``trace_from_records``,
``cache_config_from_metrics``, ``replay``, ``Replay``, ``latency_errors``) live in
``kservebench.llm.replay`` and are re-exported here.

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
from kservebench.llm.replay import (
    DECODE_FROM,
    REQUIRED_COLUMNS,
    EngineSettings,
    Replay,
    Trace,
    cache_config_from_metrics,
    latency_errors,
    relative_error,
    replay,
    trace_from_records,
)
from kservebench.llm.request import RequestOverheads
from kservebench.llm.roofline import StepCoefficients, StepTimeModel, fit_coefficients
from kservebench.llm.variants import Variant

FORMAT = 1  # version of the JSON written by Calibration.to_dict
COEFFICIENT_NAMES = tuple(f.name for f in fields(StepCoefficients))
OVERHEAD_NAMES = ("queue_entry_s", "per_prompt_token_s", "finish_s")
TTFT_ROWS = ("idle", "all")  # whose TTFT rows enter the step fit
MIN_IDLE_REQUESTS = 3  # fewer idle requests than this: the entry overhead uses them all


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


__all__ = [
    "DECODE_FROM",
    "REQUIRED_COLUMNS",
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
