"""``kservebench emulate``: serve one emulated vLLM (``kservebench.llm.emulator``).

Options carry vLLM's flag names where vLLM has one; sizes take vLLM's suffixes (``8k`` is
8000, ``8K`` 8192, ``4G`` 4 GiB). A bad value ends with one line naming the option and
the value and exit code 2.
"""

from __future__ import annotations

import re

import typer

from kservebench.errors import SpecError
from kservebench.models.cli import fail

app = typer.Typer(add_completion=False, help="Serve an emulated vLLM on the engine model.")

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgtKMGT]?)")
_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(option: str, text: str | None) -> int | None:
    """An integer with an optional vLLM-style suffix (lower case decimal, upper binary)."""
    if text is None:
        return None
    match = _SIZE.fullmatch(text.strip())
    if not match:
        fail(option, text, "expected an integer, optionally with k/K, m/M, g/G or t/T")
    number, suffix = match.groups()
    if "." in number and not suffix:
        fail(option, text, "expected an integer")
    return int(float(number) * (_DECIMAL.get(suffix) or _BINARY[suffix]))


def _variant_help() -> str:
    from kservebench.llm.variants import VARIANTS

    return "Model x GPU whose step times and KV cache are emulated: " + ", ".join(VARIANTS)


@app.command()
def emulate(
    variant: str = typer.Option("llama-3.1-8b-h100", "--variant", help=_variant_help()),
    model: str = typer.Option(
        None, "--model", help="A model folder (its tokenizer.json counts prompt tokens) or name."
    ),
    served_model_name: str = typer.Option(
        None, "--served-model-name", help="Name in requests and metrics (default: --model)."
    ),
    tokenizer: str = typer.Option(
        None, "--tokenizer", help="A folder with tokenizer.json, or the file (default: --model)."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (0.0.0.0 inside a container)."
    ),
    port: int = typer.Option(8000, "--port", help="HTTP port (vLLM's default 8000)."),
    max_model_len: str = typer.Option(
        None, "--max-model-len", help="Longest prompt + output (default: the variant's)."
    ),
    max_num_seqs: int = typer.Option(None, "--max-num-seqs", help="Most requests running."),
    max_num_batched_tokens: str = typer.Option(
        None, "--max-num-batched-tokens", help="Token budget of one step."
    ),
    block_size: int = typer.Option(None, "--block-size", help="Tokens per KV cache block."),
    num_gpu_blocks_override: int = typer.Option(
        None, "--num-gpu-blocks-override", help="KV cache blocks, whatever the memory."
    ),
    kv_cache_memory_bytes: str = typer.Option(
        None, "--kv-cache-memory-bytes", help="KV cache space per GPU (e.g. 20G)."
    ),
    gpu_memory_utilization: float = typer.Option(
        None, "--gpu-memory-utilization", help="Share of GPU memory vLLM may use (0-1]."
    ),
    startup_delay: float = typer.Option(
        2.0,
        "--startup-delay",
        help="Wall seconds of model loading before /health answers 200 (30-120 on clusters).",
    ),
    time_scale: float = typer.Option(
        1.0, "--time-scale", help="How many times faster than real time the engine runs."
    ),
    refuse_while_loading: bool = typer.Option(
        False,
        "--refuse-while-loading",
        help="Do not listen until loaded (as vLLM) instead of answering 503.",
    ),
) -> None:
    """Serve vLLM's OpenAI API and /metrics, timed by the engine model of a GPU variant."""
    from kservebench.llm.emulator import Emulator, EmulatorConfig, run_emulator

    if not 1 <= port <= 65535:
        fail("--port", port, "not a TCP port (1-65535)")
    try:
        config = EmulatorConfig(
            variant=variant,
            model=model,
            served_model_name=served_model_name,
            tokenizer=tokenizer,
            max_model_len=parse_size("--max-model-len", max_model_len),
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=parse_size("--max-num-batched-tokens", max_num_batched_tokens),
            block_size=block_size,
            num_gpu_blocks_override=num_gpu_blocks_override,
            kv_cache_memory_bytes=parse_size("--kv-cache-memory-bytes", kv_cache_memory_bytes),
            gpu_memory_utilization=gpu_memory_utilization,
            startup_delay_s=startup_delay,
            time_scale=time_scale,
        )
        emulator = Emulator(config)  # every setting checked before the port is taken
    except SpecError as err:
        fail(err.field, err.value, err.problem)
    run_emulator(emulator, host, port, refuse_while_loading)
