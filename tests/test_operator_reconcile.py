"""reconcile.plan and status: the operator's decisions, without any API."""

import copy
from pathlib import Path

import yaml

from kservebench.errors import SpecError
from kservebench.operator import status
from kservebench.operator.inferenceservice import (
    DEPLOYMENT_MODE_ANNOTATION,
    build_inference_service,
)
from kservebench.operator.reconcile import LAST_APPLIED, merge_patch, plan, with_last_applied
from kservebench.operator.spec import parse_model_deployment

SAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "samples"
NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def desired(name, edit=lambda spec: None):
    obj = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())
    edit(obj["spec"])
    return with_last_applied(build_inference_service(parse_model_deployment(obj)))


def in_cluster(manifest):
    """What the API server holds: ours plus server fields and another controller's."""
    obj = copy.deepcopy(manifest)
    obj["metadata"].update(uid="u1", resourceVersion="7", generation=3)
    obj["metadata"]["annotations"]["other.io/note"] = "theirs"
    obj["spec"]["predictor"]["model"]["storage"] = {"path": "/mnt/models"}  # a default
    obj["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    return obj


def test_plan_create_wait_recreate_none():
    want = desired("sklearn-hpa")
    assert plan(None, want).kind == "create"
    deleting = in_cluster(want)
    deleting["metadata"]["deletionTimestamp"] = NOW
    assert plan(deleting, want).kind == "wait"
    assert plan(in_cluster(desired("sklearn-knative")), want).kind == "recreate"
    assert plan(in_cluster(want), want).kind == "none"


def test_drift_is_patched_back_and_other_fields_are_left_alone():
    want = desired("xgboost-hpa")
    edited = in_cluster(want)
    edited["spec"]["predictor"]["maxReplicas"] = 99
    edited["metadata"]["labels"]["kservebench.dev/mode"] = "knative"
    action = plan(edited, want)
    assert action.kind == "patch"
    assert action.patch["spec"] == {"predictor": {"maxReplicas": 8}}
    assert action.patch["metadata"]["labels"] == {"kservebench.dev/mode": "hpa"}
    assert "other.io/note" not in action.patch["metadata"]["annotations"]
    assert action.patch["metadata"]["annotations"][LAST_APPLIED]


def test_fields_an_earlier_spec_set_are_removed():
    before = desired("xgboost-knative")  # containerConcurrency: 8
    after = desired("xgboost-knative", lambda s: s["scaling"].pop("containerConcurrency"))
    action = plan(in_cluster(before), after)
    assert action.kind == "patch"
    assert action.patch["spec"]["predictor"] == {"containerConcurrency": None}


def test_either_spelling_of_a_mode_is_the_same_mode():
    want = desired("sklearn-hpa")
    legacy = in_cluster(want)
    legacy["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] = "RawDeployment"
    assert plan(legacy, want).kind == "none"


def test_merge_patch_replaces_lists_whole():
    assert merge_patch({"a": [1, 2], "b": {"c": 1}}, {"a": [1], "b": {"c": 1}}) == {"a": [1]}
    assert merge_patch({"a": 1, "x": 2}, {"a": 1}, previous={"x": 0}) == {"x": None}
    assert merge_patch({"a": 1, "x": 2}, {"a": 1}) == {}  # never ours: kept


def test_status_mirrors_the_inference_service():
    isvc = {"metadata": {"name": "m"}, "status": {}}
    pending = status.status_from_inference_service(isvc, None, NOW)
    assert (pending["phase"], pending["conditions"][0]["status"]) == ("Pending", "Unknown")
    assert pending["url"] is None

    isvc["status"] = {
        "conditions": [{"type": "Ready", "status": "True"}],
        "components": {"predictor": {"url": "http://m-predictor.ns"}},
        "modelStatus": {"copies": {"totalCopies": 3, "failedCopies": 1}},
    }
    ready = status.status_from_inference_service(isvc, pending, LATER)
    assert (ready["phase"], ready["url"]) == ("Ready", "http://m-predictor.ns")
    # KServe's copies go stale in Knative mode: ready replicas come from the Deployments.
    assert "readyReplicas" not in ready
    assert ready["conditions"][0]["lastTransitionTime"] == LATER
    again = status.status_from_inference_service(isvc, ready, "2026-01-02T00:00:00Z")
    assert again["conditions"][0]["lastTransitionTime"] == LATER  # no transition, same time
    assert not status.status_changed(ready, again)
    assert status.status_changed(pending, ready)


def test_invalid_status_names_the_field_and_keeps_what_runs():
    error = SpecError("spec.scaling.maxReplicas", 2, "must be >= minReplicas (4)")
    previous = {"phase": "Ready", "url": "http://m", "conditions": []}
    invalid = status.invalid_status(error, previous, NOW)
    assert invalid["phase"] == "Invalid" and "url" not in invalid  # the mirrored URL stays
    condition = invalid["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert "spec.scaling.maxReplicas" in condition["message"] and "2" in condition["message"]


def test_ready_replicas_sum_the_owners_predictor_deployments():
    def deployment(owner, ready, kserve=True):
        labels = {"kservebench.dev/model-deployment": owner}
        if kserve:
            labels["serving.kserve.io/inferenceservice"] = owner
        return {"metadata": {"labels": labels}, "status": {"readyReplicas": ready}}

    deployments = [
        deployment("m", 2),  # the current Knative revision
        deployment("m", 1),  # the previous one, still draining
        deployment("m", None),  # scaled to zero: Kubernetes omits the field
        deployment("other", 5),
        deployment("m", 9, kserve=False),  # carries our label, but KServe did not make it
    ]
    assert status.ready_replicas(deployments, "m") == 3
    assert status.ready_replicas([], "m") == 0


def test_legacy_names_are_refused_once_kserve_shows_its_016_names():
    desired = {"metadata": {"annotations": {DEPLOYMENT_MODE_ANNOTATION: "Serverless"}}}
    on_015 = {**desired, "status": {"deploymentMode": "Serverless"}}
    on_016 = {**desired, "status": {"deploymentMode": "Knative"}}
    assert plan(on_015, with_last_applied(desired)).kind != "refuse"
    refused = plan(on_016, with_last_applied(desired))
    assert refused.kind == "refuse" and "0.16" in refused.reason
    current = {"metadata": {"annotations": {DEPLOYMENT_MODE_ANNOTATION: "Knative"}}}
    assert plan(on_016, with_last_applied(current)).kind != "refuse"
