"""LLM serving: token timing, tokens/s, goodput and SLO attainment, and vLLM's own gauges.

Per model and pattern (the pattern windows of ``windows.py``), from the streaming records:

- request counts split into ok, failed and timed out (a timeout: the request was still in
  flight at the drain deadline, the client gave up on it, or a gateway answered 408/504);
- TTFT, ITL, TPOT and e2e latency percentiles and means over the *successful* requests;
- output and total (prompt + output) tokens per second of the successful requests;
- goodput: requests per second that met every SLO given (any of ``ttft_ms``, ``itl_ms``,
  ``tpot_ms``, ``e2e_ms``), and SLO attainment (their share of all requests). A failed or
  timed-out request misses every SLO, so it counts against both instead of vanishing from
  the percentiles. ITL and TPOT are undefined below two tokens: such a request has no gap
  to miss those SLOs with, while a missing TTFT or e2e is a miss.

Rates are per second of the pattern's own span: its window's start to the later of the
window's end and its last response (LLM requests often outlast the arrivals).

From the collected vLLM series (``vllm_*`` families of the catalog), per replica (the
``pod`` label, else the scrape ``instance``): KV-cache usage and running and waiting
requests over time, as one tidy table. Pure functions of records, run.json and series.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from kservebench.analysis import windows
from kservebench.analysis.fmt import DASH, fmt, pct
from kservebench.analysis.latency import latency_percentiles
from kservebench.analysis.summary import RunData
from kservebench.records import LLM_COLUMNS

# SLO key -> (record column, label in the report)
SLO_KEYS: dict[str, tuple[str, str]] = {
    "ttft_ms": ("ttft_ms", "TTFT"),
    "itl_ms": ("itl_ms", "ITL"),
    "tpot_ms": ("tpot_ms", "TPOT"),
    "e2e_ms": ("latency_ms", "e2e"),
}
GAP_SLOS = ("itl_ms", "tpot_ms")  # undefined below two output tokens
# When run.json names none: interactive-chat targets (a first token within half a
# second, 20 tokens/s while streaming, a whole answer within 10 s).
DEFAULT_SLOS: dict[str, float] = {"ttft_ms": 500.0, "itl_ms": 50.0, "e2e_ms": 10_000.0}
TIMEOUT_TEXT = re.compile(r"time[ds]?[\s_-]?out", re.IGNORECASE)
TIMEOUT_STATUS = (408, 504)
OK, FAILED, TIMED_OUT = "ok", "failed", "timed out"
PCT_KEYS = ("p50", "p90", "p95", "p99", "mean")
# vLLM family -> the tidy table's metric name
GAUGES = {
    "vllm_kv_cache_usage": "kv_cache_usage",
    "vllm_requests_running": "requests_running",
    "vllm_requests_waiting": "requests_waiting",
}
REPLICA_LABELS = ("pod", "kubernetes_pod_name", "instance")
SERIES_COLUMNS = ["model", "replica", "metric", "time_s", "value"]


# --- which records, which outcome ------------------------------------------------------------


def llm_models(records: pd.DataFrame) -> list[str]:
    """Models with streaming records: any LLM value. A frame with the LLM columns and no
    value at all (every request failed before a token) counts all its models."""
    columns = [c for c in LLM_COLUMNS if c in records.columns]
    if not columns or records.empty:
        return []
    known = records[columns].notna().any(axis=1)
    models = records.loc[known, "model"] if known.any() else records["model"]
    return sorted({str(m) for m in models})


def outcomes(records: pd.DataFrame) -> pd.Series:
    """``ok``, ``failed`` or ``timed out`` per record."""
    ok = records["ok"].to_numpy(dtype=bool)
    status = records["status"].to_numpy(dtype="int64")
    errors = records["error"].astype(str)
    timeout = (
        records["unfinished"].to_numpy(dtype=bool)
        | errors.str.contains(TIMEOUT_TEXT).to_numpy(dtype=bool)
        | np.isin(status, TIMEOUT_STATUS)
    )
    labels = np.where(ok & ~timeout, OK, np.where(timeout, TIMED_OUT, FAILED))
    return pd.Series(labels, index=records.index, dtype="string")


# --- SLOs --------------------------------------------------------------------------------------


def clean_slos(raw: Any) -> dict[str, float]:
    """The known SLO keys of a mapping with a positive number (others are ignored)."""
    if not isinstance(raw, Mapping):
        return {}
    out = {}
    for key in SLO_KEYS:
        value = raw.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            out[key] = float(value)
    return out


def slos_from_run(run: Mapping[str, Any]) -> dict[str, float]:
    """run.json's ``spec.slo`` entries ``ttft_ms``, ``itl_ms``, ``tpot_ms``, ``e2e_ms``."""
    spec = run.get("spec") if isinstance(run, Mapping) else None
    return clean_slos(spec.get("slo") if isinstance(spec, Mapping) else None)


