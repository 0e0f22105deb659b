"""Mode slo in the operator: the spec, the InferenceService, and the SLO loop.

The pure parts (spec validation, the render, series -> policy inputs) are called
directly; the loop runs in a real kopf operator against KMock's Kubernetes API, with a
real Prometheus (``LocalPrometheus``) fed through remote write in vLLM's metric names.
KMock has no KServe and no kubelet: the predictor Deployment and its pods are created
by hand, as KServe and Kubernetes would, and the test reads what the operator patched.
"""

import asyncio
import copy
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kube_api import api, eventually

from kservebench.analysis.prometheus_local import LocalPrometheus, remote_write, wait_for_series
from kservebench.errors import SpecError
from kservebench.operator import handlers, slo_inputs
from kservebench.operator.inferenceservice import (
    AUTOSCALER_CLASS_ANNOTATION,
    DEPLOYMENT_MODE_ANNOTATION,
    ISVC_GROUP,
    ISVC_PLURAL,
    ISVC_VERSION,
    OWNER_LABEL,
    SLO_ANNOTATION,
    build_horizontal_pod_autoscaler,
    build_inference_service,
)
from kservebench.operator.spec import API_GROUP, API_VERSION, PLURAL, parse_model_deployment
from kservebench.operator.status import ISVC_POD_LABEL
from kservebench.policies.llm_signals import READY, VariantSpec

NAMESPACE = "kservebench"
MDS_URL = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
ISVCS_URL = f"/apis/{ISVC_GROUP}/{ISVC_VERSION}/namespaces/{NAMESPACE}/{ISVC_PLURAL}"
ISVCS = f"{ISVC_GROUP}/{ISVC_VERSION}/{ISVC_PLURAL}"
DEPLOYMENTS_URL = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
PODS_URL = f"/api/v1/namespaces/{NAMESPACE}/pods"
SAMPLE = Path(__file__).resolve().parents[1] / "manifests" / "samples" / "llm-slo.yaml"


def sample():
    return yaml.safe_load(SAMPLE.read_text())


def edited(edit):
    obj = sample()
    edit(obj["spec"])
    return obj


# --- the spec and the render (pure) ---------------------------------------------------------


def as_sklearn(spec):
    spec["model"] = {"kind": "sklearn", "storageUri": "gs://bucket/model"}
    spec["resources"] = {}


BAD_SLO_SPECS = [
    # (edit, field the error names, value it shows)
    (as_sklearn, "spec.mode", "sklearn"),
    (lambda s: s.pop("slo"), "spec.mode", "slo"),
    (lambda s: s["slo"].pop("ttftMs"), "spec.slo.ttftMs", "None"),
    (lambda s: s["slo"].update(itlMs=0), "spec.slo.itlMs", "0"),
    (lambda s: s["slo"].update(headroom=0.95), "spec.slo.headroom", "0.95"),
    (lambda s: s["slo"].update(kvTarget=1.5), "spec.slo.kvTarget", "1.5"),
    (lambda s: s["slo"].update(interval="soon"), "spec.slo.interval", "soon"),
    (lambda s: s["slo"].update(interval="20m"), "spec.slo.interval", "1200"),
    (lambda s: s["slo"].update(prometheusUrl="prom:9090"), "spec.slo.prometheusUrl", "prom:9090"),
    (lambda s: s["slo"].update(ttftMsec=5), "spec.slo.ttftMsec", "5"),
    (lambda s: s["slo"]["variants"][0].update(gpus=2), "spec.slo.variants[0].gpus", "2"),
    (lambda s: s["slo"]["variants"][0].update(costPerHour=-1),
     "spec.slo.variants[0].costPerHour", "-1"),
    (lambda s: s["slo"]["variants"][0].update(maxReplicas=9),
     "spec.slo.variants[0].maxReplicas", "9"),
    (lambda s: s["slo"]["variants"].append({"name": "a100"}), "spec.slo.variants", "2"),
    (lambda s: s["scaling"].update(metric="prometheus"), "spec.scaling.metric", "prometheus"),
    (lambda s: s["scaling"].update(minReplicas=0), "spec.scaling.minReplicas", "0"),
    (lambda s: s["scaling"].update(scaleToZero=True), "spec.scaling.scaleToZero", "True"),
    (lambda s: s.update(kserve={"deploymentModeNames": "legacy"}), "spec.mode",
     "deploymentModeNames current"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "field", "value"), BAD_SLO_SPECS)
