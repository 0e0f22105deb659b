"""Mode slo's control loop: a kopf timer, a thin shell around ``policies.slo.decide``.

Every ``spec.slo.interval`` per ModelDeployment in mode slo (the timer ticks every
``TICK_S`` and skips until the interval has passed):

1. read the predictor Deployment (``<name>-predictor``: its ``spec.replicas``) and its
   pods from the API, and the pods' vLLM series from Prometheus (two instant queries,
   ``PROMETHEUS_TIMEOUT_S`` each);
2. ``slo_inputs.build_inputs`` (pure) -> ``decide`` (pure; its state lives in kopf's
   per-object memo, so a restarted operator starts a fresh latency model);
3. a changed count -> a patch of the Deployment's ``scale`` subresource and an Event
   ``Scaled``; on a scale-down the pods the policy chose (the least loaded) first get
   ``controller.kubernetes.io/pod-deletion-cost: -1000`` so the ReplicaSet removes them;
   a held decision (Prometheus down, stale or missing series) never patches;
4. ``status.slo`` (desired, current, lastDecisionTime, reason) and the
   ``MetricsAvailable`` condition, merged into the status as it is at that moment
   (``write_status``: the Ready condition, written by the reconcile handler, is kept).

KServe renders the InferenceService with ``autoscalerClass: external``, so nothing else
scales the Deployment.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes
import requests
from kubernetes.client.exceptions import ApiException

from kservebench.errors import SpecError
from kservebench.operator import slo_inputs, status
from kservebench.operator.inferenceservice import OWNER_LABEL, predictor_name
from kservebench.operator.spec import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    Mode,
    ModelDeploymentSpec,
    parse_model_deployment,
)
from kservebench.operator.status import ISVC_POD_LABEL
from kservebench.policies.llm_signals import ReplicaMetrics
from kservebench.policies.slo import decide

TICK_S = 1.0
PROMETHEUS_TIMEOUT_S = 5.0
METRICS_CONDITION = "MetricsAvailable"
_LAST_PASS, _STATE = "slo_last_pass_s", "slo_state"


class MetricsUnavailable(Exception):
    """Prometheus did not answer, or answered with an error."""


def query(url: str, promql: str, timeout_s: float = PROMETHEUS_TIMEOUT_S) -> list[dict[str, Any]]:
    """One instant query's vector result; MetricsUnavailable on any failure."""
    try:
        response = requests.get(
            f"{url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=timeout_s
        )
        body = response.json()
    except (requests.RequestException, ValueError) as err:
        raise MetricsUnavailable(f"Prometheus at {url} did not answer: {err}") from None
    if response.status_code != 200 or body.get("status") != "success":
        raise MetricsUnavailable(
            f"Prometheus at {url} answered HTTP {response.status_code}: {body.get('error')}"
        )
    return list(body["data"]["result"])


def read_metrics(url: str, namespace: str, name: str) -> dict[str, ReplicaMetrics]:
    series = query(url, slo_inputs.series_query(namespace, name))
    sampled = query(url, slo_inputs.sampled_query(namespace, name))
    return slo_inputs.replica_metrics(series, sampled)


def _predictor(namespace: str, name: str) -> dict[str, Any] | None:
    """The predictor Deployment (listed: the operator may list Deployments, not get them)."""
    listed = kubernetes.client.CustomObjectsApi().list_namespaced_custom_object(
        "apps", "v1", namespace, "deployments", label_selector=f"{OWNER_LABEL}={name}"
    )
    wanted = predictor_name(name)
    return next((d for d in listed.get("items") or [] if d["metadata"]["name"] == wanted), None)


def _pods(namespace: str, name: str) -> list[dict[str, Any]]:
    response = kubernetes.client.CoreV1Api().list_namespaced_pod(
        namespace, label_selector=f"{ISVC_POD_LABEL}={name}", _preload_content=False
    )
    items = json.loads(response.data).get("items") or []
    # Only the predictor's pods (a transformer's would carry the same ISVC label).
    prefix = f"{predictor_name(name)}-"
    return [
        p
        for p in items
        if (p.get("metadata") or {}).get("labels", {}).get(ISVC_POD_LABEL) == name
        and p["metadata"]["name"].startswith(prefix)
    ]


def _patch_pod(namespace: str, pod: str, body: dict[str, Any]) -> None:
    try:
        kubernetes.client.CoreV1Api().patch_namespaced_pod(
            pod, namespace, body, _preload_content=False
        )
    except ApiException as err:
        if err.status != 404:  # gone already: nothing to choose
            raise


def _scale(namespace: str, name: str, replicas: int) -> None:
    kubernetes.client.AppsV1Api().patch_namespaced_deployment_scale(
        predictor_name(name), namespace, {"spec": {"replicas": replicas}}, _preload_content=False
    )


