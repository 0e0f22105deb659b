"""The Benchmark handlers, run by a real kopf operator against KMock's Kubernetes API.

The tests speak only through the API: they create a Benchmark, read the Job the operator
made, move the Job's status as the Job controller would (and its pod's, as the kubelet
would), and read the Benchmark's status. The Job's wrapper (``benchmark_run``) runs for
real as a process.
"""

import asyncio
import functools
import json
import subprocess
import sys
import uuid

import kmock
import pytest
import yaml
from kube_api import api
from kube_api import eventually as poll

from kservebench.operator import benchmark, benchmark_run

NAMESPACE = "bench"
BENCHMARKS = f"{benchmark.GROUP}/{benchmark.VERSION}/{benchmark.PLURAL}"
BENCHMARKS_URL = f"/apis/{benchmark.GROUP}/{benchmark.VERSION}/namespaces/{NAMESPACE}/benchmarks"
JOBS_URL = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
PODS_URL = f"/api/v1/namespaces/{NAMESPACE}/pods"

GOOD_SPEC = {
    "target": {"url": "http://sklearn-medium.bench.svc", "model": "sklearn-medium"},
    "pattern": {"type": "constant", "rate": 20, "duration": "30s"},
    "arrival": "poisson",
}

# The Benchmark handlers answer quickly: 15 s is plenty.
eventually = functools.partial(poll, timeout_s=15.0)


@pytest.fixture
async def operator(kmock, kopf_operator):
    kmock.resources.load_bundled()
    kmock.resources[BENCHMARKS] = kmock.ResourceInfo(
        kind="Benchmark", singular="benchmark", namespaced=True,
        verbs={"list", "watch", "get", "create", "patch", "delete"}, subresources={"status"},
    )  # fmt: skip
    await kopf_operator(benchmark.register)
    return kmock


async def create_benchmark(kmock, name, spec):
    body = {
        "apiVersion": f"{benchmark.GROUP}/{benchmark.VERSION}",
        "kind": "Benchmark",
        # KMock assigns neither: kopf needs both (owner references, patch preconditions).
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": str(uuid.uuid4()),
                     "resourceVersion": "1"},
        "spec": spec,
    }  # fmt: skip
    status, _ = await api(kmock, "POST", BENCHMARKS_URL, body)
    assert status in (200, 201)


def get_status(kmock, name):
    async def read():
        status, obj = await api(kmock, "GET", f"{BENCHMARKS_URL}/{name}")
        return obj.get("status") if status == 200 else None

    return read


def get_object(kmock, url):
    async def read():
        status, obj = await api(kmock, "GET", url)
        return obj if status == 200 else None

    return read


def get_job(kmock, name):
    return get_object(kmock, f"{JOBS_URL}/{benchmark.child_name(name)}")


