"""Local replicas as real processes: cgroup limits and accounting, scaling, crash restarts.

The fast tests build fake cgroup trees in tmp_path (plain folders behave like a writable
cgroup v1 mount for mkdir and writes, so the layout logic is checked anywhere); the slow
ones start real ``kservebench serve`` replicas of sklearn-small.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from kservebench.errors import SpecError
from kservebench.local import replicas
from kservebench.local.cgroups import (
    CGROUP_ROOT_ENV,
    ProcessTreeAccounting,
    ReplicaCgroup,
    check_cpu_limit,
    detect_cgroups,
)
from kservebench.local.replicas import Replica, ReplicaSet
from kservebench.models import read_model_info

MODEL = "sklearn-small"
READY_S = 90.0  # generous: two busy shared cores


class Recorder:
    """on_change / on_event calls, kept in order (they come from the supervision thread)."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, ...]] = []
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def on_change(self, ready: list[Replica]) -> None:
        with self.lock:
            self.changes.append(tuple(r.pod for r in ready))

    def on_event(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)


@pytest.fixture
def make_set(
    trained_models: Mapping[str, Path], tmp_path: Path
) -> Iterator[Callable[..., ReplicaSet]]:
    made: list[ReplicaSet] = []

    def make(**kwargs: Any) -> ReplicaSet:
        kwargs.setdefault("cgroups", detect_cgroups())
        kwargs.setdefault("cpu_limit_cores", None)
        kwargs.setdefault("memory_limit_bytes", None)
        replica_set = ReplicaSet(
            MODEL, trained_models[MODEL], log_dir=tmp_path / f"logs{len(made)}", **kwargs
        )
        made.append(replica_set)
        return replica_set.start()

    try:
        yield make
    finally:
        for replica_set in made:
            replica_set.stop()