def pick_slos(
    run: Mapping[str, Any], given: Mapping[str, float] | None = None
) -> tuple[dict[str, float], str]:
    """The SLOs to judge a run by and where they come from: ``given``, else the run's
    spec, else ``DEFAULT_SLOS``."""
    if given is not None:
        return clean_slos(given), "given"
    from_run = slos_from_run(run)
    if from_run:
        return from_run, "run spec"
    return dict(DEFAULT_SLOS), "default"


def _within(records: pd.DataFrame, key: str, limit_ms: float) -> np.ndarray:
    column = SLO_KEYS[key][0]
    values = (
        records[column].to_numpy(dtype="float64", na_value=np.nan)
        if column in records.columns
        else np.full(len(records), np.nan)
    )
    within = np.isfinite(values) & (values <= limit_ms)
    if key in GAP_SLOS:  # fewer than two tokens: no gap to be late with
        within |= ~np.isfinite(values)
    return within


def meets_slo(records: pd.DataFrame, key: str, limit_ms: float) -> np.ndarray:
    """Per record: answered successfully (no timeout) within ``limit_ms`` on ``key``."""
    return (outcomes(records) == OK).to_numpy(dtype=bool) & _within(records, key, limit_ms)


def meets_slos(records: pd.DataFrame, slos: Mapping[str, float]) -> np.ndarray:
    """Per record: successful and within every SLO of ``slos`` (none given: successful)."""
    good = (outcomes(records) == OK).to_numpy(dtype=bool)
    for key, limit in clean_slos(slos).items():
        good &= _within(records, key, limit)
    return good


# --- per model and pattern ---------------------------------------------------------------------


def span_s(records: pd.DataFrame, start_s: float, end_s: float) -> float:
    """A window's start to the later of its end and its last response."""
    done = records["sent_s"] + records["latency_ms"].fillna(0.0) / 1000.0
    last = float(np.nanmax(done.to_numpy(dtype="float64"))) if len(records) else math.nan
    end = max(end_s, last) if math.isfinite(last) else end_s
    return end - start_s


def _tokens(records: pd.DataFrame, column: str) -> float:
    if column not in records.columns:
        return math.nan
    values = records[column].to_numpy(dtype="float64", na_value=np.nan)
    return float(np.nansum(values)) if np.isfinite(values).any() else math.nan


def figures(records: pd.DataFrame, slos: Mapping[str, float], duration_s: float) -> dict[str, Any]:
    """The LLM figures of one group of records over ``duration_s`` seconds."""
    kinds = outcomes(records)
    ok_mask = (kinds == OK).to_numpy(dtype=bool)
    ok = records[ok_mask]
    n = len(records)

    def per_s(count: float) -> float:
        return count / duration_s if duration_s > 0 else math.nan

    out: dict[str, Any] = {
        "requests": n,
        "ok": int(ok_mask.sum()),
        "failed": int((kinds == FAILED).sum()),
        "timed_out": int((kinds == TIMED_OUT).sum()),
        "duration_s": duration_s,
    }
    for name, column in (("ttft", "ttft_ms"), ("itl", "itl_ms"), ("tpot", "tpot_ms"),
                         ("e2e", "latency_ms")):  # fmt: skip
        values = (
            ok[column].to_numpy(dtype="float64", na_value=np.nan)
            if column in ok.columns
            else np.array([])
        )
        stats = latency_percentiles(values)
        out.update({f"{name}_{k}_ms": stats[k] for k in PCT_KEYS})
    output, prompt = _tokens(ok, "output_tokens"), _tokens(ok, "prompt_tokens")
    out.update(output_tokens=output, prompt_tokens=prompt)
    out["output_tokens_per_s"] = per_s(output)
    out["total_tokens_per_s"] = per_s(output + prompt)  # unknown when either is
    good = ok_mask.copy()
    for key, limit in clean_slos(slos).items():
        within = ok_mask & _within(records, key, limit)
        out[f"{key}_attainment"] = float(within.mean()) if n else math.nan
        good &= within
    out["goodput_rps"] = per_s(float(good.sum())) if n else math.nan
    out["slo_attainment"] = float(good.mean()) if n else math.nan
    return out