async def test_a_benchmark_runs_loadgen_as_a_job(operator):
    await create_benchmark(operator, "b1", GOOD_SPEC)
    job = await eventually(get_job(operator, "b1"))

    container = job["spec"]["template"]["spec"]["containers"][0]
    # loadgen, wrapped so its key figures become the termination message.
    assert container["command"] == ["python"]
    wrapper, command = container["args"][: container["args"].index("--")], container["args"]
    assert wrapper[:2] == ["-m", "kservebench.operator.benchmark_run"]
    assert container["terminationMessagePath"] in wrapper
    args = command[command.index("--") + 1 :]
    assert args[:2] == ["kservebench", "loadgen"]
    args = args[1:]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--url"] == "http://sklearn-medium.bench.svc"
    assert flags["--model"] == "sklearn-medium"
    assert flags["--protocol"] == "v1"
    assert flags["--arrival"] == "poisson"
    assert flags["--out"] == "/results/b1"
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"][0]["name"] == "b1"
    assert job["metadata"]["labels"][benchmark.BENCHMARK_LABEL] == "b1"
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]
    # Nothing may connect to the load pod; it is closed by a NetworkPolicy of its own.
    policy = await eventually(get_object(
        operator, f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies/"
        f"{benchmark.child_name('b1')}"))  # fmt: skip
    assert policy["spec"]["podSelector"] == {"matchLabels": {benchmark.BENCHMARK_LABEL: "b1"}}
    assert policy["spec"]["policyTypes"] == ["Ingress"] and policy["spec"]["ingress"] == []
    assert policy["metadata"]["ownerReferences"][0]["name"] == "b1"

    # The pattern reaches the container through the ConfigMap mounted at --pattern-file.
    status, configmap = await api(
        operator, "GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{benchmark.child_name('b1')}"
    )
    assert status == 200
    mounted = yaml.safe_load(configmap["data"][benchmark.PATTERN_FILE])
    assert mounted == GOOD_SPEC["pattern"]
    assert flags["--pattern-file"].endswith(benchmark.PATTERN_FILE)

    # Every phase, as the Job controller moves the Job along.
    assert (await eventually(get_status(operator, "b1")))["phase"] == "Pending"
    job_url = f"{JOBS_URL}/{benchmark.child_name('b1')}"
    start = "2026-01-01T10:00:00Z"
    await api(operator, "PATCH", job_url, {"status": {"active": 1, "startTime": start}})

    async def phase_is(phase):
        status = await get_status(operator, "b1")()
        return status if status and status.get("phase") == phase else None

    running = await eventually(lambda: phase_is("Running"))
    assert running["startTime"] == start
    end = "2026-01-01T10:00:45Z"
    done = {
        "active": 0,
        "succeeded": 1,
        "completionTime": end,
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": end}],
    }
    await api(operator, "PATCH", job_url, {"status": done})
    succeeded = await eventually(lambda: phase_is("Succeeded"))
    assert (succeeded["startTime"], succeeded["completionTime"]) == (start, end)


async def test_a_failed_job_fails_the_benchmark(operator):
    await create_benchmark(operator, "b2", GOOD_SPEC)
    await eventually(get_job(operator, "b2"))
    failed = {
        "failed": 1,
        "startTime": "2026-01-01T10:00:00Z",
        "conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded",
                        "lastTransitionTime": "2026-01-01T10:00:05Z"}],
    }  # fmt: skip
    await api(operator, "PATCH", f"{JOBS_URL}/{benchmark.child_name('b2')}", {"status": failed})

    async def failed_status():
        status = await get_status(operator, "b2")()
        return status if status and status.get("phase") == "Failed" else None

    status = await eventually(failed_status)
    assert status["message"] == "BackoffLimitExceeded"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({**GOOD_SPEC, "target": {"url": "not a url", "model": "m"}}, "spec.target.url"),
        ({**GOOD_SPEC, "pattern": {"type": "constant", "rate": -1, "duration": "5s"}},
         "spec.pattern.rate"),
        ({**GOOD_SPEC, "arrival": "bursty"}, "spec.arrival"),
    ],
)  # fmt: skip
async def test_a_bad_spec_is_refused_with_a_message(operator, spec, field):
    await create_benchmark(operator, "bad", spec)

    async def failed():
        status = await get_status(operator, "bad")()
        return status if status and status.get("phase") == "Failed" else None

    status = await eventually(failed)
    assert field in status["message"]
    await asyncio.sleep(0.5)  # give a wrongly accepted spec the time to create its Job
    assert await get_job(operator, "bad")() is None
    assert len(operator[kmock.method.POST, kmock.resource("batch/v1/jobs")]) == 0


