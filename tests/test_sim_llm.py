"""The simulated LLM fleet: engines at step granularity, routing, start-up, draining,
the controller hook, and records that count every arrival."""

from __future__ import annotations

import numpy as np
import pytest

from kservebench.errors import SpecError
from kservebench.llm.engine import Engine, run_until_idle
from kservebench.llm.request import RequestOverheads
from kservebench.loadgen.patterns import parse_pattern
from kservebench.records import RECORD_COLUMNS
from kservebench.sim.llm_fleet import FleetSignals, LlmFleet
from kservebench.sim.llm_workload import (
    LLM_RECORD_COLUMNS,
    LlmWorkload,
    fixed_lengths,
    workload_from_pattern,
)

VARIANT = "llama-3.1-8b-h100"


def varied_lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(20, 600, n), rng.integers(1, 300, n)


def workload(times, prompt=200, max_tokens=100) -> LlmWorkload:
    n = len(times)
    return LlmWorkload(np.asarray(times, float), np.full(n, prompt), np.full(n, max_tokens))


def test_single_replica_fleet_matches_the_engine_run_directly():
    pattern = parse_pattern({"type": "constant", "rate": 15, "duration": "20s"})
    w = workload_from_pattern(pattern, "poisson", varied_lengths, seed=4)
    overheads = RequestOverheads(queue_entry_s=0.002, token_delivery_s=0.001, finish_s=0.003)
    tight = {"num_gpu_blocks": 300}  # KV pressure: waiting and preemptions in the run too
    # Samples and controller ticks advance the engine at times of their own: no effect.
    fleet = LlmFleet(
        VARIANT,
        1,
        engine_overrides=tight,
        overheads=overheads,
        sample_s=0.25,
        controller=lambda now, signals: None,
        interval_s=0.1,
    )
    result = fleet.run(w)
    engine = Engine(fleet.config, fleet.step_time, overheads)
    arrivals = [
        (str(k), int(p), int(m), float(a))
        for k, (a, p, m) in enumerate(zip(w.arrival_s, w.prompt_tokens, w.max_tokens, strict=True))
    ]
    direct = run_until_idle(engine, arrivals)
    rec = result.records
    assert len(rec) == len(w) and rec["ok"].all()
    assert rec["num_preemptions"].sum() > 0
    assert rec["ttft_ms"].tolist() == [(r.first_token_s - r.arrival_s) * 1000 for r in direct]
    assert rec["latency_ms"].tolist() == [(r.finished_s - r.arrival_s) * 1000 for r in direct]
    assert rec["output_tokens"].tolist() == w.max_tokens.tolist()
    assert rec["num_preemptions"].tolist() == [r.num_preemptions for r in direct]
    itl = [r.decode_time_s / (r.output_tokens - 1) * 1000 for r in direct if r.output_tokens > 1]
    assert rec["itl_ms"].dropna().tolist() == pytest.approx(itl, rel=1e-12)
    # tpot = (e2e - ttft) / (n - 1): the finish overhead makes it a little above the ITL
    multi = rec[rec["output_tokens"] > 1]
    expected = (multi["latency_ms"] - multi["ttft_ms"]) / (multi["output_tokens"] - 1)
    assert multi["tpot_ms"].to_numpy() == pytest.approx(expected.to_numpy())
    assert (multi["tpot_ms"] > multi["itl_ms"]).all()
    assert result.steps == engine.steps
    assert list(rec.columns) == list(LLM_RECORD_COLUMNS)
    assert list(rec.columns[: len(RECORD_COLUMNS)]) == list(RECORD_COLUMNS)
    assert set(rec["pattern"]) == {"constant"} and set(rec["phase"]) == {"steady"}


def test_reading_gauges_at_every_arrival_leaves_each_replica_run_unchanged():
    # least_requests advances every engine to each arrival; each replica's requests, run
    # through an engine of their own afterwards, must come out the same.
    pattern = parse_pattern({"type": "constant", "rate": 30, "duration": "10s"})
    w = workload_from_pattern(pattern, "poisson", varied_lengths, seed=2)
    fleet = LlmFleet(VARIANT, 3, routing="least_requests", engine_overrides={"num_gpu_blocks": 200})
    rec = fleet.run(w).records
    assert rec["pod"].nunique() == 3 and rec["num_preemptions"].sum() > 0
    for _, mine in rec.groupby("pod"):
        engine = Engine(fleet.config, fleet.step_time)
        arrivals = [
            (str(k), int(w.prompt_tokens[k]), int(w.max_tokens[k]), float(w.arrival_s[k]))
            for k in mine.index
        ]
        direct = run_until_idle(engine, arrivals)
        assert mine["ttft_ms"].tolist() == [(r.first_token_s - r.arrival_s) * 1e3 for r in direct]
        assert mine["latency_ms"].tolist() == [(r.finished_s - r.arrival_s) * 1e3 for r in direct]


