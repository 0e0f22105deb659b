"""What a running experiment shows: the phase, the time left, and the live request rate.

On a terminal a rich live panel is redrawn twice a second; elsewhere (CI, a pipe) only one
plain line per phase is written, so logs stay short. The live numbers come from the load
generator's records.csv, which it flushes every second.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from kservebench.records import read_records

LIVE_WINDOW_S = 5.0  # the live rate is over the last few seconds of sends


def show_live(flag: bool | None = None) -> bool:
    if flag is not None:
        return flag
    return sys.stderr.isatty() and not os.environ.get("CI")


def live_numbers(records_csv: Path, now_s: float) -> dict[str, float]:
    """Requests/s over the last seconds, and the counts so far, from a growing records.csv."""
    try:
        records = read_records(records_csv)
    except Exception:  # half-written first flush: nothing to show yet
        return {"rate": 0.0, "ok": 0, "errors": 0}
    recent = records[records["sent_s"] >= now_s - LIVE_WINDOW_S]
    return {
        "rate": len(recent) / LIVE_WINDOW_S,
        "ok": int(records["ok"].sum()),
        "errors": int((~records["ok"]).sum()),
    }


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """``step`` for start-up and collection, ``phase``/``tick`` while the plan runs."""

    def __init__(self, name: str, live: bool | None = None) -> None:
        self.name = name
        self.live_enabled = show_live(live)
        self.console = Console(stderr=True)
        self.live: Live | None = None
        self.title = ""
        self.started = time.monotonic()

    def __enter__(self) -> Progress:
        if self.live_enabled:
            self.live = Live(Text(""), console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None

    def step(self, text: str) -> None:
        self._line(text)

    def phase(self, index: int, total: int, title: str, left_s: float | None = None) -> None:
        self.title = f"[{index + 1}/{total}] {title}"
        left = f"  (time left {_clock(left_s)})" if left_s is not None else ""
        self._line(self.title + left)

    def tick(self, elapsed_s: float, phase_s: float, left_s: float, numbers: dict | None) -> None:
        if self.live is None:
            return
        text = Text()
        text.append(f"{self.name} ", style="bold")
        text.append(f"{self.title}  {min(elapsed_s, phase_s):5.1f}/{phase_s:.0f} s  ")
        if elapsed_s > phase_s:  # loadgen lets the requests in flight finish
            text.append("draining  ", style="yellow")
        text.append(f"time left {_clock(left_s)}", style="cyan")
        if numbers is not None:
            style = "red" if numbers["errors"] else "green"
            text.append(f"\n  live {numbers['rate']:6.1f} req/s  ok {numbers['ok']}  ")
            text.append(f"errors {numbers['errors']}", style=style)
        self.live.update(text)

    def _line(self, text: str) -> None:
        stamp = _clock(time.monotonic() - self.started)
        self.console.print(f"[{stamp:>6}] {self.name}: {text}", highlight=False, soft_wrap=True)
