"""Drive a pattern's traffic with Locust and record every request (the I/O shell).

Importing this module imports Locust, which monkey-patches the standard library with
gevent: call ``run_load`` only in a process of its own (the ``kservebench loadgen``
command; the bench runs that command as a subprocess).

Arrival modes:

- open loop (``poisson`` / ``constant``): one dispatcher user walks the precomputed
  send offsets (``patterns.arrival_offsets``) and spawns each request into a gevent pool,
  so a slow server never slows the offered load. Each record keeps its intended send
  time; send lag = sent - intended shows when the generator itself fell behind.
- closed loop (``closed``): N users, each sends, waits for the response, then paces to
  rate(t)/N requests/s with at least the think time. A slow server lowers the offered
  load, as with real users who wait (coordinated omission, on purpose).

The Locust shape keeps the users running for the pattern's duration, then lets the
requests in flight finish for up to the drain timeout; whatever is left is recorded as
unfinished. Nothing sent goes unrecorded.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import numpy as np
from gevent.pool import Pool
from locust import FastHttpUser, LoadTestShape, constant, task
from locust.env import Environment
from locust.html import get_html_report
from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter, stats_history

from kservebench.errors import SpecError
from kservebench.loadgen.patterns import Pattern, arrival_offsets
from kservebench.loadgen.protocols import RequestTemplate
from kservebench.loadgen.recorder import RecordWriter
from kservebench.loadgen.streaming import read_stream
from kservebench.loadgen.summary import SUMMARY_FILE, summarize
from kservebench.records import read_records
from kservebench.results import finish_run, start_run

ARRIVAL_MODES = ("poisson", "constant", "closed")
START_LEAD_S = 0.3  # users are spawned before the first intended send time


@dataclass
class LoadConfig:
    url: str
    model: str
    pattern: Pattern
    template: RequestTemplate
    out_dir: Path
    arrival: str = "poisson"
    users: int = 4  # closed loop only
    think_time_s: float = 0.0  # closed loop only
    drain_timeout_s: float = 30.0
    seed: int = 0
    pod_header: str = "x-serving-pod"
    request_timeout_s: float = 60.0
    connections: int = 1000  # open loop: concurrent connections the pool may open
    # The records' `pattern` column: the bench names each pattern of a spec (`1-ramp`), so
    # two patterns of one type stay apart; by default the pattern's type.
    pattern_label: str | None = None
    progress: bool = False
    spec: dict[str, Any] = field(default_factory=dict)  # written to run.json

    def validate(self) -> None:
        if self.arrival not in ARRIVAL_MODES:
            raise SpecError("arrival", self.arrival, f"expected one of {ARRIVAL_MODES}")
        if self.arrival == "closed" and self.users < 1:
            raise SpecError("users", self.users, "closed loop needs at least 1 user")
        if self.drain_timeout_s < 0:
            raise SpecError("drain_timeout", self.drain_timeout_s, "must be >= 0")
        if not self.url.startswith(("http://", "https://")):
            raise SpecError("url", self.url, "expected http://host:port")


class LoadRun:
    """State shared by the users, the request listener and the shape of one run."""

    def __init__(self, config: LoadConfig, writer: RecordWriter) -> None:
        self.config = config
        self.writer = writer
        self.pattern = config.pattern
        self.open_loop = config.arrival != "closed"
        self.offsets = (
            arrival_offsets(config.pattern, config.arrival, config.seed)
            if self.open_loop
            else np.empty(0)
        )
        self.start_s = math.inf
        self.dispatched = 0
        self.dispatch_done = not self.open_loop
        self.pool = Pool()
        self.sequence = 0

    def elapsed(self) -> float:
        return time.time() - self.start_s

    def finished(self) -> bool:
        """After the pattern: all sent and none in flight, or the drain deadline."""
        t = self.elapsed()
        end = self.pattern.duration_s
        if t < end:
            return False
        if t >= end + self.config.drain_timeout_s:
            return True
        return self.dispatch_done and not self.writer.in_flight

    def send(self, client: Any, intended_s: float) -> None:
        """One request; its row is written by ``on_request`` when Locust reports it."""
        index = self.sequence
        self.sequence += 1
        phase = self.pattern.phase(intended_s - self.start_s)
        request_id = self.writer.register(intended_s, phase)
        template = self.config.template
        headers = {"Content-Type": "application/json"}
        context = {"kservebench_id": request_id}
        self.writer.mark_sent(request_id, time.time())
        if template.streaming:
            self._send_streaming(client, template, index, headers, context)
            return
        client.request(
            "POST", template.path, data=template.body(index), headers=headers, context=context
        )

    def _send_streaming(
        self, client: Any, template: RequestTemplate, index: int, headers: dict, context: dict
    ) -> None:
        began = time.perf_counter()
        headers = {**headers, "Accept": "text/event-stream"}
        with client.request(
            "POST",
            template.path,
            data=template.body(index),
            headers=headers,
            context=context,
            stream=True,
            catch_response=True,
        ) as response:
            try:
                if response.status_code and response.status_code < 400:
                    stats = read_stream(_event_lines(response), began)
                    response.request_meta["context"]["llm"] = stats
                    response.request_meta["response_length"] = stats["bytes"]
                    if stats.get("error"):
                        response.failure(stats["error"])
            except Exception as exc:  # the stream broke: a failed request, still recorded
                response.failure(exc)
            response.request_meta["response_time"] = (time.perf_counter() - began) * 1000

    def on_request(
        self,
        response_time: float,
        response_length: int,
        response: Any,
        context: dict,
        exception: Exception | None,
        start_time: float,
        **_: Any,
    ) -> None:
        request_id = (context or {}).get("kservebench_id")
        if request_id is None:
            return
        status = int(getattr(response, "status_code", 0) or 0)
        error = ""
        if exception is not None:
            error = f"{type(exception).__name__}: {exception}"[:300]
        elif status == 0 or status >= 400:
            error = f"HTTP {status}"
        headers = getattr(response, "headers", None)
        pod = ""
        if headers and self.config.pod_header:
            pod = headers.get(self.config.pod_header) or ""
        self.writer.complete(
            request_id,
            sent_s=start_time,
            latency_ms=response_time,
            status=status,
            error=error.replace("\n", " "),
            size=int(response_length or 0),
            pod=pod,
            llm=(context or {}).get("llm"),
        )


def _event_lines(response: Any) -> Any:
    """Body lines as they arrive (a fixed-size read would wait for a full buffer)."""
    raw = response._response  # geventhttpclient's response: the only line-wise reader
    while raw is not None:
        line = raw.readline(b"\n")
        if not line:
            return
        yield line


class PatternShape(LoadTestShape):
    """Keeps the run's users alive for the pattern plus the drain, then ends the test."""

    def __init__(self, run: LoadRun, users: int) -> None:
        super().__init__()
        self.run = run
        self.users = users

    def tick(self) -> tuple[int, float] | None:
        if self.run.finished():
            return None
        # All users within a fraction of a second, below Locust's "very high" warning.
        return (self.users, float(min(100, self.users * 50)))


