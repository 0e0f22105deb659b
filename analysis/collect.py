"""Fetch a run's series from Prometheus into tidy parquet tables (``DIR/series/``).

Each catalog family is queried over the run's window with prometheus-api-client; the
first alternative that returns data wins. A family nothing answers for is *missing*
(listed in ``series/collection.json``), never fatal: a local run has no kube-state-metrics
and a cluster run has no vLLM. Only an unreachable Prometheus stops the collection.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import requests
from prometheus_api_client import (
    MetricRangeDataFrame,
    PrometheusApiClientException,
    PrometheusConnect,
)

from kservebench.analysis.catalog import CATALOG, check_knative, queries_for, render
from kservebench.errors import SpecError

SERIES_DIR = "series"
COLLECTION_FILE = "collection.json"
# Prometheus refuses range queries of more than 11,000 points per series.
MAX_POINTS = 10_000


@dataclass
class Collection:
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # family -> source that answered
    missing: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # family -> query error text

    def manifest(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "missing": sorted(self.missing),
            "errors": self.errors,
            "rows": {name: len(frame) for name, frame in self.frames.items()},
        }


def parse_step(step: str) -> float:
    """'1s', '500ms', '2m', '1.5' -> seconds."""
    text = str(step).strip()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], units[suffix]
            break
    else:
        number, scale = text, 1.0
    try:
        seconds = float(number) * scale
    except ValueError:
        raise SpecError("step", step, "expected a duration such as 1s, 500ms or 1m") from None
    if not seconds > 0:
        raise SpecError("step", step, "must be positive")
    return seconds


def chunks(start_s: float, end_s: float, step_s: float) -> list[tuple[float, float]]:
    """Split [start, end] into windows of at most MAX_POINTS steps, sharing no sample."""
    start, end = math.floor(start_s), math.ceil(end_s)
    span = MAX_POINTS * step_s
    out = []
    while start <= end:
        stop = min(end, start + span)
        out.append((start, stop))
        start = stop + step_s
    return out


def tidy(result: list[dict[str, Any]], family: str) -> pd.DataFrame:
    """Prometheus range-query JSON -> the tidy series table (time_s, value, family, labels)."""
    if not result:
        return pd.DataFrame({"time_s": [], "value": [], "family": []}).astype(
            {"time_s": "float64", "value": "float64", "family": "string"}
        )
    frame = MetricRangeDataFrame(result, ts_as_datetime=False).reset_index()
    frame = frame.rename(columns={"timestamp": "time_s"}).drop(columns="__name__", errors="ignore")
    frame["time_s"] = frame["time_s"].astype("float64")
    frame["value"] = frame["value"].astype("float64")
    frame["family"] = family
    labels = sorted(c for c in frame.columns if c not in ("time_s", "value", "family"))
    for label in labels:
        frame[label] = frame[label].fillna("").astype("string")
    frame["family"] = frame["family"].astype("string")
    return frame[["time_s", "value", "family", *labels]]


RangeQuery = Callable[[str, float, float, str], list[dict[str, Any]]]


def prometheus_range_query(url: str) -> RangeQuery:
    prom = PrometheusConnect(url=url, disable_ssl=True)

    def query(promql: str, start_s: float, end_s: float, step: str) -> list[dict[str, Any]]:
        return prom.custom_query_range(
            promql,
            start_time=datetime.fromtimestamp(start_s, tz=UTC),
            end_time=datetime.fromtimestamp(end_s, tz=UTC),
            step=step,
        )

    return query


def collect(
    query: RangeQuery,
    start_s: float,
    end_s: float,
    step: str = "1s",
    target: str = "auto",
    families: Iterable[str] | None = None,
    namespace: str = ".*",
    rate_window: str | None = None,
    job: str = ".+",
    progress: Callable[[str], None] | None = None,
    knative: str | None = None,
) -> Collection:
    """Query every family over [start_s, end_s]; see the module doc for missing ones.

    ``knative`` (a Knative Serving version, e.g. "1.18" or "1.20.1") tries only the names
    that release exports; without it every generation's names are tried."""
    if not end_s > start_s:
        raise SpecError("window", (start_s, end_s), "ended_at must be after started_at")
    check_knative(knative)
    step_s = parse_step(step)
    # A rate needs at least two scrapes in its window: local servers are scraped every
    # second, cluster cAdvisor every 15-30 s.
    rate_window = rate_window or ("5s" if target == "local" else "1m")
    windows = chunks(start_s, end_s, step_s)
    out = Collection()
    for family in families or CATALOG:
        if progress:
            progress(f"querying {family}")
        for alternative in queries_for(family, target, knative):
            promql = render(alternative, namespace=namespace, rate_window=rate_window, job=job)
            try:
                result = [r for a, b in windows for r in query(promql, a, b, step)]
            except PrometheusApiClientException as error:  # a bad query is not fatal
                out.errors[family] = f"{alternative.source}: {error}"
                continue
            if result:
                out.frames[family] = tidy(result, family)
                out.sources[family] = alternative.source
                break
        else:
            out.missing.append(family)
    return out


def save_collection(run_dir: Path, collection: Collection) -> Path:
    series_dir = Path(run_dir) / SERIES_DIR
    series_dir.mkdir(parents=True, exist_ok=True)
    for family, frame in collection.frames.items():
        frame.to_parquet(series_dir / f"{family}.parquet", index=False)
    (series_dir / COLLECTION_FILE).write_text(json.dumps(collection.manifest(), indent=2))
    return series_dir


def collect_run(
    run_dir: Path, url: str, step: str = "1s", tail_s: float = 5.0, **options: Any
) -> tuple[Collection, Path]:
    """Collect the series for a results folder's window (run.json started_at/ended_at).

    The window is extended by ``tail_s``: the last responses reach Prometheus only at
    the next scrape after the run ended.
    """
    from kservebench.results import read_run

    run = read_run(run_dir)
    if not run:
        raise SpecError("DIR", str(run_dir), "no run.json in this folder")
    start, end = run.get("started_at"), run.get("ended_at")
    if not isinstance(start, int | float) or not isinstance(end, int | float):
        raise SpecError("run.json.ended_at", end, "the run has no finished time window")
    try:
        requests.get(f"{url.rstrip('/')}/-/ready", timeout=5)
    except requests.RequestException as error:
        problem = f"Prometheus is not reachable ({type(error).__name__})"
        raise SpecError("--prometheus", url, problem) from None
    end = min(end + tail_s, time.time())
    collection = collect(prometheus_range_query(url), start, end, step, **options)
    return collection, save_collection(run_dir, collection)
