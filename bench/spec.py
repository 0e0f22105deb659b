"""The experiment spec: one YAML file says what to deploy, how to scale it, what traffic to send.

``kservebench bench`` runs it against the local target or a cluster and ``kservebench
simulate`` replays it through the HPA/KPA models, so both read it through
``load_experiment``. Validation is strict (unknown keys are typos, not extensions) and every
problem raises ``SpecError`` with the dotted path of the field (``patterns[2].duration``).

Patterns are validated by the load generator's own parser and durations by its duration
parser, so a spec that passes here is one ``kservebench loadgen`` accepts unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kservebench.errors import SpecError, read_yaml

if TYPE_CHECKING:
    from kservebench.bench.llm_spec import LlmServing
    from kservebench.local.settings import LocalSettings
    from kservebench.operator.spec import Resources, Scaling

MODES = ("hpa", "knative", "slo")  # slo: LLMs on the local target (kservebench.local)
SLO_SCALING = {"minReplicas", "maxReplicas", "scaleToZero"}
PROTOCOLS = ("v1", "v2")
LLM_PROTOCOLS = ("openai",)
LLM_SLOS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")
LLM_DATASET_REQUESTS = 2000  # distinct requests per LLM dataset, sent in turn
ARRIVALS = ("poisson", "constant", "closed")
MEASURED = "measured"
# The name prefixes a results folder and names Kubernetes objects: keep it DNS-1123 safe.
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
# An LLM's served name also names its replicas' pods and log files: no '/' here.
SERVED_NAME_RE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")


@dataclass(frozen=True)
class ModelRef:
    name: str  # catalogue name (kservebench.models.MODEL_NAMES); an LLM's served name
    protocol: str = "v1"
    batch: int = 1
    llm: LlmServing | None = None  # an LLM: its engine and vLLM settings (bench.llm_spec)
    dataset: Any = None  # an LLM: request lengths (kservebench.loadgen.datasets)

    @property
    def kind(self) -> str:
        return "llm" if self.llm is not None else "tabular"


@dataclass(frozen=True)
class PatternSpec:
    index: int
    type: str
    duration_s: float
    spec: dict[str, Any]  # exactly as written: what the load generator receives

    @property
    def label(self) -> str:
        """Folder and ``pattern`` column name: position first so order survives sorting."""
        return f"{self.index}-{self.type}"


@dataclass(frozen=True)
class Simulation:
    service_time: str | float = MEASURED  # "measured" or milliseconds per request
    cold_start: str | float = MEASURED  # "measured" or seconds


@dataclass(frozen=True)
class Experiment:
    name: str
    mode: str
    models: tuple[ModelRef, ...]
    scaling: Scaling  # the ModelDeployment's scaling (kservebench.operator.spec)
    resources: Resources
    arrival: str
    patterns: tuple[PatternSpec, ...]
    warmup_s: float
    cooldown_s: float
    slo_latency_ms: float
    llm_slos: dict[str, float]  # ttft_ms / itl_ms / tpot_ms / e2e_ms, those the spec gives
    repetitions: int
    local: LocalSettings  # the local control plane's knobs (kservebench.local.settings)
    simulation: Simulation
    raw: dict[str, Any]  # the spec as written, for run.json
    # mode slo: the LLM policy and its params (kservebench.local.slo_settings.SloSettings)
    autoscaler: Any = None


# --- small checkers: each names the field it looks at --------------------------------------


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(where or "<root>", value, "must be a mapping")
    return value


def _only(value: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in value:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise SpecError(_join(where, str(key)), value[key], f"unknown field (known: {known})")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise SpecError(where, value, f"must be one of {', '.join(choices)}")
    return value


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(where, value, "must be an integer")
    if value < minimum:
        raise SpecError(where, value, f"must be >= {minimum}")
    return value


def _number(value: Any, where: str, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(where, value, "must be a number")
    if value < minimum or (strict and value == minimum):
        raise SpecError(where, value, f"must be {'>' if strict else '>='} {minimum:g}")
    return float(value)


def _duration(value: Any, where: str) -> float:
    # The load generator's parser: "30s", "2m", "1.5s" or plain seconds, same as patterns.
    from kservebench.loadgen.patterns import parse_duration

    return float(parse_duration(value, where))


# --- sections --------------------------------------------------------------------------------


def parse_models(value: Any, where: str = "models") -> tuple[ModelRef, ...]:
    from kservebench.models.catalog import get_spec

    if not isinstance(value, list) or not value:
        raise SpecError(where, value, "must be a non-empty list of models")
    models: list[ModelRef] = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if isinstance(item, str):  # shorthand: just the catalogue name
            item = {"name": item}
        item = _mapping(item, at)
        _only(item, {"name", "protocol", "batch", "llm", "dataset"}, at)
        model = _llm_model(item, at) if "llm" in item else _tabular_model(item, at, get_spec)
        if any(m.name == model.name for m in models):
            raise SpecError(f"{at}.name", model.name, "is listed twice")
        if models and models[0].kind != model.kind:
            raise SpecError(
                f"{at}.llm" if model.llm else f"{at}.name",
                item["llm"] if model.llm else model.name,
                "an experiment's models are all LLMs or all tabular: they share resources "
                "and scaling",
            )
        models.append(model)
    return tuple(models)


def _tabular_model(item: Mapping[str, Any], at: str, get_spec: Any) -> ModelRef:
    if "dataset" in item:
        raise SpecError(f"{at}.dataset", item["dataset"], "is for LLM models (with llm:)")
    name = get_spec(item.get("name"), f"{at}.name").name  # the catalogue's own check
    protocol = _choice(item.get("protocol", "v1"), PROTOCOLS, f"{at}.protocol")
    return ModelRef(name, protocol, _int(item.get("batch", 1), f"{at}.batch", 1))


def _llm_model(item: Mapping[str, Any], at: str) -> ModelRef:
    from kservebench.bench.llm_spec import parse_llm_serving
    from kservebench.loadgen.datasets import parse_dataset

    name = item.get("name")
    if not isinstance(name, str) or not SERVED_NAME_RE.match(name):
        raise SpecError(f"{at}.name", name, "must be a served model name: letters, digits, -._")
    protocol = _choice(item.get("protocol", "openai"), LLM_PROTOCOLS, f"{at}.protocol")
    if "batch" in item:
        raise SpecError(f"{at}.batch", item["batch"], "is for tabular models")
    serving = parse_llm_serving(item["llm"], f"{at}.llm")
    if "dataset" not in item:
        raise SpecError(f"{at}.dataset", None, "is required: the requests' input/output lengths")
    dataset = _mapping(item["dataset"], f"{at}.dataset")
    # Requests cycle through the dataset; each must fit the engine's maxModelLen.
    defaults = {"requests": LLM_DATASET_REQUESTS, "max_model_len": serving.max_model_len}
    dataset = parse_dataset({**defaults, **dataset}, f"{at}.dataset")
    return ModelRef(name, protocol, 1, llm=serving, dataset=dataset)


def parse_scaling(value: Any, mode: str, models: tuple[ModelRef, ...]) -> Scaling:
    """The ModelDeployment's own parser: an experiment scales exactly as its deployments."""
    from kservebench.operator.spec import parse_scaling as parse_deployment_scaling

    return parse_deployment_scaling(value, mode, _kind(models), path="scaling")