def pattern_table(
    records: pd.DataFrame, run: Mapping[str, Any], slos: Mapping[str, float]
) -> pd.DataFrame:
    """One row per LLM model and pattern: counts, latency percentiles, tokens/s, goodput
    and SLO attainment (``figures``) over the pattern's windows."""
    models = llm_models(records)
    mine = records[records["model"].isin(models)] if models else records.iloc[0:0]
    spans = windows.pattern_windows(mine, dict(run))
    rows = []
    for (model, pattern), group in spans.groupby(["model", "pattern"], sort=True):
        parts, duration = [], 0.0
        for w in group.itertuples():
            part = windows.in_window(mine, model, w.start_s, w.end_s, pattern)
            parts.append(part)
            duration += span_s(part, w.start_s, w.end_s)
        recs = pd.concat(parts) if parts else mine.iloc[0:0]
        start = float(group["start_s"].min())
        rows.append({"model": model, "pattern": pattern, "start_s": start,
                     **figures(recs, slos, duration)})  # fmt: skip
    return pd.DataFrame(rows)


# --- vLLM's gauges per replica ---------------------------------------------------------------


def _replica(frame: pd.DataFrame) -> pd.Series:
    """The first non-empty of the replica labels (pod on a cluster, instance locally)."""
    out = pd.Series("", index=frame.index, dtype="string")
    for label in reversed(REPLICA_LABELS):
        if label in frame.columns:
            value = frame[label].astype("string").fillna("")
            out = value.where(value != "", out)
    return out


