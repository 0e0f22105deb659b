"""``kservebench train`` and ``kservebench serve``.

``train`` covers both catalogues: the tabular models (``catalog.py``) and the tiny LLMs
(``llm.py``), chosen by the same ``--model`` option.

Bad input (unknown model name, a directory that is no exported model) ends with a
message naming the option and the value and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import typer

from kservebench.errors import SpecError

# KServe puts the name in URL paths (/v1/models/<name>:predict, /v2/models/<name>/infer).
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

train_app = typer.Typer(add_completion=False, help="Train the benchmark models and export them.")
serve_app = typer.Typer(add_completion=False, help="Serve an exported model with KServe.")


def fail(option: str, value: object, problem: str) -> NoReturn:
    """Report bad input on stderr in one plain line and exit 2, the usage-error code.

    Plain rather than typer.BadParameter: Typer draws that in a box that wraps long
    values (paths) across lines, which scripts and logs cannot search.
    """
    typer.echo(f"Error: Invalid value for '{option}': {value!r}: {problem}", err=True)
    raise SystemExit(2)


def show_progress() -> bool:
    """Progress bars only for a person at a terminal (not under CI, not into a file)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


@train_app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Folder that receives one folder per model."),
    model: list[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Catalogue name to train or export (repeatable: tabular models and tiny LLMs);"
        " default: all.",
    ),
    force: bool = typer.Option(False, "--force", help="Retrain even when already current."),
) -> None:
    """Train the catalogue's models and export the tiny LLMs (or the named ones) into
    OUT/<name>/."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from kservebench.models.catalog import MODEL_NAMES
    from kservebench.models.llm import LLM_NAMES, export_llms
    from kservebench.models.train import train_models

    requested = model or []
    for name in requested:
        if name not in MODEL_NAMES and name not in LLM_NAMES:
            known = ", ".join([*MODEL_NAMES, *LLM_NAMES])
            fail("--model", name, f"unknown model; known: {known}")
    # Catalogue order, tabular models first; nothing named means everything.
    tabular = [n for n in MODEL_NAMES if not requested or n in requested]
    llms = [n for n in LLM_NAMES if not requested or n in requested]
    names = tabular + llms
    if out.exists() and not out.is_dir():
        fail("--out", str(out), "exists and is not a folder")

    def verb(name: str) -> str:
        return "exporting" if name in LLM_NAMES else "training"

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress(),
    ) as progress:
        task = progress.add_task(f"{verb(names[0])} {names[0]}", total=len(names))

        def on_model(name: str, event: str) -> None:
            progress.advance(task)
            rest = names[names.index(name) + 1 :]
            progress.update(task, description=f"{verb(rest[0])} {rest[0]}" if rest else "done")
            if not show_progress():
                console.print(f"{name}: {event}")

        # train_models takes no names as "all": call it only when some are wanted.
        dirs = train_models(out, tabular, force=force, on_model=on_model) if tabular else {}
        if llms:
            dirs |= export_llms(out, llms, force=force, on_model=on_model)
    for name, path in dirs.items():
        typer.echo(f"{name}\t{path}")


@serve_app.command()
def serve(
    model_dir: Path = typer.Option(..., "--model-dir", help="An exported model folder."),
    name: str = typer.Option(..., "--name", help="Model name in the URL paths."),
    port: int = typer.Option(8080, "--port", help="HTTP port."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (0.0.0.0 inside a container)."
    ),
    workers: int = typer.Option(1, "--workers", help="Uvicorn worker processes."),
) -> None:
    """Serve MODEL_DIR with KServe's ModelServer (REST v1 and v2, /metrics)."""
    from kservebench.models.artifacts import find_artifact

    try:
        find_artifact(model_dir, "--model-dir")
    except SpecError as err:
        fail("--model-dir", err.value, err.problem)
    if not MODEL_NAME_RE.match(name):
        fail("--name", name, "letters, digits, '.', '_' or '-', starting with a letter or digit")
    if not 1 <= port <= 65535:
        fail("--port", port, "not a TCP port (1-65535)")
    if workers < 1:
        fail("--workers", workers, "must be >= 1")

    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Shared metric files, so /metrics sums all workers (see server.py). Must be
        # set before kserve (and so prometheus_client) is imported.
        metrics_dir = tempfile.mkdtemp(prefix="kservebench-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        from kservebench.models.server import serve as run_server

        run_server(model_dir, name, port, workers, host)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