def metrics_condition(
    previous: list[dict[str, Any]] | None, problem: str | None, now: str
) -> dict[str, Any]:
    if problem is None:
        return status.condition(
            previous, METRICS_CONDITION, "True", "MetricsFresh", "vLLM series are current", now
        )
    reason = "PrometheusUnavailable" if "Prometheus" in problem else "MetricsMissingOrStale"
    return status.condition(previous, METRICS_CONDITION, "False", reason, problem, now)


@dataclass(frozen=True)
class PassResult:
    slo: dict[str, Any]  # status.slo
    problem: str | None = None  # why metrics are unavailable (None: they are fine)
    waiting: bool = False  # no predictor Deployment yet: the condition is left alone


def run_pass(
    body: kopf.Body,
    spec: ModelDeploymentSpec,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    now_s: float,
) -> PassResult:
    """One control-loop pass: read, decide, actuate; returns what the status says."""
    assert spec.slo is not None
    now = status.now_text()
    deployment = _predictor(spec.namespace, spec.name)
    if deployment is None:
        message = f"waiting for the predictor Deployment {predictor_name(spec.name)}"
        return PassResult({"reason": message, "lastDecisionTime": now}, waiting=True)
    current = int((deployment.get("spec") or {}).get("replicas") or 0)
    pods = _pods(spec.namespace, spec.name)
    problem: str | None = None
    metrics: dict[str, ReplicaMetrics] | None
    try:
        metrics = read_metrics(spec.slo.prometheus_url, spec.namespace, spec.name)
    except MetricsUnavailable as err:
        metrics, problem = None, str(err)
    one_pass = slo_inputs.build_inputs(now_s, spec.slo.variant, pods, metrics, current)
    decision = decide(one_pass.inputs, memo.get(_STATE), spec.slo.params)
    memo[_STATE] = decision.state
    held = bool(decision.details.get("held"))
    if held and problem is None:
        problem = decision.reason
    desired = int(decision.desired[spec.slo.variant.name])
    reason = decision.reason
    if one_pass.ignored_pods and "ignored series" not in reason:
        reason += f" (ignored series of deleted pods: {', '.join(one_pass.ignored_pods)})"
    logger.info("slo: %d -> %d: %s", current, desired, reason)
    if desired != current and not held:
        if desired < current:  # the least loaded pods go, not the ReplicaSet's pick
            removed = decision.remove.get(spec.slo.variant.name, ())
            for pod, body_patch in slo_inputs.deletion_cost_patches(removed).items():
                _patch_pod(spec.namespace, pod, body_patch)
        _scale(spec.namespace, spec.name, desired)
        kopf.info(
            body, reason="Scaled", message=f"{current} -> {desired} replicas: {reason}"[:1000]
        )
    fields = {
        "desiredReplicas": current if held else desired,
        "currentReplicas": current,
        "lastDecisionTime": now,
        "reason": reason[:1000],
    }
    return PassResult(fields, problem)


def write_status(namespace: str, name: str, result: PassResult, attempts: int = 3) -> None:
    """status.slo and MetricsAvailable, merged into the ModelDeployment's status as it is
    now: the conditions list is replaced whole by a merge patch, so it is read fresh and
    the patch carries its resourceVersion (a concurrent write -> 409 -> read again)."""
    custom = kubernetes.client.CustomObjectsApi()
    for attempt in range(attempts):
        owner = custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
        new_status: dict[str, Any] = {"slo": result.slo}
        if not result.waiting:
            previous = (owner.get("status") or {}).get("conditions")
            cond = metrics_condition(previous, result.problem, status.now_text())
            new_status["conditions"] = status.with_condition(previous, cond)
        rv = (owner.get("metadata") or {}).get("resourceVersion")
        body = {"status": new_status}
        if rv:
            body["metadata"] = {"resourceVersion": rv}
        try:
            custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, PLURAL, name, body
            )
            return
        except ApiException as err:
            if err.status != 409 or attempt == attempts - 1:
                raise


def slo_timer(
    body: kopf.Body,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    obj = {key: body.get(key) for key in ("apiVersion", "kind")}
    obj.update(metadata=dict(body.get("metadata") or {}), spec=dict(body.get("spec") or {}))
    try:
        spec = parse_model_deployment(obj)
    except SpecError:
        return  # the reconcile handler reports it (Ready=False naming the field)
    if spec.mode is not Mode.SLO or spec.slo is None:
        return
    now_s = time.time()
    last = memo.get(_LAST_PASS)
    if last is not None and now_s - last < spec.slo.params.interval_s - TICK_S / 2:
        return
    memo[_LAST_PASS] = now_s
    result = run_pass(body, spec, memo, logger, now_s)
    write_status(spec.namespace, spec.name, result)


def register(registry: kopf.OperatorRegistry, resource: tuple[str, str, str]) -> None:
    kopf.timer(
        *resource,
        registry=registry,
        id="slo",
        interval=TICK_S,
        when=lambda spec, **_: spec.get("mode") == Mode.SLO.value,
    )(slo_timer)