def test_bad_slo_specs_name_the_field(edit, field, value):
    with pytest.raises(SpecError) as caught:
        parse_model_deployment(edited(edit))
    assert caught.value.field == field
    assert value in str(caught.value), caught.value


def test_slo_block_is_only_for_mode_slo():
    obj = yaml.safe_load((SAMPLE.parent / "llm-hpa.yaml").read_text())
    obj["spec"]["slo"] = {"ttftMs": 500, "itlMs": 40}
    with pytest.raises(SpecError) as caught:
        parse_model_deployment(obj)
    assert caught.value.field == "spec.slo"


def test_the_slo_spec_maps_onto_the_policy_params():
    spec = parse_model_deployment(sample())
    params, variant = spec.slo.params, spec.slo.variant
    assert (params.ttft_ms, params.itl_ms, params.e2e_ms) == (1000, 50, None)
    assert (params.headroom, params.kv_target) == (0.2, 0.8)
    assert (params.interval_s, params.cold_start_s) == (15, 120)
    assert not params.scale_to_zero
    assert (variant.name, variant.accelerator, variant.cost_per_hour) == ("h100", "H100", 4.5)
    assert (variant.min_replicas, variant.max_replicas, variant.gpus_per_replica) == (1, 4, 1)
    assert spec.slo.prometheus_url.startswith("http://monitoring-kube-prometheus-prometheus.")
    # Without variants: one named after the model, with spec.scaling's bounds.
    bare = parse_model_deployment(edited(lambda s: s["slo"].pop("variants")))
    assert (bare.slo.variant.name, bare.slo.variant.max_replicas) == ("llm-slo", 4)


def test_the_inference_service_has_the_external_autoscaler_and_no_hpa():
    spec = parse_model_deployment(sample())
    isvc = build_inference_service(spec)
    annotations = isvc["metadata"]["annotations"]
    assert annotations[AUTOSCALER_CLASS_ANNOTATION] == "external"
    assert annotations[DEPLOYMENT_MODE_ANNOTATION] == "Standard"
    assert '"ttftMs":1000' in annotations[SLO_ANNOTATION]
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 4)
    assert not {"autoScaling", "scaleMetric", "scaleTarget"} & set(predictor)
    assert build_horizontal_pod_autoscaler(spec) is None  # nothing else scales it


def test_the_crd_schema_and_cel_accept_the_sample_and_refuse_mode_slo_without_slo():
    from test_manifests import _cel_programs, schema_errors

    assert schema_errors(sample()) == []
    celpy, programs = _cel_programs()

    def failed(obj):
        spec = celpy.json_to_cel(obj["spec"])
        return {path for program, _, path in programs if not program.evaluate({"self": spec})}

    assert failed(sample()) == set()
    assert failed(edited(lambda s: s.pop("slo"))) == {".mode"}
    assert failed(edited(lambda s: s["scaling"].update(target=5))) == {".scaling.target"}
    assert schema_errors(edited(lambda s: s["slo"].update(kvTarget=2)))


# --- series -> policy inputs (pure) ---------------------------------------------------------


def vector(t, pod, values, **labels):
    return [
        {"metric": {"__name__": name, "pod": pod, **labels}, "value": [t, str(v)]}
        for name, v in values.items()
    ]


def pod_object(name, ready=True, deleting=False):
    conditions = [{"type": "Ready", "status": "True" if ready else "False",
                   "lastTransitionTime": "2026-01-01T00:01:00Z"}]  # fmt: skip
    metadata = {"name": name, "namespace": NAMESPACE, "uid": str(uuid.uuid4()),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {ISVC_POD_LABEL: "llm", "component": "predictor"}}  # fmt: skip
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "status": {"phase": "Running", "conditions": conditions}}  # fmt: skip


