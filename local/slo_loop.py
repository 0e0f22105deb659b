"""The LLM autoscaling policies as a live loop over real replicas (``mode: slo``).

Every ``scrape_s`` the loop reads each ready replica's own ``/metrics`` (vLLM or the
emulator, vLLM's names) and keeps the samples as Prometheus would; every ``interval_s`` of
the policy it builds ``LlmInputs`` with pure functions (``metrics_from_text``,
``build_inputs``) and runs the policy's ``decide`` (``slo`` = ours, or a baseline:
``wva-v1``, ``wva-v2``, ``keda-waiting``, ``hpa-cpu``), then scales the ``ReplicaSet``.
The policy table, the Prometheus views (instant; WVA's 1-minute peaks, deleted pods'
series lingering 60 s) and WVA's front HPA are the simulator's
(``kservebench.sim.llm_autoscale``): the same calls, here fed by real processes.

A failed scrape of every ready replica is a failed metrics source (``metrics=None``): the
policies fail static and the reason is recorded. A request that reaches the router at zero
ready replicas (scale to zero) pokes the loop into a pass at once, with the router's held
requests as ``queued``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kservebench.local.autoscalers import _Loop
from kservebench.policies import hpa, llm_hpa
from kservebench.policies.llm_signals import (
    DRAINING,
    PENDING,
    READY,
    Histogram,
    LlmInputs,
    ReplicaMetrics,
    ReplicaState,
    VariantSpec,
)
from kservebench.sim.llm_autoscale import GHOST_S, PEAK_WINDOW_S, POLICIES, Prometheus

# The ReplicaSet's states as the Kubernetes API would list the pods; "gone" is not listed.
POD_STATES = {
    "pending": PENDING,
    "starting": PENDING,  # spawned, not ready yet (vLLM loading, the emulator's delay)
    "backoff": PENDING,  # CrashLoopBackOff: the pod exists, not ready
    "ready": READY,
    "terminating": DRAINING,
}
SCRAPE_TIMEOUT_S = 2.0
HISTORY = 200  # decisions kept for run.json
TTFT, ITL, PREFILL = (
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_prefill_time_seconds",
)


# --- pure: /metrics text -> ReplicaMetrics -> LlmInputs ----------------------------------------


def _histogram(samples: list[Any]) -> Histogram | None:
    buckets: dict[float, float] = {}
    total = count = 0.0
    for s in samples:
        if s.name.endswith("_bucket"):
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
        elif s.name.endswith("_sum"):
            total += s.value
        elif s.name.endswith("_count"):
            count += s.value
    finite = sorted(b for b in buckets if math.isfinite(b))
    if not finite:
        return None
    return Histogram(
        tuple(finite), tuple(int(buckets[b]) for b in finite), float(total), int(count)
    )


def metrics_from_text(
    text: str, pod: str, sampled_s: float, variant: str = "", cpu_cores: float | None = None
) -> ReplicaMetrics:
    """One scrape of a vLLM-compatible ``/metrics`` as the policies read it; a ValueError
    when the text is not vLLM's (no ``vllm:num_requests_running``)."""
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    if "vllm:num_requests_running" not in families:
        raise ValueError(f"{pod}: no vllm:num_requests_running in /metrics")

    def gauge(name: str) -> float:
        return float(sum(s.value for s in families.get(name, ())))

    def counter(name: str) -> float:
        return float(sum(s.value for s in families.get(name, ()) if s.name.endswith("_total")))

    def hist_sum(name: str) -> float:
        return float(sum(s.value for s in families.get(name, ()) if s.name.endswith("_sum")))

    capacity = 0
    for s in families.get("vllm:cache_config_info", ()):
        with contextlib.suppress(KeyError, ValueError):
            capacity = int(s.labels["num_gpu_blocks"]) * int(s.labels["block_size"])
    return ReplicaMetrics(
        pod=pod,
        sampled_s=sampled_s,
        variant=variant,
        running=gauge("vllm:num_requests_running"),
        waiting=gauge("vllm:num_requests_waiting"),
        kv_usage=gauge("vllm:kv_cache_usage_perc"),
        kv_capacity_tokens=capacity,
        prompt_tokens_total=counter("vllm:prompt_tokens"),
        generation_tokens_total=counter("vllm:generation_tokens"),
        request_success_total=counter("vllm:request_success"),
        preemptions_total=counter("vllm:num_preemptions"),
        request_prompt_tokens_sum=hist_sum("vllm:request_prompt_tokens"),
        request_generation_tokens_sum=hist_sum("vllm:request_generation_tokens"),
        ttft=_histogram(families.get(TTFT, [])),
        itl=_histogram(families.get(ITL, [])),
        prefill=_histogram(families.get(PREFILL, [])),
        cpu_cores=cpu_cores,
    )


