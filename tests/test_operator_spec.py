"""parse_model_deployment / parse_scaling: typed, defaulted specs and field-naming errors."""

import copy
from pathlib import Path

import pytest
import yaml

from kservebench.errors import SpecError
from kservebench.operator.spec import (
    Metric,
    Mode,
    ModelKind,
    Protocol,
    parse_duration,
    parse_model_deployment,
    parse_scaling,
)

SAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "samples"
SAMPLE_NAMES = [f"{k}-{m}" for k in ("sklearn", "xgboost", "llm") for m in ("hpa", "knative")]


def sample(name):
    return yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())


def edited(name, edit):
    obj = copy.deepcopy(sample(name))
    edit(obj["spec"])
    return obj


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_every_sample_parses(name):
    spec = parse_model_deployment(sample(name))
    kind, mode = name.split("-")
    assert (spec.name, spec.model.kind, spec.mode) == (name, ModelKind(kind), Mode(mode))
    assert spec.resources.requests["cpu"] and spec.resources.requests["memory"]


def test_defaults_are_resolved_for_the_simulator():
    spec = parse_model_deployment(sample("sklearn-knative"))
    assert spec.scaling.scale_to_zero
    assert spec.scaling.knative.window_s == 60
    assert spec.scaling.knative.target_burst_capacity == 211

    llm = parse_model_deployment(sample("llm-knative"))
    assert llm.model.protocol is Protocol.OPENAI
    assert llm.model.runtime == "kserve-huggingfaceserver"
    assert llm.scaling.knative.scale_down_delay_s == 120
    assert llm.scaling.knative.panic_threshold_percentage == 200  # default filled in


def test_parse_scaling_alone_with_mode_defaults():
    knative = parse_scaling({"maxReplicas": 3}, "knative")
    assert (knative.metric, knative.target, knative.min_replicas) == (Metric.CONCURRENCY, 100, 1)
    assert knative.target_utilization_percentage == 70
    hpa = parse_scaling({"maxReplicas": 3, "hpa": {"scaleDownStabilizationSeconds": 60}}, "hpa")
    assert (hpa.metric, hpa.target) == (Metric.CPU, 80)
    assert (hpa.hpa.scale_up_stabilization_s, hpa.hpa.scale_down_stabilization_s) == (0, 60)
    rps = parse_scaling({"maxReplicas": 3, "metric": "rps"}, "knative")
    assert rps.target == 200
    llm = parse_scaling({"maxReplicas": 2}, "hpa", "llm", name="m", namespace="ns")
    assert llm.metric is Metric.PROMETHEUS
    assert llm.prometheus and 'namespace="ns"' in llm.prometheus.query
    assert "vllm:num_requests_waiting" in llm.prometheus.query


def test_settings_of_the_other_mode_are_kept_not_refused():
    # One scaling block shared by both modes (as experiment specs do) is fine.
    block = {
        "maxReplicas": 4,
        "knative": {"window": "30s"},
        "hpa": {"scaleUpStabilizationSeconds": 5},
    }
    assert parse_scaling(block, "hpa").knative.window_s == 30
    assert parse_scaling(block, "knative").hpa.scale_up_stabilization_s == 5


@pytest.mark.parametrize(
    ("text", "seconds"), [(90, 90), ("90s", 90), ("1m30s", 90), ("1h", 3600), ("2m", 120)]
)
def test_durations(text, seconds):
    assert parse_duration(text, "f", "knative.scaleDownDelay") == seconds