def test_series_become_replica_metrics_and_deleted_pods_are_ignored():
    t = 1_800_000_000.0
    series = [
        *vector(t, "llm-predictor-a", {"vllm:num_requests_running": 3,
                                       "vllm:num_requests_waiting": 7,
                                       "vllm:kv_cache_usage_perc": 0.5}),
        *vector(t, "llm-predictor-a", {"vllm:request_success_total": 4}, finished_reason="stop"),
        *vector(t, "llm-predictor-a", {"vllm:request_success_total": 1}, finished_reason="length"),
        *vector(t, "llm-predictor-a", {"vllm:cache_config_info": 1}, num_gpu_blocks="100",
                block_size="16"),
        *vector(t, "llm-predictor-a", {"vllm:inter_token_latency_seconds_bucket": 6}, le="0.05"),
        *vector(t, "llm-predictor-a", {"vllm:inter_token_latency_seconds_bucket": 9}, le="+Inf"),
        *vector(t, "llm-predictor-a", {"vllm:inter_token_latency_seconds_count": 9,
                                       "vllm:inter_token_latency_seconds_sum": 0.36}),
        *vector(t, "llm-predictor-gone", {"vllm:num_requests_waiting": 50}),
    ]  # fmt: skip
    sampled = [{"metric": {"pod": p}, "value": [t, str(t - 2)]}
               for p in ("llm-predictor-a", "llm-predictor-gone")]  # fmt: skip
    metrics = slo_inputs.replica_metrics(series, sampled)
    a = metrics["llm-predictor-a"]
    assert (a.running, a.waiting, a.kv_usage, a.request_success_total) == (3, 7, 0.5, 5)
    assert (a.kv_capacity_tokens, a.tokens_in_use, a.sampled_s) == (1600, 800, t - 2)
    assert (a.itl.bounds, a.itl.buckets, a.itl.count) == ((0.05,), (6,), 9)
    assert a.itl.mean == pytest.approx(0.04)

    pods = [pod_object("llm-predictor-a"), pod_object("llm-predictor-b", ready=False),
            pod_object("llm-predictor-c", deleting=True)]  # fmt: skip
    variant = VariantSpec("llm", max_replicas=4, min_replicas=1)
    one = slo_inputs.build_inputs(t, variant, pods, metrics, 2)
    assert one.ignored_pods == ("llm-predictor-gone",)
    assert [m.pod for m in one.inputs.metrics] == ["llm-predictor-a"]
    assert one.inputs.metrics[0].variant == "llm"
    assert [(r.pod, r.state) for r in one.inputs.replicas] == [
        ("llm-predictor-a", READY), ("llm-predictor-b", "pending"),
        ("llm-predictor-c", "draining")]  # fmt: skip
    assert one.inputs.current("llm") == 2  # the Deployment's spec.replicas
    down = slo_inputs.build_inputs(t, variant, pods, None, 2)
    assert down.inputs.metrics is None and down.ignored_pods == ()


def test_a_scale_down_marks_the_pods_the_policy_chose():
    patches = slo_inputs.deletion_cost_patches(("llm-predictor-b",))
    assert patches == {"llm-predictor-b": {"metadata": {"annotations": {
        "controller.kubernetes.io/pod-deletion-cost": "-1000"}}}}  # fmt: skip
    assert slo_inputs.deletion_cost_patches(()) == {}


# --- the loop, in a kopf operator against KMock with a real Prometheus ----------------------


@pytest.fixture
async def operator(kmock, kopf_operator):
    kmock.resources.load_bundled()
    kmock.resources[f"{API_GROUP}/{API_VERSION}/{PLURAL}"] = kmock.ResourceInfo(
        kind="ModelDeployment", singular="modeldeployment", namespaced=True,
        verbs={"list", "watch", "get", "create", "patch", "delete"}, subresources={"status"},
    )  # fmt: skip
    kmock.resources[ISVCS] = kmock.ResourceInfo(
        kind="InferenceService", singular="inferenceservice", namespaced=True,
        verbs={"list", "watch", "get", "create", "patch", "delete"}, subresources={"status"},
    )  # fmt: skip
    await kopf_operator(handlers.register)
    return kmock