@dataclass(frozen=True)
class Pod:
    """A replica as the loop lists it (from ``ReplicaSet.replicas()``)."""

    pod: str
    state: str  # the ReplicaSet's: pending | starting | ready | terminating | backoff | gone
    created_s: float
    ready_s: float | None = None


def build_inputs(
    now_s: float,
    variant: VariantSpec,
    pods: Sequence[Pod],
    metrics: Sequence[ReplicaMetrics] | None,
    desired: int,
    arrivals_total: float | None = None,
    queued: int = 0,
) -> LlmInputs:
    """One model's pass: its pods as the API lists them (gone ones are not), the metrics
    view (None: the source failed), the scale (``desired``), the router's counts."""
    if metrics is not None:
        metrics = tuple(replace(m, variant=variant.name) for m in metrics)
    replicas = tuple(
        ReplicaState(p.pod, variant.name, POD_STATES[p.state], p.created_s, p.ready_s)
        for p in pods
        if p.state in POD_STATES
    )
    return LlmInputs(
        now_s=now_s,
        variants=(variant,),
        replicas=replicas,
        metrics=None if metrics is None else tuple(metrics),
        spec_replicas={variant.name: int(desired)},
        arrivals_total=arrivals_total,
        queued=int(queued),
    )


def variant_from_serving(serving: Any, min_replicas: int, max_replicas: int) -> VariantSpec:
    """The model's one variant: the emulated GPU's (cost, GPUs) or the CPU vLLM's, with the
    engine settings the replicas run with."""
    from kservebench.bench.llm_spec import VLLM_CPU_BLOCK_SIZE

    name, accelerator, gpus, cost = serving.model, "cpu", 0, 10.0
    if serving.engine == "emulator" and serving.variant:
        from kservebench.llm.variants import get_variant

        v = get_variant(serving.variant)
        name, accelerator, gpus, cost = v.name, v.hardware.name, v.gpus, v.cost_per_hour
    block = serving.block_size or (VLLM_CPU_BLOCK_SIZE if serving.engine == "vllm" else 16)
    kv = (serving.num_gpu_blocks or 0) * block
    return VariantSpec(
        name=name,
        accelerator=accelerator,
        gpus_per_replica=int(gpus),
        cost_per_hour=float(cost),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        kv_capacity_tokens=kv,
        max_num_seqs=serving.max_num_seqs,
        max_num_batched_tokens=serving.max_num_batched_tokens or 8192,
    )


def record_sample(prom: Prometheus, now_s: float, sample: Mapping[str, ReplicaMetrics]) -> None:
    """One scrape into the simulator's Prometheus view (instant / 1-minute peaks)."""
    prom.history.append((now_s, dict(sample)))
    keep = now_s - max(prom.ghost_s, PEAK_WINDOW_S) - 1e-9
    while prom.history and prom.history[0][0] < keep:
        prom.history.pop(0)


# --- the live loop ------------------------------------------------------------------------------