BAD = [
    # (sample, edit, field, value shown)
    ("sklearn-hpa", lambda s: s["model"].update(kind="pytorch"), "spec.model.kind", "pytorch"),
    ("sklearn-knative", lambda s: s["scaling"].update(metric="cpu"), "spec.scaling.metric", "cpu"),
    ("sklearn-hpa", lambda s: s["scaling"].update(metric="rps"), "spec.scaling.metric", "rps"),
    ("sklearn-hpa", lambda s: s["scaling"].update(minReplicas=0), "spec.scaling.minReplicas", "0"),
    ("sklearn-hpa", lambda s: s["scaling"].update(scaleToZero=True), "spec.scaling.scaleToZero",
     "True"),
    ("xgboost-hpa", lambda s: s["scaling"].update(minReplicas=4, maxReplicas=2),
     "spec.scaling.maxReplicas", "2"),
    ("xgboost-knative", lambda s: s["model"].pop("storageUri"), "spec.model.storageUri", "None"),
    ("xgboost-knative", lambda s: s["model"].update(storageUri="models/x"),
     "spec.model.storageUri", "models/x"),
    ("sklearn-hpa", lambda s: s["resources"]["requests"].update(cpu="1x"),
     "spec.resources.requests.cpu", "1x"),
    ("sklearn-hpa", lambda s: s["resources"]["limits"].update(memory="lots"),
     "spec.resources.limits.memory", "lots"),
    ("sklearn-hpa", lambda s: s["resources"]["requests"].update(cpu="2"),
     "spec.resources.requests.cpu", "2"),
    ("sklearn-hpa", lambda s: s["scaling"].update(target=150), "spec.scaling.target", "150"),
    ("sklearn-hpa", lambda s: s["scaling"].update(minReplica=2), "spec.scaling.minReplica", "2"),
    ("sklearn-hpa", lambda s: s.update(mode="slo"), "spec.mode", "slo"),
    ("sklearn-hpa", lambda s: s.update(mode="serverless"), "spec.mode", "serverless"),
    ("sklearn-hpa", lambda s: s["model"].update(protocol="openai"), "spec.model.protocol",
     "openai"),
    ("sklearn-hpa", lambda s: s["model"].update(llm={"gpus": 1}), "spec.model.llm", "gpus"),
    ("sklearn-hpa", lambda s: s["scaling"].update(metric="prometheus"),
     "spec.scaling.prometheus.query", "None"),
    ("sklearn-knative", lambda s: s["scaling"]["knative"].update(window="5s"),
     "spec.scaling.knative.window", "5"),
    ("sklearn-knative", lambda s: s["scaling"]["knative"].update(window="a minute"),
     "spec.scaling.knative.window", "a minute"),
    ("sklearn-knative", lambda s: s["scaling"]["knative"].update(panicThresholdPercentage=100),
     "spec.scaling.knative.panicThresholdPercentage", "100"),
    ("sklearn-knative", lambda s: s["scaling"].update(minReplicas=2, scaleToZero=True),
     "spec.scaling.minReplicas", "2"),
    ("sklearn-knative", lambda s: s["scaling"].pop("maxReplicas"), "spec.scaling.maxReplicas",
     "None"),
    ("llm-hpa", lambda s: s["resources"]["limits"].update({"nvidia.com/gpu": "2"}),
     "spec.resources.limits.nvidia.com/gpu", "2"),
    ("sklearn-hpa", lambda s: s["kserve"].update(deploymentModeNames="v015"),
     "spec.kserve.deploymentModeNames", "v015"),
    # What Knative 1.18 refuses by default, refused before it reaches the cluster.
    ("llm-knative", lambda s: s.update(timeoutSeconds=601), "spec.timeoutSeconds", "601"),
    ("sklearn-knative", lambda s: s["scaling"]["knative"].update(initialScale=0),
     "spec.scaling.knative.initialScale", "0"),
    ("sklearn-knative", lambda s: s["scaling"]["knative"].update(targetBurstCapacity=-0.5),
     "spec.scaling.knative.targetBurstCapacity", "-0.5"),
    ("sklearn-knative", lambda s: s["scaling"]["knative"].update(allowZeroInitialScale="yes"),
     "spec.scaling.knative.allowZeroInitialScale", "yes"),
    # KServe <= 0.15 ignores HPA behaviour; only the defaults are honest there.
    ("xgboost-hpa", lambda s: s.update(kserve={"deploymentModeNames": "legacy"}),
     "spec.scaling.hpa.scaleDownStabilizationSeconds", "120"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "edit", "field", "shown"), BAD)
def test_bad_specs_name_the_field_and_value(name, edit, field, shown):
    with pytest.raises(SpecError) as caught:
        parse_model_deployment(edited(name, edit))
    assert caught.value.field == field
    assert shown in str(caught.value)


def test_metadata_name_must_suit_kserve():
    obj = sample("sklearn-hpa")
    obj["metadata"]["name"] = "Sklearn_HPA"
    with pytest.raises(SpecError) as caught:
        parse_model_deployment(obj)
    assert caught.value.field == "metadata.name"


def test_knative_bounds_accept_what_knative_accepts():
    ok = [
        edited("llm-knative", lambda s: s.update(timeoutSeconds=600)),
        edited("llm-hpa", lambda s: s.update(timeoutSeconds=3600)),  # no Knative limit there
        edited("sklearn-knative", lambda s: s["scaling"]["knative"].update(targetBurstCapacity=-1)),
        edited("sklearn-knative", lambda s: s["scaling"]["knative"].update(targetBurstCapacity=0)),
        edited(
            "sklearn-knative",
            lambda s: s["scaling"]["knative"].update(initialScale=0, allowZeroInitialScale=True),
        ),
    ]
    for obj in ok:
        parse_model_deployment(obj)
    spec = parse_model_deployment(ok[-1])
    assert (spec.scaling.knative.initial_scale, spec.scaling.knative.allow_zero_initial_scale) == (
        0,
        True,
    )


@pytest.mark.parametrize(
    ("name", "length", "accepted"),
    [
        # Standard: pods get the label app=isvc.<name>-predictor (<= 63 characters).
        ("sklearn-hpa", 48, True),
        ("sklearn-hpa", 49, False),
        # Knative: the Service <name>-predictor is a host name label (<= 63 characters).
        ("sklearn-knative", 53, True),
        ("sklearn-knative", 54, False),
    ],
)
def test_name_length_per_mode(name, length, accepted):
    obj = sample(name)
    obj["metadata"]["name"] = "m" + "x" * (length - 1)
    if accepted:
        parse_model_deployment(obj)
        return
    with pytest.raises(SpecError) as caught:
        parse_model_deployment(obj)
    assert caught.value.field == "metadata.name"
    assert "at most" in str(caught.value)


def test_initial_scale_zero_is_a_cluster_question_not_a_scaling_one():
    # The local target and the simulator run initialScale 0 as given; a ModelDeployment in
    # mode knative needs the cluster's allow-zero-initial-scale to be said.
    block = {"maxReplicas": 2, "knative": {"initialScale": 0}}
    assert parse_scaling(block, "knative").knative.initial_scale == 0
    hpa = edited("sklearn-hpa", lambda s: s["scaling"].update(knative={"initialScale": 0}))
    assert parse_model_deployment(hpa).scaling.knative.initial_scale == 0  # unused in hpa
