"""Which Knative Serving release exports which metric names: the release spans that the
catalog's Knative queries carry (``analysis.catalog``), parsing a version, and refusing
the releases the catalog cannot read.

Knative, checked against knative/serving's sources at each tag:

- <= 1.18 (OpenCensus): ``autoscaler_*``, ``activator_*`` and queue-proxy ``revision_*``,
  all labelled ``namespace_name``/``revision_name``.
- >= 1.19 (OpenTelemetry): autoscaler and activator export ``kn_revision_*`` with the
  attributes ``k8s_namespace_name``/``kn_revision_name`` as labels. Queue-proxy keeps
  namespace and revision in its OTel *resource* (they reach only ``target_info``), so its
  series are selected by the scrape job's own ``namespace``/``revision`` target labels
  (manifests/cluster/prometheus-values.yaml, job knative-queue-proxy). Its names changed
  in patch releases: ``kn_queueproxy_{app_duration_seconds,depth}`` in 1.19.0-1.19.7 and
  1.20.0, ``kn_serving_{invocation_duration_seconds,queue_depth}`` from 1.19.8, 1.20.1 and
  1.21.0 on. 1.19.0 and 1.19.1 are refused: they link a retracted OTel Prometheus
  exporter (v0.59.0) that appends units such as ``{pod}`` to the names as they are.
- ``kn_revision_pods_count`` / ``autoscaler_actual_pods`` count READY pods. The KPA's
  ``desired_pods`` is recorded before min/max-scale and the scale-to-zero grace period;
  ``requested_pods`` (``kn_revision_pods_requested``) is what it asks of Kubernetes after
  those bounds, the counterpart of the HPA's ``status.desiredReplicas``.
- The autoscaler exports either the concurrency or the requests-per-second gauges,
  after the revision's ``metric`` annotation; queue-proxy's queue depth exists only with
  a containerConcurrency limit (and is recorded on arrivals only).
"""

from __future__ import annotations

import re

from kservebench.errors import SpecError

Release = tuple[int, int, int]
# [first, last) releases; None: unbounded.
Span = tuple[Release | None, Release | None]
KN_OPENCENSUS: tuple[Span, ...] = ((None, (1, 19, 0)),)
KN_OTEL: tuple[Span, ...] = (((1, 19, 2), None),)
KN_QUEUEPROXY_NAMES: tuple[Span, ...] = (((1, 19, 2), (1, 19, 8)), ((1, 20, 0), (1, 20, 1)))
KN_SERVING_NAMES: tuple[Span, ...] = (((1, 19, 8), (1, 20, 0)), ((1, 20, 1), None))
KN_REFUSED: tuple[Span, ...] = (((1, 19, 0), (1, 19, 2)),)
_RELEASE = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_knative(version: str) -> tuple[Release, Release]:
    """``"1.20.1"`` -> the releases it covers, [1.20.1, 1.20.2); ``"1.20"`` -> any 1.20.x."""
    match = _RELEASE.fullmatch(str(version).strip().removeprefix("knative-"))
    if match is None:
        raise SpecError(
            "knative", version, "expected a Knative Serving version such as 1.18 or 1.20.1"
        )
    major, minor, patch = int(match[1]), int(match[2]), match[3]
    if patch is None:
        return (major, minor, 0), (major, minor + 1, 0)
    return (major, minor, int(patch)), (major, minor, int(patch) + 1)


def overlaps(spans: tuple[Span, ...], low: Release, high: Release) -> bool:
    """Whether any of ``spans`` meets the releases [``low``, ``high``)."""
    return any((a is None or a < high) and (b is None or low < b) for a, b in spans)


def check_knative(version: str | None) -> None:
    """Refuse a Knative version the catalog cannot read (see the module doc)."""
    if version is None:
        return
    low, high = parse_knative(version)
    if any((a is None or a <= low) and (b is None or high <= b) for a, b in KN_REFUSED):
        problem = (
            "exports names with the raw unit appended (retracted OTel exporter); use >= 1.19.2"
        )
        raise SpecError("knative", version, problem)
