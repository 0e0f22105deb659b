"""The replicas of one model as real processes: a Kubernetes ReplicaSet plus its kubelet.

``scale_to(n)`` creates replicas (a cgroup with the pod's limits, a ``kservebench serve``
process moved into it right after spawn) or deletes the ones Kubernetes would delete first
(not ready before ready, then the newest): SIGTERM, a grace period, SIGKILL, the cgroup
removed. A supervision thread plays the kubelet: readiness probes, a crashed replica is
restarted in the same pod (name, port, cgroup) after CrashLoopBackOff's doubling delay,
and every change of the ready set goes to ``on_change`` so the router follows it.

The decisions (when to create, delete, probe, kill, restart) are here; one pod's record and
its transitions are in ``kservebench.local.replica``.

Timestamps are epoch seconds (``time.time()``), as kube-state-metrics exports them.
"""

from __future__ import annotations

import itertools
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from kservebench.errors import SpecError
from kservebench.local.cgroups import CgroupSupport, check_cpu_limit, check_memory_limit
from kservebench.local.replica import STATES, Replica, kserve_argv, reap
from kservebench.procs import free_port

__all__ = [  # Replica, STATES and kserve_argv live in replica.py; importable from here too
    "READY_FAILURE_THRESHOLD", "READY_PROBE_PERIOD_S", "STATES", "Replica", "ReplicaSet",
    "kserve_argv",
]  # fmt: skip

log = logging.getLogger(__name__)
# kubelet's readinessProbe defaults (periodSeconds 10, timeoutSeconds 1, failureThreshold
# 3): a saturated, throttled replica answers its probe late, and a stricter probe would take
# it out of the Service (and out of the HPA's metrics) exactly when it is busiest.
READY_PROBE_PERIOD_S = 10.0  # a ready replica is re-probed this often
READY_FAILURE_THRESHOLD = 3  # consecutive failed probes before a ready replica is unready
_set_ids = itertools.count(1)  # keeps cgroup names of two sets of one model apart


def _noop(*_: Any) -> None:
    return None


