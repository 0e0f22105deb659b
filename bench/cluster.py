"""The cluster target: ModelDeployments applied through the operator, on the current kubeconfig.

For each model of the experiment the bench applies a ModelDeployment (the operator turns
it into an InferenceService in the experiment's mode), waits until its status says
``Ready``, and sends traffic to it from this machine:

- ``--url-template`` when given (e.g. ``http://{name}.{namespace}.example.com``);
- knative mode: the InferenceService's URL (``make cluster`` makes it resolve to the
  kind node, so requests go through Kourier and the activator, cold starts included);
- hpa mode: a ``kubectl port-forward`` to the predictor Service.

Series come from the cluster's Prometheus (``--prometheus-url``). Building the
ModelDeployments is a pure function (``model_deployments``), tested without a cluster.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kservebench.bench.spec import Experiment, ModelRef
from kservebench.operator.spec import API_GROUP, API_VERSION, KIND, PLURAL
from kservebench.procs import ManagedProcess, free_port, http_ok, wait_until

READY_TIMEOUT_S = 600.0  # image pulls on a fresh kind node take minutes
POLL_S = 2.0


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


def traffic_url(
    mode: str, template: str | None, name: str, namespace: str, status_url: str | None
) -> str | None:
    """Where traffic goes from this machine; None: port-forward to the predictor Service."""
    if template:
        return template.format(name=name, namespace=namespace)
    # Knative's URL goes through the ingress and activator, as real clients do; a
    # Standard-mode URL names an Ingress that kind does not serve.
    return status_url if mode == "knative" else None


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
        self.manifests = model_deployments(experiment, namespace, storage_uri_prefix, kserve_names)
        self.urls: dict[str, str] = {}
        self.forwards: list[ManagedProcess] = []
        self.applied: list[str] = []

    def _call(self, verb: str, *args: Any) -> Any:
        """``<verb>_namespaced_custom_object`` on this namespace's ModelDeployments."""
        import kubernetes

        api = kubernetes.client.CustomObjectsApi()
        method = getattr(api, f"{verb}_namespaced_custom_object")
        return method(API_GROUP, API_VERSION, self.namespace, PLURAL, *args)

    def start(self, on_step: Callable[[str], None] = lambda text: None) -> None:
        import kubernetes

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
        for name in self.applied:
            on_step(f"waiting for ModelDeployment {name} to be Ready")
            status = self._wait_ready(name)
            url = traffic_url(
                self.experiment.mode, self.url_template, name, self.namespace, status.get("url")
            )
            self.urls[name] = url or self._port_forward(name)

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

    def _port_forward(self, name: str) -> str:
        port = free_port()
        forward = ManagedProcess(
            ["kubectl", "port-forward", "-n", self.namespace, "--address", "127.0.0.1",
             f"svc/{name}-predictor", f"{port}:80"],
            self.run_dir / "logs" / f"port-forward-{name}.log",
        )  # fmt: skip
        self.forwards.append(forward)
        forward.start()
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{url}/v2/health/live"), 30, f"port-forward to {name}")
        return url

    def refresh(self) -> None:
        pass  # the cluster's own controllers and Prometheus report replicas

    def stop(self) -> None:
        for forward in self.forwards:
            forward.stop()
        if self.keep:
            return
        for name in self.applied:
            # Already gone, or the cluster went away: nothing left to undo.
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
        return {
            "target": self.name,
            "replicas": f"autoscaled by {autoscaler}",
            "cluster": {
                "namespace": self.namespace,
                "model_deployments": self.manifests,
                "urls": self.urls,
                "prometheus_url": self.prometheus,
            },
        }
