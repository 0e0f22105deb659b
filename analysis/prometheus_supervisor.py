"""Supervision of a local Prometheus: ``PrometheusSupervisor`` keeps one alive for a run.

One that exits is started again on the same data_dir (its TSDB: the WAL replay brings back
every sample committed before the exit, SIGKILL included), port and config, so the
Prometheus URL and the scrape targets stay valid. It is ready again quickly (well under a
second with a small WAL), but scraping resumes only at the scrape manager's first 5 s tick:
expect about 6 s (at worst about 11 s) more without samples than the process was down.
Each restart is an ``Incident`` for run.json. The server itself:
``kservebench.analysis.prometheus_local``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests

from kservebench.procs import ManagedProcess, http_ok

if TYPE_CHECKING:  # prometheus_local imports this module
    from kservebench.analysis.prometheus_local import LocalPrometheus

# What the supervisor reports: {"time", "what", "action", "down_s"}.
Incident = dict[str, Any]

log = logging.getLogger(__name__)


def _exit_code(process: ManagedProcess) -> str:
    """The exit status as text: ``1``, or ``-9 (SIGKILL)`` for a signal."""
    code = process.popen.returncode if process.popen is not None else None
    if code is None:
        return "?"
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


class PrometheusSupervisor:
    """Keeps one ``LocalPrometheus`` alive for a run: restarts it on the same TSDB and port.

    ``check()`` is cheap and never waits on Prometheus (a ``poll()`` while it is up; one
    loopback probe with a 0.5 s timeout while a restart waits for ready), so a control
    plane can call it from its event loop every ~0.5 s; with ``interval_s`` it also runs
    on a thread of its own. Each restart is an incident, appended to ``incidents`` and
    passed to ``on_event`` (from the thread that runs ``check``)::

        {"time": epoch s the exit was noticed, "what": "prometheus exited with code C",
         "action": "restarted on the same TSDB", "down_s": last seen alive -> ready}

    A Prometheus that keeps dying (before it is ready, or within ``stable_s`` of it) is
    restarted after ``backoff_s``, doubling up to ``max_backoff_s``; after
    ``max_restarts`` restarts in a row it is given up, with an incident saying why.
    """

    def __init__(
        self,
        prometheus: LocalPrometheus,
        on_event: Callable[[Incident], None] | None = None,
        interval_s: float | None = None,
        max_restarts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 10.0,
        stable_s: float = 30.0,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.prometheus = prometheus
        self.on_event = on_event
        self.interval_s = interval_s
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.ready_timeout_s = ready_timeout_s
        self.incidents: list[Incident] = []
        self.restarts = 0  # successful restarts in all
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # idle | up | waiting (backoff before a restart) | starting | failed | stopped
        self._phase = "idle"
        self._tries = 0  # restarts in a row without staying up stable_s
        self._last_alive = self._up_since = self._next_start = self._started_at = 0.0
        self._down_since = 0.0  # monotonic: the last check that saw it alive
        self._noticed_at = 0.0  # epoch: when the exit was noticed
        self._cause = ""

    @property
    def state(self) -> str:
        """``idle``, ``up``, ``restarting``, ``failed`` (given up) or ``stopped``."""
        return "restarting" if self._phase in ("waiting", "starting") else self._phase

    def start(self, timeout_s: float = 60.0) -> PrometheusSupervisor:
        """Start Prometheus (unless it runs already), wait until ready, then supervise."""
        prom = self.prometheus
        try:
            if not prom.process.alive():
                prom.start()
            prom.wait_ready(timeout_s)
        except BaseException:
            prom.stop()
            raise
        with self._lock:
            self._phase, self._tries = "up", 0
            self._last_alive = self._up_since = time.monotonic()
        if self.interval_s is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="prometheus-supervisor", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop supervising, then Prometheus (its data_dir goes if it was temporary)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15.0)
            self._thread = None
        with self._lock:
            self._phase = "stopped"
        self.prometheus.stop()

    def __enter__(self) -> PrometheusSupervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check(self) -> bool:
        """Whether Prometheus is up; notices an exit and moves a restart on one step."""
        events: list[Incident] = []
        with self._lock:
            up = self._step(time.monotonic(), events)
        for incident in events:
            log.warning("prometheus: %s; %s", incident["what"], incident["action"])
            if self.on_event is not None:
                self.on_event(incident)
        return up

    def wait_up(self, timeout_s: float = 60.0) -> None:
        """Wait until Prometheus is up again (driving ``check`` without a thread of its
        own); raise if the supervisor gave up or was stopped."""

        def up() -> bool:
            is_up = self.check() if self._thread is None else self._phase == "up"
            if self._phase in ("failed", "stopped"):
                raise RuntimeError(f"prometheus is {self._phase}: {self.incidents[-1:]}")
            return is_up

        deadline = time.monotonic() + timeout_s
        while not up():
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not up again after {timeout_s:.0f}s")
            time.sleep(0.05)

    def _run(self) -> None:
        assert self.interval_s is not None
        while True:
            restarting = self._phase in ("waiting", "starting")
            if self._stop.wait(min(self.interval_s, 0.1) if restarting else self.interval_s):
                return
            try:
                self.check()
            except Exception:  # an on_event that raised: keep supervising
                log.exception("prometheus supervision: check failed")

    def _step(self, now: float, events: list[Incident]) -> bool:
        prom = self.prometheus
        if self._phase in ("idle", "failed", "stopped"):
            return False
        if prom.stopped:  # its owner stopped it: nothing to restart
            self._phase = "stopped"
            return False
        if self._phase == "up":
            if prom.process.alive():
                self._last_alive = now
                if self._tries and now - self._up_since >= self.stable_s:
                    self._tries = 0
                return True
            self._down_since, self._noticed_at = self._last_alive, time.time()
            self._cause = f"prometheus exited with code {_exit_code(prom.process)}"
            self._retry_or_give_up(now, self._cause, events, quiet=True)
        if self._phase == "waiting":
            if now < self._next_start:
                return False
            try:
                prom.restart()
            except RuntimeError:  # stopped meanwhile
                self._phase = "stopped"
                return False
            except OSError as err:
                self._retry_or_give_up(now, f"prometheus could not be started: {err}", events)
                return False
            self._phase, self._started_at = "starting", now
            return False
        if self._phase == "starting":
            if not prom.process.alive():
                what = f"prometheus exited with code {_exit_code(prom.process)} before it was ready"
                self._retry_or_give_up(now, f"{what}: {self._log_error()}", events)
                return False
            if self._ready():
                self._phase, self._up_since, self._last_alive = "up", now, now
                self.restarts += 1
                tries = f" (try {self._tries} of {self.max_restarts})" if self._tries > 1 else ""
                self._record(
                    {
                        "time": self._noticed_at,
                        "what": self._cause,
                        "action": f"restarted on the same TSDB{tries}",
                        "down_s": round(now - self._down_since, 3),
                    },
                    events,
                )
                return True
            if now - self._started_at > self.ready_timeout_s:
                prom.process.stop(grace_s=1.0)
                what = f"prometheus not ready {self.ready_timeout_s:g} s after a restart"
                self._retry_or_give_up(now, f"{what}: {self._log_error()}", events)
        return False

    def _retry_or_give_up(
        self, now: float, what: str, events: list[Incident], quiet: bool = False
    ) -> None:
        """Schedule the next restart after the backoff, or give up after max_restarts;
        ``quiet``: the first exit, reported once it is resolved."""
        down_s = round(now - self._down_since, 3)
        if self._tries >= self.max_restarts:
            self._phase = "failed"
            action = f"gave up after {self._tries} restarts in a row; no metrics from now on"
            self._record(
                {"time": time.time(), "what": what, "action": action, "down_s": down_s}, events
            )
            return
        delay = (
            0.0
            if self._tries == 0
            else min(self.backoff_s * 2 ** (self._tries - 1), self.max_backoff_s)
        )
        self._tries += 1
        self._phase, self._next_start = "waiting", now + delay
        if not quiet:
            action = f"restarting in {delay:g} s (try {self._tries} of {self.max_restarts})"
            self._record(
                {"time": time.time(), "what": what, "action": action, "down_s": down_s}, events
            )

    def _record(self, incident: Incident, events: list[Incident]) -> None:
        self.incidents.append(incident)
        events.append(incident)

    def _ready(self) -> bool:
        try:
            return http_ok(f"{self.prometheus.url}/-/ready", timeout_s=0.5)
        except requests.RequestException:
            return False

    def _log_error(self) -> str:
        """The last error line of Prometheus' log (or its last line), for an incident."""
        lines = self.prometheus.process.log_tail(30).splitlines()
        errors = [line for line in lines if "level=error" in line]
        last = (errors or lines or ["(empty log)"])[-1]
        return f"{last.strip()[:300]} (log {self.prometheus.process.log_path})"
