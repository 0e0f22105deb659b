"""cgroup v1 plumbing for local replicas: the group folders and the files in them.

``ReplicaCgroup`` is one replica's groups in the cpu, cpuacct and memory hierarchies: its
CFS quota (``cpu.cfs_quota_us``) and ``memory.limit_in_bytes``, the processes moved in
(``cgroup.procs``), and the readings cAdvisor takes from the same files (``cpuacct.usage``,
the working set from ``memory.stat``, ``cpu.stat``'s throttled time). The helpers find a
controller's mount and make and remove the folders. Whether this machine can have groups
at all, and the fallback when not, is ``kservebench.local.cgroups``.

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
from pathlib import Path
from typing import Any

import psutil

PARENT = "kservebench"
MIN_QUOTA_US = 1000  # the kernel refuses a CFS quota below 1 ms
_tree_lock = threading.Lock()  # mkdir of a run folder vs. rmdir of an emptied one


def read_value(path: Path) -> str:
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


def controller_dir(root: Path, controller: str) -> Path | None:
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


def rmdir_tree(path: Path) -> bool:
    """Remove empty groups bottom-up; True when ``path`` is gone. Groups with tasks stay."""
    try:
        for child in path.iterdir():
            if child.is_dir():
                rmdir_tree(child)
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def remove_stale(parent: Path) -> None:
    """Remove empty run folders of bench processes that no longer exist (a crashed run)."""
    try:
        entries = [p for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return
    for entry in entries:
        if entry.name.isdigit() and psutil.pid_exists(int(entry.name)):
            continue
        rmdir_tree(entry)


def make_group(path: Path) -> None:
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


def prune(run_folder: Path) -> None:
    """rmdir this run's folder and the ``kservebench`` parent once empty (nothing left over,
    not even inside the group the bench was started in)."""
    with _tree_lock:
        for folder in (run_folder, run_folder.parent):
            try:
                folder.rmdir()
            except OSError:
                return


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
            make_group(path)
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
            return [int(p) for p in read_value(self.paths["cpu"] / "cgroup.procs").split()]
        except OSError:
            return []

    def cpu_seconds(self) -> float:
        """CPU time of everything that ran in the group (cAdvisor's container CPU counter)."""
        with contextlib.suppress(OSError, ValueError):  # removed: the last reading stands
            usage_s = int(read_value(self.paths["cpuacct"] / "cpuacct.usage")) / 1e9
            self._last_cpu_s = max(self._last_cpu_s, usage_s)
        return self._last_cpu_s

    def memory_bytes(self) -> int | None:
        """Working set: usage minus inactive file cache, as cAdvisor computes it."""
        if "memory" not in self.paths:
            return None
        try:
            usage = int(read_value(self.paths["memory"] / "memory.usage_in_bytes"))
            stat = read_value(self.paths["memory"] / "memory.stat").splitlines()
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
            for line in read_value(self.paths["cpu"] / "cpu.stat").splitlines():
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
            prune(path.parent)
        self._removed = not pending

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "cgroup-v1",
            "paths": {k: str(v) for k, v in self.paths.items()},
            "cpu_quota_us": self.cpu_quota_us,
            "memory_limit_bytes": self.memory_limit_bytes,
        }