async def create(kmock, url, body):
    status, answer = await api(kmock, "POST", url, body)
    assert status in (200, 201), answer


async def create_md(kmock, name, spec):
    body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": str(uuid.uuid4()),
                         "resourceVersion": "1", "generation": 1},
            "spec": spec}  # fmt: skip
    await create(kmock, MDS_URL, body)


async def create_predictor(kmock, name, replicas, pods):
    """What KServe and Kubernetes would make: the predictor Deployment and its pods."""
    labels = {OWNER_LABEL: name, ISVC_POD_LABEL: name}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": f"{name}-predictor", "namespace": NAMESPACE,
                               "uid": str(uuid.uuid4()), "labels": labels},
                  "spec": {"replicas": replicas},
                  "status": {"replicas": replicas, "readyReplicas": len(pods)}}  # fmt: skip
    await create(kmock, DEPLOYMENTS_URL, deployment)
    for pod in pods:
        obj = pod_object(pod)
        obj["metadata"]["labels"][ISVC_POD_LABEL] = name
        await create(kmock, PODS_URL, obj)


def slo_spec(prometheus_url):
    spec = copy.deepcopy(sample()["spec"])
    spec["slo"].update(interval="1s", prometheusUrl=prometheus_url)
    return spec


def scale_patches(kmock, name):
    return [
        r.data
        for r in list(kmock)
        if r.method == "PATCH" and r.url.path == f"{DEPLOYMENTS_URL}/{name}-predictor/scale"
    ]


def md_status(kmock, name, check):
    async def read():
        status, obj = await api(kmock, "GET", f"{MDS_URL}/{name}")
        found = obj.get("status") if status == 200 else None
        return found if found and check(found) else None

    return read


def condition(status, kind):
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


def vllm_scrape(t, pod, running, waiting, kv, done, prompt_sum, generated_sum):
    """One scrape of a vLLM pod as remote-write series (``done`` requests finished)."""
    values = {
        "vllm:num_requests_running": running,
        "vllm:num_requests_waiting": waiting,
        "vllm:kv_cache_usage_perc": kv,
        "vllm:request_success_total": done,
        "vllm:request_prompt_tokens_sum": prompt_sum,
        "vllm:request_generation_tokens_sum": generated_sum,
        "vllm:prompt_tokens_total": prompt_sum,
        "vllm:generation_tokens_total": generated_sum + 20 * running,
    }
    labels = {"namespace": NAMESPACE, "pod": pod, "job": "vllm"}
    series = [({**labels, "__name__": name}, [(t, v)]) for name, v in values.items()]
    info = {**labels, "__name__": "vllm:cache_config_info", "num_gpu_blocks": "1024",
            "block_size": "16"}  # fmt: skip
    return [*series, (info, [(t, 1.0)])]


