"""The cluster target's traffic path, built as data and checked without a cluster.

hpa-mode traffic goes through the bench's balancer (an Envoy that sends each request over
a connection of its own to the predictor Service, so that kube-proxy picks a ready pod per
request), never a ``kubectl port-forward`` to the Service (one pod). The balancer's objects
are checked against the Kubernetes API models of the ``kubernetes`` client and its Envoy
config against Envoy's own API (envoy-data-plane), so a misspelt field fails here rather
than on a cluster.
"""

from __future__ import annotations

import http.server
import importlib
import json
import os
import re
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import ClassVar

import kubernetes
import pytest
import yaml

from kservebench.bench.cluster import (
    BALANCER,
    BALANCER_HOST_PORT,
    BALANCER_NODE_PORT,
    CONFIG_FILE,
    ClusterTarget,
    balancer_manifests,
    envoy_config,
    manifests_yaml,
    traffic_url,
)
from kservebench.bench.spec import load_experiment
from kservebench.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
SPECS = resources.files("kservebench.bench") / "specs"
MODELS = ["sklearn-medium", "xgboost-large"]


def test_hpa_traffic_goes_to_the_balancer_and_knative_traffic_to_kourier():
    assert traffic_url("hpa", None, "sklearn-medium", "bench", "http://x.example.com") == (
        f"http://127.0.0.1:{BALANCER_HOST_PORT}/sklearn-medium"
    )
    kn = "http://m-predictor.bench.127.0.0.1.sslip.io"
    assert traffic_url("knative", None, "m", "bench", kn) == kn
    assert traffic_url("hpa", "http://lb:9/{name}", "m", "bench", None) == "http://lb:9/m"
    with pytest.raises(RuntimeError, match=r"no status\.url"):
        traffic_url("knative", None, "m", "bench", None)


