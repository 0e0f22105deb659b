"""Models: catalogue, training/export layout, real KServe serving (v1 + v2), CLI errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kservebench.cli import main
from kservebench.errors import SpecError
from kservebench.models import MODEL_NAMES, find_artifact, read_model_info, train_models
from kservebench.models.catalog import ARTIFACT_EXTENSIONS, CATALOG, make_dataset

EXPECTED_NAMES = [
    "sklearn-small",
    "sklearn-medium",
    "sklearn-large",
    "xgboost-small",
    "xgboost-medium",
    "xgboost-large",
]


def in_process_predict(model_dir: Path, x: np.ndarray) -> np.ndarray:
    """What the model file itself predicts, loaded the way KServe's runtimes load it."""
    artifact, framework = find_artifact(model_dir)
    if framework == "sklearn":
        import joblib

        return joblib.load(artifact).predict(x)
    import xgboost as xgb

    booster = xgb.Booster(params={"nthread": 1})
    booster.load_model(bytearray(artifact.read_bytes()))
    return booster.predict(xgb.DMatrix(x))


def test_catalogue_has_the_six_benchmark_models():
    assert MODEL_NAMES == EXPECTED_NAMES
    assert {CATALOG[n].framework for n in MODEL_NAMES} == {"sklearn", "xgboost"}


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_export_layout_is_what_the_kserve_runtime_loads(trained_models, name):
    model_dir = trained_models[name]
    info = read_model_info(model_dir)
    framework = CATALOG[name].framework
    model_files = [
        p for p in model_dir.iterdir() if p.name.endswith(sum(ARTIFACT_EXTENSIONS.values(), ()))
    ]
    # Exactly one file any runtime would take as a model (xgboost also reads .json!).
    assert [p.name for p in model_files] == [info["artifact"]]
    assert model_files[0].suffix in ARTIFACT_EXTENSIONS[framework]
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        [info["artifact"], "model-info.yaml"]
    )
    assert info["name"] == name
    assert info["framework"] == framework
    assert info["library"] == {"sklearn": "scikit-learn", "xgboost": "xgboost"}[framework]
    assert info["features"] == {"count": 20, "dtype": "float32"}
    assert info["size_bytes"] == model_files[0].stat().st_size > 0
    assert info["versions"][info["library"]]
    assert 0.5 < info["scores"]["test_accuracy"] <= 1.0
    samples = np.array(info["sample_instances"], dtype=np.float32)
    assert samples.shape == (8, 20)
    np.testing.assert_array_equal(
        in_process_predict(model_dir, samples), np.array(info["sample_predictions"])
    )


def test_models_grow_in_size_within_each_library(trained_models):
    for library in ("sklearn", "xgboost"):
        sizes = [
            read_model_info(trained_models[f"{library}-{s}"])["size_bytes"]
            for s in ("small", "medium", "large")
        ]
        assert sizes == sorted(sizes) and sizes[0] * 10 < sizes[2], (library, sizes)


def test_training_is_deterministic(trained_models, tmp_path):
    names = ["sklearn-medium", "xgboost-medium"]
    again = train_models(tmp_path, names, force=True)
    _, x_test, _, _ = make_dataset(CATALOG["sklearn-medium"].dataset)
    for name in names:
        np.testing.assert_array_equal(
            in_process_predict(again[name], x_test),
            in_process_predict(trained_models[name], x_test),
        )


def test_current_models_are_kept_and_changed_ones_retrained(trained_models, tmp_path):
    shutil.copytree(trained_models["sklearn-small"], tmp_path / "sklearn-small")
    events: list[tuple[str, str]] = []
    train_models(tmp_path, ["sklearn-small"], on_model=lambda n, e: events.append((n, e)))
    assert events == [("sklearn-small", "kept")]

    info_file = tmp_path / "sklearn-small" / "model-info.yaml"
    info_file.write_text(info_file.read_text().replace("fingerprint:", "fingerprint: stale"))
    events.clear()
    dirs = train_models(tmp_path, ["sklearn-small"], on_model=lambda n, e: events.append((n, e)))
    assert events == [("sklearn-small", "trained")]
    assert (
        read_model_info(dirs["sklearn-small"])["fingerprint"]
        == CATALOG["sklearn-small"].fingerprint()
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_unknown_model_name_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as err:
        train_models(tmp_path, ["sklearn-small", "sklearn-huge"])
    assert err.value.field == "models[1]"
    assert err.value.value == "sklearn-huge"
    assert not list(tmp_path.iterdir())  # nothing trained before the check


def predict_count(server, model_name: str) -> float:
    text = requests.get(server.metrics_url, timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "request_predict_seconds_count"
                and sample.labels.get("model_name") == model_name
            ):
                return sample.value
    return 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_served_model_answers_v1_and_v2_like_the_in_process_model(
    trained_models, model_server, name
):
    server = model_server(name)
    assert server.ready_after_s is not None and 0 < server.ready_after_s < 90
    _, x_test, _, _ = make_dataset(CATALOG[name].dataset)
    batch = x_test[:50]
    before = predict_count(server, name)

    v1 = requests.post(server.v1_predict_url, json={"instances": batch.tolist()}, timeout=30)
    assert v1.status_code == 200, v1.text
    expected_v1 = in_process_predict(trained_models[name], batch.astype(np.float64))
    got_v1 = np.array(v1.json()["predictions"], dtype=expected_v1.dtype)
    np.testing.assert_array_equal(got_v1, expected_v1)

    body = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ]
    }
    v2 = requests.post(server.v2_infer_url, json=body, timeout=30)
    assert v2.status_code == 200, v2.text
    output = v2.json()["outputs"][0]
    expected_v2 = in_process_predict(trained_models[name], batch)
    assert output["shape"] == list(expected_v2.shape)
    assert output["datatype"] == ("INT64" if CATALOG[name].framework == "sklearn" else "FP32")
    got_v2 = np.array(output["data"], dtype=expected_v2.dtype).reshape(output["shape"])
    np.testing.assert_array_equal(got_v2, expected_v2)

    assert predict_count(server, name) == before + 2


