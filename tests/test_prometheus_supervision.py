"""The local Prometheus for a run: file_sd targets that come and go, and supervision.

Real Prometheus, real scrapes of ``prometheus_client`` exporters in this process:

- config and file_sd files (no Prometheus process): labelled static targets, file_sd jobs,
  the file_sd JSON that ``set_targets`` writes;
- a Prometheus killed with SIGKILL is restarted by the supervisor on the same TSDB and
  port: the samples from before the kill are still there (WAL replay), scraping resumes,
  and the gap is the downtime plus Prometheus' target-reload ticks (5 s each);
- a file_sd target added with pod / namespace labels is scraped with them; removed, its
  ``up`` goes stale;
- a Prometheus that cannot come back (its port taken) is retried with backoff, recovers
  when it can, and is given up after ``max_restarts`` in a row.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from kservebench.analysis.prometheus_local import (
    Incident,
    LocalPrometheus,
    PrometheusSupervisor,
    scrape_config,
)
from kservebench.errors import SpecError
from kservebench.procs import wait_until

# Prometheus applies target changes on two 5 s ticks (discovery, then the scrape manager),
# so the first scrape after a restart lands ~6 s later (measured), at worst ~11 s.
RELOAD_DELAY_S = 11.0


class Ticks(Collector):
    """A counter that grows with time: seconds since the exporter started."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "kb_ticks", "seconds since start", value=time.monotonic() - self.t0
        )


@pytest.fixture
def exporter() -> Iterator[Callable[[], str]]:
    """Factory: a /metrics server on a free loopback port; returns its host:port."""
    servers = []

    def start() -> str:
        registry = CollectorRegistry()
        registry.register(Ticks())
        server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def raw_samples(prom: LocalPrometheus, selector: str, since: float) -> list[tuple[float, float]]:
    """All samples of one series after ``since`` (a range-vector instant query)."""
    window_s = int(time.time() - since) + 2
    (series,) = prom.query(f"{selector}[{window_s}s]")
    return [(float(t), float(v)) for t, v in series["values"] if float(t) > since]


# --- config and target files ------------------------------------------------------------


def test_scrape_config_labels_and_file_sd() -> None:
    plain = scrape_config({"a": ["127.0.0.1:1", "127.0.0.1:2"]}, "1s")
    assert plain["scrape_configs"] == [
        {"job_name": "a", "scrape_interval": "1s", "scrape_timeout": "1s",
         "static_configs": [{"targets": ["127.0.0.1:1", "127.0.0.1:2"]}]},
    ]  # fmt: skip
    local = {"namespace": "local"}
    mixed = scrape_config(
        {"a": ["127.0.0.1:1", ("127.0.0.1:2", local), ("127.0.0.1:3", local)]},
        "1s",
        file_sd={"a": "targets/a.json", "m": "targets/m.json"},
        refresh_interval="2s",
    )
    job_a, job_m = mixed["scrape_configs"]
    assert job_a["static_configs"] == [
        {"targets": ["127.0.0.1:1"]},
        {"targets": ["127.0.0.1:2", "127.0.0.1:3"], "labels": local},
    ]
    assert job_a["file_sd_configs"] == [{"files": ["targets/a.json"], "refresh_interval": "2s"}]
    assert job_m["job_name"] == "m" and "static_configs" not in job_m
    with pytest.raises(SpecError, match=r"targets\.a\[0\]\.labels"):
        scrape_config({"a": [("127.0.0.1:1", {"bad-name": "x"})]}, "1s")
    with pytest.raises(SpecError, match="expected host:port"):
        scrape_config({"a": [("localhost", {})]}, "1s")
    with pytest.raises(SpecError, match="not one string"):
        scrape_config({"a": "127.0.0.1:1"}, "1s")  # type: ignore[dict-item]


def test_set_targets_writes_file_sd_json(tmp_path: Path) -> None:
    prom = LocalPrometheus(data_dir=tmp_path, dynamic_jobs=["m"])  # not started
    path = tmp_path / "targets" / "m.json"
    assert json.loads(path.read_text()) == []
    config = (tmp_path / "prometheus.yml").read_text()
    assert "file_sd_configs" in config and "targets/m.json" in config
    pod1 = {"pod": "m-predictor-1", "namespace": "local"}
    pod2 = {"pod": "m-predictor-2", "namespace": "local"}
    prom.set_targets("m", [("127.0.0.1:1234", pod1), ("127.0.0.1:1235", pod2)])
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:1234"], "labels": pod1},
        {"targets": ["127.0.0.1:1235"], "labels": pod2},
    ]
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]  # no temporary left
    assert prom._up_selector("m", "127.0.0.1:1234") == 'up{job="m",instance="127.0.0.1:1234"}'
    with pytest.raises(SpecError, match="not a dynamic job"):
        prom.set_targets("other", [])
    with pytest.raises(SpecError, match="names its file"):
        LocalPrometheus(data_dir=tmp_path / "x", dynamic_jobs=["../m"])