def test_round_robin_takes_every_replica_in_turn():
    fleet = LlmFleet(VARIANT, 4, routing="round_robin")
    rec = fleet.run(workload(np.arange(40) * 0.05)).records
    assert rec["pod"].tolist() == [f"llama-3.1-8b-sim-{k % 4}" for k in range(40)]


def test_least_requests_spreads_a_burst_and_avoids_a_busy_replica():
    burst = LlmFleet(VARIANT, 4, routing="least_requests")
    rec = burst.run(workload(np.zeros(8))).records  # 8 requests at the same instant
    assert rec["pod"].value_counts().tolist() == [2, 2, 2, 2]
    # A long request keeps replica 0 busy; short ones spaced out never land there.
    times = np.concatenate([[0.0], 0.1 + np.arange(30) * 0.2])
    w = LlmWorkload(times, np.full(31, 100), np.concatenate([[3000], np.full(30, 20)]))
    rec = LlmFleet(VARIANT, 3, routing="least_requests").run(w).records
    assert rec["pod"].iloc[0] == "llama-3.1-8b-sim-0"
    assert rec["latency_ms"].iloc[0] > 6000  # still running while the others arrive
    assert (rec["pod"].iloc[1:] != "llama-3.1-8b-sim-0").all()


def test_kv_aware_prefers_the_replica_with_the_emptier_cache():
    # Replica 0 holds a 6000-token prompt, replica 1 a 100-token one: both hold one
    # request, so least-requests alternates, KV-aware keeps choosing replica 1.
    times = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    prompts = np.array([6000, 100, 100, 100, 100, 100])
    w = LlmWorkload(times, prompts, np.full(6, 2000))
    kv = LlmFleet(VARIANT, 2, routing="kv_aware").run(w).records
    assert kv["pod"].str[-1].tolist() == ["0", "1", "1", "1", "1", "1"]
    least = LlmFleet(VARIANT, 2, routing="least_requests").run(w).records
    assert least["pod"].str[-1].tolist() == ["0", "1", "0", "1", "0", "1"]


def test_requests_at_zero_replicas_wait_for_start_up_and_their_ttft_includes_it():
    fleet = LlmFleet(VARIANT, 0, startup_s=30.0)
    fleet.scale_to(1, at_s=5.0)
    times = np.array([1.0, 2.0, 3.0, 40.0])
    result = fleet.run(workload(times))
    rec = result.records
    assert rec["ok"].all() and rec["cold"].tolist() == [True, True, True, False]
    assert rec["router_wait_ms"].tolist() == pytest.approx([34000, 33000, 32000, 0])
    held = rec.iloc[:3]
    assert (held["ttft_ms"] > (35.0 - times[:3]) * 1000).all()
    assert (held["ttft_ms"] < (35.5 - times[:3]) * 1000).all()
    assert rec["ttft_ms"].iloc[3] < 500
    counts = result.replica_counts
    assert counts[["time_s", "desired", "pending", "ready"]].values.tolist() == [
        [0.0, 0, 0, 0],
        [5.0, 1, 1, 0],
        [35.0, 1, 0, 1],
    ]
    assert result.replicas[0]["ready_s"] == 35.0


def test_replicas_ready_at_the_same_time_share_the_held_requests():
    fleet = LlmFleet(VARIANT, 0, routing="least_requests", startup_s=20.0)
    fleet.scale_to(2, at_s=0.0)
    rec = fleet.run(workload(np.arange(1.0, 9.0))).records
    assert rec["cold"].all() and rec["pod"].value_counts().tolist() == [4, 4]


def test_without_a_replica_requests_stay_unfinished_but_are_recorded():
    result = LlmFleet(VARIANT, 0).run(workload([1.0, 2.0]), drain_timeout_s=10.0)
    rec = result.records
    assert len(rec) == 2 and not rec["ok"].any() and rec["unfinished"].all()
    assert (rec["status"] == 0).all() and (rec["pod"] == "").all()
    assert result.end_time_s == pytest.approx(12.0)


def test_draining_removes_a_replica_only_when_idle_and_loses_nothing():
    # Two replicas serve long requests; at t=2 one is asked to go while it is busy.
    times = np.arange(0, 10, 0.25)
    fleet = LlmFleet(VARIANT, 2, routing="round_robin", sample_s=0.5)
    fleet.scale_to(1, at_s=2.0)
    result = fleet.run(workload(times, prompt=300, max_tokens=1500))
    rec = result.records
    assert len(rec) == len(times) and rec["ok"].all()
    gone = [r for r in result.replicas if r["removed_s"] is not None]
    assert len(gone) == 1 and gone[0]["drain_s"] == 2.0
    served = rec[rec["pod"] == gone[0]["pod"]]
    assert (served["sent_s"] < 2.0).all()  # nothing new after the drain began
    last_finish = float((served["sent_s"] + served["latency_ms"] / 1000).max())
    assert gone[0]["removed_s"] == pytest.approx(last_finish) and last_finish > 2.0
    counts = result.replica_counts
    assert counts[["desired", "ready", "draining"]].values.tolist() == [
        [2, 2, 0],
        [1, 1, 1],
        [1, 1, 0],
    ]
    draining = result.series[result.series["state"] == "draining"]
    assert len(draining) and not draining["ready"].any()


