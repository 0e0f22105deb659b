"""Latency, throughput, errors and SLO attainment: pure functions of records and series.

Client side comes from the request records (latency as the load generator saw it);
server side from the ModelServer's ``request_predict_seconds`` histogram, with the same
interpolation as PromQL's histogram_quantile. Latency percentiles use successful
responses only; error rate and SLO attainment count every request sent (an error or an
unfinished request misses the SLO).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kservebench.analysis.series import (
    binned_increase,
    bucket_matrix,
    quantiles_from_matrix,
    total_increase,
)

QUANTILES = (0.5, 0.9, 0.95, 0.99)
PCT_KEYS = ("p50", "p90", "p95", "p99")


def _ok_latencies(records: pd.DataFrame) -> np.ndarray:
    lat = records.loc[records["ok"].to_numpy(dtype=bool), "latency_ms"].to_numpy(dtype="float64")
    return lat[np.isfinite(lat)]


def latency_percentiles(latency_ms: np.ndarray) -> dict[str, float]:
    """p50/p90/p95/p99/max/mean of finite latencies; NaN when there are none."""
    lat = np.asarray(latency_ms, dtype="float64")
    lat = lat[np.isfinite(lat)]
    if len(lat) == 0:
        return {**dict.fromkeys(PCT_KEYS, math.nan), "max": math.nan, "mean": math.nan}
    pct = np.percentile(lat, [q * 100 for q in QUANTILES])
    return {
        **{k: float(v) for k, v in zip(PCT_KEYS, pct, strict=True)},
        "max": float(lat.max()),
        "mean": float(lat.mean()),
    }


def run_window(records: pd.DataFrame) -> tuple[float, float]:
    """First intended send -> last response (or send) in the records."""
    if records.empty:
        return math.nan, math.nan
    start = np.nanmin(records["intended_s"].fillna(records["sent_s"]).to_numpy(dtype="float64"))
    done = records["sent_s"] + records["latency_ms"].fillna(0.0) / 1000.0
    return float(start), float(np.nanmax(done.to_numpy(dtype="float64")))


def error_rate(records: pd.DataFrame) -> float:
    if records.empty:
        return math.nan
    failed = ~records["ok"].to_numpy(dtype=bool) | records["unfinished"].to_numpy(dtype=bool)
    return float(failed.mean())


def slo_attainment(records: pd.DataFrame, slo_ms: float) -> float:
    """Share of all requests answered successfully within ``slo_ms``."""
    if records.empty:
        return math.nan
    lat = records["latency_ms"].to_numpy(dtype="float64")
    good = records["ok"].to_numpy(dtype=bool) & np.isfinite(lat) & (lat <= slo_ms)
    return float(good.mean())


def throughput_rps(records: pd.DataFrame) -> float:
    """Successful responses per second over the records' window."""
    start, end = run_window(records)
    if not end > start:
        return math.nan
    return float(records["ok"].sum() / (end - start))


def client_summary(records: pd.DataFrame, slo_ms: float) -> dict[str, object]:
    return {
        "requests": len(records),
        "latency_ms": latency_percentiles(_ok_latencies(records)),
        "throughput_rps": throughput_rps(records),
        "error_rate": error_rate(records),
        "slo_ms": slo_ms,
        "slo_attainment": slo_attainment(records, slo_ms),
    }


def by_model_pattern(records: pd.DataFrame, slo_ms: float) -> pd.DataFrame:
    """One row per (model, pattern): request count, latency percentiles, throughput, errors."""
    rows = []
    for (model, pattern), group in records.groupby(["model", "pattern"], observed=True, sort=True):
        summary = client_summary(group, slo_ms)
        rows.append(
            {
                "model": model,
                "pattern": pattern,
                "requests": summary["requests"],
                **{f"{k}_ms": v for k, v in summary["latency_ms"].items() if k != "mean"},
                "throughput_rps": summary["throughput_rps"],
                "error_rate": summary["error_rate"],
                "slo_attainment": summary["slo_attainment"],
            }
        )
    return pd.DataFrame(rows)


def over_time(
    records: pd.DataFrame, window_s: float, origin_s: float | None = None
) -> pd.DataFrame:
    """Per window (by send time): offered and achieved rate, error rate, latency percentiles.

    Offered load counts intended sends, throughput counts successful completions in the
    window they completed; latency percentiles group requests by when they were sent.
    """
    columns = ["time_s", "offered_rps", "throughput_rps", "error_rate", *PCT_KEYS]
    if records.empty:
        return pd.DataFrame(columns=columns, dtype="float64")
    origin = run_window(records)[0] if origin_s is None else origin_s
    intended = records["intended_s"].fillna(records["sent_s"]).to_numpy(dtype="float64")
    sent = records["sent_s"].to_numpy(dtype="float64")
    lat = records["latency_ms"].to_numpy(dtype="float64")
    ok = records["ok"].to_numpy(dtype=bool) & np.isfinite(lat)

    def window(t: np.ndarray) -> np.ndarray:
        return np.floor((t - origin) / window_s).astype("int64")

    frame = pd.DataFrame(
        {
            "w": window(np.where(np.isfinite(sent), sent, intended)),
            "lat": np.where(ok, lat, np.nan),
            "failed": ~ok,
        }
    )
    grouped = frame.groupby("w")
    pct = grouped["lat"].quantile(list(QUANTILES)).unstack()
    pct.columns = list(PCT_KEYS)
    out = pd.DataFrame(index=pct.index).join(pct)
    out["error_rate"] = grouped["failed"].mean()
    offered = pd.Series(window(intended)).value_counts() / window_s
    done = window(sent[ok] + lat[ok] / 1000.0)
    achieved = pd.Series(done).value_counts() / window_s
    full = out.index.union(offered.index).union(achieved.index)
    out = out.reindex(full)
    out["offered_rps"] = offered.reindex(full).fillna(0.0)
    out["throughput_rps"] = achieved.reindex(full).fillna(0.0)
    out["time_s"] = origin + out.index.to_numpy(dtype="float64") * window_s
    return out.reset_index(drop=True)[columns].sort_values("time_s", ignore_index=True)


def server_quantiles(
    buckets: pd.DataFrame, start_s: float, end_s: float, qs: tuple[float, ...] = QUANTILES
) -> pd.DataFrame:
    """Per model, server-side quantiles (seconds) over (start, end] from bucket counters."""
    inc = total_increase(buckets, ["model", "le"], start_s, end_s)
    if inc.empty or "le" not in inc.columns:
        return pd.DataFrame()
    keys = ["model"] if "model" in inc.columns else []
    if not keys:
        inc["model"] = ""
    return quantiles_from_matrix(bucket_matrix(inc, ["model"]), list(qs))


def server_quantiles_over_time(
    buckets: pd.DataFrame, window_s: float, origin_s: float, q: float = 0.95
) -> pd.DataFrame:
    """Per (window, model), the server-side quantile ``q`` (seconds)."""
    inc = binned_increase(buckets, ["model", "le"], window_s, origin_s)
    if inc.empty or "le" not in inc.columns:
        return pd.DataFrame(columns=["time_s", "model", "value"])
    if "model" not in inc.columns:
        inc["model"] = ""
    wide = bucket_matrix(inc, ["time_s", "model"])
    out = quantiles_from_matrix(wide, [q]).reset_index()
    return out.rename(columns={out.columns[-1]: "value"})


def server_request_count(count: pd.DataFrame, start_s: float, end_s: float) -> float:
    """Requests the server counted over (start, end] (from a *_count counter)."""
    inc = total_increase(count, [], start_s, end_s)
    return float(inc["increase"].sum()) if len(inc) else 0.0
