"""ModelDeployment spec -> KServe InferenceService manifest: the one pure decision.

Which deployment mode, which autoscaler, which annotations and predictor fields a
spec turns into is decided here and nowhere else (see REFERENCE.md sections 1-2):

* mode hpa  -> deploymentMode Standard (RawDeployment on KServe <= 0.15).
  cpu/memory: KServe's own hpa class builds its HPA with an empty ``behavior`` and never
  reads ``autoScaling.behavior`` (kserve v0.16.0 reconcilers/hpa/hpa_reconciler.go), so
  the stabilization windows would silently become Kubernetes' 0 s / 300 s. Instead the
  InferenceService says ``autoscalerClass: external`` (KServe 0.16 then creates no HPA
  and leaves the Deployment's replicas alone) and the operator owns an
  ``autoscaling/v2`` HPA with the spec's metric and behaviour
  (:func:`build_horizontal_pod_autoscaler`). KServe <= 0.15 (legacy names) pins the
  replicas of an ``external`` Deployment, so there the hpa class stays and windows other
  than the defaults are refused (``spec.py``).
  prometheus: ``autoscalerClass: keda`` on an External metric; KServe's KEDA path does
  honour ``autoScaling.behavior``.
* mode slo -> deploymentMode Standard with ``autoscalerClass: external``: KServe creates
  no HPA and leaves the Deployment's replicas alone; the operator's SLO loop
  (``slo_loop.py``) sets them through the Deployment's scale subresource. The resolved
  policy settings ride along as the ``kservebench.dev/slo`` annotation (JSON).
* mode knative -> deploymentMode Knative (Serverless); scaleMetric concurrency|rps,
  KPA knobs as ``autoscaling.knative.dev/*`` annotations, which KServe passes to the
  revision; ``minReplicas: 0`` is scale to zero.
"""

from __future__ import annotations

import json
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
PROMETHEUS_SCRAPING_ANNOTATION = "serving.kserve.io/enable-prometheus-scraping"
SLO_ANNOTATION = "kservebench.dev/slo"  # mode slo: the policy's resolved settings (JSON)
OWNER_LABEL = "kservebench.dev/model-deployment"
MODE_LABEL = "kservebench.dev/mode"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kservebench-operator"}
SERVING_PORT = 8080  # the ModelServer's HTTP port; /metrics is served there too
HPA_API_VERSION = "autoscaling/v2"
HPA_GROUP, HPA_VERSION, HPA_PLURAL = "autoscaling", "v2", "horizontalpodautoscalers"

DEPLOYMENT_MODES: dict[tuple[Mode, DeploymentModeNames], str] = {
    (Mode.HPA, DeploymentModeNames.CURRENT): "Standard",
    (Mode.KNATIVE, DeploymentModeNames.CURRENT): "Knative",
    (Mode.HPA, DeploymentModeNames.LEGACY): "RawDeployment",
    (Mode.KNATIVE, DeploymentModeNames.LEGACY): "Serverless",
    # KServe <= 0.15 pins an external Deployment's replicas: spec.py refuses legacy there.
    (Mode.SLO, DeploymentModeNames.CURRENT): "Standard",
}
# Both spellings of a mode, so a mode change is detected whichever names a cluster uses.
# hpa and slo share Standard: switching between them patches, it does not recreate.
MODE_OF_DEPLOYMENT_MODE = {
    value: mode for (mode, _), value in DEPLOYMENT_MODES.items() if mode is not Mode.SLO
}
CURRENT_DEPLOYMENT_MODES = {
    v for (_, names), v in DEPLOYMENT_MODES.items() if names is DeploymentModeNames.CURRENT
}
LEGACY_DEPLOYMENT_MODES = {
    v for (_, names), v in DEPLOYMENT_MODES.items() if names is DeploymentModeNames.LEGACY
}
MODEL_FORMAT = {
    ModelKind.SKLEARN: "sklearn",
    ModelKind.XGBOOST: "xgboost",
    ModelKind.LLM: "huggingface",
}


def deployment_mode(spec: ModelDeploymentSpec) -> str:
    return DEPLOYMENT_MODES[(spec.mode, spec.deployment_mode_names)]


