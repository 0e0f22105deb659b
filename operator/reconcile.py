"""What the operator should do to an InferenceService: a pure plan, no API calls.

``plan(existing, desired)`` compares the InferenceService in the cluster (or None) with
the one the spec asks for and answers with one :class:`Action`:

* ``create``   - there is none;
* ``wait``     - the old one is still being deleted (finalizers), try again shortly;
* ``recreate`` - the deployment mode changed: KServe refuses that in place, so delete
                 and create;
* ``patch``    - someone (or a spec change) moved a field we own: a JSON merge patch
                 puts it back;
* ``refuse``   - the cluster's KServe cannot run what the spec asks (legacy mode names
                 on KServe >= 0.16): report it, change nothing;
* ``none``     - it already is what we want.

The same plan serves the HorizontalPodAutoscaler the operator owns in mode hpa (it has
no deployment mode, so only create, wait, patch and none arise there).

Ownership is "the fields we set": other controllers' defaults (KServe's webhook fills
in many) are left alone. To also drop a field that an earlier spec set and the current
one does not, the desired fields are recorded on the InferenceService in the
``kservebench.dev/last-applied`` annotation, like ``kubectl apply`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kservebench.operator.inferenceservice import (
    CURRENT_DEPLOYMENT_MODES,
    DEPLOYMENT_MODE_ANNOTATION,
    LEGACY_DEPLOYMENT_MODES,
    mode_of,
)

LAST_APPLIED = "kservebench.dev/last-applied"
# The deployment mode is compared as a mode (``mode_of``), not as text: KServe accepts
# two spellings of each, and a mode change is a recreate, never a patch.
NOT_COMPARED = {LAST_APPLIED, DEPLOYMENT_MODE_ANNOTATION}


@dataclass(frozen=True)
class Action:
    kind: str  # create | wait | recreate | patch | refuse | none
    patch: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def owned_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest this operator owns: labels, annotations and spec."""
    metadata = manifest.get("metadata") or {}
    return {
        "metadata": {
            "labels": dict(metadata.get("labels") or {}),
            "annotations": {
                k: v
                for k, v in (metadata.get("annotations") or {}).items()
                if k not in NOT_COMPARED
            },
        },
        "spec": manifest.get("spec") or {},
    }


def with_last_applied(desired: dict[str, Any]) -> dict[str, Any]:
    """``desired`` plus the annotation that records what we set."""
    record = json.dumps(owned_fields(desired), sort_keys=True, separators=(",", ":"))
    metadata = dict(desired.get("metadata") or {})
    metadata["annotations"] = {**(metadata.get("annotations") or {}), LAST_APPLIED: record}
    return {**desired, "metadata": metadata}


def last_applied(existing: dict[str, Any]) -> dict[str, Any] | None:
    text = ((existing.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        return json.loads(text) if text else None
    except ValueError:  # edited by hand into garbage: fall back to "no record"
        return None


def merge_patch(actual: Any, desired: dict[str, Any], previous: Any = None) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) that makes every field of ``desired`` hold in
    ``actual`` and removes fields ``previous`` set that ``desired`` no longer has.

    Lists and scalars are replaced whole, as merge patches do.
    """
    actual = actual if isinstance(actual, dict) else {}
    previous = previous if isinstance(previous, dict) else {}
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        have = actual.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = merge_patch(have, want, previous.get(key))
            if sub:
                patch[key] = sub
        elif have != want:
            patch[key] = want
    for key in previous:
        if key not in desired and key in actual:
            patch[key] = None
    return patch


def plan(existing: dict[str, Any] | None, desired: dict[str, Any]) -> Action:
    """Decide what to do; ``desired`` should already carry the last-applied record."""
    if existing is None:
        return Action("create", reason="not there yet")
    if (existing.get("metadata") or {}).get("deletionTimestamp"):
        return Action("wait", reason="the previous one is still being deleted")
    if refusal := legacy_names_refusal(existing, desired):
        return Action("refuse", reason=refusal)
    if mode_of(existing) != mode_of(desired):
        return Action(
            "recreate",
            reason=f"deployment mode changes from {mode_of(existing)} to {mode_of(desired)}",
        )
    patch = merge_patch(owned_fields(existing), owned_fields(desired), last_applied(existing))
    if patch:
        # Keep the record in step with what we now set.
        annotations = (desired.get("metadata") or {}).get("annotations") or {}
        patch.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED] = (
            annotations.get(LAST_APPLIED)
        )
        return Action("patch", patch=patch, reason="fields differ from the spec")
    return Action("none")


def legacy_names_refusal(existing: dict[str, Any], desired: dict[str, Any]) -> str:
    """Why legacy deployment-mode names cannot work on this cluster ("" when they can).

    KServe >= 0.16 writes its own names into ``status.deploymentMode`` (Standard, Knative),
    and its webhook refuses every update whose annotation differs from that status: an
    InferenceService created as ``Serverless`` there could never be changed again (and
    ``RawDeployment`` is validated as a Knative one, which refuses metric cpu). KServe
    <= 0.15 reports the legacy names, so the status tells the two apart.
    """
    annotations = (desired.get("metadata") or {}).get("annotations") or {}
    wanted = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    reported = (existing.get("status") or {}).get("deploymentMode")
    if wanted in LEGACY_DEPLOYMENT_MODES and reported in CURRENT_DEPLOYMENT_MODES:
        return (
            f"this cluster's KServe reports deploymentMode {reported!r} (the names of KServe"
            f" >= 0.16), which refuses every update of an InferenceService annotated"
            f" {wanted!r}; legacy names are for KServe <= 0.15: use current"
        )
    return ""
