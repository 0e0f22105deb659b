"""Self-describing results folders: what ran, with which versions, when.

Every run (loadgen, bench, simulate) writes ``run.json`` at the top of its folder:
the spec, the package and library versions, the git revision, and start/end times.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
# A measured local run holds its simulated projection (a complete results folder of its
# own) in this subfolder; readers of the measured run must never mix the two.
PROJECTION_DIR = "simulated"
CONTROL_PLANES = {"hpa": "HPA", "knative": "Knative KPA"}
LIBRARIES = (
    "kservebench",
    "kserve",
    "kopf",
    "kubernetes",
    "locust",
    "prometheus-api-client",
    "pandas",
    "pyarrow",
    "numpy",
    "scikit-learn",
    "xgboost-cpu",
    "simpy",
)


def projection_title(mode: str) -> str:
    """The heading a projection gets: says it is simulated, and from what."""
    plane = CONTROL_PLANES.get(mode, mode)
    return f"Simulated {plane} projection (calibrated from this run)"


def files_of_run(run_dir: Path, pattern: str, skip: tuple[str, ...] = ()) -> list[Path]:
    """Files matching ``pattern`` below ``run_dir`` that belong to this run itself.

    A nested simulated projection is a run of its own and is left out, as are files
    below any folder named in ``skip``."""
    run_dir = Path(run_dir)
    skipped = {PROJECTION_DIR, *skip}
    return [
        path
        for path in sorted(run_dir.rglob(pattern))
        if not skipped & set(path.relative_to(run_dir).parts[:-1])
    ]


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    revision = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=cwd or Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return f"{revision}-dirty" if dirty else revision


def start_run(out_dir: Path, kind: str, spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Create ``out_dir`` and write its run.json before any work starts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = {
        "kind": kind,
        "spec": spec,
        "started_at": time.time(),
        "ended_at": None,
        "status": "running",
        "versions": library_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_revision": git_revision(),
        **extra,
    }
    write_run(out_dir, run)
    return run


def finish_run(out_dir: Path, run: dict[str, Any], status: str = "finished", **extra: Any) -> None:
    run.update(ended_at=time.time(), status=status, **extra)
    write_run(out_dir, run)


def write_run(out_dir: Path, run: dict[str, Any]) -> None:
    path = Path(out_dir) / RUN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run, indent=2, default=str))
    tmp.replace(path)


def read_run(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else {}
