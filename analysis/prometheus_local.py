"""A real Prometheus server as a local child process, for the local target and the tests.

``LocalPrometheus`` writes a scrape config for the given jobs, starts the ``prometheus``
binary on a free loopback port with the remote-write receiver and the lifecycle API on,
and stops it on exit. The remote-write receiver is how tests push series with a known
ground truth (replicas, requests waiting) at exact timestamps: see ``remote_write``.

Old samples: a fresh TSDB accepts anything until its head has data; after that, samples
older than about an hour behind the newest one are rejected ("out of bounds") unless
``out_of_order_window`` (``storage.tsdb.out_of_order_time_window``) covers them. Tests
that push samples from the last few minutes do not need it; backfilling a whole past run
does, so it is a constructor argument.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cramjam
import requests
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from kservebench.errors import SpecError
from kservebench.procs import LocalServer, ManagedProcess, free_port, http_ok, wait_until

PROMETHEUS_BINARY = "prometheus"


def scrape_config(
    targets: Mapping[str, Sequence[str]],
    scrape_interval: str,
    out_of_order_window: str | None = None,
) -> dict[str, Any]:
    """The prometheus.yml for ``targets`` (job -> ["host:port", ...]), as a dict."""
    jobs = []
    for job, addresses in targets.items():
        if not job:
            raise SpecError("targets", job, "a job name must not be empty")
        for i, address in enumerate(addresses):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise SpecError(f"targets.{job}[{i}]", address, "expected host:port")
        jobs.append(
            {
                "job_name": job,
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "static_configs": [{"targets": list(addresses)}],
            }
        )
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": jobs,
    }
    if out_of_order_window:
        config["storage"] = {"tsdb": {"out_of_order_time_window": out_of_order_window}}
    return config


class LocalPrometheus(LocalServer):
    """A Prometheus server on 127.0.0.1 scraping ``targets``; a context manager.

    ``data_dir`` holds the TSDB, the config and the log; without it a temporary folder is
    used and removed on stop. ``port`` defaults to a free port.
    """

    def __init__(
        self,
        targets: Mapping[str, Sequence[str]] | None = None,
        scrape_interval: str = "1s",
        data_dir: Path | None = None,
        port: int | None = None,
        out_of_order_window: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        binary = shutil.which(PROMETHEUS_BINARY)
        if binary is None:
            raise FileNotFoundError(
                "the prometheus binary is not on PATH: run `make prometheus` "
                "(or apt-get install prometheus)"
            )
        self.targets = {job: list(addresses) for job, addresses in (targets or {}).items()}
        self.config = scrape_config(self.targets, scrape_interval, out_of_order_window)
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="kservebench-prom-"))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = self.data_dir / "prometheus.yml"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
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
        self.process.start()
        return self

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

    def wait_for_scrape(self, job: str, timeout_s: float = 30.0) -> None:
        """Wait until every target of ``job`` has been scraped successfully once.

        The first scrape lands some seconds after start even at a 1 s interval, so
        readiness alone says nothing about data being there.
        """
        expected = len(self.targets.get(job, [])) or 1

        def scraped() -> bool:
            up = self.query(f'up{{job="{job}"}} == 1')
            return len(up) >= expected

        wait_until(scraped, timeout_s, f"first scrape of job {job!r}", interval_s=0.25)

    def reload(self) -> None:
        """Re-read the config file (lifecycle API)."""
        requests.post(f"{self.url}/-/reload", timeout=10).raise_for_status()

    def stop(self) -> None:
        self.process.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


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
