"""The Benchmark handlers, run by a real kopf operator against KMock's Kubernetes API.

The tests speak only through the API: they create a Benchmark, read the Job the operator
made, move the Job's status as the Job controller would, and read the Benchmark's status.
"""

import asyncio
import functools
import uuid

import kmock
import pytest
import yaml
from kube_api import api
from kube_api import eventually as poll

from kservebench.operator import benchmark

NAMESPACE = "bench"
BENCHMARKS = f"{benchmark.GROUP}/{benchmark.VERSION}/{benchmark.PLURAL}"
BENCHMARKS_URL = f"/apis/{benchmark.GROUP}/{benchmark.VERSION}/namespaces/{NAMESPACE}/benchmarks"
JOBS_URL = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"

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


def get_job(kmock, name):
    async def read():
        status, obj = await api(kmock, "GET", f"{JOBS_URL}/{benchmark.child_name(name)}")
        return obj if status == 200 else None

    return read


async def test_a_benchmark_runs_loadgen_as_a_job(operator):
    await create_benchmark(operator, "b1", GOOD_SPEC)
    job = await eventually(get_job(operator, "b1"))

    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["kservebench"]
    args = container["args"]
    assert args[0] == "loadgen"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--url"] == "http://sklearn-medium.bench.svc"
    assert flags["--model"] == "sklearn-medium"
    assert flags["--protocol"] == "v1"
    assert flags["--arrival"] == "poisson"
    assert flags["--out"] == "/results/b1"
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"][0]["name"] == "b1"
    assert job["metadata"]["labels"][benchmark.BENCHMARK_LABEL] == "b1"

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