def _kind(models: tuple[ModelRef, ...]) -> str:
    # The model kind only changes LLM defaults; the tabular kinds scale alike.
    from kservebench.models.catalog import get_spec

    if models[0].llm is not None:
        return "llm"
    return get_spec(models[0].name).framework


def parse_patterns(
    value: Any, where: str = "patterns", base_dir: Path | None = None
) -> tuple[PatternSpec, ...]:
    """Each pattern through the load generator's parser, so both agree on what is valid."""
    from kservebench.loadgen.patterns import parse_pattern, resolve_trace_file

    if not isinstance(value, list) or not value:
        raise SpecError(where, value, "must be a non-empty list of patterns")
    patterns = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        item = dict(_mapping(item, at))
        pattern = parse_pattern(item, at, base_dir=base_dir)
        if isinstance(item.get("file"), str):
            # The pattern is handed on as a file in the results folder: pin the trace path.
            item["file"] = str(resolve_trace_file(item["file"], f"{at}.file", base_dir).resolve())
        patterns.append(
            PatternSpec(index=i, type=pattern.name, duration_s=pattern.duration_s, spec=item)
        )
    return tuple(patterns)


def parse_resources(value: Any, models: tuple[ModelRef, ...]) -> Resources:
    from kservebench.operator.spec import parse_resources as parse_deployment_resources

    return parse_deployment_resources(value, _kind(models), path="resources")


