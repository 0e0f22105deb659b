"""kopf handlers for ModelDeployment: thin shells around the pure builder and planner.

* create / update / resume of a ModelDeployment -> parse the spec, build the
  InferenceService, adopt it (owner reference), and carry out ``reconcile.plan``:
  create, patch drifted fields, or delete and recreate on a mode change.
* delete -> delete the InferenceService (owner references would let the garbage
  collector do it too; deleting explicitly is faster and does not depend on it).
* every event of an InferenceService we own -> mirror its status into the owner's
  status, put back fields someone edited (drift), recreate it if it was deleted.

A bad spec never raises out of a handler: the status says ``Invalid`` with a Ready=False
condition naming the field and value, a Warning Event says the same, and no
InferenceService is created or changed.

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
from kservebench.operator import reconcile, status
from kservebench.operator.inferenceservice import (
    ISVC_GROUP,
    ISVC_PLURAL,
    ISVC_VERSION,
    OWNER_LABEL,
    build_inference_service,
)
from kservebench.operator.spec import API_GROUP, API_VERSION, PLURAL, parse_model_deployment

RETRY_DELAY_S = 2.0


class Retry(Exception):
    """Not done yet (an old InferenceService is still going away): report, then retry."""

    def __init__(self, reason: str, status: dict[str, Any]) -> None:
        super().__init__(reason)
        self.status = status


def _api() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi()


def _get_isvc(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _api().get_namespaced_custom_object(
            ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _create_isvc(namespace: str, body: dict[str, Any]) -> None:
    try:
        _api().create_namespaced_custom_object(
            ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, body
        )
    except ApiException as err:
        if err.status == 409:  # the old one is still going away, or a racing create
            raise kopf.TemporaryError(
                "InferenceService exists; retrying", delay=RETRY_DELAY_S
            ) from err
        raise


def _delete_isvc(namespace: str, name: str) -> None:
    try:
        _api().delete_namespaced_custom_object(
            ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name
        )
    except ApiException as err:
        if err.status != 404:
            raise


def desired_inference_service(body: kopf.Body | dict[str, Any]) -> dict[str, Any]:
    """The InferenceService a ModelDeployment body asks for, adopted and recorded."""
    obj = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.get("metadata") or {}),
        "spec": dict(body.get("spec") or {}),
    }
    desired = build_inference_service(parse_model_deployment(obj))
    kopf.adopt(desired, owner=body)  # owner reference: garbage-collected with its owner
    return reconcile.with_last_applied(desired)


def apply(body: kopf.Body, logger: logging.Logger | logging.LoggerAdapter[Any]) -> dict[str, Any]:
    """Make the InferenceService match the spec; return the status to write."""
    namespace, previous = body["metadata"]["namespace"], dict(body.get("status") or {})
    now = status.now_text()
    try:
        desired = desired_inference_service(body)
    except SpecError as err:
        logger.warning("invalid spec: %s", err)
        kopf.warn(body, reason="InvalidSpec", message=str(err))
        return status.invalid_status(err, previous, now)
    name = desired["metadata"]["name"]
    existing = _get_isvc(namespace, name)
    action = reconcile.plan(existing, desired)
    logger.info("InferenceService %s: %s (%s)", name, action.kind, action.reason)
    if action.kind == "wait":
        raise Retry(action.reason, status.recreating_status(name, previous, now))
    if action.kind == "recreate":
        kopf.info(body, reason="Recreating", message=action.reason)
        _delete_isvc(namespace, name)
        if _get_isvc(namespace, name) is not None:  # finalizers hold it: create when gone
            raise Retry(action.reason, status.recreating_status(name, previous, now))
        action = reconcile.Action("create")
    if action.kind == "create":
        _create_isvc(namespace, desired)
        existing = desired
    elif action.kind == "patch":
        _correct_drift(body, namespace, name, action, desired, logger)
    return status.status_from_inference_service(existing or desired, previous, now)


# Fields the API server (a mutating webhook) rewrites right back after our patch:
# correcting them again would loop forever, so the leftover patch is remembered per
# InferenceService and not applied again until the spec asks for something else.
_SERVER_KEEPS: dict[tuple[str, str], str] = {}


def _correct_drift(
    body: kopf.Body,
    namespace: str,
    name: str,
    action: reconcile.Action,
    desired: dict[str, Any],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    key = (namespace, name)
    if _SERVER_KEEPS.get(key) == json.dumps(action.patch, sort_keys=True):
        logger.debug("InferenceService %s: the API server keeps %s", name, action.patch)
        return
    result = _api().patch_namespaced_custom_object(
        ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name, action.patch
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
        # Say it where users look (kubectl describe), then let kopf retry.
        message = f"Kubernetes API error {err.status} {err.reason}: {str(err.body or '')[:200]}"
        kopf.warn(body, reason="InferenceServiceError", message=message)
        raise kopf.TemporaryError(message, delay=RETRY_DELAY_S) from err
    new_status["observedGeneration"] = meta.get("generation")
    patch.status.update(new_status)


def delete_model_deployment(
    body: kopf.Body, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    name = (body.get("status") or {}).get("inferenceService") or body["metadata"]["name"]
    logger.info("deleting InferenceService %s", name)
    _delete_isvc(body["metadata"]["namespace"], name)


def on_inference_service_event(
    event: dict[str, Any],
    body: kopf.Body,
    labels: kopf.Labels,
    namespace: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Mirror status, correct drift and recreate after a deletion, for our children."""
    owner_name = labels.get(OWNER_LABEL)
    if not owner_name:
        return
    try:
        owner = _api().get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, owner_name
        )
    except ApiException as err:
        if err.status == 404:
            return  # the owner is gone: the garbage collector or our delete handler cleans up
        raise
    if owner["metadata"].get("deletionTimestamp"):
        return
    if event.get("type") != "DELETED" and not _owns(owner, body):
        return  # carries our label but belongs to someone else: hands off
    try:
        desired_inference_service(owner)
    except SpecError:
        return  # the ModelDeployment handler has reported it; keep what runs
    try:
        # Same path as the ModelDeployment handler: plan, act, report.
        new_status = apply(kopf.Body(owner), logger)
    except Retry as retry:
        new_status = retry.status  # the next event of this InferenceService comes back here
    except kopf.TemporaryError as err:
        logger.debug("InferenceService %s: %s", body.get("metadata", {}).get("name"), err)
        return  # a racing create: the ModelDeployment handler retries
    if status.status_changed(owner.get("status"), new_status):
        _api().patch_namespaced_custom_object_status(
            API_GROUP, API_VERSION, namespace, PLURAL, owner_name, {"status": new_status}
        )


def _owns(owner: dict[str, Any], isvc: kopf.Body) -> bool:
    uid = owner["metadata"].get("uid")
    refs = isvc.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the ModelDeployment handlers on ``registry``."""
    resource = (API_GROUP, API_VERSION, PLURAL)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*resource, registry=registry, id="reconcile")(reconcile_model_deployment)
    kopf.on.delete(*resource, registry=registry, id="cleanup")(delete_model_deployment)
    kopf.on.event(
        ISVC_GROUP,
        ISVC_VERSION,
        ISVC_PLURAL,
        labels={OWNER_LABEL: kopf.PRESENT},
        registry=registry,
        id="inferenceservice",
    )(on_inference_service_event)