def replica_series(series: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """KV-cache usage (0-1) and running and waiting requests, per model, replica and
    sample time: model, replica, metric, time_s, value. Series of one replica that differ
    in other labels (engines) are summed, KV usage averaged."""
    parts = []
    for family, metric in GAUGES.items():
        frame = series.get(family)
        if frame is None or frame.empty:
            continue
        frame = frame[np.isfinite(frame["value"].to_numpy(dtype="float64"))]
        tidy = pd.DataFrame(
            {
                "model": frame["model"].astype(str) if "model" in frame.columns else "",
                "replica": _replica(frame).astype(str),
                "time_s": frame["time_s"].astype("float64"),
                "value": frame["value"].astype("float64"),
            }
        )
        how = "mean" if metric == "kv_cache_usage" else "sum"
        tidy = tidy.groupby(["model", "replica", "time_s"], as_index=False)["value"].agg(how)
        tidy["metric"] = metric
        parts.append(tidy)
    if not parts:
        return pd.DataFrame(columns=SERIES_COLUMNS).astype({"time_s": float, "value": float})
    out = pd.concat(parts, ignore_index=True)[SERIES_COLUMNS]
    return out.sort_values(["model", "metric", "replica", "time_s"], ignore_index=True)


def replica_table(tidy: pd.DataFrame, spans: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per model and replica: mean and max of each gauge over the model's patterns (from
    its first pattern's start to its last one's end; every sample without windows)."""
    rows = []
    for (model, replica), group in tidy.groupby(["model", "replica"], sort=True):
        if spans is not None and len(spans):
            start, end = windows.model_span(spans, model)
            if math.isfinite(start):
                group = group[(group["time_s"] >= start) & (group["time_s"] <= end)]
        row: dict[str, Any] = {"model": model, "replica": replica}
        for metric in GAUGES.values():
            values = group.loc[group["metric"] == metric, "value"].to_numpy(dtype="float64")
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{metric}_max"] = float(values.max()) if len(values) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


# --- the run -------------------------------------------------------------------------------------


def summarize(data: RunData, slos: Mapping[str, float] | None = None) -> dict[str, Any] | None:
    """The LLM part of a run's summary (None without streaming records)."""
    if not llm_models(data.records):
        return None
    chosen, source = pick_slos(data.run, slos)
    table = pattern_table(data.records, data.run, chosen)
    tidy = replica_series(data.series)
    spans = windows.pattern_windows(data.records, data.run)
    return {
        "models": llm_models(data.records),
        "slos": chosen,
        "slo_source": source,
        "by_model_pattern": table.to_dict(orient="records"),
        "series_models": sorted(set(tidy["model"])),
        "series_families": [f for f in GAUGES if f in data.series and len(data.series[f])],
        "replicas": replica_table(tidy, spans).to_dict(orient="records"),
    }


# --- report tables (formatted) -----------------------------------------------------------------


NO_SERIES = (
    "No vLLM series (KV-cache usage, running and waiting requests) were collected for this run."
)


def slo_text(summary: Mapping[str, Any]) -> str:
    slos = summary["slos"]
    named = ", ".join(f"{SLO_KEYS[k][1]} ≤ {fmt(v, 0)} ms" for k, v in slos.items()) or "none"
    where = {"run spec": "from the run's spec", "given": "as given"}.get(
        summary["slo_source"], "defaults: the run's spec names none"
    )
    return f"SLOs ({where}): {named}."


def reading_text(summary: Mapping[str, Any]) -> str:
    """How to read the LLM tables: which SLOs, what counts as a miss, over what."""
    return (
        f"{slo_text(summary)} Goodput counts the requests per second that met every SLO, SLO "
        "attainment their share of all requests: failed and timed-out requests count as "
        "misses. Percentiles and means are over successful requests; rates are per second of "
        "each pattern's span (its start to the later of its end and its last response)."
    )


def _cells(row: Mapping[str, Any], name: str) -> str:
    return " / ".join(fmt(row[f"{name}_{k}_ms"]) for k in ("p50", "p90", "p95", "p99"))


def latency_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Per model and pattern: counts, then p50 / p90 / p95 / p99 and mean per metric."""
    rows = []
    for r in summary["by_model_pattern"]:
        row = {
            "model": r["model"],
            "pattern": r["pattern"],
            "requests": str(r["requests"]),
            "ok / failed / timed out": f"{r['ok']} / {r['failed']} / {r['timed_out']}",
        }
        for name, label in (("ttft", "TTFT"), ("itl", "ITL"), ("tpot", "TPOT"),
                            ("e2e", "e2e")):  # fmt: skip
            row[f"{label} p50 / p90 / p95 / p99 (ms)"] = _cells(r, name)
            row[f"{label} mean (ms)"] = fmt(r[f"{name}_mean_ms"])
        rows.append(row)
    return pd.DataFrame(rows)


def goodput_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Per model and pattern: tokens/s, goodput and SLO attainment (all and per SLO)."""
    rows = []
    for r in summary["by_model_pattern"]:
        row = {
            "model": r["model"],
            "pattern": r["pattern"],
            "span (s)": fmt(r["duration_s"]),
            "output tok/s": fmt(r["output_tokens_per_s"]),
            "total tok/s": fmt(r["total_tokens_per_s"]),
            "goodput (req/s)": fmt(r["goodput_rps"], 2),
            "SLO attainment": pct(r["slo_attainment"]),
        }
        for key, limit in summary["slos"].items():
            heading = f"{SLO_KEYS[key][1]} ≤ {fmt(limit, 0)} ms"
            row[heading] = pct(r.get(f"{key}_attainment", math.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def replicas_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Per model and replica: KV-cache usage, running and waiting requests (mean / max)."""
    rows = []
    for r in summary["replicas"]:
        rows.append(
            {
                "model": r["model"] or "all",
                "replica": r["replica"] or DASH,
                "KV cache mean / max": f"{pct(r['kv_cache_usage_mean'])} / "
                f"{pct(r['kv_cache_usage_max'])}",
                "running mean / max": f"{fmt(r['requests_running_mean'])} / "
                f"{fmt(r['requests_running_max'], 0)}",
                "waiting mean / max": f"{fmt(r['requests_waiting_mean'])} / "
                f"{fmt(r['requests_waiting_max'], 0)}",
            }
        )
    return pd.DataFrame(rows)
