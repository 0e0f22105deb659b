"""The simulated projection of a measured local run (``DIR/simulated/``).

A local run has fixed replicas: no autoscaler runs on this machine. Its measured service
and cold-start times calibrate the simulator, which then plays the same experiment (same
plan, same arrivals, same pattern labels) through the control plane the spec names: the
HPA for ``mode: hpa``, Knative's KPA for ``mode: knative``. The result is a complete
simulated results folder nested in the measured one; readers of the measured run skip it
(``kservebench.results.files_of_run``) so simulated requests never mix with measured ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kservebench.results import CONTROL_PLANES, PROJECTION_DIR, projection_title


def project_run(run_dir: Path | str, experiment: Any) -> dict[str, Any]:
    """Calibrate from ``run_dir``, simulate ``experiment`` into ``run_dir/simulated``.

    Returns what run.json records about it; raises whatever the calibration or the
    simulation raises (the bench records it and keeps the measured results)."""
    from kservebench.sim.calibrate import calibrate_from_run
    from kservebench.sim.experiment import simulate_experiment

    run_dir = Path(run_dir)
    started = time.monotonic()
    calibration = calibrate_from_run(run_dir)
    summary = simulate_experiment(experiment, run_dir / PROJECTION_DIR, calibration)
    return {
        "folder": PROJECTION_DIR,
        "mode": experiment.mode,
        "control_plane": CONTROL_PLANES.get(experiment.mode, experiment.mode),
        "title": projection_title(experiment.mode),
        "calibration": calibration.describe(),
        "requests": summary["overall"]["requests"],
        "wall_s": round(time.monotonic() - started, 2),
    }
