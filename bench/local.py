"""The local target: the experiment on this machine, autoscaled for real.

The control plane (``kservebench.local.ControlPlane``) runs each model's replicas as real
KServe ModelServer processes under the spec's CPU and memory limits, routes traffic through a
Service-like router (hpa) or an activator and queue-proxy (knative), and scales them with
live HPA or KPA loops over the same policies the simulator uses (``mode: slo``: an LLM
policy, ours or a baseline, on the replicas' vLLM metrics). A supervised Prometheus scrapes
the replicas and the plane's cluster-named metrics, so the analysis reads a local run with
the queries it uses on a cluster (namespace ``local``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kservebench.bench.spec import Experiment

TRAINED_DIR = Path("trained")


class LocalTarget:
    """Start, watch and stop the control plane of one experiment; a context manager."""

    name = "local"

    def __init__(self, experiment: Experiment, run_dir: Path, trained_dir: Path = TRAINED_DIR):
        from kservebench.local.settings import replica_resources

        self.experiment = experiment
        self.run_dir = Path(run_dir)
        self.trained_dir = Path(trained_dir)
        replica_resources(experiment.resources)  # impossible limits fail before any work
        for i, ref in enumerate(experiment.models):  # no vLLM: say so before any work
            if ref.llm is not None and ref.llm.engine == "vllm":
                from kservebench.local.llm_serving import llm_python

                llm_python(f"models[{i}].llm.engine")
        self.model_dirs: dict[str, Path] = {}
        self.plane: Any = None

    def start(self, on_step: Any = lambda text: None) -> None:
        from kservebench.local.plane import ControlPlane
        from kservebench.models import train_models

        llms = {m.name: m.llm.model for m in self.experiment.models if m.llm is not None}
        names = [m.name for m in self.experiment.models if m.llm is None]
        made = sorted({*names, *llms.values()})
        on_step(f"models: training or reusing {', '.join(made)} in {self.trained_dir}/")
        self.model_dirs = train_models(self.trained_dir, names) if names else {}
        if llms:
            from kservebench.models.llm import export_llms

            exported = export_llms(self.trained_dir, sorted(set(llms.values())))
            self.model_dirs |= {served: exported[model] for served, model in llms.items()}
        local = self.experiment.local
        self.plane = ControlPlane(self.experiment, local, self.model_dirs, self.run_dir)
        self.plane.start(on_step)

    def refresh(self) -> None:
        """Nothing to do: the plane supervises itself in its own threads."""

    @property
    def incidents(self) -> list[dict[str, Any]]:
        return list(self.plane.incidents) if self.plane is not None else []

    def stop(self) -> None:
        if self.plane is not None:
            self.plane.stop()

    def __enter__(self) -> LocalTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the runner asks ------------------------------------------------------------

    # vLLM and the emulator serve the OpenAI routes at the root (KServe's huggingface
    # runtime puts them under /openai).
    openai_prefix = ""

    def endpoint(self, model: str) -> str:
        return self.plane.endpoint(model)

    def model_dir(self, model: str) -> Path | None:
        return self.model_dirs.get(model)

    @property
    def prometheus_url(self) -> str | None:
        return self.plane.prometheus_url if self.plane is not None else None

    def collect_options(self) -> dict[str, Any]:
        # The plane exports cluster names in namespace "local"; replicas are scraped every
        # second, so a short rate window holds enough samples.
        models = "|".join(m.name for m in self.experiment.models)
        return {"target": "auto", "namespace": "local", "job": models, "rate_window": "5s"}

    def describe(self) -> dict[str, Any]:
        """What run.json records about the target."""
        plane = self.plane.describe() if self.plane is not None else {}
        mode = plane.get("mode", self.experiment.mode)
        if mode == "fixed":
            replicas = f"fixed (local target): {self.experiment.local.fixed_replicas} per model"
        else:
            names = {"hpa": "HPA", "knative": "Knative KPA"}
            if self.experiment.autoscaler is not None:
                names["slo"] = f"LLM autoscaler ({self.experiment.autoscaler.policy})"
            plane_name = names.get(mode, mode)
            replicas = f"autoscaled by the local {plane_name} (live control plane)"
        limits = plane.get("limits") or {}
        return {
            "target": self.name,
            "replicas": replicas,
            "limits_enforced": bool(limits.get("enforced")),
            "local": plane,
        }
