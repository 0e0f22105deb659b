"""The simulated projection of a measured local run (``DIR/simulated/``).

A local run's measured service and cold-start times calibrate the simulator, which then
plays the same experiment (same plan, same arrivals, same pattern labels) through the
control plane the spec names: the HPA for ``mode: hpa``, Knative's KPA for ``mode:
knative``, with the local plane's own settings (HPA sync period, metrics resolution, the
replicas' CPU limit), so the report can set simulation against measurement. The result is a complete
simulated results folder nested in the measured one; readers of the measured run skip it
(``kservebench.results.files_of_run``) so simulated requests never mix with measured ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kservebench.results import CONTROL_PLANES, PROJECTION_DIR, projection_title


def local_options(run_dir: Path, experiment: Any) -> Any:
    """Simulator options matching the local control plane that measured ``run_dir``."""
    from kservebench.results import read_run
    from kservebench.sim.experiment import SimOptions

    local = experiment.local
    plane = read_run(run_dir).get("local") or {}
    limit = (plane.get("resources") or {}).get("cpu_limit_cores")
    enforced = bool((plane.get("limits") or {}).get("enforced"))
    return SimOptions(
        fixed_replicas=local.fixed_replicas,
        hpa_sync_period_s=local.hpa_sync_period_s,
        metrics_resolution_s=local.metrics_resolution_s,
        busy_cores=min(1.0, float(limit)) if enforced and limit else 1.0,
    )


def project_run(run_dir: Path | str, experiment: Any) -> dict[str, Any]:
    """Calibrate from ``run_dir``, simulate ``experiment`` into ``run_dir/simulated``.

    Returns what run.json records about it; raises whatever the calibration or the
    simulation raises (the bench records it and keeps the measured results)."""
    from kservebench.sim.calibrate import calibrate_from_run
    from kservebench.sim.experiment import simulate_experiment

    run_dir = Path(run_dir)
    started = time.monotonic()
    calibration = calibrate_from_run(run_dir)
    summary = simulate_experiment(
        experiment, run_dir / PROJECTION_DIR, calibration, local_options(run_dir, experiment)
    )
    return {
        "folder": PROJECTION_DIR,
        "mode": experiment.mode,
        "control_plane": CONTROL_PLANES.get(experiment.mode, experiment.mode),
        "title": projection_title(experiment.mode),
        "calibration": calibration.describe(),
        "requests": summary["overall"]["requests"],
        "wall_s": round(time.monotonic() - started, 2),
    }