# --- real Prometheus ----------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_restart_keeps_tsdb_and_port(exporter, tmp_path: Path) -> None:
    address = exporter()
    pod = {"pod": "m-predictor-1", "namespace": "local"}
    prom = LocalPrometheus(
        {"static": [(address, {"namespace": "local"})]}, "1s", tmp_path / "prom",
        dynamic_jobs=["m"],
    )  # fmt: skip
    events: list[Incident] = []
    with PrometheusSupervisor(prom, on_event=events.append, interval_s=0.5) as supervisor:
        url, port = prom.url, prom.port
        prom.set_targets("m", [(address, pod)])
        prom.wait_for_target("static", address)
        t_first = time.time()
        time.sleep(5.0)
        old_pid = prom.process.pid
        os.kill(old_pid, signal.SIGKILL)
        t_kill = time.time()
        wait_until(lambda: bool(events), 20.0, "the restart incident")
        (incident,) = supervisor.incidents
        assert events == [incident]
        assert incident["what"] == "prometheus exited with code -9 (SIGKILL)"
        assert incident["action"] == "restarted on the same TSDB"
        assert 0 < incident["down_s"] < 5.0
        assert t_kill - 1 < incident["time"] < t_kill + 1
        assert supervisor.state == "up" and supervisor.restarts == 1
        assert prom.process.pid != old_pid and (prom.url, prom.port) == (url, port)
        prom.wait_for_target("static", address, timeout_s=20.0, since=t_kill)
        t_back = time.time()
        prom.wait_for_target("m", address, timeout_s=20.0, since=t_kill)  # file_sd re-read
        time.sleep(5.0)

        samples = raw_samples(prom, 'kb_ticks_total{job="static",namespace="local"}', t_first - 2)
        before = [t for t, _ in samples if t < t_kill]
        after = [t for t, _ in samples if t > t_kill]
        assert len(before) >= 4 and before[0] <= t_first + 1  # the WAL replay kept them
        assert len(after) >= 4
        values = [v for _, v in samples]
        assert values == sorted(values)  # the same counter, growing across the gap
        gaps = [b - a for a, b in zip(before + after, (before + after)[1:], strict=False)]
        assert max(gaps) <= incident["down_s"] + RELOAD_DELAY_S, gaps
        print(
            f"\nrestart: down {incident['down_s']:.2f} s, gap {max(gaps):.2f} s, "
            f"kill -> first scrape {t_back - t_kill:.2f} s"
        )


@pytest.mark.slow
def test_file_sd_targets_come_and_go(exporter, tmp_path: Path) -> None:
    a, b = exporter(), exporter()
    local = {"namespace": "local"}
    with LocalPrometheus({"exporter": [(a, local)]}, dynamic_jobs=["m"]) as prom:
        prom.wait_for_target("exporter", a)
        (series,) = prom.query('kb_ticks_total{job="exporter"}')
        assert series["metric"]["namespace"] == "local" and series["metric"]["instance"] == a

        pod1 = {"pod": "m-predictor-1", **local}
        pod2 = {"pod": "m-predictor-2", **local}
        t0 = time.monotonic()
        prom.set_targets("m", [(b, pod1), (a, pod2)])
        prom.wait_for_target("m", b, timeout_s=20.0)
        prom.wait_for_target("m", a, timeout_s=5.0)
        added_s = time.monotonic() - t0
        got = {
            (s["metric"]["pod"], s["metric"]["namespace"], s["metric"]["instance"])
            for s in prom.query('kb_ticks_total{job="m"}')
        }
        assert got == {("m-predictor-1", "local", b), ("m-predictor-2", "local", a)}

        t0 = time.monotonic()
        prom.set_targets("m", [(a, pod2)])  # replica 1 stopped
        prom.wait_for_target_gone("m", b, timeout_s=20.0)
        removed_s = time.monotonic() - t0
        (up,) = prom.query('up{job="m"}')
        assert up["metric"]["pod"] == "m-predictor-2"
        assert not prom.query('kb_ticks_total{pod="m-predictor-1"}')
        print(f"\nfile_sd: added -> scraped {added_s:.2f} s, removed -> stale {removed_s:.2f} s")


@pytest.mark.slow
def test_restart_backoff_recovery_and_give_up(tmp_path: Path) -> None:
    prom = LocalPrometheus(data_dir=tmp_path / "prom")
    supervisor = PrometheusSupervisor(prom, max_restarts=3, backoff_s=0.5, stable_s=60.0)
    events: list[Incident] = []
    supervisor.on_event = events.append

    def kill_and_take_port() -> socket.socket:
        os.kill(prom.process.pid, signal.SIGKILL)
        prom.process.popen.wait(timeout=10)
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", prom.port))
        squatter.listen()
        return squatter

    def drive_until(done: Callable[[], bool], what: str) -> None:
        wait_until(lambda: (supervisor.check(), done())[1], 20.0, what, interval_s=0.05)

    with supervisor:
        assert supervisor.check()
        squatter = kill_and_take_port()
        drive_until(lambda: len(events) >= 1, "a failed restart")
        assert "before it was ready" in events[0]["what"]
        assert "address already in use" in events[0]["what"]
        assert events[0]["action"] == "restarting in 0.5 s (try 2 of 3)"
        squatter.close()  # the port is free again: the next try succeeds
        drive_until(lambda: supervisor.state == "up", "recovery")
        assert events[1]["action"] == "restarted on the same TSDB (try 2 of 3)"
        assert events[1]["what"] == "prometheus exited with code -9 (SIGKILL)"

        # Dies again within stable_s: the count goes on, one more try, then give up.
        squatter = kill_and_take_port()
        try:
            drive_until(lambda: supervisor.state == "failed", "giving up")
        finally:
            squatter.close()
        assert events[-1]["action"] == "gave up after 3 restarts in a row; no metrics from now on"
        assert "address already in use" in events[-1]["what"]
        assert len(events) == 3 and supervisor.incidents == events
        assert not supervisor.check() and not prom.process.alive()
        with pytest.raises(RuntimeError, match="failed"):
            supervisor.wait_up(1.0)
    assert supervisor.state == "stopped" and prom.stopped
