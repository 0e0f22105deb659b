"""The emulator's engine side: one ``Engine`` run in real time, and its requests in flight.

One ``Engine`` (``kservebench.llm.engine``) per server, driven by one asyncio task: it
runs a step, sleeps for the step's modelled duration, hands the step's tokens to the
requests' streams, and waits on an event while the engine has no work, so an idle
replica costs nothing and many fit on a core. Each request is one small record
(``Flight``) with an event its HTTP handler waits on. The handlers themselves are
``kservebench.llm.emulator``'s.

Time: the engine runs on its own clock, ``time_scale`` times as fast as the wall clock
(1: real time); its metrics are in engine seconds, the start-up delay in wall seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry

from kservebench.errors import SpecError
from kservebench.llm.engine import Engine, EngineConfig, StepResult
from kservebench.llm.openai_api import PromptCounter, Reply
from kservebench.llm.request import RequestOverheads, RequestResult
from kservebench.llm.variants import Variant, get_variant
from kservebench.llm.vllm_metrics import VllmMetrics, cache_config_labels

DEFAULT_VARIANT = "llama-3.1-8b-h100"
# An event loop wakes a millisecond or two after a step's end; a step that follows that
# closely starts at the previous end, so the lag is not added to every step. A longer
# lag (an overloaded host) is real time lost and shows in the latencies.
WAKE_JITTER_S = 0.005


@dataclass(frozen=True)
class EmulatorConfig:
    """What ``kservebench emulate`` takes; ``None`` means the variant's value. Problems
    are SpecErrors naming the command-line option (vLLM's flag names)."""

    variant: str = DEFAULT_VARIANT
    model: str | None = None  # a folder (its tokenizer.json counts prompts) or a name
    served_model_name: str | None = None  # default: model, else the variant's model
    tokenizer: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    block_size: int | None = None
    num_gpu_blocks_override: int | None = None
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    startup_delay_s: float = 0.0
    time_scale: float = 1.0
    overheads: RequestOverheads | None = None  # per-request costs outside the steps

    def __post_init__(self) -> None:
        if not self.startup_delay_s >= 0:
            raise SpecError("--startup-delay", self.startup_delay_s, "must be >= 0 seconds")
        if not self.time_scale > 0:
            raise SpecError("--time-scale", self.time_scale, "must be > 0")
        for option in (
            "num_gpu_blocks_override",
            "kv_cache_memory_bytes",
            "max_model_len",
            "block_size",
            "max_num_seqs",
            "max_num_batched_tokens",
        ):
            value = getattr(self, option)
            if value is not None and value < 1:
                raise SpecError("--" + option.replace("_", "-"), value, "must be >= 1")


def _option(err: SpecError) -> SpecError:
    """A variant or engine field error renamed to its command-line option."""
    name = err.field.split(".")[-1].replace("_", "-")
    return SpecError(f"--{name}", err.value, err.problem)


def engine_settings(config: EmulatorConfig) -> tuple[Variant, EngineConfig]:
    """The variant with the overrides applied and the engine's settings, sized as vLLM
    sizes them: --num-gpu-blocks-override, else the KV space (--kv-cache-memory-bytes,
    else the GPU memory left after weights and activations) in --block-size blocks."""
    try:
        variant = get_variant(config.variant)
    except SpecError as err:
        raise SpecError("--variant", err.value, err.problem) from None
    changes: dict[str, object] = {
        name: getattr(config, name)
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens")
        if getattr(config, name) is not None
    }
    if config.gpu_memory_utilization is not None:
        changes["gpu_memory_utilization"] = config.gpu_memory_utilization
    if config.kv_cache_memory_bytes is not None:
        changes["kv_cache_bytes"] = float(config.kv_cache_memory_bytes)
    try:
        variant = replace(variant, **changes)  # type: ignore[arg-type]
    except SpecError as err:
        raise _option(err) from None
    bs = variant.block_size
    blocks = config.num_gpu_blocks_override or variant.num_gpu_blocks()
    if blocks < 1:
        raise SpecError("--variant", variant.name, "its weights leave no memory for a KV cache")
    capacity = blocks * bs
    max_len = config.max_model_len or variant.max_model_len
    if max_len is None:
        max_len = min(variant.model.max_position, capacity)
    if max_len > capacity:
        raise SpecError(
            "--max-model-len",
            max_len,
            f"one request of that length needs more KV cache than the {capacity} tokens "
            f"({blocks} blocks of {bs}) there are",
        )
    try:
        cfg = EngineConfig(
            num_gpu_blocks=blocks,
            block_size=bs,
            max_num_seqs=variant.max_num_seqs,
            max_num_batched_tokens=variant.max_num_batched_tokens,
            max_model_len=max_len,
            keep_step_log=False,  # bounded memory: token times come from the steps
        )
    except SpecError as err:
        raise _option(err) from None
    return variant, cfg


class Flight:
    """One request in the engine, as its HTTP handler sees it."""

    __slots__ = ("arrival_s", "done", "event", "last_token_s", "reply", "tokens")

    def __init__(self, reply: Reply, arrival_s: float) -> None:
        self.reply = reply
        self.arrival_s = arrival_s
        self.tokens = 0
        self.last_token_s: float | None = None
        self.done = False
        self.event = asyncio.Event()


class EngineRunner:
    """The engine, its clock, the requests in flight and the metrics of one server."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.variant, self.engine_config = engine_settings(config)
        self.engine = Engine(self.engine_config, self.variant.step_time_model(), config.overheads)
        self.model_name = config.served_model_name or config.model or self.variant.model.name
        self.prompts = PromptCounter.load(config.model, config.tokenizer)
        cache_info = cache_config_labels(
            self.engine_config,
            self.variant.gpu_memory_utilization,
            config.num_gpu_blocks_override,
            config.kv_cache_memory_bytes,
        )
        self.metrics = VllmMetrics(self.engine, self.model_name, cache_info)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.metrics)
        self.created = int(time.time())
        self.ready = False
        self.loaded = asyncio.Event()
        self._flights: dict[str, Flight] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._t0 = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- clock ---------------------------------------------------------------------------

    def now(self) -> float:
        """Engine seconds since the server started."""
        assert self._loop is not None, "the emulator is not started"
        return (self._loop.time() - self._t0) * self.config.time_scale

    def _wall(self, t_s: float) -> float:
        return self._t0 + t_s / self.config.time_scale

    async def _sleep_until(self, t_s: float) -> None:
        assert self._loop is not None
        await asyncio.sleep(max(0.0, self._wall(t_s) - self._loop.time()))

    def _at(self, t_s: float, fn: Callable[..., None], *args: object) -> None:
        """Run ``fn`` at engine time ``t_s`` (now if that has passed)."""
        assert self._loop is not None
        if self._wall(t_s) <= self._loop.time():
            fn(*args)
        else:
            self._loop.call_at(self._wall(t_s), fn, *args)

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._load())]
        self._tasks[0].add_done_callback(self._engine_stopped)

    def _engine_stopped(self, task: asyncio.Task) -> None:
        """A crashed engine loop makes /health answer 503, as vLLM's dead engine does."""
        if not task.cancelled() and task.exception() is not None:
            self.ready = False
            print(f"emulate: the engine loop failed: {task.exception()!r}", file=sys.stderr)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _load(self) -> None:
        await asyncio.sleep(self.config.startup_delay_s)  # the model "loads"
        self.ready = True
        self.loaded.set()

    # -- the engine loop -----------------------------------------------------------------

    async def _run(self) -> None:
        engine = self.engine
        empty = 0
        stepped = False  # the last pass ran a step: the next one follows it back to back
        while True:
            if not engine.has_work:
                self._wake.clear()
                await self._wake.wait()
                stepped = False
                continue
            now = self.now()
            if stepped and (now - engine.clock_s) / self.config.time_scale <= WAKE_JITTER_S:
                now = engine.clock_s  # a late wake-up must not add up step after step
            step = engine.step(now)
            stepped = step.num_seqs > 0
            if step.num_seqs == 0:
                if engine.num_running or engine.num_waiting:
                    empty += 1  # right after a preemption a step may schedule nothing
                    if empty > 2:
                        raise RuntimeError("engine made no progress (a scheduler bug)")
                    continue
                await self._idle_until(engine.next_ready_s)
                continue
            empty = 0
            self.metrics.on_step(step)
            await self._sleep_until(step.end_s)
            self._at(step.end_s + engine.overheads.token_delivery_s, self._tokens, step)
            for result in engine.take_finished():
                self._at(result.finished_s or step.end_s, self._finish, result)

    async def _idle_until(self, t_s: float | None) -> None:
        """Wait for a new request, or until a pending one enters the scheduler."""
        self._wake.clear()
        timeout = None if t_s is None else max(0.0, (t_s - self.now()) / self.config.time_scale)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _tokens(self, step: StepResult) -> None:
        t = step.end_s + self.engine.overheads.token_delivery_s
        for req_id in step.token_req_ids:
            flight = self._flights.get(req_id)
            if flight is None:
                continue
            if flight.last_token_s is None:
                self.metrics.on_first_token(t - flight.arrival_s)
            else:
                self.metrics.on_token_gap(t - flight.last_token_s)
            flight.last_token_s = t
            flight.tokens += 1
            flight.event.set()

    def _finish(self, result: RequestResult) -> None:
        flight = self._flights.pop(result.req_id, None)
        self.metrics.on_finished(result)
        if flight is not None:
            flight.done = True
            flight.event.set()

    def submit(self, reply: Reply) -> Flight:
        now = self.now()
        self.engine.add_request(reply.id, reply.prompt_tokens, reply.max_tokens, now)
        flight = self._flights[reply.id] = Flight(reply, now)
        self._wake.set()
        return flight

    @property
    def in_flight(self) -> int:
        return len(self._flights)
