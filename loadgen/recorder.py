"""Lossless per-request records: every request sent gets exactly one row.

Rows go to ``records.csv`` (columns of ``kservebench.records.RECORD_COLUMNS``, in that
order) as they complete; the file is flushed at least every second, so a crash keeps
everything up to then. Streaming (OpenAI) runs add the columns of
``kservebench.records.LLM_COLUMNS`` after the shared ones in the same file (TTFT and ITL
as the stream measured them, ``tpot_ms`` from them and the response time here, token
counts); ``read_records`` keeps them.

The ledger of in-flight requests is what makes the records lossless: a request is
registered before it is sent and leaves the ledger when its row is written; whatever
is still there when the drain timeout expires is written as ``unfinished``.
"""

from __future__ import annotations

import csv
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kservebench.records import LLM_COLUMNS, RECORD_COLUMNS, RECORDS_FILE, tpot_ms


@dataclass
class InFlight:
    """A request that has been sent (or is about to be) and has no row yet."""

    intended_s: float
    phase: str
    sent_s: float = math.nan


@dataclass
class RecordWriter:
    """Appends record rows to ``out_dir/records.csv``; ``flush_due`` every second."""

    out_dir: Path
    model: str
    pattern: str
    llm: bool = False
    flush_interval_s: float = 1.0
    in_flight: dict[int, InFlight] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "errors": 0, "rows": 0})

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / RECORDS_FILE
        self.columns = list(RECORD_COLUMNS) + (list(LLM_COLUMNS) if self.llm else [])
        self._handle = self.path.open("w", newline="")
        self._csv = csv.writer(self._handle)
        self._csv.writerow(self.columns)
        self._handle.flush()
        self._ids = itertools.count()
        self._last_flush = time.monotonic()

    def register(self, intended_s: float, phase: str) -> int:
        request_id = next(self._ids)
        self.in_flight[request_id] = InFlight(intended_s, phase)
        return request_id

    def mark_sent(self, request_id: int, sent_s: float) -> None:
        entry = self.in_flight.get(request_id)
        if entry is not None:
            entry.sent_s = sent_s

    def complete(
        self,
        request_id: int,
        sent_s: float,
        latency_ms: float,
        status: int,
        error: str,
        size: int,
        pod: str = "",
        llm: dict[str, Any] | None = None,
    ) -> None:
        entry = self.in_flight.pop(request_id, None)
        if entry is None:  # already written as unfinished at the drain deadline
            return
        ok = not error
        self._write(entry, sent_s, latency_ms, status, ok, error, size, pod, False, llm)

    def finish_unfinished(self) -> int:
        """Write every request still in flight as unfinished; returns how many."""
        left = list(self.in_flight.items())
        self.in_flight.clear()
        for _, entry in left:
            sent = entry.sent_s if math.isfinite(entry.sent_s) else entry.intended_s
            self._write(entry, sent, math.nan, 0, False, "unfinished", 0, "", True, None)
        self.flush()
        return len(left)

    def _write(
        self,
        entry: InFlight,
        sent_s: float,
        latency_ms: float,
        status: int,
        ok: bool,
        error: str,
        size: int,
        pod: str,
        unfinished: bool,
        llm: dict[str, Any] | None,
    ) -> None:
        lag_ms = (sent_s - entry.intended_s) * 1000.0
        row: list[Any] = [
            f"{entry.intended_s:.6f}",
            f"{sent_s:.6f}",
            f"{lag_ms:.3f}",
            "" if math.isnan(latency_ms) else f"{latency_ms:.3f}",
            status,
            ok,
            error,
            size,
            self.model,
            self.pattern,
            entry.phase,
            pod,
            unfinished,
            False,  # cold: only the simulator knows it
        ]
        if self.llm:
            llm = dict(llm or {})
            # TPOT needs the whole response time, known only here (the stream ends first).
            llm["tpot_ms"] = tpot_ms(latency_ms, llm.get("ttft_ms"), llm.get("output_tokens"))
            row += [_blank_nan(llm.get(c)) for c in LLM_COLUMNS]
        self._csv.writerow(row)
        self.counts["rows"] += 1
        self.counts["ok" if ok else "errors"] += 1
        self.flush_due()

    def flush_due(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        self._handle.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            self._handle.close()


def _blank_nan(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else value
