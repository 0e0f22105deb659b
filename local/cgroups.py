"""CPU and memory limits for local replicas: cgroup v1 groups, or an honest fallback.

A Kubernetes CPU limit is a CFS quota on the container's cgroup and cAdvisor's CPU series is
that cgroup's ``cpuacct.usage``; on a machine where cgroup v1 is writable (root) each replica
gets the same: ``cpu.cfs_quota_us``, ``memory.limit_in_bytes``, CPU seconds and the working
set read from the group. Elsewhere ``ProcessTreeAccounting`` reads the process tree with
psutil and enforces nothing, and ``CgroupSupport.reason`` says why, for run.json.

Layout: ``<controller dir>/kservebench/<owner pid>/<name>``, where the controller dir is the
bench process's own group in that hierarchy (so replicas stay inside whatever group the bench
was started in). The per-process folder keeps concurrent runs apart: a run only ever removes
its own groups, and the empty leftovers of runs whose process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from kservebench.errors import SpecError

CGROUP_ROOT_ENV = "KSERVEBENCH_CGROUP_ROOT"
CGROUP_MODES = ("auto", "required", "off")
PARENT = "kservebench"
MIN_QUOTA_US = 1000  # the kernel refuses a CFS quota below 1 ms
_tree_lock = threading.Lock()  # mkdir of a run folder vs. rmdir of an emptied one


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


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str) -> None:
    with path.open("w") as out:
        out.write(value)


def _own_groups() -> dict[str, str]:
    """This process's group per v1 controller, from /proc/self/cgroup ("4:memory:/a/b")."""
    groups: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return groups
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1]:
            for controller in parts[1].split(","):
                groups[controller] = parts[2]
    return groups


def _controller_dir(root: Path, controller: str) -> Path | None:
    """The mount of ``controller`` under root: ``root/cpu``, or a co-mount ``root/cpu,cpuacct``.

    Descends into this process's own group there when it exists, so replicas nest under it."""
    mount = root / controller
    if not mount.is_dir():
        try:
            mount = next(
                p for p in root.iterdir() if p.is_dir() and controller in p.name.split(",")
            )
        except (OSError, StopIteration):
            return None
    own = _own_groups().get(controller, "/").strip("/")
    nested = mount / own if own else mount
    return nested if nested.is_dir() else mount


