"""The summary of one load: a pure function of its records.

``achieved_rps`` counts requests actually sent per second of the pattern; latency
percentiles are over successful requests; ``corrected_latency_ms`` adds the send lag
(intended -> response), which is the latency a user arriving on schedule would have seen
and so does not hide coordinated omission.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

SUMMARY_FILE = "summary.json"
PERCENTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99}


def _percentiles(values: pd.Series, keys: tuple[str, ...] = ("p50", "p90", "p95", "p99")) -> dict:
    values = values.dropna().to_numpy(dtype=float)
    if len(values) == 0:
        return {**{k: None for k in keys}, "max": None}
    out = {k: round(float(np.percentile(values, PERCENTILES[k])), 3) for k in keys}
    out["max"] = round(float(values.max()), 3)
    return out


def interarrival_cv(times: np.ndarray) -> float | None:
    """Coefficient of variation of the gaps between sorted times (1 for Poisson)."""
    gaps = np.diff(np.sort(np.asarray(times, dtype=float)))
    if len(gaps) < 2 or gaps.mean() <= 0:
        return None
    return float(gaps.std() / gaps.mean())


def summarize(
    records: pd.DataFrame,
    duration_s: float,
    expected_requests: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Counts, rates, latency and send-lag percentiles, per-phase counts."""
    sent = records[records["sent_s"].notna()]
    finished = records[~records["unfinished"].astype(bool)]
    ok = records[records["ok"].astype(bool)]
    errors = finished[~finished["ok"].astype(bool)]
    requests = len(records)
    start = float(records["intended_s"].min()) if requests else math.nan
    phases = {
        str(phase): {
            "requests": len(group),
            "errors": int((~group["ok"].astype(bool) & ~group["unfinished"].astype(bool)).sum()),
            "latency_ms": _percentiles(group.loc[group["ok"].astype(bool), "latency_ms"]),
        }
        for phase, group in records.groupby("phase", sort=False)
    }
    status_counts = {str(k): int(v) for k, v in records["status"].value_counts().items()}
    error_kinds = errors["error"].str.slice(0, 80).value_counts().head(10)
    return {
        "requests": requests,
        "ok": len(ok),
        "errors": len(errors),
        "unfinished": int(records["unfinished"].astype(bool).sum()),
        "duration_s": duration_s,
        "expected_requests": None if expected_requests is None else round(expected_requests, 3),
        "achieved_rps": round(len(sent) / duration_s, 3) if duration_s > 0 else None,
        "ok_rps": round(len(ok) / duration_s, 3) if duration_s > 0 else None,
        "intended_rps": round(requests / duration_s, 3) if duration_s > 0 else None,
        "interarrival_cv": _round(interarrival_cv(records["intended_s"].to_numpy())),
        "latency_ms": _percentiles(ok["latency_ms"]),
        "corrected_latency_ms": _percentiles(ok["latency_ms"] + ok["send_lag_ms"]),
        "send_lag_ms": _percentiles(sent["send_lag_ms"]),
        "status_counts": status_counts,
        "error_kinds": {str(k): int(v) for k, v in error_kinds.items()},
        "phases": phases,
        "started_at": None if math.isnan(start) else start,
        **extra,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
