"""The ``kservebench`` command.

Subcommands are loaded lazily: ``loadgen`` imports Locust, which monkey-patches the
standard library with gevent, and that must never happen inside ``serve`` or the
operator. Each entry names the module and the Typer app that implements it, so every
stage owns its own command-line code. The dispatcher is deliberately plain: Typer
carries its own copy of Click, so a Click group around Typer apps would not catch
their exit and usage exceptions.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import typer

from kservebench import __version__

# name -> ("module:attribute", one-line help shown by `kservebench --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("kservebench.models.cli:train_app", "Train the benchmark models and export them."),
    "serve": ("kservebench.models.cli:serve_app", "Serve an exported model with KServe."),
    "render": ("kservebench.operator.cli:render_app", "Print the InferenceService for a spec."),
    "operator": ("kservebench.operator.cli:operator_app", "Run the kopf operator."),
    "loadgen": ("kservebench.loadgen.cli:app", "Drive traffic at a model and record it."),
    "analyze": ("kservebench.analysis.cli:analyze_app", "Collect Prometheus series for a run."),
    "report": ("kservebench.analysis.cli:report_app", "Build reports from results folders."),
    "bench": ("kservebench.bench.cli:app", "Run an experiment spec end to end."),
    "simulate": ("kservebench.sim.cli:app", "Simulate an experiment spec (HPA/KPA)."),
    "emulate": ("kservebench.llm.emulator_cli:app", "Serve a vLLM emulated on the engine model."),
    "calibrate": (
        "kservebench.llm.calibrate_cli:app",
        "Fit the LLM engine model to a measured vLLM run.",
    ),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = "\n".join(f"  {name:<{width}}  {COMMANDS[name][1]}" for name in sorted(COMMANDS))
    return (
        "Usage: kservebench COMMAND [ARGS]...\n\n"
        "  Benchmark KServe model serving: HPA (server-based) vs Knative (serverless).\n\n"
        f"Commands:\n{rows}\n\n"
        "Run 'kservebench COMMAND --help' for a command's options.\n"
    )


def load_command(name: str) -> typer.Typer:
    module_name, attribute = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module_name), attribute)


def main(argv: Sequence[str] | None = None, standalone_mode: bool = True) -> None:
    """Run a subcommand; ``standalone_mode=False`` lets tests see its return value."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        raise SystemExit(0)
    if args[0] == "--version":
        sys.stdout.write(f"kservebench {__version__}\n")
        raise SystemExit(0)
    name = args[0]
    if name not in COMMANDS:
        sys.stderr.write(f"error: unknown command {name!r}\n\n{usage()}")
        raise SystemExit(2)
    load_command(name)(args[1:], prog_name=f"kservebench {name}", standalone_mode=standalone_mode)
