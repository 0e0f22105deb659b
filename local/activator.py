"""Which ready replica serves a request, and when: the router's balancing half.

* ``hpa``: kube-proxy in iptables mode: a uniformly random ready endpoint, no queueing in
  front of the replica (the request waits in the replica); none ready -> no backend.
* ``knative``: the activator and queue-proxy: at most ``container_concurrency`` requests in
  a replica at once (0 = no limit). Free slots are tokens in a FIFO, so replicas take turns
  and taking or returning a slot is O(1). A request that finds no slot waits in one FIFO
  buffer and gets the next slot that frees or appears; at zero replicas each arrival pokes
  the autoscaler (``on_cold_request``, at most once a second); buffered longer than
  ``timeout_s`` -> 504. Without a limit the activator's pick is the less loaded of two
  random replicas.
* ``slo``: the Service as in ``hpa`` (a random ready endpoint, no limit), but at zero ready
  replicas (scale to zero) requests wait in the buffer and poke the autoscaler, as the
  gateway's flow control holds them for the SLO loop.

Runs on the router's loop; nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MODES = ("hpa", "knative", "slo")
COLD_POKE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Endpoint:
    """A ready replica."""

    pod: str
    url: str  # http://127.0.0.1:PORT


@dataclass
class PodStats:
    """What a pod's queue-proxy would report: in flight now, requests by response code."""

    in_flight: int = 0
    requests_total: dict[int, int] = field(default_factory=dict)


class Backend:
    """One endpoint as tracked here. ``active`` is False once it left the ready set; it is
    kept while requests are in it, so a pod that comes back (a flapping readiness probe)
    gets no more slots than it has free. ``tokens``: its free-slot tokens in the FIFO."""

    __slots__ = ("active", "base", "endpoint", "in_flight", "stats", "tokens")

    def __init__(self, endpoint: Endpoint, stats: PodStats) -> None:
        self.endpoint = endpoint
        self.base = endpoint.url.rstrip("/")
        self.stats = stats
        self.in_flight = 0
        self.tokens = 0
        self.active = True


class _Waiter:
    """A buffered request: its future gets a backend, or a status code (504, 503)."""

    __slots__ = ("future", "timer")

    def __init__(self, future: asyncio.Future[Backend | int]) -> None:
        self.future = future
        self.timer: asyncio.TimerHandle | None = None


class Balancer:
    """The ready endpoints of one model, their free slots and the buffer in front."""

    def __init__(
        self,
        model: str,
        mode: str,
        container_concurrency: int = 0,
        timeout_s: float = 300.0,
        on_cold_request: Callable[[], None] = lambda: None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(MODES)} (got {mode!r})")
        if container_concurrency < 0:
            raise ValueError(f"container_concurrency: must be >= 0 (got {container_concurrency})")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s: must be > 0 (got {timeout_s})")
        self.model = model
        self.mode = mode
        self.container_concurrency = container_concurrency if mode == "knative" else 0
        self.timeout_s = timeout_s
        self.on_cold_request = on_cold_request
        self.buffered = 0  # live requests in the buffer
        self.per_pod: dict[str, PodStats] = {}
        self._backends: dict[Endpoint, Backend] = {}  # active, and removed with requests in
        self._active: list[Backend] = []
        self._tokens: deque[Backend] = deque()
        self._waiters: deque[_Waiter] = deque()
        self._last_poke = -math.inf

    @property
    def endpoints(self) -> list[Endpoint]:
        return [backend.endpoint for backend in self._active]

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Follow the ready set: new replicas get slots, removed ones get no new requests
        (those in them finish or fail on their own)."""
        wanted = dict.fromkeys(endpoints)
        for endpoint, backend in list(self._backends.items()):
            if endpoint not in wanted:
                backend.active = False  # its tokens are dropped when met
                if not backend.in_flight:
                    del self._backends[endpoint]
        for endpoint in wanted:
            backend = self._backends.get(endpoint)
            if backend is None:
                stats = self.per_pod.setdefault(endpoint.pod, PodStats())
                backend = self._backends[endpoint] = Backend(endpoint, stats)
            backend.active = True
            free = self.container_concurrency - backend.in_flight - backend.tokens
            if free > 0:
                self._tokens.extend([backend] * free)
                backend.tokens += free
        self._active = [b for b in self._backends.values() if b.active]
        if self._active:
            self._last_poke = -math.inf  # the next time at zero pokes at once
            self._dispatch()

    def take(self) -> Backend | None:
        """A backend with room now, reserved (in flight counted), or None. Nobody
        overtakes a buffered request."""
        if self.buffered:
            return None
        return self._take()

    def _take(self) -> Backend | None:
        if self.container_concurrency:
            tokens = self._tokens
            while tokens:
                backend = tokens.popleft()
                backend.tokens -= 1
                if backend.active:
                    break
            else:
                return None
        elif not self._active:
            return None
        elif self.mode != "knative" or len(self._active) == 1:
            backend = random.choice(self._active)
        else:  # Knative's activator without a limit: the less loaded of two random picks
            a, b = random.sample(self._active, 2)
            backend = a if a.in_flight <= b.in_flight else b
        backend.in_flight += 1
        backend.stats.in_flight += 1
        return backend

    def release(self, backend: Backend) -> None:
        """The request in ``backend`` is done: its slot goes to the oldest buffered one."""
        backend.in_flight -= 1
        backend.stats.in_flight -= 1
        if not backend.active:
            if not backend.in_flight and self._backends.get(backend.endpoint) is backend:
                del self._backends[backend.endpoint]
        elif self.container_concurrency:
            self._tokens.append(backend)
            backend.tokens += 1
        if self.buffered:
            self._dispatch()

    async def wait(self) -> Backend | int:
        """Buffer the request (the activator): a reserved backend, or a status to answer."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future())
        waiter.timer = loop.call_later(self.timeout_s, self._expire, waiter)
        self._waiters.append(waiter)
        self.buffered += 1
        if not self._active:
            self._poke()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if not waiter.future.done():
                self._resolve(waiter, 503)
            elif isinstance(waiter.future.result(), Backend):
                self.release(waiter.future.result())  # type: ignore[arg-type]
            raise

    def fail_buffered(self, status: int) -> None:
        """Answer every buffered request ``status`` now (the router is stopping)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                self._resolve(waiter, status)

    def _dispatch(self) -> None:
        """Hand free slots to buffered requests, oldest first."""
        waiters = self._waiters
        while waiters:
            waiter = waiters[0]
            if waiter.future.done():  # timed out or cut already
                waiters.popleft()
                continue
            backend = self._take()
            if backend is None:
                return
            waiters.popleft()
            self._resolve(waiter, backend)

    def _resolve(self, waiter: _Waiter, outcome: Backend | int) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        waiter.future.set_result(outcome)
        self.buffered -= 1

    def _expire(self, waiter: _Waiter) -> None:
        if not waiter.future.done():
            self._resolve(waiter, 504)
        waiters = self._waiters  # one timeout for all: the expired are the oldest
        while waiters and waiters[0].future.done():
            waiters.popleft()

    def _poke(self) -> None:
        now = time.monotonic()
        if now - self._last_poke >= COLD_POKE_INTERVAL_S:
            self._last_poke = now
            try:
                self.on_cold_request()
            except Exception:
                log.exception("router %s: on_cold_request failed", self.model)
