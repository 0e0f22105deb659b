"""One model's front door on the local target: the Service, or Knative's activator.

The load generator calls the router instead of a replica. The router forwards the request
unchanged (method, path, headers, body) over a pooled keep-alive connection to one ready
replica and returns the replica's status, headers and body unchanged, plus
``x-serving-pod: <pod>`` so the load generator records which pod served it.

* ``hpa``: kube-proxy in iptables mode: a uniformly random ready endpoint, no queueing in
  front of the replica; no ready endpoint -> 503 at once.
* ``knative``: the activator and queue-proxy: at most ``container_concurrency`` requests in
  a replica at once (0 = no limit); the rest wait in one FIFO buffer, dispatched as slots
  free up or replicas appear; at zero replicas every request is buffered and pokes the
  autoscaler (``on_cold_request``); buffered longer than ``timeout_s`` -> 504.
* ``slo``: the Service (spread, no limit) that holds requests while no replica is ready
  and pokes the SLO loop (scale from zero), as ``knative`` does at zero.

The KPA reads the time-weighted average of requests in the system per whole second and
the arrivals per second (``take_buckets``), as Knative's autoscaler reads the activator's
and queue-proxies' 1 s stats. Everything per request is O(1) and nothing is logged per
request. Every request is counted exactly once in ``requests_total``, router-made 502, 503
and 504 included, so the router's total equals the client's.

The router lives on one asyncio loop: construct it anywhere, but call ``start``, ``stop``
and ``set_endpoints`` on that loop (from another thread: ``loop.call_soon_threadsafe``).
Its counters are plain ints and dicts, safe to read from other threads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from kservebench.local.activator import MODES, Backend, Balancer, Endpoint, PodStats

__all__ = ["MODES", "POD_HEADER", "Endpoint", "PodStats", "Router"]

log = logging.getLogger(__name__)

POD_HEADER = "x-serving-pod"
# Hop-by-hop headers belong to one connection, never forwarded (RFC 9110 7.6.1);
# Content-Length is recomputed by aiohttp from the body it sends.
HOP_BY_HOP = ("Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate")
HOP_BY_HOP += ("Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding", "Upgrade")
HOP_BY_HOP += ("Content-Length",)
# Headers aiohttp's client would add by itself: forward only what the caller sent.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# The KServe ModelServer (uvicorn) closes idle connections after 5 s: drop ours first so a
# pooled connection is never reused just as the replica closes it (a spurious 502).
UPSTREAM_KEEPALIVE_S = 4.0
MAX_BODY_BYTES = 256 * 1024 * 1024
MAX_BUCKETS = 3600  # kept for a reader that never calls take_buckets (hpa mode): 1 hour


class Router:
    """An HTTP/1.1 reverse proxy on ``host:port`` in front of one model's ready replicas."""

    def __init__(
        self,
        model: str,
        mode: str,
        container_concurrency: int = 0,
        timeout_s: float = 300.0,
        on_cold_request: Callable[[], None] = lambda: None,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_timeout_s: float | None = 600.0,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.balancer = Balancer(model, mode, container_concurrency, timeout_s, on_cold_request)
        self.model = model
        self.mode = mode
        self.host = host
        self.port = port
        self.upstream_timeout_s = upstream_timeout_s
        self.stop_grace_s = stop_grace_s
        self.url: str | None = None
        # What the autoscaler and the exporter read.
        self.in_system = 0
        self.per_pod: dict[str, PodStats] = self.balancer.per_pod
        self.requests_total: dict[int, int] = {}
        self._stopping = False
        self._drained: asyncio.Event | None = None
        # 1 s buckets: integral of in_system over the current second, arrivals in it.
        now = time.time()
        self._bucket_start = float(math.floor(now))
        self._last_t = now
        self._area = 0.0
        self._arrivals = 0
        self._done: deque[tuple[float, float, int]] = deque(maxlen=MAX_BUCKETS)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.ServerRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> str:
        """Listen on ``host:port`` (0: a free port); return the router's URL."""
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE_S, ttl_dns_cache=None
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one client's cookies to another
            timeout=aiohttp.ClientTimeout(total=self.upstream_timeout_s, sock_connect=5.0),
        )
        server = web.Server(
            self._handle,
            request_factory=self._make_request,
            access_log=None,
            auto_decompress=False,  # forward a compressed body as it came
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)  # drained by then
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, backlog=1024).start()
        self.url = f"http://{self.host}:{self.port}"
        return self.url

    async def stop(self) -> None:
        """Answer buffered and new requests 503, let those in replicas finish (up to
        ``stop_grace_s``; the rest are cut and counted 503), close everything."""
        self._stopping = True
        self.balancer.fail_buffered(503)
        if self.in_system:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), self.stop_grace_s)
            except TimeoutError:
                log.warning(
                    "router %s: %d requests still in flight at stop", self.model, self.in_system
                )
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _make_request(self, *parts: Any) -> web.BaseRequest:
        """aiohttp's low-level request, with a body limit large enough for v2 tensors."""
        loop = asyncio.get_running_loop()
        return web.BaseRequest(*parts, loop, client_max_size=MAX_BODY_BYTES)

    # -- endpoints ---------------------------------------------------------------------

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Follow the ready set (call on the router's loop): new replicas get requests,
        removed ones none (those in them finish or fail on their own)."""
        self.balancer.set_endpoints(endpoints)

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.balancer.endpoints

    @property
    def buffered(self) -> int:
        """Requests waiting in the router (the activator) for a slot or a replica."""
        return self.balancer.buffered

    # -- the 1 s buckets ---------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Integrate in_system up to ``now``, closing the seconds passed on the way."""
        if now < self._last_t:  # the wall clock stepped back: hold still
            now = self._last_t
        if now < self._bucket_start + 1.0:
            self._area += self.in_system * (now - self._last_t)
            self._last_t = now
            return
        level = self.in_system
        end = self._bucket_start + 1.0
        self._done.append(
            (self._bucket_start, self._area + level * (end - self._last_t), self._arrivals)
        )
        start = end
        if now - start > MAX_BUCKETS:  # a long silence: keep only what the deque holds
            start = float(math.floor(now)) - MAX_BUCKETS
        while now >= start + 1.0:  # whole seconds with no event: level all along
            self._done.append((start, float(level), 0))
            start += 1.0
        self._bucket_start = start
        self._area = level * (now - start)
        self._arrivals = 0
        self._last_t = now

    def take_buckets(self, now_s: float | None = None) -> list[tuple[float, float, int]]:
        """The whole seconds completed since the last call, oldest first, as
        ``(second_start_epoch_s, average in_system, arrivals)``; the current partial
        second stays for the next call."""
        self._advance(time.time() if now_s is None else now_s)
        out = list(self._done)
        self._done.clear()
        return out

    # -- requests ----------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self._advance(time.time())
        self._arrivals += 1
        self.in_system += 1
        status = 503  # what is counted if the request is cut (stop, cancellation)
        backend: Backend | None = None
        balancer = self.balancer
        try:
            if self._stopping:
                return _text(503, f"router for {self.model} is stopping")
            backend = balancer.take()
            if backend is None:
                if self.mode == "hpa":
                    return _text(503, f"no ready replicas for {self.model}")
                outcome = await balancer.wait()
                if isinstance(outcome, int):
                    status = outcome
                    why = "timed out waiting for a replica" if outcome == 504 else "stopping"
                    return _text(outcome, f"{self.model}: {why}")
                backend = outcome
            try:
                response = await self._forward(request, backend)
            except Exception as error:  # a bug here must still answer, and be counted
                log.exception("router %s: proxying to %s failed", self.model, backend.endpoint)
                response = _text(502, f"{self.model}: proxy error {error!r}")
            status = response.status
            return response
        finally:
            if backend is not None:
                codes = backend.stats.requests_total
                codes[status] = codes.get(status, 0) + 1
                balancer.release(backend)
            self.requests_total[status] = self.requests_total.get(status, 0) + 1
            self._advance(time.time())
            self.in_system -= 1
            if self._drained is not None and not self.in_system:
                self._drained.set()

    async def _forward(self, request: web.BaseRequest, backend: Backend) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = request.headers.copy()
        for name in HOP_BY_HOP:
            headers.popall(name, None)
        pod = backend.endpoint.pod
        try:
            async with self._session.request(
                request.method,
                backend.base + request.raw_path,
                data=body or None,
                headers=headers,
                allow_redirects=False,
            ) as upstream:
                out = upstream.headers.copy()
                for name in HOP_BY_HOP:
                    out.popall(name, None)
                out[POD_HEADER] = pod
                if "chunked" not in upstream.headers.get("Transfer-Encoding", "").lower():
                    return web.Response(
                        status=upstream.status,
                        reason=upstream.reason,
                        headers=out,
                        body=await upstream.read(),
                    )
                # Chunked (an LLM's event stream): pass each piece on as it comes.
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=out
                )
                await response.prepare(request)
                try:
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                except (aiohttp.ClientError, OSError, TimeoutError):
                    if request.transport is not None:  # cut: the client must see it
                        request.transport.close()
                    return response
                await response.write_eof()
                return response
        except TimeoutError:
            return _text(504, f"{self.model}: replica {pod} did not answer in time", pod)
        except (aiohttp.ClientError, OSError) as error:
            return _text(502, f"{self.model}: replica {pod} failed: {error!r}", pod)


def _text(status: int, text: str, pod: str | None = None) -> web.Response:
    headers = {POD_HEADER: pod} if pod else None
    return web.Response(status=status, text=text + "\n", headers=headers)