def _user_class(run: LoadRun) -> type[FastHttpUser]:
    """A concrete Locust user bound to this run (open-loop dispatcher or closed-loop user)."""
    config = run.config
    base: dict[str, Any] = {
        "host": config.url.rstrip("/"),
        "wait_time": constant(0),
        "network_timeout": config.request_timeout_s,
        "connection_timeout": config.request_timeout_s,
        "concurrency": config.connections if run.open_loop else 1,
    }

    def begin() -> None:
        while time.time() < run.start_s:
            gevent.sleep(run.start_s - time.time())

    def dispatch(user: FastHttpUser) -> None:
        if run.dispatched:  # the task runs once; a restart must not resend the schedule
            gevent.sleep(3600)
            return
        begin()
        for offset in run.offsets:
            intended = run.start_s + float(offset)
            delay = intended - time.time()
            if delay > 0:
                gevent.sleep(delay)
            run.dispatched += 1
            run.pool.spawn(run.send, user.client, intended)
        run.dispatch_done = True
        gevent.sleep(3600)  # stay: the shape ends the run

    def closed_loop(user: FastHttpUser) -> None:
        begin()
        t = run.elapsed()
        end = run.pattern.duration_s
        if t >= end:
            gevent.sleep(0.1)  # the pattern is over: wait for the shape to stop us
            return
        rate = run.pattern.rate(t)
        if rate <= 0:
            gevent.sleep(min(0.05, end - t))
            return
        began = time.time()
        run.send(user.client, began)
        pacing = config.users / rate
        rest = max(config.think_time_s, pacing - (time.time() - began))
        gevent.sleep(max(0.0, min(rest, end - run.elapsed())))

    body = dispatch if run.open_loop else closed_loop
    name = "OpenLoopDispatcher" if run.open_loop else "ClosedLoopUser"
    return type(name, (FastHttpUser,), {**base, "tasks": [task(body)]})


