"""Models for a cluster: exported with the libraries KServe 0.16's runtimes load them with.

The pins (models/requirements/kserve-0.16-runtimes.txt) must be the runtimes' versions;
model-info.yaml says whether a model was written by them; and, in ``.venv-export`` (those
exact versions, ``make venv-export``), an export loads the way kserve-sklearnserver and
kserve-xgbserver load it, with no version warning, and predicts what it predicted when
exported and what this project's own virtualenv predicts from the same file. The export
of this project's virtualenv (newer scikit-learn and xgboost) does not pass that check.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from kservebench.models import read_model_info
from kservebench.models.artifacts import find_artifact, load_artifact
from kservebench.models.catalog import CATALOG, make_dataset
from kservebench.models.runtime_versions import (
    KSERVE_VERSION,
    REQUIREMENTS,
    RUNTIMES,
    environment_problems,
    main,
    release,
    satisfies,
)
from kservebench.models.train import library_versions, predict_in_process, train_models

REPO = Path(__file__).resolve().parents[1]
EXPORT_PYTHON = REPO / ".venv-export" / "bin" / "python"
needs_export_venv = pytest.mark.skipif(
    not EXPORT_PYTHON.exists(),
    reason=".venv-export is missing: `make venv-export` builds it (KServe 0.16 runtimes' "
    "scikit-learn/xgboost); CI builds it before the tests",
)
EXPORTED = ("sklearn-medium", "xgboost-small")

# Loads a model folder exactly as KServe 0.16's runtimes do (sklearnserver/model.py:
# joblib.load of the single *.joblib; xgbserver/model.py: xgb.Booster from the file's
# bytes with nthread), predicts rows from a .npy file, prints the library versions.
# "strict": any UserWarning (scikit-learn's InconsistentVersionWarning) is an error.
LOADER = r"""
import json, sys, warnings
from importlib import metadata
from pathlib import Path
import numpy as np

model_dir, framework, rows, out, mode = sys.argv[1:6]
if mode == "strict":
    warnings.simplefilter("error", UserWarning)
with warnings.catch_warnings(record=mode != "strict") as seen:
    if framework == "sklearn":
        import joblib
        (path,) = [p for p in Path(model_dir).iterdir() if p.suffix == ".joblib"]
        model = joblib.load(path)
        predicted = model.predict(np.load(rows))
    else:
        import xgboost as xgb
        (path,) = [p for p in Path(model_dir).iterdir() if p.suffix == ".bst"]
        booster = xgb.Booster(params={"nthread": 1}, model_file=bytearray(path.read_bytes()))
        predicted = booster.predict(xgb.DMatrix(np.load(rows), nthread=1))
