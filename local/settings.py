"""What the local control plane does for one experiment, resolved and validated.

The ``local:`` block of an experiment spec holds the few knobs a cluster keeps in its
controllers' flags (the HPA's sync period, metrics-server's resolution, kubelet's restart
backoff) and whether CPU limits must be enforced; everything else comes from the spec's own
``scaling`` and ``resources``, read through the operator's parsers, so a local replica gets
the limits and the autoscaler a cluster pod would. Problems raise ``SpecError`` naming the
field, before anything starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kubernetes.utils import parse_quantity

from kservebench.errors import SpecError
from kservebench.loadgen.units import parse_duration

CGROUP_MODES = ("auto", "required", "off")
LOCAL_FIELDS = {"replicas", "cgroups", "restartBackoff", "hpaSyncPeriod", "metricsResolution"}


@dataclass(frozen=True)
class LocalSettings:
    cgroups: str = "auto"  # auto: enforce limits where cgroups are writable
    fixed_replicas: int | None = None  # set: no autoscaler, this many replicas per model
    restart_backoff_s: float = 10.0  # kubelet's first CrashLoopBackOff delay
    hpa_sync_period_s: float = 15.0  # --horizontal-pod-autoscaler-sync-period
    metrics_resolution_s: float = 15.0  # metrics-server --metric-resolution

    def describe(self) -> dict[str, Any]:
        return {
            "cgroups": self.cgroups,
            "fixed_replicas": self.fixed_replicas,
            "restart_backoff_s": self.restart_backoff_s,
            "hpa_sync_period_s": self.hpa_sync_period_s,
            "metrics_resolution_s": self.metrics_resolution_s,
        }


def _seconds(value: Any, where: str, minimum: float) -> float:
    seconds = parse_duration(value, where)  # refuses negative and malformed durations
    if seconds < minimum:
        raise SpecError(where, value, f"must be at least {minimum:g}s")
    return seconds


def parse_local(raw: Any, where: str = "local") -> LocalSettings:
    if raw is None:
        return LocalSettings()
    if not isinstance(raw, dict):
        raise SpecError(where, raw, "must be a mapping")
    for key in raw:
        if key not in LOCAL_FIELDS:
            known = ", ".join(sorted(LOCAL_FIELDS))
            raise SpecError(f"{where}.{key}", raw[key], f"unknown field (known: {known})")
    cgroups = raw.get("cgroups", "auto")
    if cgroups not in CGROUP_MODES:
        raise SpecError(f"{where}.cgroups", cgroups, f"must be one of {', '.join(CGROUP_MODES)}")
    fixed = raw.get("replicas")
    if fixed is not None and (isinstance(fixed, bool) or not isinstance(fixed, int) or fixed < 1):
        raise SpecError(f"{where}.replicas", fixed, "must be an integer >= 1 (fixed replicas)")
    return LocalSettings(
        cgroups=cgroups,
        fixed_replicas=fixed,
        restart_backoff_s=_seconds(raw.get("restartBackoff", 10), f"{where}.restartBackoff", 0.1),
        hpa_sync_period_s=_seconds(raw.get("hpaSyncPeriod", 15), f"{where}.hpaSyncPeriod", 1.0),
        metrics_resolution_s=_seconds(
            raw.get("metricsResolution", 15), f"{where}.metricsResolution", 1.0
        ),
    )


@dataclass(frozen=True)
class ReplicaResources:
    """A replica's CPU request (what HPA utilization is relative to) and its limits."""

    cpu_request_cores: float
    cpu_limit_cores: float | None
    memory_limit_bytes: int | None


def replica_resources(resources: Any, where: str = "resources") -> ReplicaResources:
    """Requests and limits of the spec's ``resources`` (operator-parsed) as numbers.

    A CPU limit above this machine's cores could never be reached: refused, naming it."""
    request = float(parse_quantity(resources.requests["cpu"]))
    limit_text = resources.limits.get("cpu")
    limit = float(parse_quantity(limit_text)) if limit_text is not None else None
    cores = os.cpu_count() or 1
    if limit is not None and limit > cores:
        raise SpecError(
            f"{where}.limits.cpu",
            limit_text,
            f"exceeds the {cores} CPU cores of this machine: a local replica's CPU limit is a "
            "CFS quota on these cores",
        )
    if request > cores:
        raise SpecError(
            f"{where}.requests.cpu", resources.requests["cpu"], f"exceeds the {cores} CPU cores"
        )
    memory_text = resources.limits.get("memory")
    memory = int(parse_quantity(memory_text)) if memory_text is not None else None
    return ReplicaResources(request, limit, memory)
