"""A real Prometheus server as a local child process, for the local target and the tests.

``LocalPrometheus`` writes a scrape config for the given jobs, starts the ``prometheus``
binary on a free loopback port with the remote-write receiver and the lifecycle API on,
and stops it on exit. The remote-write receiver is how tests push series with a known
ground truth (replicas, requests waiting) at exact timestamps: see ``remote_write``.

Targets: a static job lists ``"host:port"`` or ``("host:port", {label: value})`` entries.
A job named in ``dynamic_jobs`` is a file_sd job, for targets that come and go during a
run (the replicas of a model): ``set_targets`` rewrites ``<data_dir>/targets/<job>.json``.
Prometheus sees the file change at once (inotify; ``refresh_interval`` re-reads it as a
fallback), but its discovery and scrape managers each apply target changes on a 5 s tick
(fixed in 2.42), so a new target's first scrape lands 0-10 s after the file changed, and a
removed target's series go stale as late (measured: 2-6 s and 4-6.5 s).

Supervision: ``PrometheusSupervisor`` keeps one Prometheus alive for a run. One that exits
is started again on the same data_dir (its TSDB: the WAL replay brings back every sample
committed before the exit, SIGKILL included), port and config, so the Prometheus URL and
the scrape targets stay valid. It is ready again quickly (well under a second with a
small WAL), but scraping resumes only at the scrape manager's first 5 s tick: expect about
6 s (at worst about 11 s) more without samples than the process was down.

Old samples: a fresh TSDB accepts anything until its head has data; after that, samples
older than about an hour behind the newest one are rejected ("out of bounds") unless
``out_of_order_window`` (``storage.tsdb.out_of_order_time_window``) covers them. Tests
that push samples from the last few minutes do not need it; backfilling a whole past run
does, so it is a constructor argument.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cramjam
import requests
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from kservebench.errors import SpecError
from kservebench.procs import LocalServer, ManagedProcess, free_port, http_ok, wait_until

PROMETHEUS_BINARY = "prometheus"
TARGETS_DIR = "targets"  # under data_dir: one <job>.json per dynamic job

# A scrape target: "host:port", or ("host:port", {label: value}) with target labels.
Target = str | tuple[str, Mapping[str, str]]
# What the supervisor reports: {"time", "what", "action", "down_s"}.
Incident = dict[str, Any]

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FILE_SAFE_JOB = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
log = logging.getLogger(__name__)


def _split_target(target: Target, where: str) -> tuple[str, dict[str, str]]:
    """(address, labels) of a target in either form, validated."""
    if isinstance(target, str):
        address, labels = target, {}
    else:
        try:
            address, raw_labels = target
            labels = dict(raw_labels)
        except (TypeError, ValueError):
            raise SpecError(where, target, "expected host:port or (host:port, labels)") from None
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit():
        raise SpecError(where, address, "expected host:port")
    for name, value in labels.items():
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name):
            raise SpecError(
                f"{where}.labels", name, "a label name must match [a-zA-Z_][a-zA-Z0-9_]*"
            )
        if not isinstance(value, str):
            raise SpecError(f"{where}.labels.{name}", value, "a label value must be a string")
    return address, labels


def target_groups(targets: Sequence[Target], where: str = "targets") -> list[dict[str, Any]]:
    """``targets`` as Prometheus target groups, the form static_configs and file_sd share:
    one group per distinct label set in first-seen order (plain addresses: no labels)."""
    if isinstance(targets, str):
        raise SpecError(where, targets, "expected a list of targets, not one string")
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for i, target in enumerate(targets):
        address, labels = _split_target(target, f"{where}[{i}]")
        key = tuple(sorted(labels.items()))
        group = groups.setdefault(key, {"targets": [], **({"labels": labels} if labels else {})})
        group["targets"].append(address)
    return list(groups.values())


def scrape_config(
    targets: Mapping[str, Sequence[Target]],
    scrape_interval: str,
    out_of_order_window: str | None = None,
    file_sd: Mapping[str, str | Path] | None = None,
    refresh_interval: str = "1s",
) -> dict[str, Any]:
    """The prometheus.yml, as a dict: ``targets`` (job -> targets) as static configs and
    ``file_sd`` (job -> targets file; relative to the config file's folder) as file_sd
    configs. A job in both gets both."""
    jobs: dict[str, dict[str, Any]] = {}

    def job_entry(job: str, field: str) -> dict[str, Any]:
        if not job:
            raise SpecError(field, job, "a job name must not be empty")
        entry = {"job_name": job, "scrape_interval": scrape_interval}
        return jobs.setdefault(job, {**entry, "scrape_timeout": scrape_interval})

    for job, entries in targets.items():
        groups = target_groups(entries, f"targets.{job}")
        job_entry(job, "targets")["static_configs"] = groups or [{"targets": []}]
    for job, path in (file_sd or {}).items():
        job_entry(job, "dynamic_jobs")["file_sd_configs"] = [
            {"files": [str(path)], "refresh_interval": refresh_interval}
        ]
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": list(jobs.values()),
    }
    if out_of_order_window:
        config["storage"] = {"tsdb": {"out_of_order_time_window": out_of_order_window}}
    return config


def _promql_string(value: str) -> str:
    """``value`` as a PromQL string literal (JSON's escapes are a subset of PromQL's)."""
    return json.dumps(value)


class LocalPrometheus(LocalServer):
    """A Prometheus server on 127.0.0.1 scraping ``targets``; a context manager.

    ``data_dir`` holds the TSDB, the config, the file_sd target files and the log; without
    it a temporary folder is used and removed on stop. Given, it is kept, and a Prometheus
    started on it later (``restart``, or a new ``LocalPrometheus``) reads the same TSDB.
    ``port`` defaults to a free port. ``dynamic_jobs`` are file_sd jobs whose targets
    ``set_targets`` replaces while Prometheus runs; they start with none.
    """

    def __init__(
        self,
        targets: Mapping[str, Sequence[Target]] | None = None,
        scrape_interval: str = "1s",
        data_dir: Path | None = None,
        port: int | None = None,
        out_of_order_window: str | None = None,
        extra_args: Sequence[str] = (),
        dynamic_jobs: Sequence[str] = (),
        refresh_interval: str = "1s",
    ) -> None:
        binary = shutil.which(PROMETHEUS_BINARY)
        if binary is None:
            raise FileNotFoundError(
                "the prometheus binary is not on PATH: run `make prometheus` "
                "(or apt-get install prometheus)"
            )
        self.targets = {job: list(addresses) for job, addresses in (targets or {}).items()}
        if isinstance(dynamic_jobs, str):
            raise SpecError("dynamic_jobs", dynamic_jobs, "expected a list of job names")
        for job in dynamic_jobs:
            if not isinstance(job, str) or not _FILE_SAFE_JOB.fullmatch(job):
                raise SpecError(
                    "dynamic_jobs", job, "a dynamic job's name names its file: [A-Za-z0-9_.-]+"
                )
        self.dynamic_jobs = list(dict.fromkeys(dynamic_jobs))
        self.dynamic_targets: dict[str, list[Target]] = {job: [] for job in self.dynamic_jobs}
        # Relative paths: Prometheus reads them from the config file's folder (data_dir).
        file_sd = {job: f"{TARGETS_DIR}/{job}.json" for job in self.dynamic_jobs}
        self.config = scrape_config(
            self.targets, scrape_interval, out_of_order_window, file_sd, refresh_interval
        )
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="kservebench-prom-"))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = self.data_dir / "prometheus.yml"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._lock = threading.RLock()  # start / restart / stop
        self._targets_lock = threading.Lock()  # set_targets' files
        self._stopped = False
        for job in self.dynamic_jobs:
            self.set_targets(job, [])
        self.process = ManagedProcess(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-remote-write-receiver",
                "--web.enable-lifecycle",
                *extra_args,
            ],
            log_path=self.data_dir / "prometheus.log",
        )

    def start(self) -> LocalPrometheus:
        with self._lock:
            self._stopped = False
            self.process.start()
        return self

    def restart(self) -> LocalPrometheus:
        """Start the process again on the same TSDB, port and config (stopping it first if
        it still runs); does not wait for ready. Refused once ``stop`` was called, so a
        supervisor never revives a Prometheus its owner stopped."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("prometheus was stopped; it is not restarted")
            if self.process.alive():
                self.process.stop()
            self.process.start()
        return self

    @property
    def stopped(self) -> bool:
        """Whether ``stop`` was called (and no ``start`` since)."""
        return self._stopped

    def wait_ready(self, timeout_s: float = 30.0) -> LocalPrometheus:
        self.process.wait_ready(lambda: http_ok(f"{self.url}/-/ready"), timeout_s, "prometheus")
        return self

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result vector (the raw JSON list)."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        response = requests.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        response.raise_for_status()
        return response.json()["data"]["result"]

    # --- targets ----------------------------------------------------------------------------

    def targets_file(self, job: str) -> Path:
        """The file_sd file of dynamic job ``job``."""
        return self.data_dir / TARGETS_DIR / f"{job}.json"

    def set_targets(self, job: str, targets: Sequence[Target]) -> None:
        """Replace the targets of dynamic job ``job`` (file_sd JSON, written atomically so
        Prometheus never reads half a file). Scrapes start or stop a few seconds later:
        see ``wait_for_target`` and ``wait_for_target_gone``."""
        if job not in self.dynamic_targets:
            raise SpecError("job", job, f"not a dynamic job here (those are {self.dynamic_jobs})")
        entries = list(targets) if not isinstance(targets, str) else targets
        groups = target_groups(entries, f"targets.{job}")
        path = self.targets_file(job)
        with self._targets_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")  # not the name Prometheus reads
            tmp.write_text(json.dumps(groups, indent=1) + "\n")
            os.replace(tmp, path)
            self.dynamic_targets[job] = list(entries)

    def _known_targets(self, job: str) -> list[Target]:
        return [*self.targets.get(job, []), *self.dynamic_targets.get(job, [])]

    def _up_selector(self, job: str, address: str) -> str:
        """``up`` of one target: its ``instance`` label is its address unless its labels
        set another."""
        instance = address
        for target in self._known_targets(job):
            if not isinstance(target, str) and target[0] == address:
                instance = dict(target[1]).get("instance", address)
        return f"up{{job={_promql_string(job)},instance={_promql_string(instance)}}}"

    def _scraped_since(self, selector: str, since: float) -> list[dict[str, str]]:
        """The series of ``selector`` (an ``up`` selector) with a successful scrape after
        ``since``: raw samples, because an instant query would also return a sample from
        before a restart (nothing marks it stale after a kill)."""
        window_s = max(2, math.ceil(time.time() - since) + 2)
        return [
            series["metric"]
            for series in self.query(f"{selector}[{window_s}s]")
            if any(float(t) > since and v == "1" for t, v in series["values"])
        ]

    def wait_for_scrape(
        self, job: str, timeout_s: float = 30.0, since: float | None = None
    ) -> None:
        """Wait until every target of ``job`` has been scraped successfully once (after
        epoch ``since``, when given: e.g. after a restart).

        The first scrape lands some seconds after start even at a 1 s interval, so
        readiness alone says nothing about data being there.
        """
        expected = len(self._known_targets(job)) or 1
        selector = f"up{{job={_promql_string(job)}}}"

        def scraped() -> bool:
            if since is not None:
                return len(self._scraped_since(selector, since)) >= expected
            return len(self.query(f"{selector} == 1")) >= expected

        wait_until(scraped, timeout_s, f"first scrape of job {job!r}", interval_s=0.25)

    def wait_for_target(
        self, job: str, address: str, timeout_s: float = 30.0, since: float | None = None
    ) -> None:
        """Wait until target ``address`` of ``job`` (static or dynamic) has been scraped
        successfully (after epoch ``since``, when given)."""
        selector = self._up_selector(job, address)

        def scraped() -> bool:
            if since is not None:
                return bool(self._scraped_since(selector, since))
            return bool(self.query(f"{selector} == 1"))

        wait_until(scraped, timeout_s, f"a scrape of {address} in job {job!r}", interval_s=0.25)

    def wait_for_target_gone(self, job: str, address: str, timeout_s: float = 30.0) -> None:
        """Wait until target ``address`` of ``job`` is no longer scraped: a dropped target's
        series are marked stale, so its ``up`` leaves instant queries."""
        selector = self._up_selector(job, address)
        wait_until(
            lambda: not self.query(selector),
            timeout_s,
            f"{address} in job {job!r} gone",
            interval_s=0.25,
        )

    def reload(self) -> None:
        """Re-read the config file (lifecycle API)."""
        requests.post(f"{self.url}/-/reload", timeout=10).raise_for_status()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self.process.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


# --- supervision ------------------------------------------------------------------------


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


# --- remote write -----------------------------------------------------------------------
# The WriteRequest message of Prometheus's remote-write protocol (prompb/remote.proto and
# types.proto), described at runtime so no protoc is needed. Only the fields we send.


def _write_request_class() -> type:
    file = descriptor_pb2.FileDescriptorProto(name="kservebench_prompb.proto", package="prometheus")
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED

    def message(name: str, fields: Iterable[tuple[str, int, int, int, str | None]]) -> None:
        proto = file.message_type.add(name=name)
        for fname, number, label, ftype, type_name in fields:
            entry = proto.field.add(name=fname, number=number, label=label, type=ftype)
            if type_name:
                entry.type_name = type_name

    message(
        "Label",
        [
            ("name", 1, optional, field.TYPE_STRING, None),
            ("value", 2, optional, field.TYPE_STRING, None),
        ],
    )
    message(
        "Sample",
        [
            ("value", 1, optional, field.TYPE_DOUBLE, None),
            ("timestamp", 2, optional, field.TYPE_INT64, None),
        ],
    )
    message(
        "TimeSeries",
        [
            ("labels", 1, repeated, field.TYPE_MESSAGE, ".prometheus.Label"),
            ("samples", 2, repeated, field.TYPE_MESSAGE, ".prometheus.Sample"),
        ],
    )
    message(
        "WriteRequest", [("timeseries", 1, repeated, field.TYPE_MESSAGE, ".prometheus.TimeSeries")]
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


WriteRequest = _write_request_class()

# One series to push: its labels (including __name__) and (epoch seconds, value) samples.
PushSeries = tuple[Mapping[str, str], Sequence[tuple[float, float]]]


def encode_write_request(series: Iterable[PushSeries]) -> bytes:
    """A snappy-compressed WriteRequest body for ``series``.

    Prometheus wants labels sorted by name and each series' samples in time order.
    """
    request = WriteRequest()
    for labels, samples in series:
        if "__name__" not in labels:
            raise SpecError("series.labels", dict(labels), "needs a __name__ label")
        ts = request.timeseries.add()
        for name in sorted(labels):
            ts.labels.add(name=name, value=str(labels[name]))
        for t, v in sorted(samples):
            ts.samples.add(value=float(v), timestamp=round(t * 1000))
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def remote_write(url: str, series: Iterable[PushSeries], timeout_s: float = 30.0) -> None:
    """Push ``series`` to a Prometheus with the remote-write receiver at ``url``."""
    response = requests.post(
        f"{url.rstrip('/')}/api/v1/write",
        data=encode_write_request(series),
        headers={
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        },
        timeout=timeout_s,
    )
    if response.status_code >= 300:
        raise RuntimeError(
            f"remote write to {url} failed: HTTP {response.status_code} {response.text.strip()}"
        )


def wait_for_series(
    prom: LocalPrometheus, promql: str, at: float | None = None, timeout_s: float = 10.0
) -> None:
    """Wait until an instant query (at ``at``) returns something: remote-written data is
    queryable almost at once, but not within the same millisecond."""
    wait_until(
        lambda: bool(prom.query(promql, at=at)), timeout_s, f"series {promql}", interval_s=0.1
    )