np.save(out, predicted)
versions = {d: metadata.version(d) for d in ("scikit-learn", "xgboost-cpu", "numpy", "joblib")}
print(json.dumps({"versions": versions, "warnings": [str(w.message) for w in seen or []]}))
"""


def pins() -> dict[str, str]:
    """name -> version of every ``==`` line of the requirements file."""
    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s#]+)\s*(#.*)?", line)
        if match:
            out[match[1].lower()] = match[2]
    return out


def test_pins_are_the_versions_of_the_kserve_runtimes_images() -> None:
    pinned = pins()
    # xgboost-cpu is the same library as the images' xgboost, without CUDA wheels.
    pinned["xgboost"] = pinned.pop("xgboost-cpu")
    for runtime in RUNTIMES.values():
        assert satisfies(pinned[runtime.library], runtime.requires), runtime
        for library, version in runtime.image.items():
            assert pinned[library] == version, (runtime.name, library)
    assert environment_problems({**pinned}) == []
    assert satisfies("1.5.2", "~=1.5.1") and satisfies("2.1.4", "~=2.1.1")
    assert not satisfies("1.9.1", "~=1.5.1") and not satisfies("1.5.0", "~=1.5.1")
    assert not satisfies("3.2.0", "~=2.1.1") and satisfies("1.4.2", "==1.4.2")
    assert release("2.2.4+cpu") == (2, 2, 4)


def test_model_info_says_whether_the_runtime_loads_what_wrote_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (model_dir,) = train_models(tmp_path, ["sklearn-small"]).values()
    target = read_model_info(model_dir)["runtime"]
    installed = library_versions()
    same = installed["scikit-learn"] == RUNTIMES["sklearn"].image["scikit-learn"]
    assert target["kserve"] == KSERVE_VERSION == "0.16.0"
    assert target["name"] == "kserve-sklearnserver"
    assert target["requires"] == "scikit-learn~=1.5.1"
    assert target["exported_with_image_versions"] is same
    if not same:  # this project's virtualenv: newer than the runtime; the export refuses
        assert f"scikit-learn {installed['scikit-learn']}" in target["mismatch"][0]
        assert main(["--out", str(tmp_path / "cluster")]) == 2
        message = capsys.readouterr().err
        assert "make models-cluster" in message and "1.5.2" in message
        assert not (tmp_path / "cluster").exists()


def run_in_export_venv(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXPORT_PYTHON), *argv], capture_output=True, text=True, timeout=300, cwd=REPO
    )


def load_like_the_runtime(
    model_dir: Path, rows: np.ndarray, tmp_path: Path, mode: str = "strict"
) -> tuple[np.ndarray | None, dict, str]:
    """(predictions or None when loading failed, the loader's report, its stderr)."""
    framework = CATALOG[model_dir.name].framework
    x_path, out = tmp_path / f"{model_dir.name}-x.npy", tmp_path / f"{model_dir.name}-y.npy"
    np.save(x_path, rows)
    done = run_in_export_venv("-c", LOADER, str(model_dir), framework, str(x_path), str(out), mode)
    if done.returncode != 0:
        return None, {}, done.stderr
    return np.load(out), json.loads(done.stdout), done.stderr


@needs_export_venv
# This virtualenv's scikit-learn warns when it reads the 1.5.2 pickle; its answers are
# compared below.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.InconsistentVersionWarning")
def test_the_export_loads_and_predicts_in_the_runtime_versions(
    tmp_path: Path, trained_models: Mapping[str, Path]
) -> None:
    out = tmp_path / "trained-cluster"
    argv = ["-m", "kservebench.models.runtime_versions", "--out", str(out)]
    done = run_in_export_venv(*argv, *(a for m in EXPORTED for a in ("--model", m)))
    assert done.returncode == 0, done.stderr[-2000:]
    pinned = pins()
    for name in EXPORTED:
        model_dir, spec = out / name, CATALOG[name]
        info = read_model_info(model_dir)
        assert info["runtime"]["exported_with_image_versions"] is True
        assert info["versions"]["scikit-learn"] == pinned["scikit-learn"]
        assert info["versions"]["xgboost"] == pinned["xgboost-cpu"]
        _, x_test, _, y_test = make_dataset(spec.dataset)
        predicted, report, stderr = load_like_the_runtime(model_dir, x_test, tmp_path)
        assert predicted is not None, stderr[-2000:]  # no InconsistentVersionWarning
        assert report["versions"] == {
            "scikit-learn": pinned["scikit-learn"],
            "xgboost-cpu": pinned["xgboost-cpu"],
            "numpy": pinned["numpy"],
            "joblib": pinned["joblib"],
        }
        # What it predicted when exported (model-info's samples: the first test rows).
        samples = np.asarray(info["sample_predictions"])
        np.testing.assert_allclose(predicted[: len(samples)], samples, rtol=0, atol=1e-6)
        # This project's virtualenv reads the same file to the same answers (local runs
        # can serve the cluster's models).
        artifact, framework = find_artifact(model_dir)
        local = predict_in_process(load_artifact(artifact, framework), framework, x_test)
        np.testing.assert_allclose(predicted, local, rtol=0, atol=1e-6)
        # And it is the same model as the one trained here, up to the libraries' versions.
        artifact, framework = find_artifact(trained_models[name])
        ours = predict_in_process(load_artifact(artifact, framework), framework, x_test)
        if framework == "sklearn":
            assert np.mean(predicted == ours) >= 0.99
        else:
            accuracy = np.mean(predicted.argmax(axis=1) == y_test)
            assert accuracy == pytest.approx(np.mean(ours.argmax(axis=1) == y_test), abs=0.02)
            assert np.mean(predicted.argmax(axis=1) == ours.argmax(axis=1)) >= 0.9


@needs_export_venv
def test_this_projects_own_export_is_not_what_the_runtime_reads(
    tmp_path: Path, trained_models: Mapping[str, Path]
) -> None:
    ours = library_versions()
    sklearn_dir, xgboost_dir = trained_models["sklearn-small"], trained_models["xgboost-small"]
    _, x_test, _, _ = make_dataset(CATALOG["xgboost-small"].dataset)
    if ours["scikit-learn"] != RUNTIMES["sklearn"].image["scikit-learn"]:
        predicted, _, stderr = load_like_the_runtime(sklearn_dir, x_test, tmp_path)
        assert predicted is None
        assert "InconsistentVersionWarning" in stderr, stderr[-2000:]
        assert ours["scikit-learn"] in stderr and "1.5.2" in stderr
    if release(ours["xgboost"] or "0")[0] >= 3:
        # xgboost 2.1 loads an xgboost 3 file without a word, and answers differently.
        predicted, _, stderr = load_like_the_runtime(xgboost_dir, x_test, tmp_path)
        assert predicted is not None, stderr[-2000:]
        artifact, framework = find_artifact(xgboost_dir)
        here = predict_in_process(load_artifact(artifact, framework), framework, x_test)
        assert np.abs(predicted - here).max() > 1e-4