def test_the_controller_is_called_every_interval_with_the_signals():
    calls: list[FleetSignals] = []

    def controller(now_s: float, signals: FleetSignals) -> int | None:
        calls.append(signals)
        return 3 if now_s == 10.0 else None

    pattern = parse_pattern({"type": "constant", "rate": 4, "duration": "30s"})
    w = workload_from_pattern(pattern, "poisson", fixed_lengths(300, 200), seed=1)
    fleet = LlmFleet(VARIANT, 1, controller=controller, interval_s=2.0, startup_s=5.0)
    result = fleet.run(w)
    assert [s.now_s for s in calls[:15]] == [2.0 * k for k in range(1, 16)]
    assert result.controller_calls == len(calls)
    at_10, at_12, at_16 = calls[4], calls[5], calls[7]
    assert at_10.now_s == 10.0 and at_10.ready == 1 and len(at_10.replicas) == 1
    assert [r.state for r in at_12.replicas] == ["ready", "pending", "pending"]
    assert at_12.desired == 3 and at_16.ready == 3
    first = at_10.replicas[0]
    assert first.running > 0 and 0 < first.kv_usage < 1
    assert first.kv_capacity_tokens == fleet.config.num_gpu_blocks * fleet.config.block_size
    assert first.prompt_tokens_total == 300 * first.request_success_total + 300 * first.running
    assert at_10.arrivals_total == int((w.arrival_s <= 10.0).sum())
    totals = [s.replicas[0].generation_tokens_total for s in calls]
    assert totals == sorted(totals) and totals[-1] > 0
    assert (result.records["ok"]).all()
    assert set(result.records["pod"]) == {f"llama-3.1-8b-sim-{k}" for k in range(3)}


def test_kv_pressure_shows_waiting_requests_in_the_sampled_series():
    fleet = LlmFleet(VARIANT, 2, engine_overrides={"num_gpu_blocks": 64}, sample_s=0.2)
    result = fleet.run(workload(np.arange(40) * 0.05, prompt=200, max_tokens=200))
    series = result.series
    assert list(series.columns) == [
        "time_s",
        "pod",
        "state",
        "ready",
        "running",
        "waiting",
        "kv_usage",
    ]
    assert series["waiting"].max() > 0
    assert series["kv_usage"].max() > 0.9 and series["kv_usage"].between(0, 1).all()
    assert set(series["pod"]) == {"llama-3.1-8b-sim-0", "llama-3.1-8b-sim-1"}
    assert np.allclose(np.diff(np.unique(series["time_s"])), 0.2)
    assert result.records["ok"].all()


def test_the_same_seeds_give_the_same_run():
    def once(seed: int):
        pattern = parse_pattern({"type": "constant", "rate": 10, "duration": "10s"})
        w = workload_from_pattern(pattern, "poisson", varied_lengths, seed=seed)
        fleet = LlmFleet(VARIANT, 2, routing="kv_aware", startup_s=3.0, seed=seed)
        fleet.scale_to(3, at_s=2.0)
        return fleet.run(w)

    a, b, c = once(7), once(7), once(8)
    assert a.records.equals(b.records) and a.series.equals(b.series)
    assert not a.records["sent_s"].equals(c.records["sent_s"])


def test_bad_settings_and_requests_that_cannot_fit_name_their_field():
    with pytest.raises(SpecError, match="routing"):
        LlmFleet(VARIANT, routing="random")
    with pytest.raises(SpecError, match="sample_s"):
        LlmFleet(VARIANT, sample_s=0)
    small = LlmFleet(VARIANT, 1, engine_overrides={"num_gpu_blocks": 10})
    with pytest.raises(SpecError, match=r"max_tokens\[1\].*KV blocks"):
        small.run(LlmWorkload(np.array([0.0, 1.0]), np.array([10, 100]), np.array([10, 100])))
    with pytest.raises(SpecError, match="arrival order"):
        LlmWorkload(np.array([1.0, 0.5]), np.array([1, 1]), np.array([1, 1]))
    with pytest.raises(SpecError, match="prompt_tokens"):
        LlmWorkload(np.array([0.0]), np.array([0]), np.array([1]))
