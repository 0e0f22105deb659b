"""Train the catalogue's models and export them in the layout KServe's runtimes load.

``train_models`` is the I/O shell: for each requested name it either keeps an
existing directory that already matches the catalogue entry (same fingerprint, same
library version) or trains, exports and describes the model in a temporary directory
and moves it into place, so a half-written model directory is never left behind.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from kservebench.errors import SpecError
from kservebench.models.artifacts import (
    find_artifact,
    load_artifact,
    read_model_info,
    write_model_info,
)
from kservebench.models.catalog import (
    FEATURE_DTYPE,
    ModelSpec,
    build_estimator,
    get_spec,
    make_dataset,
    resolve_names,
)
from kservebench.models.runtime_versions import runtime_target

LIBRARY = {"sklearn": "scikit-learn", "xgboost": "xgboost"}
SAMPLE_ROWS = 8
# Progress callback: (model name, event) with event "trained" or "kept".
OnModel = Callable[[str, str], None]


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in ("scikit-learn", "xgboost", "xgboost-cpu", "numpy", "joblib"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    # xgboost-cpu installs the `xgboost` module; report it under the module's name.
    if versions.get("xgboost") is None:
        versions["xgboost"] = versions.get("xgboost-cpu")
    versions.pop("xgboost-cpu", None)
    return versions


def is_current(model_dir: Path, spec: ModelSpec) -> bool:
    """True when ``model_dir`` holds ``spec`` trained with the installed library."""
    try:
        info = read_model_info(model_dir)
        artifact, _ = find_artifact(model_dir)
    except SpecError:
        return False
    library = LIBRARY[spec.framework]
    return (
        info.get("fingerprint") == spec.fingerprint()
        and info.get("versions", {}).get(library) == library_versions().get(library)
        and artifact.name == spec.artifact_name
        and artifact.stat().st_size == info.get("size_bytes")
    )


def predict_in_process(model: Any, framework: str, x: np.ndarray) -> np.ndarray:
    """What the served model answers for ``x`` (sklearn: class labels; xgboost: Booster
    output, here class probabilities)."""
    if framework == "sklearn":
        return model.predict(x)
    import xgboost as xgb

    return model.predict(xgb.DMatrix(x, nthread=1))


def export_model(spec: ModelSpec, fitted: Any, model_dir: Path) -> Path:
    """Write the runtime's single artifact file into ``model_dir``."""
    path = model_dir / spec.artifact_name
    if spec.framework == "sklearn":
        import joblib

        # Serve single-threaded, like one CPU per replica: thread fan-out per request
        # would only add overhead for one-row requests.
        if "n_jobs" in fitted.get_params():
            fitted.set_params(n_jobs=None)
        joblib.dump(fitted, path)
    else:
        # UBJSON is xgboost's own format; written as raw bytes so the .bst name the
        # runtime accepts does not make xgboost warn about guessing a format.
        path.write_bytes(bytes(fitted.get_booster().save_raw("ubj")))
    return path


def model_info(
    spec: ModelSpec,
    artifact: Path,
    scores: dict[str, float],
    samples: np.ndarray,
    sample_predictions: np.ndarray,
    training_s: float,
) -> dict[str, Any]:
    """The metadata written as model-info.yaml (plain YAML types only). ``runtime`` names
    the KServe runtime that serves it on a cluster and whether the libraries that wrote it
    are the ones that runtime loads it with (see runtime_versions.py)."""
    versions = library_versions()
    return {
        "name": spec.name,
        "library": LIBRARY[spec.framework],
        "framework": spec.framework,
        "estimator": spec.estimator,
        "description": spec.description,
        "artifact": artifact.name,
        "size_bytes": artifact.stat().st_size,
        "features": {"count": spec.dataset.features, "dtype": FEATURE_DTYPE},
        "classes": spec.dataset.classes,
        "output": "class label per instance"
        if spec.framework == "sklearn"
        else "class probabilities per instance",
        "sample_instances": samples.astype(float).tolist(),
        "sample_predictions": sample_predictions.tolist(),
        "scores": {k: round(float(v), 6) for k, v in scores.items()},
        "training_s": round(training_s, 3),
        "params": dict(spec.params),
        "seed": spec.seed,
        "dataset": spec.as_dict()["dataset"],
        "fingerprint": spec.fingerprint(),
        "versions": versions,
        "runtime": runtime_target(spec.framework, versions),
    }


def train_one(spec: ModelSpec, model_dir: Path, n_jobs: int = 1) -> dict[str, Any]:
    """Train ``spec``, export it into the (empty, existing) ``model_dir``, describe it."""
    x_train, x_test, y_train, y_test = make_dataset(spec.dataset)
    started = time.perf_counter()
    estimator = build_estimator(spec, n_jobs=n_jobs).fit(x_train, y_train)
    training_s = time.perf_counter() - started
    scores = {
        "train_accuracy": estimator.score(x_train, y_train),
        "test_accuracy": estimator.score(x_test, y_test),
    }
    artifact = export_model(spec, estimator, model_dir)
    # Sample predictions come from the exported file, loaded as the runtime loads it.
    samples = x_test[:SAMPLE_ROWS]
    served = load_artifact(artifact, spec.framework)
    predictions = predict_in_process(served, spec.framework, samples)
    info = model_info(spec, artifact, scores, samples, predictions, training_s)
    write_model_info(model_dir, info)
    return info


def move_into_place(staging: Path, target: Path, spec: ModelSpec) -> None:
    """Replace ``target`` by the freshly trained ``staging`` folder.

    Another process (a second benchmark, a parallel test run) may have put a current
    model there meanwhile: then that one stays, since both are the same training.
    """
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:
        if not is_current(target, spec):
            raise


def train_models(
    out_dir: Path,
    names: list[str] | None = None,
    *,
    force: bool = False,
    on_model: OnModel | None = None,
) -> dict[str, Path]:
    """Train (or keep, when already current) the named models under ``out_dir``.

    Returns ``{name: model directory}`` in catalogue order. ``names`` None means the
    whole catalogue; an unknown name raises SpecError before anything is written.
    """
    out_dir = Path(out_dir)
    selected = resolve_names(names)
    out_dir.mkdir(parents=True, exist_ok=True)
    dirs: dict[str, Path] = {}
    for name in selected:
        spec = get_spec(name)
        target = out_dir / name
        if not force and is_current(target, spec):
            event = "kept"
        else:
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
            try:
                train_one(spec, staging)
                staging.chmod(0o755)  # mkdtemp makes 0700 folders; others may serve them
                move_into_place(staging, target, spec)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            event = "trained"
        dirs[name] = target
        if on_model is not None:
            on_model(name, event)
    return dirs
