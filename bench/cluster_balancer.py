"""The hpa-mode balancer of the cluster target (``bench.cluster``): an Envoy Deployment in
the experiment's namespace that sends each request over a new connection to the model's
predictor Service, so that kube-proxy picks a ready pod for every request. Here: its
constants, its Envoy bootstrap (``envoy_config``), its objects (``balancer_manifests``),
the URL a model answers at behind it (``balancer_url``) and the wait for its rollout. All
pure, tested without a cluster; docs/cluster.md explains the choice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

# The hpa-mode balancer. Its image is the one Kourier 1.18's gateway runs (net-kourier
# config/300-gateway.yaml), so both modes pass one Envoy of the same build and a kind node
# that runs Kourier already holds it.
BALANCER = "kservebench-balancer"
BALANCER_IMAGE = "docker.io/envoyproxy/envoy:v1.34-latest"
BALANCER_NODE_PORT = 31081  # manifests/cluster/kind.yaml maps it to 127.0.0.1:8081
BALANCER_HOST_PORT = 8081
BALANCER_LISTEN_PORT = 8080
# Knative's default revision timeout (config-defaults revision-timeout-seconds), which
# Kourier applies to each route: the same limit on both paths.
ROUTE_TIMEOUT_S = 300
# One request per upstream connection: each request opens its own connection to KServe's
# predictor Service, and kube-proxy picks a ready pod for each connection, so for each
# request; a pod the HPA adds gets its share as soon as kube-proxy lists it (about 1 s).
REQUESTS_PER_CONNECTION = 1
CLUSTER_DOMAIN = "cluster.local"  # kind's (and most clusters') DNS domain
CONFIG_FILE = "envoy.json"  # JSON is what Envoy reads by this extension
BALANCER_LABELS = {"app.kubernetes.io/name": BALANCER,
                   "app.kubernetes.io/managed-by": "kservebench-bench"}  # fmt: skip


def balancer_url(model: str, host: str = "127.0.0.1", port: int = BALANCER_HOST_PORT) -> str:
    """A model behind the balancer: its routes are under ``/<model>/``."""
    return f"http://{host}:{port}/{model}"


def predictor_host(model: str, namespace: str) -> str:
    """KServe's Standard-mode Service for the model: port 80 to the model container's
    8080, over the ready predictor pods (kserve v0.16.0 service_reconciler.go)."""
    return f"{model}-predictor.{namespace}.svc.{CLUSTER_DOMAIN}"


def envoy_config(models: Sequence[str], namespace: str) -> dict[str, Any]:
    """The balancer's Envoy bootstrap: ``/<model>/...`` -> that model's predictor Service,
    one request per connection."""
    any_type = "type.googleapis.com/envoy.extensions."
    # A pod that went away before kube-proxy dropped it refuses the connection: the
    # request, never sent, so never run twice, goes out again (kube-proxy picks anew).
    retry = {"retry_on": "connect-failure,refused-stream", "num_retries": 2}
    routes = [
        {"match": {"prefix": f"/{m}/"},
         "route": {"cluster": m, "prefix_rewrite": "/", "timeout": f"{ROUTE_TIMEOUT_S}s",
                   "retry_policy": retry}}
        for m in models
    ]  # fmt: skip
    http1 = {
        "@type": any_type + "upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"max_requests_per_connection": REQUESTS_PER_CONNECTION},
        "explicit_http_config": {"http_protocol_options": {}},
    }
    clusters = [
        {"name": m, "type": "STRICT_DNS", "connect_timeout": "2s",
         "typed_extension_protocol_options": {
             "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": http1},
         "load_assignment": {"cluster_name": m, "endpoints": [{"lb_endpoints": [{"endpoint": {
             "address": {"socket_address": {"address": predictor_host(m, namespace),
                                            "port_value": 80}}}}]}]}}
        for m in models
    ]  # fmt: skip
    manager = {
        "@type": any_type + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench", "codec_type": "AUTO",
        "route_config": {"name": "models", "virtual_hosts": [
            {"name": "models", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": any_type + "filters.http.router.v3.Router"}}],
    }  # fmt: skip
    listener = {
        "name": "bench",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": BALANCER_LISTEN_PORT}},
        "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}],
    }  # fmt: skip
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def balancer_manifests(
    models: Sequence[str], namespace: str, experiment: str = ""
) -> list[dict[str, Any]]:
    """The balancer's objects: its Envoy config, Deployment and node-port Service."""
    labels = {
        **BALANCER_LABELS,
        **({"kservebench.dev/experiment": experiment} if experiment else {}),
    }
    config = json.dumps(envoy_config(models, namespace), indent=2)
    digest = hashlib.sha256(config.encode()).hexdigest()[:16]
    meta = {"name": BALANCER, "namespace": namespace, "labels": labels}
    container = {
        "name": "envoy", "image": BALANCER_IMAGE, "imagePullPolicy": "IfNotPresent",
        "command": ["/usr/local/bin/envoy"],
        "args": ["-c", f"/etc/kservebench/{CONFIG_FILE}", "--disable-hot-restart",
                 "--log-level", "warn"],
        "ports": [{"name": "http", "containerPort": BALANCER_LISTEN_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 2},
        # Kourier's gateway resources, so neither mode's proxy is starved or favoured.
        "resources": {"requests": {"cpu": "200m", "memory": "200Mi"},
                      "limits": {"cpu": "1", "memory": "800Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/kservebench", "readOnly": True}],
    }  # fmt: skip
    pod_spec = {
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "config", "configMap": {"name": BALANCER}}],
    }  # fmt: skip
    # A new config is a new pod (the annotation changes): Envoy reads its config once.
    template = {"metadata": {"labels": BALANCER_LABELS,
                             "annotations": {"kservebench.dev/config-sha256": digest}},
                "spec": pod_spec}  # fmt: skip
    selector = {"app.kubernetes.io/name": BALANCER}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
         "data": {CONFIG_FILE: config}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {"replicas": 1, "selector": {"matchLabels": selector}, "template": template}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"type": "NodePort", "selector": selector,
                  "ports": [{"name": "http", "port": 80, "targetPort": "http",
                             "nodePort": BALANCER_NODE_PORT, "protocol": "TCP"}]}},
    ]  # fmt: skip


def kubectl_rollout_status(namespace: str, timeout_s: int = 180) -> list[str]:
    return ["kubectl", "-n", namespace, "rollout", "status", f"deployment/{BALANCER}",
            f"--timeout={timeout_s}s"]  # fmt: skip