def _by_kind(docs):
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_each_request_gets_a_connection_of_its_own_to_the_predictor_service():
    docs = _by_kind(balancer_manifests(MODELS, "bench", "hpa"))
    config = json.loads(docs[("ConfigMap", BALANCER)]["data"][CONFIG_FILE])
    [listener] = config["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    for model, route in zip(MODELS, routes, strict=True):
        # /<model>/v2/models/<model>/infer -> /v2/models/<model>/infer on one of its pods
        assert route["match"] == {"prefix": f"/{model}/"}
        assert route["route"]["cluster"] == model and route["route"]["prefix_rewrite"] == "/"
        cluster = clusters[model]
        [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        # KServe's own Standard-mode Service, port 80 -> 8080 (kserve v0.16.0
        # service_reconciler.go createDefaultSvc), which kube-proxy spreads over ready pods.
        assert address == {"address": f"{model}-predictor.bench.svc.cluster.local",
                           "port_value": 80}  # fmt: skip
        [options] = cluster["typed_extension_protocol_options"].values()
        # A connection per request: kube-proxy, which picks a pod per connection, so
        # picks one per request, and a pod the HPA adds gets requests at once.
        assert options["common_http_protocol_options"]["max_requests_per_connection"] == 1
    assert listener["address"]["socket_address"]["port_value"] == 8080


def test_the_balancer_is_reachable_where_kind_maps_its_node_port():
    docs = _by_kind(balancer_manifests(MODELS, "bench"))
    entry = docs[("Service", BALANCER)]["spec"]
    assert entry["type"] == "NodePort" and entry["ports"][0]["nodePort"] == BALANCER_NODE_PORT
    kind = yaml.safe_load((ROOT / "manifests" / "cluster" / "kind.yaml").read_text())
    mappings = {m["containerPort"]: m["hostPort"] for m in kind["nodes"][0]["extraPortMappings"]}
    assert mappings[BALANCER_NODE_PORT] == BALANCER_HOST_PORT
    setup = (ROOT / "manifests" / "cluster" / "setup.sh").read_text()
    assert f"BALANCER_NODE_PORT={BALANCER_NODE_PORT}\n" in setup
    assert f"BALANCER_HOST_PORT={BALANCER_HOST_PORT}\n" in setup
    deployment = docs[("Deployment", BALANCER)]["spec"]["template"]
    assert deployment["metadata"]["labels"].items() >= entry["selector"].items()


def test_a_new_config_rolls_a_new_balancer_pod():
    def digest(models):
        docs = _by_kind(balancer_manifests(models, "bench"))
        return docs[("Deployment", BALANCER)]["spec"]["template"]["metadata"]["annotations"]

    assert digest(MODELS) == digest(MODELS) != digest(MODELS[:1])


SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def _check_model(value, type_name: str, where: str) -> None:
    """``value`` has only fields, of the right types, of the Kubernetes API type (the
    ``kubernetes`` client's models, generated from the API's OpenAPI schema)."""
    if value is None or type_name == "object":  # object: IntOrString, quantities
        return
    if type_name in SCALARS:
        assert isinstance(value, SCALARS[type_name]), f"{where}: {value!r} is not {type_name}"
        return
    if items := re.fullmatch(r"(?:list|List)\[(.+)\]", type_name):
        for i, item in enumerate(value):
            _check_model(item, items[1], f"{where}[{i}]")
        return
    if entries := re.fullmatch(r"(?:dict\(str, (.+)\)|Dict\[str, (.+)\])", type_name):
        for key, item in value.items():
            _check_model(item, entries[1] or entries[2], f"{where}.{key}")
        return
    model = getattr(kubernetes.client, type_name)
    fields = {
        json_name: model.openapi_types[attr] for attr, json_name in model.attribute_map.items()
    }
    assert isinstance(value, dict), f"{where}: {value!r} is not a {type_name}"
    for key, item in value.items():
        assert key in fields, f"{where}: {type_name} has no field {key!r}"
        _check_model(item, fields[key], f"{where}.{key}")


def test_the_balancer_objects_are_valid_kubernetes_objects():
    types = {"ConfigMap": "V1ConfigMap", "Deployment": "V1Deployment", "Service": "V1Service"}
    docs = list(yaml.safe_load_all(manifests_yaml(balancer_manifests(MODELS, "bench", "hpa"))))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service"]
    for doc in docs:
        _check_model(doc, types[doc["kind"]], f"{doc['kind']}/{doc['metadata']['name']}")
        assert doc["metadata"]["namespace"] == "bench"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic, inside envoy-data-plane
def test_the_envoy_config_is_valid_for_envoys_api():
    pytest.importorskip("envoy_data_plane", reason="needs envoy-data-plane (Envoy's API types)")
    # Importing a module registers its types for the typed_config (Any) fields.
    for module in ("filters.network.http_connection_manager.v3", "filters.http.router.v3",
                   "upstreams.http.v3"):  # fmt: skip
        importlib.import_module(f"envoy_data_plane.envoy.extensions.{module}")
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    bootstrap = Bootstrap.from_dict(envoy_config(MODELS, "bench"))  # unknown fields raise
    clusters = bootstrap.static_resources.clusters
    assert [c.name for c in clusters] == MODELS
    options = clusters[0].typed_extension_protocol_options
    [http] = [value.unpack() for value in options.values()]
    assert http.common_http_protocol_options.max_requests_per_connection == 1
    with pytest.raises(KeyError, match="Unknown field"):
        Bootstrap.from_dict({"static_resources": {"clusters": [{"name": "x", "dns_ttl": "1s"}]}})


def test_the_cluster_target_refuses_llm_experiments_before_touching_the_cluster(tmp_path):
    experiment = load_experiment(SPECS / "llm.yaml")
    target = ClusterTarget(experiment, tmp_path, "bench", "pvc://models", None)
    assert target.manifests == [] and target.balancer == []
    with pytest.raises(SpecError, match=r"models\[0\]\.llm.*local target.*GPU") as err:
        target.start()
    assert "no GPU" in str(err.value)


def test_only_hpa_experiments_bring_a_balancer(tmp_path):
    hpa = ClusterTarget(load_experiment(SPECS / "hpa.yaml"), tmp_path, "b", "pvc://models", None)
    knative = load_experiment(SPECS / "knative.yaml")
    assert {d["kind"] for d in hpa.balancer} == {"ConfigMap", "Deployment", "Service"}
    assert ClusterTarget(knative, tmp_path, "b", "pvc://models", None).balancer == []
    assert hpa.describe()["cluster"]["traffic_path"].startswith(f"balancer {BALANCER}")


# --- the target's run, against a small Kubernetes API and a recording kubectl -------------


class _Api(http.server.BaseHTTPRequestHandler):
    """ModelDeployments in memory; each one reads back Ready, as the operator would make it."""

    objects: ClassVar[dict[str, dict]] = {}
    requests: ClassVar[list[tuple[str, str]]] = []

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

    def do_POST(self):
        obj = self._body()
        self.requests.append(("POST", obj["metadata"]["name"]))
        self.objects[obj["metadata"]["name"]] = obj
        self._reply(201, obj)

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        self.requests.append(("GET", name))
        self._reply(200, {**self.objects[name], "status": {"phase": "Ready"}})

    def do_DELETE(self):
        name = self.path.rsplit("/", 1)[-1]
        self.requests.append(("DELETE", name))
        self._reply(200, self.objects.pop(name))

    def log_message(self, *args):
        pass


class _Balancer(http.server.BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_GET(self):
        self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(handler, port: int) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_an_hpa_run_applies_the_balancer_sends_through_it_and_removes_it(tmp_path, monkeypatch):
    # The client reads KUBECONFIG when it is imported, ~/.kube/config when it loads.
    if os.environ.get("KUBECONFIG"):
        pytest.skip("KUBECONFIG is set: the test would not use its own API server")
    try:  # the balancer's address on kind; a stand-in answers there
        balancer = _serve(_Balancer, BALANCER_HOST_PORT)
    except OSError:
        pytest.skip(f"127.0.0.1:{BALANCER_HOST_PORT} is taken on this machine")
    api = _serve(_Api, 0)
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{api.server_port}"}}],
        "users": [{"name": "test", "user": {}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }  # fmt: skip
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text(yaml.safe_dump(kubeconfig))
    bin_dir, log = tmp_path / "bin", tmp_path / "kubectl.jsonl"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        "stdin = sys.stdin.read() if '-' in sys.argv else None\n"
        f"open({str(log)!r}, 'a').write(json.dumps([sys.argv[1:], stdin]) + '\\n')\n"
    )
    kubectl.chmod(0o755)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    try:
        target = ClusterTarget(
            load_experiment(SPECS / "hpa.yaml"), tmp_path, "bench", "pvc://models", None
        )
        target.start()
        assert [target.endpoint(m) for m in MODELS] == [
            f"http://127.0.0.1:8081/{m}" for m in MODELS
        ]
        assert _Balancer.paths == [f"/{m}/v2/health/live" for m in MODELS]
        target.stop()
    finally:
        balancer.shutdown()
        api.shutdown()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [args for args, _ in calls] == [
        ["apply", "-f", "-"],
        ["-n", "bench", "rollout", "status", f"deployment/{BALANCER}", "--timeout=180s"],
        ["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
    ]
    applied = list(yaml.safe_load_all(calls[0][1]))
    assert applied == list(yaml.safe_load_all(calls[2][1]))  # removes what it applied
    assert [d["kind"] for d in applied] == ["ConfigMap", "Deployment", "Service"]
    assert [r for r in _Api.requests if r[0] != "GET"] == [
        ("POST", "sklearn-medium"), ("POST", "xgboost-large"),
        ("DELETE", "sklearn-medium"), ("DELETE", "xgboost-large"),
    ]  # fmt: skip
