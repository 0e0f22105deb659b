"""The local target: real KServe ModelServers and a real Prometheus on this machine.

No autoscaler runs here: each model gets a fixed number of replicas (``local.replicas``,
served as worker processes of one ModelServer), and the run says so in run.json. The
bench publishes those replica counts as ``kservebench_replicas_ready`` /
``kservebench_replicas_desired`` gauges on a loopback port of its own, so Prometheus holds
them beside the servers' own metrics and the analysis reads local and cluster runs alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kservebench.bench.spec import Experiment
from kservebench.procs import free_port

EXPORTER_JOB = "kservebench"
TRAINED_DIR = Path("trained")
READY_TIMEOUT_S = 120.0  # a cold ModelServer on 2 busy cores takes a few seconds


class ReplicaGauges:
    """The fixed replica counts as Prometheus gauges, served on 127.0.0.1."""

    def __init__(self) -> None:
        # A registry of our own: no process metrics, which would pose as a model's CPU.
        self.registry = CollectorRegistry()
        labels = ["model"]
        self.ready = Gauge(
            "kservebench_replicas_ready", "Ready replicas", labels, registry=self.registry
        )
        self.desired = Gauge(
            "kservebench_replicas_desired", "Fixed replicas", labels, registry=self.registry
        )
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, "127.0.0.1", self.registry)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, model: str, ready: int, desired: int) -> None:
        self.ready.labels(model).set(ready)
        self.desired.labels(model).set(desired)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LocalTarget:
    """Start, watch and stop the servers of one experiment; a context manager."""

    name = "local"

    def __init__(self, experiment: Experiment, run_dir: Path, trained_dir: Path = TRAINED_DIR):
        self.experiment = experiment
        self.run_dir = Path(run_dir)
        self.trained_dir = Path(trained_dir)
        self.replicas = experiment.local_replicas
        self.servers: dict[str, Any] = {}
        self.model_dirs: dict[str, Path] = {}
        self.gauges: ReplicaGauges | None = None
        self.prometheus: Any = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, on_step: Any = lambda text: None) -> None:
        from kservebench.analysis.prometheus_local import LocalPrometheus
        from kservebench.models import LocalModelServer, train_models

        names = [m.name for m in self.experiment.models]
        on_step(f"models: training or reusing {', '.join(names)} in {self.trained_dir}/")
        self.model_dirs = train_models(self.trained_dir, names)
        self.gauges = ReplicaGauges()
        for name in names:
            on_step(f"models: starting the KServe ModelServer for {name}")
            server = LocalModelServer(
                self.model_dirs[name],
                name,
                log_path=self.run_dir / "logs" / f"{name}.log",
                workers=self.replicas,
            )
            self.servers[name] = server
            server.start()
        for name, server in self.servers.items():
            server.wait_ready(READY_TIMEOUT_S)
            self.gauges.set(name, self.replicas, self.replicas)
        on_step("prometheus: starting, scraping every 1 s")
        # One scrape job per model, named after it: the analysis reads the model from it.
        targets = {name: [f"127.0.0.1:{s.port}"] for name, s in self.servers.items()}
        targets[EXPORTER_JOB] = [self.gauges.address]
        # Its TSDB is scratch (a temporary folder): the series are saved to series/.
        self.prometheus = LocalPrometheus(targets, "1s")
        self.prometheus.start().wait_ready()
        for name in names:
            self.prometheus.wait_for_scrape(name)

    def refresh(self) -> None:
        """Keep the replica gauges true: a server that died serves nothing."""
        if self.gauges is None:
            return
        for name, server in self.servers.items():
            self.gauges.set(name, self.replicas if server.alive() else 0, self.replicas)

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        if self.prometheus is not None:
            self.prometheus.stop()
        if self.gauges is not None:
            self.gauges.stop()

    def __enter__(self) -> LocalTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the runner asks ------------------------------------------------------------

    def endpoint(self, model: str) -> str:
        return self.servers[model].url

    def model_dir(self, model: str) -> Path | None:
        return self.model_dirs.get(model)

    @property
    def prometheus_url(self) -> str | None:
        return self.prometheus.url if self.prometheus is not None else None

    def collect_options(self) -> dict[str, Any]:
        # Only the model servers' jobs carry process metrics that are a model's CPU.
        models = "|".join(m.name for m in self.experiment.models)
        return {"target": "local", "job": models}

    def describe(self) -> dict[str, Any]:
        """What run.json records about the target."""
        return {
            "target": self.name,
            "replicas": f"fixed (local target): {self.replicas} per model, no autoscaler",
            "local": {
                "replicas_per_model": self.replicas,
                "servers": {
                    name: {
                        "url": server.url,
                        "model_dir": str(self.model_dirs.get(name)),
                        "ready_after_s": server.ready_after_s,  # the local cold start
                        "workers": self.replicas,
                    }
                    for name, server in self.servers.items()
                },
                "prometheus_url": self.prometheus_url,
            },
        }