def _probe(url: str, timeout_s: float) -> bool:
    try:
        return requests.get(url, timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


class ReplicaSet:
    """Replicas of ``model`` served from ``model_dir``; synchronous and thread-safe."""

    def __init__(
        self,
        model: str,
        model_dir: Path,
        cgroups: CgroupSupport,
        cpu_limit_cores: float | None,
        memory_limit_bytes: int | None,
        log_dir: Path,
        on_change: Callable[[list[Replica]], None] = _noop,
        on_event: Callable[[dict[str, Any]], None] = _noop,
        restart_backoff_s: float = 10.0,
        restart_backoff_max_s: float = 300.0,
        poll_s: float = 0.2,
        serve_argv: Callable[[Path, str, int], list[str]] | None = None,
        ready_timeout_s: float = 120.0,
        grace_s: float = 30.0,
        backoff_reset_s: float = 600.0,
        probe_timeout_s: float = 1.0,
        ready_path: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if not model or "/" in model:
            raise SpecError("model", model, "must be a non-empty name without '/'")
        if cpu_limit_cores is not None:
            check_cpu_limit(cpu_limit_cores, "resources.limits.cpu")
        if memory_limit_bytes is not None:
            check_memory_limit(memory_limit_bytes, "resources.limits.memory")
        for name, value in (("restart_backoff_s", restart_backoff_s), ("poll_s", poll_s)):
            if not value > 0:
                raise SpecError(name, value, "must be above 0 seconds")
        if restart_backoff_max_s < restart_backoff_s:
            raise SpecError("restart_backoff_max_s", restart_backoff_max_s, "below the backoff")
        self.model, self.model_dir, self.cgroups = model, Path(model_dir), cgroups
        self.cpu_limit_cores, self.memory_limit_bytes = cpu_limit_cores, memory_limit_bytes
        self.log_dir, self.on_change, self.on_event = Path(log_dir), on_change, on_event
        self.restart_backoff_s = restart_backoff_s
        self.restart_backoff_max_s = restart_backoff_max_s
        self.poll_s, self.ready_timeout_s, self.grace_s = poll_s, ready_timeout_s, grace_s
        self.backoff_reset_s, self.probe_timeout_s = backoff_reset_s, probe_timeout_s
        self.serve_argv = serve_argv or kserve_argv
        self.ready_path = ready_path or f"/v2/models/{model}/ready"
        self.env = {"PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self._id = next(_set_ids)
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._all: dict[str, Replica] = {}
        self._next_index = 1
        self._desired = 0
        self._cold_starts: list[float] = []
        self._last_ready: tuple[str, ...] | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stopped = False

    # ----- queries -----
    @property
    def desired(self) -> int:
        return self._desired

    @property
    def restarts_total(self) -> int:
        with self._cond:
            return sum(r.restarts for r in self._all.values())

    @property
    def ready_after_s(self) -> list[float]:
        """Measured cold starts (process spawn -> first ready probe), restarts included."""
        with self._cond:
            return list(self._cold_starts)

    def replicas(self) -> list[Replica]:
        with self._cond:
            return [r for r in self._all.values() if r.state != "gone"]

    def ready(self) -> list[Replica]:
        """Ready replicas whose process is alive (a dead one is unready at once)."""
        with self._cond:
            return [r for r in self._all.values() if r.state == "ready" and r.alive()]

    def replica(self, pod: str) -> Replica:
        with self._cond:
            try:
                return self._all[pod]
            except KeyError:
                raise KeyError(f"{self.model}: no replica {pod!r}") from None

    def cpu_seconds(self, pod: str) -> float:
        return self.replica(pod).accounting.cpu_seconds()

    def memory_bytes(self, pod: str) -> int | None:
        return self.replica(pod).accounting.memory_bytes()

    def describe(self) -> dict[str, Any]:
        with self._cond:
            pods = list(self._all.values())
        return {
            "model": self.model,
            "cgroups": self.cgroups.describe(),
            "limits": {"cpu_cores": self.cpu_limit_cores, "memory_bytes": self.memory_limit_bytes},
            "desired": self._desired,
            "restarts_total": sum(r.restarts for r in pods),
            "ready_after_s": self.ready_after_s,
            "restart_backoff_s": [self.restart_backoff_s, self.restart_backoff_max_s],
            "pods": [r.describe() for r in pods],
        }

    # ----- waiting (tests, the plane's start-up) -----
    def wait_for(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Block until ``check()`` holds (re-checked on every supervision tick)."""
        with self._cond:
            if not self._cond.wait_for(check, timeout_s):
                states = {r.pod: r.state for r in self._all.values()}
                tails = "".join(
                    f"\n--- {r.pod} ({r.log_path}):\n{r.process.log_tail(15)}"
                    for r in self._all.values()
                    if r.process is not None and r.state != "ready"
                )
                raise TimeoutError(
                    f"{self.model}: {what} not reached after {timeout_s:g}s; {states}{tails}"
                )

    def wait_ready(self, n: int, timeout_s: float = 120.0) -> list[Replica]:
        self.wait_for(lambda: len(self.ready()) >= n, timeout_s, f"{n} ready replicas")
        return self.ready()

    def wait_settled(self, timeout_s: float = 120.0) -> None:
        """Until exactly ``desired`` replicas exist, all ready, none terminating."""

        def settled() -> bool:
            live = self.replicas()
            return len(live) == self._desired and all(r.state == "ready" for r in live)

        self.wait_for(settled, timeout_s, f"{self._desired} replicas settled")

    # ----- scaling -----
    def scale_to(self, n: int) -> None:
        """Create or delete replicas until ``n`` are active (not terminating)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise SpecError("replicas", n, "must be an integer >= 0")
        events: list[dict[str, Any]] = []
        with self._cond:
            if self._stopped:
                raise RuntimeError(f"{self.model}: replica set stopped")
            self._desired = n
            active = [r for r in self._all.values() if r.state not in ("terminating", "gone")]
            for _ in range(n - len(active)):
                event = self._create()
                if event is not None:
                    events.append(event)
            # Kubernetes' ranking, simplified: not ready first, then the newest.
            ranked = sorted(active, key=lambda r: (r.state == "ready", -r.index))
            for replica in ranked[: max(0, len(active) - n)]:
                replica.terminate(self.grace_s)
            self._cond.notify_all()
        self._wake.set()
        for event in events:
            self._call(self.on_event, event)

    def _create(self) -> dict[str, Any] | None:
        index = self._next_index
        self._next_index += 1
        pod = f"{self.model}-predictor-{index}"
        port = free_port()
        accounting = self.cgroups.create(
            f"rs{self._id}-{pod}", self.cpu_limit_cores, self.memory_limit_bytes
        )
        replica = Replica(
            pod=pod,
            index=index,
            port=port,
            ready_url=f"http://127.0.0.1:{port}{self.ready_path}",
            accounting=accounting,
            log_path=self.log_dir / f"{pod}.log",
            created_s=time.time(),
        )
        self._all[pod] = replica
        return self._spawn(replica)

    def _spawn(self, replica: Replica) -> dict[str, Any] | None:
        """Start the replica's process in its cgroup; a failure is a crash (an event)."""
        argv = self.serve_argv(self.model_dir, self.model, replica.port)
        err = replica.spawn(argv, self.env, self.ready_timeout_s)
        return None if err is None else self._crash(replica, None, f"failed to start: {err}")

    def _crash(self, replica: Replica, code: int | None, reason: str) -> dict[str, Any]:
        delay = replica.back_off(code, self.restart_backoff_s, self.restart_backoff_max_s)
        action = f"restart in {delay:g} s"
        return self._event("replica crashed", replica, exit_code=code, reason=reason, action=action)

    def _event(self, what: str, replica: Replica, **details: Any) -> dict[str, Any]:
        """An incident as the plane records it (run.json, the report's incident list)."""
        event = {"time": time.time(), "what": what, "pod": replica.pod, "model": self.model}
        return {**event, "restarts": replica.restarts, **details}

    # ----- supervision (the kubelet) -----
    def start(self) -> ReplicaSet:
        with self._cond:
            if self._stopped:
                raise RuntimeError(f"{self.model}: replica set stopped")
            if self._thread is not None:
                return self
            self._pool = ThreadPoolExecutor(8, thread_name_prefix=f"probe-{self.model}")
            self._thread = threading.Thread(
                target=self._run, name=f"replicas-{self.model}", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                self._tick(first)
                first = False
            except Exception:  # a bug here must not end supervision silently
                log.exception("%s: supervision tick failed", self.model)
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _tick(self, first: bool) -> None:
        events: list[dict[str, Any]] = []
        finishing: list[tuple[Replica, bool]] = []  # (replica, its process just exited)
        now, wall = time.monotonic(), time.time()
        with self._cond:
            for r in list(self._all.values()):
                if r.state == "terminating":
                    exited = r.just_exited()
                    if exited or not r.alive():
                        finishing.append((r, exited))
                    elif now >= r.kill_at:
                        r.signal_group(signal.SIGKILL)
                        r.kill_at = now + 5.0
                elif r.state in ("starting", "ready"):
                    assert r.process is not None and r.process.popen is not None
                    code = r.process.popen.poll()
                    if code is not None:
                        events.append(self._crash(r, code, "process exited"))
                    elif r.state == "starting" and now > r.ready_deadline:
                        code = r.kill()
                        reason = f"not ready after {self.ready_timeout_s:g} s"
                        events.append(self._crash(r, code, reason))
                    elif r.state == "ready" and wall - (r.ready_s or wall) >= self.backoff_reset_s:
                        r.crashes = 0  # stayed ready long enough: the backoff starts over
                elif r.state == "backoff" and now >= r.restart_at:
                    events.append(self._spawn(r) or self._event("replica restarted", r))
            probes = [
                (r, r.process)
                for r in self._all.values()
                if r.state in ("starting", "ready") and now >= r.next_probe
            ]
        results = self._probe_all([r.ready_url for r, _ in probes])
        for r, exited in finishing:  # outside the lock: rmdir may wait for tasks to exit
            r.signal_group(signal.SIGKILL, leftovers=exited)
            r.accounting.remove()
        with self._cond:
            for r, _ in finishing:
                r.state, r.gone_s = "gone", time.time()
            for (r, process), ok in zip(probes, results, strict=True):
                if r.process is not process or r.state not in ("starting", "ready"):
                    continue  # crashed, restarted or deleted meanwhile
                self._apply_probe(r, ok)
            ready = [r for r in self._all.values() if r.state == "ready" and r.alive()]
            names = tuple(r.pod for r in ready)
            changed = first or names != self._last_ready
            self._last_ready = names
            self._cond.notify_all()
        for event in events:
            self._call(self.on_event, event)
        if changed:
            self._call(self.on_change, ready)

    def _probe_all(self, urls: list[str]) -> list[bool]:
        if self._pool is None or len(urls) < 2:  # in parallel: one slow replica delays none
            return [_probe(u, self.probe_timeout_s) for u in urls]
        return list(self._pool.map(lambda u: _probe(u, self.probe_timeout_s), urls))

    def _apply_probe(self, r: Replica, ok: bool) -> None:
        now = time.monotonic()
        if ok:
            r.probe_failures = 0
            if r.state == "starting":
                r.state = "ready"
                r.ready_s = time.time()
                if r.cold and r.started_s is not None:
                    r.cold = False
                    cold = r.ready_s - r.started_s
                    r.cold_starts_s.append(cold)
                    self._cold_starts.append(cold)
            r.next_probe = now + READY_PROBE_PERIOD_S
        elif r.state == "ready":
            r.probe_failures += 1
            if r.probe_failures >= READY_FAILURE_THRESHOLD:  # alive but unready
                r.state = "starting"
                r.ready_deadline = now + self.ready_timeout_s
            r.next_probe = now + (READY_PROBE_PERIOD_S if r.state == "ready" else 0.0)

    def _call(self, callback: Callable[[Any], None], arg: Any) -> None:
        try:
            callback(arg)
        except Exception:
            log.exception("%s: callback %r failed", self.model, callback)

    def stop(self) -> None:
        """Stop supervision and every replica (SIGTERM, grace, SIGKILL), remove the groups."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._desired = 0
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._cond:
            live = [r for r in self._all.values() if r.state != "gone"]
            for r in live:
                if r.state != "terminating":
                    r.terminate(self.grace_s)
        reap(live, self.grace_s)
        for r in live:
            r.accounting.remove()
        with self._cond:
            for r in live:
                r.state, r.gone_s = "gone", time.time()
            self._cond.notify_all()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def __enter__(self) -> ReplicaSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
