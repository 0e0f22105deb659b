"""``requests_in_flight`` derived from request records, where no series measured it.

On the local target nothing exports the family (no activator, no queue-proxy), yet the
cold-start and scaling sections read it. Every record says when its request was sent and
how long its answer took, so the count of requests sent but not yet answered is known
exactly at any instant: sampled on a regular grid it is the gauge Prometheus would have
scraped. Pure: records in, a tidy series table out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

FAMILY = "requests_in_flight"
SOURCE = "records"  # what the collection manifest names as the family's source


def in_flight_from_records(records: pd.DataFrame, step_s: float = 1.0) -> pd.DataFrame:
    """Requests sent and not yet answered, per model, at every multiple of ``step_s``.

    A request is in flight on ``[sent_s, sent_s + latency)``: at its send instant it
    counts, at its answer instant it no longer does. One never answered (``unfinished``,
    no latency) stays in flight to the end of the grid. Requests never sent do not count.
    The grid runs over whole steps from the first send to the last answer."""
    columns = ["time_s", "value", "family", "model"]
    sent = records[records["sent_s"].notna()] if len(records) else records
    if not len(sent):
        return _typed(pd.DataFrame(columns=columns))
    start = sent["sent_s"].to_numpy(dtype="float64")
    end = start + sent["latency_ms"].to_numpy(dtype="float64") / 1000.0
    last = np.nanmax(np.concatenate([start, end]))
    grid = np.arange(
        math.floor(start.min() / step_s), math.floor(last / step_s) + 1, dtype="float64"
    )
    grid *= step_s
    end = np.where(np.isfinite(end), end, np.inf)  # unanswered: in flight to the end
    models = sent["model"].astype(str).to_numpy()
    frames = []
    for model in sorted(set(models)):
        mine = models == model
        began = np.sort(start[mine])
        done = np.sort(end[mine])
        # Sent at or before t, minus answered at or before t.
        count = np.searchsorted(began, grid, side="right") - np.searchsorted(
            done, grid, side="right"
        )
        frames.append(pd.DataFrame({"time_s": grid, "value": count.astype("float64"),
                                    "family": FAMILY, "model": model}))  # fmt: skip
    return _typed(pd.concat(frames, ignore_index=True))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(
        {"time_s": "float64", "value": "float64", "family": "string", "model": "string"}
    )
