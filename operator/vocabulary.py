"""The ModelDeployment vocabulary: names, enums, defaults, bounds, and field readers.

Shared by spec parsing (``spec.py``, ``scaling.py``) and the CRD generator (``crd.py``),
so the API server and the operator refuse the same values. Every reader raises
:class:`SpecError` naming the dotted field path and the value.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from kubernetes.utils import parse_quantity

from kservebench.errors import SpecError

API_GROUP = "kservebench.dev"
API_VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"


class ModelKind(StrEnum):
    SKLEARN = "sklearn"
    XGBOOST = "xgboost"
    LLM = "llm"


class Mode(StrEnum):
    HPA = "hpa"  # KServe Standard: a Deployment scaled by HPA (or KEDA)
    KNATIVE = "knative"  # KServe Knative: request-driven KPA, scale to zero
    SLO = "slo"  # KServe Standard, replicas set by the operator's SLO/KV-cache-aware policy


# Accepted by the schema so the spec has room for them, refused until they are built.
RESERVED_MODES: dict[str, str] = {}


class Protocol(StrEnum):
    V1 = "v1"
    V2 = "v2"
    OPENAI = "openai"  # LLMs only: the huggingface server's OpenAI routes


class Metric(StrEnum):
    CPU = "cpu"
    MEMORY = "memory"
    PROMETHEUS = "prometheus"  # KEDA External metric from a PromQL query
    CONCURRENCY = "concurrency"
    RPS = "rps"


class DeploymentModeNames(StrEnum):
    CURRENT = "current"  # KServe >= 0.16: Standard / Knative
    LEGACY = "legacy"  # KServe <= 0.15: RawDeployment / Serverless


MODE_METRICS: dict[Mode, tuple[Metric, ...]] = {
    Mode.HPA: (Metric.CPU, Metric.MEMORY, Metric.PROMETHEUS),
    Mode.KNATIVE: (Metric.CONCURRENCY, Metric.RPS),
    Mode.SLO: (),  # spec.slo says how it scales; no scaling.metric
}
KIND_PROTOCOLS: dict[ModelKind, tuple[Protocol, ...]] = {
    ModelKind.SKLEARN: (Protocol.V1, Protocol.V2),
    ModelKind.XGBOOST: (Protocol.V1, Protocol.V2),
    ModelKind.LLM: (Protocol.OPENAI, Protocol.V1, Protocol.V2),
}
DEFAULT_PROTOCOL = {
    ModelKind.SKLEARN: Protocol.V1,
    ModelKind.XGBOOST: Protocol.V1,
    ModelKind.LLM: Protocol.OPENAI,
}
# Name the runtime explicitly: with protocol v2 and no runtime KServe picks MLServer.
DEFAULT_RUNTIME = {
    ModelKind.SKLEARN: "kserve-sklearnserver",
    ModelKind.XGBOOST: "kserve-xgbserver",
    ModelKind.LLM: "kserve-huggingfaceserver",
}
# Utilization targets are relative to requests, so requests are always set.
DEFAULT_REQUESTS = {
    ModelKind.SKLEARN: {"cpu": "1", "memory": "1Gi"},
    ModelKind.XGBOOST: {"cpu": "1", "memory": "1Gi"},
    ModelKind.LLM: {"cpu": "4", "memory": "16Gi"},
}
# Per-replica targets when the spec gives none (HPA cpu 80%; Knative config-autoscaler
# defaults; the WVA queue-length threshold for the Prometheus metric).
DEFAULT_TARGET = {
    Metric.CPU: 80,
    Metric.MEMORY: 80,
    Metric.PROMETHEUS: 5,
    Metric.CONCURRENCY: 100,
    Metric.RPS: 200,
}
# KServe's KEDA trigger carries only a threshold, so KEDA compares the query with it as an
# AverageValue: desired = ceil(query / threshold). The query must therefore be the total
# over the replicas (a sum), not a per-replica average, or it scales down under load.
DEFAULT_LLM_QUERY = (
    'sum(vllm:num_requests_waiting{{namespace="{namespace}",pod=~"{name}-predictor-.*"}})'
)
DEFAULT_PROMETHEUS_ADDRESS = "http://monitoring-kube-prometheus-prometheus.monitoring.svc:9090"

STORAGE_SCHEMES = ("gs", "s3", "pvc", "file", "http", "https", "hf", "oci")
STORAGE_URI_PATTERN = r"^(gs|s3|pvc|file|https?|hf|oci)://.+$"
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"  # what KServe accepts as an ISVC name
NAME_MAX = 63
# Longest name each mode survives (KServe 0.16 checks only the pattern): Standard labels
# the pods `app: isvc.<name>-predictor`, a label value of at most 63 characters; Knative
# names the Service `<name>-predictor`, whose host name label is at most 63 characters.
NAME_MAX_BY_MODE = {
    Mode.HPA: 63 - len("isvc.-predictor"),
    Mode.KNATIVE: 63 - len("-predictor"),
    Mode.SLO: 63 - len("isvc.-predictor"),  # Standard, as hpa
}
# Knative's config-defaults max-revision-timeout-seconds (600): KServe copies `timeout`
# into the revision's timeoutSeconds, and Knative refuses a longer one.
KNATIVE_TIMEOUT_MAX = 600
RUNTIME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# The Kubernetes quantity grammar (as in every generated CRD).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
RESOURCE_NAME_PATTERN = r"^([a-z0-9.-]+/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
GPU_RESOURCE = "nvidia.com/gpu"
DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"

# The HPA behaviour Kubernetes applies when none is given: what an autoscaler that ignores
# ``autoScaling.behavior`` (KServe <= 0.15's hpa class) really runs with.
HPA_DEFAULT_STABILIZATION = {
    "scaleUpStabilizationSeconds": 0,
    "scaleDownStabilizationSeconds": 300,
}

# Bounds shared with the CRD schema: field -> (minimum, maximum); None = unbounded.
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "minReplicas": (0, 1000),
    "maxReplicas": (1, 1000),
    "target": (1, None),
    "targetUtilizationPercentage": (1, 100),
    "containerConcurrency": (0, 1000),
    "timeoutSeconds": (1, 3600),
    "knative.window": (6, 3600),
    "knative.panicWindowPercentage": (1, 100),
    "knative.panicThresholdPercentage": (110, 1000),
    "knative.scaleDownDelay": (0, 3600),
    "knative.initialScale": (0, 1000),
    "knative.scaleToZeroRetention": (0, 3600),
    "knative.targetBurstCapacity": (-1, None),
    "hpa.scaleUpStabilizationSeconds": (0, 3600),
    "hpa.scaleDownStabilizationSeconds": (0, 3600),
    "llm.gpus": (1, 16),
    "llm.maxModelLen": (16, None),
    "llm.gpuMemoryUtilization": (0.05, 1.0),
    # mode slo (spec.slo, see slo_spec.py); durations in seconds
    "slo.ttftMs": (1, 600_000),
    "slo.itlMs": (1, 60_000),
    "slo.e2eMs": (1, 3_600_000),
    "slo.headroom": (0, 0.9),
    "slo.kvTarget": (0.05, 1.0),
    "slo.interval": (1, 600),
    "slo.coldStart": (1, 3600),
    "slo.staleAfter": (1, 3600),
    "slo.scaleDownStabilization": (0, 3600),
    "slo.variants.gpus": (0, 16),
    "slo.variants.costPerHour": (0, None),
    "slo.variants.minReplicas": (0, 1000),
    "slo.variants.maxReplicas": (1, 1000),
}
PERCENT_METRICS = (Metric.CPU, Metric.MEMORY)


# --- small readers: each names its field on failure -------------------------------


def read_mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(path, value, "must be a mapping")
    return value


def check_known(raw: dict[str, Any], path: str, allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            raise SpecError(f"{path}.{key}", raw[key], f"unknown field; known: {sorted(allowed)}")


def read_enum(value: Any, path: str, enum: type[StrEnum], allowed: tuple[Any, ...] = ()) -> Any:
    choices = allowed or tuple(enum)
    if value not in [c.value for c in choices]:
        raise SpecError(path, value, f"must be one of {', '.join(c.value for c in choices)}")
    return enum(value)


def read_number(value: Any, path: str, key: str, integer: bool = True) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(path, value, "must be a number")
    if integer and value != int(value):
        raise SpecError(path, value, "must be a whole number")
    low, high = BOUNDS[key]
    if low is not None and value < low:
        raise SpecError(path, value, f"must be >= {low}")
    if high is not None and value > high:
        raise SpecError(path, value, f"must be <= {high}")
    return int(value) if integer else float(value)


def read_string(value: Any, path: str, pattern: str | None = None, what: str = "") -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(path, value, "must be a non-empty string")
    if pattern and not re.match(pattern, value):
        raise SpecError(path, value, f"must be {what or 'match ' + pattern}")
    return value


def parse_duration(value: Any, path: str, key: str) -> int:
    """Whole seconds from ``90``, ``"90s"``, ``"1m30s"`` or ``"1h"`` (Knative's Go durations)."""
    if isinstance(value, str):
        match = re.match(DURATION_PATTERN, value)
        if not value or not match:
            raise SpecError(path, value, "must be whole seconds or a duration like 60s, 2m, 1h")
        hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in match.groups())
        value = hours * 3600 + minutes * 60 + seconds
    return read_number(value, path, key)


def format_duration(seconds: int) -> str:
    return f"{seconds}s"


def parse_quantity_field(value: Any, path: str) -> str:
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not re.match(QUANTITY_PATTERN, text):
        raise SpecError(path, value, "is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)")
    try:
        parse_quantity(text)
    except ValueError as err:
        raise SpecError(path, value, f"is not a Kubernetes quantity ({err})") from None
    return text