def _measured_or(value: Any, where: str, parse: Any) -> str | float:
    return MEASURED if value == MEASURED else parse(value, where)


def _simulation(value: Any, where: str) -> Simulation:
    value = _mapping(value, where)
    _only(value, {"service_time", "cold_start"}, where)

    def milliseconds(v: Any, at: str) -> float:
        return _number(v, at, 0.0, strict=True)

    return Simulation(
        service_time=_measured_or(
            value.get("service_time", MEASURED), f"{where}.service_time", milliseconds
        ),
        cold_start=_measured_or(
            value.get("cold_start", MEASURED), f"{where}.cold_start", _duration
        ),
    )


TOP_LEVEL = {
    "name",
    "mode",
    "models",
    "scaling",
    "resources",
    "arrival",
    "patterns",
    "warmup",
    "cooldown",
    "slo",
    "repetitions",
    "local",
    "simulation",
    "autoscaler",
}


def parse_experiment(raw: Any, base_dir: Path | None = None) -> Experiment:
    """Validate a spec already read from YAML; ``base_dir`` resolves trace files."""
    from kservebench.local.settings import parse_local

    raw = _mapping(raw, "")
    _only(raw, TOP_LEVEL, "")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError("name", name, "must be lower-case letters, digits and '-' (<= 40)")
    mode = _choice(raw.get("mode"), MODES, "mode")
    slo = _mapping(raw.get("slo", {"latency_ms": 100}), "slo")
    # LLM runs: TTFT, inter-token and end-to-end targets; goodput counts requests meeting all.
    _only(slo, {"latency_ms", *LLM_SLOS}, "slo")
    llm_slos = {k: _number(slo[k], f"slo.{k}", 0.0, strict=True) for k in LLM_SLOS if k in slo}
    if "scaling" not in raw:
        raise SpecError("scaling", None, "is required")
    models = parse_models(raw.get("models"))
    resources = parse_resources(raw.get("resources"), models)
    autoscaler = None
    if mode == "slo":
        scaling, autoscaler = _slo_scaling(raw, models, llm_slos, resources)
    else:
        if "autoscaler" in raw:
            raise SpecError("autoscaler", raw["autoscaler"], "is for mode slo")
        scaling = parse_scaling(raw["scaling"], mode, models)
    return Experiment(
        name=name,
        mode=mode,
        models=models,
        scaling=scaling,
        resources=resources,
        arrival=_choice(raw.get("arrival", "poisson"), ARRIVALS, "arrival"),
        patterns=parse_patterns(raw.get("patterns"), base_dir=base_dir),
        warmup_s=_duration(raw.get("warmup", "0s"), "warmup"),
        cooldown_s=_duration(raw.get("cooldown", "0s"), "cooldown"),
        slo_latency_ms=_number(slo.get("latency_ms", 100), "slo.latency_ms", 0.0, strict=True),
        llm_slos=llm_slos,
        repetitions=_int(raw.get("repetitions", 1), "repetitions", 1),
        local=parse_local(raw.get("local"), "local"),
        simulation=_simulation(raw.get("simulation", {}), "simulation"),
        raw=dict(raw),
        autoscaler=autoscaler,
    )


def _slo_scaling(
    raw: Mapping[str, Any],
    models: tuple[ModelRef, ...],
    llm_slos: dict[str, float],
    resources: Resources,
) -> tuple[Scaling, Any]:
    """Mode slo: LLM models only; ``scaling`` holds just the replica bounds (the policy
    in ``autoscaler:`` decides the rest)."""
    from kservebench.local.settings import replica_resources
    from kservebench.local.slo_settings import parse_autoscaler

    if models[0].llm is None:
        raise SpecError("mode", "slo", "is for LLM models (entries with llm:); use hpa or knative")
    value = _mapping(raw["scaling"], "scaling")
    _only(value, SLO_SCALING, "scaling")
    # Knative's bounds checks allow minReplicas 0 (scaleToZero) and name the fields.
    scaling = parse_scaling(value, "knative", models)
    autoscaler = parse_autoscaler(
        raw.get("autoscaler"), scaling, llm_slos, replica_resources(resources).cpu_request_cores
    )
    return scaling, autoscaler


def load_experiment(path: Path | str) -> Experiment:
    path = Path(path)
    raw = read_yaml(path, "<file>")
    return parse_experiment(raw, base_dir=path.parent)
