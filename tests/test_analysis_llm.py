"""LLM records and the LLM part of the report.

Records are written by the loadgen's own ``RecordWriter`` (or built by hand: records are
data), series in the collected format (``collect.tidy`` of a range-query answer, saved by
``save_collection``). The slow tests stream tokens from ``kservebench.loadgen.endpoint``
through the real ``kservebench loadgen`` into a report, and send vLLM's gauges through a
real Prometheus.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kservebench.analysis import llm
from kservebench.analysis.collect import (
    Collection,
    collect,
    prometheus_range_query,
    save_collection,
    tidy,
)
from kservebench.analysis.prometheus_local import LocalPrometheus, remote_write, wait_for_series
from kservebench.analysis.report import build_report
from kservebench.loadgen.launch import run_loadgen
from kservebench.loadgen.recorder import RecordWriter
from kservebench.procs import ManagedProcess, free_port, http_ok
from kservebench.records import (
    LLM_COLUMNS,
    RECORD_COLUMNS,
    coerce_records,
    empty_records,
    read_records,
    tpot_ms,
)

FIXTURES = Path(__file__).parent / "fixtures" / "analysis"
BASE = 1_700_000_000.0
SLOS = {"ttft_ms": 500.0, "itl_ms": 50.0, "e2e_ms": 10_000.0}


def record(t: float, **fields: object) -> dict[str, object]:
    """A successful streaming request sent at BASE + t (fields override)."""
    row: dict[str, object] = {
        "intended_s": BASE + t, "sent_s": BASE + t, "latency_ms": 2000.0, "status": 200,
        "ok": True, "model": "llama", "pattern": "0-constant", "ttft_ms": 200.0,
        "itl_ms": 20.0, "prompt_tokens": 100, "output_tokens": 91,
    }  # fmt: skip
    return {**row, **fields}


def failed(t: float, **fields: object) -> dict[str, object]:
    """A request that failed before any token: no LLM values."""
    unknown = dict.fromkeys(("ttft_ms", "itl_ms", "prompt_tokens", "output_tokens"))
    return record(t, **{"ok": False, "status": 500, "error": "HTTP 500", **unknown, **fields})


def frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    return coerce_records(pd.DataFrame(rows), llm=True)


# --- records -------------------------------------------------------------------------------------


def test_tpot_is_the_time_per_token_after_the_first() -> None:
    assert tpot_ms(1000.0, 100.0, 10) == pytest.approx(100.0)
    assert tpot_ms(1000.0, 100.0, "10") == pytest.approx(100.0)
    for tokens in (1, 0, None, ""):  # fewer than two tokens: no gap to time
        assert math.isnan(tpot_ms(1000.0, 100.0, tokens))
    assert math.isnan(tpot_ms(math.nan, 100.0, 10)) and math.isnan(tpot_ms(1000.0, None, 10))


def test_record_writer_writes_tpot_and_read_records_keeps_llm_columns(tmp_path: Path) -> None:
    llm_dir, tab_dir = tmp_path / "run" / "llm", tmp_path / "run" / "tabular"
    writer = RecordWriter(llm_dir, "llama", "0-constant", llm=True)
    stats = {"ttft_ms": 100.0, "itl_ms": 11.0, "prompt_tokens": 5, "output_tokens": 10}
    for i, (tokens, latency) in enumerate(((10, 1000.0), (1, 300.0))):
        rid = writer.register(BASE + i, "steady")
        writer.complete(rid, BASE + i, latency, 200, "", 64, llm={**stats, "output_tokens": tokens})
    rid = writer.register(BASE + 2, "steady")
    writer.complete(rid, BASE + 2, 5.0, 0, "ConnectionRefusedError", 0)  # no stream at all
    writer.register(BASE + 3, "steady")
    assert writer.finish_unfinished() == 1
    writer.close()
    header = pd.read_csv(llm_dir / "records.csv", nrows=0).columns.tolist()
    assert header == [*RECORD_COLUMNS, *LLM_COLUMNS]

    back = read_records(llm_dir)
    assert back.dtypes[list(LLM_COLUMNS)].astype(str).tolist() == list(LLM_COLUMNS.values())
    assert back["tpot_ms"].iloc[0] == pytest.approx((1000.0 - 100.0) / 9)
    assert back["tpot_ms"].iloc[1:].isna().all()  # one token; failed; unfinished
    assert back["output_tokens"].tolist()[:2] == [10, 1]
    assert back["output_tokens"].iloc[2:].isna().all()  # unknown, not zero
    assert back["unfinished"].tolist() == [False, False, False, True]

    # A tabular run never grows LLM columns; a folder with both keeps them (NaN on tabular).
    tabular = coerce_records(pd.DataFrame({"intended_s": [BASE], "sent_s": [BASE], "ok": [True],
                                           "latency_ms": [3.0], "model": ["sk"]}))  # fmt: skip
    assert list(tabular.columns) == list(RECORD_COLUMNS)
    tab_dir.mkdir(parents=True)
    tabular.to_csv(tab_dir / "records.csv", index=False)
    assert list(read_records(tab_dir).columns) == list(RECORD_COLUMNS)
    both = read_records(tmp_path / "run")
    assert list(both.columns) == [*RECORD_COLUMNS, *LLM_COLUMNS] and len(both) == 5
    assert both.loc[both["model"] == "sk", "output_tokens"].isna().all()
    assert list(empty_records(llm=True).columns) == list(both.columns)
    assert list(coerce_records(both, llm=False).columns) == list(RECORD_COLUMNS)

    # A file written before tpot_ms existed gets it from e2e, TTFT and output tokens.
    old = tmp_path / "old"
    old.mkdir()
    pd.read_csv(llm_dir / "records.csv").drop(columns="tpot_ms").to_csv(
        old / "records.csv", index=False
    )
    assert read_records(old)["tpot_ms"].iloc[0] == pytest.approx(100.0)
    # Only a header: still an (empty) LLM frame.
    (old / "records.csv").write_text(",".join([*RECORD_COLUMNS, *LLM_COLUMNS]) + "\n")
    assert list(read_records(old).columns) == [*RECORD_COLUMNS, *LLM_COLUMNS]


# --- per model and pattern ------------------------------------------------------------------------


def test_goodput_counts_failures_and_timeouts_as_misses() -> None:
    rows = [record(float(t)) for t in range(10)]  # every SLO met
    rows += [failed(10.0), failed(11.0, status=503, error="HTTP 503")]
    rows += [
        failed(12.0, status=0, error="unfinished", unfinished=True),
        failed(13.0, status=0, error="ConnectionTimeout: timed out"),
        failed(14.0, status=504, error="HTTP 504"),
    ]
    # A failure after a slow stream: its huge latency must stay out of the percentiles.
    rows.append(record(15.0, ok=False, status=200, error="stream ended without [DONE]",
                       latency_ms=90_000.0, ttft_ms=60_000.0))  # fmt: skip
    records = frame(rows)
    assert llm.outcomes(records).value_counts().to_dict() == {
        "ok": 10, "failed": 3, "timed out": 3,
    }  # fmt: skip
    (row,) = llm.pattern_table(records, {}, SLOS).to_dict(orient="records")
    assert (row["requests"], row["ok"], row["failed"], row["timed_out"]) == (16, 10, 3, 3)
    assert row["ttft_p99_ms"] == 200.0 and row["e2e_p99_ms"] == 2000.0
    assert row["e2e_mean_ms"] == 2000.0 and row["tpot_p50_ms"] == pytest.approx(1800 / 90)
    # Span: first arrival (0 s) to the last response (15 s + 90 s), the failed one's.
    assert row["duration_s"] == pytest.approx(105.0)
    assert row["goodput_rps"] == pytest.approx(10 / 105.0)
    assert row["slo_attainment"] == pytest.approx(10 / 16)
    assert row["ttft_ms_attainment"] == pytest.approx(10 / 16)
    assert row["output_tokens_per_s"] == pytest.approx(10 * 91 / 105.0)
    assert row["total_tokens_per_s"] == pytest.approx(10 * 191 / 105.0)


def test_any_subset_of_slos() -> None:
    rows = [
        record(0.0),
        record(1.0, ttft_ms=900.0),  # late first token
        record(2.0, latency_ms=20_000.0, itl_ms=210.0),  # slow stream
        record(3.0, output_tokens=1, itl_ms=None, latency_ms=250.0),  # one token: no gaps
        record(4.0, ttft_ms=None, itl_ms=None, output_tokens=0),  # ok, but never a token
        failed(5.0),
    ]
    records = frame(rows)
    met = {
        key: llm.meets_slo(records, key, SLOS[key]).tolist()
        for key in ("ttft_ms", "itl_ms", "e2e_ms")
    }
    assert met == {
        "ttft_ms": [True, False, True, True, False, False],
        "itl_ms": [True, True, False, True, True, False],
        "e2e_ms": [True, True, False, True, True, False],
    }
    assert llm.meets_slos(records, SLOS).tolist() == [True, False, False, True, False, False]
    assert llm.meets_slos(records, {"ttft_ms": 1000}).tolist() == [True] * 4 + [False] * 2
    # No SLO at all: goodput is the successful requests.
    assert llm.meets_slos(records, {}).tolist() == [True] * 5 + [False]
    assert np.isnan(records["tpot_ms"].iloc[3])  # derived: one token has no TPOT
    (row,) = llm.pattern_table(records, {}, {"e2e_ms": 10_000}).to_dict(orient="records")
    assert row["slo_attainment"] == pytest.approx(4 / 6)
    assert "ttft_ms_attainment" not in row and row["e2e_ms_attainment"] == pytest.approx(4 / 6)


def test_slos_come_from_the_run_spec_else_defaults() -> None:
    run = {"spec": {"slo": {"latency_ms": 100, "ttft_ms": 300, "itl_ms": "fast", "e2e_ms": -1,
                            "tpot_ms": True}}}  # fmt: skip
    assert llm.pick_slos(run) == ({"ttft_ms": 300.0}, "run spec")
    assert llm.pick_slos({"spec": {"slo": {"latency_ms": 100}}}) == (llm.DEFAULT_SLOS, "default")
    assert llm.pick_slos({"spec": ["not", "a", "mapping"]})[1] == "default"
    assert llm.pick_slos(run, {"e2e_ms": 5000}) == ({"e2e_ms": 5000.0}, "given")


def test_patterns_follow_the_runs_windows() -> None:
    rows = [record(float(t)) for t in range(5)]
    rows += [record(100.0 + t, pattern="1-spike", ttft_ms=800.0) for t in range(5)]
    rows += [record(float(t), model="other") for t in range(3)]
    records = frame(rows)
    plan = [{"kind": "load", "duration_s": 10.0, "folder": "loads/llama/0-constant"},
            {"kind": "load", "duration_s": 10.0, "folder": "loads/llama/1-spike"}]  # fmt: skip
    table = llm.pattern_table(records, {"plan": plan}, {"ttft_ms": 500})
    mine = table[table["model"] == "llama"].set_index("pattern")
    assert mine["requests"].to_dict() == {"0-constant": 5, "1-spike": 5}
    # Planned 10 s; the last response (4 s + 2 s) lands inside it.
    assert mine.loc["0-constant", "duration_s"] == pytest.approx(10.0)
    assert mine.loc["1-spike", "slo_attainment"] == 0.0
    assert set(table["model"]) == {"llama", "other"}
    tabular = coerce_records(pd.DataFrame({"intended_s": [BASE], "model": ["sk"]}))
    assert llm.llm_models(tabular) == [] and llm.pattern_table(tabular, {}, SLOS).empty


# --- vLLM series ----------------------------------------------------------------------------------


def range_result(metric: str, labels: dict[str, str], values: list[float]) -> dict:
    """One series of a Prometheus range-query answer (catalog query: model_name -> model)."""
    return {
        "metric": {"__name__": metric, "model": labels.get("model_name", ""), **labels},
        "values": [[BASE + i, str(v)] for i, v in enumerate(values)],
    }


def vllm_collection(seconds: int = 30) -> Collection:
    """Two pods of model llama, the second with two engines; KV usage 0 -> 0.9."""
    half = seconds // 2
    values = {
        "vllm_kv_cache_usage": ("vllm:kv_cache_usage_perc", list(np.linspace(0.0, 0.9, seconds))),
        "vllm_requests_running": ("vllm:num_requests_running", [2.0] * seconds),
        "vllm_requests_waiting": ("vllm:num_requests_waiting", [0.0] * half + [3.0] * half),
    }
    pods = {"llama-predictor-a": [{}], "llama-predictor-b": [{"engine": "0"}, {"engine": "1"}]}
    results: dict[str, list[dict]] = {f: [] for f in values}
    for pod, engines in pods.items():
        for engine in engines:
            labels = {"namespace": "bench", "pod": pod, "model_name": "llama", **engine}
            for family, (metric, points) in values.items():
                results[family].append(range_result(metric, labels, points))
    frames = {family: tidy(result, family) for family, result in results.items()}
    return Collection(frames=frames, sources=dict.fromkeys(frames, "vllm"))


def test_replica_series_per_pod_over_time() -> None:
    tidy_frame = llm.replica_series(vllm_collection().frames)
    assert list(tidy_frame.columns) == llm.SERIES_COLUMNS
    assert set(tidy_frame["replica"]) == {"llama-predictor-a", "llama-predictor-b"}
    running = tidy_frame[tidy_frame["metric"] == "requests_running"]
    # Two engines of pod b: running requests add up, KV usage does not.
    assert running.groupby("replica")["value"].max().to_dict() == {
        "llama-predictor-a": 2.0, "llama-predictor-b": 4.0,
    }  # fmt: skip
    kv = tidy_frame[tidy_frame["metric"] == "kv_cache_usage"]
    assert kv.groupby("replica")["value"].max().round(6).to_dict() == {
        "llama-predictor-a": 0.9, "llama-predictor-b": 0.9,
    }  # fmt: skip
    # Locally a replica is its scrape instance.
    local = tidy([range_result("vllm:num_requests_waiting", {"instance": "127.0.0.1:8001",
                                                             "job": "llama"}, [1.0, 2.0])],
                 "vllm_requests_waiting")  # fmt: skip
    local_tidy = llm.replica_series({"vllm_requests_waiting": local})
    assert set(local_tidy["replica"]) == {"127.0.0.1:8001"}
    table = llm.replica_table(tidy_frame).set_index("replica")
    assert table.loc["llama-predictor-b", "requests_waiting_max"] == 6.0
    assert llm.replica_series({}).empty


# --- the report -----------------------------------------------------------------------------------


def llm_run(path: Path, with_series: bool = True) -> Path:
    rows = [record(float(t)) for t in range(20)]
    rows += [record(20.0, ttft_ms=900.0), failed(21.0),
             failed(22.0, status=0, error="unfinished", unfinished=True)]  # fmt: skip
    path.mkdir(parents=True)
    frame(rows).to_csv(path / "records.csv", index=False)
    run = {"kind": "bench", "name": "llm-run", "mode": "hpa", "started_at": BASE - 2,
           "ended_at": BASE + 30, "spec": {"slo": {"latency_ms": 100, "ttft_ms": 500,
                                                    "e2e_ms": 10_000}}}  # fmt: skip
    (path / "run.json").write_text(json.dumps(run))
    if with_series:
        save_collection(path, vllm_collection())
    return path


def test_report_has_an_llm_section_with_kv_and_queue_plots(tmp_path: Path) -> None:
    written = build_report([llm_run(tmp_path / "run")], tmp_path / "report")
    md = written["md"].read_text()
    for heading in ("### LLM serving: token latency per model and pattern",
                    "### LLM serving: tokens/s, goodput and SLO attainment",
                    "### LLM serving: vLLM engine per replica"):  # fmt: skip
        assert heading in md
    assert "SLOs (from the run's spec): TTFT ≤ 500 ms, e2e ≤ 10,000 ms." in md
    assert "| llama | 0-constant | 23 | 21 / 1 / 1 |" in md
    assert "llama-predictor-b" in md
    assert "![llama: KV-cache usage and queue per replica](plots/llm_kv_queue_0_0.png)" in md
    png = tmp_path / "report" / "plots" / "llm_kv_queue_0_0.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "LLM serving: token latency" in written["html"].read_text()
    served = json.loads(written["json"].read_text())["llm"]
    assert served["slos"] == {"ttft_ms": 500.0, "e2e_ms": 10_000.0}
    (row,) = served["by_model_pattern"]
    assert row["slo_attainment"] == pytest.approx(20 / 23)
    assert row["timed_out"] == 1 and row["failed"] == 1

    # Without vLLM series: one line says so, no empty section or plot.
    bare = build_report([llm_run(tmp_path / "bare", with_series=False)], tmp_path / "bare-r")
    md = bare["md"].read_text()
    assert llm.NO_SERIES in md and "vLLM engine per replica" not in md
    assert "llm_kv_queue" not in md


def test_a_tabular_run_has_no_llm_section(tmp_path: Path) -> None:
    written = build_report([FIXTURES / "hpa"], tmp_path / "report")
    assert "LLM serving" not in written["md"].read_text()
    assert "llm" not in json.loads(written["json"].read_text())
    assert not list((tmp_path / "report" / "plots").glob("llm_*"))


@pytest.mark.slow
def test_streamed_tokens_from_loadgen_to_the_report(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "kservebench.loadgen.endpoint", "--port", str(port),
            "--tokens", "6", "--token-delay-ms", "40"]  # fmt: skip
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    url = f"http://127.0.0.1:{port}"
    with ManagedProcess(argv, tmp_path / "endpoint.log", env=env) as server:
        server.wait_ready(lambda: http_ok(url + "/"), 30, "endpoint")
        pattern = {"type": "constant", "rate": 4, "duration": "2s"}
        summary = run_loadgen(url, "tiny", pattern, tmp_path / "run", "constant", timeout_s=120,
                              protocol="openai", chat=True, prompt=["hello"])  # fmt: skip
    assert summary["ok"] == summary["requests"] == 8
    records = read_records(tmp_path / "run")
    assert (records["output_tokens"] == 6).all() and str(records["output_tokens"].dtype) == "Int64"
    # The last five tokens come 40 ms apart: TPOT is about the token delay.
    assert records["tpot_ms"].median() == pytest.approx(40, abs=15)
    # e2e = TTFT + 5 x TPOT, up to the CSV's three decimals.
    e2e = (records["ttft_ms"] + 5 * records["tpot_ms"]).to_numpy()
    assert e2e == pytest.approx(records["latency_ms"].to_numpy(), abs=0.01)
    md = build_report([tmp_path / "run"], tmp_path / "report")["md"].read_text()
    assert "### LLM serving: token latency per model and pattern" in md
    assert "| tiny | constant | 8 | 8 / 0 / 0 |" in md
    assert llm.NO_SERIES in md


# --- through a real Prometheus -----------------------------------------------------------------


@pytest.mark.slow
def test_vllm_gauges_through_prometheus_per_pod(tmp_path: Path) -> None:
    base = float(math.floor(time.time()) - 120)
    t = np.arange(0, 61, 1.0)
    pushed = []
    for pod, scale in (("llama-predictor-a", 1.0), ("llama-predictor-b", 2.0)):
        labels = {"namespace": "bench", "pod": pod, "model_name": "llama", "engine": "0"}
        for name, values in (
            ("vllm:kv_cache_usage_perc", np.minimum(t / 60.0 * scale, 1.0)),
            ("vllm:num_requests_running", np.full(len(t), 4.0 * scale)),
            ("vllm:num_requests_waiting", np.where(t >= 30, scale, 0.0)),
        ):
            samples = [(base + a, float(v)) for a, v in zip(t, values, strict=True)]
            pushed.append(({"__name__": name, **labels}, samples))
    with LocalPrometheus(data_dir=tmp_path / "prom") as prom:
        remote_write(prom.url, pushed)
        wait_for_series(prom, "vllm:num_requests_waiting", at=base + 60)
        got = collect(prometheus_range_query(prom.url), base, base + 60, "1s", target="cluster",
                      families=list(llm.GAUGES), namespace="bench")  # fmt: skip
    assert not got.errors and got.sources == dict.fromkeys(llm.GAUGES, "vllm")
    tidy_frame = llm.replica_series(got.frames)
    assert set(tidy_frame["model"]) == {"llama"}
    table = llm.replica_table(tidy_frame).set_index("replica")
    assert table["requests_running_max"].to_dict() == {
        "llama-predictor-a": 4.0, "llama-predictor-b": 8.0,
    }  # fmt: skip
    assert table.loc["llama-predictor-b", "kv_cache_usage_max"] == pytest.approx(1.0)
    waiting = tidy_frame[(tidy_frame["metric"] == "requests_waiting")
                         & (tidy_frame["replica"] == "llama-predictor-b")]  # fmt: skip
    assert waiting.loc[waiting["value"] > 0, "time_s"].min() == base + 30
