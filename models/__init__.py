"""Benchmark models: the catalogue, training and export, and local KServe serving.

Public API (imported lazily, so ``import kservebench.models`` stays cheap and never
pulls in scikit-learn, xgboost or kserve before they are needed):

- ``MODEL_NAMES``, ``CATALOG``: the catalogue (``catalog.py``)
- ``train_models(out_dir, names=None)``: train and export (``train.py``)
- ``read_model_info(model_dir)``, ``find_artifact(model_dir)``: exported dirs (``artifacts.py``)
- ``LocalModelServer``: a real KServe ModelServer as a child process (``local.py``)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MODEL_NAMES": "catalog",
    "CATALOG": "catalog",
    "ModelSpec": "catalog",
    "get_spec": "catalog",
    "train_models": "train",
    "read_model_info": "artifacts",
    "find_artifact": "artifacts",
    "LocalModelServer": "local",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
