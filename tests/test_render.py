"""spec -> InferenceService (+ the operator's HPA): strict against the KServe SDK, right
fields for each mode, and the ``kservebench render`` command as a user runs it."""

import copy
import math
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
    PROMETHEUS_SCRAPING_ANNOTATION,
    build_horizontal_pod_autoscaler,
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


def parsed(name, **changes):
    spec = parse_model_deployment(sample(name))
    if changes:
        from dataclasses import replace

        spec = replace(spec, **changes)
    return spec


def render(name, **changes):
    return build_inference_service(parsed(name, **changes))


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_every_sample_renders_a_strictly_valid_inference_service(name):
    isvc = render(name)
    validate_inference_service(isvc)  # raises on any field the SDK does not know

    annotations = isvc["metadata"]["annotations"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert isvc["metadata"]["labels"][OWNER_LABEL] == name
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
        # Whoever scales (our HPA, or KEDA for the LLM) carries the spec's behaviour.
        hpa = build_horizontal_pod_autoscaler(parsed(name))
        behavior = (hpa["spec"] if hpa else predictor["autoScaling"])["behavior"]
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


def test_cpu_hpa_is_an_hpa_of_our_own_that_carries_the_behaviour():
    # KServe 0.16's hpa class builds its HPA with an empty behavior: the windows would be
    # lost. Class external: KServe makes no HPA and leaves the replicas to ours.
    isvc = render("xgboost-hpa")
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"][AUTOSCALER_CLASS_ANNOTATION] == "external"
    assert not {"scaleMetric", "scaleTarget", "autoScaling"} & set(predictor)
    hpa = build_horizontal_pod_autoscaler(parsed("xgboost-hpa"))
    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
    assert hpa["metadata"]["name"] == "xgboost-hpa-predictor-hpa"  # not KServe's name
    assert hpa["metadata"]["labels"][OWNER_LABEL] == "xgboost-hpa"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "xgboost-hpa-predictor",
    }  # fmt: skip
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 8)
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]  # fmt: skip
    assert hpa["spec"]["behavior"] == {
        "scaleUp": {"stabilizationWindowSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": 120},  # the sample's, not 300
    }


@pytest.mark.parametrize("name", ["sklearn-knative", "llm-hpa", "llm-knative"])
def test_no_hpa_of_ours_where_knative_or_keda_scales(name):
    assert build_horizontal_pod_autoscaler(parsed(name)) is None


def test_llm_hpa_scales_with_keda_on_the_vllm_queue():
    isvc = render("llm-hpa")
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"][AUTOSCALER_CLASS_ANNOTATION] == "keda"
    assert "scaleMetric" not in predictor  # KServe's webhook refuses scaleMetric with KEDA
    [metric] = predictor["autoScaling"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["backend"] == "prometheus"
    assert "vllm:num_requests_waiting" in metric["external"]["metric"]["query"]
    # KServe passes only `value` on (as KEDA's threshold); KEDA applies it as AverageValue.
    assert metric["external"]["target"] == {
        "type": "AverageValue", "averageValue": "5", "value": "5"}  # fmt: skip
    # KEDA's path honours the behaviour (kserve v0.16.0 keda_reconciler.go).
    assert predictor["autoScaling"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def keda_desired_replicas(query, threshold, waiting_per_replica):
    """What the HPA behind KEDA decides for an AverageValue trigger: ceil(metric /
    threshold), the metric being the query evaluated over the replicas' gauges."""
    aggregate = {"sum": sum, "avg": lambda v: sum(v) / len(v)}[query.split("(", 1)[0]]
    return math.ceil(aggregate(waiting_per_replica) / threshold)


@pytest.mark.parametrize("name", ["llm-hpa", "llm-hpa-default-query"])
def test_the_keda_query_is_a_total_so_more_waiting_requests_mean_more_replicas(name):
    obj = sample("llm-hpa")
    if name.endswith("default-query"):
        del obj["spec"]["scaling"]["prometheus"]  # the operator's DEFAULT_LLM_QUERY
    [metric] = build_inference_service(parse_model_deployment(obj))["spec"]["predictor"][
        "autoScaling"]["metrics"]  # fmt: skip
    query, threshold = (
        metric["external"]["metric"]["query"],
        int(metric["external"]["target"]["value"]),
    )
    # Four replicas, ten waiting requests each: eight are needed, never fewer than four.
    assert keda_desired_replicas(query, threshold, [10, 10, 10, 10]) == 8
    assert keda_desired_replicas(query, threshold, [0, 0, 0, 0]) == 0


def test_prometheus_scraping_flag_only_where_its_port_exists():
    # KServe's flag sets prometheus.io/port 9091: the queue-proxy's, absent in Standard.
    standard = render("sklearn-hpa")["metadata"]["annotations"]
    knative = render("sklearn-knative")["metadata"]["annotations"]
    assert standard[PROMETHEUS_SCRAPING_ANNOTATION] == "false"
    assert knative[PROMETHEUS_SCRAPING_ANNOTATION] == "true"


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
    # KServe <= 0.15 pins an external-class Deployment's replicas: its own hpa class
    # scales there, with the default behaviour (the only one it runs).
    predictor = hpa["spec"]["predictor"]
    assert hpa["metadata"]["annotations"][AUTOSCALER_CLASS_ANNOTATION] == "hpa"
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 80)
    assert "autoScaling" not in predictor
    assert (
        build_horizontal_pod_autoscaler(parsed("sklearn-hpa", deployment_mode_names=legacy)) is None
    )


def test_legacy_names_refuse_hpa_behaviour_kserve_would_ignore():
    obj = sample("xgboost-hpa")  # scaleDownStabilizationSeconds: 120
    obj["spec"]["kserve"] = {"deploymentModeNames": "legacy"}
    with pytest.raises(SpecError) as caught:
        parse_model_deployment(obj)
    assert caught.value.field == "spec.scaling.hpa.scaleDownStabilizationSeconds"
    assert "ignored" in str(caught.value) and "300" in str(caught.value)
    obj["spec"]["scaling"]["hpa"] = {"scaleDownStabilizationSeconds": 300}
    parse_model_deployment(obj)  # the default is what runs: fine
    obj["spec"]["scaling"].update(metric="memory")
    obj["spec"]["scaling"]["hpa"] = {"scaleUpStabilizationSeconds": 30}
    with pytest.raises(SpecError):
        parse_model_deployment(obj)


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
    manifest = copy.deepcopy(render("llm-hpa"))
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
    # sklearn-hpa: its InferenceService and the HPA the operator owns beside it.
    sklearn, sklearn_hpa, xgboost, llm = out.stdout.split("---\n")

    assert "serving.kserve.io/deploymentMode: Standard" in sklearn
    assert "serving.kserve.io/autoscalerClass: external" in sklearn
    assert "maxReplicas: 5" in sklearn
    assert yaml.safe_load(sklearn)["spec"]["predictor"]["model"]["resources"]["requests"]["cpu"]
    hpa = yaml.safe_load(sklearn_hpa)
    assert hpa["kind"] == "HorizontalPodAutoscaler" and hpa["spec"]["maxReplicas"] == 5

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
