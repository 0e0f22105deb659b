"""kopf handlers for ModelDeployment: thin shells around the pure builder and planner.

* create / update / resume of a ModelDeployment -> parse the spec, build the
  InferenceService (and, in mode hpa on cpu/memory, the HorizontalPodAutoscaler the
  operator owns: see ``inferenceservice.py``), adopt them (owner references), and carry
  out ``reconcile.plan`` for each: create, patch drifted fields, delete and recreate on a
  mode change, or refuse what the cluster's KServe cannot run.
* delete -> delete the InferenceService and the HPA (owner references would let the
  garbage collector do it too; deleting explicitly is faster and does not depend on it).
* every event of an InferenceService or HPA we own -> mirror the InferenceService's
  status into the owner's status, put back fields someone edited (drift), recreate what
  was deleted.
* mode slo: a timer per ModelDeployment runs the SLO policy and sets the predictor
  Deployment's replicas (``slo_loop.py``).
* every event of a predictor Deployment carrying our label (KServe's in Standard mode,
  Knative's per revision) -> the owner's ``readyReplicas``: the pods that are ready now.
  KServe's ``modelStatus.copies`` is only recomputed when KServe reconciles the
  InferenceService, which autoscaling does not trigger in Knative mode, so it goes stale.

A bad spec never raises out of a handler: the status says ``Invalid`` with a Ready=False
condition naming the field and value, a Warning Event says the same, and nothing is
created or changed.

Handlers are synchronous and use the synchronous ``kubernetes`` client (kopf runs them
in threads), with the client's default configuration: ``kservebench operator`` loads
the kubeconfig or in-cluster configuration before kopf starts. They are registered on an
explicit registry (``register(registry)``) so tests and the CLI pick what runs.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from kservebench.errors import SpecError
from kservebench.operator import reconcile, slo_loop, status
from kservebench.operator.inferenceservice import (
    HPA_GROUP,
    HPA_PLURAL,
    HPA_VERSION,
    ISVC_GROUP,
    ISVC_PLURAL,
    ISVC_VERSION,
    OWNER_LABEL,
    build_horizontal_pod_autoscaler,
    build_inference_service,
    hpa_name,
)
from kservebench.operator.spec import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    DeploymentModeNames,
    ModelDeploymentSpec,
    parse_model_deployment,
)

RETRY_DELAY_S = 2.0
ISVC = (ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL)
HPA = (HPA_GROUP, HPA_VERSION, HPA_PLURAL)  # the custom-objects API reaches any group


class Retry(Exception):
    """Not done yet (an old InferenceService is still going away): report, then retry."""

    def __init__(self, reason: str, status: dict[str, Any]) -> None:
        super().__init__(reason)
        self.status = status


def _api() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi()


def _get(resource: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any] | None:
    group, version, plural = resource
    try:
        return _api().get_namespaced_custom_object(group, version, namespace, plural, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _create(resource: tuple[str, str, str], namespace: str, body: dict[str, Any]) -> None:
    group, version, plural = resource
    try:
        _api().create_namespaced_custom_object(group, version, namespace, plural, body)
    except ApiException as err:
        if err.status == 409:  # the old one is still going away, or a racing create
            raise kopf.TemporaryError(
                f"{body['kind']} exists; retrying", delay=RETRY_DELAY_S
            ) from err
        raise


def _delete(resource: tuple[str, str, str], namespace: str, name: str) -> None:
    group, version, plural = resource
    try:
        _api().delete_namespaced_custom_object(group, version, namespace, plural, name)
    except ApiException as err:
        if err.status != 404:
            raise


def _parse(body: kopf.Body | dict[str, Any]) -> ModelDeploymentSpec:
    obj = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.get("metadata") or {}),
        "spec": dict(body.get("spec") or {}),
    }
    return parse_model_deployment(obj)


def _adopted(child: dict[str, Any], body: kopf.Body | dict[str, Any]) -> dict[str, Any]:
    kopf.adopt(child, owner=body)  # owner reference: garbage-collected with its owner
    return reconcile.with_last_applied(child)


def apply(body: kopf.Body, logger: logging.Logger | logging.LoggerAdapter[Any]) -> dict[str, Any]:
    """Make the InferenceService (and our HPA) match the spec; return the status to write."""
    namespace, previous = body["metadata"]["namespace"], dict(body.get("status") or {})
    now = status.now_text()
    try:
        spec = _parse(body)
    except SpecError as err:
        return _refuse(body, err, previous, now, logger)
    desired = _adopted(build_inference_service(spec), body)
    name = desired["metadata"]["name"]
    existing = _get(ISVC, namespace, name)
    action = reconcile.plan(existing, desired)
    logger.info("InferenceService %s: %s (%s)", name, action.kind, action.reason)
    if action.kind == "refuse":
        names = spec.deployment_mode_names.value
        error = SpecError("spec.kserve.deploymentModeNames", names, action.reason)
        return _refuse(body, error, previous, now, logger)
    if action.kind == "wait":
        raise Retry(action.reason, status.recreating_status(name, previous, now))
    if action.kind == "recreate":
        kopf.info(body, reason="Recreating", message=action.reason)
        _delete(ISVC, namespace, name)
        if _get(ISVC, namespace, name) is not None:  # finalizers hold it: create when gone
            raise Retry(action.reason, status.recreating_status(name, previous, now))
        action = reconcile.Action("create")
    if action.kind == "create":
        _create(ISVC, namespace, desired)
        existing = desired
    elif action.kind == "patch":
        _correct_drift(body, ISVC, namespace, name, action, desired, logger)
    _apply_hpa(body, spec, logger)
    return status.status_from_inference_service(existing or desired, previous, now)


def _refuse(
    body: kopf.Body,
    error: SpecError,
    previous: dict[str, Any],
    now: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> dict[str, Any]:
    logger.warning("invalid spec: %s", error)
    kopf.warn(body, reason="InvalidSpec", message=str(error))
    return status.invalid_status(error, previous, now)


def _apply_hpa(
    body: kopf.Body, spec: ModelDeploymentSpec, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """Create, correct or remove the HPA the operator owns (mode hpa on cpu/memory)."""
    namespace, name = spec.namespace, hpa_name(spec.name)
    existing = _get(HPA, namespace, name)
    built = build_horizontal_pod_autoscaler(spec)
    if built is None:
        if existing is not None and _owns(body, existing):
            logger.info("HorizontalPodAutoscaler %s: delete (the spec no longer needs it)", name)
            _delete(HPA, namespace, name)
        return
    if existing is not None and not _owns(body, existing):
        message = f"HorizontalPodAutoscaler {name} exists and is not ours: leaving it alone"
        kopf.warn(body, reason="HorizontalPodAutoscalerTaken", message=message)
        return
    desired = _adopted(built, body)
    action = reconcile.plan(existing, desired)
    logger.info("HorizontalPodAutoscaler %s: %s (%s)", name, action.kind, action.reason)
    if action.kind == "create":
        _create(HPA, namespace, desired)
    elif action.kind == "patch":
        _correct_drift(body, HPA, namespace, name, action, desired, logger)
    # wait: the old one is still being deleted; its DELETED event brings us back here.


# Fields the API server (a mutating webhook) rewrites right back after our patch:
# correcting them again would loop forever, so the leftover patch is remembered per
# InferenceService and not applied again until the spec asks for something else.
_SERVER_KEEPS: dict[tuple[str, str, str], str] = {}


def _correct_drift(
    body: kopf.Body,
    resource: tuple[str, str, str],
    namespace: str,
    name: str,
    action: reconcile.Action,
    desired: dict[str, Any],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    key = (resource[2], namespace, name)
    if _SERVER_KEEPS.get(key) == json.dumps(action.patch, sort_keys=True):
        logger.debug("%s %s: the API server keeps %s", desired["kind"], name, action.patch)
        return
    group, version, plural = resource
    result = _api().patch_namespaced_custom_object(
        group, version, namespace, plural, name, action.patch
    )
    after = reconcile.plan(result, desired)
    if after.kind == "patch":
        _SERVER_KEEPS[key] = json.dumps(after.patch, sort_keys=True)
        message = f"the API server rewrites these fields back; leaving them: {after.patch}"
        kopf.warn(body, reason="DriftNotCorrectable", message=message[:1000])
    else:
        _SERVER_KEEPS.pop(key, None)


def reconcile_model_deployment(
    body: kopf.Body,
    patch: kopf.Patch,
    meta: kopf.Meta,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    try:
        new_status = apply(body, logger)
    except Retry as retry:
        patch.status.update(retry.status)  # kopf writes the patch even when retrying
        raise kopf.TemporaryError(str(retry), delay=RETRY_DELAY_S) from None
    except ApiException as err:
        # Say it where users look (kubectl describe, the Ready condition), then retry.
        message = f"Kubernetes API error {err.status} {err.reason}: {str(err.body or '')[:300]}"
        message += _legacy_hint(body, err)
        kopf.warn(body, reason="InferenceServiceError", message=message)
        previous = (body.get("status") or {}).get("conditions")
        condition = status.ready_condition(
            previous, "False", "InferenceServiceError", message, status.now_text()
        )
        patch.status["conditions"] = status.with_condition(previous, condition)
        raise kopf.TemporaryError(message, delay=RETRY_DELAY_S) from err
    new_status["observedGeneration"] = meta.get("generation")
    patch.status.update(new_status)


def _legacy_hint(body: kopf.Body, err: ApiException) -> str:
    """KServe 0.16 refuses a RawDeployment InferenceService at create (it validates it as a
    Knative one), before any status could tell the versions apart: say why."""
    kserve = (body.get("spec") or {}).get("kserve") or {}
    legacy = kserve.get("deploymentModeNames") == DeploymentModeNames.LEGACY.value
    if legacy and err.status is not None and 400 <= err.status < 500:
        return (
            " (spec.kserve.deploymentModeNames is legacy, for KServe <= 0.15: KServe >= 0.16"
            " refuses RawDeployment with metric cpu; use current)"
        )
    return ""


def delete_model_deployment(
    body: kopf.Body, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    namespace = body["metadata"]["namespace"]
    name = (body.get("status") or {}).get("inferenceService") or body["metadata"]["name"]
    logger.info("deleting InferenceService %s", name)
    _delete(ISVC, namespace, name)
    hpa = _get(HPA, namespace, hpa_name(body["metadata"]["name"]))
    if hpa is not None and _owns(body, hpa):
        _delete(HPA, namespace, hpa["metadata"]["name"])


def _owner(namespace: str, labels: kopf.Labels | dict[str, str]) -> dict[str, Any] | None:
    """The live ModelDeployment our label names (None when gone or being deleted)."""
    owner_name = labels.get(OWNER_LABEL)
    if not owner_name:
        return None
    try:
        owner = _api().get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, owner_name
        )
    except ApiException as err:
        if err.status == 404:
            return None  # the owner is gone: the garbage collector or our delete handler cleans up
        raise
    return None if owner["metadata"].get("deletionTimestamp") else owner


def _write_status(namespace: str, owner: dict[str, Any], new_status: dict[str, Any]) -> None:
    if status.status_changed(owner.get("status"), new_status):
        _api().patch_namespaced_custom_object_status(
            API_GROUP, API_VERSION, namespace, PLURAL, owner["metadata"]["name"],
            {"status": new_status},
        )  # fmt: skip


def on_child_event(
    event: dict[str, Any],
    body: kopf.Body,
    labels: kopf.Labels,
    namespace: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Mirror status, correct drift and recreate after a deletion, for our InferenceServices
    and HPAs."""
    owner = _owner(namespace, labels)
    if owner is None:
        return
    if event.get("type") != "DELETED" and not _owns(owner, body):
        return  # carries our label but belongs to someone else: hands off
    try:
        _parse(owner)
    except SpecError:
        return  # the ModelDeployment handler has reported it; keep what runs
    try:
        # Same path as the ModelDeployment handler: plan, act, report.
        new_status = apply(kopf.Body(owner), logger)
    except Retry as retry:
        new_status = retry.status  # the next event of this InferenceService comes back here
    except kopf.TemporaryError as err:
        logger.debug("%s %s: %s", body.get("kind"), body.get("metadata", {}).get("name"), err)
        return  # a racing create: the ModelDeployment handler retries
    _write_status(namespace, owner, new_status)


