"""The cluster target: ModelDeployments applied through the operator, on the current kubeconfig.

For each model of the experiment the bench applies a ModelDeployment (the operator turns
it into an InferenceService in the experiment's mode), waits until its status says
``Ready``, and sends traffic to it from this machine:

- ``--url-template`` when given (e.g. ``http://{name}.{namespace}.example.com``);
- knative mode: the InferenceService's URL (``make cluster`` makes it resolve to the
  kind node), so requests go through Kourier's Envoy and the activator, cold starts
  included;
- hpa mode: the bench's balancer, an Envoy Deployment of its own in the namespace that
  sends each request over a new connection to the predictor Service, so that kube-proxy
  picks a ready pod for every request; ``make cluster`` maps its node port to
  127.0.0.1:8081, so a model is at ``http://127.0.0.1:8081/<model>``.

Why not the Service straight from here: ``kubectl port-forward svc/...`` tunnels to one
pod only, and kube-proxy balances connections, not requests, while the load generator keeps
its connections open; either way the pods the HPA adds would get little or no traffic. An
Envoy in front of each mode (Kourier in knative mode, ours in hpa mode) also keeps the two
paths alike. docs/cluster.md explains the choice and its limits.

Series come from the cluster's Prometheus (``--prometheus-url``). Building the
ModelDeployments, the balancer's objects (``bench.cluster_balancer``) and the traffic URLs
are pure functions, tested without a cluster.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from kservebench.bench.cluster_balancer import (
    BALANCER,
    BALANCER_HOST_PORT,
    BALANCER_IMAGE,
    BALANCER_LABELS,
    BALANCER_LISTEN_PORT,
    BALANCER_NODE_PORT,
    CLUSTER_DOMAIN,
    CONFIG_FILE,
    REQUESTS_PER_CONNECTION,
    ROUTE_TIMEOUT_S,
    balancer_manifests,
    balancer_url,
    envoy_config,
    kubectl_rollout_status,
    predictor_host,
)
from kservebench.bench.spec import Experiment, ModelRef
from kservebench.errors import SpecError
from kservebench.operator.spec import API_GROUP, API_VERSION, KIND, PLURAL
from kservebench.procs import http_ok, wait_until

READY_TIMEOUT_S = 600.0  # image pulls on a fresh kind node take minutes
POLL_S = 2.0

# The balancer moved to cluster_balancer; its names are still importable from here.
__all__ = [
    "BALANCER",
    "BALANCER_HOST_PORT",
    "BALANCER_IMAGE",
    "BALANCER_LABELS",
    "BALANCER_LISTEN_PORT",
    "BALANCER_NODE_PORT",
    "CLUSTER_DOMAIN",
    "CONFIG_FILE",
    "KUBECTL_APPLY",
    "KUBECTL_DELETE",
    "POLL_S",
    "READY_TIMEOUT_S",
    "REQUESTS_PER_CONNECTION",
    "ROUTE_TIMEOUT_S",
    "ClusterTarget",
    "balancer_manifests",
    "balancer_url",
    "check_cluster_experiment",
    "envoy_config",
    "kubectl_rollout_status",
    "manifests_yaml",
    "model_deployment",
    "model_deployments",
    "predictor_host",
    "traffic_url",
]


def model_deployment(
    experiment: Experiment,
    model: ModelRef,
    namespace: str,
    storage_uri_prefix: str,
    kserve_names: str = "current",
) -> dict[str, Any]:
    """The ModelDeployment for one model of the experiment (named after the model)."""
    from kservebench.models.catalog import get_spec

    raw = experiment.raw
    spec: dict[str, Any] = {
        "mode": experiment.mode,
        "model": {
            "kind": get_spec(model.name).framework,
            "storageUri": f"{storage_uri_prefix.rstrip('/')}/{model.name}",
            "protocol": model.protocol,
        },
        "scaling": raw["scaling"],
        "kserve": {"deploymentModeNames": kserve_names},
    }
    if "resources" in raw:
        spec["resources"] = raw["resources"]
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {
            "name": model.name,
            "namespace": namespace,
            "labels": {"kservebench.dev/experiment": experiment.name},
        },
        "spec": spec,
    }


def model_deployments(
    experiment: Experiment, namespace: str, storage_uri_prefix: str, kserve_names: str = "current"
) -> list[dict[str, Any]]:
    return [
        model_deployment(experiment, m, namespace, storage_uri_prefix, kserve_names)
        for m in experiment.models
    ]


def check_cluster_experiment(experiment: Experiment) -> None:
    """Refuse what the cluster target cannot run, before anything is applied."""
    for i, model in enumerate(experiment.models):
        if model.llm is not None:
            raise SpecError(
                f"models[{i}].llm",
                model.llm.engine,
                "LLM experiments run on the local target only: the cluster target deploys "
                "the tabular models. For an LLM on a cluster apply manifests/samples/llm-*.yaml "
                "on a cluster with a GPU node (NVIDIA device plugin or GPU Operator); kind "
                "has no GPU (docs/cluster.md)",
            )


# --- traffic path ------------------------------------------------------------------------


def traffic_url(
    mode: str, template: str | None, name: str, namespace: str, status_url: str | None
) -> str:
    """Where traffic goes from this machine, through a path that balances each request."""
    if template:
        return template.format(name=name, namespace=namespace)
    if mode == "knative":
        # Knative's URL goes through Kourier and the activator, as real clients do.
        if not status_url:
            raise RuntimeError(
                f"ModelDeployment {namespace}/{name} is Ready but has no status.url: "
                "pass --url-template to say where its InferenceService answers"
            )
        return status_url
    # A Standard-mode URL names an Ingress that kind does not serve; the balancer does.
    return balancer_url(name)


KUBECTL_APPLY = ("kubectl", "apply", "-f", "-")
KUBECTL_DELETE = ("kubectl", "delete", "--ignore-not-found", "--wait=false", "-f", "-")


def manifests_yaml(documents: Sequence[dict[str, Any]]) -> str:
    """What ``kubectl apply -f -`` reads: one YAML document per object, no aliases."""
    return yaml.safe_dump_all(json.loads(json.dumps(list(documents))), sort_keys=False)


def _kubectl(argv: Sequence[str], documents: list[dict[str, Any]] | None = None) -> None:
    text = manifests_yaml(documents) if documents is not None else None
    try:
        done = subprocess.run(argv, input=text, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RuntimeError(f"{argv[0]} is not on PATH: the hpa-mode balancer needs it") from None
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout}")


class ClusterTarget:
    """Apply, wait for, reach and remove the experiment's ModelDeployments."""

    name = "cluster"

    def __init__(
        self,
        experiment: Experiment,
        run_dir: Path,
        namespace: str,
        storage_uri_prefix: str,
        prometheus_url: str | None,
        url_template: str | None = None,
        kserve_names: str = "current",
        keep: bool = False,
        trained_dir: Path | None = None,
    ) -> None:
        self.experiment = experiment
        self.run_dir = Path(run_dir)
        self.namespace = namespace
        self.prometheus = prometheus_url
        self.url_template = url_template
        self.keep = keep
        self.trained_dir = trained_dir
        self.tabular = all(m.llm is None for m in experiment.models)
        self.manifests = (
            model_deployments(experiment, namespace, storage_uri_prefix, kserve_names)
            if self.tabular
            else []
        )
        names = [m.name for m in experiment.models]
        self.balancer = (
            balancer_manifests(names, namespace, experiment.name)
            if self.tabular and experiment.mode == "hpa"
            else []
        )
        self.urls: dict[str, str] = {}
        self.applied: list[str] = []
        self.balancer_applied = False

    def _call(self, verb: str, *args: Any) -> Any:
        """``<verb>_namespaced_custom_object`` on this namespace's ModelDeployments."""
        import kubernetes

        api = kubernetes.client.CustomObjectsApi()
        method = getattr(api, f"{verb}_namespaced_custom_object")
        return method(API_GROUP, API_VERSION, self.namespace, PLURAL, *args)

    def start(self, on_step: Callable[[str], None] = lambda text: None) -> None:
        import kubernetes

        check_cluster_experiment(self.experiment)
        kubernetes.config.load_kube_config()
        for manifest in self.manifests:
            name = manifest["metadata"]["name"]
            on_step(f"applying ModelDeployment {self.namespace}/{name}")
            try:
                self._call("create", manifest)
            except kubernetes.client.ApiException as err:
                if err.status != 409:
                    raise
                self._call("patch", name, {"spec": manifest["spec"]})
            self.applied.append(name)
        statuses: dict[str, dict[str, Any]] = {}
        for name in self.applied:
            on_step(f"waiting for ModelDeployment {name} to be Ready")
            statuses[name] = self._wait_ready(name)
        if self.balancer:
            # After Ready: the predictor Services exist, so Envoy resolves them at once.
            on_step(f"applying the balancer {self.namespace}/{BALANCER} (Envoy)")
            self.balancer_applied = True
            _kubectl(KUBECTL_APPLY, self.balancer)
            _kubectl(kubectl_rollout_status(self.namespace))
        for name, status in statuses.items():
            url = traffic_url(
                self.experiment.mode, self.url_template, name, self.namespace, status.get("url")
            )
            if self.balancer and not self.url_template:
                self._wait_balanced(name, url)
            self.urls[name] = url

    def _wait_balanced(self, name: str, url: str) -> None:
        # The pods are ready; the first request through may wait for kube-proxy's rules.
        try:
            wait_until(lambda: http_ok(f"{url}/v2/health/live"), 60, f"{name} via {url}")
        except TimeoutError:
            raise RuntimeError(
                f"{name} does not answer through the balancer at {url}. On kind the cluster "
                f"needs manifests/cluster/kind.yaml's mapping of node port {BALANCER_NODE_PORT} "
                f"to 127.0.0.1:{BALANCER_HOST_PORT} (an older cluster lacks it: recreate it "
                "with make cluster); elsewhere make svc/kservebench-balancer reachable (e.g. "
                "kubectl port-forward svc/kservebench-balancer 8081:80, one Envoy pod that "
                "balances every request) and pass --url-template http://127.0.0.1:8081/{name}"
            ) from None

    def _wait_ready(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            obj = self._call("get", name)
            status = obj.get("status") or {}
            if status.get("phase") == "Ready":
                return status
            if status.get("phase") == "Invalid":
                conditions = status.get("conditions") or [{}]
                message = conditions[0].get("message")
                raise RuntimeError(f"ModelDeployment {name} is invalid: {message}")
            time.sleep(POLL_S)
        raise TimeoutError(f"ModelDeployment {name} not Ready after {READY_TIMEOUT_S:.0f}s")

    def refresh(self) -> None:
        pass  # the cluster's own controllers and Prometheus report replicas

    def stop(self) -> None:
        if self.keep:
            return
        if self.balancer_applied:
            # Already gone, or the cluster went away: nothing left to undo.
            with contextlib.suppress(Exception):
                _kubectl(KUBECTL_DELETE, self.balancer)
        for name in self.applied:
            with contextlib.suppress(Exception):
                self._call("delete", name)

    def endpoint(self, model: str) -> str:
        return self.urls[model]

    def model_dir(self, model: str) -> Path | None:
        # Only for the payload rows (the model's test set); the cluster serves its own copy.
        path = self.trained_dir / model if self.trained_dir else None
        return path if path is not None and path.is_dir() else None

    @property
    def prometheus_url(self) -> str | None:
        return self.prometheus

    def collect_options(self) -> dict[str, Any]:
        return {"target": "cluster", "namespace": self.namespace}

    def describe(self) -> dict[str, Any]:
        autoscaler = "the HPA" if self.experiment.mode == "hpa" else "the Knative KPA"
        if self.url_template:
            path = "--url-template"
        elif self.experiment.mode == "hpa":
            path = f"balancer {BALANCER} (Envoy, a connection per request to the Service)"
        else:
            path = "InferenceService URL (Kourier, activator when in the path)"
        return {
            "target": self.name,
            "replicas": f"autoscaled by {autoscaler}",
            "cluster": {
                "namespace": self.namespace,
                "model_deployments": self.manifests,
                "traffic_path": path,
                "urls": self.urls,
                "prometheus_url": self.prometheus,
            },
        }