def _rmdir_tree(path: Path) -> bool:
    """Remove empty groups bottom-up; True when ``path`` is gone. Groups with tasks stay."""
    try:
        for child in path.iterdir():
            if child.is_dir():
                _rmdir_tree(child)
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _remove_stale(parent: Path) -> None:
    """Remove empty run folders of bench processes that no longer exist (a crashed run)."""
    try:
        entries = [p for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return
    for entry in entries:
        if entry.name.isdigit() and psutil.pid_exists(int(entry.name)):
            continue
        _rmdir_tree(entry)


def _make_group(path: Path) -> None:
    """mkdir a group and its run folder; another run may prune the shared parent meanwhile."""
    for attempt in range(5):
        try:
            with _tree_lock:
                path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == 4:
                raise
            time.sleep(0.01)


def _prune(run_folder: Path) -> None:
    """rmdir this run's folder and the ``kservebench`` parent once empty (nothing left over,
    not even inside the group the bench was started in)."""
    with _tree_lock:
        for folder in (run_folder, run_folder.parent):
            try:
                folder.rmdir()
            except OSError:
                return


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


class ReplicaCgroup:
    """One replica's cgroup v1 groups (cpu, cpuacct, memory); children inherit them."""

    def __init__(self, name: str, paths: dict[str, Path]) -> None:
        self.name = name
        self.paths = paths
        self.pids: list[int] = []
        self.cpu_quota_us: int | None = None
        self.memory_limit_bytes: int | None = None
        self._last_cpu_s = 0.0
        self._removed = False

    def _distinct(self) -> list[Path]:
        """The group folders, once each (cpu and cpuacct may be one co-mounted hierarchy)."""
        seen: dict[str, Path] = {}
        for path in self.paths.values():
            seen.setdefault(os.path.realpath(path), path)
        return list(seen.values())

    def make(self, quota_us: int | None, memory_limit_bytes: int | None) -> None:
        for path in self._distinct():
            _make_group(path)
        if quota_us is not None:
            _write(self.paths["cpu"] / "cpu.cfs_quota_us", str(quota_us))
            self.cpu_quota_us = quota_us
        if memory_limit_bytes is not None and "memory" in self.paths:
            _write(self.paths["memory"] / "memory.limit_in_bytes", str(memory_limit_bytes))
            self.memory_limit_bytes = memory_limit_bytes

    def add(self, pid: int) -> None:
        """Move a process in (its later children inherit the groups)."""
        for path in self._distinct():
            _write(path / "cgroup.procs", str(pid))
        self.pids.append(pid)

    def tasks(self) -> list[int]:
        try:
            return [int(p) for p in _read(self.paths["cpu"] / "cgroup.procs").split()]
        except OSError:
            return []

    def cpu_seconds(self) -> float:
        """CPU time of everything that ran in the group (cAdvisor's container CPU counter)."""
        with contextlib.suppress(OSError, ValueError):  # removed: the last reading stands
            usage_s = int(_read(self.paths["cpuacct"] / "cpuacct.usage")) / 1e9
            self._last_cpu_s = max(self._last_cpu_s, usage_s)
        return self._last_cpu_s

    def memory_bytes(self) -> int | None:
        """Working set: usage minus inactive file cache, as cAdvisor computes it."""
        if "memory" not in self.paths:
            return None
        try:
            usage = int(_read(self.paths["memory"] / "memory.usage_in_bytes"))
            stat = _read(self.paths["memory"] / "memory.stat").splitlines()
        except (OSError, ValueError):
            return None
        inactive = 0
        for line in stat:
            key, _, value = line.partition(" ")
            if key == "total_inactive_file":
                inactive = int(value)
        return max(0, usage - inactive)

    def throttled_seconds(self) -> float | None:
        """Time the CFS quota held the group back (cpu.stat throttled_time, ns)."""
        try:
            for line in _read(self.paths["cpu"] / "cpu.stat").splitlines():
                key, _, value = line.partition(" ")
                if key == "throttled_time":
                    return int(value) / 1e9
        except (OSError, ValueError):
            return None
        return None

    def remove(self, timeout_s: float = 3.0) -> None:
        """rmdir the groups, retrying while exiting tasks leave; never raises."""
        if self._removed:
            return
        self.cpu_seconds()  # keep the final value for later reads
        deadline = time.monotonic() + timeout_s
        pending = self._distinct()
        while pending:
            left = []
            for path in pending:
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as err:
                    if err.errno != errno.EBUSY:
                        continue  # not ours to fix: give up on this one
                    left.append(path)
            pending = left
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for path in self._distinct():
            _prune(path.parent)
        self._removed = not pending

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "cgroup-v1",
            "paths": {k: str(v) for k, v in self.paths.items()},
            "cpu_quota_us": self.cpu_quota_us,
            "memory_limit_bytes": self.memory_limit_bytes,
        }


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
        found = _controller_dir(root, controller)
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
        _remove_stale(parent)
        probe = parent / str(os.getpid()) / f"probe-{threading.get_ident()}"
        try:
            _make_group(probe)
        except OSError as err:
            if controller == "memory":
                memory_ok = False
                continue
            return _unsupported(
                f"cgroup v1 {controller} controller not writable at {path}: {_errno_text(err)}"
            )
        finally:
            _rmdir_tree(probe)
            _prune(probe.parent)
    if not memory_ok:
        dirs.pop("memory", None)
    try:
        period = int(_read(dirs["cpu"] / "cpu.cfs_period_us"))
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
