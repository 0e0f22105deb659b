"""How well the engine model reproduces a measured vLLM run. Pure: records (and optionally
the sampled vLLM gauges) in, a ``Fidelity`` with one ``Figure`` per check out.

The prediction replays the measured arrivals (send times, prompt and output tokens)
through the engine with calibrated coefficients and overheads. Figures and the issue's
thresholds (BLIS, the best published simulator, reports median errors of 17.6 % on mean
TTFT and 7.1 % on mean ITL over 36 held-out experiments):

- ``ttft_mean``, ``ttft_p90``: |predicted - measured| / measured, within 20 %;
- ``itl_mean``: the mean over requests of each one's mean gap between tokens, within 10 %;
- ``running``, ``waiting``: requests running and waiting over time, the mean absolute
  difference within 1 request.

Gauges: with vLLM's ``vllm:num_requests_running`` / ``waiting`` sampled during the run
(``gauges``: columns ``t_s`` (epoch), ``running``, ``waiting``), each sample is compared
with the replay's engine gauges at the same time. Without them both sides are rebuilt from
the records the same way: a request is *waiting* from its send to its first token and
*running* from its first token to its last. That counts the entry delay and the prefill
step as waiting (vLLM counts a request as running from the step that schedules it, and
does not count it at all before it reaches the scheduler), so the absolute levels are off
by about (arrival rate x (entry + prefill)); the difference between the two sides still
measures the schedule. Only samples while some request of the records is in flight count,
so idle time, where both sides are trivially 0, does not dilute the average.

``quiet_requests`` picks the parts of a run on a shared machine that were not disturbed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kservebench.errors import SpecError
from kservebench.llm.calibrate import Calibration
from kservebench.llm.replay import Replay, Trace, relative_error, replay, trace_from_records
from kservebench.llm.roofline import StepTimeModel

THRESHOLDS: dict[str, float] = {
    "ttft_mean": 0.20,
    "ttft_p90": 0.20,
    "itl_mean": 0.10,
    "running": 1.0,
    "waiting": 1.0,
}
GAUGE_NAMES = {"running": "vllm:num_requests_running", "waiting": "vllm:num_requests_waiting"}


@dataclass(frozen=True)
class Figure:
    """One compared figure; ``error`` is relative for latencies, in requests for gauges."""

    name: str
    measured: float
    predicted: float
    error: float
    threshold: float | None
    unit: str  # "ms" or "requests"

    @property
    def relative(self) -> bool:
        return self.unit == "ms"

    @property
    def passed(self) -> bool | None:
        if self.threshold is None:
            return None
        return bool(math.isfinite(self.error) and self.error <= self.threshold)


@dataclass(frozen=True)
class Fidelity:
    """The figures of one comparison and where the gauges came from."""

    figures: tuple[Figure, ...]
    gauges_source: str  # "metrics" or "records"
    requests: int
    samples: int

    @property
    def passed(self) -> bool:
        return all(f.passed is not False for f in self.figures)

    def figure(self, name: str) -> Figure:
        for f in self.figures:
            if f.name == name:
                return f
        raise KeyError(name)

    def errors(self) -> dict[str, float]:
        return {f.name: f.error for f in self.figures}

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "gauges_source": self.gauges_source,
            "requests": self.requests,
            "samples": self.samples,
            "figures": {
                f.name: {
                    "measured": f.measured,
                    "predicted": f.predicted,
                    "error": f.error,
                    "threshold": f.threshold,
                    "unit": f.unit,
                    "passed": f.passed,
                }
                for f in self.figures
            },
        }

    def markdown(self) -> str:
        lines = [
            "| figure | measured | predicted | error | threshold | verdict |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for f in self.figures:
            if f.relative:
                values = f"{f.measured:.2f} ms | {f.predicted:.2f} ms | {_percent(f.error)}"
                limit = "" if f.threshold is None else f"{f.threshold:.0%}"
            else:
                values = f"{f.measured:.2f} | {f.predicted:.2f} | {f.error:.2f}"
                limit = "" if f.threshold is None else f"{f.threshold:g}"
            verdict = {True: "pass", False: "FAIL", None: ""}[f.passed]
            lines.append(f"| {_label(f)} | {values} | {limit} | {verdict} |")
        return "\n".join(lines) + "\n"


def _percent(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.1%}"


def _label(f: Figure) -> str:
    return {
        "ttft_mean": "TTFT mean",
        "ttft_p90": "TTFT p90",
        "itl_mean": "ITL mean",
        "e2e_mean": "E2E mean",
        "running": "running (mean |diff|)",
        "waiting": "waiting (mean |diff|)",
    }.get(f.name, f.name)


def compare(
    records: pd.DataFrame | Trace,
    calibration: Calibration,
    model: StepTimeModel,
    gauges: pd.DataFrame | None = None,
    thresholds: Mapping[str, float] = THRESHOLDS,
) -> Fidelity:
    """Replay ``records`` with ``calibration`` (``model``: its step-time model, i.e.
    ``calibration.step_time_model(variant)``) and compare; see the module docstring."""
    trace = records if isinstance(records, Trace) else trace_from_records(records)
    rep = replay(trace, calibration.settings.engine_config(), model, calibration.overheads)
    return compare_replay(trace, rep, gauges, thresholds)


def compare_replay(
    trace: Trace,
    rep: Replay,
    gauges: pd.DataFrame | None = None,
    thresholds: Mapping[str, float] = THRESHOLDS,
) -> Fidelity:
    """The figures of a replay already run on ``trace``."""
    figures = []
    for name, measured, predicted, stat in (
        ("ttft_mean", trace.ttft_s, rep.ttft_s, np.mean),
        ("ttft_p90", trace.ttft_s, rep.ttft_s, _p90),
        ("itl_mean", trace.itl_s, rep.itl_s, np.mean),
        ("e2e_mean", trace.e2e_s, rep.e2e_s, np.mean),
    ):
        both = np.isfinite(measured) & np.isfinite(predicted)
        m = float(stat(measured[both])) * 1000 if both.any() else math.nan
        p = float(stat(predicted[both])) * 1000 if both.any() else math.nan
        figures.append(Figure(name, m, p, relative_error(m, p), thresholds.get(name), "ms"))
    times, measured_g, predicted_g, source = _gauge_pairs(trace, rep, gauges)
    for name in ("running", "waiting"):
        m, p = measured_g[name], predicted_g[name]
        error = float(np.mean(np.abs(m - p))) if len(times) else math.nan
        mean_m = float(np.mean(m)) if len(times) else math.nan
        mean_p = float(np.mean(p)) if len(times) else math.nan
        figures.append(Figure(name, mean_m, mean_p, error, thresholds.get(name), "requests"))
    return Fidelity(tuple(figures), source, len(trace), len(times))


def _p90(values: np.ndarray) -> float:
    return float(np.percentile(values, 90))


def busy_intervals(trace: Trace) -> np.ndarray:
    """Merged [start, end) spans (trace time) while some request is in flight."""
    start = trace.arrival_s
    end = trace.arrival_s + np.where(
        np.isfinite(trace.e2e_s), trace.e2e_s, trace.ttft_s + trace.decode_s
    )
    order = np.argsort(start, kind="stable")
    spans: list[list[float]] = []
    for s, e in zip(start[order], end[order], strict=True):
        if spans and s <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([float(s), float(e)])
    return np.array(spans).reshape(-1, 2)


def _inside(times: np.ndarray, spans: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(spans[:, 0], times, side="right") - 1
    return (idx >= 0) & (times < spans[np.maximum(idx, 0), 1])


def _gauge_pairs(
    trace: Trace, rep: Replay, gauges: pd.DataFrame | None
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], str]:
    spans = busy_intervals(trace)
    if gauges is not None and len(gauges):
        for column in ("t_s", "running", "waiting"):
            if column not in gauges.columns:
                raise SpecError(f"gauges.{column}", None, "is missing")
        t = pd.to_numeric(gauges["t_s"], errors="coerce").to_numpy(dtype=float) - trace.start_s
        values = {
            n: pd.to_numeric(gauges[n], errors="coerce").to_numpy(dtype=float)
            for n in ("running", "waiting")
        }
        keep = np.isfinite(t) & np.isfinite(values["running"]) & np.isfinite(values["waiting"])
        keep &= _inside(t, spans)
        running, waiting = rep.gauges_at(t[keep])
        measured = {n: v[keep] for n, v in values.items()}
        return t[keep], measured, {"running": running, "waiting": waiting}, "metrics"
    # no samples: rebuild both sides from request timestamps on a 0.25 s grid
    if not len(spans):
        empty = np.empty(0)
        return (
            empty,
            {"running": empty, "waiting": empty},
            {"running": empty, "waiting": empty},
            ("records"),
        )
    grid = np.arange(spans[0, 0], spans[-1, 1], 0.25)
    grid = grid[_inside(grid, spans)]
    first_m = trace.arrival_s + trace.ttft_s
    last_m = first_m + trace.decode_s
    first_p = np.array([_time(r.first_token_s) for r in rep.results])
    last_p = np.array([_time(r.last_token_s) for r in rep.results])
    arrival_p = np.array([r.arrival_s for r in rep.results])
    measured = _states(grid, trace.arrival_s, first_m, last_m)
    predicted = _states(grid, arrival_p, first_p, last_p)
    return grid, measured, predicted, "records"


def _time(x: float | None) -> float:
    return math.nan if x is None else x


def _states(
    grid: np.ndarray, sent: np.ndarray, first: np.ndarray, last: np.ndarray
) -> dict[str, np.ndarray]:
    t = grid[:, None]
    waiting = ((sent[None, :] <= t) & (t < first[None, :])).sum(axis=1)
    running = ((first[None, :] <= t) & (t < last[None, :])).sum(axis=1)
    return {"running": running.astype(float), "waiting": waiting.astype(float)}


def gauges_from_metrics(text: str) -> dict[str, float]:
    """vLLM's running and waiting gauges in one ``/metrics`` text (summed over engines;
    NaN when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {name: math.nan for name in GAUGE_NAMES}
    wanted = {metric: name for name, metric in GAUGE_NAMES.items()}
    for family in text_string_to_metric_families(text):
        name = wanted.get(family.name)
        if name is None:
            continue
        out[name] = float(sum(s.value for s in family.samples))
    return out


