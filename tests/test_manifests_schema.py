"""Third-party checks of what reaches a cluster, without a cluster.

* Every built-in resource in manifests/ and every object the operator creates (the HPA,
  the Benchmark's Job and ConfigMap) against the Kubernetes schemas of the version the
  kind cluster pins (kubernetes-validate, strict: unknown fields are errors).
* Every rendered InferenceService against KServe v0.16.0's own CRD schema (vendored in
  tests/fixtures/kserve/, source named inside), strictly: the SDK check in
  ``sdk_schema.py`` uses the 0.21 SDK, which knows fields 0.16 lacks; the 0.16 API server
  would silently prune those.
* checkov, a Kubernetes security scanner, over the operator's output with the same
  configuration as over manifests/ (``manifests/.checkov.yaml``, reasons beside each
  skipped check). It lives in its own virtualenv (``make venv-tools``: its pins fight
  kserve's); the scan is skipped, saying so, where that virtualenv is missing.
"""

import copy
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kservebench.errors import SpecError
from kservebench.operator import benchmark
from kservebench.operator.inferenceservice import (
    build_horizontal_pod_autoscaler,
    build_inference_service,
)
from kservebench.operator.spec import DeploymentModeNames, parse_model_deployment

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
SAMPLES = MANIFESTS / "samples"
SAMPLE_NAMES = [f"{k}-{m}" for k in ("sklearn", "xgboost", "llm") for m in ("hpa", "knative")]
KSERVE_SCHEMA = ROOT / "tests" / "fixtures" / "kserve" / "inferenceservice-v0.16.0.schema.json"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"


def kubernetes_version():
    """The Kubernetes the cluster runs: kind's node image in setup.sh (v1.32.2 -> 1.32.0)."""
    text = (MANIFESTS / "cluster" / "setup.sh").read_text()
    major, minor = re.search(r"kindest/node:v(\d+)\.(\d+)", text).groups()
    return f"{major}.{minor}.0"


K8S_VERSION = kubernetes_version()


def sample(name):
    return yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())


BUILTIN_GROUPS = {
    "", "apps", "batch", "autoscaling", "policy", "rbac.authorization.k8s.io",
    "networking.k8s.io", "apiextensions.k8s.io", "storage.k8s.io", "scheduling.k8s.io",
    "admissionregistration.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
}  # fmt: skip


def builtin(doc):
    """Whether a document is a Kubernetes built-in resource (not ours, KServe's, kind's or
    kustomize's)."""
    return "apiVersion" in doc and doc["apiVersion"].rpartition("/")[0] in BUILTIN_GROUPS


def manifest_documents():
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and builtin(doc):
                yield pytest.param(doc, id=f"{path.relative_to(MANIFESTS)}:{doc['kind']}")


def validate_k8s(doc):
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(p) for p in err.path)
        raise AssertionError(f"{doc['kind']} {where}: {err.message}") from None


def test_the_pinned_version_has_schemas():
    assert K8S_VERSION == "1.32.0"
    assert K8S_VERSION in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("doc", list(manifest_documents()))
def test_builtin_manifests_match_the_kubernetes_schemas(doc):
    validate_k8s(doc)