@pytest.mark.slow
def test_bad_requests_get_400_naming_the_problem(shared_model_server):
    server = shared_model_server("xgboost-small")
    wrong_width = requests.post(server.v1_predict_url, json={"instances": [[1.0, 2.0]]}, timeout=10)
    assert wrong_width.status_code == 400
    assert "20 features" in wrong_width.json()["error"]
    not_a_batch = requests.post(server.v1_predict_url, json={"instances": [1.0, 2.0]}, timeout=10)
    assert not_a_batch.status_code == 400
    unknown = requests.post(
        f"{server.url}/v1/models/nope:predict", json={"instances": [[0.0] * 20]}, timeout=10
    )
    assert unknown.status_code == 404


@pytest.mark.slow
def test_two_workers_serve_bind_loopback_and_report_metrics_together(trained_models, model_server):
    server = model_server("sklearn-small", name="two", workers=2)
    info = read_model_info(trained_models["sklearn-small"])
    for _ in range(20):  # a new connection each: the kernel spreads them over both workers
        answer = requests.post(
            server.v1_predict_url, json={"instances": info["sample_instances"]}, timeout=10
        )
        assert answer.json()["predictions"] == info["sample_predictions"]
    # Whichever worker answers the scrape, /metrics counts both workers' requests.
    assert [predict_count(server, "two") for _ in range(6)] == [20.0] * 6
    listening = subprocess.run(
        ["ss", "-Hltn", f"sport = :{server.port}"], capture_output=True, text=True
    ).stdout
    assert f"127.0.0.1:{server.port}" in listening and "0.0.0.0" not in listening.split()[3]
    server.stop()
    assert not server.alive()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.ready_url, timeout=2)


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """Run ``kservebench ARGS`` in-process; (exit code, stdout + stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out = capsys.readouterr()
    return code, out.out + out.err


def test_train_cli_trains_the_named_model(tmp_path, capsys):
    code, output = run_cli(capsys, "train", "--out", str(tmp_path), "--model", "sklearn-small")
    assert code == 0, output
    assert f"sklearn-small\t{tmp_path / 'sklearn-small'}" in output
    assert read_model_info(tmp_path / "sklearn-small")["name"] == "sklearn-small"


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["train", "--out", "{tmp}", "--model", "sklearn-huge"], "--model", "sklearn-huge"),
        (["serve", "--model-dir", "{tmp}/missing", "--name", "m"], "--model-dir", "missing"),
        (["serve", "--model-dir", "{tmp}", "--name", "m"], "--model-dir", "no model file"),
        (["serve", "--model-dir", "{two}", "--name", "m"], "--model-dir", "more than one"),
        (["serve", "--model-dir", "{one}", "--name", "a/b"], "--name", "a/b"),
        (["serve", "--model-dir", "{one}", "--name", "m", "--port", "0"], "--port", "0"),
        (["serve", "--model-dir", "{one}"], "--name", "Missing option"),
    ],
)
def test_cli_rejects_bad_input_naming_option_and_value(tmp_path, capsys, args, option, value):
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "model.joblib").write_bytes(b"x")
    (tmp_path / "two" / "model.json").write_text("{}")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "model.joblib").write_bytes(b"x")
    args = [a.format(tmp=tmp_path, two=tmp_path / "two", one=tmp_path / "one") for a in args]
    code, output = run_cli(capsys, *args)
    assert code == 2, output
    assert option in output and value in output
    assert "Traceback" not in output


def test_serve_command_error_has_no_traceback(tmp_path):
    out = subprocess.run(
        [
            *(sys.executable, "-c", "from kservebench.cli import main; main()", "serve"),
            *("--model-dir", str(tmp_path / "absent"), "--name", "m"),
        ],
        capture_output=True,
        text=True,
        env={"PYTHONSAFEPATH": "1", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.returncode == 2
    assert "--model-dir" in out.stderr and "absent" in out.stderr
    assert "Traceback" not in out.stderr
