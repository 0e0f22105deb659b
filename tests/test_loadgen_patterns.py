"""Patterns, arrivals, request bodies, stream timing, records and summaries: pure parts.

Nothing here imports Locust (its gevent patching must stay out of the test process).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from kservebench.errors import SpecError
from kservebench.loadgen.mmpp import mmpp_rates, write_trace
from kservebench.loadgen.patterns import (
    arrival_offsets,
    load_pattern_file,
    parse_duration,
    parse_pattern,
)
from kservebench.loadgen.protocols import build_template, load_instances
from kservebench.loadgen.recorder import RecordWriter
from kservebench.loadgen.streaming import read_stream
from kservebench.loadgen.summary import interarrival_cv, summarize
from kservebench.records import read_records


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15), ("2m", 120), ("1h", 3600), ("500ms", 0.5), ("1m30s", 90), (7, 7), ("2.5", 2.5)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text, "d") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["15x", "", "-3s", -1, True, None, "s", "1s2"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(SpecError) as info:
        parse_duration(bad, "spec.duration")
    assert info.value.field == "spec.duration"


def test_constant_rate_and_phase() -> None:
    p = parse_pattern({"type": "constant", "rate": 40, "duration": "15s"})
    assert (p.name, p.duration_s) == ("constant", 15.0)
    assert p.rate(0) == p.rate(14.9) == 40
    assert p.rate(15) == 0 and p.rate(-1) == 0
    assert p.phase(3) == "steady"


def test_steps_follow_their_stages() -> None:
    p = parse_pattern(
        {
            "type": "steps",
            "stages": [
                {"duration": "10s", "rate": 5},
                {"duration": "1m", "rate": 50, "name": "peak"},
                {"duration": 5, "rate": 0},
            ],
        }
    )
    assert p.duration_s == 75
    assert [p.rate(t) for t in (0, 9.99, 10, 69.9, 70, 74.9)] == [5, 5, 50, 50, 0, 0]
    assert [p.phase(t) for t in (1, 20, 72)] == ["stage-0", "peak", "stage-2"]


def test_ramp_is_linear() -> None:
    p = parse_pattern({"type": "ramp", "start_rate": 10, "end_rate": 110, "duration": "100s"})
    for t in (0, 25, 50, 99):
        assert p.rate(t) == pytest.approx(10 + t)
    assert p.expected_requests() == pytest.approx(6000)


def test_spike_has_baseline_and_burst() -> None:
    p = parse_pattern(
        {
            "type": "spike",
            "baseline": 10,
            "spike_rate": 200,
            "spike_at": "30s",
            "spike_duration": "5s",
            "duration": "1m",
        }
    )
    assert [p.rate(t) for t in (0, 29.9, 30, 34.9, 35, 59)] == [10, 10, 200, 200, 10, 10]
    assert [p.phase(t) for t in (0, 31, 40)] == ["baseline", "burst", "baseline"]
    assert p.expected_requests() == pytest.approx(55 * 10 + 5 * 200)


def test_sinusoidal_starts_at_trough_and_peaks_mid_period() -> None:
    for kind in ("sinusoidal", "diurnal"):
        p = parse_pattern(
            {"type": kind, "min_rate": 4, "max_rate": 20, "period": "1m", "duration": "2m"}
        )
        assert p.rate(0) == pytest.approx(4)
        assert p.rate(30) == pytest.approx(20)
        assert p.rate(15) == pytest.approx(12)
        assert p.rate(60) == pytest.approx(4)
        assert (p.phase(10), p.phase(40)) == ("rising", "falling")
        assert p.expected_requests() == pytest.approx(12 * 120, rel=1e-4)


def test_on_off_alternates_active_and_idle() -> None:
    p = parse_pattern({"type": "on-off", "rate": 20, "on": "30s", "off": "2m", "cycles": 2})
    assert p.duration_s == 300
    assert [p.rate(t) for t in (0, 29, 30, 149, 150, 179, 180, 299)] == [20, 20, 0, 0, 20, 20, 0, 0]
    assert [p.phase(t) for t in (5, 100, 160)] == ["active", "idle", "active"]
    by_duration = parse_pattern({"type": "on-off", "rate": 1, "on": 1, "off": 1, "duration": 5})
    assert by_duration.duration_s == 5


def test_trace_from_rates_file_and_offsets(tmp_path) -> None:
    (tmp_path / "t.csv").write_text("second,rate\n0,3\n1,0\n2,7.5\n")
    p = parse_pattern({"type": "trace", "file": "t.csv", "scale": 2}, base_dir=tmp_path)
    assert p.duration_s == 3
    assert [p.rate(t) for t in (0.5, 1.5, 2.5, 3.5)] == [6, 0, 15, 0]
    offsets = parse_pattern({"type": "trace", "offsets": [0.5, 0.1, 2.2, "1500ms"]})
    assert offsets.duration_s == 3
    assert [offsets.rate(t) for t in (0.5, 1.5, 2.5)] == [2, 1, 1]
    # Exact offsets are replayed as recorded, whatever the arrival mode.
    assert arrival_offsets(offsets, "poisson", 3).tolist() == [0.1, 0.5, 1.5, 2.2]


def test_shipped_mmpp_trace_is_reproducible(tmp_path) -> None:
    shipped = parse_pattern({"type": "trace", "file": "mmpp_example"})
    assert shipped.duration_s == 300
    regenerated = write_trace(tmp_path / "again.csv", mmpp_rates(duration_s=300, seed=7))
    again = parse_pattern({"type": "trace", "file": str(regenerated)})
    assert again.rates_per_s == pytest.approx(shipped.rates_per_s, abs=1e-4)
    rates = np.asarray(shipped.rates_per_s)
    assert rates.min() >= 5 - 1e-9 and rates.max() <= 40 + 1e-9
    assert (rates == 40).sum() > 10 and (rates == 5).sum() > 10  # both states visited


def test_pattern_file_yaml(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("pattern:\n  type: constant\n  rate: 3\n  duration: 2s\n")
    assert load_pattern_file(path).rate(1) == 3
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SpecError, match="pattern_file"):
        load_pattern_file(tmp_path / "empty.yaml")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "constant", "rate": 5}, "pattern.duration"),
        ({"type": "constant", "rate": -5, "duration": 1}, "pattern.rate"),
        ({"type": "constant", "rate": "fast", "duration": 1}, "pattern.rate"),
        ({"type": "constant", "rate": 5, "duration": "soon"}, "pattern.duration"),
        ({"type": "constant", "rate": 5, "duration": 1, "rpm": 3}, "pattern.rpm"),
        ({"type": "zigzag"}, "pattern.type"),
        ({"type": "steps", "stages": []}, "pattern.stages"),
        (
            {"type": "steps", "stages": [{"duration": 1, "rate": 1}, {"duration": 1, "rate": -2}]},
            "pattern.stages[1].rate",
        ),
        ({"type": "steps", "stages": [{"duration": 0, "rate": 1}]}, "pattern.stages[0].duration"),
        ({"type": "ramp", "start_rate": 1, "duration": 3}, "pattern.end_rate"),
        (
            {
                "type": "spike",
                "baseline": 1,
                "spike_rate": 9,
                "spike_at": 60,
                "spike_duration": 1,
                "duration": 30,
            },
            "pattern.spike_at",
        ),
        (
            {"type": "sinusoidal", "min_rate": 9, "max_rate": 1, "period": 5, "duration": 9},
            "pattern.max_rate",
        ),
        ({"type": "on-off", "rate": 1, "on": 1, "off": 1}, "pattern.cycles"),
        ({"type": "on-off", "rate": 1, "on": 1, "off": 1, "cycles": 0}, "pattern.cycles"),
        ({"type": "trace", "file": "no-such-trace.csv"}, "pattern.file"),
        ({"type": "trace", "rates": [1, -1]}, "pattern.rates[1]"),
        ("constant", "pattern"),
    ],
)
def test_bad_specs_name_the_field(spec: object, field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_pattern(spec)
    assert info.value.field == field
    assert field in str(info.value)


def test_constant_arrivals_are_evenly_spaced_and_follow_rate() -> None:
    p = parse_pattern({"type": "constant", "rate": 40, "duration": "15s"})
    offsets = arrival_offsets(p, "constant")
    assert len(offsets) == 600
    assert np.allclose(np.diff(offsets), 1 / 40)
    steps = parse_pattern(
        {"type": "steps", "stages": [{"duration": 2, "rate": 10}, {"duration": 2, "rate": 30}]}
    )
    counts = np.histogram(arrival_offsets(steps, "constant"), bins=[0, 2, 4])[0]
    assert counts.tolist() == [20, 60]


def test_poisson_arrivals_have_the_rate_and_unit_cv() -> None:
    p = parse_pattern({"type": "constant", "rate": 50, "duration": "10m"})
    offsets = arrival_offsets(p, "poisson", seed=11)
    expected = 50 * 600
    assert abs(len(offsets) - expected) < 4 * math.sqrt(expected)
    assert interarrival_cv(offsets) == pytest.approx(1.0, abs=0.03)
    assert np.all(np.diff(offsets) >= 0) and offsets[-1] < 600
    again = arrival_offsets(p, "poisson", seed=11)
    assert np.array_equal(offsets, again)  # the seed makes a run repeatable


def test_poisson_arrivals_follow_a_varying_rate() -> None:
    p = parse_pattern({"type": "on-off", "rate": 100, "on": 10, "off": 20, "cycles": 4})
    offsets = arrival_offsets(p, "poisson", seed=2)
    phases = np.array([p.phase(t) for t in offsets])
    assert set(phases) == {"active"}  # nothing is sent while idle
    assert abs(len(offsets) - 4000) < 4 * math.sqrt(4000)
    sine = parse_pattern(
        {"type": "sinusoidal", "min_rate": 0, "max_rate": 200, "period": 60, "duration": 600}
    )
    sine_offsets = arrival_offsets(sine, "poisson", seed=3)
    counts = np.histogram(sine_offsets % 60, bins=6, range=(0, 60))[0]
    expected = [
        10 * 200 * quad
        for quad in np.diff(
            [(t - 60 / (2 * np.pi) * np.sin(2 * np.pi * t / 60)) / 2 for t in np.linspace(0, 60, 7)]
        )
    ]
    assert np.allclose(counts, expected, rtol=0.1)


def test_arrival_mode_is_validated() -> None:
    p = parse_pattern({"type": "constant", "rate": 1, "duration": 1})
    with pytest.raises(SpecError, match="arrival"):
        arrival_offsets(p, "closed", 0)


def test_v1_and_v2_bodies_cycle_the_samples() -> None:
    rows = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    v1 = build_template("v1", "m", batch=2, instances=rows)
    assert v1.path == "/v1/models/m:predict"
    bodies = [json.loads(v1.body(i))["instances"] for i in range(3)]
    assert bodies == [[rows[0], rows[1]], [rows[2], rows[0]], [rows[1], rows[2]]]
    v2 = build_template("v2", "m", batch=3, instances=rows)
    tensor = json.loads(v2.body(0))["inputs"][0]
    assert v2.path == "/v2/models/m/infer"
    assert tensor["shape"] == [3, 2] and tensor["datatype"] == "FP32"
    assert tensor["data"] == [1, 2, 3, 4, 5, 6]
    chat = build_template("openai", "llm", prompts=["hi"], chat=True)
    assert chat.path == "/openai/v1/chat/completions" and chat.streaming
    assert json.loads(chat.body(0))["messages"][0]["content"] == "hi"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"protocol": "v3", "model": "m", "instances": [[1]]}, "protocol"),
        ({"protocol": "v1", "model": "m", "instances": [[1]], "batch": 0}, "batch"),
        ({"protocol": "v1", "model": "m", "instances": [[1, 2], [3]]}, "instances[1]"),
        ({"protocol": "v1", "model": "m", "instances": [[1, "x"]]}, "instances[0][1]"),
        ({"protocol": "v2", "model": "m"}, "instances"),
    ],
)
def test_bad_request_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        build_template(**kwargs)
    assert info.value.field == field


def test_instances_from_payload_file(tmp_path) -> None:
    (tmp_path / "p.json").write_text('{"instances": [[1, 2], [3, 4]]}')
    assert load_instances(payload=tmp_path / "p.json") == [[1, 2], [3, 4]]
    assert load_instances(inline="[[7]]") == [[7.0]]
    with pytest.raises(SpecError, match="payload"):
        load_instances(payload=tmp_path / "missing.json")


def test_stream_timing_from_events() -> None:
    times = iter([1.010, 1.030, 1.050, 1.070])
    events = [
        b'data: {"choices": [{"text": "a"}]}\n\n',
        b'data: {"choices": [{"delta": {"content": "b"}}]}\n\n',
        b'data: {"choices": [{"text": ""}]}\n\n',  # empty text is not a token
        b'data: {"choices": [{"text": "c"}]}\n\ndata: {"choices": [{"text": "d"}]}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n',
        b"data: [DONE]\n\n",
    ]
    stats = read_stream(events, started=1.0, clock=lambda: next(times))
    assert stats["ttft_ms"] == pytest.approx(10)
    assert stats["itl_ms"] == pytest.approx(20)
    assert (stats["prompt_tokens"], stats["output_tokens"], stats["error"]) == (3, 4, "")
    cut = read_stream([b'data: {"choices": [{"text": "a"}]}\n'], 0.0, clock=lambda: 0.5)
    assert cut["error"] == "stream ended without [DONE]" and cut["output_tokens"] == 1


def test_recorder_writes_one_row_per_request(tmp_path) -> None:
    writer = RecordWriter(tmp_path, "m", "constant")
    a = writer.register(100.0, "steady")
    b = writer.register(100.5, "burst")
    writer.register(101.0, "burst")  # never answered
    writer.mark_sent(b, 100.52)
    writer.complete(a, 100.001, 12.5, 200, "", 20, pod="p-1")
    writer.complete(b, 100.52, 3.0, 503, "HTTP 503", 9)
    assert writer.finish_unfinished() == 1
    writer.complete(a, 100.0, 1.0, 200, "", 1)  # late duplicate: ignored
    writer.close()
    rows = read_records(tmp_path)
    assert len(rows) == 3
    assert rows["ok"].tolist() == [True, False, False]
    assert rows["unfinished"].tolist() == [False, False, True]
    assert rows["send_lag_ms"].iloc[0] == pytest.approx(1.0)
    assert rows["pod"].iloc[0] == "p-1" and rows["status"].iloc[1] == 503
    assert math.isnan(rows["latency_ms"].iloc[2])


def test_summary_counts_and_percentiles() -> None:
    frame = pd.DataFrame(
        {
            "intended_s": np.arange(100) * 0.1,
            "sent_s": np.arange(100) * 0.1 + 0.001,
            "send_lag_ms": np.full(100, 1.0),
            "latency_ms": np.r_[np.arange(1, 99), np.nan, 5.0],
            "status": np.r_[np.full(98, 200), 0, 500],
            "ok": np.r_[np.full(98, True), False, False],
            "error": [""] * 98 + ["unfinished", "HTTP 500"],
            "unfinished": np.r_[np.full(98, False), True, False],
            "phase": ["steady"] * 100,
        }
    )
    summary = summarize(frame, duration_s=10.0)
    assert (summary["requests"], summary["ok"], summary["errors"]) == (100, 98, 1)
    assert summary["unfinished"] == 1
    assert summary["achieved_rps"] == 10.0
    assert summary["latency_ms"]["max"] == 98
    assert summary["latency_ms"]["p50"] == pytest.approx(49.5)
    assert summary["send_lag_ms"]["p99"] == pytest.approx(1.0)
    assert summary["interarrival_cv"] == pytest.approx(0.0, abs=1e-6)