def predict(replica: Replica, info: dict[str, Any]) -> list[Any]:
    answer = requests.post(
        f"{replica.url}/v1/models/{MODEL}:predict",
        json={"instances": info["sample_instances"]},
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()["predictions"]


def group_dirs(replica: Replica) -> list[Path]:
    accounting = replica.accounting
    return list(accounting.paths.values()) if isinstance(accounting, ReplicaCgroup) else []


def fake_tree(root: Path, co_mounted: bool) -> None:
    """A cgroup v1 layout made of plain folders (cpu+cpuacct separate or co-mounted)."""
    if co_mounted:
        both = root / "cpu,cpuacct"
        both.mkdir(parents=True)
        (root / "cpu").symlink_to(both)
        (root / "cpuacct").symlink_to(both)
    else:
        (root / "cpu").mkdir(parents=True)
        (root / "cpuacct").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")


# ----- fast: validation, detection, layout -----


def test_cpu_limit_above_the_machine_names_field_and_cores() -> None:
    cores = os.cpu_count() or 1
    with pytest.raises(SpecError) as err:
        check_cpu_limit(cores + 1, "resources.limits.cpu")
    assert err.value.field == "resources.limits.cpu"
    assert f"{cores} CPU cores" in str(err.value)
    for bad in (0, -0.5):
        with pytest.raises(SpecError, match=r"resources\.limits\.cpu"):
            check_cpu_limit(bad, "resources.limits.cpu")
    assert check_cpu_limit(0.25, "x") == 0.25


def test_missing_root_falls_back_and_required_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-cgroups"
    monkeypatch.setenv(CGROUP_ROOT_ENV, str(missing))
    support = detect_cgroups()
    assert (support.enforced, support.kind, support.memory) == (False, "none", False)
    assert str(missing) in support.reason
    assert support.describe()["enforced"] is False
    assert isinstance(support.create("p", 0.25, None), ProcessTreeAccounting)
    with pytest.raises(SpecError) as err:
        detect_cgroups(mode="required")
    assert err.value.field == "local.cgroups"
    assert "off" in detect_cgroups(mode="off").reason
    with pytest.raises(SpecError, match=r"local\.cgroups"):
        detect_cgroups(mode="sometimes")


@pytest.mark.parametrize("co_mounted", [False, True])
def test_groups_in_a_fake_tree_get_the_quota_once_per_hierarchy(
    tmp_path: Path, co_mounted: bool
) -> None:
    fake_tree(tmp_path, co_mounted)
    support = detect_cgroups(tmp_path)
    assert support.enforced and support.kind == "cgroup-v1" and not support.memory
    group = support.create("pod-1", 0.25, None)
    assert isinstance(group, ReplicaCgroup)
    quota = group.paths["cpu"] / "cpu.cfs_quota_us"
    assert quota.read_text() == "25000"
    assert group.paths["cpu"] == tmp_path / "cpu" / "kservebench" / str(os.getpid()) / "pod-1"
    assert len(group._distinct()) == (1 if co_mounted else 2)
    quota.unlink()  # what the kernel's rmdir does with control files
    group.remove()
    assert not group.paths["cpu"].exists() and not group.paths["cpu"].parent.exists()


def test_stale_leftovers_of_dead_runs_are_removed(tmp_path: Path) -> None:
    fake_tree(tmp_path, co_mounted=False)
    parent = tmp_path / "cpu" / "kservebench"
    dead = parent / "99999999" / "old-pod"  # above pid_max: never a live process
    loose = parent / "crashed-pod"
    live = parent / str(os.getppid()) / "other-run-pod"
    for path in (dead, loose, live):
        path.mkdir(parents=True)
    assert detect_cgroups(tmp_path).enforced
    assert not dead.parent.exists() and not loose.exists()
    assert live.exists()  # another run's groups are never touched


# A stand-in replica for the supervision logic (milliseconds to start, not seconds): serves
# the folder <www>/<port>, so a test makes one replica ready by writing its ready file.
FAKE_SERVER = """
import functools, http.server, os, signal, sys
port, mode, www = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "hang":
    signal.pause()
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=f"{www}/{port}")
http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
"""


def fake_argv(mode: str) -> Callable[[Path, str, int], list[str]]:
    def argv(www: Path, name: str, port: int) -> list[str]:
        return [sys.executable, "-c", FAKE_SERVER, str(port), mode, str(www)]

    return argv


def set_ready(www: Path, replica: Replica, ready: bool = True) -> None:
    path = www / str(replica.port) / "v2" / "models" / MODEL / "ready"
    if ready:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("ok")
    else:
        path.unlink()


@pytest.fixture
def fake_set(tmp_path: Path) -> Iterator[Callable[..., ReplicaSet]]:
    made: list[ReplicaSet] = []

    def make(mode: str = "serve", **kwargs: Any) -> ReplicaSet:
        kwargs.setdefault("poll_s", 0.05)
        replica_set = ReplicaSet(
            MODEL,
            tmp_path / "www",
            detect_cgroups(),
            None,
            None,
            tmp_path / f"fake-logs{len(made)}",
            serve_argv=fake_argv(mode),
            **kwargs,
        )
        made.append(replica_set)
        return replica_set.start()

    try:
        yield make
    finally:
        for replica_set in made:
            replica_set.stop()


def test_deletes_unready_replicas_first_then_the_newest(
    fake_set: Callable[..., ReplicaSet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicas, "READY_PROBE_PERIOD_S", 0.05)
    seen = Recorder()
    rs = fake_set(on_change=seen.on_change)
    rs.scale_to(3)
    one, two, three = rs.replicas()
    set_ready(tmp_path / "www", one)
    set_ready(tmp_path / "www", three)
    rs.wait_for(lambda: len(rs.ready()) == 2, 20, "two ready")
    assert two.state == "starting" and seen.changes[-1] == (one.pod, three.pod)
    rs.scale_to(2)  # the unready one goes, though not the newest
    assert two.state == "terminating" and three.state == "ready"
    rs.scale_to(1)  # then the newest
    assert three.state == "terminating" and one.state == "ready"
    rs.wait_for(lambda: [r.pod for r in rs.replicas()] == [one.pod], 10, "only predictor-1")
    rs.wait_settled(10)
    assert seen.changes[-1] == (one.pod,)
    set_ready(tmp_path / "www", one, False)  # alive but failing its probe: unready after 3
    rs.wait_for(lambda: seen.changes[-1] == (), 10, "on_change([])")
    assert one.state == "starting" and one.alive() and one.restarts == 0
    set_ready(tmp_path / "www", one)
    rs.wait_ready(1, 10)
    assert len(one.cold_starts_s) == 1  # readiness regained is no cold start
    assert [p["state"] for p in rs.describe()["pods"]] == ["ready", "gone", "gone"]


def test_a_replica_ignoring_sigterm_is_killed_after_the_grace_period(
    fake_set: Callable[..., ReplicaSet], tmp_path: Path
) -> None:
    rs = fake_set("stubborn", grace_s=0.5)
    rs.scale_to(1)
    (replica,) = rs.replicas()
    set_ready(tmp_path / "www", replica)
    rs.wait_ready(1, 20)  # serving: SIGTERM is ignored by now
    assert replica.process is not None and replica.process.popen is not None
    rs.scale_to(0)
    rs.wait_for(lambda: replica.state == "gone", 10, "gone")
    assert replica.process.popen.returncode == -signal.SIGKILL
    assert replica.gone_s - replica.deleted_s >= 0.5  # type: ignore[operator]
    assert rs.restarts_total == 0  # a deletion is no crash


def test_never_ready_is_a_crash_and_the_backoff_doubles_up_to_its_cap(
    fake_set: Callable[..., ReplicaSet],
) -> None:
    seen = Recorder()
    rs = fake_set(
        "hang",
        on_event=seen.on_event,
        ready_timeout_s=0.3,
        restart_backoff_s=0.1,
        restart_backoff_max_s=0.15,
    )
    rs.scale_to(1)
    (replica,) = rs.replicas()

    def crashes() -> list[dict[str, Any]]:
        return [e for e in seen.events if e["what"] == "replica crashed"]

    rs.wait_for(lambda: len(crashes()) >= 3, 20, "three crashes")
    assert [e["action"] for e in crashes()[:3]] == [
        "restart in 0.1 s",
        "restart in 0.15 s",
        "restart in 0.15 s",
    ]
    assert crashes()[0]["reason"] == "not ready after 0.3 s"
    assert crashes()[0]["exit_code"] == -signal.SIGKILL
    assert any(e["what"] == "replica restarted" for e in seen.events)
    assert replica.restarts >= 3 and replica.ready_s is None and rs.ready_after_s == []
    rs.scale_to(0)  # in backoff or starting: deleted all the same
    rs.wait_for(lambda: rs.replicas() == [], 10, "deleted")
    rs.stop()
    rs.stop()  # idempotent
    assert replica.state == "gone"


# ----- slow: real replicas -----


@pytest.mark.slow
def test_scale_up_and_down_like_a_replicaset(
    make_set: Callable[..., ReplicaSet], trained_models: Mapping[str, Path]
) -> None:
    info = read_model_info(trained_models[MODEL])
    seen = Recorder()
    rs = make_set(on_change=seen.on_change)
    assert rs.replicas() == [] and rs.desired == 0
    rs.scale_to(2)
    assert [r.state for r in rs.replicas()] == ["starting", "starting"]
    first, second = rs.wait_ready(2, READY_S)
    assert (first.pod, second.pod) == (f"{MODEL}-predictor-1", f"{MODEL}-predictor-2")
    assert first.port != second.port
    for replica in (first, second):
        assert predict(replica, info) == info["sample_predictions"]
        assert replica.created_s <= replica.started_s <= replica.ready_s  # type: ignore[operator]
    assert len(rs.ready_after_s) == 2 and all(0 < s < READY_S for s in rs.ready_after_s)
    rs.wait_for(lambda: seen.changes[-1:] == [(first.pod, second.pod)], 5, "on_change")

    pid, dirs = second.pid, group_dirs(second)
    rs.scale_to(1)  # both ready: the newest goes
    assert second.state == "terminating" and second.deleted_s is not None
    assert rs.desired == 1 and [r.pod for r in rs.ready()] == [first.pod]
    rs.wait_for(lambda: second.state == "gone", 30, "predictor-2 gone")
    assert pid is not None and not psutil.pid_exists(pid)
    assert not any(d.exists() for d in dirs)
    assert seen.changes[-1] == (first.pod,)
    assert predict(first, info) == info["sample_predictions"]

    pid, dirs = first.pid, group_dirs(first)
    rs.scale_to(0)
    rs.wait_for(lambda: rs.replicas() == [], 30, "no replicas")
    assert pid is not None and not psutil.pid_exists(pid)
    assert not any(d.exists() for d in dirs)
    rs.wait_for(lambda: seen.changes[-1] == (), 5, "on_change([])")
    rs.scale_to(1)  # pod numbers are never reused
    assert [r.pod for r in rs.replicas()] == [f"{MODEL}-predictor-3"]
    described = rs.describe()
    assert [p["pod"] for p in described["pods"]][:2] == [first.pod, second.pod]
    cold_starts = [s for p in described["pods"] for s in p["cold_starts_s"]]
    assert sorted(cold_starts) == sorted(rs.ready_after_s)  # in the order they got ready


def tree_cpu_s(pid: int) -> float:
    """psutil's view: the process and its children, user + system."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


@pytest.mark.slow
def test_cpu_limit_is_a_cfs_quota_and_cpuacct_counts_the_load(
    make_set: Callable[..., ReplicaSet], trained_models: Mapping[str, Path]
) -> None:
    support = detect_cgroups()
    if not support.enforced:
        pytest.skip(f"cgroups not writable here: {support.reason}")
    memory_limit = 512 * 2**20
    rs = make_set(cgroups=support, cpu_limit_cores=0.25, memory_limit_bytes=memory_limit)
    rs.scale_to(1)
    (replica,) = rs.wait_ready(1, READY_S)
    group = replica.accounting
    assert isinstance(group, ReplicaCgroup) and replica.pid is not None
    assert (group.paths["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "25000"
    assert replica.pid in group.tasks()
    if support.memory:
        limit = (group.paths["memory"] / "memory.limit_in_bytes").read_text().strip()
        assert int(limit) == memory_limit
        assert 10 * 2**20 < (rs.memory_bytes(replica.pod) or 0) < memory_limit

    info = read_model_info(trained_models[MODEL])
    cg0, ps0, wall0 = rs.cpu_seconds(replica.pod), tree_cpu_s(replica.pid), time.monotonic()
    throttled0 = group.throttled_seconds() or 0.0
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: predict(replica, info), range(300)))
    assert all(a == info["sample_predictions"] for a in answers)
    cg1, ps1, wall = rs.cpu_seconds(replica.pod), tree_cpu_s(replica.pid), time.monotonic() - wall0
    used_cg, used_ps = cg1 - cg0, ps1 - ps0
    assert used_cg > 0.1, f"cpuacct barely moved: {used_cg:.3f}s"
    assert abs(used_cg - used_ps) <= 0.2 * used_ps, (used_cg, used_ps)
    assert abs(cg1 - ps1) <= 0.2 * ps1  # since spawn, too
    assert used_cg / wall < 0.25 * 1.3, f"{used_cg:.2f}s CPU in {wall:.2f}s: quota not applied"
    assert (group.throttled_seconds() or 0.0) > throttled0
    pods = rs.describe()["pods"]
    assert pods[0]["accounting"]["cpu_quota_us"] == 25000


@pytest.mark.slow
def test_without_cgroups_replicas_run_unlimited(
    make_set: Callable[..., ReplicaSet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CGROUP_ROOT_ENV, str(tmp_path / "missing"))
    rs = make_set(cpu_limit_cores=0.25)
    rs.scale_to(1)
    (replica,) = rs.wait_ready(1, READY_S)
    assert isinstance(replica.accounting, ProcessTreeAccounting)
    assert rs.cpu_seconds(replica.pod) > 0.3  # importing kserve alone takes more
    assert (rs.memory_bytes(replica.pod) or 0) > 10 * 2**20
    described = rs.describe()
    assert described["cgroups"]["enforced"] is False and described["cgroups"]["reason"]


@pytest.mark.slow
def test_a_killed_replica_is_restarted_after_the_backoff(
    make_set: Callable[..., ReplicaSet],
) -> None:
    seen = Recorder()
    rs = make_set(on_change=seen.on_change, on_event=seen.on_event, restart_backoff_s=1.0)
    rs.scale_to(1)
    (replica,) = rs.wait_ready(1, READY_S)
    pod, port, pid, started = replica.pod, replica.port, replica.pid, replica.started_s
    accounting, cpu_before = replica.accounting, rs.cpu_seconds(pod)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    rs.wait_for(lambda: rs.ready() == [], 2, "the killed replica unready")
    rs.wait_for(lambda: replica.state == "backoff", 5, "backoff")
    assert replica.restarts == rs.restarts_total == 1
    (event,) = [e for e in seen.events if e["what"] == "replica crashed"]
    assert (event["pod"], event["model"], event["exit_code"]) == (pod, MODEL, -signal.SIGKILL)
    assert event["action"] == "restart in 1 s"
    crashed_at = event["time"]

    (again,) = rs.wait_ready(1, READY_S)
    assert again is replica and (again.pod, again.port) == (pod, port)
    assert again.pid != pid and again.started_s > started  # type: ignore[operator]
    assert again.started_s >= crashed_at + 0.9  # type: ignore[operator]
    assert again.accounting is accounting and rs.cpu_seconds(pod) >= cpu_before
    if isinstance(accounting, ReplicaCgroup):
        assert again.pid in accounting.tasks()  # the same cgroup
    assert len(rs.ready_after_s) == 2 and again.restarts == 1
    rs.wait_for(lambda: seen.changes[-1:] == [(pod,)], 5, "on_change with it")
    assert seen.changes[-3:] == [(pod,), (), (pod,)]
    assert rs.describe()["restarts_total"] == 1
