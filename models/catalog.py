"""The model catalogue: which models the benchmark serves, and how each is built.

Every model is trained on the same offline, generated tabular data set so that the
models differ only in inference cost: a logistic regression is a few dot products,
a random forest of hundreds of deep trees is tens of milliseconds per request. Sizes
grow from ``small`` to ``large`` within each library.

Everything here is pure: a catalogue entry is data, ``build_estimator`` turns it into
an unfitted estimator, ``make_dataset`` into arrays. Heavy libraries are imported
inside the functions so that reading the catalogue stays cheap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from kservebench.errors import SpecError

Framework = Literal["sklearn", "xgboost"]

# Artifact file names per framework, as the KServe runtimes expect them: the sklearn
# server loads the single *.joblib|*.pkl|*.pickle in the model directory, the xgboost
# server the single *.bst|*.json|*.ubj (as an xgb.Booster).
ARTIFACT_EXTENSIONS: dict[Framework, tuple[str, ...]] = {
    "sklearn": (".joblib", ".pkl", ".pickle"),
    "xgboost": (".bst", ".json", ".ubj"),
}
ARTIFACT_NAMES: dict[Framework, str] = {"sklearn": "model.joblib", "xgboost": "model.bst"}

# Features are float32 so a value survives every transport unchanged: JSON (v1), FP32
# tensors (v2) and xgboost's DMatrix all hold it exactly.
FEATURE_DTYPE = "float32"


@dataclass(frozen=True)
class DatasetSpec:
    """A generated classification problem (``sklearn.datasets.make_classification``)."""

    rows: int = 5000
    features: int = 20
    informative: int = 10
    classes: int = 3
    test_fraction: float = 0.2
    seed: int = 42


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue entry: a named estimator with fixed hyperparameters and seed."""

    name: str
    framework: Framework
    estimator: str  # "logistic_regression" | "random_forest" | "xgb_classifier"
    params: dict[str, Any]
    description: str
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    seed: int = 0

    @property
    def artifact_name(self) -> str:
        return ARTIFACT_NAMES[self.framework]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Stable hash of the entry: a trained directory matches it iff the hashes agree."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "sklearn-small",
            "sklearn",
            "logistic_regression",
            {"max_iter": 1000},
            "logistic regression: one matrix product per request",
        ),
        ModelSpec(
            "sklearn-medium",
            "sklearn",
            "random_forest",
            {"n_estimators": 50, "max_depth": 10},
            "random forest, 50 trees of depth <= 10",
        ),
        ModelSpec(
            "sklearn-large",
            "sklearn",
            "random_forest",
            {"n_estimators": 300, "max_depth": 16},
            "random forest, 300 trees of depth <= 16 (tens of MB on disk)",
        ),
        ModelSpec(
            "xgboost-small",
            "xgboost",
            "xgb_classifier",
            {"n_estimators": 20, "max_depth": 3, "learning_rate": 0.3},
            "gradient boosting, 20 rounds of depth-3 trees",
        ),
        ModelSpec(
            "xgboost-medium",
            "xgboost",
            "xgb_classifier",
            {"n_estimators": 100, "max_depth": 6, "learning_rate": 0.1},
            "gradient boosting, 100 rounds of depth-6 trees",
        ),
        ModelSpec(
            "xgboost-large",
            "xgboost",
            "xgb_classifier",
            {"n_estimators": 300, "max_depth": 10, "learning_rate": 0.1},
            "gradient boosting, 300 rounds of depth-10 trees",
        ),
    )
}
MODEL_NAMES: list[str] = list(CATALOG)


def get_spec(name: str, field_path: str = "model") -> ModelSpec:
    """The catalogue entry for ``name``; SpecError naming ``field_path`` if unknown."""
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(MODEL_NAMES)
        raise SpecError(field_path, name, f"unknown model; known: {known}") from None


def resolve_names(names: list[str] | None, field_path: str = "models") -> list[str]:
    """Catalogue order, without duplicates; all models when ``names`` is None or empty."""
    if not names:
        return list(MODEL_NAMES)
    for i, name in enumerate(names):
        get_spec(name, f"{field_path}[{i}]")
    return [n for n in MODEL_NAMES if n in set(names)]


def framework_of_artifact(file_name: str) -> Framework | None:
    """Which runtime loads a file with this name (by extension), or None."""
    lower = file_name.lower()
    for framework, extensions in ARTIFACT_EXTENSIONS.items():
        if lower.endswith(extensions):
            return framework
    return None


def make_dataset(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic (X_train, X_test, y_train, y_test), features in FEATURE_DTYPE."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    x, y = make_classification(
        n_samples=spec.rows,
        n_features=spec.features,
        n_informative=spec.informative,
        n_classes=spec.classes,
        random_state=spec.seed,
    )
    x = x.astype(FEATURE_DTYPE)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=spec.test_fraction, random_state=spec.seed, stratify=y
    )
    return x_train, x_test, y_train, y_test


def build_estimator(spec: ModelSpec, n_jobs: int = 1) -> Any:
    """An unfitted estimator for ``spec``; ``n_jobs`` only changes training speed."""
    if spec.estimator == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(random_state=spec.seed, **spec.params)
    if spec.estimator == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(random_state=spec.seed, n_jobs=n_jobs, **spec.params)
    if spec.estimator == "xgb_classifier":
        from xgboost import XGBClassifier

        # hist on CPU is deterministic for a fixed seed whatever the thread count.
        # (On a busy machine more threads make xgboost far slower: OpenMP workers spin.)
        return XGBClassifier(
            tree_method="hist", random_state=spec.seed, n_jobs=n_jobs, **spec.params
        )
    raise SpecError(f"catalog.{spec.name}.estimator", spec.estimator, "unknown estimator kind")