@dataclass
class SloLoop(_Loop):
    settings: Any = None  # kservebench.local.slo_settings.SloSettings
    variant: VariantSpec | None = None
    router: Any = None  # kservebench.local.router.Router
    state: Any = None
    policy_desired: int | None = None
    front_state: hpa.HpaState = field(default_factory=hpa.HpaState)
    last_reason: str = ""
    holds: int = 0  # passes without metrics (no change)
    history: list[dict[str, Any]] = field(default_factory=list)
    prometheus: Prometheus = field(init=False)
    kind: Any = field(init=False)  # the policy's row of the simulator's table
    _last_pass_s: float = -math.inf
    _cpu: dict[str, tuple[float, float]] = field(default_factory=dict)
    _session: Any = None
    _poked: asyncio.Event | None = None

    def __post_init__(self) -> None:
        self.kind = POLICIES[self.settings.policy]
        self.prometheus = Prometheus(self.variant.name if self.variant else "", ghost_s=GHOST_S)

    def pods(self) -> list[Pod]:
        return [Pod(r.pod, r.state, r.created_s, r.ready_s) for r in self.replica_set.replicas()]

    def _cpu_cores(self, pod: str, now_s: float) -> float | None:
        """metrics-server's view: CPU cores used since the previous scrape."""
        try:
            used = self.replica_set.cpu_seconds(pod)
        except Exception:
            return None
        before = self._cpu.get(pod)
        self._cpu[pod] = (used, now_s)
        if before is None or now_s <= before[1] or used < before[0]:
            return None
        return (used - before[0]) / (now_s - before[1])

    async def _fetch(self, url: str) -> str:
        async with self._session.get(f"{url}/metrics") as response:
            if response.status != 200:
                raise ValueError(f"/metrics answered {response.status}")
            return await response.text()

    async def scrape(self, now_s: float) -> tuple[dict[str, ReplicaMetrics], list[str]]:
        """Every ready replica's /metrics at once: the samples and the pods that failed."""
        import aiohttp

        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout)
        ready = [r for r in self.replica_set.replicas() if r.state == "ready"]
        texts = await asyncio.gather(*(self._fetch(r.url) for r in ready), return_exceptions=True)
        sample, failed = {}, []
        for r, text in zip(ready, texts, strict=True):
            cores = self._cpu_cores(r.pod, now_s)
            if isinstance(text, BaseException):
                failed.append(f"{r.pod}: {type(text).__name__} {text}".strip())
                continue
            try:
                sample[r.pod] = metrics_from_text(text, r.pod, now_s, self.variant.name, cores)
            except ValueError as err:
                failed.append(str(err))
        gone = {p for p in self._cpu} - {r.pod for r in self.replica_set.replicas()}
        for pod in gone:
            self._cpu.pop(pod, None)
        record_sample(self.prometheus, now_s, sample)
        return sample, failed

    def _arrivals_total(self) -> float | None:
        if self.router is None:
            return None
        return float(sum(self.router.requests_total.values()) + self.router.in_system)

    async def tick(self, poke: bool = False) -> None:
        now = self.clock()
        sample, failed = await self.scrape(now)
        due = now - self._last_pass_s >= self.settings.interval_s - 1e-6
        if poke or due:
            self._last_pass_s = now
            await self.decide(now, sample, failed, poke)

    async def decide(
        self, now_s: float, sample: dict[str, ReplicaMetrics], failed: list[str], poke: bool
    ) -> None:
        view = self.prometheus.peak if self.kind.view == "peak" else self.prometheus.instant
        source_failed = bool(failed) and not sample
        metrics = None if source_failed else view(now_s)
        inputs = build_inputs(
            now_s,
            self.variant,
            self.pods(),
            metrics,
            self.replica_set.desired,
            self._arrivals_total(),
            self.router.buffered if self.router is not None else 0,
        )
        current = self.replica_set.desired
        try:
            decision = self.kind.decide(inputs, self.state, self.settings.params)
        except Exception as err:  # a policy bug must not stop the loop: keep the scale
            self.holds += 1
            self._note(now_s, current, f"policy failed ({type(err).__name__}: {err}): keep")
            return
        self.state = decision.state
        self.policy_desired = int(decision.desired[self.variant.name])
        desired = self.policy_desired
        if self.kind.front_hpa is not None:  # WVA emits a metric; its chart's HPA scales
            front = replace(
                self.kind.front_hpa,
                min_replicas=max(1, self.variant.min_replicas),
                max_replicas=self.variant.max_replicas,
            )
            out, self.front_state = llm_hpa.follow_external(
                float(desired), 1.0, current, now_s, self.front_state, front
            )
            desired = out.desired_replicas
        reason = f"{self.settings.policy}: {decision.reason}"
        if poke:
            reason = f"request held at zero, {reason}"
        if source_failed:
            self.holds += 1
            reason = f"{reason} (metrics failed: {'; '.join(failed)[:200]})"
        self._note(now_s, desired, reason)
        await self._apply(desired, reason)

    def _note(self, now_s: float, desired: int, reason: str) -> None:
        self.last_reason = reason
        entry = {"time": round(now_s, 3), "policy_desired": self.policy_desired}
        self.history.append({**entry, "desired": desired, "reason": reason})
        del self.history[:-HISTORY]

    def poke(self) -> None:
        """Called on the loop by the router when a request arrives at zero replicas."""
        if self._poked is not None:
            self._poked.set()

    async def run(self) -> None:
        """A scrape every ``scrape_s``, a decision every interval and at once when poked."""
        self._poked = asyncio.Event()
        next_tick = self.clock() + self.settings.scrape_s
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), max(0.0, next_tick - self.clock()))
                if self._poked.is_set():
                    self._poked.clear()
                    await self.tick(poke=True)
                    continue
                await self.tick()
                next_tick = max(next_tick + self.settings.scrape_s, self.clock())
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    def describe(self) -> dict[str, Any]:
        return {
            **self.settings.describe(),
            "variant": self.variant.name if self.variant else None,
            "holds": self.holds,
            "last_reason": self.last_reason,
            "decisions_log": list(self.history),
        }
