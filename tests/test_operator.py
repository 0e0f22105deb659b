"""The ModelDeployment handlers, run by a real kopf operator against KMock's Kubernetes API.

The tests speak only through the API, as kubectl and KServe would: they create and edit
ModelDeployments, edit the InferenceService (its status as KServe would, its spec as a
person would), and read what the operator did. KMock has no KServe and no garbage
collector, so the InferenceService's status is moved by hand and deletions are explicit.
"""

import asyncio
import copy
import uuid
from pathlib import Path

import pytest
import yaml
from kube_api import api, eventually

from kservebench.operator import handlers
from kservebench.operator.inferenceservice import (
    AUTOSCALER_CLASS_ANNOTATION,
    DEPLOYMENT_MODE_ANNOTATION,
    ISVC_GROUP,
    ISVC_PLURAL,
    ISVC_VERSION,
    OWNER_LABEL,
)
from kservebench.operator.spec import API_GROUP, API_VERSION, PLURAL
from kservebench.procs import kservebench_argv

NAMESPACE = "kservebench"
MDS_URL = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
ISVCS_URL = f"/apis/{ISVC_GROUP}/{ISVC_VERSION}/namespaces/{NAMESPACE}/{ISVC_PLURAL}"
ISVCS = f"{ISVC_GROUP}/{ISVC_VERSION}/{ISVC_PLURAL}"
HPAS_URL = f"/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers"
DEPLOYMENTS_URL = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
SAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "samples"


KSERVEBENCH = kservebench_argv()


def sample(name):
    return yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())


@pytest.fixture
async def api_server(kmock):
    """KMock serving the Kubernetes API with our CRD and KServe's InferenceService."""
    kmock.resources.load_bundled()  # kopf only starts watching when v1/namespaces is there
    kmock.resources[f"{API_GROUP}/{API_VERSION}/{PLURAL}"] = kmock.ResourceInfo(
        kind="ModelDeployment", singular="modeldeployment", namespaced=True,
        verbs={"list", "watch", "get", "create", "patch", "delete"}, subresources={"status"},
    )  # fmt: skip
    kmock.resources[ISVCS] = kmock.ResourceInfo(
        kind="InferenceService", singular="inferenceservice", namespaced=True,
        verbs={"list", "watch", "get", "create", "patch", "delete"}, subresources={"status"},
    )  # fmt: skip
    return kmock


@pytest.fixture
async def operator(api_server, kopf_operator):
    """The handlers in a kopf operator in this event loop, talking to ``api_server``."""
    await kopf_operator(handlers.register)
    return api_server


async def create_md(kmock, name, spec):
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "ModelDeployment",
        # KMock assigns neither: kopf needs both (owner references, patch preconditions).
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": str(uuid.uuid4()),
                     "resourceVersion": "1", "generation": 1},
        "spec": spec,
    }  # fmt: skip
    status, _ = await api(kmock, "POST", MDS_URL, body)
    assert status in (200, 201)
    return body


def get(kmock, url, check=lambda obj: True):
    async def read():
        status, obj = await api(kmock, "GET", url)
        return obj if status == 200 and check(obj) else None

    return read


def md_status(kmock, name, check):
    async def read():
        status, obj = await api(kmock, "GET", f"{MDS_URL}/{name}")
        found = obj.get("status") if status == 200 else None
        return found if found and check(found) else None

    return read


def events_with_reason(kmock, reason):
    return [
        request.data
        for request in list(kmock)
        if request.method == "POST" and request.url.path.endswith("/events")
        if request.data.get("reason") == reason
    ]


def predictor(isvc):
    return isvc["spec"]["predictor"]


def spec_of(name):
    return copy.deepcopy(sample(name)["spec"])