def test_the_schema_check_refuses_a_misspelt_field():
    [deployment] = yaml.safe_load_all((MANIFESTS / "operator" / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicie"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolicie"):
        validate_k8s(deployment)


def operator_output():
    """Every built-in object the operator creates, from the samples."""
    for name in SAMPLE_NAMES:
        hpa = build_horizontal_pod_autoscaler(parse_model_deployment(sample(name)))
        if hpa is not None:
            yield pytest.param(hpa, id=f"{name}:HorizontalPodAutoscaler")
    for path in sorted(SAMPLES.glob("benchmark*.yaml")):
        bench = yaml.safe_load(path.read_text())
        name, spec = bench["metadata"]["name"], benchmark.parse_benchmark(bench["spec"])
        children = (
            benchmark.build_job(name, spec),
            benchmark.build_pattern_configmap(name, spec),
            benchmark.build_network_policy(name),
        )
        for built in children:
            built = copy.deepcopy(built)
            built["metadata"]["namespace"] = bench["metadata"]["namespace"]
            yield pytest.param(built, id=f"{path.stem}:{built['kind']}")


@pytest.mark.parametrize("doc", list(operator_output()))
def test_what_the_operator_creates_matches_the_kubernetes_schemas(doc):
    validate_k8s(doc)


# --- the InferenceService against KServe v0.16.0's CRD --------------------------------


def structural_to_json_schema(schema):
    """A CRD structural schema as strict JSON Schema: where the API server would prune an
    unknown field, refuse it instead (like kubectl's strict field validation)."""
    if isinstance(schema, list):
        return [structural_to_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: structural_to_json_schema(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = bool(out.get("x-kubernetes-preserve-unknown-fields"))
    if out.get("nullable"):
        out = {"anyOf": [{"type": "null"}, out]}
    return out


def kserve_016_validator():
    vendored = json.loads(KSERVE_SCHEMA.read_text())
    assert "v0.16.0" in vendored["source"]
    return jsonschema.Draft7Validator(structural_to_json_schema(vendored["schema"]))


def kserve_016_errors(manifest):
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in kserve_016_validator().iter_errors(manifest)
    ]


@pytest.mark.parametrize("names", list(DeploymentModeNames))
@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_rendered_inference_services_fit_kserve_016s_crd(name, names):
    obj = sample(name)
    obj["spec"]["kserve"] = {"deploymentModeNames": names.value}
    if names is DeploymentModeNames.LEGACY and name == "xgboost-hpa":
        obj["spec"]["scaling"]["hpa"] = {}  # its 120 s window is refused with legacy names
    try:
        spec = parse_model_deployment(obj)
    except SpecError as err:
        pytest.fail(f"sample refused: {err}")
    assert kserve_016_errors(build_inference_service(spec)) == []


@pytest.mark.parametrize(
    ("where", "field"),
    [
        # Fields the 0.21 SDK (what sdk_schema.py checks against) has and 0.16 does not.
        (("spec",), "tracing"),
        (("spec", "predictor"), "schedulingGroup"),
        (("spec", "predictor", "model"), "restartPolicyRules"),
    ],
)
def test_a_field_kserve_016_lacks_is_caught(where, field):
    from kservebench.operator.sdk_schema import validate_inference_service

    manifest = build_inference_service(parse_model_deployment(sample("sklearn-hpa")))
    validate_inference_service(manifest)  # the SDK check alone passes it...
    node = manifest
    for key in where:
        node = node[key]
    node[field] = {}
    errors = kserve_016_errors(manifest)  # ...the 0.16 schema does not
    assert any(field in e for e in errors), errors


# --- checkov ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkov():
    if not CHECKOV.exists():
        pytest.skip(f"checkov is not installed ({CHECKOV}): run `make venv-tools`")
    return CHECKOV


def run_checkov(checkov, directory):
    done = subprocess.run(
        [str(checkov), "--config-file", str(MANIFESTS / ".checkov.yaml"),
         "--directory", str(directory), "--output", "json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for r in reports
        for c in (r.get("results") or {}).get("failed_checks", [])
    ]
    return done.returncode, failed


def test_checkov_finds_nothing_in_manifests(checkov):
    code, failed = run_checkov(checkov, MANIFESTS)
    assert failed == [] and code == 0


def test_checkov_finds_nothing_in_what_the_operator_creates(checkov, tmp_path):
    docs = [param.values[0] for param in operator_output()]
    (tmp_path / "operator-output.yaml").write_text(yaml.safe_dump_all(docs))
    code, failed = run_checkov(checkov, tmp_path)
    assert failed == [] and code == 0
