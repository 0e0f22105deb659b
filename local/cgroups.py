"""CPU and memory limits for local replicas: cgroup v1 groups, or an honest fallback.

A Kubernetes CPU limit is a CFS quota on the container's cgroup and cAdvisor's CPU series is
that cgroup's ``cpuacct.usage``; on a machine where cgroup v1 is writable (root) each replica
gets the same: ``cpu.cfs_quota_us``, ``memory.limit_in_bytes``, CPU seconds and the working
set read from the group. Elsewhere ``ProcessTreeAccounting`` reads the process tree with
psutil and enforces nothing, and ``CgroupSupport.reason`` says why, for run.json.

Here: the limit checks, what accounting offers (``Accounting``), detection
(``detect_cgroups``: which controllers are there and writable) and the fallback. The groups
themselves, their files and folder layout are ``kservebench.local.cgroup_v1``'s
(``ReplicaCgroup`` stays importable from here).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from kservebench.errors import SpecError
from kservebench.local.cgroup_v1 import (
    MIN_QUOTA_US,
    PARENT,
    ReplicaCgroup,
    controller_dir,
    make_group,
    prune,
    read_value,
    remove_stale,
    rmdir_tree,
)

__all__ = [  # ReplicaCgroup lives in cgroup_v1.py; importable from here too
    "CGROUP_MODES", "CGROUP_ROOT_ENV", "MIN_QUOTA_US", "PARENT", "Accounting", "CgroupSupport",
    "ProcessTreeAccounting", "ReplicaCgroup", "check_cpu_limit", "check_memory_limit",
    "detect_cgroups",
]  # fmt: skip

CGROUP_ROOT_ENV = "KSERVEBENCH_CGROUP_ROOT"
CGROUP_MODES = ("auto", "required", "off")


def check_cpu_limit(cores: float, field: str) -> float:
    """A CPU limit this machine can honour: above 0 and at most its cores (a CFS quota)."""
    available = os.cpu_count() or 1
    if isinstance(cores, bool) or not isinstance(cores, int | float):
        raise SpecError(field, cores, "must be a number of CPU cores")
    if not cores > 0:
        raise SpecError(field, cores, "must be above 0 CPU cores")
    if cores > available:
        problem = f"exceeds the {available} CPU cores of this machine (a CFS quota on them)"
        raise SpecError(field, cores, problem)
    return float(cores)


def check_memory_limit(limit_bytes: int, field: str) -> int:
    """A memory limit in bytes: a positive integer."""
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes <= 0:
        raise SpecError(field, limit_bytes, "must be a positive number of bytes")
    return limit_bytes


class Accounting(Protocol):
    """What a replica's resource accounting offers, with or without cgroups."""

    def add(self, pid: int) -> None: ...
    def cpu_seconds(self) -> float: ...
    def memory_bytes(self) -> int | None: ...
    def throttled_seconds(self) -> float | None: ...
    def remove(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


def _errno_text(err: OSError) -> str:
    return (err.strerror or str(err)).lower()


@dataclass(frozen=True)
class CgroupSupport:
    """What this machine enforces for local replicas; ``create`` makes one replica's group."""

    enforced: bool
    kind: str  # "cgroup-v1" | "none"
    reason: str
    memory: bool = False
    dirs: dict[str, Path] = field(default_factory=dict, repr=False, compare=False)
    cfs_period_us: int = 100_000

    def describe(self) -> dict[str, Any]:
        run = Path(PARENT, str(os.getpid()))
        return {
            "enforced": self.enforced,
            "kind": self.kind,
            "reason": self.reason,
            "memory_enforced": self.memory,
            "cfs_period_us": self.cfs_period_us if self.enforced else None,
            "paths": {controller: str(path / run) for controller, path in self.dirs.items()},
        }

    def create(
        self, name: str, cpu_limit_cores: float | None, memory_limit_bytes: int | None
    ) -> Accounting:
        """One replica's group with its limits (or the unenforced fallback)."""
        if cpu_limit_cores is not None:
            check_cpu_limit(cpu_limit_cores, "cpu_limit_cores")
        if memory_limit_bytes is not None:
            check_memory_limit(memory_limit_bytes, "memory_limit_bytes")
        if not name or "/" in name or name in (".", ".."):
            raise SpecError("name", name, "must be a plain folder name")
        if not self.enforced:
            return ProcessTreeAccounting(name)
        quota = None
        if cpu_limit_cores is not None:
            quota = max(MIN_QUOTA_US, round(cpu_limit_cores * self.cfs_period_us))
        run = Path(PARENT, str(os.getpid()), name)
        group = ReplicaCgroup(name, {k: v / run for k, v in self.dirs.items()})
        try:
            group.make(quota, memory_limit_bytes if self.memory else None)
        except BaseException:
            group.remove()
            raise
        return group


class ProcessTreeAccounting:
    """The fallback: CPU and RSS of the added processes and their descendants, no limits.

    Exited processes keep their last seen CPU time, so the total never goes down (a counter,
    like the cgroup's); CPU of a child that came and went between two reads is missed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pids: list[int] = []
        self._roots: list[psutil.Process] = []
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> last CPU s
        self._lock = threading.Lock()

    def add(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self._roots.append(psutil.Process(pid))
        self.pids.append(pid)
        self.cpu_seconds()

    def _tree(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for root in self._roots:
            try:
                if not root.is_running():
                    continue
                procs.append(root)
                procs.extend(root.children(recursive=True))
            except psutil.Error:
                continue
        return procs

    def cpu_seconds(self) -> float:
        with self._lock:
            for proc in self._tree():
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        key = (proc.pid, proc.create_time())
                except psutil.Error:
                    continue
                self._cpu[key] = max(self._cpu.get(key, 0.0), times.user + times.system)
            return sum(self._cpu.values())

    def memory_bytes(self) -> int | None:
        total = 0
        for proc in self._tree():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total

    def throttled_seconds(self) -> float | None:
        return None

    def remove(self) -> None:
        self.cpu_seconds()
        self._roots = []

    def describe(self) -> dict[str, Any]:
        return {"kind": "none", "cpu_quota_us": None, "memory_limit_bytes": None}


def _unsupported(reason: str) -> CgroupSupport:
    return CgroupSupport(enforced=False, kind="none", reason=reason)


def _probe(root: Path) -> CgroupSupport:
    """Can this process make groups under the cpu and cpuacct (and memory) controllers?"""
    dirs: dict[str, Path] = {}
    for controller in ("cpu", "cpuacct", "memory"):
        found = controller_dir(root, controller)
        if found is not None:
            dirs[controller] = found
    for controller in ("cpu", "cpuacct"):
        if controller not in dirs:
            return _unsupported(f"no cgroup v1 {controller} controller under {root}")
    if not (dirs["cpu"] / "cpu.cfs_quota_us").exists():
        return _unsupported(f"no cpu.cfs_quota_us in {dirs['cpu']} (not a cgroup v1 cpu mount)")
    memory_ok = "memory" in dirs and (dirs["memory"] / "memory.limit_in_bytes").exists()
    if not memory_ok:
        dirs.pop("memory", None)
    for controller, path in list(dirs.items()):
        parent = path / PARENT
        remove_stale(parent)
        probe = parent / str(os.getpid()) / f"probe-{threading.get_ident()}"
        try:
            make_group(probe)
        except OSError as err:
            if controller == "memory":
                memory_ok = False
                continue
            return _unsupported(
                f"cgroup v1 {controller} controller not writable at {path}: {_errno_text(err)}"
            )
        finally:
            rmdir_tree(probe)
            prune(probe.parent)
    if not memory_ok:
        dirs.pop("memory", None)
    try:
        period = int(read_value(dirs["cpu"] / "cpu.cfs_period_us"))
    except (OSError, ValueError):
        period = 100_000
    reason = f"cgroup v1 at {root}: CPU limits as CFS quota (period {period} us)"
    reason += ", memory limits" if memory_ok else ", memory not limited (no writable controller)"
    return CgroupSupport(True, "cgroup-v1", reason, memory_ok, dirs, period)


def detect_cgroups(root: Path = Path("/sys/fs/cgroup"), mode: str = "auto") -> CgroupSupport:
    """What limits replicas get here: ``auto`` (cgroups if writable), ``required``, ``off``.

    ``KSERVEBENCH_CGROUP_ROOT`` overrides ``root`` (tests point it at a missing folder)."""
    if mode not in CGROUP_MODES:
        raise SpecError("local.cgroups", mode, f"must be one of {', '.join(CGROUP_MODES)}")
    if mode == "off":
        return _unsupported("cgroups turned off (local.cgroups: off): no limits enforced")
    override = os.environ.get(CGROUP_ROOT_ENV)
    root = Path(override) if override else Path(root)
    if not root.is_dir():
        support = _unsupported(f"no cgroup file system at {root}: no limits enforced")
    else:
        support = _probe(root)
    if mode == "required" and not support.enforced:
        raise SpecError("local.cgroups", mode, f"cgroup limits unavailable: {support.reason}")
    return support
