"""`kservebench loadgen` end to end, against real local servers.

Each load runs the real command as a child process (Locust's gevent patching stays out
of the test process). Servers: a real KServe ModelServer (``shared_model_server``) and
``kservebench.loadgen.endpoint`` (a small real uvicorn app with a chosen delay, and an
OpenAI-style token stream). Rates are checked on the records' intended times and on
the schedule, which do not depend on how busy the CPU is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kservebench.loadgen.launch import run_loadgen
from kservebench.loadgen.patterns import arrival_offsets, parse_pattern
from kservebench.loadgen.summary import interarrival_cv
from kservebench.procs import ManagedProcess, free_port, http_ok, kservebench_argv
from kservebench.records import RECORD_COLUMNS, read_records
from kservebench.results import read_run

ENV = {**os.environ, "PYTHONSAFEPATH": "1", "CI": "1"}


def loadgen(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kservebench_argv("loadgen", *args),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout_s,
    )


def run_ok(*args: str, timeout_s: float = 120) -> dict:
    done = loadgen(*args, timeout_s=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "summary.json").read_text())


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Callable[..., ManagedProcess]]:
    """Factory: a running endpoint with the given flags; ``.url`` set on the process."""
    started: list[ManagedProcess] = []

    def start(*flags: str) -> ManagedProcess:
        port = free_port()
        argv = [sys.executable, "-m", "kservebench.loadgen.endpoint", "--port", str(port)]
        proc = ManagedProcess([*argv, *flags], tmp_path / f"endpoint-{port}.log", env=ENV)
        started.append(proc.start())
        proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        proc.wait_ready(lambda: http_ok(proc.url + "/"), 30, "endpoint")  # type: ignore[attr-defined]
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.mark.slow
def test_open_loop_poisson_against_kserve(shared_model_server, tmp_path: Path) -> None:
    server = shared_model_server("sklearn-small")
    out = tmp_path / "run"
    summary = run_ok(
        "--url",
        server.url,
        "--model",
        "sklearn-small",
        "--pattern",
        "constant",
        "--rate",
        "50",
        "--duration",
        "20s",
        "--arrival",
        "poisson",
        "--seed",
        "0",
        "--out",
        str(out),
    )
    schedule = arrival_offsets(
        parse_pattern({"type": "constant", "rate": 50, "duration": 20}), "poisson", 0
    )
    records = read_records(out)
    assert len(records) == len(schedule) == summary["requests"]  # one record per request
    assert summary["errors"] == 0 and summary["unfinished"] == 0
    assert records["ok"].all() and (records["status"] == 200).all()
    assert summary["achieved_rps"] == pytest.approx(50, rel=0.05)
    intended = records["intended_s"].to_numpy()
    assert np.allclose(np.sort(intended) - intended.min(), schedule - schedule[0], atol=1e-4)
    assert interarrival_cv(intended) == pytest.approx(1.0, abs=0.15)
    assert interarrival_cv(records["sent_s"].to_numpy()) == pytest.approx(1.0, abs=0.2)
    for key in ("p50", "p90", "p95", "p99", "max"):
        assert summary["latency_ms"][key] > 0
    assert set(summary["send_lag_ms"]) >= {"p50", "p99"}
    header = (out / "records.csv").open().readline().strip().split(",")
    assert header == list(RECORD_COLUMNS)
    run = read_run(out)
    assert run["kind"] == "loadgen" and run["status"] == "finished" and run["ended_at"]
    assert (out / "locust" / "locust_stats.csv").stat().st_size > 0
    assert (out / "locust" / "report.html").exists()


@pytest.mark.slow
def test_open_loop_holds_the_rate_where_closed_loop_collapses(endpoint, tmp_path: Path) -> None:
    slow = endpoint("--delay-ms", "200")
    common = (
        "--url",
        slow.url,
        "--model",
        "m",
        "--instances",
        "[[1, 2]]",
        "--pattern",
        "constant",
        "--rate",
        "40",
        "--duration",
        "8s",
    )
    open_summary = run_ok(*common, "--arrival", "constant", "--out", str(tmp_path / "open"))
    closed_summary = run_ok(
        *common, "--arrival", "closed", "--users", "4", "--out", str(tmp_path / "closed")
    )
    assert open_summary["achieved_rps"] == pytest.approx(40, rel=0.05)
    assert open_summary["ok"] == open_summary["requests"] == 320
    assert open_summary["latency_ms"]["p50"] >= 200
    # 4 users that wait ~200 ms per response cannot offer more than ~20 req/s.
    assert closed_summary["achieved_rps"] < 25
    assert closed_summary["errors"] == 0


@pytest.mark.slow
def test_patterns_drive_the_load(endpoint, tmp_path: Path) -> None:
    server = endpoint()
    spec = tmp_path / "steps.yaml"
    spec.write_text(
        "type: steps\nstages:\n"
        "  - {duration: 2s, rate: 20, name: low}\n"
        "  - {duration: 2s, rate: 0, name: idle}\n"
        "  - {duration: 2s, rate: 60, name: high}\n"
    )
    out = tmp_path / "run"
    summary = run_ok(
        "--url",
        server.url,
        "--model",
        "m",
        "--instances",
        "[[1]]",
        "--protocol",
        "v2",
        "--pattern-file",
        str(spec),
        "--pattern-label",
        "2-steps",
        "--arrival",
        "constant",
        "--out",
        str(out),
    )
    records = read_records(out)
    assert records.groupby("phase").size().to_dict() == {"low": 40, "high": 120}
    # The label names the pattern in the records and the summary; the type is kept too.
    assert set(records["pattern"]) == {"2-steps"}
    assert summary["pattern"] == "2-steps" and summary["pattern_type"] == "steps"
    assert summary["phases"]["high"]["requests"] == 120
    start = records["intended_s"].min()
    sent = records["sent_s"] - start
    assert sent[records["phase"] == "low"].max() < 2.5  # sent on the pattern's clock
    assert sent[records["phase"] == "high"].min() > 3.9
    assert (records["pod"] == "endpoint-0").all()  # the pod header is recorded
    history = pd.read_csv(out / "locust" / "locust_stats_history.csv")
    assert history["Total Request Count"].max() == 160  # Locust saw the same requests


@pytest.mark.slow
def test_killed_server_gives_error_records_and_a_summary(endpoint, tmp_path: Path) -> None:
    server = endpoint("--delay-ms", "20")
    out = tmp_path / "run"
    args = (
        "--url",
        server.url,
        "--model",
        "m",
        "--instances",
        "[[1]]",
        "--pattern",
        "constant",
        "--rate",
        "20",
        "--duration",
        "10s",
        "--arrival",
        "constant",
        "--timeout",
        "5s",
        "--out",
        str(out),
    )
    with subprocess.Popen(
        kservebench_argv("loadgen", *args),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as load:
        # Kill the server once records show it answering (records.csv is flushed each second).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and load.poll() is None:
            path = out / "records.csv"
            if path.exists() and len(path.read_text().splitlines()) > 30:
                break
            time.sleep(0.2)
        server.stop(grace_s=0.1)
        _, stderr = load.communicate(timeout=120)
    assert load.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    records = read_records(out)
    assert len(records) == 200 == summary["requests"]
    assert summary["ok"] >= 30 and summary["errors"] >= 30
    assert set(records["pattern"]) == {"constant"} == {summary["pattern"]}  # default label
    failed = records[~records["ok"]]
    assert (failed["status"] == 0).all() and (failed["error"] != "").all()
    assert failed["intended_s"].min() > records.loc[records["ok"], "intended_s"].min()
    assert read_run(out)["status"] == "finished"


@pytest.mark.slow
def test_requests_in_flight_at_the_end_are_recorded_unfinished(endpoint, tmp_path: Path) -> None:
    stuck = endpoint("--delay-ms", "30000")
    out = tmp_path / "run"
    began = time.monotonic()
    summary = run_ok(
        "--url",
        stuck.url,
        "--model",
        "m",
        "--instances",
        "[[1]]",
        "--pattern",
        "constant",
        "--rate",
        "10",
        "--duration",
        "2s",
        "--arrival",
        "constant",
        "--drain-timeout",
        "1s",
        "--out",
        str(out),
    )
    assert time.monotonic() - began < 25  # the drain timeout, not the server, ended it
    records = read_records(out)
    assert len(records) == 20 == summary["unfinished"]
    assert records["unfinished"].all() and records["latency_ms"].isna().all()
    assert (records["sent_s"] >= records["intended_s"]).all()


@pytest.mark.slow
def test_openai_streaming_measures_tokens(endpoint, tmp_path: Path) -> None:
    llm = endpoint("--tokens", "6", "--token-delay-ms", "40")
    out = tmp_path / "run"
    summary = run_ok(
        "--url",
        llm.url,
        "--model",
        "tiny",
        "--protocol",
        "openai",
        "--chat",
        "--prompt",
        "hello",
        "--pattern",
        "constant",
        "--rate",
        "4",
        "--duration",
        "3s",
        "--arrival",
        "constant",
        "--out",
        str(out),
    )
    assert summary["ok"] == summary["requests"] == 12
    raw = pd.read_csv(out / "records.csv")
    assert (raw["output_tokens"] == 6).all() and (raw["prompt_tokens"] == 5).all()
    assert raw["ttft_ms"].between(35, 200).all()
    assert raw["itl_ms"].median() == pytest.approx(40, abs=15)
    assert (raw["latency_ms"] >= 6 * 40).all()  # the whole stream, not just the headers


def test_bad_spec_exits_with_a_clear_message(tmp_path: Path) -> None:
    done = loadgen(
        "--url",
        "http://127.0.0.1:9",
        "--model",
        "m",
        "--instances",
        "[[1]]",
        "--pattern",
        "steps",
        "--set",
        "stages=[{duration: 1s, rate: -3}]",
        "--out",
        str(tmp_path / "x"),
    )
    assert done.returncode == 2
    assert "pattern.stages[0].rate" in done.stderr and "-3" in done.stderr
    assert "Traceback" not in done.stderr
    done = loadgen(
        "--url",
        "http://127.0.0.1:9",
        "--model",
        "m",
        "--instances",
        "[[1]]",
        "--duration",
        "2x",
        "--rate",
        "1",
        "--out",
        str(tmp_path / "y"),
    )
    assert done.returncode == 2 and "pattern.duration" in done.stderr
    done = loadgen(
        "--url", "http://127.0.0.1:9", "--model", "m", "--instances", "[[1]]",
        "--rate", "1", "--duration", "1s", "--pattern-label", " ", "--out", str(tmp_path / "z"),
    )  # fmt: skip
    assert done.returncode == 2 and "pattern_label" in done.stderr


@pytest.mark.slow
def test_launch_runs_the_command_from_a_spec(endpoint, tmp_path: Path) -> None:
    server = endpoint()
    spec = {
        "type": "spike",
        "baseline": 5,
        "spike_rate": 50,
        "spike_at": 1,
        "spike_duration": 1,
        "duration": 3,
    }
    summary = run_loadgen(
        server.url,
        "m",
        spec,
        tmp_path / "run",
        arrival="constant",
        instances="[[1]]",
        drain_timeout="5s",
        timeout_s=120,
    )
    assert summary["phases"]["burst"]["requests"] == 50
    assert summary["phases"]["baseline"]["requests"] == 10
    assert (tmp_path / "run" / "pattern.yaml").exists()


@pytest.mark.slow
def test_ctrl_c_keeps_the_records_and_writes_the_summary(endpoint, tmp_path: Path) -> None:
    slow = endpoint("--delay-ms", "2000")
    out = tmp_path / "run"
    args = ("--url", slow.url, "--model", "m", "--instances", "[[1]]", "--rate", "20",
            "--duration", "60s", "--out", str(out))  # fmt: skip
    load = ManagedProcess(kservebench_argv("loadgen", *args), tmp_path / "lg.log", env=ENV)
    with load:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and load.alive():
            path = out / "records.csv"
            if path.exists() and len(path.read_text().splitlines()) > 5:
                break
            time.sleep(0.2)
        os.killpg(load.pid, signal.SIGINT)  # as the bench (or a user's Ctrl-C) stops it
        load.popen.wait(timeout=30)
    summary = json.loads((out / "summary.json").read_text())
    assert read_run(out)["status"] == "interrupted"
    assert summary["ok"] >= 5 and summary["unfinished"] > 0
    assert summary["requests"] == len(read_records(out)) == summary["ok"] + summary["unfinished"]
    assert summary["duration_s"] < 30  # summarised over the time it ran
