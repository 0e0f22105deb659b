"""The emulator's ``/metrics``: vLLM V1's Prometheus families, fed by the engine model.

Names, label names and histogram buckets are those of vLLM 0.32 (``vllm/v1/metrics/
loggers.py`` and ``buckets.py``; ../shared/WVA.md section 8 for the older ones): every
family has the labels ``model_name`` and ``engine`` ("0", one engine per server), except
``vllm:admission_rejections`` (model_name, reason) and the info gauge
``vllm:cache_config_info``. ``FAMILIES`` is the one list of what is exposed;
``OMITTED_FAMILIES`` says why the families a real server can also show are not.

Gauges and the token counters are read from the engine when Prometheus scrapes;
histograms are bucket counts kept here (no prometheus_client metric objects, so many
emulators fit in one process and an observation is a bisect and two additions). Families
vLLM exposes for features the engine model lacks (prefix cache hits, multimodal caches, KV
connectors, MFU estimates without --enable-mfu-metrics, n > 1 sampling) are exposed as
zeros, as a real server without those features shows them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from kservebench.llm.engine import Engine, EngineConfig, StepResult
    from kservebench.llm.request import RequestResult

# -- buckets (vLLM 0.32 vllm/v1/metrics/buckets.py) ------------------------------------------

REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
NUM_PREEMPTIONS_BUCKETS = (1, 2, 3, 4, 5, 10, 20)


def one_two_five_buckets(max_value: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value``: the token-count histograms' buckets."""
    out: list[int] = []
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale > max_value:
                return tuple(out)
            out.append(m * scale)
        scale *= 10


def bucket_bounds(kind: str, max_model_len: int) -> tuple[float, ...]:
    table: dict[str, Sequence[float]] = {
        "latency": REQUEST_LATENCY_BUCKETS,
        "ttft": TTFT_BUCKETS,
        "itl": ITL_BUCKETS,
        "iteration": ITERATION_TOKENS_BUCKETS,
        "n": PARAMS_N_BUCKETS,
        "preemptions": NUM_PREEMPTIONS_BUCKETS,
        "tokens": one_two_five_buckets(max_model_len),
    }
    return tuple(float(b) for b in table[kind])


# -- the families ------------------------------------------------------------------------

BASE_LABELS = ("model_name", "engine")
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")  # vLLM's FinishReason
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
CACHE_HIT_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")
ADMISSION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")
WAITING_REASONS = ("capacity", "deferred")


@dataclass(frozen=True)
class Family:
    """One metric family: ``name`` as Prometheus' text parser names it (a counter without
    its ``_total``), ``extra`` label names after model_name and engine, ``buckets`` the
    bucket kind of a histogram (see ``bucket_bounds``)."""

    name: str
    kind: str  # gauge | counter | histogram
    help: str
    extra: tuple[str, ...] = ()
    buckets: str = ""


def _hist(name: str, help_: str, buckets: str) -> Family:
    return Family(name, "histogram", help_, buckets=buckets)


FAMILIES: tuple[Family, ...] = (
    Family("vllm:num_requests_running", "gauge", "Requests in the engine's running batch."),
    Family("vllm:num_requests_waiting", "gauge", "Requests in the scheduler's waiting queue."),
    Family(
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        "Waiting requests by why they wait (capacity; deferred is always 0 here).",
        ("reason",),
    ),
    Family("vllm:kv_cache_usage_perc", "gauge", "Share of KV cache blocks in use (0-1)."),
    Family("vllm:engine_sleep_state", "gauge", "Sleep state (always awake).", ("sleep_state",)),
    Family("vllm:cache_config_info", "gauge", "Cache settings as labels; value 1."),
    Family("vllm:num_preemptions", "counter", "Preemptions (recomputation) so far."),
    Family("vllm:prompt_tokens", "counter", "Prompt tokens prefilled (once per request)."),
    Family(
        "vllm:prompt_tokens_by_source",
        "counter",
        "Prompt tokens by where their KV came from (all computed here).",
        ("source",),
    ),
    Family("vllm:prompt_tokens_cached", "counter", "Prompt tokens served from a cache (0)."),
    Family(
        "vllm:prompt_tokens_cached_by_source",
        "counter",
        "Cached prompt tokens by cache tier (0: no prefix cache).",
        ("source",),
    ),
    Family("vllm:generation_tokens", "counter", "Output tokens generated."),
    Family(
        "vllm:request_success",
        "counter",
        "Finished requests by finish reason.",
        ("finished_reason",),
    ),
    Family("vllm:prefix_cache_queries", "counter", "Prompt tokens looked up in the prefix cache."),
    Family("vllm:prefix_cache_hits", "counter", "Prompt tokens found in the prefix cache (0)."),
    Family("vllm:external_prefix_cache_queries", "counter", "KV connector lookups (0)."),
    Family("vllm:external_prefix_cache_hits", "counter", "KV connector hits (0)."),
    Family("vllm:mm_cache_queries", "counter", "Multimodal cache lookups (0)."),
    Family("vllm:mm_cache_hits", "counter", "Multimodal cache hits (0)."),
    Family("vllm:admission_rejections", "counter", "Requests refused by a queue limit (0)."),
    Family("vllm:estimated_flops_per_gpu", "counter", "MFU estimate (0: not enabled)."),
    Family("vllm:estimated_read_bytes_per_gpu", "counter", "MFU estimate (0: not enabled)."),
    Family("vllm:estimated_write_bytes_per_gpu", "counter", "MFU estimate (0: not enabled)."),
    _hist("vllm:time_to_first_token_seconds", "Arrival to first token.", "ttft"),
    _hist("vllm:inter_token_latency_seconds", "Gap between consecutive output tokens.", "itl"),
    _hist(
        "vllm:request_time_per_output_token_seconds",
        "Per request: decode time / (output tokens - 1).",
        "itl",
    ),
    _hist("vllm:e2e_request_latency_seconds", "Arrival to finish.", "latency"),
    _hist("vllm:request_queue_time_seconds", "Waiting until first scheduled.", "latency"),
    _hist("vllm:request_inference_time_seconds", "First scheduled to last token.", "latency"),
    _hist("vllm:request_prefill_time_seconds", "First scheduled to first token.", "latency"),
    _hist("vllm:request_decode_time_seconds", "First token to last token.", "latency"),
    _hist("vllm:request_prompt_tokens", "Prompt tokens per finished request.", "tokens"),
    _hist("vllm:request_generation_tokens", "Output tokens per finished request.", "tokens"),
    _hist("vllm:request_params_max_tokens", "max_tokens per finished request.", "tokens"),
    _hist(
        "vllm:request_max_num_generation_tokens",
        "Largest output of an n > 1 request (none here).",
        "tokens",
    ),
    _hist("vllm:request_params_n", "n of n > 1 requests (none here).", "n"),
    _hist("vllm:request_num_preemptions", "Preemptions per finished request.", "preemptions"),
    _hist(
        "vllm:request_prefill_kv_computed_tokens",
        "Prompt tokens computed (not cached) per finished request.",
        "tokens",
    ),
    _hist("vllm:iteration_tokens_total", "Tokens (prefill + decode) per engine step.", "iteration"),
)

