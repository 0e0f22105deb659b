"""spec -> InferenceService: strict against the KServe SDK, right fields for each mode,
and the ``kservebench render`` command as a user runs it."""

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from kservebench.errors import SpecError
from kservebench.operator.inferenceservice import (
    AUTOSCALER_CLASS_ANNOTATION,
    DEPLOYMENT_MODE_ANNOTATION,
    KNATIVE_PREFIX,
    OWNER_LABEL,
    build_inference_service,
    mode_of,
)
from kservebench.operator.sdk_schema import validate_inference_service, validate_model
from kservebench.operator.spec import DeploymentModeNames, Mode, parse_model_deployment
from kservebench.procs import kservebench_argv

SAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "samples"
SAMPLE_NAMES = [f"{k}-{m}" for k in ("sklearn", "xgboost", "llm") for m in ("hpa", "knative")]
KSERVEBENCH = kservebench_argv()


def sample(name):
    return yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())


def render(name, **changes):
    spec = parse_model_deployment(sample(name))
    if changes:
        from dataclasses import replace

        spec = replace(spec, **changes)
    return build_inference_service(spec)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_every_sample_renders_a_strictly_valid_inference_service(name):
    isvc = render(name)
    validate_inference_service(isvc)  # raises on any field the SDK does not know

    annotations = isvc["metadata"]["annotations"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert isvc["metadata"]["labels"][OWNER_LABEL] == name
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert annotations["prometheus.kserve.io/port"] == "8080"
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
    # Utilization is relative to requests; an unset maximum means no scaling at all.
    assert {"cpu", "memory"} <= set(model["resources"]["requests"])
    assert predictor["maxReplicas"] >= max(1, predictor["minReplicas"])
    assert model["runtime"] and model["storageUri"] == sample(name)["spec"]["model"]["storageUri"]

    if name.endswith("-hpa"):
        assert annotations[DEPLOYMENT_MODE_ANNOTATION] == "Standard"
        assert predictor["minReplicas"] >= 1
        assert not any(key.startswith(KNATIVE_PREFIX) for key in annotations)
        behavior = predictor["autoScaling"]["behavior"]
        assert {"scaleUp", "scaleDown"} <= set(behavior)
    else:
        assert annotations[DEPLOYMENT_MODE_ANNOTATION] == "Knative"
        assert AUTOSCALER_CLASS_ANNOTATION not in annotations
        assert predictor["scaleMetric"] in ("concurrency", "rps")
        assert annotations[KNATIVE_PREFIX + "class"] == "kpa.autoscaling.knative.dev"
        assert annotations[KNATIVE_PREFIX + "metric"] == predictor["scaleMetric"]
        for knob in ("window", "panic-window-percentage", "panic-threshold-percentage",
                     "scale-down-delay", "initial-scale", "target-utilization-percentage",
                     "scale-to-zero-pod-retention-period", "target-burst-capacity"):  # fmt: skip
            assert KNATIVE_PREFIX + knob in annotations, knob
        assert "autoScaling" not in predictor  # HPA-only settings never leak into Knative


def test_cpu_hpa_uses_the_hpa_class_and_a_resource_metric():
    predictor = render("sklearn-hpa")["spec"]["predictor"]
    assert render("sklearn-hpa")["metadata"]["annotations"][AUTOSCALER_CLASS_ANNOTATION] == "hpa"
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 80)
    # KServe reads autoScaling.metrics when autoScaling is set: it must say the same.
    [metric] = predictor["autoScaling"]["metrics"]
    assert metric["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 80},
    }
    assert predictor["autoScaling"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_llm_hpa_scales_with_keda_on_the_vllm_queue():
    isvc = render("llm-hpa")
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"][AUTOSCALER_CLASS_ANNOTATION] == "keda"
    assert "scaleMetric" not in predictor  # KServe's webhook refuses scaleMetric with KEDA
    [metric] = predictor["autoScaling"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["backend"] == "prometheus"
    assert "vllm:num_requests_waiting" in metric["external"]["metric"]["query"]
    assert metric["external"]["target"] == {"type": "Value", "value": "5"}


@pytest.mark.parametrize("name", ["llm-hpa", "llm-knative"])
def test_llm_runs_huggingface_with_vllm_on_a_gpu(name):
    model = render(name)["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert model["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert f"--model_name={name}" in model["args"] and "--backend=vllm" in model["args"]
    assert "protocolVersion" not in model  # OpenAI routes, not a v1/v2 protocol


def test_knative_scale_to_zero_and_concurrency_limit():
    isvc = render("xgboost-knative")
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["containerConcurrency"]) == (0, 8)
    assert isvc["metadata"]["annotations"][KNATIVE_PREFIX + "window"] == "30s"
    assert isvc["metadata"]["annotations"][KNATIVE_PREFIX + "scale-down-delay"] == "15s"


def test_legacy_deployment_mode_names():
    legacy = DeploymentModeNames.LEGACY
    hpa = render("sklearn-hpa", deployment_mode_names=legacy)
    knative = render("sklearn-knative", deployment_mode_names=legacy)
    assert hpa["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "RawDeployment"
    assert knative["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "Serverless"
    # Either spelling reads back as the same mode (mode changes are detected on both).
    assert (mode_of(hpa), mode_of(knative)) == (Mode.HPA, Mode.KNATIVE)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m["spec"]["predictor"]["model"].update(storageURI="x"),
         "spec.predictor.model.storageURI"),
        (lambda m: m["spec"]["predictor"].update(maxReplicas="5"), "spec.predictor.maxReplicas"),
        (lambda m: m["spec"]["predictor"]["autoScaling"]["metrics"][0].update(kind="cpu"),
         "spec.predictor.autoScaling.metrics[0].kind"),
        (lambda m: m["spec"]["predictor"]["autoScaling"]["behavior"]["scaleUp"].update(window=3),
         "spec.predictor.autoScaling.behavior.scaleUp.window"),
        (lambda m: m["metadata"].update(labels={"a": 1}), "metadata.labels.a"),
        (lambda m: m["spec"].update(predictors={}), "spec.predictors"),
    ],
)  # fmt: skip
def test_the_sdk_validator_refuses_unknown_fields_and_wrong_types(edit, field):
    manifest = copy.deepcopy(render("sklearn-hpa"))
    edit(manifest)
    with pytest.raises(SpecError) as caught:
        validate_inference_service(manifest)
    assert caught.value.field == field


def test_the_sdk_validator_walks_kubernetes_types_too():
    validate_model({"containers": [{"name": "c", "image": "i", "env": [{"name": "A"}]}]},
                   "V1PodSpec")  # fmt: skip
    with pytest.raises(SpecError) as caught:
        validate_model({"containers": [{"name": "c", "envv": []}]}, "V1PodSpec")
    assert caught.value.field == "containers[0].envv"


def run_render(*args):
    return subprocess.run([*KSERVEBENCH, "render", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_render_command_on_the_acceptance_samples(tmp_path):
    # One file, three documents: one process start (importing kserve takes seconds).
    names = ["sklearn-hpa", "xgboost-knative", "llm-hpa"]
    path = tmp_path / "three.yaml"
    path.write_text("---\n".join((SAMPLES / f"{n}.yaml").read_text() for n in names))
    out = run_render(str(path))
    assert out.returncode == 0, out.stderr
    sklearn, xgboost, llm = out.stdout.split("---\n")

    assert "serving.kserve.io/deploymentMode: Standard" in sklearn
    assert "serving.kserve.io/autoscalerClass: hpa" in sklearn
    assert "scaleMetric: cpu" in sklearn and "maxReplicas: 5" in sklearn
    assert yaml.safe_load(sklearn)["spec"]["predictor"]["model"]["resources"]["requests"]["cpu"]

    assert "serving.kserve.io/deploymentMode: Knative" in xgboost
    assert "minReplicas: 0" in xgboost and "scaleMetric: concurrency" in xgboost

    assert "nvidia.com/gpu: '1'" in llm and "name: huggingface" in llm


@pytest.mark.slow
def test_render_command_on_a_bad_spec_names_the_field_without_a_traceback(tmp_path):
    bad = sample("sklearn-knative")
    bad["spec"]["scaling"]["metric"] = "cpu"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = run_render(str(path))
    assert out.returncode != 0
    assert "spec.scaling.metric" in out.stderr and "'cpu'" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_render_options_and_unreadable_input(tmp_path, capsys):
    from kservebench.cli import main

    main(["render", str(SAMPLES / "sklearn-knative.yaml"), "--kserve-names", "legacy"],
         standalone_mode=False)  # fmt: skip
    assert "serving.kserve.io/deploymentMode: Serverless" in capsys.readouterr().out
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    for args in (
        [str(tmp_path / "missing.yaml")],
        [str(SAMPLES / "sklearn-hpa.yaml"), "--kserve-names", "v0.15"],
        [str(other)],  # no ModelDeployment in it
    ):
        with pytest.raises(SystemExit) as exited:
            main(["render", *args], standalone_mode=False)
        assert exited.value.code == 1
        assert capsys.readouterr().err.startswith("error: ")
