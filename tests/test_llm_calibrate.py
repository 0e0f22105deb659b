"""Calibrating the engine model: records made by the engine itself (known coefficients,
a little noise) must give the coefficients back; bad records are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kservebench.errors import SpecError
from kservebench.llm.calibrate import (
    Calibration,
    EngineSettings,
    cache_config_from_metrics,
    calibrate,
    replay,
    trace_from_records,
)
from kservebench.llm.calibrate_cli import app, load_calibration, variant_from_calibration
from kservebench.llm.engine import Engine, run_until_idle
from kservebench.llm.request import Arrival, RequestOverheads
from kservebench.llm.roofline import StepCoefficients, StepTimeModel
from kservebench.llm.variants import get_variant

FIXTURES = Path(__file__).parent / "fixtures"
VARIANT = get_variant("tiny-llama-cpu")
SETTINGS = EngineSettings(
    num_gpu_blocks=16384, block_size=128, max_num_seqs=16, max_num_batched_tokens=2048
)
TRUE = StepCoefficients(
    overhead_step_s=1.2e-3, per_seq_s=120e-6, per_prefill_token_s=8e-6, roofline=0, tp_comm=0
)
TRUE_OVERHEADS = RequestOverheads(queue_entry_s=3e-3, finish_s=0.5e-3)
EPOCH = 1.8e9


def workload(seed: int, bursts: int = 6, burst: int = 20) -> list[Arrival]:
    """Isolated requests (the engine idle at each) and bursts of ``burst`` at 60/s on 16
    slots: batching, chunked prefill and some queueing."""
    rng = np.random.default_rng(seed)
    times, t = [], 0.0
    for _ in range(bursts):
        for _ in range(5):
            t += 0.3
            times.append(t)
        for _ in range(burst):
            t += rng.exponential(1 / 60)
            times.append(t)
        t += 1.0
    prompts = rng.integers(16, 700, len(times))
    return [Arrival(f"q{i}", int(prompts[i]), 128, times[i]) for i in range(len(times))]


def engine_records(
    arrivals: list[Arrival],
    coefficients: StepCoefficients = TRUE,
    overheads: RequestOverheads = TRUE_OVERHEADS,
    noise: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """The loadgen records the engine model itself would produce, times scaled by
    (1 + noise * N(0, 1)) per request."""
    engine = Engine(SETTINGS.engine_config(), StepTimeModel(coefficients), overheads)
    results = run_until_idle(engine, arrivals)
    rng = np.random.default_rng(seed)
    n = len(results)
    ttft = np.array([r.ttft_s for r in results]) * (1 + noise * rng.standard_normal(n))
    itl = np.array([r.tpot_s for r in results]) * (1 + noise * rng.standard_normal(n))
    out = np.array([r.output_tokens for r in results])
    e2e = ttft + itl * (out - 1) + overheads.finish_s
    return pd.DataFrame(
        {
            "sent_s": EPOCH + np.array([a.arrival_s for a in arrivals]),
            "ok": True,
            "status": 200,
            "latency_ms": e2e * 1000,
            "ttft_ms": ttft * 1000,
            "itl_ms": itl * 1000,
            "tpot_ms": (e2e - ttft) / (out - 1) * 1000,
            "prompt_tokens": [a.prompt_tokens for a in arrivals],
            "output_tokens": out,
        }
    )


def close(value: float, expected: float, tolerance: float) -> bool:
    return abs(value - expected) <= tolerance * abs(expected)


# -- recovering known coefficients ----------------------------------------------------------


def test_exact_records_give_the_coefficients_back() -> None:
    cal = calibrate(engine_records(workload(1)), SETTINGS, VARIANT)
    c = cal.coefficients
    assert close(c.overhead_step_s, TRUE.overhead_step_s, 0.01)
    assert close(c.per_seq_s, TRUE.per_seq_s, 0.01)
    assert close(c.per_prefill_token_s, TRUE.per_prefill_token_s, 0.02)
    assert close(cal.overheads.queue_entry_s, TRUE_OVERHEADS.queue_entry_s, 0.02)
    assert cal.diagnostics.converged
    assert cal.diagnostics.idle_requests >= 25
    assert cal.diagnostics.errors["ttft_mean"] < 0.01
    assert cal.diagnostics.errors["itl_mean"] < 0.01


@pytest.mark.parametrize("seed", [2, 3])
def test_noisy_records_give_the_coefficients_back_within_a_few_percent(seed: int) -> None:
    records = engine_records(workload(seed), noise=0.03, seed=seed)
    cal = calibrate(records, SETTINGS, VARIANT)
    c = cal.coefficients
    assert close(c.overhead_step_s, TRUE.overhead_step_s, 0.05)
    assert close(c.per_seq_s, TRUE.per_seq_s, 0.05)
    assert close(c.per_prefill_token_s, TRUE.per_prefill_token_s, 0.10)
    assert close(cal.overheads.queue_entry_s, TRUE_OVERHEADS.queue_entry_s, 0.10)
    # and the calibrated engine reproduces the run
    errors = cal.diagnostics.errors
    assert errors["ttft_mean"] < 0.05 and errors["ttft_p90"] < 0.10 and errors["itl_mean"] < 0.02


def test_the_fit_starts_anywhere() -> None:
    """The placeholder coefficients are only a start: far-off ones reach the same values."""
    records = engine_records(workload(4))
    far = VARIANT.with_coefficients(
        StepCoefficients(overhead_step_s=10e-3, per_seq_s=1e-6, per_prefill_token_s=1e-6)
    )
    a = calibrate(records, SETTINGS, VARIANT).coefficients
    b = calibrate(records, SETTINGS, far).coefficients
    assert close(b.overhead_step_s, a.overhead_step_s, 0.02)
    assert close(b.per_seq_s, a.per_seq_s, 0.02)


def test_merged_stream_events_do_not_bias_the_decode_time() -> None:
    """Under load vLLM merges tokens into fewer events, so the recorder's ITL (a mean over
    events) overstates the gap between tokens; the default decode time comes from the
    latency and is not fooled."""
    records = engine_records(workload(5))
    records["itl_ms"] *= 1.15  # 1 event per 1.15 tokens
    cal = calibrate(records, SETTINGS, VARIANT)
    assert close(cal.coefficients.overhead_step_s, TRUE.overhead_step_s, 0.02)
    fooled = calibrate(trace_from_records(records, "itl"), SETTINGS, VARIANT)
    assert fooled.coefficients.overhead_step_s > 1.1 * TRUE.overhead_step_s


def test_fitted_coefficients_are_never_negative() -> None:
    """Sequences and decode tokens are the same count in decode steps: asked to fit both,
    the fit pins what it cannot tell apart at 0 instead of going negative."""
    records = engine_records(workload(6), noise=0.03, seed=6)
    free = ("overhead_step_s", "per_seq_s", "per_decode_token_s", "per_context_token_s")
    cal = calibrate(records, SETTINGS, VARIANT, free=free)
    assert all(v >= 0 for v in cal.coefficients.vector())
    assert cal.diagnostics.errors["itl_mean"] < 0.05


def test_all_ttft_rows_can_be_fitted_too() -> None:
    cal = calibrate(engine_records(workload(7)), SETTINGS, VARIANT, ttft_rows="all")
    assert close(cal.coefficients.overhead_step_s, TRUE.overhead_step_s, 0.05)
    assert cal.diagnostics.errors["ttft_mean"] < 0.05


# -- determinism ----------------------------------------------------------------------------


def test_calibration_is_deterministic_and_ignores_row_order() -> None:
    records = engine_records(workload(8), noise=0.03, seed=8)
    a = calibrate(records, SETTINGS, VARIANT)
    b = calibrate(records, SETTINGS, VARIANT)
    shuffled = records.sample(frac=1.0, random_state=1)
    c = calibrate(shuffled, SETTINGS, VARIANT)
    assert a.coefficients == b.coefficients == c.coefficients
    assert a.overheads == b.overheads == c.overheads
    assert a.to_dict() == c.to_dict()


def test_replay_agrees_with_the_engine_run_in_one_go() -> None:
    """The step-by-step replay gives the same timestamps as ``run_until_idle`` (to the
    sub-microsecond rounding of epoch send times)."""
    arrivals = workload(9, bursts=2)
    trace = trace_from_records(engine_records(arrivals))
    rep = replay(trace, SETTINGS.engine_config(), StepTimeModel(TRUE), TRUE_OVERHEADS)
    engine = Engine(SETTINGS.engine_config(), StepTimeModel(TRUE), TRUE_OVERHEADS)
    direct = run_until_idle(engine, arrivals)
    assert np.allclose(rep.ttft_s, [r.ttft_s for r in direct], rtol=0, atol=1e-6)
    assert np.allclose(rep.e2e_s, [r.e2e_s for r in direct], rtol=0, atol=1e-6)
    assert rep.running.max() == SETTINGS.max_num_seqs and rep.waiting.max() > 0


# -- bad input ------------------------------------------------------------------------------


def _bad(records: pd.DataFrame, column: str, value: object) -> pd.DataFrame:
    records = records.copy()
    records[column] = records[column].astype(object)
    records.loc[records.index[3], column] = value
    return records


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.drop(columns=["ttft_ms"]), "records.ttft_ms"),
        (lambda r: r.drop(columns=["prompt_tokens"]), "records.prompt_tokens"),
        (lambda r: r.assign(ok=False), "records.ok"),
        (lambda r: _bad(r, "ttft_ms", -5.0), "records.ttft_ms"),
        (lambda r: _bad(r, "itl_ms", -1.0), "records.itl_ms"),
        (lambda r: _bad(r, "sent_s", float("nan")), "records.sent_s"),
        (lambda r: _bad(r, "prompt_tokens", 12.5), "records.prompt_tokens"),
        (lambda r: _bad(r, "output_tokens", 0), "records.output_tokens"),
        (lambda r: _bad(r, "latency_ms", 0.001), "records.latency_ms"),
    ],
)
def test_bad_records_are_refused_by_name(change, field: str) -> None:
    records = change(engine_records(workload(10, bursts=1)))
    with pytest.raises(SpecError) as err:
        calibrate(records, SETTINGS, VARIANT)
    assert err.value.field == field


def test_failed_requests_are_left_out_not_refused() -> None:
    records = engine_records(workload(11, bursts=1))
    records.loc[records.index[:2], ["ok", "ttft_ms"]] = [False, float("nan")]
    assert len(trace_from_records(records)) == len(records) - 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"free": ("overhead_step_s", "speed")}, "free"),
        ({"free_overheads": ("token_delivery_s",)}, "free_overheads"),
        ({"ttft_rows": "some"}, "ttft_rows"),
        ({"max_iterations": 0}, "max_iterations"),
    ],
)
def test_bad_options_are_refused_by_name(kwargs: dict, field: str) -> None:
    with pytest.raises(SpecError) as err:
        calibrate(engine_records(workload(12, bursts=1)), SETTINGS, VARIANT, **kwargs)
    assert err.value.field == field


def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(SpecError) as err:
        EngineSettings(num_gpu_blocks=100, block_size=16, max_num_seqs=0, max_num_batched_tokens=8)
    assert err.value.field == "engine.max_num_seqs"


# -- the JSON and the command ---------------------------------------------------------------


def test_settings_come_from_vllm_cache_config_info() -> None:
    labels = cache_config_from_metrics((FIXTURES / "vllm-cpu-metrics.txt").read_text())
    assert labels["block_size"] == "128" and labels["num_gpu_blocks"] == "16384"
    settings = EngineSettings.from_variant(VARIANT, num_gpu_blocks=int(labels["num_gpu_blocks"]))
    assert settings.engine_config().num_gpu_blocks == 16383  # vLLM keeps a null block


def test_calibration_json_loads_back_into_a_variant(tmp_path: Path) -> None:
    cal = calibrate(engine_records(workload(13, bursts=2)), SETTINGS, VARIANT)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(cal.to_dict()))
    loaded = load_calibration(path)
    assert loaded.coefficients == cal.coefficients
    assert loaded.overheads == cal.overheads
    assert loaded.settings == cal.settings
    variant = variant_from_calibration(loaded)
    assert variant.coefficients == cal.coefficients
    assert variant.step_time_model().coefficients == cal.coefficients
    assert variant_from_calibration(loaded, settings=True).max_num_seqs == 16


def test_a_bad_calibration_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    path.write_text("{not json")
    with pytest.raises(SpecError):
        load_calibration(path)
    path.write_text(json.dumps({"format": 1, "variant": "x", "coefficients": {"speed": 1}}))
    with pytest.raises(SpecError) as err:
        load_calibration(path)
    assert err.value.field.endswith(".coefficients")
    with pytest.raises(SpecError) as err:
        Calibration.from_dict({"format": 2})
    assert err.value.field == "calibration.format"


def test_the_command_writes_the_fit_of_a_results_folder(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run / "loads" / "burst" / "tiny").mkdir(parents=True)
    records = engine_records(workload(14, bursts=2)).assign(model="tiny")
    records.to_csv(run / "loads" / "burst" / "tiny" / "records.csv", index=False)
    (run / "metrics.txt").write_text((FIXTURES / "vllm-cpu-metrics.txt").read_text())
    (run / "run.json").write_text(json.dumps({"vllm": {"max_num_seqs": 16}}))
    out = tmp_path / "cal.json"
    app([str(run), "--max-num-batched-tokens", "2048", "--out", str(out)], standalone_mode=False)
    data = json.loads(out.read_text())
    assert data["engine"]["num_gpu_blocks"] == 16384 and data["engine"]["block_size"] == 128
    assert data["fidelity"]["figures"]["ttft_mean"]["error"] < 0.05
    assert "itl_mean" in capsys.readouterr().out
    loaded = load_calibration(out)
    assert close(loaded.coefficients.overhead_step_s, TRUE.overhead_step_s, 0.02)


def test_the_command_names_a_missing_source(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        app([str(tmp_path / "nothing")], standalone_mode=False)
    assert exit_.value.code == 2
    assert "SOURCE" in capsys.readouterr().err