EXPOSED_FAMILIES: frozenset[str] = frozenset(f.name for f in FAMILIES)

# Families a real vLLM 0.32 server may show that the emulator leaves out, and why.
OMITTED_FAMILIES: dict[str, str] = {
    "vllm:lora_requests_info": "LoRA adapters are not modelled",
    "vllm:spec_decode_num_drafts": "no speculative decoding",
    "vllm:spec_decode_num_draft_tokens": "no speculative decoding",
    "vllm:spec_decode_num_accepted_tokens": "no speculative decoding",
    "vllm:spec_decode_num_accepted_tokens_per_pos": "no speculative decoding",
    "vllm:tool_call_parser_invocations": "only with --tool-call-parser; no tool calling here",
    "vllm:kv_block_lifetime_seconds": "only with --kv-cache-metrics; no block eviction model",
    "vllm:kv_block_idle_before_evict_seconds": "only with --kv-cache-metrics",
    "vllm:kv_block_reuse_gap_seconds": "only with --kv-cache-metrics",
    "vllm:corrupted_requests": "only with VLLM_COMPUTE_NANS_IN_LOGITS; no logits here",
    "vllm:watermark_requests": "only with a watermark config",
    "vllm:num_requests_kv_fetch_by_stage": "only for a KV-transfer consumer (P/D)",
    "vllm:sleep_mode_operation_duration_seconds": "sleep mode (dev endpoints) not emulated",
    "vllm:sleep_mode_operations_in_flight": "sleep mode (dev endpoints) not emulated",
}


def cache_config_labels(
    cfg: EngineConfig,
    gpu_memory_utilization: float,
    num_gpu_blocks_override: int | None,
    kv_cache_memory_bytes: int | None,
) -> dict[str, str]:
    """Labels of vllm:cache_config_info: the subset of vLLM's CacheConfig fields (all of
    them are labels there) that says something about this engine, as vLLM writes them."""
    return {
        "block_size": str(cfg.block_size),
        "num_gpu_blocks": str(cfg.num_gpu_blocks),
        "num_gpu_blocks_override": str(num_gpu_blocks_override),
        "num_cpu_blocks": "None",
        "kv_cache_size_tokens": str(cfg.num_gpu_blocks * cfg.block_size),
        "kv_cache_memory_bytes": str(kv_cache_memory_bytes),
        "gpu_memory_utilization": str(gpu_memory_utilization),
        "cache_dtype": "auto",
        "enable_prefix_caching": "False",  # the engine model has no prefix cache
        "prefix_caching_hash_algo": "sha256",
        "sliding_window": "None",
        "is_attention_free": "False",
    }