async def test_create_makes_an_owned_inference_service_and_mirrors_its_status(operator):
    owner = await create_md(operator, "sk", spec_of("sklearn-hpa"))
    isvc = await eventually(get(operator, f"{ISVCS_URL}/sk"))

    refs = isvc["metadata"]["ownerReferences"]
    assert [(r["kind"], r["name"], r["uid"]) for r in refs] == [
        ("ModelDeployment", "sk", owner["metadata"]["uid"])
    ]
    assert isvc["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "Standard"
    assert predictor(isvc)["maxReplicas"] == 5
    pending = await eventually(md_status(operator, "sk", lambda s: s.get("phase") == "Pending"))
    assert pending["inferenceService"] == "sk"

    # KServe reports the InferenceService ready: the ModelDeployment mirrors it.
    ready = {
        "conditions": [{"type": "Ready", "status": "True"}],
        "url": "http://sk.kservebench.example.com",
        "modelStatus": {"copies": {"totalCopies": 2}},
    }
    await api(operator, "PATCH", f"{ISVCS_URL}/sk/status", {"status": ready})
    status = await eventually(md_status(operator, "sk", lambda s: s.get("phase") == "Ready"))
    assert status["url"] == "http://sk.kservebench.example.com"
    [condition] = status["conditions"]
    assert (condition["type"], condition["status"]) == ("Ready", "True")

    failing = {"conditions": [{"type": "Ready", "status": "False", "reason": "ModelLoadFailed",
                               "message": "no model file"}]}  # fmt: skip
    await api(operator, "PATCH", f"{ISVCS_URL}/sk/status", {"status": failing})
    status = await eventually(md_status(operator, "sk", lambda s: s.get("phase") == "NotReady"))
    assert status["conditions"][0]["reason"] == "ModelLoadFailed"
    assert status["conditions"][0]["message"] == "no model file"


async def create_deployment(kmock, name, owner, ready):
    """A predictor Deployment as KServe (or Knative, per revision) labels it."""
    body = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": str(uuid.uuid4()),
                     "resourceVersion": "1",
                     "labels": {OWNER_LABEL: owner, "serving.kserve.io/inferenceservice": owner,
                                "component": "predictor"}},
        "spec": {"selector": {"matchLabels": {"app": f"isvc.{name}"}}, "template": {}},
        "status": {"replicas": ready, "readyReplicas": ready},
    }  # fmt: skip
    status, _ = await api(kmock, "POST", DEPLOYMENTS_URL, body)
    assert status in (200, 201)


async def test_ready_replicas_come_from_the_predictor_deployments(operator):
    await create_md(operator, "kn", spec_of("sklearn-knative"))
    await eventually(get(operator, f"{ISVCS_URL}/kn"))
    # KServe's copies were counted at its last reconcile and went stale (Knative scaled).
    stale = {"conditions": [{"type": "Ready", "status": "True"}],
             "modelStatus": {"copies": {"totalCopies": 5}}}  # fmt: skip
    await api(operator, "PATCH", f"{ISVCS_URL}/kn/status", {"status": stale})
    await eventually(md_status(operator, "kn", lambda s: s.get("phase") == "Ready"))
    # Two revisions with ready pods (one still draining), and someone else's Deployment.
    await create_deployment(operator, "kn-predictor-00001-deployment", "kn", 1)
    await create_deployment(operator, "kn-predictor-00002-deployment", "kn", 2)
    await create_deployment(operator, "other-predictor", "other", 7)
    status = await eventually(md_status(operator, "kn", lambda s: s.get("readyReplicas") == 3))
    assert status["phase"] == "Ready"
    # Scaled to zero: the count follows the Deployments, not KServe's copies.
    for name in ("kn-predictor-00001-deployment", "kn-predictor-00002-deployment"):
        await api(operator, "PATCH", f"{DEPLOYMENTS_URL}/{name}",
                  {"status": {"replicas": 0, "readyReplicas": 0}})  # fmt: skip
    await eventually(md_status(operator, "kn", lambda s: s.get("readyReplicas") == 0))


