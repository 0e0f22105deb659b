"""The experiment spec: the shipped specs load and compare; bad fields are named."""

import copy
from importlib import resources

import pytest
import yaml
from typer.testing import CliRunner

from kservebench.bench.cli import app as bench_app
from kservebench.bench.plan import planned_seconds
from kservebench.bench.spec import load_experiment, parse_experiment
from kservebench.errors import SpecError

SPECS = resources.files("kservebench.bench") / "specs"

MINIMAL = {
    "name": "t",
    "mode": "hpa",
    "models": [{"name": "sklearn-small"}],
    "scaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "cpu", "target": 80},
    "patterns": [{"type": "constant", "rate": 5, "duration": "10s"}],
}


def spec_with(path: str, value):
    """MINIMAL with the value at a dotted path (list items as ``patterns.0``) replaced."""
    raw = copy.deepcopy(MINIMAL)
    keys = path.split(".")
    node = raw
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return raw


def test_shipped_specs_run_the_same_models_and_patterns():
    hpa = load_experiment(SPECS / "hpa.yaml")
    knative = load_experiment(SPECS / "knative.yaml")
    assert (hpa.mode, knative.mode) == ("hpa", "knative")
    assert hpa.models == knative.models
    assert [p.spec for p in hpa.patterns] == [p.spec for p in knative.patterns]
    frameworks = {m.name.split("-")[0] for m in hpa.models}
    assert frameworks == {"sklearn", "xgboost"}
    # `make bench-*` must finish inside 10 minutes on the local target, start-up included.
    assert planned_seconds(hpa) < 7 * 60 and planned_seconds(knative) < 7 * 60
    # Knative idles long enough between patterns to scale to zero: a stable window plus
    # the 30 s scale-to-zero grace period (config-autoscaler default).
    assert knative.cooldown_s >= knative.scaling.knative.window_s + 30
    assert knative.scaling.min_replicas == 0 and knative.scaling.metric == "concurrency"
    assert hpa.scaling.metric == "cpu"


def test_defaults_and_derived_values():
    exp = parse_experiment(
        {**MINIMAL, "warmup": "5s", "cooldown": "1m", "patterns": MINIMAL["patterns"] * 3}
    )
    assert exp.models[0].protocol == "v1" and exp.models[0].batch == 1
    assert exp.arrival == "poisson" and exp.repetitions == 1
    assert exp.local.fixed_replicas is None and exp.local.cgroups == "auto"
    assert exp.warmup_s == 5 and exp.cooldown_s == 60
    assert [p.label for p in exp.patterns] == ["0-constant", "1-constant", "2-constant"]
    assert exp.simulation.service_time == "measured"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("name", "Has Spaces", "name"),
        ("mode", "keda", "mode"),
        ("models", [], "models"),
        ("models.0", {"name": "resnet"}, "models[0].name"),
        ("models.0", {"name": "sklearn-small", "protocol": "v3"}, "models[0].protocol"),
        ("models.0", {"name": "sklearn-small", "batch": 0}, "models[0].batch"),
        ("models.0", {"name": "sklearn-small", "gpu": 1}, "models[0].gpu"),
        ("scaling.maxReplicas", 0, "scaling.maxReplicas"),
        ("scaling.minReplicas", 0, "scaling.minReplicas"),  # HPA cannot scale to zero
        ("scaling.metric", "concurrency", "scaling.metric"),
        ("scaling.target", 150, "scaling.target"),
        ("scaling.knative", {"window": "2s"}, "scaling.knative.window"),
        (
            "scaling.knative",
            {"panicThresholdPercentage": 50},
            "scaling.knative.panicThresholdPercentage",
        ),
        (
            "scaling.hpa",
            {"scaleDownStabilizationSeconds": 7200},
            "scaling.hpa.scaleDownStabilizationSeconds",
        ),
        ("resources", {"requests": {"cpu": "lots"}}, "resources.requests.cpu"),
        ("arrival", "bursty", "arrival"),
        ("patterns", [], "patterns"),
        ("patterns.0", {"type": "constant", "rate": 5, "duration": "soon"}, "patterns[0].duration"),
        ("patterns.0", {"type": "zigzag"}, "patterns[0].type"),
        ("warmup", "-3s", "warmup"),
        ("repetitions", 0, "repetitions"),
        ("local", {"replicas": 0}, "local.replicas"),
        ("slo", {"latency_ms": 0}, "slo.latency_ms"),
        ("simulation", {"cold_start": "whenever"}, "simulation.cold_start"),
        ("colour", "blue", "colour"),
    ],
)
def test_bad_field_is_named(path, value, field):
    with pytest.raises(SpecError) as err:
        parse_experiment(spec_with(path, value))
    assert err.value.field == field


def test_scaling_is_read_as_the_model_deployment_reads_it():
    raw = spec_with("mode", "knative")
    raw["scaling"] = {"minReplicas": 0, "maxReplicas": 3, "metric": "rps", "target": 50}
    exp = parse_experiment(raw)
    assert (exp.scaling.min_replicas, exp.scaling.max_replicas) == (0, 3)
    assert exp.scaling.metric == "rps" and exp.scaling.knative.window_s == 60
    # Requests are filled in as for a ModelDeployment: HPA utilization is relative to them.
    assert "cpu" in exp.resources.requests


def test_file_errors_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="cannot be read"):
        load_experiment(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_experiment(bad)


def test_trace_file_is_pinned_relative_to_the_spec(tmp_path):
    (tmp_path / "trace.csv").write_text("rate\n1\n2\n3\n")
    raw = spec_with("patterns.0", {"type": "trace", "file": "trace.csv"})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    exp = load_experiment(tmp_path / "exp.yaml")
    assert exp.patterns[0].spec["file"] == str((tmp_path / "trace.csv").resolve())
    assert exp.patterns[0].duration_s == 3


def test_the_bench_command_refuses_a_bad_spec_without_a_traceback(tmp_path):
    bad = spec_with("patterns.0", {"type": "constant", "rate": 5, "duration": "soon"})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(bench_app, [str(tmp_path / "bad.yaml"), "--results",
                                       str(tmp_path / "results")])  # fmt: skip
    assert result.exit_code == 2
    assert "patterns[0].duration" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "results").exists()  # nothing started, nothing written
    result = CliRunner().invoke(bench_app, [str(tmp_path / "bad.yaml"), "--target", "moon"])
    assert result.exit_code == 2 and "--target" in result.output