class Histogram:
    """Bucket counts of one histogram; ``observe(v, n)`` adds ``n`` observations of ``v``."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n  # le is inclusive
        self.total += value * n

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += c
            out.append((floatToGoString(bound), float(running)))
        return out


class VllmMetrics(Collector):
    """vLLM's families for one engine; register it in a CollectorRegistry of its own."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        cache_info: dict[str, str],
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.cache_info = {**cache_info, "engine": "0"}
        cfg: EngineConfig = engine.config
        max_len = cfg.max_model_len or cfg.num_gpu_blocks * cfg.block_size
        self.histograms = {
            f.name: Histogram(bucket_bounds(f.buckets, max_len))
            for f in FAMILIES
            if f.kind == "histogram"
        }
        self.finished = dict.fromkeys(FINISHED_REASONS, 0)

    # -- observations (engine seconds) ------------------------------------------------------

    def on_step(self, step: StepResult) -> None:
        # as vLLM: prompt tokens computed + tokens generated (a completed prefill's too)
        tokens = step.prefill_tokens + len(step.token_req_ids)
        self.histograms["vllm:iteration_tokens_total"].observe(tokens)

    def on_first_token(self, ttft_s: float) -> None:
        self.histograms["vllm:time_to_first_token_seconds"].observe(ttft_s)

    def on_token_gap(self, itl_s: float, n: int = 1) -> None:
        self.histograms["vllm:inter_token_latency_seconds"].observe(itl_s, n)

    def on_finished(self, r: RequestResult, reason: str = "length") -> None:
        """A request is done; the timings follow vLLM's definitions (see RequestResult)."""
        h = self.histograms
        self.finished[reason] += 1
        # a finished request has every timestamp; `or 0.0` only satisfies the type checker
        inference = (r.last_token_s or 0.0) - (r.scheduled_s or 0.0)
        h["vllm:e2e_request_latency_seconds"].observe(r.e2e_s or 0.0)
        h["vllm:request_queue_time_seconds"].observe(r.queue_time_s or 0.0)
        h["vllm:request_prefill_time_seconds"].observe(r.prefill_time_s or 0.0)
        h["vllm:request_decode_time_seconds"].observe(r.decode_time_s or 0.0)
        h["vllm:request_inference_time_seconds"].observe(inference)
        h["vllm:request_time_per_output_token_seconds"].observe(r.tpot_s or 0.0)  # 0 as vLLM
        h["vllm:request_prompt_tokens"].observe(r.prompt_tokens)
        h["vllm:request_prefill_kv_computed_tokens"].observe(r.prompt_tokens)
        h["vllm:request_generation_tokens"].observe(r.output_tokens)
        h["vllm:request_params_max_tokens"].observe(r.max_tokens)
        h["vllm:request_num_preemptions"].observe(r.num_preemptions)

    # -- exposition -------------------------------------------------------------------------

    def _values(self) -> dict[str, object]:
        """name -> a number, {extra label value: number}, or a Histogram."""
        e = self.engine
        prompt = e.prompt_tokens_total
        zero_sources = dict.fromkeys(CACHE_HIT_SOURCES, 0)
        return {
            "vllm:num_requests_running": e.num_running,
            "vllm:num_requests_waiting": e.num_waiting,
            "vllm:num_requests_waiting_by_reason": {"capacity": e.num_waiting, "deferred": 0},
            "vllm:kv_cache_usage_perc": e.kv_cache_usage,
            "vllm:engine_sleep_state": {"awake": 1, "weights_offloaded": 0, "discard_all": 0},
            "vllm:num_preemptions": e.num_preemptions,
            "vllm:prompt_tokens": prompt,
            "vllm:prompt_tokens_by_source": {
                "local_compute": prompt,
                "local_cache_hit": 0,
                "external_kv_transfer": 0,
            },
            "vllm:prompt_tokens_cached_by_source": zero_sources,
            "vllm:generation_tokens": e.generation_tokens_total,
            "vllm:request_success": self.finished,
            # no prefix cache: every prompt token is a query that misses
            "vllm:prefix_cache_queries": prompt,
            **self.histograms,
        }

    def collect(self) -> Iterator[Metric]:
        values = self._values()
        base = [self.model_name, "0"]
        for f in FAMILIES:
            if f.name == "vllm:cache_config_info":
                info = GaugeMetricFamily(f.name, f.help, labels=list(self.cache_info))
                info.add_metric(list(self.cache_info.values()), 1.0)
                yield info
                continue
            if f.name == "vllm:admission_rejections":  # vLLM labels it without engine
                fam = CounterMetricFamily(f.name, f.help, labels=["model_name", "reason"])
                for reason in ADMISSION_REASONS:
                    fam.add_metric([self.model_name, reason], 0.0)
                yield fam
                continue
            labels = [*BASE_LABELS, *f.extra]
            value = values.get(f.name, 0)
            if f.kind == "histogram":
                assert isinstance(value, Histogram)
                hist = HistogramMetricFamily(f.name, f.help, labels=labels)
                hist.add_metric(base, value.cumulative(), value.total)
                yield hist
                continue
            cls = GaugeMetricFamily if f.kind == "gauge" else CounterMetricFamily
            fam = cls(f.name, f.help, labels=labels)
            if isinstance(value, dict):
                for extra, v in value.items():
                    fam.add_metric([*base, extra], float(v))
            else:
                fam.add_metric(base, float(value))  # type: ignore[arg-type]
            yield fam