def on_predictor_deployment_event(
    body: kopf.Body,
    labels: kopf.Labels,
    namespace: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """``readyReplicas`` from the predictor Deployments themselves (see the module doc)."""
    owner = _owner(namespace, labels)
    if owner is None:
        return
    owner_name = owner["metadata"]["name"]
    listed = _api().list_namespaced_custom_object(
        "apps", "v1", namespace, "deployments", label_selector=f"{OWNER_LABEL}={owner_name}"
    )
    ready = status.ready_replicas(listed.get("items") or [], owner_name)
    logger.debug("ModelDeployment %s: %d ready predictor pods", owner_name, ready)
    _write_status(namespace, owner, {"readyReplicas": ready})


def _owns(owner: dict[str, Any], child: dict[str, Any]) -> bool:
    uid = owner["metadata"].get("uid")
    refs = child.get("metadata", {}).get("ownerReferences") or []
    return any((ref.get("uid") == uid) for ref in refs)


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the ModelDeployment handlers on ``registry``."""
    resource = (API_GROUP, API_VERSION, PLURAL)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*resource, registry=registry, id="reconcile")(reconcile_model_deployment)
    kopf.on.delete(*resource, registry=registry, id="cleanup")(delete_model_deployment)
    ours = {OWNER_LABEL: kopf.PRESENT}
    for child, handler_id in ((ISVC, "inferenceservice"), (HPA, "horizontalpodautoscaler")):
        kopf.on.event(*child, labels=ours, registry=registry, id=handler_id)(on_child_event)
    kopf.on.event(
        "apps", "v1", "deployments", labels=ours, registry=registry, id="predictor-deployment"
    )(on_predictor_deployment_event)
    slo_loop.register(registry, resource)
