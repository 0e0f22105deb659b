"""ModelDeployment spec -> KServe InferenceService manifest: the one pure decision.

Which deployment mode, which autoscaler, which annotations and predictor fields a
spec turns into is decided here and nowhere else (see REFERENCE.md sections 1-2):

* mode hpa  -> deploymentMode Standard (RawDeployment on KServe <= 0.15); cpu/memory
  scale with ``autoscalerClass: hpa`` (scaleMetric/scaleTarget plus the same Resource
  metric in ``autoScaling`` so stabilization windows ride along in ``behavior``); the
  ``prometheus`` metric scales with ``autoscalerClass: keda`` on an External metric.
* mode knative -> deploymentMode Knative (Serverless); scaleMetric concurrency|rps,
  KPA knobs as ``autoscaling.knative.dev/*`` annotations, which KServe passes to the
  revision; ``minReplicas: 0`` is scale to zero.
"""

from __future__ import annotations

from typing import Any

from kservebench.operator.spec import (
    GPU_RESOURCE,
    DeploymentModeNames,
    Metric,
    Mode,
    ModelDeploymentSpec,
    ModelKind,
    Protocol,
    format_duration,
)

ISVC_GROUP = "serving.kserve.io"
ISVC_VERSION = "v1beta1"
ISVC_PLURAL = "inferenceservices"
ISVC_API_VERSION = f"{ISVC_GROUP}/{ISVC_VERSION}"

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
KNATIVE_PREFIX = "autoscaling.knative.dev/"
OWNER_LABEL = "kservebench.dev/model-deployment"
MODE_LABEL = "kservebench.dev/mode"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kservebench-operator"}
SERVING_PORT = 8080  # the ModelServer's HTTP port; /metrics is served there too

DEPLOYMENT_MODES: dict[tuple[Mode, DeploymentModeNames], str] = {
    (Mode.HPA, DeploymentModeNames.CURRENT): "Standard",
    (Mode.KNATIVE, DeploymentModeNames.CURRENT): "Knative",
    (Mode.HPA, DeploymentModeNames.LEGACY): "RawDeployment",
    (Mode.KNATIVE, DeploymentModeNames.LEGACY): "Serverless",
}
# Both spellings of a mode, so a mode change is detected whichever names a cluster uses.
MODE_OF_DEPLOYMENT_MODE = {value: mode for (mode, _), value in DEPLOYMENT_MODES.items()}
MODEL_FORMAT = {
    ModelKind.SKLEARN: "sklearn",
    ModelKind.XGBOOST: "xgboost",
    ModelKind.LLM: "huggingface",
}


def deployment_mode(spec: ModelDeploymentSpec) -> str:
    return DEPLOYMENT_MODES[(spec.mode, spec.deployment_mode_names)]


def autoscaler_class(spec: ModelDeploymentSpec) -> str | None:
    if spec.mode is not Mode.HPA:
        return None
    return "keda" if spec.scaling.metric is Metric.PROMETHEUS else "hpa"


