"""Analysis without servers: pure metric functions, the report and the notebook.

Fixture results folders (tests/fixtures/analysis/, made by kservebench.analysis.synthetic):
``hpa`` (two models x two patterns, every canonical family but requests_in_flight) and
``knative`` (simulated, one cold start 20 s -> 32 s, no CPU/memory series).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kservebench.analysis import coldstart, latency, scaling, series
from kservebench.analysis.catalog import CANONICAL, CATALOG, queries_for
from kservebench.analysis.cli import analyze_app, report_app
from kservebench.analysis.collect import chunks, parse_step, tidy
from kservebench.analysis.inflight import in_flight_from_records
from kservebench.analysis.report import build_report
from kservebench.analysis.summary import load_run, slo_from_run
from kservebench.errors import SpecError
from kservebench.records import coerce_records

FIXTURES = Path(__file__).parent / "fixtures" / "analysis"
NOTEBOOK = Path(__file__).parents[1] / "analysis" / "notebooks" / "compare.ipynb"


def gauge(family: str, points: list[tuple[float, float]], **labels: str) -> pd.DataFrame:
    frame = pd.DataFrame(points, columns=["time_s", "value"]).astype("float64")
    frame["family"] = family
    for key, value in labels.items():
        frame[key] = value
    return frame


# --- series arithmetic ---------------------------------------------------------------------


def test_histogram_quantile_interpolates_like_promql() -> None:
    bounds = np.array([0.1, 0.2, 0.4, math.inf])
    cumulative = np.array([10.0, 30.0, 40.0, 40.0])
    # rank 0.5*40 = 20 lies in (0.1, 0.2]: 10 below, 20 inside -> 0.1 + 0.1 * 10/20
    assert series.histogram_quantile(0.5, bounds, cumulative) == pytest.approx(0.15)
    # lowest bucket starts at 0
    assert series.histogram_quantile(0.1, bounds, cumulative) == pytest.approx(0.04)
    # a rank in +Inf answers the highest finite bound
    assert series.histogram_quantile(0.99, bounds, np.array([1.0, 1.0, 1.0, 5.0])) == 0.4
    assert math.isnan(series.histogram_quantile(0.5, bounds, np.zeros(4)))


def test_counter_increase_survives_resets_gaps_and_nan() -> None:
    frame = gauge("c", [(0, 5), (1, 7), (2, math.nan), (4, 10), (5, 2), (6, 4)], pod="a")
    inc = series.counter_increases(frame)
    # 5 is history before the window; +2, +3 across the gap, reset to 2 counts 2, then +2
    assert inc["increase"].tolist() == [0, 2, 3, 2, 2]
    born = series.counter_increases(frame, born_after_s=-1.0)
    assert born["increase"].sum() == 5 + 9
    two = pd.concat([frame, gauge("c", [(0, 1), (1, 4)], pod="b")])
    total = series.total_increase(two, ["pod"], -1.0, 10.0)
    assert dict(zip(total["pod"], total["increase"], strict=True)) == {"a": 14.0, "b": 4.0}


def test_integrate_step_caps_gaps_and_handles_empty_windows() -> None:
    t, v = np.array([0.0, 10.0, 100.0]), np.array([1.0, 2.0, 3.0])
    assert series.integrate_step(t, v, 0, 20) == pytest.approx(10 + 20)
    # the 90 s gap holds the value for at most 30 s
    assert series.integrate_step(t, v, 0, 110) == pytest.approx(10 + 60 + 30)
    assert series.integrate_step(np.array([]), np.array([]), 0, 10) == 0.0
    assert series.integrate_step(t, v, 50, 50) == 0.0


# --- latency ---------------------------------------------------------------------------------


def records_frame(rows: list[dict]) -> pd.DataFrame:
    return coerce_records(pd.DataFrame(rows))


def test_latency_throughput_errors_and_slo() -> None:
    rows = [
        {"intended_s": i, "sent_s": i, "latency_ms": float(i + 1), "ok": True, "status": 200}
        for i in range(100)
    ]
    rows += [{"intended_s": 100, "sent_s": 100, "ok": False, "status": 503}]
    rows += [{"intended_s": 101, "sent_s": 101, "ok": False, "unfinished": True}]
    recs = records_frame(rows)
    summary = latency.client_summary(recs, slo_ms=50.0)
    assert summary["latency_ms"]["p50"] == pytest.approx(50.5)
    assert summary["latency_ms"]["max"] == 100.0
    assert summary["error_rate"] == pytest.approx(2 / 102)
    assert summary["slo_attainment"] == pytest.approx(50 / 102)
    over = latency.over_time(recs, window_s=10.0)
    assert over["offered_rps"].iloc[0] == pytest.approx(1.0)
    assert len(over) == 11
    assert latency.client_summary(records_frame([]), 50.0)["requests"] == 0
    assert math.isnan(latency.latency_percentiles(np.array([math.nan]))["p95"])


def test_slo_comes_from_the_run_spec() -> None:
    assert slo_from_run({"spec": {"slo": {"latency_ms": 250}}}) == 250.0
    assert slo_from_run({"spec": {"slo_latency_ms": 80}}) == 80.0
    assert slo_from_run({"spec": {}}) is None


def test_per_model_and_pattern_table() -> None:
    data = load_run(FIXTURES / "hpa")
    table = latency.by_model_pattern(data.records, 100.0)
    assert sorted(zip(table["model"], table["pattern"], strict=True)) == [
        ("sklearn-small", "steady"), ("sklearn-small", "step"),
        ("xgboost-small", "steady"), ("xgboost-small", "step"),
    ]  # fmt: skip
    assert table["requests"].sum() == len(data.records)
    step = table[table["pattern"] == "step"]["throughput_rps"]
    steady = table[table["pattern"] == "steady"]["throughput_rps"]
    assert (step.to_numpy() > steady.to_numpy()).all()  # the step pattern triples its rate


def test_server_quantiles_from_buckets() -> None:
    rows = []
    for t, counts in ((0, (0, 0, 0)), (1, (8, 10, 10)), (2, (16, 20, 20))):
        for le, c in zip(("0.1", "0.2", "+Inf"), counts, strict=True):
            rows.append({"time_s": float(t), "value": float(c), "le": le, "model": "m"})
    frame = pd.DataFrame(rows)
    frame["family"] = "predict_seconds_bucket"
    q = latency.server_quantiles(frame, 0.0, 2.0)
    # 20 observations, 16 <= 0.1: p50 = 0.1 * 10/16, p90 = 0.1 + 0.1 * (18-16)/4
    assert q.loc["m", "p50"] == pytest.approx(0.0625)
    assert q.loc["m", "p90"] == pytest.approx(0.15)


# --- cold starts and scaling -------------------------------------------------------------------


def test_cold_start_from_series_only_and_with_records() -> None:
    ready = gauge("replicas_ready", [(t, 0.0 if 10 <= t < 75 else 1.0) for t in range(100)],
                  model="m")  # fmt: skip
    flight = gauge("requests_in_flight", [(t, 3.0 if 15 <= t < 75 else 0.0) for t in range(100)],
                   model="m")  # fmt: skip
    (episode,) = coldstart.cold_start_episodes(ready, in_flight=flight)
    assert (episode.zero_since_s, episode.first_waiting_s, episode.ready_at_s) == (10, 15, 75)
    assert episode.length_s == 60.0
    recs = records_frame(
        [{"sent_s": s, "intended_s": s, "latency_ms": (75.5 - s) * 1000, "ok": True,
          "model": "m"} for s in (15.0, 30.0, 74.0)]
        + [{"sent_s": s, "intended_s": s, "latency_ms": 20.0, "ok": True, "model": "m"}
           for s in (2.0, 80.0, 90.0)]
    )  # fmt: skip
    (episode,) = coldstart.cold_start_episodes(ready, recs, flight)
    assert episode.length_s == pytest.approx(60.5)
    assert episode.waiting_requests == 3
    assert episode.penalty_ms == pytest.approx(45_500 - 20)
    # no requests waiting while at zero -> scaled to zero and back, but no cold start
    assert coldstart.cold_start_episodes(ready, records_frame([])) == []
    assert coldstart.cold_start_episodes(None) == []


def test_cold_start_decomposition_from_pod_lifecycle() -> None:
    ready = gauge("replicas_ready", [(0, 0), (40, 1)], model="m")
    flight = gauge("requests_in_flight", [(0, 0), (5, 1), (40, 0)], model="m")
    lifecycle = {
        name: gauge(name, [(t, stamp) for t in (30, 40)], model="m", pod="m-predictor-x")
        for name, stamp in zip(coldstart.LIFECYCLE, (10.0, 12.0, 20.0, 39.0), strict=True)
    }
    (episode,) = coldstart.cold_start_episodes(ready, in_flight=flight, lifecycle=lifecycle)
    assert episode.phases_s == {
        "pod": "m-predictor-x", "created_to_scheduled_s": 2.0, "scheduled_to_started_s": 8.0,
        "started_to_ready_s": 19.0,
    }  # fmt: skip


def test_load_steps_responsiveness_and_provisioning() -> None:
    sends = list(np.arange(0, 30, 0.5)) + list(np.arange(30, 60, 0.1))
    recs = records_frame([{"intended_s": s, "sent_s": s, "ok": True} for s in sends])
    offered = scaling.offered_rps(recs)
    assert scaling.detect_load_steps(offered) == [30.0]
    desired = gauge("replicas_desired", [(0, 1), (38, 2), (41, 3), (59, 3)])
    (row,) = scaling.responsiveness(desired, [30.0], end_s=60.0)
    assert (row["first_change_s"], row["settled_s"], row["settled_replicas"]) == (8, 11, 3)
    ready = gauge("replicas_ready", [(t, 1 if t < 40 else 2 if t < 43 else 3) for t in range(61)])
    prov = scaling.provisioning(ready, offered, rps_per_replica=4.0, start_s=0.0, end_s=60.0)
    # needed 1 until 30 s, then ceil(10/4) = 3: short by 2 for 10 s and by 1 for 3 s
    assert prov["under_replica_seconds"] == pytest.approx(23.0)
    assert prov["over_replica_seconds"] == 0.0
    assert prov["replica_seconds"] == pytest.approx(40 + 6 + 51)
    assert math.isnan(scaling.provisioning(ready, offered, None, 0, 60)["over_replica_seconds"])


def test_utilization_and_cpu_per_request() -> None:
    cpu = pd.concat([gauge("cpu_cores", [(t, 0.5) for t in range(11)], model="m", pod=p)
                     for p in ("a", "b")])  # fmt: skip
    req = gauge("cpu_requests_cores", [(0, 2.0), (10, 2.0)], model="m", pod="a")
    usage = scaling.utilization({"cpu_cores": cpu, "cpu_requests_cores": req}, {"m": 500}, 0, 10)
    assert usage["m"]["cpu_cores_mean"] == pytest.approx(1.0)
    assert usage["m"]["cpu_utilization"] == pytest.approx(0.5)
    assert usage["m"]["cpu_seconds"] == pytest.approx(10.0)
    assert usage["m"]["cpu_seconds_per_1k"] == pytest.approx(20.0)
    assert math.isnan(usage["m"]["memory_bytes_mean"])


# --- catalog and collection helpers --------------------------------------------------------------


def test_catalog_covers_canonical_families_and_both_knative_generations() -> None:
    assert set(CANONICAL) <= set(CATALOG)
    sources = {q.source for f in CATALOG.values() for q in f.queries}
    assert {"knative<=1.18", "knative>=1.19", "kube-state-metrics", "cadvisor", "vllm"} <= sources
    assert [q.source for q in queries_for("cpu_cores", "local")] == ["process-local"]
    with pytest.raises(SpecError, match="families"):
        queries_for("nope")
    assert parse_step("500ms") == 0.5
    with pytest.raises(SpecError, match="step"):
        parse_step("fast")
    windows = chunks(0, 25_000, 1.0)
    assert windows[0] == (0, 10_000) and windows[-1][1] == 25_000 and len(windows) == 3
    frame = tidy([{"metric": {"__name__": "x", "model": "m"}, "values": [[1, "2"], [2, "NaN"]]}],
                 "fam")  # fmt: skip
    assert list(frame.columns) == ["time_s", "value", "family", "model"]
    assert frame["value"].isna().tolist() == [False, True]


# --- report --------------------------------------------------------------------------------------


def test_report_compares_folders_and_labels_simulated(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    written = build_report([FIXTURES / "hpa", FIXTURES / "knative"], out)
    summary = json.loads(written["json"].read_text())
    hpa, knative = summary["runs"]
    for key in ("latency_ms", "throughput_rps", "error_rate", "slo_attainment", "cold_starts",
                "replica_seconds", "cpu_seconds_per_1k"):  # fmt: skip
        assert key in hpa and key in knative
    assert knative["simulated"] and not hpa["simulated"]
    assert knative["cold_starts"]["count"] == 1
    (episode,) = knative["cold_starts"]["episodes"]
    start = knative["window"]["start_s"]
    assert (episode["zero_since_s"] - start, episode["ready_at_s"] - start) == (20.0, 32.0)
    recs = load_run(FIXTURES / "knative").records
    waiting = recs[(recs["sent_s"] >= start + 20) & (recs["sent_s"] < start + 32)]
    first_response = (waiting["sent_s"] + waiting["latency_ms"] / 1000).min()
    assert episode["length_s"] == pytest.approx(first_response - waiting["sent_s"].min())
    assert episode["waiting_requests"] == len(waiting)
    assert hpa["cold_starts"]["count"] == 0
    assert "cpu_cores" in knative["missing_families"]
    html = written["html"].read_text()
    md = written["md"].read_text()
    assert "knative (simulated)" in md and "SIMULATED run" in html
    assert "data:image/png;base64," in html and "<img" in html
    assert "missing metric families: requests_in_flight, memory_bytes, cpu_cores" in md or (
        "missing metric families:" in md and "cpu_cores" in md
    )
    for pattern in ("steady", "step"):
        assert f"| sklearn-small | {pattern} |" in md and f"| xgboost-small | {pattern} |" in md
    assert (out / "plots" / "cold_starts.png").stat().st_size > 1000


def test_report_renders_when_series_are_missing(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    shutil.copytree(FIXTURES / "hpa", run)
    shutil.rmtree(run / "series")
    result = CliRunner().invoke(report_app, [str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    md = (run / "report" / "report.md").read_text()
    assert "missing metric families: replicas_ready, replicas_desired, cpu_cores" in md
    # No series at all, yet the records tell how many requests were in flight.
    assert "requests_in_flight ← records" in md
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["replica_seconds"] is None
    assert (run / "report" / "report.html").exists()


def test_in_flight_counts_requests_sent_and_not_yet_answered() -> None:
    t0 = 1000.0
    records = coerce_records(pd.DataFrame({
        "model": ["a", "a", "a", "b", "b"],
        "sent_s": [t0 + 0.5, t0 + 1.2, t0 + 3.0, t0 + 1.0, math.nan],  # b's 2nd never sent
        "latency_ms": [2000.0, 300.0, math.nan, 1000.0, math.nan],  # a's 3rd never answered
        "unfinished": [False, False, True, False, True],
    }))  # fmt: skip
    frame = in_flight_from_records(records)
    assert (frame["family"] == "requests_in_flight").all()
    counts = {m: g.set_index("time_s")["value"].to_dict() for m, g in frame.groupby("model")}
    # a: [0.5, 2.5) and [1.2, 1.5) and [3.0, end); b: [1.0, 2.0) — answered at 2.0 exactly.
    assert counts["a"] == {t0: 0, t0 + 1: 1, t0 + 2: 1, t0 + 3: 1}
    assert counts["b"] == {t0: 0, t0 + 1: 1, t0 + 2: 0, t0 + 3: 0}
    # Half-second steps see the short request too.
    half = in_flight_from_records(records, step_s=0.5)
    a = half[half["model"] == "a"].set_index("time_s")["value"]
    assert a[t0 + 1.0] == 1 and a[t0 + 1.5] == 1 and a[t0 + 0.5] == 1
    assert in_flight_from_records(records.iloc[0:0]).empty


def _with_projection(tmp_path: Path, entry: dict) -> Path:
    """The hpa fixture as a measured run with the knative fixture as its projection."""
    run = tmp_path / "measured"
    shutil.copytree(FIXTURES / "hpa", run)
    shutil.copytree(FIXTURES / "knative", run / "simulated")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "simulated_projection": entry}))
    return run


def test_report_shows_the_simulated_projection_beside_the_measured_run(tmp_path: Path) -> None:
    title = "Simulated Knative KPA projection (calibrated from this run)"
    entry = {"folder": "simulated", "mode": "knative", "control_plane": "Knative KPA",
             "title": title}  # fmt: skip
    run = _with_projection(tmp_path, entry)
    written = build_report([run], tmp_path / "report")
    alone = json.loads(build_report([FIXTURES / "hpa"], tmp_path / "alone")["json"].read_text())
    summary = json.loads(written["json"].read_text())
    # The measured numbers are the measured run's alone: no simulated request mixed in.
    assert summary["requests"] == alone["requests"] and not summary["simulated"]
    assert summary["by_model_pattern"] == alone["by_model_pattern"]
    projected = summary["simulated_projection"]
    assert projected["title"] == title and projected["summary"]["simulated"]
    assert projected["summary"]["cold_starts"]["count"] == 1
    assert projected["summary"]["replica_seconds"] > 0
    rows = projected["summary"]["replicas_by_pattern"]
    assert [(r["model"], r["pattern"]) for r in rows] == [
        ("sklearn-small", "steady"), ("sklearn-small", "step")
    ]  # fmt: skip
    assert all(0 <= r["replicas_min"] <= r["replicas_mean"] <= r["replicas_max"] for r in rows)
    md = written["md"].read_text()
    assert f"## {title} — hpa" in md and "SIMULATED, not measured" in md
    assert "### Simulated replicas over time, per pattern" in md
    assert "| metric | hpa | hpa Knative KPA projection (simulated) |" in md  # side by side


def test_a_failed_projection_is_reported_missing(tmp_path: Path) -> None:
    run = _with_projection(tmp_path, {"error": "SpecError: no requests", "mode": "hpa"})
    written = build_report([run], tmp_path / "report")
    md = written["md"].read_text()
    assert "Simulated HPA projection (calibrated from this run): missing (SpecError: no req" in md
    summary = json.loads(written["json"].read_text())
    assert summary["simulated_projection"]["summary"] is None and summary["requests"] > 0


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(report_app, [str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such results folder" in result.output and "Traceback" not in result.output
    (tmp_path / "run.json").write_text(json.dumps({"started_at": 10.0, "ended_at": None}))
    result = CliRunner().invoke(analyze_app, [str(tmp_path), "--prometheus", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "ended_at" in result.output


def test_notebook_runs_on_fixture_results(monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    results = os.pathsep.join(str(FIXTURES / d) for d in ("hpa", "knative"))
    monkeypatch.setenv("KSERVEBENCH_RESULTS", results)
    monkeypatch.setenv("PYTHONSAFEPATH", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = json.dumps([o.get("data", {}).get("text/plain", "") for o in outputs])
    assert "knative (simulated)" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4


def test_report_says_replicas_were_fixed_on_the_local_target(tmp_path: Path) -> None:
    run = tmp_path / "local"
    shutil.copytree(FIXTURES / "hpa", run)
    info = json.loads((run / "run.json").read_text())
    fixed = "fixed (local target): 1 per model, no autoscaler"
    (run / "run.json").write_text(json.dumps({**info, "target": "local", "replicas": fixed}))
    written = build_report([run], tmp_path / "report")
    md = written["md"].read_text()
    assert f"hpa: replicas {fixed}. The measured numbers show the data plane only" in md
    assert "target local" in md
    summary = json.loads(written["json"].read_text())
    assert summary["target"] == "local" and summary["replicas"] == fixed
    # A cluster run carries no such note.
    plain = build_report([FIXTURES / "hpa"], tmp_path / "plain")["md"].read_text()
    assert "The measured numbers show the data plane only" not in plain