@pytest.mark.slow
async def test_a_burst_scales_up_in_one_pass_and_deleted_pods_are_ignored(operator, tmp_path):
    with LocalPrometheus(data_dir=tmp_path / "prom") as prom:
        # A calm model: one ready replica, two requests running, no queue.
        t0 = time.time()
        calm = vllm_scrape(t0, "llm-predictor-a", 2, 0, 0.1, 100, 50_000, 20_000)
        await asyncio.to_thread(remote_write, prom.url, calm)
        await asyncio.to_thread(wait_for_series, prom, "vllm:num_requests_running")
        await create_predictor(operator, "llm", 1, ["llm-predictor-a"])
        await create_md(operator, "llm", slo_spec(prom.url))

        isvc = await eventually(get_isvc(operator, "llm"))
        assert isvc["metadata"]["annotations"][AUTOSCALER_CLASS_ANNOTATION] == "external"
        # The reconcile handler and the loop write the conditions list from what they last
        # saw; a lost MetricsAvailable comes back at the next pass, with Ready kept.
        held = await eventually(md_status(operator, "llm", lambda s: (
            (s.get("slo") or {}).get("reason", "").startswith("hold")
            and (condition(s, "MetricsAvailable") or {}).get("status") == "True"
            and condition(s, "Ready") is not None)))  # fmt: skip
        assert held["slo"]["currentReplicas"] == 1 and held["slo"]["desiredReplicas"] == 1
        assert scale_patches(operator, "llm") == []

        # A burst: a deep queue and a full KV cache; a deleted pod's series still linger.
        t1 = time.time()
        burst = vllm_scrape(t1, "llm-predictor-a", 40, 300, 0.97, 110, 60_000, 22_000)
        ghost = vllm_scrape(t1, "llm-predictor-gone", 0, 500, 1.0, 0, 0, 0)
        await asyncio.to_thread(remote_write, prom.url, [*burst, *ghost])
        [patch] = await eventually(lambda: _true(scale_patches(operator, "llm")), timeout_s=30)
        assert patch == {"spec": {"replicas": 4}}  # to maxReplicas in one step, not +1
        status = await eventually(
            md_status(operator, "llm", lambda s: (s.get("slo") or {}).get("desiredReplicas") == 4)
        )
        assert status["slo"]["reason"].startswith("up h100 1 -> 4"), status["slo"]
        assert "llm-predictor-gone" in status["slo"]["reason"]  # named, not counted
        [event] = await eventually(lambda: _true(events_with_reason(operator, "Scaled")))
        assert event["message"].startswith("1 -> 4 replicas")


def light_scrape(t, pod, running, done, tokens):
    """A lightly loaded pod: ``tokens`` inter-token gaps of 20 ms so far, no queue."""
    series = vllm_scrape(t, pod, running, 0, 0.05, done, 500 * done, 200 * done)
    labels = {"namespace": NAMESPACE, "pod": pod, "job": "vllm"}
    itl = "vllm:inter_token_latency_seconds"
    series += [({**labels, "__name__": f"{itl}_count"}, [(t, tokens)]),
               ({**labels, "__name__": f"{itl}_sum"}, [(t, 0.02 * tokens)])]  # fmt: skip
    series += [({**labels, "__name__": f"{itl}_bucket", "le": le}, [(t, tokens)])
               for le in ("0.1", "+Inf")]  # fmt: skip
    return series


@pytest.mark.slow
async def test_a_scale_down_removes_the_least_loaded_pods(operator, tmp_path):
    names = ["quiet-predictor-a", "quiet-predictor-b", "quiet-predictor-c"]
    with LocalPrometheus(data_dir=tmp_path / "prom") as prom:
        t0 = time.time()
        first = [x for n in names for x in light_scrape(t0, n, 0, 10, 100)]
        await asyncio.to_thread(remote_write, prom.url, first)
        await asyncio.to_thread(wait_for_series, prom, "vllm:num_requests_running")
        await create_predictor(operator, "quiet", 3, names)
        spec = slo_spec(prom.url)
        spec["slo"]["scaleDownStabilization"] = "0s"
        await create_md(operator, "quiet", spec)
        await eventually(md_status(operator, "quiet", lambda s: (s.get("slo") or {})
                                   .get("reason", "").startswith("hold")))  # fmt: skip

        # One pass later: a trickle on pod a only; three replicas are far too many.
        t1 = time.time()
        second = light_scrape(t1, names[0], 1, 12, 150)
        second += [x for n in names[1:] for x in light_scrape(t1, n, 0, 10, 100)]
        await asyncio.to_thread(remote_write, prom.url, second)
        [patch] = await eventually(lambda: _true(scale_patches(operator, "quiet")), timeout_s=30)
        assert patch == {"spec": {"replicas": 1}}
        marked = {
            r.url.path.rsplit("/", 1)[-1]: r.data
            for r in list(operator)
            if r.method == "PATCH" and r.url.path.startswith(f"{PODS_URL}/")
        }
        cost = {"metadata": {"annotations": {
            "controller.kubernetes.io/pod-deletion-cost": "-1000"}}}  # fmt: skip
        assert marked == {names[1]: cost, names[2]: cost}  # the idle ones, not the busy one


