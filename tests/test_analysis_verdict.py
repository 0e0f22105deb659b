"""The verdict between modes, the simulator against measurement, and leaving out what has
nothing to show: hand-built runs whose every expected number is worked out below.

One model ``m``; plan: ``0-constant`` 20 s (sends 1010..1029, one a second), 40 s idle,
``1-spike`` 20 s (sends 1070..1089); run window 1000..1100; every answer 10 ms unless said.

- hpa: 1 ready replica, 2 during [1020, 1030) and [1080, 1090): replica-s 30 + 30 loaded,
  40 idle -> R_h = 60/40 = 1.5, I_h = 1.0. CPU: pod 1 0.2 cores throughout, pods 2 and 3
  0.3 cores while they are there -> 4 + 3 = 7 CPU-s per pattern.
- knative: 1 ready until 1045, 0 until 1072 (a cold start: the requests sent at 1070 and
  1071 wait, answered after 2500 and 1500 ms), 3 until 1090, 0 after: replica-s 20 and
  18 x 3 = 54 loaded, 15 idle -> R_k = 74/40 = 1.85, I_k = 15/40 = 0.375. CPU: 0.2 x 20 = 4
  and 3 pods x 0.3 x 18 = 16.2. One failed request (1015, HTTP 503).
- break-even idle share: (1.85 - 1.5) / ((1.85 - 1.5) + (1.0 - 0.375)) = 0.35 / 0.975.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kservebench.analysis import fmt, plots, plots_scaling, simcompare, verdict, windows
from kservebench.analysis.report import build_report
from kservebench.analysis.series import make_series
from kservebench.analysis.summary import episodes_of, load_run, summarize
from kservebench.analysis.synthetic import write_folder
from kservebench.records import coerce_records
from kservebench.results import projection_title

FIXTURES = Path(__file__).parent / "fixtures" / "analysis"
T0 = 1000.0
TIMES = np.arange(T0, T0 + 101.0)
PLAN = [
    {"kind": "warmup", "title": "m: warmup", "duration_s": 5.0, "folder": "warmup/m"},
    {"kind": "load", "title": "m: 0-constant", "duration_s": 20.0, "folder": "loads/m/0-constant"},
    {"kind": "cooldown", "title": "m: cooldown", "duration_s": 40.0, "folder": None},
    {"kind": "load", "title": "m: 1-spike", "duration_s": 20.0, "folder": "loads/m/1-spike"},
]
SPEC_PATTERNS = [{"type": "constant", "rate": 1, "duration": "20s"},
                 {"type": "spike", "baseline": 1, "duration": "20s"}]  # fmt: skip
HPA_READY = [(1020, 1030, 2.0), (1080, 1090, 2.0)]  # else 1
KN_READY = [(T0, 1045, 1.0), (1072, 1090, 3.0)]  # else 0
KN_WAIT = {1070.0: 2500.0, 1071.0: 1500.0}
BREAK_EVEN = 0.35 / 0.975


def levels(spans: list[tuple[float, float, float]], default: float, shift: float = 0.0):
    t = TIMES
    values = np.full(len(t), default)
    for start, end, value in spans:
        values[(t >= start) & (t < end)] = value
    return TIMES + shift, values


def records(latency: dict[float, float], failed: tuple[float, ...] = (), shift: float = 0.0):
    rows = []
    for label, first in (("0-constant", 1010.0), ("1-spike", 1070.0)):
        for t in first + np.arange(20.0):
            bad = t in failed
            rows.append({"intended_s": t + shift, "sent_s": t + shift, "model": "m",
                         "latency_ms": 5.0 if bad else latency.get(t, 10.0), "ok": not bad,
                         "status": 503 if bad else 200, "pattern": label})  # fmt: skip
    return coerce_records(pd.DataFrame(rows))


def pod_cpu(pod: str, spans: list[tuple[float, float]], cores: float, shift: float = 0.0):
    t = TIMES
    keep = np.zeros(len(t), dtype=bool)
    for start, end in spans:
        keep |= (t >= start) & (t < end)
    return make_series("cpu_cores", TIMES[keep] + shift, np.full(keep.sum(), cores),
                       model="m", pod=pod, namespace="local")  # fmt: skip


def write_hpa(out: Path) -> Path:
    series = {
        "replicas_ready": [make_series("replicas_ready", *levels(HPA_READY, 1.0), model="m",
                                       namespace="local")],
        "replicas_desired": [make_series("replicas_desired", *levels(
            [(1018, 1028, 2.0), (1078, 1088, 2.0)], 1.0), model="m")],
        "cpu_cores": [pod_cpu("m-predictor-1", [(T0, 1101)], 0.2),
                      pod_cpu("m-predictor-2", [(1020, 1030)], 0.3),
                      pod_cpu("m-predictor-3", [(1080, 1090)], 0.3)],
    }  # fmt: skip
    run = {"kind": "bench", "name": "hpa-run", "mode": "hpa", "slo_ms": 100, "plan": PLAN,
           "started_at": T0, "ended_at": T0 + 100, "status": "finished"}  # fmt: skip
    return write_folder(out, run, records({}), series)


def knative_series(shift: float = 0.0, peak: float = 3.0) -> dict[str, list[pd.DataFrame]]:
    ready = [(T0, 1045, 1.0), (1072, 1090, peak)]
    pods = [f"m-predictor-{i}" for i in range(2, 2 + int(peak))]
    lifecycle: dict[str, list[pd.DataFrame]] = {}
    for k, pod in enumerate(pods[:2]):  # pod 2 is the first ready: it decomposes the episode
        stamps = zip(
            ("pod_created", "pod_scheduled", "pod_started", "pod_ready"),
            np.array([1070.2, 1070.2, 1070.5, 1071.8]) + 0.1 * k + shift,
            strict=True,
        )
        for family, stamp in stamps:
            t = TIMES[(TIMES >= 1071) & (TIMES < 1090)] + shift
            lifecycle.setdefault(family, []).append(
                make_series(family, t, np.full(len(t), stamp), model="m", pod=pod)
            )
    return {
        "replicas_ready": [make_series("replicas_ready", *levels(ready, 0.0, shift), model="m",
                                       namespace="local")],
        "replicas_desired": [make_series("replicas_desired", *levels(
            [(T0, 1040, 1.0), (1070, 1090, peak)], 0.0, shift), model="m")],
        "cpu_cores": [pod_cpu("m-predictor-1", [(T0, 1045)], 0.2, shift)]
        + [pod_cpu(p, [(1072, 1090)], 0.3, shift) for p in pods],
        **lifecycle,
    }  # fmt: skip


def write_knative(out: Path, **extra: object) -> Path:
    run = {
        "kind": "bench",
        "name": "knative-run",
        "mode": "knative",
        "slo_ms": 100,
        "plan": PLAN,
        "started_at": T0,
        "ended_at": T0 + 100,
        "status": "finished",
        **extra,
    }
    return write_folder(out, run, records(KN_WAIT, failed=(1015.0,)), knative_series())


def write_projection(out: Path) -> Path:
    """The knative run as its simulator would replay it: 500 s earlier on its own clock,
    no plan (durations from the spec's patterns), 2 replicas at the peak instead of 3."""
    run = {"kind": "simulate", "simulated": True, "name": "knative-run projection",
           "spec": {"mode": "knative", "patterns": SPEC_PATTERNS},
           "simulated_span": [T0 - 500, T0 - 400], "status": "finished"}  # fmt: skip
    recs = records(KN_WAIT, failed=(1015.0,), shift=-500.0)
    return write_folder(out, run, recs, knative_series(shift=-500.0, peak=2.0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verdict")
    return {"hpa": write_hpa(root / "hpa"), "knative": write_knative(root / "knative")}


# --- windows ----------------------------------------------------------------------------------


def test_pattern_windows_come_from_the_plan_or_the_spec_and_idle_is_between(runs) -> None:
    data = load_run(runs["hpa"])
    spans = windows.pattern_windows(data.records, data.run)
    assert spans.values.tolist() == [["m", "0-constant", 1010.0, 1030.0],
                                     ["m", "1-spike", 1070.0, 1090.0]]  # fmt: skip
    idle = windows.idle_windows(spans)
    assert idle.values.tolist() == [["m", "0-constant", 1030.0, 1070.0]]
    # A simulated run has no plan: the spec's patterns give the same durations.
    spec = windows.pattern_windows(data.records, {"spec": {"patterns": SPEC_PATTERNS}})
    assert spec.equals(spans)
    # Without either, a window ends at its last send.
    bare = windows.pattern_windows(data.records)
    assert bare["end_s"].tolist() == [1029.0, 1089.0]
    # A repeated pattern (same label, a silence longer than the pattern) is two windows.
    again = pd.concat([data.records, data.records.assign(intended_s=data.records["intended_s"]
                                                         + 200, sent_s=data.records["sent_s"]
                                                         + 200)])  # fmt: skip
    twice = windows.pattern_windows(again, data.run)
    assert twice["start_s"].tolist() == [1010.0, 1070.0, 1210.0, 1270.0]
    assert windows.idle_windows(twice)["end_s"].tolist() == [1070.0, 1210.0, 1270.0]
    # Patterns that overlap (the synthetic fixture's) leave no idle time.
    fixture = load_run(FIXTURES / "hpa")
    assert windows.idle_windows(windows.pattern_windows(fixture.records, fixture.run)).empty


# --- the verdict ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        ((1.5, 1.85, 1.0, 0.375), BREAK_EVEN),  # dearer loaded, cheaper idle
        ((2.0, 1.5, 1.0, 0.0), 0.0),  # cheaper both ways
        ((2.0, 2.0, 1.0, 0.0), 0.0),  # equal loaded, cheaper idle
        ((1.0, 1.5, 1.0, 1.0), "never"),  # dearer loaded, equal idle
        ((1.0, 1.5, 0.5, 1.0), "never"),  # dearer both ways
        ((1.5, 1.0, 0.5, 1.0), "never"),  # cheaper loaded, dearer idle: not from idling
        ((1.0, 1.0, 1.0, 1.0), "never"),  # the same
        ((1.0, math.nan, 1.0, 0.0), math.nan),  # unknown
    ],
)
def test_break_even_idle_fraction(rates: tuple[float, ...], expected: float | str) -> None:
    got = verdict.break_even_idle_fraction(*rates)
    if isinstance(expected, str):
        assert got == expected
    elif math.isnan(expected):
        assert isinstance(got, float) and math.isnan(got)
    else:
        assert got == pytest.approx(expected)
        r_h, r_k, i_h, i_k = rates

        def saving(f: float) -> float:  # what Knative saves at idle share f
            return (f * i_h + (1 - f) * r_h) - (f * i_k + (1 - f) * r_k)

        # Equal at the break-even share, Knative cheaper above it (at 0: from the start).
        assert saving(got) == pytest.approx(0.0) if got > 0 else saving(0.0) >= 0
        assert saving(got + 0.01) > 0 and saving(1.0) > 0


def test_cost_rates_loaded_and_idle(runs) -> None:
    assert verdict.cost_rates(load_run(runs["hpa"])) == {
        "m": {"loaded_s": 40.0, "idle_s": 40.0, "loaded_rate": 1.5, "idle_rate": 1.0}
    }
    kn = verdict.cost_rates(load_run(runs["knative"]))["m"]
    assert (kn["loaded_rate"], kn["idle_rate"]) == (pytest.approx(1.85), pytest.approx(0.375))


def test_verdict_per_model_and_pattern(runs) -> None:
    result = verdict.verdict([(load_run(runs["hpa"]), 100.0), (load_run(runs["knative"]), 100.0)])
    assert result is not None and result["modes"] == ["hpa", "knative"]
    rows = {(r["mode"], r["pattern"]): r for r in result["rows"]}
    figures = ("requests", "replica_seconds", "cpu_seconds", "slo_attainment", "p95_ms",
               "cold_starts", "cold_penalty_ms")  # fmt: skip
    expected = {
        ("hpa", "0-constant"): (20, 30.0, 7.0, 1.0, 10.0, 0, 0.0),
        ("hpa", "1-spike"): (20, 30.0, 7.0, 1.0, 10.0, 0, 0.0),
        # the failure is a miss: 19/20 within the SLO; its latency is not a percentile
        ("knative", "0-constant"): (20, 20.0, 4.0, 0.95, 10.0, 0, 0.0),
        # 18 x 10 ms, 1500, 2500: p95 = 1500 + 0.05 x 1000; penalty = 2000 - 10 (warm p50)
        ("knative", "1-spike"): (20, 54.0, 16.2, 0.9, 1550.0, 1, 1990.0),
    }
    for key, values in expected.items():
        assert tuple(rows[key][f] for f in figures) == pytest.approx(values), key
    assert rows[("knative", "1-spike")]["p99_ms"] == pytest.approx(1500 + 0.81 * 1000)
    assert rows[("knative", "1-spike")]["cold_waiting_requests"] == 2
    # Best per figure; ties (same p95, no cold start either side) mark nobody.
    assert rows[("knative", "0-constant")]["better_on"] == ["replica_seconds", "cpu_seconds"]
    assert rows[("hpa", "0-constant")]["better_on"] == ["slo_attainment"]
    assert rows[("hpa", "1-spike")]["better_on"] == [
        "replica_seconds", "cpu_seconds", "slo_attainment", "p95_ms", "p99_ms", "cold_penalty_ms"
    ]  # fmt: skip
    (entry,) = result["scale_to_zero"].values()
    assert entry["break_even_idle_fraction"] == pytest.approx(BREAK_EVEN)
    assert (entry["cold_starts"], entry["cold_waiting_requests"]) == (1, 2)
    assert entry["cold_penalty_p50_ms"] == pytest.approx(1990.0)
    assert entry["reading"].startswith("m: scale to zero pays once the model is idle more than "
                                       "35.90% of the time")  # fmt: skip
    assert (
        "The price is the cold-start penalty: 1 cold start, 2 requests waited" in (entry["reading"])
    )
    # One mode only (or none named): nothing to judge.
    assert verdict.verdict([(load_run(runs["hpa"]), 100.0)]) is None
    assert verdict.verdict([(load_run(FIXTURES / "hpa"), 100.0),
                            (load_run(FIXTURES / "knative"), 100.0)]) is None  # fmt: skip


def test_readings_for_every_outcome() -> None:
    def entry(f: float | str) -> dict:
        rates = {"loaded_rate": 1.0, "idle_rate": 0.5}
        return {"hpa": rates, "knative": rates, "break_even_idle_fraction": f,
                "cold_starts": 0, "cold_waiting_requests": 0,
                "cold_penalty_p50_ms": math.nan}  # fmt: skip

    assert "Knative costs no more replica-seconds than HPA, loaded or idle" in (
        verdict.reading("m", entry(0.0))
    )
    assert "Knative never costs fewer replica-seconds" in verdict.reading("m", entry("never"))
    assert "cannot tell" in verdict.reading("m", entry(math.nan))
    assert "no cold start was measured" in verdict.reading("m", entry(0.0))


def test_report_judges_hpa_against_knative(runs, tmp_path: Path) -> None:
    written = build_report([runs["hpa"], runs["knative"]], tmp_path / "cmp")
    md, page = written["md"].read_text(), written["html"].read_text()
    assert "## Verdict: hpa vs knative" in md and "### When scale to zero pays" in md
    assert ("| model | pattern | mode | run | requests | replica-s | CPU-s | SLO attainment | "
            "p95 (ms) | p99 (ms) | cold starts | cold-start penalty (ms) |") in md  # fmt: skip
    assert ("| m | 0-constant | knative | knative-run | 20 | **20** | **4.0** | 95.00% | 10.0 | "
            "10.0 | 0 | 0.0 |") in md  # fmt: skip
    assert "| m | 1.50 / 1.00 | 1.85 / 0.38 | 35.90% | 1 | 1,990.0 |" in md
    assert "<b>20</b>" in page and "**" not in page
    # The episode, measured: pattern, when, length, who waited and for how long, the pod.
    assert ("| m | 1-spike | 70.0 | 2.50 | 2 | 2,000.0 / 2,500.0 | 10.0 | 1,990.0 | "
            "created→scheduled 0.0, scheduled→started 0.3, started→ready 1.3 "
            "(pod m-predictor-2) |") in md  # fmt: skip
    summary = json.loads(written["json"].read_text())
    assert summary["verdict"]["scale_to_zero"]["m"]["break_even_idle_fraction"] == (
        pytest.approx(BREAK_EVEN)
    )
    assert len(summary["verdict"]["rows"]) == 4 and len(summary["runs"]) == 2
    assert (tmp_path / "cmp" / "plots" / "replicas.png").stat().st_size > 1000
    # The fixtures name no mode: no verdict.
    plain = build_report([FIXTURES / "hpa", FIXTURES / "knative"], tmp_path / "plain")
    assert "Verdict" not in plain["md"].read_text()
    assert "verdict" not in json.loads(plain["json"].read_text())


# --- cold starts from the local plane's series ------------------------------------------------


def test_episodes_from_local_series(runs) -> None:
    (episode,) = episodes_of(load_run(runs["knative"]))
    assert (episode.zero_since_s, episode.first_waiting_s, episode.ready_at_s) == (1045, 1070, 1072)
    assert episode.length_s == pytest.approx(2.5) and episode.waiting_requests == 2
    assert (episode.pattern, episode.cold_p50_ms, episode.cold_max_ms) == ("1-spike", 2000, 2500)
    assert episode.penalty_ms == pytest.approx(1990.0) and episode.waiting_failed == 0
    assert episode.phases_s == pytest.approx({
        "pod": "m-predictor-2", "created_to_scheduled_s": 0.0, "scheduled_to_started_s": 0.3,
        "started_to_ready_s": 1.3,
    })  # fmt: skip
    # A waiting request that failed is counted, and left out of the waiting latencies.
    data = load_run(runs["knative"])
    failed = data.records.copy()
    failed.loc[failed["sent_s"] == 1071.0, ["ok", "status"]] = (False, 504)
    data.records = failed
    (episode,) = episodes_of(data)
    assert episode.waiting_failed == 1 and episode.cold_max_ms == episode.cold_p50_ms == 2500


# --- the simulator against measurement -----------------------------------------------------------


def test_compare_projection_per_model(runs, tmp_path: Path) -> None:
    measured = load_run(runs["knative"])
    projected = load_run(write_projection(tmp_path / "sim"))
    (model,) = (comparison := simcompare.compare_projection(measured, projected, 100.0))
    figures = comparison[model]
    # Span 1010..1090: 35 s x 1, 27 s x 0, 18 s x 3 (measured) or x 2 (simulated).
    assert figures["replica_seconds"] == pytest.approx((89.0, 71.0, (71 - 89) / 89))
    assert figures["max_replicas"] == pytest.approx((3.0, 2.0, -1 / 3))
    assert figures["cold_starts"] == (1.0, 1.0, 0.0)
    p95 = float(np.percentile([10.0] * 37 + [1500.0, 2500.0], 95))  # 39 successful
    assert figures["p95_ms"] == pytest.approx((p95, p95, 0.0))
    assert simcompare.rel_diff(0.0, 0.0) == 0.0 and math.isnan(simcompare.rel_diff(0.0, 1.0))


def _local_with_projection(tmp_path: Path, replicas: str) -> Path:
    entry = {"folder": "simulated", "mode": "knative", "control_plane": "Knative KPA",
             "title": projection_title("knative")}  # fmt: skip
    run = write_knative(tmp_path / "local", target="local", replicas=replicas,
                        simulated_projection=entry)  # fmt: skip
    write_projection(run / "simulated")
    return run


def test_report_sets_the_projection_against_measurement(tmp_path: Path) -> None:
    live = "autoscaled by the local Knative KPA (live control plane)"
    written = build_report([_local_with_projection(tmp_path, live)], tmp_path / "report")
    md = written["md"].read_text()
    assert "### Simulation against measurement" in md
    assert "| replica-seconds | 89 | 71 | -20.2% |" in md
    assert "| cold starts | 1 | 1 | +0.0% |" in md
    assert "Replica trajectories, cold starts and CPU were measured" in md
    assert "The measured numbers show the data plane only" not in md
    assert (tmp_path / "report" / "plots" / "versus_measured_0.png").stat().st_size > 1000
    summary = json.loads(written["json"].read_text())
    versus = summary["simulated_projection"]["versus_measured"]["m"]
    assert versus["replica_seconds"] == pytest.approx([89.0, 71.0, (71 - 89) / 89])
    # Fixed replicas: the series says what the bench started, nothing to compare.
    fixed = build_report([_local_with_projection(tmp_path / "f", "fixed (local target): 1")],
                         tmp_path / "fixed")["md"].read_text()  # fmt: skip
    assert "Simulation against measurement" not in fixed


def test_projection_overlay_and_scale_events(runs, tmp_path: Path) -> None:
    measured = load_run(runs["knative"])
    png = plots_scaling.projection_overlay(measured, load_run(write_projection(tmp_path / "s")))
    assert png is not None and png.startswith(b"\x89PNG")
    desired = make_series("replicas_desired", [0, 1, 2, 3, 4, 5], [1, 1, 2, 2, 3, 1], model="m")
    assert plots_scaling.scale_events(desired) == [(2.0, 2.0, 1), (4.0, 3.0, 1), (5.0, 1.0, -1)]
    summary = summarize(measured)
    inputs = [plots.prepare(measured, summary, 10.0),
              plots.prepare(measured, summary, 10.0, projection=True)]  # fmt: skip
    assert plots_scaling.replicas_per_model(inputs[1:]) is None  # projections: own overlay
    assert plots_scaling.replicas_per_model(inputs).startswith(b"\x89PNG")


# --- leaving out what has nothing to show ------------------------------------------------------


def test_prune_drops_empty_rows_columns_and_tables() -> None:
    frame = pd.DataFrame({
        "model": ["a", "b", "c"], "x": ["1.0", "–", "– / –"], "y": ["–", "–", None],
        "z": [math.nan, 2.0, math.nan],
    })  # fmt: skip
    pruned = fmt.prune(frame, ["model"])
    assert pruned.to_dict(orient="list") == {
        "model": ["a", "b"],
        "x": ["1.0", "–"],
        "z": [pytest.approx(math.nan, nan_ok=True), 2.0],
    }
    assert fmt.prune(frame[["model", "y"]], ["model"]).empty
    assert fmt.prune(frame[["model"]], ["model"]).empty
    assert fmt.is_missing("– / –") and fmt.is_missing(None) and not fmt.is_missing("0")


def test_report_leaves_out_sections_with_nothing_to_show(tmp_path: Path) -> None:
    md = build_report([FIXTURES / "hpa"], tmp_path / "hpa")["md"].read_text()
    # No cold start: no episodes section, no row of dashes in the overview.
    assert "Cold-start episodes" not in md and "cold start p50 / max" not in md
    assert "| cold starts | 0 |" in md
    assert "CPU requested" not in md  # a column no run has
    assert "none" not in md.split("## Run hpa")[1]
    # Without CPU series the resources table keeps what is known: replica-seconds.
    kn = build_report([FIXTURES / "knative"], tmp_path / "kn")["md"].read_text()
    assert "| model | replica-s | over / under replica-s |" in kn
    # Replicas that never change answer no load step: the responsiveness section goes.
    flat = tmp_path / "flat"
    shutil.copytree(FIXTURES / "hpa", flat)
    for family in ("replicas_ready", "replicas_desired"):
        path = flat / "series" / f"{family}.parquet"
        frame = pd.read_parquet(path)
        frame["value"] = 1.0
        frame.to_parquet(path, index=False)
    md = build_report([flat], tmp_path / "flat-report")["md"].read_text()
    assert "Autoscaling responsiveness" not in md and "| replica-seconds | 120 |" in md
