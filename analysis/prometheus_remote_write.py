"""Prometheus's remote-write protocol, client side: push series with known timestamps.

Tests and backfills push series with a known ground truth at exact timestamps to a
Prometheus started with the remote-write receiver (``LocalPrometheus`` is). The
WriteRequest message (prompb/remote.proto and types.proto) is described at runtime, so no
protoc is needed; only the fields we send. Bodies are snappy-compressed (cramjam).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import cramjam
import requests
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from kservebench.errors import SpecError
from kservebench.procs import wait_until

if TYPE_CHECKING:  # prometheus_local imports this module
    from kservebench.analysis.prometheus_local import LocalPrometheus


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
