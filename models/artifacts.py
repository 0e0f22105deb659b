"""Exported model directories: find the artifact, read the metadata, load the model.

A model directory is exactly what a KServe runtime loads (one artifact file of the
runtime's extensions) plus ``model-info.yaml`` beside it, which tells the other
stages what the model expects (feature count and dtype, sample instances for load
generation) without importing scikit-learn or xgboost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kservebench.errors import SpecError
from kservebench.models.catalog import Framework, framework_of_artifact

INFO_FILE = "model-info.yaml"


def find_artifact(model_dir: Path, field_path: str = "model_dir") -> tuple[Path, Framework]:
    """The single model file in ``model_dir`` and the framework that loads it.

    Mirrors the KServe runtimes' rule: exactly one file with a known model extension.
    (``model-info.yaml`` never counts: .yaml is no model extension.)
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SpecError(field_path, str(model_dir), "not a directory")
    found = sorted(
        (p, fw)
        for p in model_dir.iterdir()
        if p.is_file() and (fw := framework_of_artifact(p.name)) is not None
    )
    if not found:
        raise SpecError(
            field_path,
            str(model_dir),
            "no model file (*.joblib|*.pkl|*.pickle for sklearn, *.bst|*.json|*.ubj for xgboost)",
        )
    if len(found) > 1:
        names = ", ".join(p.name for p, _ in found)
        raise SpecError(field_path, str(model_dir), f"more than one model file ({names})")
    return found[0]


def read_model_info(model_dir: Path) -> dict[str, Any]:
    """The metadata written beside an exported model (see ``train.model_info``)."""
    path = Path(model_dir) / INFO_FILE
    if not path.is_file():
        raise SpecError("model_dir", str(model_dir), f"no {INFO_FILE} (train it first)")
    info = yaml.safe_load(path.read_text())
    if not isinstance(info, dict) or "name" not in info:
        raise SpecError("model_dir", str(model_dir), f"{INFO_FILE} is not a model description")
    return info


def write_model_info(model_dir: Path, info: dict[str, Any]) -> Path:
    path = Path(model_dir) / INFO_FILE
    path.write_text(yaml.safe_dump(info, sort_keys=False))
    return path


def load_artifact(path: Path, framework: Framework, nthread: int = 1) -> Any:
    """The in-memory model the runtime serves: an sklearn estimator or an xgb.Booster."""
    if framework == "sklearn":
        import joblib

        return joblib.load(path)
    import xgboost as xgb

    # Like KServe's xgbserver: a bare Booster with a fixed thread count (one CPU per pod).
    # Loading from bytes lets xgboost detect the format itself: a .bst name is no hint.
    booster = xgb.Booster(params={"nthread": nthread})
    booster.load_model(bytearray(Path(path).read_bytes()))
    return booster