async def test_hpa_mode_owns_an_hpa_with_the_specs_behaviour(operator):
    owner = await create_md(operator, "hb", spec_of("xgboost-hpa"))
    isvc = await eventually(get(operator, f"{ISVCS_URL}/hb"))
    assert isvc["metadata"]["annotations"][AUTOSCALER_CLASS_ANNOTATION] == "external"
    hpa = await eventually(get(operator, f"{HPAS_URL}/hb-predictor-hpa"))
    assert [(r["kind"], r["uid"]) for r in hpa["metadata"]["ownerReferences"]] == [
        ("ModelDeployment", owner["metadata"]["uid"])
    ]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "hb-predictor"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120

    # A spec change reaches the HPA; an edit of it is put back; a deleted one comes back.
    change = {"spec": {"scaling": {"hpa": {"scaleDownStabilizationSeconds": 30}}}}
    await api(operator, "PATCH", f"{MDS_URL}/hb", change)

    def down_is(seconds):
        return lambda o: o["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == seconds

    await eventually(get(operator, f"{HPAS_URL}/hb-predictor-hpa", down_is(30)))
    await api(operator, "PATCH", f"{HPAS_URL}/hb-predictor-hpa", {"spec": {"maxReplicas": 50}})
    await eventually(get(operator, f"{HPAS_URL}/hb-predictor-hpa",
                         lambda o: o["spec"]["maxReplicas"] == 8))  # fmt: skip
    await api(operator, "DELETE", f"{HPAS_URL}/hb-predictor-hpa")
    await eventually(get(operator, f"{HPAS_URL}/hb-predictor-hpa", down_is(30)))

    # To Knative: Knative scales, so our HPA goes.
    knative = spec_of("xgboost-knative")
    change = {"spec": {"mode": "knative", "scaling": knative["scaling"]}}
    await api(operator, "PATCH", f"{MDS_URL}/hb", change)

    async def hpa_gone():
        status, _ = await api(operator, "GET", f"{HPAS_URL}/hb-predictor-hpa")
        return status == 404

    await eventually(hpa_gone)


async def test_legacy_names_on_a_kserve_016_cluster_are_refused(operator):
    spec = spec_of("sklearn-knative")
    spec["kserve"] = {"deploymentModeNames": "legacy"}
    await create_md(operator, "old", spec)
    isvc = await eventually(get(operator, f"{ISVCS_URL}/old"))
    assert isvc["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "Serverless"
    # KServe 0.16 normalises the mode in the status; its webhook would then refuse every
    # update annotated Serverless. The operator says so instead of patching into that.
    await api(
        operator, "PATCH", f"{ISVCS_URL}/old/status", {"status": {"deploymentMode": "Knative"}}
    )
    status = await eventually(md_status(operator, "old", lambda s: s.get("phase") == "Invalid"))
    message = status["conditions"][0]["message"]
    assert "spec.kserve.deploymentModeNames" in message and "0.16" in message


async def test_scaling_change_updates_and_drift_is_corrected(operator):
    await create_md(operator, "xg", spec_of("xgboost-hpa"))
    await eventually(get(operator, f"{ISVCS_URL}/xg"))

    scaling = {"spec": {"scaling": {"maxReplicas": 7, "target": 60}}}
    await api(operator, "PATCH", f"{MDS_URL}/xg", scaling)
    await eventually(get(operator, f"{ISVCS_URL}/xg", lambda o: predictor(o)["maxReplicas"] == 7))
    hpa = await eventually(
        get(operator, f"{HPAS_URL}/xg-predictor-hpa", lambda o: o["spec"]["maxReplicas"] == 7)
    )
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60

    # Someone edits a field we own and adds one we do not: ours is put back, theirs kept.
    edit = {
        "metadata": {"annotations": {"team": "ml"}},
        "spec": {"predictor": {"maxReplicas": 99}},
    }
    await api(operator, "PATCH", f"{ISVCS_URL}/xg", edit)
    history = operator.objects[ISVCS, NAMESPACE, "xg"].history
    await eventually(lambda: _true(any(predictor(v)["maxReplicas"] == 99 for v in history if v)))
    isvc = await eventually(
        get(operator, f"{ISVCS_URL}/xg", lambda o: predictor(o)["maxReplicas"] == 7)
    )
    assert isvc["metadata"]["annotations"]["team"] == "ml"


async def _true(value):
    return value


async def test_mode_change_deletes_and_recreates(operator):
    await create_md(operator, "sw", spec_of("sklearn-hpa"))
    await eventually(get(operator, f"{ISVCS_URL}/sw"))

    knative = spec_of("sklearn-knative")
    change = {"spec": {"mode": "knative", "scaling": knative["scaling"]}}
    await api(operator, "PATCH", f"{MDS_URL}/sw", change)

    def is_knative(obj):
        return obj["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "Knative"

    isvc = await eventually(get(operator, f"{ISVCS_URL}/sw", is_knative))
    assert predictor(isvc)["minReplicas"] == 0
    assert predictor(isvc)["scaleMetric"] == "concurrency"
    # Never patched across modes: the history shows a deletion between the two.
    history = list(operator.objects[ISVCS, NAMESPACE, "sw"].history)
    deleted_at = history.index(None)
    modes = [v["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] for v in history if v]
    assert set(modes[:deleted_at]) == {"Standard"}
    assert set(modes[deleted_at:]) == {"Knative"}


async def test_mode_change_waits_for_kserves_finalizer(operator):
    await create_md(operator, "fin", spec_of("xgboost-knative"))
    await eventually(get(operator, f"{ISVCS_URL}/fin"))
    # KServe puts a finalizer on every InferenceService: deletion is not immediate.
    finalizer = {"metadata": {"finalizers": ["inferenceservice.finalizers"]}}
    await api(operator, "PATCH", f"{ISVCS_URL}/fin", finalizer)
    # A merge patch: the Knative-only scaleToZero must be removed explicitly (null).
    scaling = {**spec_of("xgboost-hpa")["scaling"], "scaleToZero": None}
    change = {"spec": {"mode": "hpa", "scaling": scaling}}
    await api(operator, "PATCH", f"{MDS_URL}/fin", change)

    recreating = await eventually(
        md_status(operator, "fin", lambda s: s.get("phase") == "Recreating")
    )
    assert recreating["conditions"][0]["reason"] == "ModeChange"
    held = await eventually(get(operator, f"{ISVCS_URL}/fin"))
    assert held["metadata"]["deletionTimestamp"]  # still there, still Knative
    assert held["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "Knative"

    # KServe finishes its cleanup and drops the finalizer: the Standard one is created.
    await api(operator, "PATCH", f"{ISVCS_URL}/fin", {"metadata": {"finalizers": None}})

    def is_standard(obj):
        return obj["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "Standard"

    isvc = await eventually(get(operator, f"{ISVCS_URL}/fin", is_standard))
    assert not isvc["metadata"].get("deletionTimestamp")
    assert isvc["metadata"]["ownerReferences"][0]["name"] == "fin"


async def test_delete_removes_the_inference_service_and_our_hpa(operator):
    await create_md(operator, "gone", spec_of("xgboost-hpa"))
    await eventually(get(operator, f"{ISVCS_URL}/gone"))
    await eventually(get(operator, f"{HPAS_URL}/gone-predictor-hpa"))
    await api(operator, "DELETE", f"{MDS_URL}/gone")

    def gone(url):
        async def read():
            status, _ = await api(operator, "GET", url)
            return status == 404

        return read

    await eventually(gone(f"{ISVCS_URL}/gone"))
    await eventually(gone(f"{HPAS_URL}/gone-predictor-hpa"))
    await eventually(get(operator, MDS_URL, lambda o: not o["items"]))


def _broken(name, edit):
    spec = spec_of(name)
    edit(spec)
    return spec


BAD_SPECS = {
    # name -> (spec, field the message must name, value it must show)
    "bad-kind": (_broken("sklearn-hpa", lambda s: s["model"].update(kind="pytorch")),
                 "spec.model.kind", "pytorch"),
    "bad-metric": (_broken("sklearn-knative", lambda s: s["scaling"].update(metric="cpu")),
                   "spec.scaling.metric", "cpu"),
    "bad-min": (_broken("sklearn-hpa", lambda s: s["scaling"].update(minReplicas=0)),
                "spec.scaling.minReplicas", "0"),
    "bad-max": (_broken("xgboost-hpa", lambda s: s["scaling"].update(minReplicas=4,
                                                                     maxReplicas=2)),
                "spec.scaling.maxReplicas", "2"),
    "bad-uri": (_broken("xgboost-knative", lambda s: s["model"].pop("storageUri")),
                "spec.model.storageUri", "None"),
    "bad-cpu": (_broken("sklearn-hpa", lambda s: s["resources"]["requests"].update(cpu="1x")),
                "spec.resources.requests.cpu", "1x"),
    "bad-slo": (_broken("llm-hpa", lambda s: s.update(mode="slo")), "spec.mode", "slo"),
}  # fmt: skip


async def test_bad_specs_report_the_field_and_create_nothing(operator):
    for name, (spec, _, _) in BAD_SPECS.items():
        await create_md(operator, name, spec)
    for name, (_, field, value) in BAD_SPECS.items():
        status = await eventually(md_status(operator, name, lambda s: s.get("phase") == "Invalid"))
        [condition] = status["conditions"]
        assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
        assert field in condition["message"] and value in condition["message"], condition

    async def warned():
        # Read from the requests: KMock keys objects by name and kopf posts Events with
        # generateName, so only the first Event would be stored.
        events = events_with_reason(operator, "InvalidSpec")
        return {e["involvedObject"]["name"] for e in events if e["type"] == "Warning"} >= set(
            BAD_SPECS
        )

    await eventually(warned)
    status, isvcs = await api(operator, "GET", ISVCS_URL)
    assert status == 404 or not isvcs.get("items"), isvcs
    assert (ISVCS, NAMESPACE, "bad-kind") not in operator.objects


async def test_a_fixed_spec_creates_the_inference_service(operator):
    spec, _, _ = BAD_SPECS["bad-max"]
    await create_md(operator, "fixme", copy.deepcopy(spec))
    await eventually(md_status(operator, "fixme", lambda s: s.get("phase") == "Invalid"))
    await api(operator, "PATCH", f"{MDS_URL}/fixme", {"spec": {"scaling": {"maxReplicas": 6}}})
    isvc = await eventually(get(operator, f"{ISVCS_URL}/fixme"))
    assert predictor(isvc)["maxReplicas"] == 6


async def test_api_errors_become_warning_events_and_are_retried(operator):
    # The API server fails the create (after storing it, as a timed-out request can).
    operator[f"post {ISVCS_URL}"] << 500
    await create_md(operator, "flaky", spec_of("sklearn-hpa"))

    def warned():
        return _true(events_with_reason(operator, "InferenceServiceError"))

    await eventually(warned)
    await eventually(md_status(operator, "flaky", lambda s: s.get("phase") == "Pending"))


async def test_api_errors_show_in_the_ready_condition(operator):
    # KServe 0.16's webhook refuses a RawDeployment with metric cpu at create (KMock
    # stores it anyway: the retry then finds it). The condition says why.
    operator[f"post {ISVCS_URL}"] << 400
    spec = spec_of("sklearn-hpa")
    spec["kserve"] = {"deploymentModeNames": "legacy"}
    await create_md(operator, "refused", spec)
    history = operator.objects[f"{API_GROUP}/{API_VERSION}/{PLURAL}", NAMESPACE, "refused"].history

    def conditions():
        return [c for v in history if v for c in (v.get("status") or {}).get("conditions") or []]

    [condition, *_] = await eventually(lambda: _true([
        c for c in conditions() if c["reason"] == "InferenceServiceError"]))  # fmt: skip
    assert condition["status"] == "False" and "400" in condition["message"]
    assert "deploymentModeNames is legacy" in condition["message"]


async def test_a_field_the_server_writes_back_is_not_fought_over(operator):
    await create_md(operator, "wh", spec_of("xgboost-hpa"))
    isvc = await eventually(get(operator, f"{ISVCS_URL}/wh"))
    # A mutating webhook that forces maxReplicas to 99 on every patch.
    forced = copy.deepcopy(isvc)
    predictor(forced)["maxReplicas"] = 99
    operator[f"patch {ISVCS_URL}/wh"] << forced
    await api(operator, "PATCH", f"{ISVCS_URL}/wh", {"spec": {"predictor": {"maxReplicas": 99}}})

    [event] = await eventually(lambda: _true(events_with_reason(operator, "DriftNotCorrectable")))
    assert "maxReplicas" in event["message"]


@pytest.mark.slow
async def test_the_operator_command_runs_our_handlers_from_a_kubeconfig(api_server, tmp_path):
    """`kservebench operator` as a real process, configured as a user configures it."""
    from kservebench.procs import ManagedProcess

    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": str(api_server.url)}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "me"}}],
        "current-context": "kmock",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    env = {"KUBECONFIG": str(tmp_path / "kubeconfig"), "KUBERNETES_SERVICE_HOST": ""}
    child = ManagedProcess(
        [*KSERVEBENCH, "operator", "--all-namespaces"], tmp_path / "operator.log", env=env
    ).start()
    try:
        await create_md(api_server, "cli", spec_of("sklearn-knative"))
        try:
            isvc = await eventually(get(api_server, f"{ISVCS_URL}/cli"), timeout_s=60)
        except AssertionError:
            raise AssertionError(child.log_tail(40)) from None
        assert child.alive()
        assert isvc["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "Knative"
    finally:
        # In a thread: the child talks to KMock, which this event loop serves, while it stops.
        await asyncio.to_thread(child.stop, 5.0)
