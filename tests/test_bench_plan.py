"""Pure parts of the bench: the plan of phases, loadgen arguments, cluster manifests."""

from datetime import UTC, datetime
from pathlib import Path

from kservebench.bench.cluster import model_deployments, traffic_url
from kservebench.bench.plan import plan_phases, seconds_left, warmup_pattern
from kservebench.bench.runner import PROJECTION_KEY, ExperimentRun, loadgen_args, results_folder
from kservebench.bench.spec import parse_experiment
from kservebench.loadgen.patterns import parse_pattern
from kservebench.operator.spec import parse_model_deployment
from kservebench.results import read_run
from kservebench.sim.projection import project_run

RAW = {
    "name": "exp",
    "mode": "knative",
    "models": [{"name": "sklearn-small"}, {"name": "xgboost-small", "protocol": "v2"}],
    "scaling": {"minReplicas": 0, "maxReplicas": 4, "metric": "concurrency", "target": 5,
                "knative": {"window": "30s"}},
    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
    "patterns": [
        {"type": "constant", "rate": 10, "duration": "20s"},
        {"type": "ramp", "start_rate": 0, "end_rate": 20, "duration": "10s"},
    ],
    "warmup": "5s",
    "cooldown": "15s",
    "repetitions": 2,
}  # fmt: skip


def flags_of(args):
    """``--flag value`` pairs (``True`` for a flag without a value) after the subcommand."""
    flags, rest = {}, list(args[1:])
    while rest:
        flag = rest.pop(0)
        flags[flag] = rest.pop(0) if rest and not rest[0].startswith("--") else True
    return flags


def test_plan_order_folders_and_time_left():
    exp = parse_experiment(RAW)
    phases = plan_phases(exp)
    per_model = ["warmup", "load", "cooldown", "load"]
    assert [p.kind for p in phases] == per_model * 4  # 2 repetitions x 2 models
    assert [p.model.name for p in phases[:8:4]] == ["sklearn-small", "xgboost-small"]
    assert str(phases[1].folder) == "loads/sklearn-small/0-constant"
    assert str(phases[3].folder) == "loads/sklearn-small/1-ramp"
    assert str(phases[9].folder) == "loads/sklearn-small/0-constant-rep1"
    assert str(phases[0].folder) == "warmup/sklearn-small"
    assert phases[2].folder is None
    total = sum(p.duration_s for p in phases)
    assert total == 4 * (5 + 20 + 15 + 10)
    assert seconds_left(phases, 0, 0) == total
    assert seconds_left(phases, 1, 5) == total - 5 - 5


def test_warmup_runs_at_the_first_patterns_mean_rate():
    exp = parse_experiment(RAW)
    warmup = parse_pattern(warmup_pattern(exp))
    assert warmup.name == "constant" and warmup.duration_s == 5
    assert warmup.rate(1) == 10


def test_loadgen_args_and_same_seed_across_experiments(tmp_path):
    exp = parse_experiment(RAW)
    other = parse_experiment({**RAW, "name": "other", "mode": "hpa",
                              "scaling": {"minReplicas": 1, "maxReplicas": 4}})  # fmt: skip
    phase, twin = plan_phases(exp)[5], plan_phases(other)[5]  # xgboost-small, 0-constant
    args = loadgen_args(exp, phase, "http://127.0.0.1:1234", tmp_path, Path("trained/x"))
    flags = flags_of(args)
    assert args[0] == "loadgen"
    assert flags["--url"] == "http://127.0.0.1:1234"
    assert flags["--model"] == "xgboost-small" and flags["--protocol"] == "v2"
    assert flags["--pattern-file"] == str(tmp_path / "pattern.yaml")
    assert flags["--arrival"] == "poisson" and flags["--model-dir"] == "trained/x"
    assert flags["--pattern-label"] == "0-constant"  # the spec's name, as the simulator's
    warmup = loadgen_args(exp, plan_phases(exp)[0], "http://x", tmp_path, None)
    assert flags_of(warmup)["--pattern-label"] == "warmup"
    twin_args = loadgen_args(other, twin, "http://x", tmp_path, None)
    assert flags_of(twin_args)["--seed"] == flags["--seed"]
    rep1 = loadgen_args(exp, plan_phases(exp)[9], "http://x", tmp_path, None)
    assert flags_of(rep1)["--seed"] != flags["--seed"]
    assert flags["--no-progress"] is True  # the bench draws the progress itself


def test_results_folder_is_named_after_the_experiment_and_utc_time(tmp_path):
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert results_folder(tmp_path, "hpa", when) == tmp_path / "hpa-20260102T030405Z"


def test_model_deployments_are_valid_for_the_operator():
    exp = parse_experiment(RAW)
    manifests = model_deployments(exp, "bench", "pvc://models/")
    assert [m["metadata"]["name"] for m in manifests] == ["sklearn-small", "xgboost-small"]
    parsed = [parse_model_deployment(m) for m in manifests]
    assert parsed[0].model.storage_uri == "pvc://models/sklearn-small"
    assert parsed[1].model.protocol == "v2" and parsed[1].model.kind == "xgboost"
    assert all(p.mode == "knative" and p.namespace == "bench" for p in parsed)
    # The experiment and its deployments scale alike: the same parser read both.
    assert all(p.scaling == exp.scaling for p in parsed)
    assert parsed[0].resources.requests["cpu"] == "500m"


def test_traffic_url_by_mode():
    assert traffic_url("knative", None, "m", "ns", "http://m-ns.example") == "http://m-ns.example"
    # hpa: the bench's balancer (tests/test_bench_cluster.py), never a port-forward
    assert traffic_url("hpa", None, "m", "ns", "http://m-ns.example") == "http://127.0.0.1:8081/m"
    assert traffic_url("hpa", "http://{name}.{namespace}.lan", "m", "ns", None) == "http://m.ns.lan"


def test_a_projection_that_fails_is_recorded_and_the_run_goes_on(tmp_path):
    # A folder without request records cannot calibrate the simulator: the run records
    # why in run.json instead of failing (the report then says the projection is missing).
    run = ExperimentRun(parse_experiment(RAW), lambda out: None, tmp_path, live=False)
    run._after_run(project_run)
    entry = run.run[PROJECTION_KEY]
    assert entry["error"].startswith("SpecError: ") and "no request records" in entry["error"]
    assert entry["mode"] == "knative" and entry["wall_s"] >= 0
    assert read_run(run.out)["status"] == "running"  # execute() finishes run.json after it