@pytest.mark.slow
async def test_prometheus_down_holds_the_replicas_and_says_so(operator, tmp_path):
    prom = LocalPrometheus(data_dir=tmp_path / "prom").start()
    url = prom.url
    await asyncio.to_thread(prom.stop)  # Prometheus stopped: nothing listens there now
    await create_predictor(operator, "down", 2, ["down-predictor-a", "down-predictor-b"])
    await create_md(operator, "down", slo_spec(url))

    def metrics_false(s):
        c = condition(s, "MetricsAvailable")
        return c is not None and c["status"] == "False"

    status = await eventually(md_status(operator, "down", metrics_false), timeout_s=30)
    c = condition(status, "MetricsAvailable")
    assert c["reason"] == "PrometheusUnavailable" and url in c["message"]
    assert status["slo"]["reason"].startswith("fail static, metrics unavailable")
    assert (status["slo"]["desiredReplicas"], status["slo"]["currentReplicas"]) == (2, 2)
    await asyncio.sleep(2.5)  # a few more passes
    assert scale_patches(operator, "down") == []
    assert events_with_reason(operator, "Scaled") == []


@pytest.mark.slow
async def test_stale_series_hold_the_replicas_and_say_so(operator, tmp_path):
    with LocalPrometheus(data_dir=tmp_path / "prom") as prom:
        # The pod's last scrape is 30 s old (its exporter stopped answering, say).
        old = vllm_scrape(time.time() - 30, "stale-predictor-a", 5, 50, 0.9, 10, 1000, 500)
        await asyncio.to_thread(remote_write, prom.url, old)
        await asyncio.to_thread(wait_for_series, prom, "vllm:num_requests_waiting")
        await create_predictor(operator, "stale", 1, ["stale-predictor-a"])
        spec = slo_spec(prom.url)
        spec["slo"]["staleAfter"] = "10s"
        await create_md(operator, "stale", spec)

        def metrics_false(s):
            return (condition(s, "MetricsAvailable") or {}).get("status") == "False"

        status = await eventually(md_status(operator, "stale", metrics_false), timeout_s=30)
        c = condition(status, "MetricsAvailable")
        assert c["reason"] == "MetricsMissingOrStale" and "stale-predictor-a" in c["message"]
        assert "stale" in status["slo"]["reason"] and status["slo"]["desiredReplicas"] == 1
        await asyncio.sleep(1.5)
        assert scale_patches(operator, "stale") == []  # a deep queue, but no fresh evidence


async def test_bad_slo_specs_are_refused_with_ready_false(operator):
    bad = {
        "bad-ttft": (lambda s: s["slo"].update(ttftMs=-5), "spec.slo.ttftMs", "-5"),
        "bad-slo-kind": (as_sklearn, "spec.mode", "sklearn"),
        "bad-variants": (lambda s: s["slo"]["variants"][0].update(gpus=3),
                         "spec.slo.variants[0].gpus", "3"),
    }  # fmt: skip
    for name, (edit, _, _) in bad.items():
        spec = copy.deepcopy(sample()["spec"])
        edit(spec)
        await create_md(operator, name, spec)
    for name, (_, field, value) in bad.items():
        status = await eventually(md_status(operator, name, lambda s: s.get("phase") == "Invalid"))
        ready = condition(status, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert field in ready["message"] and value in ready["message"], ready
    status, isvcs = await api(operator, "GET", ISVCS_URL)
    assert status == 404 or not isvcs.get("items"), isvcs


def get_isvc(kmock, name):
    async def read():
        status, obj = await api(kmock, "GET", f"{ISVCS_URL}/{name}")
        return obj if status == 200 else None

    return read


def events_with_reason(kmock, reason):
    return [
        request.data
        for request in list(kmock)
        if request.method == "POST" and request.url.path.endswith("/events")
        if request.data.get("reason") == reason
    ]


async def _true(value):
    return value
