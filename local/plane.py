"""``ControlPlane``: the local target's control plane for one experiment.

Per model: a ``ReplicaSet`` of real ``kservebench serve`` processes (CPU quota and memory
limit per replica where cgroups allow), a ``Router`` in front of it (the Service in hpa
mode, the activator and queue-proxy in knative mode) and a live autoscaler loop (HPA or
KPA over the shared policies); one exporter of cluster-named metrics, and one supervised
Prometheus that scrapes the exporter and every replica (file_sd, labelled like pods).
The router and the autoscalers run on one asyncio loop in a background thread; replica
supervision has threads of its own. Crashes and restarts become ``incidents``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kservebench.local.autoscalers import HpaLoop, KpaLoop, ScaleEvent
from kservebench.local.exporter import NAMESPACE, Exporter
from kservebench.local.settings import LocalSettings, ReplicaResources, replica_resources
from kservebench.local.slo_loop import SloLoop, variant_from_serving
from kservebench.policies import hpa, kpa

EXPORTER_JOB = "kservebench"
READY_TIMEOUT_S = 180.0  # a first replica under a 0.25-core quota imports kserve slowly


@dataclass
class ModelUnit:
    """Everything the plane runs for one model."""

    model: str
    mode: str  # hpa | knative | slo | fixed
    resources: ReplicaResources
    replica_set: Any  # kservebench.local.replicas.ReplicaSet
    router: Any  # kservebench.local.router.Router
    autoscaler: HpaLoop | KpaLoop | SloLoop | None
    initial: int
    url: str = ""


class ControlPlane:
    """Start with ``start()`` (blocks until every model's initial replicas are ready and
    Prometheus has scraped them), stop with ``stop()``; a context manager."""

    def __init__(
        self,
        experiment: Any,
        settings: LocalSettings,
        model_dirs: dict[str, Path],
        run_dir: Path,
        scrape_interval: str = "1s",
    ) -> None:
        self.experiment = experiment
        self.settings = settings
        self.model_dirs = model_dirs
        self.run_dir = Path(run_dir)
        self.scrape_interval = scrape_interval
        self.resources = replica_resources(experiment.resources)  # refuses impossible limits
        self.models: dict[str, ModelUnit] = {}
        self.incidents: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Future[Any]] = []
        self.exporter: Exporter | None = None
        self.prometheus: Any = None
        self.supervisor: Any = None
        self.cgroups: Any = None
        self._targets: dict[str, tuple[tuple[str, int], ...]] = {}

    # --- incidents -------------------------------------------------------------------------

    def record(self, incident: dict[str, Any]) -> None:
        with self._lock:
            self.incidents.append(dict(incident))

    # --- start -----------------------------------------------------------------------------

    def _run_loop(self, ready: threading.Event) -> None:
        try:
            import uvloop

            self.loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop comes with kserve
            self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        ready.set()
        self.loop.run_forever()

    def _call(self, coro: Any, timeout_s: float = 30.0) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def _mode(self) -> str:
        return "fixed" if self.settings.fixed_replicas is not None else self.experiment.mode

    def _unit(self, ref: Any) -> ModelUnit:
        from kservebench.local.replicas import ReplicaSet
        from kservebench.local.router import Endpoint, Router

        model = ref.name
        mode = self._mode()
        scaling = self.experiment.scaling
        slo_settings = getattr(self.experiment, "autoscaler", None) if mode == "slo" else None
        router_mode = "knative" if self.experiment.mode == "knative" else "hpa"
        if slo_settings is not None and slo_settings.scale_to_zero:
            router_mode = "slo"  # the Service, holding requests while none is ready
        autoscaler: HpaLoop | KpaLoop | SloLoop | None = None

        def on_cold() -> None:
            # Bound to the variable: the loop is made below, before any request comes.
            if isinstance(autoscaler, KpaLoop | SloLoop):
                autoscaler.poke()

        router = Router(
            model,
            router_mode,
            container_concurrency=scaling.container_concurrency if router_mode == "knative" else 0,
            on_cold_request=on_cold,
        )

        def on_change(ready: list[Any]) -> None:
            endpoints = [Endpoint(r.pod, r.url) for r in ready]
            if self.loop is not None:
                self.loop.call_soon_threadsafe(router.set_endpoints, endpoints)

        replica_set = ReplicaSet(
            model,
            self.model_dirs[model],
            self.cgroups,
            self.resources.cpu_limit_cores,
            self.resources.memory_limit_bytes,
            self.run_dir / "logs" / "replicas",
            on_change=on_change,
            on_event=self.record,
            restart_backoff_s=self.settings.restart_backoff_s,
            **self._serving(ref),
        )
        if mode == "fixed":
            initial = int(self.settings.fixed_replicas or 1)
        elif mode == "hpa":
            params = hpa.params_from_scaling(scaling, self.settings.hpa_sync_period_s)
            autoscaler = HpaLoop(
                model,
                replica_set,
                params=params,
                request_cores=self.resources.cpu_request_cores,
                metrics_resolution_s=self.settings.metrics_resolution_s,
            )
            initial = params.min_replicas
        elif mode == "slo":
            bounds = (slo_settings.min_replicas, slo_settings.max_replicas)
            autoscaler = SloLoop(
                model,
                replica_set,
                settings=slo_settings,
                variant=variant_from_serving(ref.llm, *bounds),
                router=router,
            )
            initial = max(1, slo_settings.min_replicas)  # as Knative's initial scale 1
        else:
            params_k = kpa.params_from_scaling(scaling)
            autoscaler = KpaLoop(model, replica_set, params=params_k, router=router)
            initial = kpa.initial_scale(params_k)
        return ModelUnit(model, mode, self.resources, replica_set, router, autoscaler, initial)

    def _serving(self, ref: Any) -> dict[str, Any]:
        """ReplicaSet options of an LLM (vLLM or the emulator); none for a tabular model."""
        if getattr(ref, "llm", None) is None:
            return {}
        from kservebench.local import llm_serving

        serving = ref.llm
        options: dict[str, Any] = {"ready_path": llm_serving.READY_PATH}
        if serving.engine == "vllm":
            python = llm_serving.llm_python(f"{ref.name}.llm.engine")
            options["serve_argv"] = llm_serving.vllm_argv(serving, python)
            options["env"] = llm_serving.vllm_env(serving, self.resources.cpu_limit_cores)
            options["ready_timeout_s"] = llm_serving.VLLM_READY_TIMEOUT_S
        else:
            options["serve_argv"] = llm_serving.emulator_argv(serving)
            # The imitated model load comes on top of the emulator's own start.
            options["ready_timeout_s"] = 120.0 + serving.startup_delay_s
        return options

    def start(self, on_step: Callable[[str], None] = lambda text: None) -> ControlPlane:
        from kservebench.analysis.prometheus_local import LocalPrometheus, PrometheusSupervisor
        from kservebench.local.cgroups import detect_cgroups

        self.cgroups = detect_cgroups(mode=self.settings.cgroups)
        limits = "enforced" if self.cgroups.enforced else f"not enforced ({self.cgroups.reason})"
        on_step(f"control plane: CPU and memory limits {limits}")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, args=(ready,), name="control-plane", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        for ref in self.experiment.models:
            unit = self._unit(ref)
            self.models[ref.name] = unit
            unit.url = self._call(unit.router.start())
            unit.replica_set.start()
            unit.replica_set.scale_to(unit.initial)
        self.exporter = Exporter(self)
        on_step("prometheus: starting, scraping the exporter and every replica every 1 s")
        self.prometheus = LocalPrometheus(
            {EXPORTER_JOB: [self.exporter.address]},
            self.scrape_interval,
            data_dir=self.run_dir / ".prometheus",
            dynamic_jobs=list(self.models),
        )
        self.supervisor = PrometheusSupervisor(
            self.prometheus, on_event=self.record, interval_s=0.5
        )
        self.supervisor.start()
        for model, unit in self.models.items():
            on_step(f"{model}: waiting for {unit.initial} initial replica(s) ({unit.mode})")
            self._wait_ready(unit)
        self.sync_targets()
        self.prometheus.wait_for_scrape(EXPORTER_JOB)
        self._tasks = [asyncio.run_coroutine_threadsafe(self._targets_loop(), self.loop)]
        for unit in self.models.values():
            if unit.autoscaler is not None:
                self._tasks.append(
                    asyncio.run_coroutine_threadsafe(unit.autoscaler.run(), self.loop)
                )
        return self

    def _wait_ready(self, unit: ModelUnit) -> None:
        timeout_s = max(READY_TIMEOUT_S, unit.replica_set.ready_timeout_s)  # vLLM: longer
        deadline = time.monotonic() + timeout_s
        while len(unit.replica_set.ready()) < unit.initial:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{unit.model}: {unit.initial} replica(s) not ready after "
                    f"{timeout_s:.0f} s; logs in {self.run_dir / 'logs' / 'replicas'}"
                )
            time.sleep(0.1)

    # --- scrape targets --------------------------------------------------------------------

    def sync_targets(self) -> None:
        """Every replica that exists is a scrape target, labelled as its pod."""
        for model, unit in self.models.items():
            current = tuple(
                sorted((r.pod, r.port) for r in unit.replica_set.replicas() if r.state != "gone")
            )
            if self._targets.get(model) == current:
                continue
            self._targets[model] = current
            self.prometheus.set_targets(
                model,
                [
                    (f"127.0.0.1:{port}", {"namespace": NAMESPACE, "pod": pod})
                    for pod, port in current
                ],
            )

    async def _targets_loop(self) -> None:
        while True:
            await asyncio.to_thread(self.sync_targets)
            await asyncio.sleep(0.5)

    # --- what the bench asks ---------------------------------------------------------------

    def endpoint(self, model: str) -> str:
        return self.models[model].url

    @property
    def prometheus_url(self) -> str | None:
        return self.prometheus.url if self.prometheus is not None else None

    def scale_events(self) -> list[ScaleEvent]:
        events = [e for u in self.models.values() if u.autoscaler for e in u.autoscaler.events]
        return sorted(events, key=lambda e: e.time_s)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            incidents = list(self.incidents)
        return {
            "mode": self._mode(),
            "settings": self.settings.describe(),
            "limits": self.cgroups.describe() if self.cgroups is not None else None,
            "resources": {
                "cpu_request_cores": self.resources.cpu_request_cores,
                "cpu_limit_cores": self.resources.cpu_limit_cores,
                "memory_limit_bytes": self.resources.memory_limit_bytes,
            },
            "models": {
                model: {
                    "router": unit.url,
                    "autoscaler": unit.mode,
                    "initial_replicas": unit.initial,
                    "decisions": unit.autoscaler.decisions if unit.autoscaler else 0,
                    **(
                        {"slo": unit.autoscaler.describe()}
                        if isinstance(unit.autoscaler, SloLoop)
                        else {}
                    ),
                    # with ready_after_s: spawn -> ready of every start (the cold starts)
                    "replicas": unit.replica_set.describe(),
                }
                for model, unit in self.models.items()
            },
            "scale_events": [e.as_dict() for e in self.scale_events()],
            "restarts": sum(u.replica_set.restarts_total for u in self.models.values()),
            "incidents": incidents,
            "prometheus_url": self.prometheus_url,
        }

    # --- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        for unit in self.models.values():
            if self.loop is not None and self.loop.is_running():
                # Stopping: the replicas go whatever the router says.
                with contextlib.suppress(Exception):
                    self._call(unit.router.stop(), timeout_s=15)
            unit.replica_set.stop()
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None
        # The TSDB is scratch: the bench saved the run's series to series/ before this.
        shutil.rmtree(self.run_dir / ".prometheus", ignore_errors=True)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            self.loop = None

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
