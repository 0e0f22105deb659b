"""The local router against real HTTP servers: tiny aiohttp backends with a delay, and the
real KServe ModelServer. Every test counts what the client got and checks the router
counted the same (no request lost, none counted twice)."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from kservebench.local.router import POD_HEADER, Endpoint, Router

TIMEOUT = aiohttp.ClientTimeout(total=30)


class Backend:
    """A real HTTP replica: echoes the request; ``?status=`` and ``?delay=`` (s) steer it,
    ``/stream`` answers chunked. Counts what is in it now and the most at once."""

    def __init__(self, pod: str, delay_s: float = 0.0) -> None:
        self.pod = pod
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(float(request.query.get("delay", self.delay_s)))
            if request.path == "/stream":
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                for i in range(3):
                    await response.write(f"data: {i}\n\n".encode())
                await response.write_eof()
                return response
            body = {
                "pod": self.pod,
                "method": request.method,
                "path": request.path_qs,
                "body": (await request.read()).decode(),
                "x-test": request.headers.get("x-test"),
            }
            response = web.json_response(body, status=int(request.query.get("status", 200)))
            response.headers["x-backend"] = self.pod
            response.headers.add("Set-Cookie", "a=1")
            response.headers.add("Set-Cookie", "b=2")
            return response
        finally:
            self.in_flight -= 1
            self.served += 1

    async def start(self) -> Backend:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.pod, self.url)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[Backend]]]:
    started: list[Backend] = []

    async def start(pod: str, delay_s: float = 0.0) -> Backend:
        backend = await Backend(pod, delay_s).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


@pytest.fixture
async def routers() -> AsyncIterator[Callable[..., Awaitable[Router]]]:
    started: list[Router] = []

    async def start(*args: object, **kwargs: object) -> Router:
        router = Router(*args, **kwargs)  # type: ignore[arg-type]
        await router.start()
        started.append(router)
        return router

    yield start
    for router in started:
        await router.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


async def fetch(
    client: aiohttp.ClientSession, url: str, method: str = "GET", **kwargs: object
) -> tuple[int, CIMultiDict[str], bytes]:
    async with client.request(method, url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, response.headers.copy(), await response.read()


def dead_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_hpa_spreads_and_passes_through(backends, routers, client) -> None:
    pool = [await backends(f"m-predictor-{i}") for i in (1, 2, 3)]
    router = await routers("m", "hpa")
    router.set_endpoints([b.endpoint for b in pool])
    results = await asyncio.gather(*(fetch(client, f"{router.url}/x?i={i}") for i in range(300)))
    pods = Counter(headers[POD_HEADER] for _, headers, _ in results)
    assert set(pods) == {b.pod for b in pool}
    assert all(60 <= n <= 140 for n in pods.values()), pods  # 100 each, sd ~8
    for status, headers, body in results:
        assert status == 200
        assert json.loads(body)["pod"] == headers[POD_HEADER] == headers["x-backend"]
    assert [b.served for b in pool] == [pods[b.pod] for b in pool]

    status, headers, body = await fetch(
        client,
        f"{router.url}/v1/models/m:predict?status=400",
        "POST",
        data=b'{"instances": [[1, 2]]}',
        headers={"x-test": "kept", "Content-Type": "application/json"},
    )
    assert status == 400
    echo = json.loads(body)
    assert echo["method"] == "POST" and echo["path"] == "/v1/models/m:predict?status=400"
    assert echo["body"] == '{"instances": [[1, 2]]}' and echo["x-test"] == "kept"
    async with client.get(f"{router.url}/cookies") as response:
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    async with client.get(f"{router.url}/stream") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert await response.text() == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert router.requests_total == {200: 302, 400: 1}
    assert router.in_system == 0


async def test_hpa_without_endpoints_is_503(routers, client) -> None:
    router = await routers("sklearn-small", "hpa")
    status, headers, body = await fetch(client, f"{router.url}/v1/models/sklearn-small")
    assert status == 503
    assert b"no ready replicas for sklearn-small" in body
    assert POD_HEADER not in headers
    assert router.requests_total == {503: 1}


async def test_knative_container_concurrency_buffers(backends, routers, client) -> None:
    pool = [await backends(f"m-predictor-{i}", delay_s=0.1) for i in (1, 2)]
    router = await routers("m", "knative", container_concurrency=1)
    router.set_endpoints([b.endpoint for b in pool])
    started = time.monotonic()
    burst = asyncio.gather(*(fetch(client, f"{router.url}/p") for _ in range(8)))
    await asyncio.sleep(0.05)
    assert router.buffered == 6 and router.in_system == 8
    assert [router.per_pod[b.pod].in_flight for b in pool] == [1, 1]
    results = await burst
    assert [status for status, _, _ in results] == [200] * 8
    assert [b.max_in_flight for b in pool] == [1, 1]  # the backends' own counters
    assert [b.served for b in pool] == [4, 4]
    assert time.monotonic() - started >= 0.4  # 4 rounds of 100 ms
    assert router.buffered == 0 and router.in_system == 0
    assert router.requests_total == {200: 8}
    assert {p: s.requests_total for p, s in router.per_pod.items()} == {
        b.pod: {200: 4} for b in pool
    }


async def test_knative_buffers_at_zero_then_dispatches(backends, routers, client) -> None:
    pokes: list[float] = []
    router = await routers(
        "m", "knative", container_concurrency=0, on_cold_request=lambda: pokes.append(1.0)
    )
    burst = asyncio.gather(*(fetch(client, f"{router.url}/p") for _ in range(20)))
    await asyncio.sleep(1.0)
    assert router.buffered == 20
    assert 1 <= len(pokes) <= 2  # the first request at zero, then at most once a second
    backend = await backends("m-predictor-1")
    router.set_endpoints([backend.endpoint])
    results = await burst
    assert [status for status, _, _ in results] == [200] * 20
    assert router.buffered == 0 and router.in_system == 0
    assert router.requests_total == {200: 20} and backend.served == 20


async def test_knative_buffer_timeout_is_504(routers, client) -> None:
    router = await routers("m", "knative", timeout_s=0.5)
    started = time.monotonic()
    results = await asyncio.gather(*(fetch(client, f"{router.url}/p") for _ in range(3)))
    assert [status for status, _, _ in results] == [504] * 3
    assert 0.45 <= time.monotonic() - started < 2.0
    assert router.buffered == 0 and router.requests_total == {504: 3}


async def test_knative_removed_endpoint_finishes_new_go_elsewhere(backends, routers, client):
    old, new = await backends("m-predictor-1", 0.3), await backends("m-predictor-2")
    router = await routers("m", "knative", container_concurrency=1)
    router.set_endpoints([old.endpoint])
    in_old = asyncio.ensure_future(fetch(client, f"{router.url}/p"))
    await asyncio.sleep(0.1)
    router.set_endpoints([new.endpoint])
    results = await asyncio.gather(*(fetch(client, f"{router.url}/p") for _ in range(4)))
    assert {h[POD_HEADER] for _, h, _ in results} == {new.pod}
    status, headers, _ = await in_old
    assert status == 200 and headers[POD_HEADER] == old.pod
    assert old.served == 1 and router.requests_total == {200: 5}


async def test_knative_flapping_endpoint_keeps_its_limit(backends, routers, client) -> None:
    backend = await backends("m-predictor-1", 0.3)
    router = await routers("m", "knative", container_concurrency=1)
    router.set_endpoints([backend.endpoint])
    first = asyncio.ensure_future(fetch(client, f"{router.url}/p"))
    await asyncio.sleep(0.1)
    router.set_endpoints([])  # a readiness probe failed while a request is in it...
    router.set_endpoints([backend.endpoint])  # ...and passed again
    results = await asyncio.gather(first, *(fetch(client, f"{router.url}/p") for _ in range(2)))
    assert [status for status, _, _ in results] == [200] * 3
    assert backend.max_in_flight == 1  # the request still in it kept its slot
    assert router.per_pod[backend.pod].requests_total == {200: 3}


async def test_stop_fails_buffered_and_new_requests(routers, client) -> None:
    router = Router("m", "knative")
    url = await router.start()
    buffered = asyncio.gather(*(fetch(client, f"{url}/p") for _ in range(3)))
    await asyncio.sleep(0.2)
    await router.stop()
    assert [status for status, _, _ in await buffered] == [503] * 3
    assert router.requests_total == {503: 3} and router.in_system == 0


@pytest.mark.slow
async def test_buckets_average_concurrency_and_arrivals(backends, routers, client) -> None:
    backend = await backends("m-predictor-1", delay_s=0.05)
    router = await routers("m", "knative")
    router.set_endpoints([backend.endpoint])
    await asyncio.sleep(math.ceil(time.time()) - time.time())  # start on a whole second
    router.take_buckets(time.time())
    first = math.floor(time.time())
    sent = 0

    async def worker() -> None:  # one request in flight at all times, for ~2.5 s
        nonlocal sent
        while time.time() < first + 2.5:
            assert (await fetch(client, f"{router.url}/p"))[0] == 200
            sent += 1

    await asyncio.gather(worker(), worker())
    await asyncio.sleep(math.ceil(time.time()) - time.time() + 0.01)  # close the last second
    buckets = router.take_buckets(time.time())
    assert router.take_buckets(time.time()) == []  # taken once; partial second kept
    assert [s for s, _, _ in buckets] == [first + i for i in range(len(buckets))]
    assert sum(n for _, _, n in buckets) == sent
    busy = [(avg, n) for s, avg, n in buckets if s + 1 <= first + 2.5]
    assert len(busy) >= 2
    for avg, n in busy:
        assert 1.85 <= avg <= 2.0 + 1e-9  # requests back to back: ~2 in the system
        assert 25 <= n <= 45  # 2 workers x ~18 requests of 50 ms + overhead per second


async def test_totals_equal_client_counts(backends, routers, client) -> None:
    backend = await backends("m-predictor-1")
    dead = Endpoint("m-predictor-9", f"http://127.0.0.1:{dead_port()}")
    hpa = await routers("m", "hpa")
    knative = await routers("m", "knative", container_concurrency=1, timeout_s=0.3)
    got: Counter[int] = Counter()

    async def send(router: Router, path: str) -> None:
        status, _, _ = await fetch(client, f"{router.url}{path}")
        got[status] += 1

    await asyncio.gather(*(send(hpa, "/p") for _ in range(5)))  # zero endpoints: 503
    hpa.set_endpoints([backend.endpoint, dead])
    paths = [f"/p?status={code}" for code in (200, 400, 500) for _ in range(20)]
    await asyncio.gather(*(send(hpa, p) for p in paths))  # some reach the dead one: 502
    knative.set_endpoints([backend.endpoint])
    slow = [send(knative, "/p?delay=0.6") for _ in range(2)]  # one runs, one times out
    await asyncio.gather(*slow, *(send(knative, "/p") for _ in range(3)))
    total = Counter(hpa.requests_total) + Counter(knative.requests_total)
    assert total == got
    assert got[503] == 5 and got[502] > 0 and got[504] == 4 and got[400] > 0
    assert sum(got.values()) == 70
    assert hpa.per_pod[dead.pod].requests_total.keys() == {502}
    assert hpa.in_system == knative.in_system == 0


@pytest.mark.slow
async def test_real_model_server_through_router(shared_model_server, routers, client) -> None:
    server = await asyncio.to_thread(shared_model_server, "sklearn-small")
    router = await routers("sklearn-small", "hpa")
    router.set_endpoints([Endpoint("sklearn-small-predictor-1", server.url)])
    payload = {"instances": [[0.1] * 20, [0.5] * 20]}
    path = "/v1/models/sklearn-small:predict"
    direct = await fetch(client, server.url + path, "POST", json=payload)
    routed = await fetch(client, router.url + path, "POST", json=payload)
    assert routed[0] == direct[0] == 200
    assert json.loads(routed[2]) == json.loads(direct[2])
    assert routed[1][POD_HEADER] == "sklearn-small-predictor-1"
    assert routed[1]["content-type"] == direct[1]["content-type"]
    missing = await fetch(client, router.url + "/v1/models/nope:predict", "POST", json=payload)
    assert missing[0] == 404
