"""ModelDeployment status as pure functions of what the operator saw.

The status carries a ``phase`` for humans and printer columns, a ``Ready`` condition
(status, reason, message, lastTransitionTime) for tools (``kubectl wait``), what it
mirrors from the InferenceService (its name and URL), and the ready predictor pods read
from the Deployments that run them.
"""

from __future__ import annotations

import datetime
from typing import Any

from kservebench.errors import SpecError
from kservebench.operator.inferenceservice import OWNER_LABEL

# phase -> what it means
PHASES = {
    "Pending": "the InferenceService exists but has not reported readiness yet",
    "Ready": "the InferenceService is ready to serve",
    "NotReady": "the InferenceService reports it is not ready",
    "Recreating": "the deployment mode changed: the old InferenceService is being replaced",
    "Invalid": "the spec is invalid; no InferenceService was created or changed",
}
STATUS_FIELDS = ("phase", "conditions", "inferenceService", "url", "readyReplicas", "slo")


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(
    previous: list[dict[str, Any]] | None, status: str, reason: str, message: str, now: str
) -> dict[str, Any]:
    """The Ready condition; lastTransitionTime moves only when ``status`` changes."""
    return condition(previous, "Ready", status, reason, message, now)


def with_condition(
    previous: list[dict[str, Any]] | None, condition: dict[str, Any]
) -> list[dict[str, Any]]:
    """``previous`` with ``condition`` in place of the one of its type (others kept: the
    Ready condition and mode slo's MetricsAvailable are written by different handlers,
    and a merge patch replaces the list whole)."""
    kept = [c for c in previous or [] if c.get("type") != condition["type"]]
    order = {"Ready": 0}
    return sorted([*kept, condition], key=lambda c: order.get(c.get("type", ""), 1))


def condition(
    previous: list[dict[str, Any]] | None,
    kind: str,
    status: str,
    reason: str,
    message: str,
    now: str,
) -> dict[str, Any]:
    """A condition of type ``kind``; lastTransitionTime moves only when ``status`` changes."""
    before = next((c for c in previous or [] if c.get("type") == kind), None)
    changed = before is None or before.get("status") != status
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed else before.get("lastTransitionTime", now),
    }


def invalid_status(error: SpecError, previous: dict[str, Any] | None, now: str) -> dict[str, Any]:
    # Mirrored fields are kept: an InferenceService from an earlier valid spec still runs.
    conditions = (previous or {}).get("conditions")
    return {
        "phase": "Invalid",
        "conditions": with_condition(
            conditions, ready_condition(conditions, "False", "InvalidSpec", str(error), now)
        ),
    }


def recreating_status(name: str, previous: dict[str, Any] | None, now: str) -> dict[str, Any]:
    conditions = (previous or {}).get("conditions")
    message = f"deployment mode changed: InferenceService {name} is deleted and recreated"
    return {
        "phase": "Recreating",
        "inferenceService": name,
        "url": None,
        "readyReplicas": 0,
        "conditions": with_condition(
            conditions, ready_condition(conditions, "False", "ModeChange", message, now)
        ),
    }


def status_from_inference_service(
    isvc: dict[str, Any], previous: dict[str, Any] | None, now: str
) -> dict[str, Any]:
    """Mirror an InferenceService's status into the ModelDeployment's."""
    name = (isvc.get("metadata") or {}).get("name")
    isvc_status = isvc.get("status") or {}
    isvc_ready = next(
        (c for c in isvc_status.get("conditions") or [] if c.get("type") == "Ready"), None
    )
    if isvc_ready is None:
        phase, status, reason = "Pending", "Unknown", "InferenceServicePending"
        message = f"waiting for InferenceService {name} to report readiness"
    elif isvc_ready.get("status") == "True":
        phase, status, reason = "Ready", "True", "InferenceServiceReady"
        message = f"InferenceService {name} is ready"
    else:
        phase, status = "NotReady", str(isvc_ready.get("status") or "Unknown")
        reason = isvc_ready.get("reason") or "InferenceServiceNotReady"
        message = isvc_ready.get("message") or f"InferenceService {name} is not ready"
    conditions = (previous or {}).get("conditions")
    # readyReplicas is not mirrored from here: see ready_replicas().
    return {
        "phase": phase,
        "inferenceService": name,
        "url": _url(isvc_status),
        "conditions": with_condition(
            conditions, ready_condition(conditions, status, reason, message, now)
        ),
    }


def _url(isvc_status: dict[str, Any]) -> str | None:
    url = isvc_status.get("url")
    if not url:
        predictor = (isvc_status.get("components") or {}).get("predictor") or {}
        url = predictor.get("url")
    return url or None


# KServe's label on every pod-owning object of an InferenceService; with our owner label
# it picks the predictor Deployments (KServe's in Standard mode, one per Knative revision).
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"


def ready_replicas(deployments: list[dict[str, Any]], owner: str) -> int:
    """Ready predictor pods now: the Deployments' own ``status.readyReplicas``, summed.

    Not KServe's ``modelStatus.copies``: KServe recomputes it only when it reconciles the
    InferenceService, which scaling does not trigger in Knative mode (kserve v0.16.0), so
    it goes stale after autoscaling or scale to zero. An old Knative revision still
    draining counts while its pods are ready.
    """
    total = 0
    for deployment in deployments:
        labels = (deployment.get("metadata") or {}).get("labels") or {}
        if labels.get(OWNER_LABEL) == owner and ISVC_POD_LABEL in labels:
            total += int((deployment.get("status") or {}).get("readyReplicas") or 0)
    return total


def status_changed(current: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether writing ``new`` would change anything (ignoring transition times)."""
    current = current or {}

    def comparable(status: dict[str, Any]) -> dict[str, Any]:
        out = {key: status.get(key) for key in new if key != "conditions"}
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"}
            for c in status.get("conditions") or []
        ]
        return out

    return comparable(current) != comparable(new)
