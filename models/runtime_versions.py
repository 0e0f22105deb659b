"""The library versions KServe's runtimes load models with, and exporting models in them.

A cluster serves our models with KServe's own images, not with the libraries of this
project's virtualenv. A pickled scikit-learn estimator is read reliably only by the
scikit-learn that wrote it (any other version warns that results may be invalid), and
xgboost's readers are not forward-compatible (a model file written by xgboost 3 loads in
2.1 but predicts differently). So the models for a cluster are exported in a virtualenv
of exactly the runtime's versions (``.venv-export``, built by ``make venv-export`` from
``requirements/kserve-0.16-runtimes.txt``), and ``model-info.yaml`` records which
runtime a model targets and whether the libraries that wrote it are that runtime's.

Facts from kserve/kserve v0.16.0: ``python/sklearnserver/pyproject.toml`` asks for
``scikit-learn~=1.5.1`` and ``python/xgbserver/pyproject.toml`` for ``xgboost~=2.1.1``;
their ``uv.lock`` resolve them, on the images' Python 3.11, to the versions below.

``python -m kservebench.models.runtime_versions --out trained-cluster`` (what
``make models-cluster`` runs in ``.venv-export``) refuses to train with other versions.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KSERVE_VERSION = "0.16.0"
REQUIREMENTS = Path(__file__).parent / "requirements" / "kserve-0.16-runtimes.txt"
DEFAULT_OUT = Path("trained-cluster")


@dataclass(frozen=True)
class Runtime:
    """A KServe ClusterServingRuntime and the libraries its image loads models with."""

    name: str
    library: str  # the distribution that reads the artifact
    requires: str  # the runtime's own specifier for it (its pyproject.toml)
    image: Mapping[str, str]  # versions in the image (uv.lock, Python 3.11)


RUNTIMES: dict[str, Runtime] = {
    "sklearn": Runtime(
        "kserve-sklearnserver",
        "scikit-learn",
        "~=1.5.1",
        {"scikit-learn": "1.5.2", "numpy": "2.2.4", "scipy": "1.15.2", "joblib": "1.4.2"},
    ),
    "xgboost": Runtime(
        "kserve-xgbserver", "xgboost", "~=2.1.1", {"xgboost": "2.1.4", "numpy": "2.2.4"}
    ),
}

_VERSION = re.compile(r"(\d+(?:\.\d+)*)")


def release(version: str) -> tuple[int, ...]:
    """``"1.5.2"`` -> (1, 5, 2); local or pre-release tails are ignored."""
    match = _VERSION.match(version.strip())
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match[1].split("."))


def satisfies(version: str, specifier: str) -> bool:
    """``version`` against ``==X.Y.Z`` or a compatible release ``~=X.Y[.Z]`` (PEP 440)."""
    spec = specifier.strip()
    if spec.startswith("=="):
        return release(version) == release(spec[2:])
    if spec.startswith("~="):
        floor = release(spec[2:])
        have = release(version)
        return have >= floor and have[: len(floor) - 1] == floor[:-1]
    raise ValueError(f"unsupported specifier: {specifier!r}")


def loads_in_runtime(runtime: Runtime, versions: Mapping[str, str | None]) -> list[str]:
    """Why an artifact written with ``versions`` is not what ``runtime`` reads ([] if it is):
    the reading library must be the image's version, numpy of the image's major version
    (numpy 2 pickles name modules numpy 1 lacks)."""
    problems = []
    library, wanted = runtime.library, runtime.image[runtime.library]
    have = versions.get(library)
    if have is None or release(have) != release(wanted):
        problems.append(f"{library} {have} (the {runtime.name} image loads with {wanted})")
    numpy, numpy_wanted = versions.get("numpy"), runtime.image["numpy"]
    if numpy is None or release(numpy)[0] != release(numpy_wanted)[0]:
        problems.append(f"numpy {numpy} (the {runtime.name} image has {numpy_wanted})")
    return problems


def runtime_target(framework: str, versions: Mapping[str, str | None]) -> dict[str, Any]:
    """model-info.yaml's ``runtime`` entry: what serves the model on a cluster."""
    runtime = RUNTIMES[framework]
    problems = loads_in_runtime(runtime, versions)
    return {
        "kserve": KSERVE_VERSION,
        "name": runtime.name,
        "requires": f"{runtime.library}{runtime.requires}",
        "image": dict(runtime.image),
        "exported_with_image_versions": not problems,
        **({"mismatch": problems} if problems else {}),
    }


def environment_problems(versions: Mapping[str, str | None]) -> list[str]:
    """What keeps this interpreter from exporting for every runtime ([] when nothing)."""
    return [p for runtime in RUNTIMES.values() for p in loads_in_runtime(runtime, versions)]


def main(argv: Sequence[str] | None = None) -> int:
    """Train the catalogue's tabular models for a cluster's KServe runtimes."""
    from kservebench.models.catalog import MODEL_NAMES
    from kservebench.models.train import library_versions, train_models

    parser = argparse.ArgumentParser(
        prog="python -m kservebench.models.runtime_versions",
        description=f"Export the models with the libraries of KServe {KSERVE_VERSION}'s runtimes.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of model folders")
    parser.add_argument("--model", action="append", choices=MODEL_NAMES, help="default: all")
    parser.add_argument("--force", action="store_true", help="retrain even when current")
    args = parser.parse_args(argv)
    problems = environment_problems(library_versions())
    if problems:
        print(
            f"error: this interpreter ({sys.executable}) has {'; '.join(problems)}: "
            f"run `make models-cluster`, which exports in .venv-export ({REQUIREMENTS.name})",
            file=sys.stderr,
        )
        return 2
    dirs = train_models(args.out, args.model, force=args.force)
    for name, path in dirs.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
