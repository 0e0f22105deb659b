"""The ``kservebench`` command.

Subcommands are loaded lazily: ``loadgen`` imports Locust, which monkey-patches the
standard library with gevent, and that must never happen inside ``serve`` or the
operator. Each entry names the module and the Typer app (or Click command) that
implements it, so every stage owns its own command-line code.
"""

from __future__ import annotations

import importlib

import click
import typer

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
}


def _load(target: str) -> click.Command:
    module_name, attribute = target.split(":")
    obj = getattr(importlib.import_module(module_name), attribute)
    if isinstance(obj, typer.Typer):
        return typer.main.get_command(obj)
    return obj


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        command = _load(COMMANDS[cmd_name][0])
        command.name = cmd_name
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing help must not import every stage (and so Locust): use the table.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kservebench")
def main() -> None:
    """Benchmark KServe model serving: HPA (server-based) vs Knative (serverless)."""