def terminated_pod(benchmark_name, message, finished="2026-01-01T10:00:44Z"):
    """The Job's pod once the load container has ended, as the kubelet reports it."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{benchmark.child_name(benchmark_name)}-x7k2p",
                     "namespace": NAMESPACE, "uid": str(uuid.uuid4()), "resourceVersion": "1",
                     "labels": {benchmark.BENCHMARK_LABEL: benchmark_name}},
        "spec": {"containers": [{"name": benchmark.CONTAINER, "image": "i"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [{
            "name": benchmark.CONTAINER, "ready": False, "restartCount": 0, "image": "i",
            "imageID": "", "state": {"terminated": {
                "exitCode": 0, "reason": "Completed", "message": message,
                "finishedAt": finished}}}]},
    }  # fmt: skip


FIGURES = {
    "requests": 600, "ok": 597, "errors": 3, "unfinished": 0, "achievedRps": 19.9,
    "durationSeconds": 30.0, "latencyMs": {"p50": 4.1, "p95": 12.5, "p99": 30.2}, "exitCode": 0,
}  # fmt: skip


async def test_a_finished_benchmark_keeps_its_key_figures_in_its_status(operator):
    await create_benchmark(operator, "b3", {**GOOD_SPEC, "resultsClaim": "results"})
    job = await eventually(get_job(operator, "b3"))
    [volume] = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "results"]
    assert volume["persistentVolumeClaim"] == {"claimName": "results"}
    pending = await eventually(get_status(operator, "b3"))
    assert pending["resultsLocation"] == "pvc://results/b3"

    # An older attempt and someone else's pod are not this run's figures.
    older = terminated_pod("b3", json.dumps({"exitCode": 1}), finished="2026-01-01T09:00:00Z")
    other = terminated_pod("other", json.dumps(FIGURES))
    other["metadata"].update(name="other", labels={"x": "y"})
    latest = terminated_pod("b3", benchmark_run.message_text(FIGURES))
    latest["metadata"]["name"] += "-2"
    for pod in (older, other, latest):
        await api(operator, "POST", PODS_URL, pod)
    end = "2026-01-01T10:00:45Z"
    done = {
        "succeeded": 1,
        "startTime": "2026-01-01T10:00:00Z",
        "completionTime": end,
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": end}],
    }
    await api(operator, "PATCH", f"{JOBS_URL}/{benchmark.child_name('b3')}", {"status": done})

    async def with_results():
        status = await get_status(operator, "b3")()
        return status if status and status.get("results") else None

    status = await eventually(with_results)
    assert status["phase"] == "Succeeded"
    assert status["results"] == FIGURES


def test_the_job_wrapper_turns_loadgen_s_summary_into_a_termination_message(tmp_path):
    """benchmark_run as the Job runs it, around a command that writes a summary.json
    the way loadgen does (loadgen's own summarize())."""
    out = tmp_path / "b"
    writer = (
        "import json, sys, pathlib, pandas as pd\n"
        "from kservebench.loadgen.summary import summarize\n"
        "rows = [dict(intended_s=i/10, sent_s=i/10, latency_ms=5.0 + i, send_lag_ms=0.1,"
        " ok=i != 3, unfinished=False, status=200 if i != 3 else 503,"
        " error='' if i != 3 else 'HTTP 503', phase='main') for i in range(20)]\n"
        "out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True)\n"
        "(out / 'summary.json').write_text(json.dumps(summarize(pd.DataFrame(rows), 2.0)))\n"
        "sys.exit(3)\n"
    )
    message = tmp_path / "termination-log"
    done = subprocess.run(
        [sys.executable, "-m", "kservebench.operator.benchmark_run",
         "--summary", str(out / "summary.json"), "--message", str(message),
         "--", sys.executable, "-c", writer, str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr  # the command's own exit status
    text = message.read_text()
    assert len(text.encode()) <= benchmark_run.MESSAGE_LIMIT
    figures = benchmark_run.read_message(text)
    assert figures["exitCode"] == 3
    assert (figures["requests"], figures["ok"], figures["errors"]) == (20, 19, 1)
    assert figures["achievedRps"] == 10.0
    assert set(figures["latencyMs"]) == {"p50", "p95", "p99"} and figures["latencyMs"]["p95"] > 5


def test_the_job_wrapper_reports_a_missing_summary(tmp_path):
    message = tmp_path / "termination-log"
    code = benchmark_run.run(
        [sys.executable, "-c", "raise SystemExit(2)"], tmp_path / "none.json", message
    )
    figures = benchmark_run.read_message(message.read_text())
    assert code == 2 and figures["exitCode"] == 2 and "no summary" in figures["error"]
    assert benchmark_run.read_message("Traceback (most recent call last): ...") is None
