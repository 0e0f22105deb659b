"""``kservebench bench SPEC``: run an experiment spec end to end, on this machine or a cluster.

Examples::

    kservebench bench bench/specs/hpa.yaml                      # local target, results/
    kservebench bench bench/specs/knative.yaml --target cluster \\
        --prometheus-url http://127.0.0.1:9090 --storage-uri-prefix pvc://models

Exit status: 0 finished, 1 failed, 2 bad spec or options, 130 interrupted. The results
folder is printed last, whatever happened.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from kservebench.errors import SpecError

app = typer.Typer(add_completion=False, help="Run an experiment spec end to end.")

TARGETS = ("local", "cluster")
EXIT_CODES = {"finished": 0, "finished with incidents": 0, "failed": 1, "interrupted": 130}


def _fail(message: str, code: int = 2) -> SystemExit:
    # SystemExit, not typer.Exit: the top-level `kservebench` group is plain click.
    typer.echo(f"error: {message}", err=True)
    return SystemExit(code)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    # A CI timeout or `kill` stops the run like Ctrl-C: collected data kept, servers stopped.
    raise KeyboardInterrupt


@app.command()
def bench(
    spec: Annotated[
        Path, typer.Argument(help="Experiment spec (YAML), e.g. bench/specs/hpa.yaml.")
    ],
    target: Annotated[
        str, typer.Option(help="local (this machine) or cluster (kubeconfig).")
    ] = "local",
    results: Annotated[Path, typer.Option(help="Folder for results/<name>-<UTC time>/.")] = Path(
        "results"
    ),
    trained: Annotated[
        Path,
        typer.Option(help="Trained models (local: trained if missing; cluster: payload rows)."),
    ] = Path("trained"),
    namespace: Annotated[
        str, typer.Option(help="Cluster: namespace of the ModelDeployments.")
    ] = "kservebench",
    storage_uri_prefix: Annotated[
        str, typer.Option(help="Cluster: storageUri = PREFIX/<model>.")
    ] = "pvc://models",
    prometheus_url: Annotated[
        str | None, typer.Option(help="Cluster: Prometheus to read series from.")
    ] = None,
    url_template: Annotated[
        str | None,
        typer.Option(help="Cluster: traffic URL, e.g. http://{name}.{namespace}.example.com."),
    ] = None,
    kserve_names: Annotated[
        str, typer.Option(help="Cluster: current (KServe >= 0.16) or legacy mode names.")
    ] = "current",
    keep: Annotated[
        bool, typer.Option(help="Cluster: leave the ModelDeployments in place.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Live panel (default: on a terminal)."),
    ] = None,
    project: Annotated[
        bool,
        typer.Option(
            "--project/--no-project",
            help="Local: add the simulated HPA/KPA projection, calibrated from the run.",
        ),
    ] = True,
) -> None:
    """Deploy, wait ready, warm up, run every pattern, collect series, write the report."""
    from kservebench.bench.runner import ExperimentRun
    from kservebench.bench.spec import load_experiment

    if target not in TARGETS:
        raise _fail(f"--target: must be one of {', '.join(TARGETS)} (got {target!r})")
    if kserve_names not in ("current", "legacy"):
        raise _fail(f"--kserve-names: must be current or legacy (got {kserve_names!r})")
    try:
        experiment = load_experiment(spec)
    except SpecError as err:
        raise _fail(f"{spec}: {err}") from None

    after_run: Any = None  # runner.AfterRun
    if target == "local":
        from kservebench.bench.local import LocalTarget

        def make_target(run_dir: Path) -> Any:
            return LocalTarget(experiment, run_dir, trained)

        # LLM runs have no projection yet: the HPA/KPA simulator models tabular replicas.
        if project and experiment.models[0].llm is None:
            # The simulator, calibrated from this run's own service and start-up times,
            # replays it through the same policy: the report sets the two side by side.
            from kservebench.sim.projection import project_run

            after_run = project_run
    else:
        from kservebench.bench.cluster import ClusterTarget

        def make_target(run_dir: Path) -> Any:
            return ClusterTarget(
                experiment, run_dir, namespace, storage_uri_prefix, prometheus_url,
                url_template, kserve_names, keep, trained,
            )  # fmt: skip

    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        run = ExperimentRun(
            experiment, make_target, results, live=progress, after_run=after_run, spec_path=spec
        )
        status = run.execute()
    finally:
        signal.signal(signal.SIGTERM, previous)
    typer.echo(f"{status}: {run.out}")
    if run.run.get("error"):
        typer.echo(f"error: {run.run['error']}", err=True)
    if EXIT_CODES[status]:
        raise SystemExit(EXIT_CODES[status])
