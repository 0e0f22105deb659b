"""Cold starts: scale-from-zero episodes, their length, decomposition and penalty.

An episode is a stretch with zero ready replicas for a model that ends with a replica
becoming ready while requests wait. Its length runs from the first waiting request to
the first response (records), or to the replica's ready time when only series exist.
Pod-lifecycle series (kube-state-metrics timestamps) split it into created -> scheduled
-> started -> ready. Pure functions of tidy series and request records.

Resolution: on a cluster those timestamps are the pod's creationTimestamp, startTime and
its conditions' lastTransitionTime, which Kubernetes keeps in whole seconds, so each
phase is a difference of whole seconds, off by up to 1 s either way; a sub-second
stage cannot be told from a cluster's series. When every stamp is a whole second the
phases are kept as integers and ``phases_resolution_s`` is 1 (the local plane exports
exact stamps: resolution 0). Lengths from series alone also move in steps of the
scrape interval of the ready count (kube-state-metrics: 5 s on the shipped cluster);
with request records they are exact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import pairwise

import numpy as np
import pandas as pd

from kservebench.analysis.series import per_model, step_function

# kube-state-metrics families, in lifecycle order.
LIFECYCLE = ("pod_created", "pod_scheduled", "pod_started", "pod_ready")
# What a Kubernetes timestamp resolves (metav1.Time is serialised in whole seconds).
KUBE_STAMP_RESOLUTION_S = 1.0


@dataclass
class Episode:
    model: str
    zero_since_s: float  # ready replicas dropped to (or started at) zero
    ready_at_s: float  # first sample with a ready replica again
    first_waiting_s: float  # first request (or in-flight sample) during the zero stretch
    first_response_s: float  # first response to a waiting request (ready time if unknown)
    length_s: float
    waiting_requests: int  # records sent during the zero stretch (0 without records)
    cold_p50_ms: float = math.nan  # successful waiting requests
    warm_p50_ms: float = math.nan
    penalty_ms: float = math.nan  # cold p50 - warm p50
    pattern: str = ""  # the pattern most waiting requests belong to ("" without records)
    cold_max_ms: float = math.nan  # slowest successful waiting request
    waiting_failed: int = 0  # waiting requests that failed or never finished
    phases_s: dict[str, float] = field(default_factory=dict)
    phases_resolution_s: float = math.nan  # 1: whole-second (cluster) stamps, 0: exact

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def zero_stretches(times: np.ndarray, values: np.ndarray) -> list[tuple[float, float | None]]:
    """(start, end) of each run of zero replicas; end = first sample >= 1 after it."""
    out: list[tuple[float, float | None]] = []
    start: float | None = None
    for t, v in zip(times, values, strict=True):
        if not math.isfinite(v):
            continue
        if v < 0.5 and start is None:
            start = float(t)
        elif v >= 0.5 and start is not None:
            out.append((start, float(t)))
            start = None
    if start is not None:
        out.append((start, None))
    return out


def _phases(
    lifecycle: dict[str, pd.DataFrame], model: str, since: float, until: float
) -> tuple[dict, float]:
    """Lifecycle of the first pod of ``model`` to turn ready in [since, until + 60 s], and
    the resolution of its stamps (see the module doc)."""
    ready = lifecycle.get("pod_ready")
    if ready is None or ready.empty or "pod" not in ready.columns:
        return {}, math.nan
    if "model" in ready.columns:
        ready = ready[ready["model"] == model]
    last = ready.sort_values("time_s").groupby("pod", observed=True)["value"].last()
    candidates = last[(last >= since) & (last <= until + 60.0)]
    if candidates.empty:
        return {}, math.nan
    pod = candidates.idxmin()
    stamps: dict[str, float] = {}
    for name in LIFECYCLE:
        frame = lifecycle.get(name)
        if frame is None or frame.empty or "pod" not in frame.columns:
            continue
        values = frame.loc[frame["pod"] == pod].sort_values("time_s")["value"]
        if len(values):
            stamps[name] = float(values.iloc[-1])
    whole = all(v.is_integer() for v in stamps.values())
    phases: dict = {"pod": pod}
    named = [n for n in LIFECYCLE if n in stamps]
    for a, b in pairwise(named):
        step = stamps[b] - stamps[a]
        phases[f"{a.removeprefix('pod_')}_to_{b.removeprefix('pod_')}_s"] = (
            round(step) if whole else step
        )
    return phases, KUBE_STAMP_RESOLUTION_S if whole else 0.0


def cold_start_episodes(
    replicas_ready: pd.DataFrame | None,
    records: pd.DataFrame | None = None,
    in_flight: pd.DataFrame | None = None,
    lifecycle: dict[str, pd.DataFrame] | None = None,
) -> list[Episode]:
    """Every scale-from-zero episode with requests waiting, per model, in time order."""
    episodes: list[Episode] = []
    flights = per_model(in_flight)
    for model, frame in per_model(replicas_ready).items():
        times, values = step_function(frame)
        recs = _records_for(records, model)
        flight = flights.get(model)
        for zero_since, ready_at in zero_stretches(times, values):
            if ready_at is None:
                continue  # still at zero when the window ended: no episode completed
            episode = _episode(model, zero_since, ready_at, recs, flight)
            if episode is None:
                continue
            episode.phases_s, episode.phases_resolution_s = _phases(
                lifecycle or {}, model, episode.first_waiting_s, ready_at
            )
            episodes.append(episode)
    if records is not None and len(episodes):
        _penalties(episodes, records)
    return sorted(episodes, key=lambda e: (e.first_waiting_s, e.model))


def _records_for(records: pd.DataFrame | None, model: str) -> pd.DataFrame | None:
    if records is None or records.empty:
        return None
    if model == "" or "model" not in records.columns:
        return records
    return records[records["model"] == model]


def _episode(
    model: str,
    zero_since: float,
    ready_at: float,
    records: pd.DataFrame | None,
    in_flight: pd.DataFrame | None,
) -> Episode | None:
    if records is not None and len(records):
        sent = records["sent_s"].to_numpy(dtype="float64")
        waiting = records[(sent >= zero_since) & (sent < ready_at)]
        if waiting.empty:
            return None
        first_waiting = float(waiting["sent_s"].min())
        done = (waiting["sent_s"] + waiting["latency_ms"] / 1000.0).to_numpy(dtype="float64")
        done = done[np.isfinite(done)]
        first_response = float(done.min()) if len(done) else math.nan
        labels = waiting.get("pattern", pd.Series("", index=waiting.index))
        patterns = labels.astype(str).value_counts(sort=True)
        failed = ~waiting.get("ok", pd.Series(True, index=waiting.index)).to_numpy(dtype=bool)
        if "unfinished" in waiting.columns:
            failed |= waiting["unfinished"].to_numpy(dtype=bool)
        return Episode(
            model,
            zero_since,
            ready_at,
            first_waiting,
            first_response,
            first_response - first_waiting,
            len(waiting),
            pattern=str(patterns.index[0]) if len(patterns) else "",
            waiting_failed=int(failed.sum()),
        )
    if in_flight is not None and len(in_flight):
        times, values = step_function(in_flight)
        busy = times[(times >= zero_since) & (times < ready_at) & (values > 0)]
        if len(busy) == 0:
            return None
        first_waiting = float(busy[0])
        return Episode(
            model, zero_since, ready_at, first_waiting, ready_at, ready_at - first_waiting, 0
        )
    return None


def _penalties(episodes: list[Episode], records: pd.DataFrame) -> None:
    """Cold = sent during an episode's zero stretch; warm = the model's other ok requests."""
    for model in {e.model for e in episodes}:
        recs = _records_for(records, model)
        if recs is None or recs.empty:
            continue
        sent = recs["sent_s"].to_numpy(dtype="float64")
        cold = np.zeros(len(recs), dtype=bool)
        for e in (e for e in episodes if e.model == model):
            cold |= (sent >= e.zero_since_s) & (sent < e.ready_at_s)
        lat = recs["latency_ms"].to_numpy(dtype="float64")
        ok = recs["ok"].to_numpy(dtype=bool) & np.isfinite(lat)
        warm_p50 = float(np.median(lat[ok & ~cold])) if (ok & ~cold).any() else math.nan
        for e in (e for e in episodes if e.model == model):
            mine = ok & (sent >= e.zero_since_s) & (sent < e.ready_at_s)
            e.cold_p50_ms = float(np.median(lat[mine])) if mine.any() else math.nan
            e.cold_max_ms = float(lat[mine].max()) if mine.any() else math.nan
            e.warm_p50_ms = warm_p50
            e.penalty_ms = e.cold_p50_ms - warm_p50


def summarize(episodes: list[Episode]) -> dict[str, float | int]:
    lengths = np.array([e.length_s for e in episodes], dtype="float64")
    lengths = lengths[np.isfinite(lengths)]
    penalties = np.array([e.penalty_ms for e in episodes], dtype="float64")
    penalties = penalties[np.isfinite(penalties)]
    return {
        "count": len(episodes),
        "p50_s": float(np.median(lengths)) if len(lengths) else math.nan,
        "max_s": float(lengths.max()) if len(lengths) else math.nan,
        "penalty_p50_ms": float(np.median(penalties)) if len(penalties) else math.nan,
    }