def _progress_loop(run: LoadRun, update: Callable[[str], None]) -> None:
    while True:
        t = max(0.0, run.elapsed())
        counts = run.writer.counts
        phase = run.pattern.phase(t) if t < run.pattern.duration_s else "drain"
        update(
            f"{t:6.1f}/{run.pattern.duration_s:.0f}s {phase:<8} {run.pattern.rate(t):6.1f}/s "
            f"sent {run.sequence} in flight {len(run.writer.in_flight)} "
            f"ok {counts['ok']} err {counts['errors']}"
        )
        gevent.sleep(0.5)


def _flush_loop(writer: RecordWriter) -> None:
    while True:
        gevent.sleep(writer.flush_interval_s)
        writer.flush()


def run_load(config: LoadConfig) -> dict[str, Any]:
    """Run one load, write DIR/{records.csv, summary.json, run.json, locust/}; the summary."""
    config.validate()
    out = Path(config.out_dir)
    run_info = start_run(out, "loadgen", config.spec)
    label = config.pattern_label or config.pattern.name
    writer = RecordWriter(out, config.model, label, llm=config.template.streaming)
    run = LoadRun(config, writer)
    users = 1 if run.open_loop else config.users
    env = Environment(
        user_classes=[_user_class(run)],
        shape_class=PatternShape(run, users),
        host=config.url.rstrip("/"),
    )
    env.events.request.add_listener(run.on_request)
    runner = env.create_local_runner()
    (out / "locust").mkdir(exist_ok=True)
    csv_writer = StatsCSVFileWriter(
        env, PERCENTILES_TO_REPORT, str(out / "locust" / "locust"), full_history=True
    )
    helpers = [gevent.spawn(csv_writer.stats_writer), gevent.spawn(stats_history, runner)]
    helpers.append(gevent.spawn(_flush_loop, writer))
    status = "failed"
    cpu_start = time.process_time()
    cpu_used = 0.0
    live = _live_display(config.progress)
    try:
        if live is not None:
            live.__enter__()
            helpers.append(gevent.spawn(_progress_loop, run, live.update_text))
        cpu_start = time.process_time()
        run.start_s = time.time() + START_LEAD_S + users / 100
        runner.start_shape()
        shape_greenlet = runner.shape_greenlet
        if shape_greenlet is not None:
            shape_greenlet.join()
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        cpu_used = time.process_time() - cpu_start
        unfinished = writer.finish_unfinished()
        run.pool.kill(block=False)
        runner.quit()
        gevent.sleep(0)  # let the CSV writer run once more with the final numbers
        gevent.killall(helpers)
        csv_writer.close_files()
        if live is not None:
            live.__exit__(None, None, None)
        writer.close()
        _write_html(env, out / "locust" / "report.html")
        # An interrupted run is summarised over the time it actually ran.
        ran_s = config.pattern.duration_s
        if status != "finished" and math.isfinite(run.start_s):
            ran_s = min(ran_s, max(0.001, time.time() - run.start_s))
        summary = summarize(
            read_records(out),
            duration_s=ran_s,
            expected_requests=config.pattern.expected_requests(),
            pattern=label,
            pattern_type=config.pattern.name,
            arrival=config.arrival,
            model=config.model,
            url=config.url,
            unfinished_at_drain=unfinished,
            # CPU of this process during the load (not start-up): the generator's cost.
            generator_cpu_s=round(cpu_used, 3),
        )
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        finish_run(out, run_info, status=status, summary_file=SUMMARY_FILE)
    return summary


def _write_html(env: Environment, path: Path) -> None:
    try:
        path.write_text(get_html_report(env, show_download_link=False))
    except Exception as exc:  # the report is a convenience; the records are what counts
        print(f"warning: no Locust HTML report: {exc}", file=sys.stderr)


class _LiveLine:
    """A one-line rich status on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        self._text = Text
        self._live = Live(Text(""), console=Console(stderr=True), auto_refresh=False)

    def __enter__(self) -> _LiveLine:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def update_text(self, line: str) -> None:
        self._live.update(self._text(line), refresh=True)


def _live_display(enabled: bool) -> _LiveLine | None:
    return _LiveLine() if enabled else None
