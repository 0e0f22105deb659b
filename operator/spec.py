"""The ModelDeployment spec: parsed and validated into typed values, no I/O.

``parse_model_deployment(obj)`` turns a whole ModelDeployment (a dict as read from YAML
or the API) into a :class:`ModelDeploymentSpec`, filling in every default, so the
builder, the simulator and the bench all read the same resolved numbers.
``parse_scaling`` is the reusable part for the ``scaling`` block alone.

Every problem raises :class:`SpecError` naming the dotted field and the value. The
bounds and enums here are the same objects the CRD schema is generated from
(``crd.py``), so the API server and this module refuse the same things.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kubernetes.utils import parse_quantity

from kservebench.errors import SpecError
from kservebench.operator.scaling import (
    HPAScaling,
    KnativeScaling,
    PrometheusMetric,
    Scaling,
    parse_scaling,
)
from kservebench.operator.slo_spec import SloSpec, parse_slo
from kservebench.operator.vocabulary import (
    API_GROUP,
    API_VERSION,
    DEFAULT_PROTOCOL,
    DEFAULT_REQUESTS,
    DEFAULT_RUNTIME,
    GPU_RESOURCE,
    HPA_DEFAULT_STABILIZATION,
    KIND,
    KIND_PROTOCOLS,
    KNATIVE_TIMEOUT_MAX,
    NAME_MAX,
    NAME_MAX_BY_MODE,
    NAME_PATTERN,
    PERCENT_METRICS,
    PLURAL,
    RESERVED_MODES,
    RESOURCE_NAME_PATTERN,
    RUNTIME_PATTERN,
    STORAGE_SCHEMES,
    STORAGE_URI_PATTERN,
    DeploymentModeNames,
    Metric,
    Mode,
    ModelKind,
    Protocol,
    check_known,
    format_duration,
    parse_duration,
    parse_quantity_field,
    read_enum,
    read_mapping,
    read_number,
    read_string,
)

# What other stages import from here (the vocabulary module has the rest).
__all__ = [
    "API_GROUP",
    "API_VERSION",
    "GPU_RESOURCE",
    "KIND",
    "PLURAL",
    "DeploymentModeNames",
    "HPAScaling",
    "KnativeScaling",
    "Metric",
    "Mode",
    "ModelDeploymentSpec",
    "ModelKind",
    "ModelSpec",
    "PrometheusMetric",
    "Protocol",
    "Resources",
    "Scaling",
    "SloSpec",
    "format_duration",
    "parse_duration",
    "parse_model_deployment",
    "parse_scaling",
]


@dataclass(frozen=True)
class LLMSpec:
    backend: str = "vllm"
    gpus: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    kind: ModelKind
    storage_uri: str
    protocol: Protocol
    runtime: str
    name: str  # the served model name (URL path, OpenAI "model")
    llm: LLMSpec | None = None


@dataclass(frozen=True)
class Resources:
    requests: dict[str, str]
    limits: dict[str, str]


@dataclass(frozen=True)
class ModelDeploymentSpec:
    name: str
    namespace: str
    model: ModelSpec
    resources: Resources
    mode: Mode
    deployment_mode_names: DeploymentModeNames
    scaling: Scaling
    timeout_s: int | None = None
    slo: SloSpec | None = None  # mode slo only


def parse_model(raw: Any, path: str = "spec.model") -> ModelSpec:
    raw = read_mapping(raw, path)
    check_known(raw, path, {"kind", "storageUri", "protocol", "runtime", "name", "llm"})
    if "kind" not in raw:
        raise SpecError(f"{path}.kind", None, "is required (sklearn, xgboost or llm)")
    kind = read_enum(raw["kind"], f"{path}.kind", ModelKind)
    if "storageUri" not in raw:
        raise SpecError(f"{path}.storageUri", None, "is required: where the model artifact is")
    storage_uri = read_string(
        raw["storageUri"],
        f"{path}.storageUri",
        STORAGE_URI_PATTERN,
        f"a URI with scheme {', '.join(STORAGE_SCHEMES)}",
    )
    protocol = read_enum(
        raw.get("protocol", DEFAULT_PROTOCOL[kind].value),
        f"{path}.protocol",
        Protocol,
        KIND_PROTOCOLS[kind],
    )
    runtime = DEFAULT_RUNTIME[kind]
    if raw.get("runtime") is not None:
        runtime = read_string(raw["runtime"], f"{path}.runtime", RUNTIME_PATTERN, "a runtime name")
    name = ""
    if raw.get("name") is not None:
        name = read_string(raw["name"], f"{path}.name", r"^[A-Za-z0-9][-A-Za-z0-9_./]*$", "a name")
    llm = None
    if kind is ModelKind.LLM:
        llm = parse_llm(raw.get("llm"), f"{path}.llm")
    elif raw.get("llm") is not None:
        raise SpecError(f"{path}.llm", raw["llm"], "is only for kind llm")
    return ModelSpec(kind, storage_uri, protocol, runtime, name, llm)


def parse_llm(raw: Any, path: str = "spec.model.llm") -> LLMSpec:
    raw = read_mapping(raw, path)
    check_known(raw, path, {"backend", "gpus", "maxModelLen", "gpuMemoryUtilization", "extraArgs"})
    backend = raw.get("backend", "vllm")
    if backend != "vllm":
        raise SpecError(f"{path}.backend", backend, "must be vllm")
    extra = raw.get("extraArgs", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise SpecError(f"{path}.extraArgs", extra, "must be a list of strings")
    return LLMSpec(
        backend=backend,
        gpus=read_number(raw.get("gpus", 1), f"{path}.gpus", "llm.gpus"),
        max_model_len=None
        if raw.get("maxModelLen") is None
        else read_number(raw["maxModelLen"], f"{path}.maxModelLen", "llm.maxModelLen"),
        gpu_memory_utilization=None
        if raw.get("gpuMemoryUtilization") is None
        else read_number(
            raw["gpuMemoryUtilization"],
            f"{path}.gpuMemoryUtilization",
            "llm.gpuMemoryUtilization",
            integer=False,
        ),
        extra_args=tuple(extra),
    )


def parse_resources(raw: Any, kind: ModelKind, path: str = "spec.resources") -> Resources:
    raw = read_mapping(raw, path)
    check_known(raw, path, {"requests", "limits"})
    parsed: dict[str, dict[str, str]] = {}
    for section in ("requests", "limits"):
        values = read_mapping(raw.get(section), f"{path}.{section}")
        parsed[section] = {}
        for name, quantity in values.items():
            where = f"{path}.{section}.{name}"
            read_string(name, where, RESOURCE_NAME_PATTERN, "a resource name (cpu, memory, ...)")
            parsed[section][name] = parse_quantity_field(quantity, where)
    requests = {**DEFAULT_REQUESTS[kind], **parsed["requests"]}
    # No limits given: limits = requests (Guaranteed QoS keeps benchmark replicas alike).
    limits = parsed["limits"] or {k: v for k, v in requests.items() if k in ("cpu", "memory")}
    for name, request in requests.items():
        if name in limits and parse_quantity(request) > parse_quantity(limits[name]):
            raise SpecError(
                f"{path}.requests.{name}", request, f"must not exceed the limit {limits[name]}"
            )
    return Resources(requests=requests, limits=limits)


def parse_model_deployment(obj: Any) -> ModelDeploymentSpec:
    """A whole ModelDeployment object -> typed spec; raises SpecError naming the field."""
    obj = read_mapping(obj, "(document)")
    api_version = obj.get("apiVersion", f"{API_GROUP}/{API_VERSION}")
    if api_version != f"{API_GROUP}/{API_VERSION}":
        raise SpecError("apiVersion", api_version, f"must be {API_GROUP}/{API_VERSION}")
    if obj.get("kind", KIND) != KIND:
        raise SpecError("kind", obj.get("kind"), f"must be {KIND}")
    metadata = read_mapping(obj.get("metadata"), "metadata")
    name = read_string(metadata.get("name"), "metadata.name", NAME_PATTERN, "a DNS-1123 label")
    if len(name) > NAME_MAX:
        raise SpecError("metadata.name", name, f"must be at most {NAME_MAX} characters")
    namespace = metadata.get("namespace") or "default"
    spec = read_mapping(obj.get("spec"), "spec")
    check_known(
        spec, "spec", {"model", "resources", "mode", "kserve", "scaling", "timeoutSeconds", "slo"}
    )
    if "mode" not in spec:
        raise SpecError("spec.mode", None, "is required (hpa, knative or slo)")
    if spec["mode"] in RESERVED_MODES:
        raise SpecError(
            "spec.mode",
            spec["mode"],
            f"is reserved for {RESERVED_MODES[spec['mode']]}, not implemented yet;"
            " use hpa or knative",
        )
    mode = read_enum(spec["mode"], "spec.mode", Mode)
    if mode is Mode.SLO:
        _check_slo_mode(spec)
    elif spec.get("slo") is not None:
        raise SpecError("spec.slo", spec["slo"], "is only for mode slo")
    if len(name) > NAME_MAX_BY_MODE[mode]:
        raise SpecError(
            "metadata.name",
            name,
            f"must be at most {NAME_MAX_BY_MODE[mode]} characters in mode {mode} (KServe and"
            f" Knative derive longer names and labels from it)",
        )
    model = parse_model(spec.get("model"))
    if not model.name:
        model = replace(model, name=name)  # KServe serves the model under the ISVC name
    kserve = read_mapping(spec.get("kserve"), "spec.kserve")
    check_known(kserve, "spec.kserve", {"deploymentModeNames"})
    names = read_enum(
        kserve.get("deploymentModeNames", "current"),
        "spec.kserve.deploymentModeNames",
        DeploymentModeNames,
    )
    resources = parse_resources(spec.get("resources"), model.kind)
    if model.llm is not None:
        for section in ("requests", "limits"):
            given = getattr(resources, section).get(GPU_RESOURCE)
            if given is not None and parse_quantity(given) != model.llm.gpus:
                raise SpecError(
                    f"spec.resources.{section}.{GPU_RESOURCE}",
                    given,
                    f"must equal spec.model.llm.gpus ({model.llm.gpus})",
                )
    if "scaling" not in spec:
        raise SpecError("spec.scaling", None, "is required (at least maxReplicas)")
    scaling = parse_scaling(spec["scaling"], mode, model.kind, name=name, namespace=namespace)
    if names is DeploymentModeNames.LEGACY and mode is Mode.HPA:
        _check_legacy_hpa(spec["scaling"], scaling)
    knative = scaling.knative
    if mode is Mode.KNATIVE and knative.initial_scale == 0 and not knative.allow_zero_initial_scale:
        # Knative's annotation validation: the revision would be refused after the fact.
        raise SpecError(
            "spec.scaling.knative.initialScale",
            0,
            "Knative refuses initial-scale 0 unless the cluster's config-autoscaler sets"
            " allow-zero-initial-scale: true (the default is false); say so with"
            " allowZeroInitialScale: true",
        )
    slo = None
    if mode is Mode.SLO:
        assert model.llm is not None  # _check_slo_mode: kind llm
        slo = parse_slo(
            spec["slo"],
            name=name,
            gpus=model.llm.gpus,
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
        )
    timeout = None
    if spec.get("timeoutSeconds") is not None:
        timeout = read_number(spec["timeoutSeconds"], "spec.timeoutSeconds", "timeoutSeconds")
        if mode is Mode.KNATIVE and timeout > KNATIVE_TIMEOUT_MAX:
            raise SpecError(
                "spec.timeoutSeconds",
                timeout,
                f"must be <= {KNATIVE_TIMEOUT_MAX} in mode knative (Knative's default"
                " max-revision-timeout-seconds)",
            )
    return ModelDeploymentSpec(
        name=name,
        namespace=namespace,
        model=model,
        resources=resources,
        mode=mode,
        deployment_mode_names=names,
        scaling=scaling,
        timeout_s=timeout,
        slo=slo,
    )


def _check_slo_mode(spec: dict[str, Any]) -> None:
    """What mode slo needs before its fields are read (crd.py's ``.mode`` rule, too)."""
    kind = read_mapping(spec.get("model"), "spec.model").get("kind")
    if kind != ModelKind.LLM.value:
        raise SpecError("spec.mode", "slo", f"is for kind llm only (spec.model.kind is {kind})")
    if not isinstance(spec.get("slo"), dict):
        raise SpecError(
            "spec.mode", "slo", "needs a spec.slo block with the ttftMs and itlMs objectives"
        )
    names = read_mapping(spec.get("kserve"), "spec.kserve").get("deploymentModeNames")
    if names == DeploymentModeNames.LEGACY.value:
        raise SpecError(
            "spec.mode",
            "slo",
            "needs spec.kserve.deploymentModeNames current: KServe <= 0.15 pins the replicas"
            " of a Deployment with autoscalerClass external",
        )


def _check_legacy_hpa(raw: Any, scaling: Scaling) -> None:
    """KServe <= 0.15 builds its HPA without ``behavior``: refuse windows it would ignore.

    With the current names the operator owns the HPA and sets the behaviour itself
    (``inferenceservice.build_horizontal_pod_autoscaler``); KEDA (metric prometheus)
    honours it in every version.
    """
    if scaling.metric not in PERCENT_METRICS:
        return
    given = read_mapping(read_mapping(raw, "spec.scaling").get("hpa"), "spec.scaling.hpa")
    for key, default in HPA_DEFAULT_STABILIZATION.items():
        if given.get(key) is not None and given[key] != default:
            raise SpecError(
                f"spec.scaling.hpa.{key}",
                given[key],
                f"is ignored by the hpa autoscaler of KServe <= 0.15 (deploymentModeNames"
                f" legacy), which always runs Kubernetes' default {default}; leave it at"
                f" {default} or use deploymentModeNames current",
            )
