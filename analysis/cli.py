"""``kservebench report`` and ``kservebench analyze``.

report:  results folders -> report.html / report.md / summary.json (+ plots/).
analyze: one results folder + a Prometheus URL -> series/*.parquet for the run's window.
Bad input (a missing folder, a bad step) is a one-line error and exit code 2.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kservebench.errors import SpecError

report_app = typer.Typer(add_completion=False, help="Build reports from results folders.")
analyze_app = typer.Typer(add_completion=False, help="Collect Prometheus series for a run.")
err = Console(stderr=True)


def _fail(error: Exception) -> SystemExit:
    # SystemExit, not typer.Exit: the lazy top-level group is plain click, and typer ships
    # its own click, whose Exit the outer group would report as a traceback.
    err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
    return SystemExit(2)


@contextmanager
def _progress(enabled: bool):  # type: ignore[no-untyped-def]
    """A rich status line on a terminal; nothing when piped or under CI."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda _msg: None
        return
    with err.status("starting") as status:
        yield lambda msg: status.update(msg)


@report_app.command()
def report(
    dirs: Annotated[list[Path], typer.Argument(help="Results folders (several compare).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default DIR/report).")] = None,
    slo_ms: Annotated[
        float | None, typer.Option(help="Latency SLO in ms (default: run.json slo_ms or 100).")
    ] = None,
    window_s: Annotated[float, typer.Option(help="Window for metrics over time (s).")] = 10.0,
    rps_per_replica: Annotated[
        float | None, typer.Option(help="Target rate per replica, for over/under-provisioning.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Write report.html, report.md and summary.json for one or several results folders."""
    from kservebench.analysis.report import build_report

    try:
        for i, d in enumerate(dirs):
            if not d.is_dir():
                raise SpecError(f"DIR[{i}]", str(d), "no such results folder")
        if window_s <= 0:
            raise SpecError("--window-s", window_s, "must be positive")
        if len(dirs) > 1 and out is None:
            out = Path("report-compare")
        with _progress(not quiet) as say:
            written = build_report(dirs, out, slo_ms, window_s, rps_per_replica, progress=say)
    except SpecError as error:
        raise _fail(error) from None
    if not quiet:
        typer.echo(f"wrote {written['html']}, {written['md'].name}, {written['json'].name}")


@analyze_app.command()
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="Results folder with run.json.")],
    prometheus: Annotated[str, typer.Option(help="Prometheus base URL.")],
    step: Annotated[str, typer.Option(help="Query resolution step.")] = "1s",
    target: Annotated[str, typer.Option(help="cluster, local or auto.")] = "auto",
    namespace: Annotated[str, typer.Option(help="Namespace regex.")] = ".*",
    rate_window: Annotated[
        str | None, typer.Option(help="rate() window (default 5s local, 1m cluster/auto).")
    ] = None,
    job: Annotated[str, typer.Option(help="Local scrape-job regex.")] = ".+",
) -> None:
    """Collect every catalog family over the run's window into DIR/series/."""
    from kservebench.analysis.collect import collect_run

    try:
        if not run_dir.is_dir():
            raise SpecError("DIR", str(run_dir), "no such results folder")
        with _progress(True) as say:
            collection, series_dir = collect_run(
                run_dir,
                prometheus,
                step,
                target=target,
                namespace=namespace,
                rate_window=rate_window,
                job=job,
                progress=say,
            )
    except SpecError as error:
        raise _fail(error) from None
    typer.echo(f"{len(collection.frames)} families written to {series_dir}")
    if collection.missing:
        typer.echo(f"missing (no data): {', '.join(sorted(collection.missing))}")
    for family, text in sorted(collection.errors.items()):
        typer.echo(f"query error in {family}: {text}")
