"""One replica of a model, a pod: its record and the steps of its process's life cycle.

A ``Replica`` holds what kube-state-metrics and run.json show of a pod (lifecycle
timestamps, state, restarts, cold starts, resource accounting) and the deadlines its
supervisor keeps. Its methods are the single-pod transitions: spawn the process into the
pod's cgroup, terminate it (SIGTERM, then SIGKILL after the grace period), kill it, and
go into CrashLoopBackOff. Deciding when to take them is ``ReplicaSet``'s
(``kservebench.local.replicas``), which plays the ReplicaSet controller and the kubelet.

Timestamps are epoch seconds (``time.time()``), as kube-state-metrics exports them;
deadlines are monotonic.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kservebench.local.cgroups import Accounting
from kservebench.procs import ManagedProcess

STATES = ("pending", "starting", "ready", "terminating", "backoff", "gone")


def kserve_argv(model_dir: Path, name: str, port: int) -> list[str]:
    """LocalModelServer's ``kservebench serve ... --workers 1``: one process per replica."""
    from kservebench.models.local import LocalModelServer

    return LocalModelServer(model_dir, name, port=port, workers=1).argv()


@dataclass(eq=False)
class Replica:
    """One pod: its lifecycle timestamps, state, restarts and resource accounting."""

    pod: str
    index: int
    port: int
    ready_url: str
    accounting: Accounting
    log_path: Path
    created_s: float
    state: str = "pending"
    started_s: float | None = None
    ready_s: float | None = None
    deleted_s: float | None = None
    gone_s: float | None = None
    restarts: int = 0
    exit_code: int | None = None
    cold_starts_s: list[float] = field(default_factory=list)
    process: ManagedProcess | None = field(default=None, repr=False)
    crashes: int = 0  # consecutive, for the backoff
    restart_at: float = 0.0  # monotonic deadlines from here on
    ready_deadline: float = 0.0
    kill_at: float = 0.0
    next_probe: float = 0.0
    probe_failures: int = 0
    cold: bool = False  # spawned and not yet ready: the next ready is a cold start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.popen else None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def signal_group(self, sig: signal.Signals, leftovers: bool = False) -> None:
        """Signal the replica's process group (its workers too).

        Only while the leader is unreaped (its pid cannot name another group then), or with
        ``leftovers`` right after reaping it: a pid freed long ago may be someone else's."""
        popen = self.process.popen if self.process is not None else None
        if popen is not None and (leftovers or popen.returncode is None):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, sig)

    def just_exited(self) -> bool:
        """True once: when this call reaps the (leader) process."""
        popen = self.process.popen if self.process is not None else None
        return popen is not None and popen.returncode is None and popen.poll() is not None

    # ----- transitions (the caller holds the set's lock) -----
    def spawn(self, argv: list[str], env: dict[str, str], ready_timeout_s: float) -> OSError | None:
        """Start the process and move it into the pod's cgroup; ``starting`` until a probe
        answers. Returns the error when it could not start (the caller's crash)."""
        process = ManagedProcess(argv, self.log_path, env=env)
        self.process = process
        self.started_s = time.time()
        try:
            process.start()
            self.accounting.add(process.pid)
        except OSError as err:  # never run a replica outside its limits
            self.kill()
            return err
        self.state = "starting"
        self.cold = True
        self.ready_deadline = time.monotonic() + ready_timeout_s
        self.next_probe = 0.0
        self.probe_failures = 0
        return None

    def kill(self) -> int | None:
        """SIGKILL the group and reap the leader (5 s at most); its exit code, if reaped."""
        self.signal_group(signal.SIGKILL)
        popen = self.process.popen if self.process is not None else None
        if popen is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5.0)
        return popen.returncode

    def terminate(self, grace_s: float) -> None:
        """Deleted: SIGTERM now, SIGKILL once ``grace_s`` has passed (the supervisor's)."""
        self.deleted_s = time.time()
        self.state = "terminating"
        self.signal_group(signal.SIGTERM)
        self.kill_at = time.monotonic() + grace_s

    def back_off(self, code: int | None, backoff_s: float, backoff_max_s: float) -> float:
        """Crashed: into CrashLoopBackOff, the delay doubling per consecutive crash up to
        ``backoff_max_s``; returns the delay before the restart."""
        self.signal_group(signal.SIGKILL, leftovers=True)  # workers must not hold the port
        self.state = "backoff"
        self.restarts += 1
        self.crashes += 1
        self.exit_code = code
        delay = min(backoff_s * 2 ** (self.crashes - 1), backoff_max_s)
        self.restart_at = time.monotonic() + delay
        return delay

    def describe(self) -> dict[str, Any]:
        keys = ("pod", "port", "state", "created_s", "started_s", "ready_s", "deleted_s")
        return {
            **{key: getattr(self, key) for key in (*keys, "gone_s", "restarts")},
            "last_exit_code": self.exit_code,
            "cold_starts_s": list(self.cold_starts_s),
            "cpu_seconds": self.accounting.cpu_seconds(),
            "throttled_seconds": self.accounting.throttled_seconds(),
            "accounting": self.accounting.describe(),
            "log": str(self.log_path),
        }


def reap(replicas: Iterable[Replica], grace_s: float) -> None:
    """Wait for terminating replicas' processes to exit: SIGKILL after ``grace_s``, and
    5 s after that give up on what is left (unkillable, D state) rather than hang."""
    running, deadline, killed = [r for r in replicas if r.alive()], time.monotonic(), False
    deadline += grace_s
    while running:
        for r in [r for r in running if r.just_exited() or not r.alive()]:
            r.signal_group(signal.SIGKILL, leftovers=True)
            running.remove(r)
        if running and time.monotonic() > deadline:
            if killed:
                break  # unkillable (D state): leave it, never hang
            for r in running:
                r.signal_group(signal.SIGKILL)
            killed, deadline = True, time.monotonic() + 5.0
        time.sleep(0.05 if running else 0)
