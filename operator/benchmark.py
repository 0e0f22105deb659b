"""The Benchmark resource: a load run against a served model, executed as a Kubernetes Job.

A Benchmark names a target (URL, model, protocol) and one load pattern. The operator
turns it into a ConfigMap holding the pattern, a Job running ``kservebench loadgen``
(Locust, open loop) against the target and a NetworkPolicy closing the load pod to
inbound traffic, then follows the Job and mirrors its progress in
the Benchmark's status: ``Pending`` -> ``Running`` -> ``Succeeded`` | ``Failed``, with the
start and completion times. A bad spec is refused: status ``Failed`` with a message that
names the field, and no Job.

Results outlive the Job two ways. The key figures (requests, errors, latency
percentiles, achieved rate) travel in the load container's termination message
(``benchmark_run``), which the operator reads from the finished pod's status into the
Benchmark's ``status.results``. The full results folder goes to ``/results/<name>`` on
the PVC ``spec.resultsClaim`` when one is named (``manifests/samples/results-pvc.yaml``
creates one, ``results-reader.yaml`` mounts it for ``kubectl cp``); without one it is an
emptyDir, gone with the pod.

Decisions are pure functions (``parse_benchmark``, ``build_pattern_configmap``,
``build_network_policy``, ``build_job``, ``status_from_job``, ``results_from_pods``); the
kopf handlers only call them and talk to the API with the synchronous ``kubernetes``
client (kopf runs sync handlers in threads). The client's configuration is the
operator's: ``kservebench operator`` loads the kubeconfig or in-cluster configuration
before kopf starts, and registers these handlers with ``register(registry)``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes
import yaml

from kservebench.errors import SpecError
from kservebench.loadgen.patterns import parse_pattern
from kservebench.operator.benchmark_run import read_message

GROUP, VERSION, PLURAL = "kservebench.dev", "v1alpha1", "benchmarks"
BENCHMARK_LABEL = f"{GROUP}/benchmark"  # on the Job and ConfigMap: which Benchmark owns them
PATTERN_FILE = "pattern.yaml"
PATTERN_DIR = "/etc/kservebench"
RESULTS_DIR = "/results"
CONTAINER = "loadgen"
# Where the load container writes its key figures (Kubernetes' default path, set
# explicitly because the operator depends on it).
MESSAGE_PATH = "/dev/termination-log"
RUN_AS = 65532  # the image's non-root user (manifests/Dockerfile)
# The image that holds the kservebench command; a Benchmark may name its own.
DEFAULT_IMAGE = os.environ.get("KSERVEBENCH_IMAGE", "ghcr.io/kservebench/kservebench:0.1.0")
PROTOCOLS = ("v1", "v2")
# Open loop (poisson, constant) measures cold starts honestly; closed loop is for
# comparing with tools whose users wait for each response.
ARRIVALS = ("poisson", "constant", "closed")
# Time a Job gets beyond its pattern (image pull, start, drain) before Kubernetes stops it.
JOB_SLACK_S = 300
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")


@dataclass(frozen=True)
class BenchmarkSpec:
    url: str
    model: str
    protocol: str
    batch: int
    pattern: dict[str, Any]
    duration_s: float
    arrival: str
    image: str
    results_claim: str | None


def parse_benchmark(spec: Any) -> BenchmarkSpec:
    """Validate a Benchmark's ``spec``; SpecError names the field (``spec.target.url``)."""
    if not isinstance(spec, dict):
        raise SpecError("spec", spec, "must be a mapping")
    target = spec.get("target")
    if not isinstance(target, dict):
        raise SpecError("spec.target", target, "must be a mapping with url and model")
    url = target.get("url")
    if not isinstance(url, str) or not _URL.match(url):
        raise SpecError("spec.target.url", url, "must be an http(s) URL")
    model = target.get("model")
    if not isinstance(model, str) or not model:
        raise SpecError("spec.target.model", model, "must name the served model")
    protocol = target.get("protocol", "v1")
    if protocol not in PROTOCOLS:
        raise SpecError("spec.target.protocol", protocol, f"must be one of {PROTOCOLS}")
    batch = target.get("batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SpecError("spec.target.batch", batch, "must be an integer >= 1")
    pattern = spec.get("pattern")
    parsed = parse_pattern(pattern, "spec.pattern")  # the load generator's own checks
    if pattern.get("type") == "trace" and "file" in pattern:
        # The Job sees only the ConfigMap: a trace must travel inline.
        raise SpecError("spec.pattern.file", pattern["file"], "use inline rates or offsets")
    arrival = spec.get("arrival", "poisson")
    if arrival not in ARRIVALS:
        raise SpecError("spec.arrival", arrival, f"must be one of {ARRIVALS}")
    image = spec.get("image", DEFAULT_IMAGE)
    if not isinstance(image, str) or not image:
        raise SpecError("spec.image", image, "must be an image reference")
    claim = spec.get("resultsClaim")
    if claim is not None and (not isinstance(claim, str) or not claim):
        raise SpecError("spec.resultsClaim", claim, "must name a PersistentVolumeClaim")
    return BenchmarkSpec(
        url=url,
        model=model,
        protocol=protocol,
        batch=batch,
        pattern=dict(pattern),
        duration_s=parsed.duration_s,
        arrival=arrival,
        image=image,
        results_claim=claim,
    )


def child_name(benchmark: str) -> str:
    # Job names become pod label values: at most 63 characters.
    return f"kservebench-{benchmark}"[:63].rstrip("-")


def build_pattern_configmap(benchmark: str, spec: BenchmarkSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": child_name(benchmark), "labels": {BENCHMARK_LABEL: benchmark}},
        "data": {PATTERN_FILE: yaml.safe_dump(spec.pattern, sort_keys=False)},
    }


def build_network_policy(benchmark: str) -> dict[str, Any]:
    """Nothing may connect to the load pod (it listens on nothing); it may reach any
    target the Benchmark names, so egress stays open."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": child_name(benchmark), "labels": {BENCHMARK_LABEL: benchmark}},
        "spec": {
            "podSelector": {"matchLabels": {BENCHMARK_LABEL: benchmark}},
            "policyTypes": ["Ingress"],
            "ingress": [],
        },
    }


def loadgen_args(benchmark: str, spec: BenchmarkSpec) -> list[str]:
    """The ``kservebench`` arguments the Job runs: the same CLI as on a laptop."""
    return [
        "loadgen",
        "--url",
        spec.url,
        "--model",
        spec.model,
        "--protocol",
        spec.protocol,
        "--batch",
        str(spec.batch),
        "--pattern-file",
        f"{PATTERN_DIR}/{PATTERN_FILE}",
        "--arrival",
        spec.arrival,
        "--out",
        f"{RESULTS_DIR}/{benchmark}",
    ]


def job_command(benchmark: str, spec: BenchmarkSpec) -> list[str]:
    """loadgen, wrapped so its key figures become the termination message."""
    summary = f"{RESULTS_DIR}/{benchmark}/summary.json"
    return [
        "python", "-m", "kservebench.operator.benchmark_run",
        "--summary", summary, "--message", MESSAGE_PATH,
        "--", "kservebench", *loadgen_args(benchmark, spec),
    ]  # fmt: skip


def results_location(benchmark: str, spec: BenchmarkSpec) -> str:
    if spec.results_claim:
        return f"pvc://{spec.results_claim}/{benchmark}"
    return "emptyDir (gone with the pod; name spec.resultsClaim to keep the folder)"


def build_job(benchmark: str, spec: BenchmarkSpec) -> dict[str, Any]:
    name = child_name(benchmark)
    results = (
        {"persistentVolumeClaim": {"claimName": spec.results_claim}}
        if spec.results_claim
        else {"emptyDir": {}}
    )
    labels = {BENCHMARK_LABEL: benchmark}
    # Restricted Pod Security: non-root, no privileges, read-only root (Locust and
    # matplotlib write under HOME=/tmp, an emptyDir).
    container_security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            # A failed load run is a result, not something to retry silently.
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(spec.duration_s) + JOB_SLACK_S,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,  # it only sends traffic
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": spec.image,
                            # A locally built image loaded into kind has no registry copy.
                            "imagePullPolicy": "IfNotPresent",
                            "command": job_command(benchmark, spec)[:1],
                            "args": job_command(benchmark, spec)[1:],
                            "env": [{"name": "HOME", "value": "/tmp"}],
                            "terminationMessagePath": MESSAGE_PATH,
                            "terminationMessagePolicy": "File",
                            "resources": {
                                "requests": {"cpu": "1", "memory": "512Mi"},
                                "limits": {"cpu": "2", "memory": "2Gi"},
                            },
                            "securityContext": container_security,
                            "volumeMounts": [
                                {"name": "pattern", "mountPath": PATTERN_DIR, "readOnly": True},
                                {"name": "results", "mountPath": RESULTS_DIR},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "pattern", "configMap": {"name": name}},
                        {"name": "results", **results},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            },
        },
    }


def status_from_job(job_status: dict[str, Any] | None) -> dict[str, Any]:
    """The Benchmark status a Job's status implies (empty while the Job has not started)."""
    job_status = job_status or {}
    conditions = {
        c.get("type"): c for c in job_status.get("conditions") or [] if c.get("status") == "True"
    }
    status: dict[str, Any] = {}
    if job_status.get("startTime"):
        status["startTime"] = job_status["startTime"]
    if "Complete" in conditions or job_status.get("succeeded"):
        done = conditions.get("Complete", {})
        status["phase"] = "Succeeded"
        status["completionTime"] = job_status.get("completionTime") or done.get(
            "lastTransitionTime"
        )
    elif "Failed" in conditions or job_status.get("failed"):
        failed = conditions.get("Failed", {})
        status["phase"] = "Failed"
        status["completionTime"] = failed.get("lastTransitionTime")
        status["message"] = failed.get("message") or "the load generator failed"
    elif job_status.get("active") or job_status.get("startTime"):
        status["phase"] = "Running"
    return {key: value for key, value in status.items() if value is not None}


def results_from_pods(pods: list[dict[str, Any]], benchmark: str) -> dict[str, Any] | None:
    """The key figures from the newest finished load container of ``benchmark``'s pods."""
    found: list[tuple[str, dict[str, Any]]] = []
    for pod in pods:
        if ((pod.get("metadata") or {}).get("labels") or {}).get(BENCHMARK_LABEL) != benchmark:
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            figures = read_message(terminated.get("message"))
            if container.get("name") == CONTAINER and figures is not None:
                found.append((str(terminated.get("finishedAt") or ""), figures))
    return max(found, key=lambda item: item[0])[1] if found else None


# --- kopf handlers: thin shells around the functions above ---------------------------------


def _create(create: Any, namespace: str, body: dict[str, Any], logger: Any) -> None:
    try:
        create(namespace=namespace, body=body)
    except kubernetes.client.ApiException as err:
        if err.status != 409:  # already there: a replayed event, nothing to do
            raise
        logger.info(f"{body['kind']} {body['metadata']['name']} already exists")


def start_benchmark(
    spec: Any, name: str, namespace: str, body: Any, patch: Any, logger: Any, **_: Any
) -> None:
    try:
        bench = parse_benchmark(dict(spec))
    except SpecError as err:
        patch.status["phase"] = "Failed"
        patch.status["message"] = f"invalid spec: {err}"
        raise kopf.PermanentError(str(err)) from err
    configmap = build_pattern_configmap(name, bench)
    policy = build_network_policy(name)
    job = build_job(name, bench)
    kopf.adopt([configmap, policy, job], owner=body)
    api = kubernetes.client.ApiClient()
    _create(
        kubernetes.client.CoreV1Api(api).create_namespaced_config_map, namespace, configmap, logger
    )
    _create(
        kubernetes.client.NetworkingV1Api(api).create_namespaced_network_policy,
        namespace,
        policy,
        logger,
    )
    _create(kubernetes.client.BatchV1Api(api).create_namespaced_job, namespace, job, logger)
    logger.info(
        f"Job {job['metadata']['name']} created: kservebench {' '.join(loadgen_args(name, bench))}"
    )
    patch.status["phase"] = "Pending"
    patch.status["job"] = job["metadata"]["name"]
    patch.status["resultsLocation"] = results_location(name, bench)


def follow_job(body: Any, namespace: str, logger: Any, **_: Any) -> None:
    status = status_from_job(body.get("status"))
    if not status:
        return
    benchmark = body["metadata"]["labels"][BENCHMARK_LABEL]
    api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient())
    if status.get("phase") in ("Succeeded", "Failed"):
        # The selector narrows the list on a real API server; results_from_pods checks
        # the label again (KMock ignores selectors).
        # Raw JSON (camelCase, as results_from_pods reads it), not the client's models.
        response = kubernetes.client.CoreV1Api(api.api_client).list_namespaced_pod(
            namespace, label_selector=f"{BENCHMARK_LABEL}={benchmark}", _preload_content=False
        )
        pods = json.loads(response.data).get("items") or []
        results = results_from_pods(pods, benchmark)
        if results is not None:
            status["results"] = results
    try:
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, benchmark, {"status": status}
        )
    except kubernetes.client.ApiException as err:
        if err.status != 404:  # the Benchmark was deleted; its Job goes with it
            raise
    logger.info(f"Benchmark {benchmark}: {status.get('phase')} {status.get('results') or ''}")


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the Benchmark handlers on ``registry`` (``kservebench operator`` does)."""
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)(start_benchmark)
    kopf.on.event("batch", "v1", "jobs", labels={BENCHMARK_LABEL: kopf.PRESENT}, registry=registry)(
        follow_job
    )
