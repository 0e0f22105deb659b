"""The ``scaling`` block: replica bounds, metric and target, Knative and HPA knobs.

``parse_scaling(raw, mode, kind)`` returns every value resolved to the defaults the
autoscalers themselves use (Knative config-autoscaler, Kubernetes HPA), durations in
whole seconds, so the builder, the simulator and the bench read the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kservebench.errors import SpecError
from kservebench.operator.vocabulary import (
    DEFAULT_LLM_QUERY,
    DEFAULT_PROMETHEUS_ADDRESS,
    DEFAULT_TARGET,
    MODE_METRICS,
    PERCENT_METRICS,
    Metric,
    Mode,
    ModelKind,
    check_known,
    parse_duration,
    read_enum,
    read_mapping,
    read_number,
    read_string,
)

# spec.scaling fields of the other modes, refused in mode slo (only the replica bounds
# and scaleToZero apply there).
SLO_UNUSED = {
    "metric",
    "target",
    "targetUtilizationPercentage",
    "containerConcurrency",
    "knative",
    "hpa",
    "prometheus",
}


@dataclass(frozen=True)
class KnativeScaling:
    """Knative KPA knobs, resolved to config-autoscaler defaults; durations in seconds."""

    window_s: int = 60
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    scale_down_delay_s: int = 0
    initial_scale: int = 1
    scale_to_zero_retention_s: int = 0
    target_burst_capacity: float = 211.0
    # The cluster's config-autoscaler has allow-zero-initial-scale: true (default false:
    # Knative then refuses initial-scale 0 and the revision never becomes ready).
    allow_zero_initial_scale: bool = False


@dataclass(frozen=True)
class HPAScaling:
    scale_up_stabilization_s: int = 0
    scale_down_stabilization_s: int = 300


@dataclass(frozen=True)
class PrometheusMetric:
    query: str
    server_address: str = DEFAULT_PROMETHEUS_ADDRESS


@dataclass(frozen=True)
class Scaling:
    min_replicas: int
    max_replicas: int
    metric: Metric
    target: int  # percent for cpu/memory; per replica for concurrency/rps/prometheus
    target_utilization_percentage: int = 70
    container_concurrency: int = 0  # 0 = no hard limit
    knative: KnativeScaling = field(default_factory=KnativeScaling)
    hpa: HPAScaling = field(default_factory=HPAScaling)
    prometheus: PrometheusMetric | None = None

    @property
    def scale_to_zero(self) -> bool:
        return self.min_replicas == 0


def parse_scaling(
    raw: Any,
    mode: Mode | str,
    kind: ModelKind | str = ModelKind.SKLEARN,
    path: str = "spec.scaling",
    name: str = "model",
    namespace: str = "default",
) -> Scaling:
    """The ``scaling`` block for ``mode``, every default resolved.

    Settings that belong to the other mode (a ``knative`` block in an HPA spec, say)
    are validated and kept, but only the builder for their mode uses them.
    """
    mode, kind = Mode(mode), ModelKind(kind)
    raw = read_mapping(raw, path)
    check_known(
        raw,
        path,
        {
            "minReplicas",
            "maxReplicas",
            "metric",
            "target",
            "targetUtilizationPercentage",
            "containerConcurrency",
            "scaleToZero",
            "knative",
            "hpa",
            "prometheus",
        },
    )
    scale_to_zero = raw.get("scaleToZero", False)
    if not isinstance(scale_to_zero, bool):
        raise SpecError(f"{path}.scaleToZero", scale_to_zero, "must be true or false")
    if mode is Mode.SLO:
        for key in sorted(SLO_UNUSED & set(raw)):
            raise SpecError(
                f"{path}.{key}", raw[key], "is not used in mode slo (spec.slo says how it scales)"
            )
    if scale_to_zero and mode is Mode.HPA:
        raise SpecError(f"{path}.scaleToZero", True, "HPA cannot scale to zero; use mode knative")
    if scale_to_zero and mode is Mode.SLO:
        # KServe Standard has no activator: nothing would hold the first request and say
        # so, so the loop could never scale back up from zero.
        raise SpecError(
            f"{path}.scaleToZero",
            True,
            "mode slo cannot scale to zero yet (KServe Standard holds no request at zero);"
            " use mode knative",
        )
    default_min = 0 if scale_to_zero else 1
    min_replicas = read_number(
        raw.get("minReplicas", default_min), f"{path}.minReplicas", "minReplicas"
    )
    if mode in (Mode.HPA, Mode.SLO) and min_replicas < 1:
        raise SpecError(
            f"{path}.minReplicas",
            min_replicas,
            f"must be >= 1 in mode {mode} (only knative scales to 0)",
        )
    if scale_to_zero and min_replicas != 0:
        raise SpecError(f"{path}.minReplicas", min_replicas, "must be 0 when scaleToZero is true")
    if "maxReplicas" not in raw:
        raise SpecError(
            f"{path}.maxReplicas", None, "is required (an unset maximum means no scaling)"
        )
    max_replicas = read_number(raw["maxReplicas"], f"{path}.maxReplicas", "maxReplicas")
    if max_replicas < min_replicas:
        raise SpecError(
            f"{path}.maxReplicas", max_replicas, f"must be >= minReplicas ({min_replicas})"
        )
    if mode is Mode.SLO:
        # The policy reads vLLM's series from Prometheus itself (spec.slo.prometheusUrl);
        # metric and target are placeholders no builder reads in this mode.
        return Scaling(
            min_replicas, max_replicas, Metric.PROMETHEUS, DEFAULT_TARGET[Metric.PROMETHEUS]
        )
    default_metric = Metric.CONCURRENCY
    if mode is Mode.HPA:
        default_metric = Metric.PROMETHEUS if kind is ModelKind.LLM else Metric.CPU
    metric = read_enum(
        raw.get("metric", default_metric.value), f"{path}.metric", Metric, MODE_METRICS[mode]
    )
    target = read_number(raw.get("target", DEFAULT_TARGET[metric]), f"{path}.target", "target")
    if metric in PERCENT_METRICS and target > 100:
        raise SpecError(f"{path}.target", target, f"is a {metric} utilization percent: 1-100")
    prometheus = None
    if metric is Metric.PROMETHEUS or raw.get("prometheus") is not None:
        prometheus = _parse_prometheus(raw.get("prometheus"), f"{path}.prometheus", kind)
        if prometheus is None:
            default_query = DEFAULT_LLM_QUERY.format(namespace=namespace, name=name)
            prometheus = PrometheusMetric(query=default_query)
    return Scaling(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        metric=metric,
        target=target,
        target_utilization_percentage=read_number(
            raw.get("targetUtilizationPercentage", 70),
            f"{path}.targetUtilizationPercentage",
            "targetUtilizationPercentage",
        ),
        container_concurrency=read_number(
            raw.get("containerConcurrency", 0),
            f"{path}.containerConcurrency",
            "containerConcurrency",
        ),
        knative=_parse_knative(raw.get("knative"), f"{path}.knative"),
        hpa=_parse_hpa(raw.get("hpa"), f"{path}.hpa"),
        prometheus=prometheus,
    )


def _parse_prometheus(raw: Any, path: str, kind: ModelKind) -> PrometheusMetric | None:
    raw = read_mapping(raw, path)
    check_known(raw, path, {"query", "serverAddress"})
    if "query" not in raw:
        if kind is ModelKind.LLM:
            return None  # the caller fills in the vLLM queue-length query
        raise SpecError(f"{path}.query", None, "is required for metric prometheus")
    query = read_string(raw["query"], f"{path}.query")
    address = read_string(
        raw.get("serverAddress", DEFAULT_PROMETHEUS_ADDRESS),
        f"{path}.serverAddress",
        r"^https?://",
        "an http(s) URL",
    )
    return PrometheusMetric(query=query, server_address=address)


def _parse_knative(raw: Any, path: str) -> KnativeScaling:
    raw = read_mapping(raw, path)
    fields = {
        "window": ("window_s", True),
        "panicWindowPercentage": ("panic_window_percentage", False),
        "panicThresholdPercentage": ("panic_threshold_percentage", False),
        "scaleDownDelay": ("scale_down_delay_s", True),
        "initialScale": ("initial_scale", False),
        "scaleToZeroRetention": ("scale_to_zero_retention_s", True),
        "targetBurstCapacity": ("target_burst_capacity", False),
    }
    check_known(raw, path, {*fields, "allowZeroInitialScale"})
    values: dict[str, Any] = {}
    for key, (attr, is_duration) in fields.items():
        if raw.get(key) is None:
            continue
        where, bound = f"{path}.{key}", f"knative.{key}"
        if is_duration:
            values[attr] = parse_duration(raw[key], where, bound)
        else:
            values[attr] = read_number(raw[key], where, bound, integer=key == "initialScale")
    allow_zero = raw.get("allowZeroInitialScale", False)
    if not isinstance(allow_zero, bool):
        raise SpecError(f"{path}.allowZeroInitialScale", allow_zero, "must be true or false")
    # initialScale 0 depends on the cluster's config-autoscaler, so the ModelDeployment
    # parser checks it (spec.py); the local target and the simulator run it as given.
    # A negative burst capacity other than -1 is invalid for Knative anywhere.
    burst = values.get("target_burst_capacity")
    if burst is not None and burst < 0 and burst != -1:
        raise SpecError(
            f"{path}.targetBurstCapacity", burst, "must be >= 0, or -1 (unlimited burst capacity)"
        )
    return KnativeScaling(**values, allow_zero_initial_scale=allow_zero)


def _parse_hpa(raw: Any, path: str) -> HPAScaling:
    raw = read_mapping(raw, path)
    keys = {
        "scaleUpStabilizationSeconds": "scale_up_stabilization_s",
        "scaleDownStabilizationSeconds": "scale_down_stabilization_s",
    }
    check_known(raw, path, set(keys))
    return HPAScaling(
        **{
            attr: read_number(raw[key], f"{path}.{key}", f"hpa.{key}")
            for key, attr in keys.items()
            if raw.get(key) is not None
        }
    )