def quiet_requests(
    records: pd.DataFrame,
    gauges: pd.DataFrame | None = None,
    max_send_lag_ms: float = 25.0,
    min_itl_share: float = 0.2,
    max_foreign_cpu: float = 0.5,
    max_speed_change: float = 0.15,
) -> np.ndarray:
    """Which records belong to undisturbed busy periods (a mask over ``records``' rows).

    On a shared machine another process can take the CPU from the server or stall the
    client for tens to hundreds of ms. Signs of that, none of them using the model:

    - the client sent a request more than ``max_send_lag_ms`` after its intended time
      (``send_lag_ms``): its event loop was stalled, and so was its reading;
    - a stream's tokens arrived in one lump (its event ITL under ``min_itl_share`` of the
      median): the server or the client stalled;
    - other processes used more than ``max_foreign_cpu`` cores while the period ran
      (``gauges``' optional ``foreign_cpu`` column: cores used by processes other than the
      server and the client over the interval ending at ``t_s``);
    - the server ran at another speed: a burst (a period of 5 or more requests) whose
      median gap between tokens is more than ``max_speed_change`` off the median over the
      bursts (identical bursts of one run decode at the same pace on a steady machine).

    A busy period (requests overlapping in time, up to an idle engine) with any sign is left
    out whole, so that a replay of the rest still sees every request that shared the engine
    with them."""
    trace = trace_from_records(records)
    ok = records["ok"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    rows = np.flatnonzero(ok)[np.argsort(records.loc[ok, "sent_s"].to_numpy(), kind="stable")]
    disturbed = np.zeros(len(trace), dtype=bool)
    if "send_lag_ms" in records.columns:
        lag = pd.to_numeric(records["send_lag_ms"], errors="coerce").to_numpy(dtype=float)[rows]
        disturbed |= lag > max_send_lag_ms
    events = trace.event_itl_s  # a lump shows in the event times
    if np.isfinite(events).any():
        disturbed |= np.isfinite(events) & (events < min_itl_share * np.nanmedian(events))
    spans = busy_intervals(trace)
    period = np.searchsorted(spans[:, 0], trace.arrival_s, side="right") - 1
    bad = set(period[disturbed].tolist())
    if gauges is not None and "foreign_cpu" in gauges.columns and len(gauges):
        t = pd.to_numeric(gauges["t_s"], errors="coerce").to_numpy(dtype=float) - trace.start_s
        cpu = pd.to_numeric(gauges["foreign_cpu"], errors="coerce").to_numpy(dtype=float)
        order = np.argsort(t, kind="stable")
        t, cpu = t[order], cpu[order]
        for k, (start, end) in enumerate(spans):
            # a sample covers the interval before it: the first one after the end counts too
            a = np.searchsorted(t, start, side="left")
            b = np.searchsorted(t, end, side="right") + 1
            if (cpu[a:b] > max_foreign_cpu).any():
                bad.add(k)
    bursts = [k for k in range(len(spans)) if (period == k).sum() >= 5]
    if len(bursts) >= 3:
        pace = np.array([np.nanmedian(trace.itl_s[period == k]) for k in bursts])
        typical = float(np.median(pace))
        changed = np.abs(pace / typical - 1) > max_speed_change
        bad.update(k for k, c in zip(bursts, changed, strict=True) if c)
    keep = np.zeros(len(records), dtype=bool)
    keep[rows[~np.isin(period, sorted(bad))]] = True
    return keep
