"""manifests/: the CRD matches the code and refuses what it can; RBAC, Deployment,
Dockerfile and kustomization are what `make deploy` needs, with least privilege."""

import copy
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from kservebench.errors import SpecError
from kservebench.operator.crd import CEL_RULES, ROOT_CEL_RULES, generate_crd
from kservebench.operator.spec import parse_model_deployment

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
SAMPLES = MANIFESTS / "samples"
SAMPLE_NAMES = [f"{k}-{m}" for k in ("sklearn", "xgboost", "llm") for m in ("hpa", "knative")]


def sample(name):
    return yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())


def load_all(relative):
    return [d for d in yaml.safe_load_all((MANIFESTS / relative).read_text()) if d]


def crd_schema():
    [crd] = load_all("crds/modeldeployment.yaml")
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strict(schema):
    """The structural schema as JSON Schema, unknown fields refused (kubectl's strict
    field validation; the API server would otherwise prune them silently)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = bool(out.get("x-kubernetes-preserve-unknown-fields"))
    return out


def schema_errors(obj):
    validator = jsonschema.Draft7Validator(strict(crd_schema()))
    return list(validator.iter_errors(obj))


def test_the_crd_file_is_generated_from_the_code():
    [crd] = load_all("crds/modeldeployment.yaml")
    assert crd == generate_crd(), "run: python -m kservebench.operator.crd > manifests/crds/..."


def test_the_crd_has_status_printer_columns_and_validation():
    [version] = generate_crd()["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Mode"] == ".spec.mode" and columns["Phase"] == ".status.phase"
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["model"]["properties"]["kind"]["enum"] == [
        "sklearn",
        "xgboost",
        "llm",
    ]
    assert spec["properties"]["scaling"]["properties"]["maxReplicas"]["minimum"] == 1
    assert len(spec["x-kubernetes-validations"]) == len(CEL_RULES) >= 8


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_the_schema_accepts_every_sample(name):
    assert schema_errors(sample(name)) == []


def _edit(name, edit):
    obj = copy.deepcopy(sample(name))
    edit(obj["spec"])
    return obj


@pytest.mark.parametrize(
    ("obj", "where"),
    [
        (_edit("sklearn-hpa", lambda s: s["model"].update(kind="pytorch")), "kind"),
        (_edit("sklearn-hpa", lambda s: s["model"].pop("storageUri")), "storageUri"),
        (_edit("sklearn-hpa", lambda s: s["resources"]["requests"].update(cpu="1x")), "1x"),
        (_edit("sklearn-hpa", lambda s: s["scaling"].update(maxReplicas=0)), "maxReplicas"),
        (_edit("sklearn-hpa", lambda s: s["scaling"].update(minReplica=1)), "minReplica"),
        (_edit("sklearn-hpa", lambda s: s.update(mode="serverless")), "serverless"),
        (_edit("sklearn-knative", lambda s: s["scaling"]["knative"].update(window="1 min")),
         "1 min"),
        (_edit("sklearn-knative", lambda s: s["scaling"]["knative"].update(
            panicWindowPercentage=0)), "panicWindowPercentage"),
    ],
)  # fmt: skip
def test_the_schema_refuses_what_it_can(obj, where):
    errors = schema_errors(obj)
    assert errors
    assert any(where in (e.message + str(list(e.absolute_path))) for e in errors), errors


# For every CEL rule, specs that break it: the API server refuses them (CEL evaluated
# here with cel-python) and so does the operator's own validation, on the same field.
CEL_CASES = {
    ".mode": [_edit("llm-hpa", lambda s: s.update(mode="slo"))],
    ".scaling.minReplicas": [
        _edit("sklearn-hpa", lambda s: s["scaling"].update(minReplicas=0)),
        _edit("sklearn-knative", lambda s: s["scaling"].update(minReplicas=1, scaleToZero=True)),
    ],
    ".scaling.scaleToZero": [_edit("xgboost-hpa", lambda s: s["scaling"].update(scaleToZero=True))],
    ".scaling.metric": [
        _edit("sklearn-knative", lambda s: s["scaling"].update(metric="cpu")),
        _edit("sklearn-hpa", lambda s: s["scaling"].update(metric="concurrency")),
    ],
    ".scaling.maxReplicas": [
        _edit("xgboost-hpa", lambda s: s["scaling"].update(minReplicas=4, maxReplicas=2))
    ],
    ".scaling.target": [_edit("sklearn-hpa", lambda s: s["scaling"].update(target=120))],
    ".scaling.prometheus": [
        _edit("sklearn-hpa", lambda s: s["scaling"].update(metric="prometheus"))
    ],
    ".model.protocol": [_edit("xgboost-hpa", lambda s: s["model"].update(protocol="openai"))],
    ".model.llm": [_edit("xgboost-hpa", lambda s: s["model"].update(llm={"gpus": 1}))],
    # Knative 1.18 refuses these at the revision (max-revision-timeout-seconds 600,
    # allow-zero-initial-scale false, target-burst-capacity >= 0 or -1).
    ".timeoutSeconds": [_edit("llm-knative", lambda s: s.update(timeoutSeconds=601))],
    ".scaling.knative.initialScale": [
        _edit("sklearn-knative", lambda s: s["scaling"]["knative"].update(initialScale=0))
    ],
    ".scaling.knative.targetBurstCapacity": [
        _edit("sklearn-knative", lambda s: s["scaling"]["knative"].update(targetBurstCapacity=-0.5))
    ],
    # KServe <= 0.15's hpa class ignores behaviour: only its defaults are honest there.
    ".scaling.hpa": [
        _edit("xgboost-hpa", lambda s: s.update(kserve={"deploymentModeNames": "legacy"}))
    ],
}


def _cel_programs():
    celpy = pytest.importorskip("celpy")
    env = celpy.Environment()
    return celpy, [(env.program(env.compile(rule)), rule, path) for rule, _, path in CEL_RULES]


def test_every_cel_rule_compiles_holds_on_samples_and_has_a_breaking_case():
    celpy, programs = _cel_programs()
    for program, rule, path in programs:
        assert path in CEL_CASES, f"no bad case for CEL rule {rule!r}"
        for name in SAMPLE_NAMES:
            spec = celpy.json_to_cel(sample(name)["spec"])
            assert program.evaluate({"self": spec}) == celpy.celtypes.BoolType(True), (rule, name)


@pytest.mark.parametrize(
    ("path", "obj"), [(path, obj) for path, objs in CEL_CASES.items() for obj in objs]
)
def test_cel_rules_and_python_validation_refuse_the_same_specs(path, obj):
    celpy, programs = _cel_programs()
    assert schema_errors(obj) == []  # only a cross-field rule can catch these
    failed = {
        rule_path
        for program, _, rule_path in programs
        if not program.evaluate({"self": celpy.json_to_cel(obj["spec"])})
    }
    assert path in failed
    with pytest.raises(SpecError) as caught:
        parse_model_deployment(obj)
    assert caught.value.field.startswith("spec" + path)


def test_cel_rules_accept_the_edge_values_knative_accepts():
    celpy, programs = _cel_programs()
    fine = [
        _edit("llm-knative", lambda s: s.update(timeoutSeconds=600)),
        _edit("llm-hpa", lambda s: s.update(timeoutSeconds=3600)),
        _edit("sklearn-knative", lambda s: s["scaling"]["knative"].update(targetBurstCapacity=-1)),
        _edit("sklearn-knative", lambda s: s["scaling"]["knative"].update(targetBurstCapacity=0.5)),
        _edit("sklearn-knative", lambda s: s["scaling"]["knative"].update(
            initialScale=0, allowZeroInitialScale=True)),
        _edit("sklearn-hpa", lambda s: s.update(kserve={"deploymentModeNames": "legacy"})),
        _edit("llm-hpa", lambda s: s.update(kserve={"deploymentModeNames": "legacy"})),
    ]  # fmt: skip
    for obj in fine:
        assert schema_errors(obj) == []
        spec = celpy.json_to_cel(obj["spec"])
        for program, rule, _ in programs:
            assert program.evaluate({"self": spec}), (rule, obj["spec"])
        parse_model_deployment(obj)


def _named(name, length):
    obj = copy.deepcopy(sample(name))
    obj["metadata"]["name"] = "m" * length
    return obj


@pytest.mark.parametrize(
    ("obj", "refused"),
    [(_named("sklearn-hpa", 48), False), (_named("xgboost-hpa", 49), True),
     (_named("sklearn-knative", 53), False), (_named("llm-knative", 54), True)],
)  # fmt: skip
def test_root_cel_rules_bound_the_name_per_mode_as_python_does(obj, refused):
    celpy = pytest.importorskip("celpy")
    env = celpy.Environment()
    whole = celpy.json_to_cel(obj)
    failed = [
        rule for rule, _ in ROOT_CEL_RULES
        if not env.program(env.compile(rule)).evaluate({"self": whole})
    ]  # fmt: skip
    assert bool(failed) == refused, failed
    if refused:
        with pytest.raises(SpecError) as caught:
            parse_model_deployment(obj)
        assert caught.value.field == "metadata.name"
    else:
        parse_model_deployment(obj)
    [version] = generate_crd()["spec"]["versions"]
    root = version["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert [r["rule"] for r in root] == [rule for rule, _ in ROOT_CEL_RULES]
    assert all("fieldPath" not in r for r in root)  # metadata.name is not in the schema


def test_kustomization_lists_every_crd_rbac_and_operator_file():
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for relative in listed:
        assert (MANIFESTS / relative).is_file(), relative
    present = {
        str(p.relative_to(MANIFESTS))
        for folder in ("crds", "rbac", "operator")
        for p in (MANIFESTS / folder).glob("*.yaml")
    }
    assert present <= listed, f"not in kustomization.yaml: {sorted(present - listed)}"
    assert not any(r.startswith(("samples/", "cluster/")) for r in listed)


def _rbac_documents():
    return [d for p in sorted((MANIFESTS / "rbac").glob("*.yaml")) for d in load_all(p)]


def test_rbac_is_least_privilege():
    for role in (d for d in _rbac_documents() if d["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            assert not {"secrets", "pods/exec"} & set(rule["resources"]), rule
    [ours] = [d for d in _rbac_documents() if d["metadata"]["name"].endswith("modeldeployments")
              and d["kind"] == "ClusterRole"]  # fmt: skip
    grants = {(g, r): set(rule["verbs"]) for rule in ours["rules"]
              for g in rule["apiGroups"] for r in rule["resources"]}  # fmt: skip
    assert grants[("serving.kserve.io", "inferenceservices")] == {
        "get", "list", "watch", "create", "patch", "delete"}  # fmt: skip
    assert "delete" not in grants[("kservebench.dev", "modeldeployments")]
    assert grants[("kservebench.dev", "modeldeployments/status")] == {"get", "patch"}
    assert grants[("", "events")] == {"create"}
    # The HPA the operator owns in mode hpa; the predictor Deployments it only reads.
    assert grants[("autoscaling", "horizontalpodautoscalers")] == {
        "get", "list", "watch", "create", "patch", "delete"}  # fmt: skip
    assert grants[("apps", "deployments")] == {"list", "watch"}


@pytest.mark.parametrize(
    ("role", "owner"), [("modeldeployments", "modeldeployments"), ("benchmarks", "benchmarks")]
)
def test_rbac_lets_kopf_adopt_block_owner_deletion(role, owner):
    # kopf.adopt() sets blockOwnerDeletion: true; the OwnerReferencesPermissionEnforcement
    # admission plugin then wants update on the owner's finalizers.
    [cluster_role] = [d for d in _rbac_documents() if d["kind"] == "ClusterRole"
                      and d["metadata"]["name"].endswith(role)]  # fmt: skip
    grants = {(g, r): set(rule["verbs"]) for rule in cluster_role["rules"]
              for g in rule["apiGroups"] for r in rule["resources"]}  # fmt: skip
    assert "update" in grants[("kservebench.dev", f"{owner}/finalizers")]


def test_the_benchmark_role_reads_pods_only_to_list_them():
    [cluster_role] = [d for d in _rbac_documents() if d["kind"] == "ClusterRole"
                      and d["metadata"]["name"].endswith("benchmarks")]  # fmt: skip
    grants = {(g, r): set(rule["verbs"]) for rule in cluster_role["rules"]
              for g in rule["apiGroups"] for r in rule["resources"]}  # fmt: skip
    assert grants[("", "pods")] == {"list"}  # termination messages; no exec, no logs
    assert grants[("networking.k8s.io", "networkpolicies")] == {"create"}


def test_the_operator_deployment_runs_unprivileged_as_our_service_account():
    [deployment] = load_all("operator/deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container["command"] == ["kservebench"] and container["args"][0] == "operator"
    assert container["resources"]["limits"] and container["resources"]["requests"]
    [account] = [d for d in _rbac_documents() if d["kind"] == "ServiceAccount"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert deployment["metadata"]["namespace"] == account["metadata"]["namespace"]
    for binding in (d for d in _rbac_documents() if d["kind"].endswith("RoleBinding")):
        assert {"kind": "ServiceAccount", "name": account["metadata"]["name"],
                "namespace": account["metadata"]["namespace"]} in binding["subjects"]  # fmt: skip


def test_the_dockerfile_installs_every_package_folder_and_runs_as_non_root():
    dockerfile = (MANIFESTS / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for folder in pyproject["tool"]["setuptools"]["package-dir"].values():
        assert f"COPY {folder} {folder}" in dockerfile, folder
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["kservebench"]' in dockerfile


def test_one_sample_per_kind_and_mode():
    for name in SAMPLE_NAMES:
        obj = sample(name)
        assert obj["kind"] == "ModelDeployment" and obj["metadata"]["name"] == name


def _samples_of(kind):
    docs = [d for p in sorted(SAMPLES.glob("*.yaml")) for d in load_all(p.relative_to(MANIFESTS))]
    return [d for d in docs if d["kind"] == kind]


def test_benchmark_samples_target_what_the_samples_deploy():
    from kservebench.models import CATALOG

    served = {}
    for obj in _samples_of("ModelDeployment"):
        spec = parse_model_deployment(obj)
        served[(spec.namespace, f"{spec.name}-predictor")] = spec
    claims = {(c["metadata"]["namespace"], c["metadata"]["name"])
              for c in _samples_of("PersistentVolumeClaim")}  # fmt: skip
    benchmarks = _samples_of("Benchmark")
    assert len(benchmarks) >= 2
    for bench in benchmarks:
        namespace, target = bench["metadata"]["namespace"], bench["spec"]["target"]
        host = target["url"].split("//", 1)[1].split("/", 1)[0]
        service, service_namespace = host.split(".")[:2]
        assert service_namespace == namespace, host  # a Service in the Benchmark's namespace
        spec = served.get((namespace, service))
        assert spec is not None, f"{bench['metadata']['name']}: no sample serves {host}"
        assert target["model"] == spec.model.name  # the name in the request path
        assert target.get("protocol", "v1") == spec.model.protocol.value
        assert target["model"] in CATALOG  # loadgen has sample rows for it
        if "resultsClaim" in bench["spec"]:
            assert (namespace, bench["spec"]["resultsClaim"]) in claims


def test_the_results_reader_mounts_the_results_claim_read_only():
    [reader] = _samples_of("Pod")
    [claim] = _samples_of("PersistentVolumeClaim")
    [volume] = reader["spec"]["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"],
                                               "readOnly": True}  # fmt: skip
    assert reader["metadata"]["namespace"] == claim["metadata"]["namespace"]
