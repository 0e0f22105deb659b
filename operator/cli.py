"""``kservebench render`` and ``kservebench operator``.

``render FILE`` prints the InferenceService YAML for each ModelDeployment in FILE (and
the HorizontalPodAutoscaler the operator owns beside it in mode hpa), without a cluster,
after checking the InferenceService strictly against the KServe SDK's schema. A bad
spec prints one line naming the field and value and exits 1 (no traceback).

``operator`` runs kopf with the ModelDeployment handlers (and the Benchmark handlers
when ``kservebench.operator.benchmark`` is there), after loading the in-cluster or
kubeconfig configuration for the kubernetes client the handlers use.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from kservebench.errors import SpecError, read_yaml

render_app = typer.Typer(add_completion=False, help="Print the InferenceService for a spec.")
operator_app = typer.Typer(add_completion=False, help="Run the kopf operator.")

OPTIONAL_HANDLER_MODULES = ("kservebench.operator.benchmark",)


def _fail(message: str) -> SystemExit:
    # SystemExit rather than typer.Exit: the top-level `kservebench` group is plain
    # click, which does not catch typer's own exception classes.
    typer.echo(f"error: {message}", err=True)
    return SystemExit(1)


def load_documents(path: Path) -> list[dict[str, Any]]:
    try:
        return read_yaml(path, "FILE", all_documents=True)
    except SpecError as err:
        raise _fail(str(err)) from None


def render_documents(documents: list[dict[str, Any]], kserve_names: str | None) -> str:
    """YAML of the InferenceServices for the ModelDeployments among ``documents``."""
    from kservebench.operator.inferenceservice import (
        build_horizontal_pod_autoscaler,
        build_inference_service,
    )
    from kservebench.operator.sdk_schema import validate_inference_service
    from kservebench.operator.spec import KIND, DeploymentModeNames, parse_model_deployment

    rendered = []
    for index, document in enumerate(documents):
        if not isinstance(document, dict) or document.get("kind") != KIND:
            continue
        if kserve_names is not None:
            # Through the spec, so the checks that depend on the names run too.
            document = copy.deepcopy(document)
            spec_part = document.setdefault("spec", {})
            if isinstance(spec_part, dict):
                kserve = spec_part.get("kserve")
                spec_part["kserve"] = {
                    **(kserve if isinstance(kserve, dict) else {}),
                    "deploymentModeNames": DeploymentModeNames(kserve_names).value,
                }
        try:
            spec = parse_model_deployment(document)
        except SpecError as err:
            where = f"document {index + 1}: " if len(documents) > 1 else ""
            raise _fail(f"{where}{err}") from None
        manifest = build_inference_service(spec)
        validate_inference_service(manifest)  # a bug here is ours, not the user's: let it raise
        rendered.append(yaml.safe_dump(manifest, sort_keys=False))
        hpa = build_horizontal_pod_autoscaler(spec)
        if hpa is not None:
            rendered.append(yaml.safe_dump(hpa, sort_keys=False))
    if not rendered:
        raise _fail(f"no {KIND} found (documents need kind: {KIND})")
    return "---\n".join(rendered)


@render_app.command()
def render(
    file: Annotated[Path, typer.Argument(help="A ModelDeployment YAML file.")],
    kserve_names: Annotated[
        str | None,
        typer.Option(
            "--kserve-names",
            help="Deployment-mode names: current (Standard/Knative, KServe >= 0.16) or"
            " legacy (RawDeployment/Serverless); default: the spec's own setting.",
        ),
    ] = None,
) -> None:
    """Print the InferenceService YAML for a ModelDeployment file (no cluster needed)."""
    if kserve_names is not None and kserve_names not in ("current", "legacy"):
        raise _fail(f"--kserve-names: must be current or legacy (got {kserve_names!r})")
    typer.echo(render_documents(load_documents(file), kserve_names), nl=False)


def build_registry() -> Any:
    """A kopf registry with our handlers and any optional handler modules present."""
    import kopf

    from kservebench.operator import handlers

    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    for module_name in OPTIONAL_HANDLER_MODULES:
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        if hasattr(module, "register"):
            module.register(registry)
    # The same login kopf uses by default: in-cluster service account, else kubeconfig.
    kopf.on.login(registry=registry)(kopf.login_via_client)
    return registry


def load_kube_config() -> None:
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, OSError) as err:
            raise _fail(f"no in-cluster configuration and no usable kubeconfig: {err}") from None


@operator_app.command()
def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch this namespace (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace.")
    ] = False,
    liveness: Annotated[
        str | None,
        typer.Option(help="Serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the ModelDeployment (and Benchmark) operator until interrupted."""
    import logging

    import kopf

    if namespace and all_namespaces:
        raise _fail("--namespace and --all-namespaces exclude each other")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    load_kube_config()
    registry = build_registry()
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True  # one replica; no peering CRDs needed
    kopf.run(
        registry=registry,
        settings=settings,
        standalone=True,
        clusterwide=all_namespaces or not namespace,
        namespaces=namespace or [],
        liveness_endpoint=liveness,
    )