def autoscaler_class(spec: ModelDeploymentSpec) -> str | None:
    if spec.mode is Mode.SLO:
        return "external"  # the operator's SLO loop sets the replicas
    if spec.mode is not Mode.HPA:
        return None
    if spec.scaling.metric is Metric.PROMETHEUS:
        return "keda"
    return "hpa" if spec.deployment_mode_names is DeploymentModeNames.LEGACY else "external"


def owns_hpa(spec: ModelDeploymentSpec) -> bool:
    """Whether the operator (not KServe) creates the HPA for this spec."""
    return spec.mode is Mode.HPA and autoscaler_class(spec) == "external"


def predictor_name(name: str) -> str:
    return f"{name}-predictor"  # KServe's name for the predictor Deployment and Service


def hpa_name(name: str) -> str:
    # Not KServe's "<name>-predictor": KServe's reconciler looks that name up and would
    # try to overwrite an HPA it finds there. The "-predictor" infix keeps the name
    # readable by the analysis, which takes the model from "<model>-predictor...".
    return f"{predictor_name(name)}-hpa"


def build_inference_service(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The InferenceService for ``spec`` as a plain dict (no owner reference: kopf adds it)."""
    annotations = {
        DEPLOYMENT_MODE_ANNOTATION: deployment_mode(spec),
        # Our scrape jobs find model pods by label and by prometheus.kserve.io/*. KServe's
        # own flag only adds prometheus.io/port: 9091, the queue-proxy's port: right in
        # Knative mode, a port nothing listens on in Standard mode.
        PROMETHEUS_SCRAPING_ANNOTATION: "true" if spec.mode is Mode.KNATIVE else "false",
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
    elif spec.mode is Mode.SLO:
        assert spec.slo is not None  # parse_model_deployment fills it in mode slo
        annotations[AUTOSCALER_CLASS_ANNOTATION] = "external"
        annotations[SLO_ANNOTATION] = json.dumps(
            spec.slo.settings(), sort_keys=True, separators=(",", ":")
        )
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
    if scaling.metric is Metric.PROMETHEUS:
        assert scaling.prometheus is not None  # parse_scaling always fills it in
        # KServe hands KEDA only a threshold (no metricType), and KEDA's default is
        # AverageValue: desired = ceil(query / threshold), so the query is a total over the
        # replicas. The target says so; `value` is the field KServe reads the threshold from.
        threshold = str(scaling.target)
        external = {
            "metric": {
                "backend": "prometheus",
                "serverAddress": scaling.prometheus.server_address,
                "query": scaling.prometheus.query,
            },
            "target": {"type": "AverageValue", "averageValue": threshold, "value": threshold},
        }
        metrics = [{"type": "External", "external": external}]
        return {"autoScaling": {"metrics": metrics, "behavior": _behavior(spec)}}
    if owns_hpa(spec):
        return {}  # the operator's HPA carries metric, target and behaviour
    # KServe <= 0.15: its hpa class reads scaleMetric/scaleTarget (behaviour is refused
    # unless it is the default, which is what that HPA runs with).
    return {
        "scaleMetric": scaling.metric.value,
        "scaleMetricType": "Utilization",
        "scaleTarget": scaling.target,
    }


def _behavior(spec: ModelDeploymentSpec) -> dict[str, Any]:
    hpa = spec.scaling.hpa
    return {
        "scaleUp": {"stabilizationWindowSeconds": hpa.scale_up_stabilization_s},
        "scaleDown": {"stabilizationWindowSeconds": hpa.scale_down_stabilization_s},
    }


def build_horizontal_pod_autoscaler(spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """The HPA the operator owns beside the InferenceService, or None where KServe or
    Knative scales (see the module docstring). Scaling policies are left to Kubernetes'
    defaults; only the stabilization windows are the spec's."""
    if not owns_hpa(spec):
        return None
    scaling = spec.scaling
    metric = {
        "type": "Resource",
        "resource": {
            "name": scaling.metric.value,
            "target": {"type": "Utilization", "averageUtilization": scaling.target},
        },
    }
    return {
        "apiVersion": HPA_API_VERSION,
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": hpa_name(spec.name),
            "namespace": spec.namespace,
            "labels": {**MANAGED_BY, OWNER_LABEL: spec.name, MODE_LABEL: spec.mode.value},
        },
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": predictor_name(spec.name),
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [metric],
            "behavior": _behavior(spec),
        },
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
