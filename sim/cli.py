"""``kservebench simulate SPEC --out DIR``: project an experiment through HPA/KPA models.

Example::

    kservebench simulate bench/specs/knative.yaml --calibrate results/hpa-20260101T000000Z \\
        --out results/knative-sim

``measured`` service and cold-start times in the spec come from ``--calibrate``, a
results folder of a measured local run; numbers in the spec are used as they are.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from kservebench.errors import SpecError

app = typer.Typer(add_completion=False, help="Simulate an experiment spec (HPA/KPA).")


def _show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


@app.command()
def simulate(
    spec: Path = typer.Argument(..., help="Experiment spec (YAML), as for `kservebench bench`."),
    out: Path = typer.Option(..., "--out", help="Results folder to write."),
    calibrate: Path | None = typer.Option(
        None, "--calibrate", help="Measured local run: service and cold-start times."
    ),
    calibrate_replicas: int | None = typer.Option(
        None,
        "--calibrate-replicas",
        help="Replicas per model in the calibration run (default: from its run.json).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of arrivals and service times."),
    slots: int = typer.Option(1, "--slots", help="Requests one replica serves at once."),
    scheduling: str = typer.Option("0s", "--scheduling-delay", help="Pod created -> scheduled."),
    image_pull: str = typer.Option("0s", "--image-pull", help="Scheduled -> container started."),
    fixed: int | None = typer.Option(
        None, "--fixed", help="Fixed replicas, no autoscaler (the local target)."
    ),
) -> None:
    from kservebench.loadgen.patterns import parse_duration
    from kservebench.sim.calibrate import calibrate_from_run
    from kservebench.sim.experiment import SimOptions, load_spec, simulate_experiment

    try:
        experiment = load_spec(spec)
        calibration = calibrate_from_run(calibrate, calibrate_replicas) if calibrate else None
        if slots < 1:
            raise SpecError("--slots", slots, "must be >= 1")
        if fixed is not None and fixed < 1:
            raise SpecError("--fixed", fixed, "must be >= 1")
        options = SimOptions(
            seed=seed,
            slots=slots,
            scheduling_s=parse_duration(scheduling, "--scheduling-delay"),
            image_pull_s=parse_duration(image_pull, "--image-pull"),
            fixed_replicas=fixed,
        )
        if _show_progress():
            from rich.console import Console

            console = Console(stderr=True)
            with console.status("simulating") as status:

                def on_model(model: str, repetition: int) -> None:
                    status.update(f"simulating {model} (repetition {repetition + 1})")

                summary = simulate_experiment(experiment, out, calibration, options, on_model)
        else:
            summary = simulate_experiment(experiment, out, calibration, options)
    except SpecError as err:
        typer.echo(f"error: {err}", err=True)
        # SystemExit, not typer.Exit: the outer `kservebench` group is plain click.
        raise SystemExit(2) from None
    overall = summary["overall"]
    latency = overall["latency_ms"]
    typer.echo(
        f"simulated {overall['requests']} requests ({overall['errors']} errors), "
        f"p50 {latency['p50']} ms, p95 {latency['p95']} ms -> {out}"
    )
