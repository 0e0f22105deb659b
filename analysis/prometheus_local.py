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

Old samples: a fresh TSDB accepts anything until its head has data; after that, samples
older than about an hour behind the newest one are rejected ("out of bounds") unless
``out_of_order_window`` (``storage.tsdb.out_of_order_time_window``) covers them. Tests
that push samples from the last few minutes do not need it; backfilling a whole past run
does, so it is a constructor argument.

Next to it: ``prometheus_config`` renders the config, ``prometheus_supervisor`` restarts a
Prometheus that exits (``PrometheusSupervisor``), ``prometheus_remote_write`` pushes series;
their public names stay importable from here.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
import yaml

from kservebench.analysis.prometheus_config import (
    Target,
    promql_string,
    scrape_config,
    target_groups,
)
from kservebench.analysis.prometheus_remote_write import (
    PushSeries,
    WriteRequest,
    encode_write_request,
    remote_write,
    wait_for_series,
)
from kservebench.analysis.prometheus_supervisor import Incident, PrometheusSupervisor
from kservebench.errors import SpecError
from kservebench.procs import LocalServer, ManagedProcess, free_port, http_ok, wait_until

__all__ = [  # the config, supervision and remote write live next door; importable from here
    "PROMETHEUS_BINARY", "TARGETS_DIR", "Incident", "LocalPrometheus", "PrometheusSupervisor",
    "PushSeries", "Target", "WriteRequest", "encode_write_request", "remote_write",
    "scrape_config", "target_groups", "wait_for_series",
]  # fmt: skip

PROMETHEUS_BINARY = "prometheus"
TARGETS_DIR = "targets"  # under data_dir: one <job>.json per dynamic job

_FILE_SAFE_JOB = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


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
        return f"up{{job={promql_string(job)},instance={promql_string(instance)}}}"

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
        selector = f"up{{job={promql_string(job)}}}"

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