def build_inference_service(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The InferenceService for ``spec`` as a plain dict (no owner reference: kopf adds it)."""
    annotations = {
        DEPLOYMENT_MODE_ANNOTATION: deployment_mode(spec),
        "serving.kserve.io/enable-prometheus-scraping": "true",
        "prometheus.kserve.io/port": str(SERVING_PORT),
        "prometheus.kserve.io/path": "/metrics",
    }
    predictor: dict[str, Any] = {
        "minReplicas": spec.scaling.min_replicas,
        "maxReplicas": spec.scaling.max_replicas,
    }
    if spec.mode is Mode.HPA:
        annotations[AUTOSCALER_CLASS_ANNOTATION] = autoscaler_class(spec) or "hpa"
        predictor.update(_hpa_predictor(spec))
    else:
        annotations.update(knative_annotations(spec))
        predictor.update(_knative_predictor(spec))
    if spec.timeout_s is not None:
        predictor["timeout"] = spec.timeout_s
    predictor["model"] = _model(spec)
    return {
        "apiVersion": ISVC_API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {**MANAGED_BY, OWNER_LABEL: spec.name, MODE_LABEL: spec.mode.value},
            "annotations": annotations,
        },
        "spec": {"predictor": predictor},
    }


def _hpa_predictor(spec: ModelDeploymentSpec) -> dict[str, Any]:
    scaling = spec.scaling
    behavior = {
        "scaleUp": {"stabilizationWindowSeconds": scaling.hpa.scale_up_stabilization_s},
        "scaleDown": {"stabilizationWindowSeconds": scaling.hpa.scale_down_stabilization_s},
    }
    if scaling.metric is Metric.PROMETHEUS:
        assert scaling.prometheus is not None  # parse_scaling always fills it in
        # KEDA refuses scaleMetric; the query is a per-replica average compared to a Value.
        external = {
            "metric": {
                "backend": "prometheus",
                "serverAddress": scaling.prometheus.server_address,
                "query": scaling.prometheus.query,
            },
            "target": {"type": "Value", "value": str(scaling.target)},
        }
        metrics = [{"type": "External", "external": external}]
        return {"autoScaling": {"metrics": metrics, "behavior": behavior}}
    resource_metric = {
        "type": "Resource",
        "resource": {
            "name": scaling.metric.value,
            "target": {"type": "Utilization", "averageUtilization": scaling.target},
        },
    }
    return {
        "scaleMetric": scaling.metric.value,
        "scaleMetricType": "Utilization",
        "scaleTarget": scaling.target,
        # KServe reads metrics from autoScaling when it is set, so it repeats scaleMetric.
        "autoScaling": {"metrics": [resource_metric], "behavior": behavior},
    }


def _knative_predictor(spec: ModelDeploymentSpec) -> dict[str, Any]:
    predictor: dict[str, Any] = {
        "scaleMetric": spec.scaling.metric.value,
        "scaleTarget": spec.scaling.target,
    }
    if spec.scaling.container_concurrency:
        predictor["containerConcurrency"] = spec.scaling.container_concurrency
    return predictor


def knative_annotations(spec: ModelDeploymentSpec) -> dict[str, str]:
    """KPA settings as revision annotations; every value explicit, not cluster defaults."""
    knative = spec.scaling.knative
    values = {
        "class": "kpa.autoscaling.knative.dev",
        "metric": spec.scaling.metric.value,
        "target": spec.scaling.target,
        "target-utilization-percentage": spec.scaling.target_utilization_percentage,
        "window": format_duration(knative.window_s),
        "panic-window-percentage": _number_text(knative.panic_window_percentage),
        "panic-threshold-percentage": _number_text(knative.panic_threshold_percentage),
        "scale-down-delay": format_duration(knative.scale_down_delay_s),
        "initial-scale": knative.initial_scale,
        "scale-to-zero-pod-retention-period": format_duration(knative.scale_to_zero_retention_s),
        "target-burst-capacity": _number_text(knative.target_burst_capacity),
    }
    return {KNATIVE_PREFIX + key: str(value) for key, value in values.items()}


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _model(spec: ModelDeploymentSpec) -> dict[str, Any]:
    model = spec.model
    requests = dict(spec.resources.requests)
    limits = dict(spec.resources.limits)
    args: list[str] = []
    if model.llm is not None:
        # Extended resources need requests == limits; the GPU count comes from llm.gpus.
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(model.llm.gpus)
        args = [f"--model_name={model.name}", f"--backend={model.llm.backend}"]
        if model.llm.max_model_len is not None:
            args.append(f"--max-model-len={model.llm.max_model_len}")
        if model.llm.gpu_memory_utilization is not None:
            args.append(f"--gpu-memory-utilization={model.llm.gpu_memory_utilization}")
        if model.llm.gpus > 1:
            args.append(f"--tensor-parallel-size={model.llm.gpus}")
        args.extend(model.llm.extra_args)
    elif model.name != spec.name:
        args = [f"--model_name={model.name}"]
    out: dict[str, Any] = {
        "modelFormat": {"name": MODEL_FORMAT[model.kind]},
        "runtime": model.runtime,
        "storageUri": model.storage_uri,
        "resources": {"requests": requests, "limits": limits},
    }
    if model.protocol is not Protocol.OPENAI:
        out["protocolVersion"] = model.protocol.value
    if args:
        out["args"] = args
    return out


def mode_of(isvc: dict[str, Any]) -> Mode | None:
    """Which of our modes an existing InferenceService runs in (from its annotation)."""
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    return MODE_OF_DEPLOYMENT_MODE.get(annotations.get(DEPLOYMENT_MODE_ANNOTATION, ""))
